"""Request bodies on the wire, below Flask, for every route (WSGI middleware; create_app installs it).

Two things Flask cannot see from above:

- A chunked body (Transfer-Encoding: chunked, no Content-Length) over MAX_CONTENT_LENGTH: werkzeug's capped
  stream stops quietly at the limit, so the route got a cut body (400 "Invalid JSON") instead of a 413. It is
  read here, at most limit + 1 bytes, and handed on with a Content-Length, which werkzeug checks as usual (413
  in our envelope once the route reads it). A malformed chunk is a 400, not a 500.
- The connection after an answer that left the body unread (a 413, a 401 before parsing...): gunicorn writes
  `Connection: keep-alive`, then drains only 64 KiB and closes if there is more, so a pooled client's next
  request fails. What is left is drained here, at most DRAIN_BYTES within DRAIN_SECONDS, before the answer
  goes out; if that is not enough, gunicorn is told to close and says `Connection: close`."""
from __future__ import annotations

import io
import time

from werkzeug.exceptions import BadRequest

DRAIN_BYTES = 1024 * 1024  # 16 times the body limit: a client that sent this much keeps its connection
DRAIN_SECONDS = 2.0  # a client still sending after this (or stalled) is cut off instead of holding a thread
_READ = 64 * 1024


class RequestBody:
    def __init__(self, wsgi_app, flask_app):
        self.wsgi_app = wsgi_app
        self.config = flask_app.config  # MAX_CONTENT_LENGTH, read per request as werkzeug does

    def __call__(self, environ, start_response):
        wire = environ["wsgi.input"]
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        length = None if chunked else _content_length(environ)
        if not (length or chunked and environ.get("wsgi.input_terminated")):
            # No body, or chunked on a server that does not de-chunk (werkzeug then reads none of it).
            return self.wsgi_app(environ, start_response)
        broken = False
        if chunked:  # gunicorn de-chunks: read here what werkzeug would cut quietly
            try:
                body = wire.read(self.config["MAX_CONTENT_LENGTH"] + 1)
            except Exception:  # a malformed chunk, or the client went away: the rest of the line is unknown
                broken = True
                environ["wsgi.input"] = _Unreadable()
            else:
                environ["wsgi.input"] = io.BytesIO(body)
                environ["CONTENT_LENGTH"] = str(len(body))
                del environ["HTTP_TRANSFER_ENCODING"]

        def start(status, headers, exc_info=None):
            # Called before the headers are written: the last moment to decide how the connection ends.
            if broken or not _drain(environ, wire, length):
                _close_connection(start_response)
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start)


def _content_length(environ) -> int:
    try:
        return int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:  # the server refuses these first; treated as no body
        return 0


def _drain(environ, wire, length: int | None) -> bool:
    """Read and drop what the app left of the body; True when the end of it was reached in bounds."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        # Not gunicorn (the test client): its stream may not end where the body does (werkzeug's dev server
        # hands over the raw socket), so it is left alone.
        return True
    if length is not None and length > DRAIN_BYTES:
        return False  # not worth reading: close instead
    prior = sock.gettimeout()
    deadline = time.monotonic() + DRAIN_SECONDS
    drained = 0
    try:
        while drained <= DRAIN_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            sock.settimeout(remaining)  # bounds each read in time, as gunicorn's own drain does
            data = wire.read(_READ)  # gunicorn's stream ends where the body does
            if not data:
                return True
            drained += len(data)
        return False
    except Exception:  # a timeout, a malformed chunk, a client gone: the connection cannot be reused
        return False
    finally:
        try:
            sock.settimeout(prior)
        except OSError:
            pass


def _close_connection(start_response) -> None:
    # gunicorn ignores a Connection header from the app and decides keep-alive itself; its start_response is a
    # method of its response object, whose force_close() makes it say `Connection: close` and close.
    # Other servers (the test client): nothing to do.
    force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
    if callable(force_close):
        force_close()


class _Unreadable(io.RawIOBase):
    """A body that could not be read: a 400 in our envelope when the route reads it."""

    def readable(self) -> bool:
        return True

    def readinto(self, _buffer) -> int:
        raise BadRequest("The request body could not be read: its chunked encoding is malformed or cut short")

"""A fake Lovense Standard API server: a real HTTP server on 127.0.0.1 in a thread.

It records every request (path, JSON body, arrival time, whether it was accepted) and answers from a script: each
queued reply is used once, then the default reply. A reply is (http_status, json_body, delay_seconds); a long delay
makes it hang.

It also plays the toy: `plays(uid)` replays the accepted commands in arrival order as Lovense's app would (a
command runs for timeSec, 0 = until stopped; a new command with stopPrevious 1 or absent, or a Stop, ends the one
playing), so a test asserts what the toy did, not what we meant to send."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

from local_server import LocalServer

OK = (200, {"result": True, "code": 200, "message": "Success"}, 0)
QR_OK = (200, {"result": True, "code": 0, "message": "Success",
               "data": {"qr": "https://test2.lovense.com/UploadFiles/qr/20220106/xxx.jpg", "code": "ABCD1234"}}, 0)


def reply_code(code: int, delay: float = 0):
    """A Lovense reply over HTTP 200 carrying `code` (507 app offline, 501 invalid token, ...)."""
    return (200, {"result": False, "code": code, "message": f"error {code}"}, delay)


def http_status(status: int, delay: float = 0):
    return (status, {"message": f"http {status}"}, delay)


def hang(seconds: float):
    return (200, OK[1], seconds)


class FakeLovense(LocalServer):
    def __init__(self):
        self.requests: list[dict] = []
        self._script: dict[str, list] = {}
        self._default: dict[str, tuple] = {}
        self._lock = threading.Lock()
        super().__init__(self._handler())

    @property
    def url(self) -> str:
        return self.base_url

    def reset(self):
        with self._lock:
            self.requests.clear()
            self._script.clear()
            self._default.clear()

    def script(self, path: str, *replies, default=None):
        """Answer the next requests to `path` with `replies` in order, then with `default` (or success)."""
        with self._lock:
            self._script[path] = list(replies)
            if default is not None:
                self._default[path] = default

    def commands(self, uid=None) -> list[dict]:
        """Commands received, or only those for one Lovense uid (a late retry of an earlier test may arrive)."""
        with self._lock:
            return [r["json"] for r in self.requests if r["path"] == "/api/lan/v2/command"
                    and (uid is None or (r["json"] or {}).get("uid") == str(uid))]

    def plays(self, uid) -> list[dict]:
        """What the uid's toy played: one entry per accepted buzz, {"command", "start", "end" (when it stopped),
        "seconds" (how long it ran), "cut" (ended by another command before its timeSec), "cut_by" ("stop", "command"
        or None)}. A Stop plays nothing."""
        with self._lock:
            received = sorted((r for r in self.requests if r["path"] == "/api/lan/v2/command" and r.get("accepted")
                               and (r["json"] or {}).get("uid") == str(uid)), key=lambda r: r["at"])
        plays = []
        for r in received:
            body = r["json"]
            stop = body.get("action") == "Stop"
            if plays and plays[-1]["end"] > r["at"] and (stop or body.get("stopPrevious", 1) != 0):
                plays[-1].update(end=r["at"], cut=True, cut_by="stop" if stop else "command")
            if not stop:
                seconds = body.get("timeSec") or float("inf")
                plays.append({"command": body, "start": r["at"], "end": r["at"] + seconds, "cut": False,
                              "cut_by": None})
        for play in plays:
            play["seconds"] = play["end"] - play["start"]
        return plays

    def wait_for(self, predicate, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    def _next(self, path):
        with self._lock:
            queue = self._script.get(path)
            if queue:
                return queue.pop(0)
            return self._default.get(path) or (QR_OK if path == "/api/lan/getQrCode" else OK)

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                record = {"path": self.path, "json": body, "at": time.time()}
                with fake._lock:
                    fake.requests.append(record)
                status, reply, delay = fake._next(self.path)
                record["accepted"] = status == 200 and reply.get("code") == 200
                if delay:
                    time.sleep(delay)
                data = json.dumps(reply).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout under test)

            def log_message(self, *args):
                pass

        return Handler

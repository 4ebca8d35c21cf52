"""A webhook receiver as the platform would run one: a real HTTP server on 127.0.0.1 in a thread.

It records every request (headers, raw body, arrival time, the client's address, which tells connections apart)
and answers from a script: each queued reply is used once, then the default reply. A reply is (http_status,
delay_seconds) or (http_status, delay_seconds, drip_seconds); a long delay makes it hang (until `release` or
`stop`); a drip sends the answer one byte every drip_seconds, which no per-read timeout ends. Like a careful receiver it processes an
event at most once: a request whose reply is a 2xx is processed when it arrives, before any delay (so an answer
lost to a timeout or a crash is still processed), and a `webhook-id` seen before is a duplicate, counted and not
processed again."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

from local_server import LocalServer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

OK = (200, 0)


class FakeWebhookReceiver(LocalServer):
    def __init__(self, address=("127.0.0.1", 0)):
        self.requests: list[dict] = []
        self.processed: list[dict] = []  # the events processed, once each, in arrival order
        self.duplicates: list[str] = []  # webhook-ids received again after being processed
        self._seen: set[str] = set()
        self.secret: str | None = None  # once set, each request's signature is checked as it arrives
        self._script: list[tuple] = []
        self._by_type: dict[str, list[tuple]] = {}  # replies for one event type, used before the script
        self._default = OK
        self._lock = threading.Lock()
        self._released = threading.Event()
        super().__init__(self._handler(), address)

    @property
    def url(self) -> str:
        return self.base_url + "/hooks"

    def stop(self):
        self._released.set()
        super().stop()

    def script(self, *replies, default=None, event_type=None):
        """Answer the next requests with `replies` in order, then with `default` (or the current default); with
        `event_type`, the next requests carrying an event of that type only."""
        with self._lock:
            if event_type is not None:
                self._by_type[event_type] = list(replies)
            else:
                self._script = list(replies)
            if default is not None:
                self._default = default

    def release(self):
        """End every hanging reply now."""
        self._released.set()

    def ids(self) -> list[int]:
        """The processed events' ids, in order."""
        with self._lock:
            return [int(e["id"]) for e in self.processed]

    def wait_for(self, predicate, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    @staticmethod
    def verify(secret: str, request: dict) -> bool:
        """The Standard Webhooks check, by the spec's reference implementation (not by our code). It refuses a
        timestamp more than 5 minutes from now, as a receiver must: check a request soon after it arrived (a
        long run sets `secret`, and reads each request's `verified`)."""
        try:
            Webhook(secret).verify(request["body"], request["headers"])
        except WebhookVerificationError:
            return False
        return True

    def _next(self, event_type):
        with self._lock:
            for_type = self._by_type.get(event_type)
            if for_type:
                return for_type.pop(0)
            return self._script.pop(0) if self._script else self._default

    def _receive(self, handler) -> tuple:
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        status, delay, *drip = self._next((body or {}).get("type") if isinstance(body, dict) else None)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        request = {"at": time.time(), "path": handler.path, "headers": headers, "body": raw, "status": status,
                   "connection": handler.client_address, "json": body}
        msg_id = request["headers"].get("webhook-id")
        if self.secret is not None:
            request["verified"] = self.verify(self.secret, request)
        with self._lock:
            self.requests.append(request)
            if 200 <= status < 300:
                if msg_id in self._seen:
                    self.duplicates.append(msg_id)
                else:
                    self._seen.add(msg_id)
                    self.processed.append({"id": msg_id, "type": (request["json"] or {}).get("type"),
                                           "at": request["at"]})
        return status, delay, (drip or [0])[0]

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver: the sender may reuse its connection

            def do_POST(self):
                try:
                    self._answer(*receiver._receive(self))
                except OSError:
                    pass  # the sender gave up (timeout) or died

            def _answer(self, status, delay, drip):
                if delay:
                    receiver._released.wait(delay)
                body = b'{"ok": true}'
                answer = (f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n").encode() + body
                if not drip:
                    self.wfile.write(answer)
                    return
                self.close_connection = True
                for i in range(len(answer)):
                    if receiver._released.wait(drip):
                        return
                    self.wfile.write(answer[i:i + 1])
                    self.wfile.flush()

            def log_message(self, *_args):
                pass

        return Handler

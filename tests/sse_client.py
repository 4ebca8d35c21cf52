"""A Server-Sent Events client for the tests: reads a stream in a thread and keeps every message it got."""
from __future__ import annotations

import json
import threading
import time

import requests


class EventStream:
    def __init__(self, url: str, headers: dict | None = None, last_event_id: int | None = None):
        headers = dict(headers or {})
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.response = requests.get(url, headers=headers, stream=True, timeout=(5, 60))
        self.status_code = self.response.status_code
        self.messages: list[dict] = []  # {"id": int | None, "event": str, "data": dict}
        self.comments = 0
        self.closed = False
        self._lock = threading.Lock()
        if self.status_code == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        fields: dict = {}
        try:
            for line in self.response.iter_lines(decode_unicode=True):
                if line.startswith(":"):
                    self.comments += 1
                elif line == "":
                    if "event" in fields:
                        message = {"id": int(fields["id"]) if "id" in fields else None, "event": fields["event"],
                                   "data": json.loads(fields.get("data", "null"))}
                        with self._lock:
                            self.messages.append(message)
                    fields = {}
                else:
                    name, _, value = line.partition(": ")
                    fields[name] = value
        except (requests.RequestException, AttributeError, ValueError):
            pass
        finally:
            self.closed = True

    def of(self, event: str | None = None) -> list[dict]:
        with self._lock:
            return [m for m in self.messages if event is None or m["event"] == event]

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "") -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.of()):
                return self.of()
            time.sleep(0.02)
        raise AssertionError(f"stream: {what or 'condition'} not met in {timeout} s; got "
                             f"{[(m['id'], m['event']) for m in self.of()]}")

    def close(self):
        self.response.close()

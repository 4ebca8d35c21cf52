"""What every fake of an outside service shares: a real HTTP server on 127.0.0.1 (a free port) in a thread."""
from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer


class LocalServer:
    def __init__(self, handler_class, address=("127.0.0.1", 0)):
        self._server = ThreadingHTTPServer(address, handler_class)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address
        return f"http://{host}:{port}"

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()

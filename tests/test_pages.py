"""Pages in a real headless Chromium (Debian's package, installed by `make test`), served by a real HTTP server on
127.0.0.1, with every other host unreachable: what a newcomer with no internet sees."""
from __future__ import annotations

import re
import shutil
import subprocess
import threading

import pytest
from conftest import SETTINGS
from werkzeug.serving import make_server

from web import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def render(url: str, tmp_path) -> str:
    """The page's DOM after its scripts ran, in headless Chromium that can reach 127.0.0.1 only."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs it (Debian's package)")
    out = subprocess.run([
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # no network but this machine
        "--virtual-time-budget=20000", "--dump-dom", url,
    ], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.fixture
def live_server(database):
    server = make_server("127.0.0.1", 0, create_app(SETTINGS), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_swagger_ui_renders_every_operation_offline(live_server, tmp_path):
    import requests

    spec = requests.get(live_server + "/openapi.json", timeout=10).json()
    verbs = {"get", "put", "post", "delete", "patch"}
    wanted = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops if method in verbs}
    dom = render(live_server + "/docs", tmp_path)
    shown = set(re.findall(r'class="opblock-summary-method">(\w+)</span>.*?data-path="([^"]+)"', dom, re.S))
    assert shown == wanted, sorted(wanted - shown)

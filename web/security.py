"""Security headers on every answer (docs/architecture.md, "Pages").

Pages (HTML) get a strict Content-Security-Policy: scripts and styles from this origin only (no inline script or
style: the pages' script is web/static/pages.js), connections to this origin and the stream process's, no framing.
API answers (JSON, CSV, the event stream) get `default-src 'none'`: a browser that renders one runs nothing.
Swagger UI (/docs) has its own policy, since flask-smorest's page starts it with one inline script: that script is
allowed by its hash, nothing else inline. Every answer: nosniff, no Referer (the overlay's URL is a secret),
no framing, no powerful browser features."""
from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import urlsplit

from flask import request

API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
COMMON = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=(), interest-cohort=()",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def page_policy(stream_url: str) -> str:
    return ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src 'self' {_origin(stream_url)}; frame-ancestors 'none'; base-uri 'none'; "
            "form-action 'self'; object-src 'none'")


def docs_policy(body: bytes) -> str:
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'"
                      for s in _INLINE_SCRIPT.findall(body))
    # Swagger UI's React code sets style attributes and injects a few style elements: inline styles only.
    return (f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")


def init_security_headers(app, settings) -> None:
    pages = page_policy(settings.stream_base_url)

    api_headers = [*COMMON.items(), ("Content-Security-Policy", API_POLICY)]

    @app.after_request
    def _headers(response):
        if request.is_secure:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        if response.mimetype != "text/html":
            # No view sets these on an API answer: appended in one go (setdefault, one by one, cost ~50 us).
            response.headers.extend(api_headers)
            return response
        for name, value in COMMON.items():
            response.headers.setdefault(name, value)
        if request.path == app.config["OPENAPI_SWAGGER_UI_PATH"]:
            policy = docs_policy(response.get_data())
        else:
            policy = pages
            response.headers.setdefault("Cache-Control", "no-store")  # pages show a person's queue and sales
        response.headers.setdefault("Content-Security-Policy", policy)
        return response

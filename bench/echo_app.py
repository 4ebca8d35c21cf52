"""The echo ceiling: a bare WSGI app that answers a POSTed JSON body back, served by the same gunicorn
configuration as the product (`gunicorn bench.echo_app:app`). No Flask, no database, no Redis."""
import json


def app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b"{}"
    body = json.dumps({"echo": json.loads(raw or b"{}")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]

"""The echo ceilings, served by the same gunicorn configuration as the product: `bench.echo_app:app`, a bare
WSGI app that answers a POSTed JSON body back, and `bench.echo_app:flask_app`, the same echo as a one-route
Flask app (what the issue's reference figure, ~2,500 req/s, measured). No database, no Redis."""
import json

from flask import Flask, jsonify, request


def app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b"{}"
    body = json.dumps({"echo": json.loads(raw or b"{}")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


flask_app = Flask(__name__)


@flask_app.route("/", methods=["GET", "POST"])
def echo():
    return jsonify(echo=request.get_json(silent=True) or {})

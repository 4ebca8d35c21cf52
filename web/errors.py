"""One error envelope for every failure: {"error": {"code": ..., "message": ...}} with the right status."""
from __future__ import annotations

import logging

import redis
from flask import jsonify
from sqlalchemy.exc import DataError, OperationalError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

_CODE_FOR_STATUS = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "service_unavailable",
}


class DependencyUnavailable(Exception):
    """A service outside perfmenu that a request needs (the platform's key set) did not answer: 503, retry."""


class ApiError(Exception):
    def __init__(self, http_status: int, code: str, message: str, /, headers: dict | None = None, **extra):
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra


def error_response(status: int, code: str, message: str, /, **extra):
    body = {"error": {"code": code, "message": message}}
    body.update(extra)
    return jsonify(body), status


def _api_error(exc: ApiError):
    response, status = error_response(exc.http_status, exc.code, exc.message, **exc.extra)
    response.headers.update(exc.headers)
    return response, status


def _http_error(exc: HTTPException):
    status = exc.code or 500
    extra = {}
    messages = (getattr(exc, "data", None) or {}).get("messages")
    if messages:
        # webargs/marshmallow: {location: {field: [messages]}}; keep only the field map.
        fields = {}
        for by_field in messages.values():
            if isinstance(by_field, dict):
                fields.update(by_field)
        if fields:
            extra["fields"] = fields
            message = "The request is invalid: " + ", ".join(sorted(str(f) for f in fields))
        else:  # e.g. {"json": ["Invalid JSON body."]}
            message = " ".join(str(m) for msgs in messages.values() for m in (msgs if isinstance(msgs, list) else [msgs]))
    else:
        message = exc.description or exc.name
    response, status = error_response(status, _CODE_FOR_STATUS.get(status, "error"), message, **extra)
    for name, value in exc.get_headers():  # e.g. `Allow` on a 405 (RFC 9110)
        if name.lower() != "content-type":
            response.headers[name] = value
    return response, status


def _data_error(exc: DataError):
    # The database refused a value that passed validation (a NUL character, a number out of range...): the
    # request's transaction is never committed, so nothing was written. Bad input, not a server fault.
    log.warning("database refused a request value: %s", type(exc.orig).__name__)
    return error_response(422, "invalid_request", "A value in the request is not acceptable")


def _unavailable(exc: Exception):
    # The database connection dropped or Redis is unreachable mid-request. Nothing uncommitted was kept; a
    # commit whose answer was lost is found again by retrying with the same Idempotency-Key.
    log.warning("backing service unavailable: %s", type(exc).__name__)
    response, status = error_response(503, "service_unavailable", "A backing service is briefly unavailable: "
                                      "retry with the same Idempotency-Key")
    response.headers["Retry-After"] = "1"
    return response, status


def _unexpected(exc: Exception):
    log.exception("unhandled error")
    return error_response(500, "internal_error", "An unexpected error occurred")


def register_error_handlers(app) -> None:
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(DataError, _data_error)
    for exc in (OperationalError, redis.ConnectionError, redis.TimeoutError, DependencyUnavailable):
        app.register_error_handler(exc, _unavailable)
    app.register_error_handler(Exception, _unexpected)

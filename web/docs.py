"""OpenAPI documentation helpers: the error responses (ErrorOut envelope, with an example) and public routes.

Authentication is documented once: the document's global `security` is bearerAuth; `public` marks the few
routes that need no token, and `auth.role_required` adds the 401/403 responses to every route it guards."""
from __future__ import annotations

import os
import re

import flask_swagger_ui
from flask import Blueprint as FlaskBlueprint
from flask import send_from_directory
from flask_smorest import Blueprint

from .schemas import ErrorOut

# Never registered: only its documentation decorators are used, by routes of any blueprint.
_doc = Blueprint("_doc", __name__)

DEFAULT_ERRORS = {
    400: ("invalid_request", "The request is invalid"),
    401: ("unauthorized", "A bearer token is required"),
    402: ("insufficient_balance", "Not enough tokens for this item"),
    403: ("forbidden", "Your role may not do this"),
    404: ("not_found", "Not found"),
    409: ("conflict", "The request conflicts with the current state"),
    422: ("invalid_request", "The request is invalid"),
    429: ("rate_limited", "10 per 1 minute"),
    503: ("not_ready", "Not ready: redis"),
}


_LEADING_CODE = re.compile(r"^(?:\d{3} )?([a-z][a-z_]+)")


def error(status: int, code: str | None = None, message: str | None = None, description: str | None = None,
          headers: dict | None = None):
    """Document an error response of `status` with the ErrorOut envelope and an example body. Without `code`, the
    example's code is the description's first word ("not_found: no such menu" -> not_found)."""
    default_code, default_message = DEFAULT_ERRORS.get(status, ("error", "The request failed"))
    if code is None:
        match = _LEADING_CODE.match(description or "")
        code = match.group(1) if match else default_code
    if message is None:
        message = default_message if code == default_code else code.replace("_", " ").capitalize()
    documented = _doc.alt_response(status, schema=ErrorOut, description=description or code,
                                   example={"error": {"code": code, "message": message}}, headers=headers)

    def decorator(func):
        # flask-smorest wraps the view in a layer that only calls through, to carry the docs: keep the docs, drop
        # the layer (a route documents up to eight errors; the layers cost ~30 us a purchase, bench/layers.py).
        func._apidoc = documented(func)._apidoc
        return func

    return decorator


def errors(*statuses: int):
    """Document several error statuses with their default example."""

    def decorator(func):
        for status in statuses:
            func = error(status)(func)
        return func

    return decorator


def rate_limited(func):
    return error(429, description="rate_limited: too many requests; retry after the Retry-After seconds",
                 headers={"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}})(func)


def public(func):
    """A route that needs no token (login, health, metrics, signed callbacks)."""
    return _doc.doc(security=[])(func)


# Swagger UI at /docs, from the swagger-ui-dist files the flask-swagger-ui package ships (a pinned dependency),
# served here: the page works without internet. Text is sent as UTF-8, or the bundle's non-ASCII text breaks.
SWAGGER_UI_DIST = os.path.join(os.path.dirname(flask_swagger_ui.__file__), "dist")
SWAGGER_UI_ASSETS_URL = "/docs/assets/"
_ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}  # Flask adds the charset
swagger_assets = FlaskBlueprint("swagger_assets", __name__)


@swagger_assets.route(SWAGGER_UI_ASSETS_URL + "<name>")
def swagger_asset(name):
    mimetype = _ASSET_TYPES.get(os.path.splitext(name)[1])
    if mimetype is None:
        from werkzeug.exceptions import NotFound

        raise NotFound()
    return send_from_directory(SWAGGER_UI_DIST, name, mimetype=mimetype, max_age=86400)

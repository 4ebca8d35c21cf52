"""The HTTP API: app factory, blueprints per area, schemas, auth, the error envelope."""
from __future__ import annotations

from datetime import timedelta

from flask import Flask
from flask_smorest import Api
from werkzeug.middleware.proxy_fix import ProxyFix

from models.runtime import Runtime
from models.settings import Settings, settings_or_exit
from worker import handoff

from . import (admin, auth, docs, earnings, events, lovense, menu_manage, menus, ops, pages, purchases, queue_routes,
               shows, wallet, webhooks)
from .cli import register_cli
from .deps import close_db
from .errors import register_error_handlers
from .request_body import RequestBody
from .schemas import ErrorOut
from .security import init_security_headers


class PerfmenuApi(Api):
    # flask-smorest's automatic responses (422 of @arguments, "default") document our error envelope.
    ERROR_SCHEMA = ErrorOut


def create_app(settings: Settings | None = None) -> Flask:
    """The app, governed by `settings` in everything its requests use (database, Redis, limits, secrets).
    Without settings (the `flask --app web` CLI) they are read from the environment, once, here."""
    settings = settings or settings_or_exit()
    runtime = Runtime(settings)
    app = Flask(__name__)
    app.extensions["perfmenu"] = runtime
    handoff.connect(runtime)  # the Celery app publishes (embedded: runs) tasks with this app's runtime
    if settings.trusted_proxies:
        # Behind N reverse proxies: take the client address (for the login rate limit) from X-Forwarded-For.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies)
    app.config.update(
        JWT_SECRET_KEY=settings.jwt_secret_key,
        JWT_ACCESS_TOKEN_EXPIRES=timedelta(minutes=settings.access_token_minutes),
        JWT_REFRESH_TOKEN_EXPIRES=timedelta(days=settings.refresh_token_days),
        MAX_CONTENT_LENGTH=64 * 1024,
        API_TITLE="perfmenu",
        API_VERSION="1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL=docs.SWAGGER_UI_ASSETS_URL,
        API_SPEC_OPTIONS={
            "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
            "security": [{"bearerAuth": []}],
        },
    )
    # Below Flask: chunked bodies over the limit, and the connection after a body left unread (413...).
    app.wsgi_app = RequestBody(app.wsgi_app, app)
    ops.init_request_hooks(app)  # first, so the request id is known to everything after it
    auth.init_jwt(app, settings)
    api = PerfmenuApi(app)
    blueprints = (ops.blp, auth.blp, menus.blp, menu_manage.blp, purchases.blp, queue_routes.blp, wallet.blp, admin.blp,
                  lovense.blp, earnings.blp, events.blp, webhooks.blp, shows.blp)
    for blueprint in blueprints:
        api.register_blueprint(blueprint)
    app.register_blueprint(docs.swagger_assets)
    pages.register(app, api)  # the console, fan page and overlay (HTML), and the model's overlay-link routes
    init_security_headers(app, settings)  # CSP and the other security headers on every answer
    register_error_handlers(app)  # after Api(), so our envelope replaces flask-smorest's
    app.teardown_appcontext(close_db)
    register_cli(app)
    return app

"""Rate limits (Flask-Limiter) on Redis storage: login per client address, purchases per fan.

Limits come from the settings (RATE_LIMIT_LOGIN, RATE_LIMIT_PURCHASE). A refused request gets 429 with
`Retry-After` and the error envelope. If Redis cannot be reached the limiter lets requests through (it logs
the error): the database rules, not the limiter, protect the money."""
from __future__ import annotations

from flask import current_app
from flask_jwt_extended import get_jwt_identity, verify_jwt_in_request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

limiter = Limiter(key_func=get_remote_address, headers_enabled=True, swallow_errors=True,
                  key_prefix="perfmenu:ratelimit")


def init_limiter(app, settings) -> None:
    app.config["RATELIMIT_STORAGE_URI"] = settings.redis_url or "memory://"
    app.config.setdefault("RATELIMIT_STORAGE_OPTIONS", {"socket_connect_timeout": 2, "socket_timeout": 2})

    @app.after_request
    def _retry_after_only_on_429(response):
        # Registered before the limiter's own hook, so it runs after it: Flask-Limiter sets Retry-After on
        # every limited response; keep it only on a 429, and on a 503 (a backing service blip) say "1 second".
        if response.status_code == 503:
            response.headers["Retry-After"] = "1"
        elif response.status_code != 429:
            response.headers.pop("Retry-After", None)
        return response

    limiter.init_app(app)


def login_limit() -> str:
    return current_app.config["PERFMENU_SETTINGS"].login_rate_limit


def purchase_limit() -> str:
    return current_app.config["PERFMENU_SETTINGS"].purchase_rate_limit


def fan_key() -> str:
    """The signed-in user's id (a request without a valid token is limited by address, then refused)."""
    try:
        identity = get_jwt_identity()  # already verified by role_required: don't decode the token twice
    except RuntimeError:
        verify_jwt_in_request(optional=True)
        identity = get_jwt_identity()
    return f"user:{identity}" if identity else f"addr:{get_remote_address()}"

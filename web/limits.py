"""Rate limits (Flask-Limiter) on Redis storage: login per client address, purchases per fan.

Limits come from the settings (RATE_LIMIT_LOGIN, RATE_LIMIT_PURCHASE). A refused request gets 429 with
`Retry-After` and the error envelope. No X-RateLimit-* headers on other answers: they cost two more Redis
round trips on every purchase (measured in bench/). If Redis cannot be reached the limiter lets requests
through (it logs the error): the database rules, not the limiter, protect the money."""
from __future__ import annotations

import time

from flask import g
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from .deps import settings

limiter = Limiter(key_func=get_remote_address, headers_enabled=False, swallow_errors=True,
                  key_prefix="perfmenu:ratelimit")


def init_limiter(app, settings) -> None:
    app.config["RATELIMIT_STORAGE_URI"] = settings.redis_url or "memory://"
    app.config.setdefault("RATELIMIT_STORAGE_OPTIONS", {"socket_connect_timeout": 2, "socket_timeout": 2})

    limiter.init_app(app)


def retry_after_seconds() -> int:
    """Seconds until the limit this request broke lets requests through again (for a 429's Retry-After)."""
    limit = limiter.current_limit
    try:
        return max(1, int(limit.reset_at - time.time())) if limit else 1
    except Exception:  # the storage went away since the hit: any short wait will do
        return 1


def login_limit() -> str:
    return settings().login_rate_limit


def purchase_limit() -> str:
    return settings().purchase_rate_limit


def fan_key() -> str:
    """The signed-in user's id (authenticated by role_required); a request not authenticated yet is limited by
    its address, then refused."""
    identity = g.get("identity")
    return f"user:{identity[0]}" if identity else f"addr:{get_remote_address()}"

"""Rate limits, counted in Redis so every process and machine shares them: login per client address, purchases
per fan (RATE_LIMIT_LOGIN, RATE_LIMIT_PURCHASE, in the `limits` library's notation: "10 per minute", several
joined by ";").

Fixed windows, as Flask-Limiter counts them (a window opens at a key's first hit and lasts its period), in one
Lua round trip per request for all of a setting's limits: on the purchase path this is one EVALSHA instead of
Flask-Limiter's several calls and its check on every request (measured: bench/layers.py). A refused request
gets 429 `rate_limited` with `Retry-After`. If Redis cannot be reached the request goes through (logged): the
database rules, not the limiter, protect the money."""
from __future__ import annotations

import logging
from functools import lru_cache, wraps

from flask import g, request
from limits import parse_many
from redis import RedisError

from .deps import redis, settings
from .errors import ApiError

log = logging.getLogger(__name__)
KEY_PREFIX = "perfmenu:ratelimit:"

# KEYS: one counter per limit; ARGV: period, amount of each. Counts a hit on every limit and answers 0 (allowed)
# or the seconds until the most distant window that is over its amount ends.
_HIT_LUA = """
local wait = 0
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('EXPIRE', key, ARGV[2 * i - 1]) end
  if n > tonumber(ARGV[2 * i]) then
    local ttl = redis.call('TTL', key)
    if ttl < 1 then ttl = 1 end
    if ttl > wait then wait = ttl end
  end
end
return wait
"""
_scripts: dict = {}  # per Redis client (one per process and URL): its registered script


@lru_cache(maxsize=16)
def _parsed(setting: str) -> tuple[tuple[str, int, int], ...]:
    """(name, period seconds, amount) of each limit of a setting, e.g. ("30/60", 60, 30)."""
    return tuple((f"{item.amount}/{item.get_expiry()}", item.get_expiry(), item.amount) for item in parse_many(setting))


def _hit(client, setting: str, who: str) -> int:
    script = _scripts.get(id(client))
    if script is None or script.registered_client is not client:
        script = _scripts[id(client)] = client.register_script(_HIT_LUA)
    limits = _parsed(setting)
    args = []
    for _name, period, amount in limits:
        args += (period, amount)
    return int(script(keys=[f"{KEY_PREFIX}{name}:{who}" for name, _p, _a in limits], args=args))


def enforce(setting: str, who: str) -> None:
    """Count one request of `who` against `setting`; 429 if it is over any of the limits."""
    try:
        wait = _hit(redis(), setting, who)
    except RedisError as exc:
        log.warning("rate limit not checked: %s", type(exc).__name__)
        return
    if wait:
        raise ApiError(429, "rate_limited", "Too many requests: " + setting, headers={"Retry-After": str(wait)})


def limited(setting_of, key_of):
    """Decorate a view: `setting_of(settings)` names the limit, `key_of()` whom it counts."""

    def decorator(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            enforce(setting_of(settings()), key_of())
            return view(*args, **kwargs)

        return wrapper

    return decorator


def client_address() -> str:
    return f"addr:{request.remote_addr}"  # ProxyFix (TRUSTED_PROXIES) has put the client's address here


def signed_in_user() -> str:
    """The signed-in user's id (authenticated by role_required, which runs first)."""
    return f"user:{g.identity[0]}"


login_limited = limited(lambda s: s.login_rate_limit, client_address)
purchase_limited = limited(lambda s: s.purchase_rate_limit, signed_in_user)

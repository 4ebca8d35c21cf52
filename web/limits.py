"""Rate limits: login attempts per client address (RATE_LIMIT_LOGIN), purchases per fan (RATE_LIMIT_PURCHASE),
both in the `limits` library's notation ("10 per minute", several joined by ";").

Login: fixed windows counted in Redis (a window opens at a key's first hit and lasts its period), all of the
setting's limits in one Lua round trip; if Redis cannot be reached the attempt goes through (logged).

Purchases: the purchases the fan made in the last period (a sliding window), counted by the database in
intake's one read (web/purchases.py): exact across processes, still counted when Redis is down, and no round
trip of its own on the hot path (bench/layers.py). A request refused for another reason (402, 404...) writes
no purchase and is not counted; an idempotent retry of a purchase is answered, never limited.

Over a limit: 429 `rate_limited` with `Retry-After`."""
from __future__ import annotations

import logging
import math
from datetime import timedelta
from functools import lru_cache, wraps

from flask import request
from limits import parse_many
from redis import RedisError
from sqlalchemy import func, select

from models.purchases import Purchase

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


login_limited = limited(lambda s: s.login_rate_limit, client_address)


def purchase_limits(setting: str) -> tuple[tuple[int, int], ...]:
    """(period seconds, amount) of each limit of RATE_LIMIT_PURCHASE."""
    return tuple((period, amount) for _name, period, amount in _parsed(setting))


def recent_purchases_column(fan_id, since):
    """A column: the fan's purchases made after `since` (intake's read selects one per limit)."""
    return select(func.count()).select_from(Purchase).where(Purchase.fan_id == fan_id,
                                                            Purchase.created_at > since).scalar_subquery()


def refuse_over_purchase_limit(session, fan_id, setting: str, recent: list[int], now) -> None:
    """429 if the fan's purchases in a period (`recent`, one count per limit) reached its amount. Retry-After:
    until their oldest purchase in that period leaves it (only asked when refusing)."""
    for (period, amount), count in zip(purchase_limits(setting), recent):
        if count >= amount:
            since = now - timedelta(seconds=period)
            oldest = session.scalar(select(func.min(Purchase.created_at)).where(Purchase.fan_id == fan_id,
                                                                                Purchase.created_at > since))
            wait = max(1, math.ceil(period - (now - oldest).total_seconds())) if oldest else 1
            raise ApiError(429, "rate_limited", "Too many purchases: " + setting, headers={"Retry-After": str(wait)})

"""The process's Redis client. In embedded mode an in-process stand-in (fakeredis) takes its place, so the
service can be tried with no server; every deployment and every test of behaviour uses a real Redis."""
from __future__ import annotations

from functools import lru_cache

import redis


@lru_cache(maxsize=4)
def redis_for(url: str | None):
    """One client (one connection pool) per Redis URL and process; None: the embedded stand-in."""
    if url is None:
        import fakeredis

        return fakeredis.FakeRedis(decode_responses=True)
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2,
                                health_check_interval=30)

"""The process's Redis client. In embedded mode an in-process stand-in (fakeredis) takes its place, so the
service can be tried with no server; every deployment and every test of behaviour uses a real Redis."""
from __future__ import annotations

from functools import lru_cache

import redis

from models.settings import get_settings


@lru_cache(maxsize=4)
def _client_for(url: str | None):
    if url is None:
        import fakeredis

        return fakeredis.FakeRedis(decode_responses=True)
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2,
                                health_check_interval=30)


def get_redis():
    return _client_for(get_settings().redis_url)

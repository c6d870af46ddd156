from __future__ import annotations

import functools

import redis
from django.conf import settings


@functools.cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, health_check_interval=30)


def get_redis() -> redis.Redis:
    """The shared client of this process (one connection pool per REDIS_URL)."""
    return _client(settings.REDIS_URL)

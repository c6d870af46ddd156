"""The Redis clients of the web and controller processes.

redis-py 8 gives every connection a 5 s socket timeout (`redis._defaults`), which turns a
blocking command that waits longer (a sync request's BLPOP on a 7 s predict) into a
TimeoutError and an HTTP 500. So there are two pools:

- `get_redis()`: ordinary commands; a short connect timeout and a socket timeout of
  REDIS_SOCKET_TIMEOUT_SECONDS, so that a Redis that is down or stuck fails fast (the API
  answers 503) instead of hanging a web thread.
- `get_waiting_redis()`: blocking waits of the request path (sync BLPOP). Its socket timeout
  is the longest wait the server allows (SYNC_TASK_TIMEOUT_SECONDS) plus a margin, so the
  wait's own timeout always runs out first.
"""

from __future__ import annotations

import functools

import redis
from django.conf import settings

# Above any wait we issue, so the command's timeout, not the socket's, ends it.
WAIT_MARGIN_SECONDS = 10.0


@functools.cache
def _client(url: str, socket_timeout: float) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        health_check_interval=30,
        socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT_SECONDS,
        socket_timeout=socket_timeout,
    )


def get_redis() -> redis.Redis:
    """The shared client of this process (one connection pool per REDIS_URL)."""
    return _client(settings.REDIS_URL, settings.REDIS_SOCKET_TIMEOUT_SECONDS)


def get_waiting_redis() -> redis.Redis:
    """For blocking waits of up to SYNC_TASK_TIMEOUT_SECONDS (a pool of its own)."""
    return _client(settings.REDIS_URL, settings.SYNC_TASK_TIMEOUT_SECONDS + WAIT_MARGIN_SECONDS)

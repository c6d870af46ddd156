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

The inference views wait in an event loop (ASGI), with the same two timeouts on redis.asyncio
clients: `async_redis(shared=True)` gives the process's pair for the running loop (one pool
each per worker: ASGI runs one loop); `shared=False` a pair for this request only, closed
after it (a view run under WSGI gets a new loop per request, and a pool cannot outlive its
loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from collections.abc import AsyncIterator

import redis
import redis.asyncio
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


# redis-py caps a pool at 100 connections by default. A waiting request holds one of the
# waiting pool's for its whole wait, and under ASGI a worker has up to its backpressure
# (launch.WEB_BACKPRESSURE) requests in flight; past the cap it would answer 503.
ASYNC_POOL_MAX_CONNECTIONS = 4096


def _async_client(url: str, socket_timeout: float) -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(
        url,
        max_connections=ASYNC_POOL_MAX_CONNECTIONS,
        health_check_interval=30,
        socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT_SECONDS,
        socket_timeout=socket_timeout,
    )


def _async_pair() -> tuple[redis.asyncio.Redis, redis.asyncio.Redis]:
    url = settings.REDIS_URL
    return (_async_client(url, settings.REDIS_SOCKET_TIMEOUT_SECONDS),
            _async_client(url, settings.SYNC_TASK_TIMEOUT_SECONDS + WAIT_MARGIN_SECONDS))


_loop_pairs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def async_redis(*, shared: bool) -> AsyncIterator[tuple[redis.asyncio.Redis, redis.asyncio.Redis]]:
    """(client, waiting client): as get_redis() and get_waiting_redis(), for the event loop."""
    if not shared:
        pair = _async_pair()
        try:
            yield pair
        finally:
            for client in pair:
                await client.aclose()
        return
    loop = asyncio.get_running_loop()
    pairs = _loop_pairs.setdefault(loop, {})
    url = settings.REDIS_URL
    if url not in pairs:
        pairs[url] = _async_pair()
    yield pairs[url]

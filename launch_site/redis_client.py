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
clients and on the task routes' own pipelines (AsyncRedis): `async_redis(shared=True)` gives
the process's for the running loop (one pool each per worker: ASGI runs one loop);
`shared=False` ones for this request only, closed after it (a view run under WSGI gets a new
loop per request, and a pool cannot outlive its loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis
import redis.asyncio
from django.conf import settings

from launch_site.redis_pipelines import PipelinePool

# Above any wait we issue, so the command's timeout, not the socket's, ends it.
WAIT_MARGIN_SECONDS = 10.0

# redis-py 8 sends CLIENT SETINFO (its name and version) on every new connection, and builds
# that version for each one from importlib.metadata (0.6 ms: a scan of site-packages; in a
# process forked from the supervisor it also copies 2 MB of shared pages). Redis before 7.2
# refuses the command anyway. None: not sent, not built. For every client we make.
NO_CLIENT_SETINFO = {"driver_info": None}


def new_client(url: str, **options) -> redis.Redis:
    """A redis-py client of its own, with what every client of ours has: the short connect
    timeout and no CLIENT SETINFO."""
    return redis.Redis.from_url(url, socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT_SECONDS,
                                **NO_CLIENT_SETINFO, **options)


@functools.cache
def _client(url: str, socket_timeout: float) -> redis.Redis:
    return new_client(url, health_check_interval=30, socket_timeout=socket_timeout)


def get_redis() -> redis.Redis:
    """The shared client of this process (one connection pool per REDIS_URL)."""
    return _client(settings.REDIS_URL, settings.REDIS_SOCKET_TIMEOUT_SECONDS)


def get_waiting_redis() -> redis.Redis:
    """For blocking waits of up to SYNC_TASK_TIMEOUT_SECONDS (a pool of its own)."""
    return _client(settings.REDIS_URL, settings.SYNC_TASK_TIMEOUT_SECONDS + WAIT_MARGIN_SECONDS)


# redis-py caps a pool at 100 connections by default. A waiting request holds one of the
# waiting pool's for its whole wait, and under ASGI a worker holds as many requests as come
# (web_server: no concurrency cap); past the pool's cap it would answer 503.
ASYNC_POOL_MAX_CONNECTIONS = 4096


def _async_client(url: str, socket_timeout: float) -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(
        url,
        max_connections=ASYNC_POOL_MAX_CONNECTIONS,
        health_check_interval=30,
        socket_connect_timeout=settings.REDIS_CONNECT_TIMEOUT_SECONDS,
        socket_timeout=socket_timeout,
        **NO_CLIENT_SETINFO,
    )


@dataclass(frozen=True)
class AsyncRedis:
    """The event loop's clients: `client` and `waiting_client` as get_redis() and
    get_waiting_redis() (redis.asyncio); `pipelines` for the task routes' one round trip
    (launch_site.redis_pipelines), with the same timeouts: a round trip that waits passes its
    wait plus WAIT_MARGIN_SECONDS."""

    client: redis.asyncio.Redis
    waiting_client: redis.asyncio.Redis
    pipelines: PipelinePool

    async def aclose(self) -> None:
        for client in (self.client, self.waiting_client):
            await client.aclose()
        self.pipelines.close()


def _async_clients() -> AsyncRedis:
    url = settings.REDIS_URL
    return AsyncRedis(
        _async_client(url, settings.REDIS_SOCKET_TIMEOUT_SECONDS),
        _async_client(url, settings.SYNC_TASK_TIMEOUT_SECONDS + WAIT_MARGIN_SECONDS),
        PipelinePool(url, connect_timeout=settings.REDIS_CONNECT_TIMEOUT_SECONDS,
                     timeout=settings.REDIS_SOCKET_TIMEOUT_SECONDS),
    )


_loop_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def async_redis(*, shared: bool) -> AsyncIterator[AsyncRedis]:
    """The clients for the running event loop: with `shared`, the process's (ASGI runs one loop
    per worker); otherwise this caller's own, closed after it."""
    if not shared:
        clients = _async_clients()
        try:
            yield clients
        finally:
            await clients.aclose()
        return
    by_url = _loop_clients.setdefault(asyncio.get_running_loop(), {})
    url = settings.REDIS_URL
    if url not in by_url:
        by_url[url] = _async_clients()
    yield by_url[url]

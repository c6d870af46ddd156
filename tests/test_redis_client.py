"""Our Redis clients open connections without redis-py's CLIENT SETINFO, whose version string
redis-py rebuilds for each new connection from importlib.metadata (a scan of site-packages):
0.6 ms of CPU per connection, and pages of the supervisor's image copied into every forked
process (launch_site/redis_client.py)."""

from __future__ import annotations

import asyncio

import pytest
import redis.utils
from django.conf import settings

from launch_site import redis_client


@pytest.fixture
def version_lookups(monkeypatch):
    """Counts redis-py's version lookups (it imports get_lib_version at call time)."""
    calls = []
    original = redis.utils.get_lib_version

    def counted():
        calls.append(1)
        return original()

    monkeypatch.setattr(redis.utils, "get_lib_version", counted)
    return calls


def _answers(client) -> bool:
    try:
        return client.ping()
    finally:
        client.close()


def test_a_client_built_as_redis_py_builds_it_looks_its_version_up_for_every_connection(version_lookups):
    """What the setting avoids (so that the test below can fail)."""
    assert _answers(redis.Redis.from_url(settings.REDIS_URL))
    assert _answers(redis.Redis.from_url(settings.REDIS_URL))
    assert len(version_lookups) == 2


def test_our_clients_connect_without_looking_redis_pys_version_up(version_lookups):
    make_client = redis_client._client.__wrapped__  # a new pool, not the process's cached one
    for timeout in (1.0, 30.0):
        assert _answers(make_client(settings.REDIS_URL, timeout))

    async def async_clients() -> None:
        clients = redis_client._async_clients()
        try:
            for client in (clients.client, clients.waiting_client):
                assert await client.ping()
        finally:
            await clients.aclose()

    asyncio.run(async_clients())
    assert version_lookups == []

"""Shared fixtures: real Redis (embedded per test worker, or REDIS_URL's server with one DB
per xdist worker), real database (pytest-django; PostgreSQL when DATABASE_URL is set), and
the personas owner, teammate and outsider, each with an API key."""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest
from rest_framework.test import APIClient

_redis_process = None


def _worker_index() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker[2:]) if worker.startswith("gw") else 0


def _redis_url_for_this_worker() -> str:
    global _redis_process
    url = os.environ.get("REDIS_URL")
    if url and url.startswith("redis://"):
        # CI hands us the first of several empty DB indexes; each xdist worker takes its own.
        parsed = urlparse(url)
        base = int(parsed.path.lstrip("/") or 0)
        return urlunparse(parsed._replace(path=f"/{base + _worker_index()}"))
    if url:
        return url
    from launch_site.embedded_redis import start_embedded_redis

    directory = Path(tempfile.mkdtemp(prefix="launch-test-redis-"))
    _redis_process, url = start_embedded_redis(directory, persist=False)
    return url


def pytest_configure(config):
    from django.conf import settings

    url = _redis_url_for_this_worker()
    os.environ["REDIS_URL"] = url  # for subprocesses the tests start
    settings.REDIS_URL = url
    for queue in settings.RQ_QUEUES.values():
        queue["URL"] = url
    settings.BUNDLE_STORE_DIR = Path(tempfile.mkdtemp(prefix="launch-test-store-"))
    settings.SCALE_DOWN_DELAY_SECONDS = 60.0


def pytest_unconfigure(config):
    if _redis_process is not None:
        from launch_site.embedded_redis import stop_process

        stop_process(_redis_process)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """pytest-django's, with one step before it drops the test database: closing the
    connections that threads of this process opened and never closed (a test's racing client,
    a server's request thread), which would otherwise keep PostgreSQL from dropping it ("being
    accessed by other users")."""
    yield
    import gc

    from django.db import connections
    from django.db.backends.base.base import BaseDatabaseWrapper

    gc.collect()  # a dead thread's connection that only a reference cycle still holds
    own = {id(connections[alias]) for alias in connections}
    for wrapper in [obj for obj in gc.get_objects() if isinstance(obj, BaseDatabaseWrapper)]:
        if id(wrapper) not in own and wrapper.connection is not None:
            wrapper.connection.close()  # the driver's: Django's close() refuses another thread's connection


@dataclass
class Persona:
    user: object
    team: object
    key: str
    client: APIClient


def _persona(username: str, team_name: str) -> Persona:
    from accounts.services import api_key_create, team_get_or_create_for_user

    user, team = team_get_or_create_for_user(username=username, team_name=team_name)
    _, raw_key = api_key_create(user=user, team=team)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return Persona(user=user, team=team, key=raw_key, client=client)


@pytest.fixture
def owner(db) -> Persona:
    return _persona("olivia", "acme")


@pytest.fixture
def teammate(db, owner) -> Persona:
    return _persona("tom", "acme")


@pytest.fixture
def outsider(db) -> Persona:
    return _persona("oscar", "globex")


@pytest.fixture
def redis_client():
    from launch_site.redis_client import get_redis

    return get_redis()


@pytest.fixture
def key(request, redis_client):
    """A key prefix of this test's own (`test:<module>:<random>`); its keys are deleted after."""
    prefix = f"test:{request.module.__name__.rpartition('.')[2]}:{uuid.uuid4().hex}"
    yield prefix
    for name in redis_client.scan_iter(f"{prefix}*"):
        redis_client.delete(name)


from tests.docker_harness import docker_engines, docker_hosts  # noqa: E402,F401 - shared fixtures
from tests.stack import asgi_server, live_stack  # noqa: E402,F401 - shared fixtures

"""A bundle is hostile code: a probe bundle, run in a replica started by the real controller on
the local runtime, tries each escape, and every attempt is refused where containment is
claimed (Redis everywhere; the server's files and other replicas' environments where the
local runtime runs replicas as uids of their own). Where that is not claimed, the warning is
asserted instead."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import requests

from tests.stack import api_for
from tests.test_serving_e2e import echo_bundle

pytestmark = pytest.mark.django_db(transaction=True)


def probe_bundle():
    def load_predict_fn(model):
        def predict(paths, listings, other_prefix):
            import os

            import redis

            results = {}

            def attempt(name, action):
                try:
                    value = action()
                except Exception as error:  # noqa: BLE001 - every refusal is a result
                    results[name] = f"refused: {type(error).__name__}"
                else:
                    results[name] = f"ALLOWED: {str(value)[:80]}"

            mine = redis.Redis.from_url(os.environ["LAUNCH_REDIS_URL"])
            kwargs = dict(mine.connection_pool.connection_kwargs)
            anonymous = redis.Redis(connection_pool=redis.ConnectionPool(
                connection_class=mine.connection_pool.connection_class,
                **{k: v for k, v in kwargs.items() if k not in ("username", "password")},
            ))
            attempt("AUTH default", lambda: mine.execute_command("AUTH", "default", "guess"))
            attempt("HELLO AUTH default", lambda: mine.execute_command("HELLO", "3", "AUTH", "default", "guess"))
            attempt("no credentials: KEYS", lambda: anonymous.keys("*"))
            attempt("no credentials: PING", lambda: anonymous.ping())
            attempt("another prefix", lambda: mine.hget(other_prefix + "task:x", "payload"))
            attempt("another prefix: LPUSH", lambda: mine.lpush(other_prefix + "queue", "x"))
            attempt("KEYS", lambda: mine.keys("*"))
            attempt("FLUSHDB", lambda: mine.flushdb())
            attempt("CONFIG GET dir", lambda: mine.config_get("dir"))
            attempt("CONFIG SET dir", lambda: mine.config_set("dir", "/tmp"))
            for path in paths:
                attempt(f"read {path}", lambda path=path: open(path, "rb").read(16))
            for path in listings:
                attempt(f"list {path}", lambda path=path: os.listdir(path))
            me = os.environ["LAUNCH_REPLICA_ID"]
            read_environs = []
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) == os.getpid():
                    continue
                try:
                    environ = open(f"/proc/{entry}/environ", "rb").read()
                except OSError:
                    continue
                if b"SECRET" in environ or (b"LAUNCH_REPLICA_ID=" in environ and me.encode() not in environ):
                    read_environs.append(entry)
            results["environ of other replicas or the server"] = (
                f"ALLOWED: {read_environs}" if read_environs else "refused"
            )
            home = os.environ.get("HOME", "")
            results["home"] = home
            results["uid"] = os.getuid()
            return results

        return predict

    return {"model": None, "load_predict_fn": load_predict_fn}


@pytest.fixture
def own_embedded_redis(settings):
    """The suite may run on CI's Redis, whose default user has no password: containment is
    claimed for the embedded Redis (and an external one configured per SECURITY.md)."""
    from launch_site.embedded_redis import start_embedded_redis, stop_process

    directory = Path(tempfile.mkdtemp(prefix="launch-probe-"))
    process, url = start_embedded_redis(directory, persist=False)
    settings.REDIS_URL = url
    yield directory
    stop_process(process)
    shutil.rmtree(directory, ignore_errors=True)


def test_a_probe_bundle_is_refused_every_escape(own_embedded_redis, live_stack, owner, outsider, settings, client):
    from workers.protocol import endpoint_prefix
    from workers.runtimes.local import isolation_warning, replica_isolation

    owner_api, outsider_api = api_for(live_stack, owner), api_for(live_stack, outsider)
    victim = outsider_api.create_endpoint(outsider_api.upload_bundle(echo_bundle(), "victim"), "victim")
    probe = owner_api.create_endpoint(owner_api.upload_bundle(probe_bundle(), "probe"), "probe")
    outsider_api.wait_endpoint(victim, "READY", timeout=60, available_workers=1)
    owner_api.wait_endpoint(probe, "READY", timeout=60, available_workers=1)
    from launch_site.redis_client import get_redis

    get_redis().hset(endpoint_prefix(victim) + "task:x", "payload", "the victim's secret")

    home = Path(settings.LAUNCH_HOME)
    paths = [
        str(home / "secret_key"),
        str(settings.DATABASES["default"]["TEST"]["NAME"]),
        str(own_embedded_redis / "redis_password"),
        str(own_embedded_redis / "redis.conf"),
    ]
    listings = [str(home), str(settings.BUNDLE_STORE_DIR), str(home / "logs"), str(home / "replica-homes")]
    response = owner_api.post(
        f"/v1/sync-tasks?model_endpoint_id={probe}",
        json={"args": {"paths": paths, "listings": listings, "other_prefix": endpoint_prefix(victim)}},
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "SUCCESS", response.json()
    results = json.loads(response.json()["result"]["result"])

    # Redis holds on every runtime.
    for name in ("AUTH default", "HELLO AUTH default", "no credentials: KEYS", "no credentials: PING",
                 "another prefix", "another prefix: LPUSH", "KEYS", "FLUSHDB", "CONFIG GET dir", "CONFIG SET dir"):
        assert results[name].startswith("refused"), (name, results[name])
    assert get_redis().hget(endpoint_prefix(victim) + "task:x", "payload") == b"the victim's secret"

    server_side = [name for name in results if name.startswith(("read ", "list ", "environ "))]
    if replica_isolation():
        for name in server_side:
            assert results[name].startswith("refused"), (name, results[name])
        assert results["uid"] != 0 and results["home"].startswith(str(home / "replica-homes"))
        assert isolation_warning() is None
    else:
        # Not claimed: then it is said, on the dashboard (and by `launch up`).
        warning = isolation_warning()
        assert warning and "trusts every bundle author" in warning
        client.force_login(owner.user)
        assert "trusts every bundle author" in client.get("/endpoints/").content.decode()


def test_a_bundle_url_stops_working_when_its_replica_stops(live_stack, owner):
    from bundles.services import download_url_for
    from tests.factories import make_bundle
    from workers.models import Replica

    bundle = make_bundle(owner.team)
    replica = Replica.objects.create(owner_kind="endpoint", owner_id="end_x", runtime="local", state="starting")
    url = download_url_for(bundle.artifact, ttl_seconds=600, replica_id=replica.id).replace(
        "http://127.0.0.1:8000", live_stack
    )
    assert requests.get(url, timeout=10).status_code != 403  # 404: this factory's bundle has no bytes
    Replica.objects.filter(pk=replica.pk).update(state="stopped")
    refused = requests.get(url, timeout=10)
    assert refused.status_code == 403 and "signature" in refused.json()["detail"]


@pytest.fixture
def no_isolation(settings):
    from workers.runtimes import local

    settings.LOCAL_REPLICA_UIDS = None
    local._isolation_check.cache_clear()
    yield
    local._isolation_check.cache_clear()


def test_where_replicas_cannot_be_contained_the_dashboard_says_so(no_isolation, owner, client, settings):
    from workers.runtimes.local import isolation_warning

    warning = isolation_warning()
    assert "trusts every bundle author" in warning and "LOCAL_REPLICA_UIDS is off" in warning
    client.force_login(owner.user)
    html = client.get("/endpoints/").content.decode()
    assert 'id="runtime-warning"' in html and "trusts every bundle author" in html
    settings.LAUNCH_RUNTIME = "docker"
    assert isolation_warning() is None
    assert 'id="runtime-warning"' not in client.get("/endpoints/").content.decode()

"""Replica Redis credentials: an ACL user that reaches its own prefix and nothing else."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import redis
from django.conf import settings

from workers import protocol, redis_acl


@pytest.fixture
def granted(redis_client):
    prefix = protocol.endpoint_prefix(f"end_{uuid.uuid4().hex[:10]}")
    replica_id = f"rep_{uuid.uuid4().hex[:12]}"
    url = redis_acl.replica_redis_url(prefix=prefix, replica_id=replica_id)
    yield prefix, replica_id, url
    redis_acl.revoke(replica_id)


def test_a_replica_reaches_its_own_keys_only(granted, redis_client):
    prefix, _, url = granted
    assert url != settings.REDIS_URL and redis_acl.user_name(granted[1]) in url
    other = protocol.endpoint_prefix("end_someone_else")
    redis_client.hset(other + "task:x", "payload", "secret")
    replica = redis.Redis.from_url(url)

    replica.hset(prefix + "task:t", mapping={"status": "STARTED"})
    replica.lpush(prefix + "queue", "t")
    assert replica.blmove(prefix + "queue", prefix + "inflight:r", 1, "RIGHT", "LEFT") == b"t"
    assert replica.hget(prefix + "task:t", "status") == b"STARTED"

    for attempt in (
        lambda: replica.hget(other + "task:x", "payload"),
        lambda: replica.lpush(other + "queue", "x"),
        lambda: replica.keys("*"),
        lambda: replica.flushdb(),
        lambda: replica.config_get("*"),
        lambda: replica.eval("return redis.call('GET', KEYS[1])", 1, other + "task:x"),
        lambda: replica.acl_setuser("evil", enabled=True),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    assert redis_client.hget(other + "task:x", "payload") == b"secret"
    redis_client.delete(other + "task:x")


def test_a_replica_can_finish_a_task_it_took(granted, redis_client):
    """Every command of the finish script (run with the replica's user: a script's commands are
    checked too) is granted: the outcome is recorded and the entry leaves the in-flight list."""
    prefix, replica_id, url = granted
    keys, task_id = protocol.Keys(prefix), protocol.task_id_for("end_acl", "t")
    replica = redis.Redis.from_url(url)
    redis_client.hset(keys.task(task_id), mapping={"status": "STARTED", "sync": "1", "created_at": 1, "started_at": 2})
    redis_client.lpush(keys.queue, protocol.queue_entry(task_id, expires_at=9e9, payload="{}"))
    assert replica.blmove(keys.queue, keys.inflight(replica_id), 1, "RIGHT", "LEFT")
    result, record, literal_at = protocol.finish_arguments(protocol.SUCCESS, "1", "", b"", mark=None)
    assert replica.eval(
        protocol.FINISH_SCRIPT, 6, keys.task(task_id), keys.inflight(replica_id), keys.done(task_id), keys.stats,
        keys.running, keys.callbacks, protocol.SUCCESS, result, "", b"", 3, b"".join(record), 60, "completed", task_id, 60,
        literal_at,
    ) == 1
    assert replica.llen(keys.inflight(replica_id)) == 0
    assert protocol.final_record_with_text(redis_client.lpop(keys.done(task_id)))["result"] == "1"
    redis_client.delete(keys.task(task_id), keys.stats, keys.latency)


def test_a_revoked_replica_can_no_longer_connect(granted):
    _, replica_id, url = granted
    redis.Redis.from_url(url).ping()
    redis_acl.revoke(replica_id)
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(url).ping()


def test_users_lost_by_a_redis_restart_are_restored_with_the_same_password(granted):
    prefix, replica_id, url = granted
    redis_acl.revoke(replica_id)  # what a restart without an aclfile does to every user
    assert redis_acl.restore_users([(replica_id, prefix)]) == 1
    replica = redis.Redis.from_url(url)  # the URL the replica already holds
    replica.set(prefix + "hb:" + replica_id, "1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        replica.get("launch:controller:wake")


def test_the_tick_restores_credentials_when_the_redis_run_id_changes(granted, db, monkeypatch):
    from workers import tick
    from workers.models import Replica

    prefix, replica_id, url = granted
    Replica.objects.create(id=replica_id, owner_kind="endpoint", owner_id=prefix.split(":")[2], runtime="local")
    monkeypatch.setattr(tick, "_redis_run_id", "an earlier run")
    redis_acl.revoke(replica_id)
    tick.restore_replica_credentials()
    redis.Redis.from_url(url).ping()


@pytest.fixture
def embedded_redis(settings):
    """An embedded Redis of its own (the suite may run on CI's password-less server)."""
    from launch_site.embedded_redis import start_embedded_redis, stop_process

    directory = Path(tempfile.mkdtemp(prefix="launch-acl-"))  # short: unix socket paths are
    process, url = start_embedded_redis(directory, persist=False)
    settings.REDIS_URL = url
    yield directory, process
    stop_process(process)
    shutil.rmtree(directory, ignore_errors=True)


def test_the_embedded_redis_lets_no_one_in_without_its_password(embedded_redis):
    directory, process = embedded_redis
    socket_path = str(directory / "run" / "redis.sock")
    password_file = directory / "redis_password"
    assert password_file.stat().st_mode & 0o777 == 0o600
    # Not on the command line, which every local user can read.
    assert password_file.read_text().strip().encode() not in Path(f"/proc/{process.pid}/cmdline").read_bytes()
    for client in (
        redis.Redis(unix_socket_path=socket_path),
        redis.Redis(unix_socket_path=socket_path, username="default", password="a guess"),
    ):
        with pytest.raises(redis.exceptions.AuthenticationError):
            client.keys("*")
    assert not redis_acl.default_user_is_open()


def test_a_replica_cannot_become_another_redis_user(embedded_redis):
    prefix = protocol.endpoint_prefix("end_probe")
    url = redis_acl.replica_redis_url(prefix=prefix, replica_id="rep_probe")
    redis_acl.replica_redis_url(prefix=protocol.endpoint_prefix("end_other"), replica_id="rep_other")
    replica = redis.Redis.from_url(url)
    replica.ping()
    for command in (
        ("AUTH", "default", "a guess"),
        ("AUTH", "a guess"),
        ("HELLO", "3", "AUTH", "default", "a guess"),
        ("AUTH", redis_acl.user_name("rep_other"), "a guess"),
    ):
        with pytest.raises(redis.exceptions.AuthenticationError):
            replica.execute_command(*command)
    for command in (("KEYS", "*"), ("FLUSHDB",), ("CONFIG", "GET", "dir"), ("ACL", "LIST")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            replica.execute_command(*command)


def test_without_acls_replicas_get_the_plain_url(settings):
    settings.LAUNCH_REDIS_ACL = False
    assert redis_acl.replica_redis_url(prefix="launch:ep:end_x:", replica_id="rep_x") == settings.REDIS_URL


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/3", "redis://u:p%2Fw@127.0.0.1:6379/3"),
        ("redis://old:pw@host:6379/0", "redis://u:p%2Fw@host:6379/0"),
        ("unix:///tmp/run/redis.sock?db=2", "unix://u:p%2Fw@/tmp/run/redis.sock?db=2"),
    ],
)
def test_credentials_go_into_every_kind_of_url(url, expected):
    assert redis_acl.with_credentials(url, "u", "p/w") == expected

"""The replica serve loop (workers/serve.py) against real Redis, run in threads of the test
process: queue entries with and without their payload, expiry, attempts, bundle shapes."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import enum
import io
import json
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path

import cloudpickle
import pytest
import redis
from django.conf import settings

from workers import protocol, serve
from workers.serve import Replica


def bundle_file(tmp_path, obj) -> str:
    path = tmp_path / f"bundle-{uuid.uuid4().hex[:6]}.pkl"
    path.write_bytes(cloudpickle.dumps(obj))
    return f"file://{path}"


class RunningReplica:
    """A Replica whose bundle is loaded and whose worker threads run (no signal handlers:
    those belong to a process's main thread)."""

    def __init__(self, bundle_url: str, config: dict | None = None, concurrency: int = 1, *,
                 redis_url: str | None = None, prefix: str | None = None):
        self.prefix = prefix or f"launch:ep:end_{uuid.uuid4().hex[:8]}:"
        self.replica = Replica({
            "LAUNCH_REDIS_URL": redis_url or settings.REDIS_URL,
            "LAUNCH_PREFIX": self.prefix,
            "LAUNCH_REPLICA_ID": "rep_test",
            "LAUNCH_BUNDLE_URL": bundle_url,
            "LAUNCH_BUNDLE_CONFIG": json.dumps(config or {"packaging_type": "cloudpickle"}),
            "LAUNCH_CONCURRENCY": str(concurrency),
        })
        self.keys = protocol.Keys(self.prefix)

    def __enter__(self):
        self.replica.load()
        # One worker thread per task it runs at once, as the replica's main does.
        self.threads = [threading.Thread(target=self.replica.work_loop, daemon=True)
                        for _ in range(self.replica.concurrency)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.replica.stopping.set()
        for thread in self.threads:
            thread.join(timeout=5)

    def submit(self, redis_client, request: dict, *, ttl: float = 60, inline: bool = True, sync: bool = False,
               task_id: str | None = None) -> str:
        """`sync`: a sync waiter waits for the task (the gateway's `sync` flag)."""
        task_id = task_id or protocol.task_id_for("end_x", uuid.uuid4().hex)
        payload = json.dumps(request)
        redis_client.hset(self.keys.task(task_id), mapping={
            "payload": payload, "status": protocol.PENDING, "attempts": 0, "created_at": time.time(),
            **({"sync": "1"} if sync else {}),
        })
        redis_client.expire(self.keys.task(task_id), 3600)
        entry = (
            protocol.queue_entry(task_id, expires_at=time.time() + ttl, payload=payload) if inline else task_id
        )
        redis_client.lpush(self.keys.queue, entry)
        return task_id

    def done_record(self, redis_client, task_id: str, timeout: float = 10) -> dict | None:
        """What a sync waiter gets (the done list), None if nothing came."""
        answer = redis_client.blpop([self.keys.done(task_id)], timeout=timeout)
        return protocol.final_record_with_text(answer[1]) if answer else None

    def record(self, redis_client, task_id: str, timeout: float = 10) -> dict | None:
        """Once the task ended: its record as GET /v1/async-tasks reads it (the hash)."""
        if self.done_record(redis_client, task_id, timeout) is None:
            return None
        return protocol.read_task(redis_client, self.keys, task_id)


def doubler():
    def load_predict_fn(model):
        def predict(x):
            return x * model

        return predict

    return {"model": 2, "load_predict_fn": load_predict_fn}


@pytest.mark.parametrize("inline", [True, False], ids=["payload-in-entry", "bare-id"])
def test_a_task_runs_once_and_its_record_says_so(tmp_path, redis_client, inline):
    with RunningReplica(bundle_file(tmp_path, doubler())) as running:
        task_id = running.submit(redis_client, {"args": 21}, inline=inline)
        record = running.record(redis_client, task_id)
    assert record == {"status": "SUCCESS", "result": "42", "traceback": None, "result_pickled": False}
    task = redis_client.hgetall(running.keys.task(task_id))
    assert task[b"status"] == b"SUCCESS" and task[b"result"] == b"42"
    assert task[b"attempts"] == b"1" and task[b"replica"] == b"rep_test"
    assert float(task[b"started_at"]) <= float(task[b"finished_at"])
    assert redis_client.llen(running.keys.inflight("rep_test")) == 0
    assert redis_client.hget(running.keys.stats, "completed") == b"1"


@pytest.mark.parametrize("inline", [True, False], ids=["payload-in-entry", "bare-id"])
def test_a_finished_task_takes_its_own_entry_out_of_flight_and_no_other(tmp_path, redis_client, inline):
    """In a replica that runs tasks in several threads, the finish finds the task's in-flight
    entry by its id (the replica does not send the entry, payload and all, back): the entries
    of tasks that other threads run stay, ids that start with this one's included, and a task
    taken twice (requeued while its replica still ran it) leaves one entry per finish."""
    running = RunningReplica(bundle_file(tmp_path, doubler()), concurrency=2)
    task_id = protocol.task_id_for("end_x", uuid.uuid4().hex)
    others = [
        protocol.queue_entry(task_id + "0", expires_at=time.time() + 60, payload='{"args": 1}'), task_id + "1",
        protocol.queue_entry(protocol.task_id_for("end_x", "other"), expires_at=time.time() + 60, payload="{}"),
    ]
    inflight = running.keys.inflight("rep_test")
    redis_client.rpush(inflight, *others)
    with running:
        running.submit(redis_client, {"args": 21}, inline=inline, task_id=task_id)
        assert running.record(redis_client, task_id)["result"] == "42"
    assert redis_client.lrange(inflight, 0, -1) == [other.encode() for other in others]

    entry = protocol.queue_entry(task_id, expires_at=time.time() + 60, payload='{"args": 21}') if inline else task_id
    redis_client.lpush(inflight, entry, entry)
    connection = running.replica.redis.connection()
    for left in (1, 0):
        running.replica.send_finish(connection, task_id, (protocol.SUCCESS, "42", "", b""), protocol.MARKED)
        assert connection.read_response() == 0  # the task was final already; its entry goes all the same
        assert redis_client.lrange(inflight, 0, -1) == [entry.encode()] * left + [other.encode() for other in others]
    connection.close()


def test_a_task_that_ends_while_another_thread_runs_one_leaves_that_ones_entry_in_flight(tmp_path, redis_client):
    """A replica running one task at a time empties its in-flight list when a task ends (it
    holds that task's entry alone); with two at a time the slow task's entry must stay there
    while the fast one ends, or a replica killed now would leave the slow task to no one."""
    with RunningReplica(bundle_file(tmp_path, sleepy_doubler()), concurrency=2) as running:
        inflight = running.keys.inflight("rep_test")
        slow = running.submit(redis_client, {"args": {"x": 1, "pause": 2.0}})
        deadline = time.monotonic() + 10
        while redis_client.llen(inflight) != 1 and time.monotonic() < deadline:  # the slow one taken
            time.sleep(0.01)
        fast = running.submit(redis_client, {"args": {"x": 2}})
        assert running.record(redis_client, fast)["result"] == "4"
        [entry] = redis_client.lrange(inflight, 0, -1)
        assert protocol.parse_entry(entry)[0] == slow
        assert running.record(redis_client, slow)["result"] == "2"
        assert redis_client.llen(inflight) == 0


def test_a_task_that_expired_in_the_queue_is_not_run(tmp_path, redis_client):
    with RunningReplica(bundle_file(tmp_path, doubler())) as running:
        expired = running.submit(redis_client, {"args": 1}, ttl=-1)
        fresh = running.submit(redis_client, {"args": 2})
        assert running.record(redis_client, fresh)["result"] == "4"
        assert running.record(redis_client, expired, timeout=0.5) is None
    assert redis_client.hget(running.keys.task(expired), "status") == b"PENDING"
    assert redis_client.llen(running.keys.inflight("rep_test")) == 0


def test_args_object_is_keyword_arguments_and_a_raise_is_a_failure_with_traceback(tmp_path, redis_client):
    def load_predict_fn(model):
        def predict(a, b=0):
            if a < 0:
                raise ValueError("negative input")
            return {"sum": a + b}

        return predict

    with RunningReplica(bundle_file(tmp_path, {"model": None, "load_predict_fn": load_predict_fn})) as running:
        ok = running.record(redis_client, running.submit(redis_client, {"args": {"a": 1, "b": 2}}))
        bad = running.record(redis_client, running.submit(redis_client, {"args": {"a": -1}}))
    assert json.loads(ok["result"]) == {"sum": 3}
    assert bad["status"] == "FAILURE" and "ValueError: negative input" in bad["traceback"]


def test_return_pickled_stores_the_cloudpickled_output(tmp_path, redis_client):
    with RunningReplica(bundle_file(tmp_path, doubler())) as running:
        task_id = running.submit(redis_client, {"args": 5, "return_pickled": True})
        record = running.record(redis_client, task_id)
    assert record["result_pickled"] is True and record["result"] is None
    assert cloudpickle.loads(redis_client.hget(running.keys.task(task_id), "result_pickled")) == 10


def test_a_batch_chunk_records_each_item_on_its_own(tmp_path, redis_client):
    def load_predict_fn(model):
        return lambda x: 10 // x

    request = {"items": [{"id": "a", "args": 2}, {"id": "b", "args": 0}, {"id": "c", "args": 5}]}
    with RunningReplica(bundle_file(tmp_path, {"model": None, "load_predict_fn": load_predict_fn})) as running:
        record = running.record(redis_client, running.submit(redis_client, request, inline=False))
    entries = json.loads(record["result"])
    assert [e["id"] for e in entries] == ["a", "b", "c"]
    assert entries[0]["result"] == 5 and entries[2]["result"] == 2
    assert "ZeroDivisionError" in entries[1]["error"]


def test_a_zip_bundle_with_app_config_imports_its_module_paths(tmp_path, redis_client):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("mypkg/__init__.py", "")
        zf.writestr(
            "mypkg/model.py",
            "def load_model(config):\n    return config['factor']\n\n"
            "def load_predict(config, model):\n    return lambda x: [x * model, config['name']]\n",
        )
    path = tmp_path / "bundle.zip"
    path.write_bytes(archive.getvalue())
    config = {
        "packaging_type": "zip",
        "app_config": {"factor": 3, "name": "zipped"},
        "load_predict_fn_module_path": "mypkg.model.load_predict",
        "load_model_fn_module_path": "mypkg.model.load_model",
    }
    with RunningReplica(f"file://{path}", config) as running:
        record = running.record(redis_client, running.submit(redis_client, {"args": 4}))
    assert json.loads(record["result"]) == [12, "zipped"]


def test_a_bundle_that_raises_while_loading_marks_the_replica_failed(tmp_path, redis_client):
    def load_model():
        raise RuntimeError("weights are missing")

    running = RunningReplica(bundle_file(tmp_path, {"load_model_fn": load_model, "load_predict_fn": print}))
    with pytest.raises(SystemExit):
        running.replica.load()
    state = redis_client.hgetall(running.keys.replica("rep_test"))
    assert state[b"state"] == b"failed"
    assert b"RuntimeError: weights are missing" in state[b"error"]


def echo_text():
    def load_predict_fn(model):
        def predict(text, wait_for=""):
            import os as _os
            import time as _time

            deadline = _time.monotonic() + 10
            while wait_for and not _os.path.exists(wait_for) and _time.monotonic() < deadline:
                _time.sleep(0.01)
            return {"echo": text}

        return predict

    return {"model": None, "load_predict_fn": load_predict_fn}


# A large result whose JSON needs escapes of every kind (quote, backslash, newline, non-ASCII,
# a slash, a line separator).
TRICKY_TEXT = "é\"\n\\/\u2028x" * 150_000
# Both sides of protocol.ONE_COPY_MIN_CHARS (a small result is sent both ways at once).
RESULT_TEXTS = pytest.mark.parametrize("text", [TRICKY_TEXT, TRICKY_TEXT[:80]], ids=["large", "small"])


@RESULT_TEXTS
def test_a_sync_task_whose_waiter_is_there_answers_it_through_the_done_list_only(tmp_path, redis_client, text):
    with RunningReplica(bundle_file(tmp_path, echo_text())) as running:
        task_id = running.submit(redis_client, {"args": {"text": text}}, sync=True)
        record = running.done_record(redis_client, task_id)
    assert record["status"] == "SUCCESS" and json.loads(record["result"]) == {"echo": text}
    task_key = running.keys.task(task_id)
    assert redis_client.hget(task_key, "status") == b"SUCCESS"
    assert not redis_client.hexists(task_key, "result")  # the waiter had it: not kept a second time
    assert 0 < redis_client.ttl(task_key) <= protocol.SYNC_ANSWERED_TTL_SECONDS


@RESULT_TEXTS
def test_a_sync_task_whose_waiter_gave_up_during_the_run_keeps_its_whole_result(tmp_path, redis_client, text):
    """The waiter was there when the task started (so the replica sends the result only for
    it) and gave up before it ended (504: keep_task): GET /v1/async-tasks must still read the
    whole result, for the task's TTL."""
    release = tmp_path / "release"
    with RunningReplica(bundle_file(tmp_path, echo_text())) as running:
        task_id = running.submit(redis_client, {"args": {"text": text, "wait_for": str(release)}}, sync=True)
        deadline = time.monotonic() + 10
        while redis_client.hget(running.keys.task(task_id), "status") != b"STARTED":
            assert time.monotonic() < deadline, "the task did not start"
            time.sleep(0.01)
        with redis_client.pipeline(transaction=True) as pipe:
            protocol.keep_task(pipe, running.keys, task_id, ttl_seconds=3600)
            assert pipe.execute()[-1] is None  # not answered yet
        release.touch()
        record = running.record(redis_client, task_id)
    assert record["status"] == "SUCCESS"
    assert json.loads(record["result"]) == {"echo": text}
    assert redis_client.ttl(running.keys.task(task_id)) > protocol.SYNC_ANSWERED_TTL_SECONDS


def _deep(levels):
    value = []
    for _ in range(levels):
        value = [value]
    return value


def _circular():
    value = []
    value.append(value)
    return value


_OUTPUTS = [
    "", "plain", 'a "quoted" \\ back\\slash', {"k": "é\n\t\x00\x1f\x7f\"\\/"}, "é", "\u2028", "\ud83d", "😀",
    "raw\ncontrol\x01\x7f", "\\u00e9", 10**40, -(2**63), 2**64 - 1, [1.5, -0.0, 1e16, 1e-7, True, False],
    float("nan"), [float("inf"), -float("inf")], {"none": None}, {1: "int key"}, (1, 2), "null",
    [{"k": i} for i in range(20_000)], {"data": "x" * 1_000_000}, [i / 7 for i in range(10_000)],
    enum.IntEnum("Level", "LOW HIGH").HIGH, collections.OrderedDict(b=1, a=2), _deep(300),
    # Large enough for the replica to look at the output rather than search its text for null:
    # a NaN or an infinity wherever it may hide, and a None, which is not one.
    {"data": "x" * 100_000, "nan": float("nan")}, {"data": "x" * 100_000, "none": None},
    ("x" * 100_000, (1.0, float("-inf"))), [0.5] * 5_000 + [float("nan")] + [0.5] * 5_000,
    [1.0, float("nan"), 2.0] * 3_000, [1.5, None, 2.5] * 3_000 + [float("inf")],
    collections.OrderedDict(data="x" * 100_000, nan=float("nan")), [1e308] * 10_000,
    [{"k": i} for i in range(2_000)] + [{"nan": float("nan")}], [10**400, 1.5] + ["x" * 100_000],
    {"data": "x" * 100_000, "level": type("Ratio", (float,), {})("nan")},
]


@pytest.mark.parametrize("output", _OUTPUTS)
def test_a_result_reads_back_as_the_output_did_through_json_dumps(output):
    # The client json.loads the result text: it must read back what it read back when the text
    # was json.dumps's (NaN and infinities included, the order of keys too), and the sync
    # answer's literal must read back as that text.
    text = serve.encode_output(output, {})[1]
    assert json.dumps(json.loads(text)) == json.dumps(json.loads(json.dumps(output)))
    literal = protocol.parse_final_record(protocol.final_record(protocol.SUCCESS, result=text))["result_literal"]
    assert json.loads(bytes(literal)) == text


# Documents that orjson reads differently from json.loads, or refuses, next to ones it reads
# the same: protocol.load_json must give json.loads's value (or its error) for every one.
_PAYLOADS = [
    b'{"args": {"x": 18446744073709551616}}', b'[-9223372036854775809, 9223372036854775808, 18446744073709551615]',
    b'{"a": [1, [2, {"b": 123456789012345678901234567890}]]}', b'[1.5, 1e19, -1e19, "x"]', b'{"k": 1e400}',
    b'[NaN, Infinity, -Infinity]', b'"\\ud800"', b'{"a": 1, "a": 2}', b'[-0, -0.0, 1.0000000000000000000001]',
    b'[2.2250738585072011e-308, 5e-324, 1.7976931348623157e308, 0.1, 0.30000000000000004]',
    b"[" * 1100 + b"]" * 1100, b' {"args": "\\u00e9\\n"} ', '{"args": "é😀"}'.encode(),
    b'{"args": 1} x', b'{"args": 1', b"", b"\xef\xbb\xbf{}", b'"\xff"', b'{"args": tru}',
    json.dumps([i / 7 for i in range(10_000)] + [2.0**63]).encode(),
    # Past the item-by-item budget: the text's digits tell (a long run also inside a string).
    json.dumps([{"k": i} for i in range(2_000)] + [{"n": -(2**63) - 1}]).encode(),
    json.dumps([{"id": "1234567890123456789012", "x": 0.5} for _ in range(2_000)]).encode(),
]


@pytest.mark.parametrize("data", _PAYLOADS)
def test_a_payload_reads_as_json_loads_read_it(data):
    try:
        expected = repr(json.loads(data.decode()))
    except (ValueError, RecursionError) as error:
        expected = f"{type(error).__name__}: {error}"
    for given in (data, memoryview(b"id 1.0 " + data)[7:]):  # a body; a queue entry's payload
        try:
            got = repr(protocol.load_json(given))
        except (ValueError, RecursionError) as error:
            got = f"{type(error).__name__}: {error}"
        assert got == expected


def test_a_payload_of_many_floats_is_checked_in_full_for_integers_orjson_cannot_read():
    # A large integer deep in a long list of floats (past min/max's fast path: mixed types).
    data = json.dumps({"args": [[i / 7 for i in range(1000)], ["x", 0.5, {"n": 2**70}]]}).encode()
    assert protocol.load_json(data)["args"][1][2]["n"] == 2**70


@pytest.mark.parametrize("output", [
    datetime.datetime(2026, 1, 1), dataclasses.make_dataclass("Point", ["x"])(1), {1, 2}, object(), b"bytes",
    {("tuple", "key"): 1}, _circular(),
])
def test_an_output_json_dumps_refuses_fails_its_task_as_before(output):
    with pytest.raises((TypeError, ValueError)):
        json.dumps(output)
    status, result, error, _ = serve.encode_output(output, {})
    assert (status, result) == (protocol.FAILURE, "")
    assert "not JSON serializable" in error or "Circular reference" in error or "keys must be" in error


def identity():
    return {"model": None, "load_predict_fn": lambda model: (lambda value: value)}


def _aof_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("appendonly*") if path.is_file())


def test_a_waiters_result_stays_out_of_the_append_only_file_and_a_restart_replays_the_rest(tmp_path, settings):
    """The done record of a sync task whose waiter waits (here a 1 MB result) is not written to
    Redis's append-only file: the waiter's BLPOP takes it at once, and a restart would end that
    waiter's connection anyway. The file keeps the queue entry (the payload, once) and small
    commands; replayed, it gives the same task, in-flight list and done list."""
    from launch_site.embedded_redis import start_embedded_redis, stop_process

    directory = Path(tempfile.mkdtemp(prefix="launch-aof-"))  # short: a unix socket's path
    process, settings.REDIS_URL = start_embedded_redis(directory)
    try:
        client = redis.Redis.from_url(settings.REDIS_URL)
        text = "x" * 2**20
        with RunningReplica(bundle_file(tmp_path, identity())) as running:
            task_id = protocol.task_id_for("end_x", uuid.uuid4().hex)
            with client.pipeline(transaction=False) as pipe:  # as the gateway queues it: the payload once
                protocol.add_task(pipe, running.keys, task_id, json.dumps({"args": text}), ttl_seconds=60,
                                  now=time.time(), extra={"sync": "1"})
                pipe.execute()
            record = running.done_record(client, task_id)
            assert json.loads(record["result"]) == text
            async_id = running.submit(client, {"args": "small"})
            assert running.record(client, async_id)["result"] == '"small"'
        keys = running.keys
        assert len(text) < _aof_bytes(directory) < 1.5 * len(text)  # the entry once; not the record

        def state() -> tuple:
            return (client.hmget(keys.task(task_id), "status", "attempts"), client.exists(keys.done(task_id)),
                    client.llen(keys.inflight("rep_test")), client.llen(keys.queue), client.hgetall(keys.stats),
                    client.hmget(keys.task(async_id), "status", "result"))

        before = state()
        assert before[0] == [b"SUCCESS", b"1"] and before[1:4] == (0, 0, 0)
        stop_process(process)
        process, _ = start_embedded_redis(directory)
        client = redis.Redis.from_url(settings.REDIS_URL)
        assert state() == before
    finally:
        stop_process(process)
        shutil.rmtree(directory, ignore_errors=True)


def sleepy_doubler():
    def load_predict_fn(model):
        def predict(x, pause=0.0):
            time.sleep(pause)
            return 2 * x

        return predict

    return {"model": None, "load_predict_fn": load_predict_fn}


def test_a_task_script_that_fails_does_not_strand_the_task_taken_with_its_reply(tmp_path, redis_client):
    """The next take (BLMOVE) goes out before the finished task's script replies are read: an
    error reply among them (here the task's record turned into a string during its run, so
    that FINISH fails) must not cost the task that take moved into the in-flight list."""
    with RunningReplica(bundle_file(tmp_path, sleepy_doubler())) as running:
        first = running.submit(redis_client, {"args": {"x": 1, "pause": 0.5}})
        second = running.submit(redis_client, {"args": {"x": 21}})
        deadline = time.time() + 10
        while redis_client.hget(running.keys.task(first), "status") != b"STARTED" and time.time() < deadline:
            time.sleep(0.01)
        redis_client.delete(running.keys.task(first))
        redis_client.set(running.keys.task(first), "not a task record")  # FINISH's HGET: WRONGTYPE
        record = running.record(redis_client, second)
        in_flight = redis_client.lrange(running.keys.inflight("rep_test"), 0, -1)
    assert record is not None and record["status"] == "SUCCESS" and record["result"] == "42"
    assert in_flight == []


@pytest.mark.parametrize("size", [10, protocol.PUSHED_APART_BYTES], ids=["in-the-script", "pushed-apart"])
def test_a_task_that_cannot_be_written_is_an_error_not_queued(redis_client, size):
    # The task's hash key holds a string (WRONGTYPE for the script's HSET): inside a transaction
    # the error is one of EXEC's replies, and must still be raised, with nothing left queued.
    keys = protocol.Keys(f"launch:ep:end_{uuid.uuid4().hex[:8]}:")
    task_id = protocol.task_id_for("end_x", uuid.uuid4().hex)
    redis_client.set(keys.task(task_id), "not a hash", ex=60)
    with redis_client.pipeline(transaction=False) as pipe:
        added = protocol.add_task(pipe, keys, task_id, json.dumps({"args": "x" * size}), ttl_seconds=60,
                                  now=time.time())
        replies = pipe.execute(raise_on_error=False)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        added(replies)
    assert redis_client.llen(keys.queue) == 0

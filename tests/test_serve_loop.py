"""The replica serve loop (workers/serve.py) against real Redis, run in threads of the test
process: queue entries with and without their payload, expiry, attempts, bundle shapes."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
import zipfile

import cloudpickle
import pytest
from django.conf import settings

from workers import protocol
from workers.serve import Replica


def bundle_file(tmp_path, obj) -> str:
    path = tmp_path / f"bundle-{uuid.uuid4().hex[:6]}.pkl"
    path.write_bytes(cloudpickle.dumps(obj))
    return f"file://{path}"


class RunningReplica:
    """A Replica whose bundle is loaded and whose worker threads run (no signal handlers:
    those belong to a process's main thread)."""

    def __init__(self, bundle_url: str, config: dict | None = None, concurrency: int = 1):
        self.prefix = f"launch:ep:end_{uuid.uuid4().hex[:8]}:"
        self.replica = Replica({
            "LAUNCH_REDIS_URL": settings.REDIS_URL,
            "LAUNCH_PREFIX": self.prefix,
            "LAUNCH_REPLICA_ID": "rep_test",
            "LAUNCH_BUNDLE_URL": bundle_url,
            "LAUNCH_BUNDLE_CONFIG": json.dumps(config or {"packaging_type": "cloudpickle"}),
            "LAUNCH_CONCURRENCY": str(concurrency),
        })
        self.keys = protocol.Keys(self.prefix)

    def __enter__(self):
        self.replica.load()
        self.threads = [threading.Thread(target=self.replica.work_loop, daemon=True)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.replica.stopping.set()
        for thread in self.threads:
            thread.join(timeout=5)

    def submit(self, redis_client, request: dict, *, ttl: float = 60, inline: bool = True) -> str:
        task_id = protocol.task_id_for("end_x", uuid.uuid4().hex)
        payload = json.dumps(request)
        redis_client.hset(self.keys.task(task_id), mapping={
            "payload": payload, "status": protocol.PENDING, "attempts": 0, "created_at": time.time(),
        })
        redis_client.expire(self.keys.task(task_id), 3600)
        entry = (
            protocol.queue_entry(task_id, expires_at=time.time() + ttl, payload=payload) if inline else task_id
        )
        redis_client.lpush(self.keys.queue, entry)
        return task_id

    def record(self, redis_client, task_id: str, timeout: float = 10) -> dict | None:
        answer = redis_client.blpop([self.keys.done(task_id)], timeout=timeout)
        return protocol.final_record_with_text(answer[1]) if answer else None


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

"""The serving core keeps its word under bad conditions: slow predicts, endpoints that cannot
serve, poison tasks, predicts that hang, replicas killed at every phase of their life.
Real replica processes, real HTTP, real Redis."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from tests.stack import api_for

pytestmark = pytest.mark.django_db(transaction=True)


def sleepy_bundle(*, load_seconds: float = 0.0, predict_seconds: float = 0.0):
    """x -> x + 1, after sleeping; x == "poison" kills the process, x == "hang" never returns."""

    def load_model():
        import time as _time

        _time.sleep(load_seconds)
        return 1

    def load_predict_fn(model):
        def predict(x):
            import os as _os
            import signal as _signal
            import time as _time

            if x == "poison":
                _os.kill(_os.getpid(), _signal.SIGKILL)
            if x == "hang":
                _time.sleep(3600)
            _time.sleep(predict_seconds)
            return x + model

        return predict

    return {"load_model_fn": load_model, "load_predict_fn": load_predict_fn}


def broken_bundle():
    def load_model():
        raise RuntimeError("weights file is corrupt")

    return {"load_model_fn": load_model, "load_predict_fn": lambda model: (lambda x: x)}


def submit(api, endpoint_id: str, x) -> str:
    response = api.post(f"/v1/async-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": x}})
    assert response.status_code == 200, response.text
    return response.json()["task_id"]


def test_sync_request_to_a_seven_second_predict_answers(live_stack, owner):
    # redis-py's default socket timeout is 5 s: a wait longer than that must still answer.
    api = api_for(live_stack, owner)
    endpoint_id = api.create_endpoint(api.upload_bundle(sleepy_bundle(predict_seconds=7), "slow"), "slow")
    api.wait_endpoint(endpoint_id, "READY", available_workers=1)
    started = time.monotonic()
    response = api.post(f"/v1/sync-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": 1}}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["result"] == {"result": "2"}
    assert time.monotonic() - started >= 7


def test_sync_request_past_its_timeout_answers_504_and_the_task_stays_readable(live_stack, owner):
    api = api_for(live_stack, owner)
    endpoint_id = api.create_endpoint(api.upload_bundle(sleepy_bundle(predict_seconds=6), "slow"), "slow")
    api.wait_endpoint(endpoint_id, "READY", available_workers=1)
    response = api.post(f"/v1/sync-tasks?model_endpoint_id={endpoint_id}",
                        json={"args": {"x": 1}, "timeout_seconds": 5.5}, timeout=30)
    assert response.status_code == 504, response.text
    detail = response.json()["detail"]
    assert "did not answer within 5.5 s" in detail
    task_id = detail.split("the task ")[1].split()[0]
    assert api.wait_task(task_id, timeout=10)["result"] == {"result": "2"}


def test_sync_request_to_an_endpoint_that_failed_to_load_answers_503_at_once(live_stack, owner):
    api = api_for(live_stack, owner)
    endpoint_id = api.create_endpoint(api.upload_bundle(broken_bundle(), "broken"), "broken")
    api.wait_endpoint(endpoint_id, "UPDATE_FAILED")
    started = time.monotonic()
    response = api.post(f"/v1/sync-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": 1}})
    assert time.monotonic() - started < 2
    assert response.status_code == 503
    assert "weights file is corrupt" in response.json()["detail"]


def test_poison_task_fails_within_seconds_and_the_rest_of_the_queue_succeeds(live_stack, owner):
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(sleepy_bundle(), "poison")
    endpoint_id = api.create_endpoint(bundle_id, "poison", endpoint_type="async", min_workers=1, max_workers=1)
    api.wait_endpoint(endpoint_id, "READY", available_workers=1)
    started = time.monotonic()
    poison = submit(api, endpoint_id, "poison")
    # The rest of the queue arrives while the poison task is killing replicas.
    others: list[str] = []
    sender = threading.Thread(target=lambda: others.extend(submit(api_for(live_stack, owner), endpoint_id, n)
                                                           for n in range(100)))
    sender.start()
    task = api.wait_task(poison, timeout=10)
    assert time.monotonic() - started < 10
    assert task["status"] == "FAILURE"
    assert "SIGKILL" in task["traceback"] and "gave up after 3 attempts" in task["traceback"]
    sender.join(timeout=30)
    for n, task_id in enumerate(others):
        assert api.wait_task(task_id, timeout=30)["result"] == {"result": str(n + 1)}
    api.wait_endpoint(endpoint_id, "READY", available_workers=1, timeout=10)


def test_replica_killed_while_loading_is_replaced_and_the_endpoint_becomes_ready(live_stack, owner):
    from launch_site.redis_client import get_redis
    from workers import protocol
    from workers.models import Replica

    api = api_for(live_stack, owner)
    endpoint_id = api.create_endpoint(api.upload_bundle(sleepy_bundle(load_seconds=2), "slow-load"), "slow-load")
    keys = protocol.Keys(protocol.endpoint_prefix(endpoint_id))
    deadline = time.monotonic() + 15
    while True:
        replica = Replica.objects.filter(owner_id=endpoint_id, state=Replica.State.STARTING).exclude(handle="").first()
        if replica and get_redis().hget(keys.replica(replica.id), "state") == b"loading":
            break
        assert time.monotonic() < deadline, "no replica ever started loading"
        time.sleep(0.05)
    os.kill(int(replica.handle), signal.SIGKILL)

    endpoint = api.wait_endpoint(endpoint_id, "READY", available_workers=1, timeout=30)
    assert endpoint["status_reason"] is None
    replica.refresh_from_db()
    assert replica.state == Replica.State.FAILED
    assert "SIGKILL while loading" in replica.reason


def test_hanging_predict_fails_at_its_timeout_and_the_queue_moves_on(live_stack, owner):
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(sleepy_bundle(), "hang")
    endpoint_id = api.create_endpoint(bundle_id, "hang", endpoint_type="async", min_workers=1, max_workers=1,
                                      queue_message_timeout_seconds=2)
    api.wait_endpoint(endpoint_id, "READY", available_workers=1)
    hung = submit(api, endpoint_id, "hang")
    after = submit(api, endpoint_id, 41)
    task = api.wait_task(hung, timeout=15)
    assert task["status"] == "FAILURE"
    assert "timed out after 2 s" in task["traceback"]
    assert api.wait_task(after, timeout=20)["result"] == {"result": "42"}


class ReplicaKiller(threading.Thread):
    """SIGKILLs replicas at each phase of their life, in rounds 1-2 s apart: one in the middle
    of a task, then its replacement while it loads its bundle, then the next one just after
    it reported ready (before the controller saw it)."""

    PHASES = ("mid-task", "loading", "just-ready")

    def __init__(self, endpoint_id: str):
        super().__init__(daemon=True)
        from workers import protocol

        self.keys = protocol.Keys(protocol.endpoint_prefix(endpoint_id))
        self.endpoint_id = endpoint_id
        self.stop_event = threading.Event()
        self.kills: dict[str, int] = dict.fromkeys(self.PHASES, 0)

    def run(self):
        from django.db import connections

        try:
            while not self.stop_event.wait(random.uniform(1.0, 2.0)):
                for phase in self.PHASES:
                    if self._kill_one(phase, deadline=time.monotonic() + 3):
                        self.kills[phase] += 1
        finally:
            connections.close_all()

    def _kill_one(self, phase: str, deadline: float) -> bool:
        from launch_site.redis_client import get_redis
        from workers.models import LIVE_STATES, Replica

        redis = get_redis()
        while time.monotonic() < deadline and not self.stop_event.is_set():
            for replica in Replica.objects.filter(owner_id=self.endpoint_id, state__in=LIVE_STATES).exclude(handle=""):
                reported = redis.hget(self.keys.replica(replica.id), "state")
                ready_for = time.time() - float(redis.hget(self.keys.replica(replica.id), "updated_at") or 0)
                if (
                    (phase == "loading" and reported == b"loading")
                    or (phase == "just-ready" and reported == b"ready" and ready_for < 0.5)
                    or (phase == "mid-task" and reported == b"ready" and redis.llen(self.keys.inflight(replica.id)))
                ):
                    try:
                        os.kill(int(replica.handle), signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    return True
            time.sleep(0.01)
        return False


def test_a_thousand_tasks_survive_replicas_killed_at_every_phase(live_stack, owner, settings):
    from launch_site.redis_client import get_redis
    from workers import protocol

    settings.REPLICA_RESTART_BACKOFF_MAX_SECONDS = 2.0
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(sleepy_bundle(load_seconds=0.5, predict_seconds=0.01), "storm")
    endpoint_id = api.create_endpoint(bundle_id, "storm", endpoint_type="async", min_workers=1, max_workers=2)
    api.wait_endpoint(endpoint_id, "READY", available_workers=1)
    killer = ReplicaKiller(endpoint_id)
    killer.start()
    try:
        started = time.monotonic()
        task_ids = [submit(api, endpoint_id, n) for n in range(1000)]
        print(f"submitted 1000 tasks in {time.monotonic() - started:.1f} s")
        keys = protocol.Keys(protocol.endpoint_prefix(endpoint_id))
        deadline = time.monotonic() + 180
        while True:
            with get_redis().pipeline(transaction=False) as pipe:
                for task_id in task_ids:
                    pipe.hget(keys.task(task_id), "status")
                statuses = pipe.execute()
            if all(status in (b"SUCCESS", b"FAILURE") for status in statuses):
                break
            assert time.monotonic() < deadline, f"{sum(s not in (b'SUCCESS', b'FAILURE') for s in statuses)} not done"
            time.sleep(0.5)
    finally:
        killer.stop_event.set()
        killer.join(timeout=10)
    print(f"all terminal after {time.monotonic() - started:.1f} s; kills: {killer.kills}")
    assert all(killer.kills[phase] >= 1 for phase in ReplicaKiller.PHASES), killer.kills
    for n, task_id in enumerate(task_ids):
        record = protocol.read_task(get_redis(), keys, task_id)
        if record["status"] == "FAILURE":
            # Only a task whose own attempts ran out (killed three times while it ran).
            assert "gave up after 3 attempts" in record["traceback"], record
        else:
            assert record["result"] == str(n + 1)
    # Each failure took three kills while it was the replica's one task in flight (per_worker 1),
    # so a task that failed with fewer (an attempt counted without a kill) shows here. A fixed cap
    # (5) was about the machine's speed: a slower run lasts longer and sees more kill rounds.
    failures = sum(protocol.read_task(get_redis(), keys, t)["status"] == "FAILURE" for t in task_ids)
    assert failures * 3 <= sum(killer.kills.values()), (failures, killer.kills)
    api.wait_endpoint(endpoint_id, "READY", timeout=30)


def memory_hog_bundle():
    def load_predict_fn(model):
        def predict(megabytes):
            block = b"x" * (megabytes * 2**20)  # written, so every page is really used
            return len(block) // 2**20

        return predict

    return {"model": None, "load_predict_fn": load_predict_fn}


def test_predict_over_its_memory_limit_fails_out_of_memory_and_the_replica_is_replaced(live_stack, owner):
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(memory_hog_bundle(), "hog")
    endpoint_id = api.create_endpoint(bundle_id, "hog", endpoint_type="async", min_workers=1, max_workers=1,
                                      memory="256Mi")
    api.wait_endpoint(endpoint_id, "READY", available_workers=1)
    hog = api.post(f"/v1/async-tasks?model_endpoint_id={endpoint_id}", json={"args": {"megabytes": 1024}})
    task = api.wait_task(hog.json()["task_id"], timeout=20)
    assert task["status"] == "FAILURE"
    assert "out of memory (limit 256Mi)" in task["traceback"]
    modest = api.post(f"/v1/async-tasks?model_endpoint_id={endpoint_id}", json={"args": {"megabytes": 50}})
    assert api.wait_task(modest.json()["task_id"], timeout=20)["result"] == {"result": "50"}

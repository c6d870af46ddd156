"""Endpoints served by real replica processes over real HTTP and real Redis."""

from __future__ import annotations

import json
import os
import signal
import time

import cloudpickle
import pytest

from tests.stack import api_for

pytestmark = pytest.mark.django_db(transaction=True)


def echo_bundle():
    def load_model():
        return {"scale": 2}

    def load_predict_fn(model):
        def predict(x, y=""):
            return {"value": x * model["scale"], "y_len": len(y)}

        return predict

    return {"load_model_fn": load_model, "load_predict_fn": load_predict_fn}


def slow_bundle(seconds: float):
    def load_predict_fn(model):
        def predict(x):
            import time as _time

            _time.sleep(seconds)
            return x + model

        return predict

    return {"model": 1, "load_predict_fn": load_predict_fn}


def slow_echo_bundle(seconds: float):
    def load_predict_fn(model):
        def predict(text):
            import time as _time

            _time.sleep(seconds)
            return {"echo": text}

        return predict

    return {"model": None, "load_predict_fn": load_predict_fn}


def raising_load_bundle():
    def load_model():
        raise RuntimeError("weights file is corrupt")

    def load_predict_fn(model):
        return lambda **kwargs: None

    return {"load_model_fn": load_model, "load_predict_fn": load_predict_fn}


def raising_predict_bundle():
    def load_predict_fn(model):
        def predict(x):
            raise ValueError(f"cannot handle {x}")

        return predict

    return {"model": None, "load_predict_fn": load_predict_fn}


def test_sync_endpoint_becomes_ready_and_answers(live_stack, owner):
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(echo_bundle(), "echo")
    endpoint_id = api.create_endpoint(bundle_id, "echo-sync")
    endpoint = api.wait_endpoint(endpoint_id, "READY", available_workers=1)
    assert endpoint["deployment_state"]["unavailable_workers"] == 0

    response = api.post(f"/v1/sync-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": 21, "y": "ab"}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "SUCCESS"
    assert body["result"] == {"result": '{"value":42,"y_len":2}'}


def test_async_endpoint_scales_from_zero_answers_and_returns_to_zero(live_stack, owner, settings):
    settings.SCALE_DOWN_DELAY_SECONDS = 1.0
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(echo_bundle(), "echo")
    endpoint_id = api.create_endpoint(bundle_id, "echo-async", endpoint_type="async", min_workers=0, max_workers=2)
    api.wait_endpoint(endpoint_id, "READY", available_workers=0)

    task_id = api.post(f"/v1/async-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": 5}}).json()["task_id"]
    task = api.wait_task(task_id)
    assert task == {
        "task_id": task_id, "status": "SUCCESS", "result": {"result": '{"value":10,"y_len":0}'},
        "traceback": None, "status_code": None,
    }
    api.wait_endpoint(endpoint_id, "READY", timeout=20, available_workers=0, unavailable_workers=0)


def test_bundle_that_raises_at_load_ends_update_failed_with_traceback(live_stack, owner):
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(raising_load_bundle(), "broken")
    endpoint_id = api.create_endpoint(bundle_id, "broken")
    endpoint = api.wait_endpoint(endpoint_id, "UPDATE_FAILED")
    assert "weights file is corrupt" in endpoint["status_reason"]
    assert "Traceback" in endpoint["status_reason"]
    logs = api.get("/v1/hosted_inference/endpoints/creation_logs/broken").json()["content"]
    assert "RuntimeError: weights file is corrupt" in logs


def test_predict_that_raises_gives_failure_with_traceback(live_stack, owner):
    api = api_for(live_stack, owner)
    endpoint_id = api.create_endpoint(api.upload_bundle(raising_predict_bundle(), "bad"), "bad")
    api.wait_endpoint(endpoint_id, "READY")
    body = api.post(f"/v1/sync-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": 7}}).json()
    assert body["status"] == "FAILURE"
    assert body["result"] is None
    assert "ValueError: cannot handle 7" in body["traceback"]


def test_replica_killed_mid_task_still_ends_in_success(live_stack, owner):
    from workers.models import Replica

    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(slow_bundle(1.5), "slow")
    endpoint_id = api.create_endpoint(bundle_id, "slow", endpoint_type="async", min_workers=1)
    api.wait_endpoint(endpoint_id, "READY", available_workers=1)
    task_id = api.post(f"/v1/async-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": 41}}).json()["task_id"]
    deadline = time.monotonic() + 10
    while api.get(f"/v1/async-tasks/{task_id}").json()["status"] != "STARTED":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    victim = Replica.objects.get(owner_id=endpoint_id, state=Replica.State.READY)
    os.kill(int(victim.handle), signal.SIGKILL)

    task = api.wait_task(task_id, timeout=30)
    assert task["status"] == "SUCCESS"
    assert task["result"] == {"result": "42"}
    victim.refresh_from_db()
    assert victim.state == Replica.State.FAILED


def test_sync_request_that_times_out_gets_a_clear_504(live_stack, owner):
    from launch_site.redis_client import get_redis
    from workers import protocol

    api = api_for(live_stack, owner)
    endpoint_id = api.create_endpoint(api.upload_bundle(slow_bundle(1.5), "slow"), "slow-sync")
    api.wait_endpoint(endpoint_id, "READY")
    response = api.post(f"/v1/sync-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": 1}, "timeout_seconds": 0.3})
    assert response.status_code == 504
    detail = response.json()["detail"]
    assert "did not answer within 0.3 s" in detail
    # The error names the task to read later: answered after its waiter left, it keeps its
    # TTL like any async task (an answered sync task's record goes within seconds).
    task_id = detail.split("the task ")[1].split()[0]
    assert api.wait_task(task_id, timeout=30)["result"] == {"result": "2"}
    ttl = get_redis().ttl(protocol.Keys(protocol.endpoint_prefix(endpoint_id)).task(task_id))
    assert ttl > 60, ttl


def test_a_sync_task_that_timed_out_gives_its_whole_large_result_later(live_stack, owner):
    """Its waiter was there when the replica started it (so the result travels only for the
    waiter) and gone (504) when it ended: the task record still gets all of the result."""
    api = api_for(live_stack, owner)
    endpoint_id = api.create_endpoint(api.upload_bundle(slow_echo_bundle(1.5), "slow-echo"), "slow-echo-sync")
    api.wait_endpoint(endpoint_id, "READY", available_workers=1)
    text = "é\"\n\\/" * 200_000  # a megabyte of JSON once escaped, non-ASCII included
    response = api.post(f"/v1/sync-tasks?model_endpoint_id={endpoint_id}",
                        json={"args": {"text": text}, "timeout_seconds": 0.5})
    assert response.status_code == 504, response.text[:300]
    task_id = response.json()["detail"].split("the task ")[1].split()[0]
    task = api.wait_task(task_id, timeout=30)
    assert task["status"] == "SUCCESS"
    assert json.loads(task["result"]["result"]) == {"echo": text}


def _task_keys(endpoint_id: str) -> list[bytes]:
    from launch_site.redis_client import get_redis
    from workers import protocol

    return list(get_redis().scan_iter(match=protocol.endpoint_prefix(endpoint_id) + "task:*"))


def test_big_sync_payload_round_trips_and_leaves_redis_after_its_answer(live_stack, owner):
    from launch_site.redis_client import get_redis
    from workers import protocol

    api = api_for(live_stack, owner)
    endpoint_id = api.create_endpoint(api.upload_bundle(echo_bundle(), "echo"), "echo-big")
    api.wait_endpoint(endpoint_id, "READY", available_workers=1)
    text = "é\"\n\\" * 200_000  # 800,000 characters that need escaping, and a non-ASCII one
    url = f"/v1/sync-tasks?model_endpoint_id={endpoint_id}"
    body = api.post(url, json={"args": {"x": 2, "y": text}}).json()
    assert body == {"status": "SUCCESS", "result": {"result": '{"value":4,"y_len":800000}'},
                    "traceback": None, "status_code": None}

    # Answered, the task keeps only its small fields (for the request list), briefly: not the
    # 800,000 characters of its payload, nor its result.
    [task_key] = _task_keys(endpoint_id)
    redis = get_redis()
    deadline = time.monotonic() + 10
    while redis.hexists(task_key, "result"):
        assert time.monotonic() < deadline, "the answered sync task kept its result"
        time.sleep(0.1)
    assert redis.hget(task_key, "payload") is None
    assert redis.memory_usage(task_key) < 16_000
    assert 0 < redis.ttl(task_key) <= protocol.SYNC_ANSWERED_TTL_SECONDS

    # A body with a field a task does not have is not passed on as it came ("items" would
    # make the replica take it for a batch chunk).
    body = api.post(url, json={"args": {"x": 5}, "items": [{"id": 1, "args": {"x": 1}}]}).json()
    assert body["result"] == {"result": '{"value":10,"y_len":0}'}


def test_async_payload_is_stored_once_and_its_record_keeps_its_ttl(live_stack, owner):
    from launch_site.redis_client import get_redis
    from workers import protocol

    api = api_for(live_stack, owner)
    endpoint_id = api.create_endpoint(api.upload_bundle(echo_bundle(), "echo"), "echo-async-ttl",
                                      endpoint_type="async", min_workers=0)
    keys = protocol.Keys(protocol.endpoint_prefix(endpoint_id))
    task_id = api.post(f"/v1/async-tasks?model_endpoint_id={endpoint_id}",
                       json={"args": {"x": 1, "y": "z" * 10_000}}).json()["task_id"]
    assert get_redis().hget(keys.task(task_id), "payload") is None
    assert api.wait_task(task_id, timeout=60)["result"] == {"result": '{"value":2,"y_len":10000}'}
    assert get_redis().ttl(keys.task(task_id)) > 3600


def test_return_pickled_gives_a_result_url_with_the_pickled_output(live_stack, owner):
    api = api_for(live_stack, owner)
    endpoint_id = api.create_endpoint(api.upload_bundle(echo_bundle(), "echo"), "echo-pickled")
    api.wait_endpoint(endpoint_id, "READY")
    body = api.post(f"/v1/sync-tasks?model_endpoint_id={endpoint_id}",
                    json={"args": {"x": 3}, "return_pickled": True}).json()
    assert body["status"] == "SUCCESS"
    result_url = body["result"]["result_url"]
    fetched = api.session.get(result_url)
    assert fetched.status_code == 200
    assert cloudpickle.loads(fetched.content) == {"value": 6, "y_len": 0}


def test_edit_rolls_replicas_over_to_the_new_bundle(live_stack, owner):
    from workers.models import Replica

    api = api_for(live_stack, owner)
    endpoint_id = api.create_endpoint(api.upload_bundle(echo_bundle(), "echo"), "rolling")
    api.wait_endpoint(endpoint_id, "READY", available_workers=1)
    first = Replica.objects.get(owner_id=endpoint_id, state=Replica.State.READY)

    new_bundle = api.upload_bundle(slow_bundle(0), "plus-one")
    assert api.put(f"/v1/model-endpoints/{endpoint_id}", json={"model_bundle_id": new_bundle}).status_code == 200
    api.wait_endpoint(endpoint_id, "READY", available_workers=1, unavailable_workers=0, timeout=30)
    first.refresh_from_db()
    assert first.state == Replica.State.STOPPED
    body = api.post(f"/v1/sync-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": 1}}).json()
    assert body["result"] == {"result": "2"}


def test_delete_drains_replicas_and_removes_the_endpoint(live_stack, owner):
    from workers.models import Replica

    api = api_for(live_stack, owner)
    endpoint_id = api.create_endpoint(api.upload_bundle(echo_bundle(), "echo"), "doomed")
    api.wait_endpoint(endpoint_id, "READY", available_workers=1)
    assert api.delete(f"/v1/model-endpoints/{endpoint_id}").json() == {"deleted": True}
    deadline = time.monotonic() + 20
    while api.get(f"/v1/model-endpoints/{endpoint_id}").status_code != 404:
        assert time.monotonic() < deadline, "endpoint was never removed"
        time.sleep(0.1)
    assert not Replica.objects.filter(owner_id=endpoint_id, state__in=["starting", "ready", "draining"]).exists()


def test_restart_replaces_replicas_while_eight_clients_see_no_failure(live_stack, owner):
    import threading

    import requests

    from workers.models import Replica

    api = api_for(live_stack, owner)
    endpoint_id = api.create_endpoint(api.upload_bundle(slow_bundle(0.02), "restartable"), "restartable")
    api.wait_endpoint(endpoint_id, "READY", available_workers=1)
    first = Replica.objects.get(owner_id=endpoint_id, state=Replica.State.READY)
    stop = threading.Event()
    outcomes: list[str] = []

    def client():
        session = requests.Session()
        session.auth = (owner.key, "")
        while not stop.is_set():
            response = session.post(f"{live_stack}/v1/sync-tasks?model_endpoint_id={endpoint_id}",
                                    json={"args": {"x": 1}}, timeout=60)
            outcomes.append("ok" if response.status_code == 200 and response.json()["result"] == {"result": "2"}
                            else f"{response.status_code} {response.text[:200]}")

    clients = [threading.Thread(target=client) for _ in range(8)]
    for thread in clients:
        thread.start()
    try:
        assert api.post(f"/v1/model-endpoints/{endpoint_id}/restart").json() == {"restarted": True}
        deadline = time.monotonic() + 60
        while True:
            first.refresh_from_db()
            if first.state == Replica.State.STOPPED and Replica.objects.filter(
                owner_id=endpoint_id, state=Replica.State.READY
            ).exists():
                break
            assert time.monotonic() < deadline, "the restart never replaced the replica"
            time.sleep(0.1)
        count = len(outcomes)
        while len(outcomes) < count + 16:  # requests served by the new replica too
            assert time.monotonic() < deadline + 30
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
    failures = [outcome for outcome in outcomes if outcome != "ok"]
    assert failures == [] and len(outcomes) > 16

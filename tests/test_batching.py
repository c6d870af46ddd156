"""Adaptive request batching (docs/batching.md): an endpoint with max_batch_size takes up to
that many waiting requests in one Redis call, waits at most max_batch_wait_ms for them, calls
the bundle's batch predict with the list and answers each task on its own. The serve loop in
threads against real Redis; the settings through the API; real replicas and HTTP end to end,
with 32 clients racing and a replica SIGKILLed in the middle of a batch."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.factories import endpoint_body, make_bundle
from tests.stack import api_for
from tests.test_serve_loop import RunningReplica, bundle_file
from workers import protocol


def batch_bundle(*, seconds_per_call: float = 0.0, poison=None, drop_one: bool = False):
    """A batch predict: each input x -> {"x": x * 2, "position": its index in the batch,
    "size": the batch's size}. `poison` raises ValueError when it is in the batch;
    `drop_one` returns one output too few."""

    def load_predict_fn(model):
        def predict(inputs):
            import time as _time

            _time.sleep(seconds_per_call)
            if poison is not None and poison in inputs:
                raise ValueError(f"cannot handle {poison}")
            outputs = [{"x": x * model, "position": n, "size": len(inputs)} for n, x in enumerate(inputs)]
            return outputs[:-1] if drop_one else outputs

        predict.batch = True
        return predict

    return {"model": 2, "load_predict_fn": load_predict_fn}


class BatchingReplica(RunningReplica):
    def __init__(self, bundle_url: str, *, size: int, wait_ms: int = 0):
        super().__init__(bundle_url)
        self.replica.max_batch_size = size
        self.replica.max_batch_wait = wait_ms / 1000


def results(running, redis_client, task_ids, timeout: float = 10) -> list[dict]:
    records = [running.record(redis_client, task_id, timeout=timeout) for task_id in task_ids]
    assert all(records), "a task was never answered"
    return records


# --- the serve loop ------------------------------------------------------------------------


def test_a_batch_wait_ending_within_a_millisecond_does_not_block_forever(tmp_path, redis_client, monkeypatch):
    """Redis truncates a blocking timeout to whole milliseconds and 0 blocks forever: a take
    asked to wait what is left of max_batch_wait, when that is under a millisecond, waited for
    the next task instead (seen with 32 clients each waiting on their answer: never). The
    clock here moves 0.2 ms per reading, so the wait left after the first take is 0.8 ms."""
    import types

    from workers import serve

    readings = iter(range(10**6))
    clock = types.SimpleNamespace(monotonic=lambda: 1000 + next(readings) * 0.0002, time=time.time, sleep=time.sleep)
    monkeypatch.setattr(serve, "time", clock)
    running = BatchingReplica(bundle_file(tmp_path, batch_bundle()), size=8, wait_ms=1)
    with running:
        task_id = running.submit(redis_client, {"args": 21})
        record = running.record(redis_client, task_id, timeout=5)
    assert record is not None, "the task was taken and never run"
    assert json.loads(record["result"]) == {"x": 42, "position": 0, "size": 1}



def test_a_full_queue_is_taken_in_batches_of_max_size_each_answered_with_its_own_result(tmp_path, redis_client):
    running = BatchingReplica(bundle_file(tmp_path, batch_bundle()), size=8)
    task_ids = [running.submit(redis_client, {"args": n}) for n in range(40)]  # waiting before it starts
    with running:
        records = results(running, redis_client, task_ids)
    for n, record in enumerate(records):
        # Oldest first: the n-th task is at position n % 8 of a full batch.
        assert record["status"] == "SUCCESS"
        assert json.loads(record["result"]) == {"x": 2 * n, "position": n % 8, "size": 8}
    for task_id in task_ids:
        task = redis_client.hgetall(running.keys.task(task_id))
        assert task[b"status"] == b"SUCCESS" and task[b"attempts"] == b"1" and task[b"replica"] == b"rep_test"
        assert float(task[b"created_at"]) <= float(task[b"started_at"]) <= float(task[b"finished_at"])
    assert redis_client.zcard(running.keys.running) == 0
    assert redis_client.llen(running.keys.inflight("rep_test")) == 0
    assert redis_client.hget(running.keys.stats, "completed") == b"40"
    latency = redis_client.hgetall(running.keys.latency)
    assert latency[b"run:count"] == latency[b"queue_wait:count"] == latency[b"total:count"] == b"40"


def test_a_batch_runs_its_tasks_as_started_and_running_until_each_is_answered(tmp_path, redis_client):
    running = BatchingReplica(bundle_file(tmp_path, batch_bundle(seconds_per_call=1.0)), size=4)
    task_ids = [running.submit(redis_client, {"args": n}) for n in range(4)]
    with running:
        deadline = time.monotonic() + 5
        while redis_client.zcard(running.keys.running) < 4:
            assert time.monotonic() < deadline, "the batch's tasks were never all marked running"
            time.sleep(0.01)
        statuses = [redis_client.hget(running.keys.task(t), "status") for t in task_ids]
        inflight = redis_client.llen(running.keys.inflight("rep_test"))
        records = results(running, redis_client, task_ids)
    assert statuses == [b"STARTED"] * 4 and inflight == 4
    assert [json.loads(r["result"])["size"] for r in records] == [4] * 4


def test_a_lone_request_is_answered_after_max_wait_not_held_for_a_full_batch(tmp_path, redis_client):
    with BatchingReplica(bundle_file(tmp_path, batch_bundle()), size=32, wait_ms=300) as running:
        time.sleep(0.2)  # the replica blocks on the empty queue
        started = time.monotonic()
        record = running.record(redis_client, running.submit(redis_client, {"args": 5}), timeout=5)
        elapsed = time.monotonic() - started
    assert record is not None, "a lone request waited for a batch that never filled"
    assert json.loads(record["result"]) == {"x": 10, "position": 0, "size": 1}
    assert 0.25 <= elapsed < 3, elapsed


def test_a_request_arriving_within_max_wait_joins_the_batch(tmp_path, redis_client):
    with BatchingReplica(bundle_file(tmp_path, batch_bundle()), size=32, wait_ms=1500) as running:
        time.sleep(0.2)
        first = running.submit(redis_client, {"args": 1})
        time.sleep(0.2)
        second = running.submit(redis_client, {"args": 2})
        records = results(running, redis_client, [first, second])
    assert [json.loads(r["result"]) for r in records] == [
        {"x": 2, "position": 0, "size": 2}, {"x": 4, "position": 1, "size": 2},
    ]


def test_a_batch_predict_with_the_wrong_number_of_outputs_fails_each_task_with_the_reason(tmp_path, redis_client):
    running = BatchingReplica(bundle_file(tmp_path, batch_bundle(drop_one=True)), size=4)
    task_ids = [running.submit(redis_client, {"args": n}) for n in range(4)]
    with running:
        records = results(running, redis_client, task_ids, timeout=5)
    for record in records:
        assert record["status"] == "FAILURE"
        assert "the batch predict returned 3 outputs for 4 inputs" in record["traceback"]
    assert redis_client.llen(running.keys.inflight("rep_test")) == 0
    assert redis_client.zcard(running.keys.running) == 0
    assert redis_client.hget(running.keys.stats, "failed") == b"4"


def test_a_raising_batch_runs_again_one_by_one_so_only_the_bad_input_fails(tmp_path, redis_client):
    running = BatchingReplica(bundle_file(tmp_path, batch_bundle(poison=13)), size=4)
    task_ids = [running.submit(redis_client, {"args": n}) for n in (11, 12, 13, 14)]
    with running:
        records = results(running, redis_client, task_ids)
    assert [r["status"] for r in records] == ["SUCCESS", "SUCCESS", "FAILURE", "SUCCESS"]
    assert "ValueError: cannot handle 13" in records[2]["traceback"]
    assert json.loads(records[0]["result"]) == {"x": 22, "position": 0, "size": 1}


def test_each_task_of_a_batch_keeps_its_own_output_format_and_expiry(tmp_path, redis_client):
    import cloudpickle

    running = BatchingReplica(bundle_file(tmp_path, batch_bundle()), size=4)
    pickled = running.submit(redis_client, {"args": 1, "return_pickled": True})
    expired = running.submit(redis_client, {"args": 2}, ttl=-1)
    plain = running.submit(redis_client, {"args": 3})
    with running:
        pickled_record, plain_record = results(running, redis_client, [pickled, plain])
        assert running.record(redis_client, expired, timeout=0.5) is None
    assert pickled_record["result_pickled"] is True
    assert cloudpickle.loads(redis_client.hget(running.keys.task(pickled), "result_pickled"))["x"] == 2
    assert json.loads(plain_record["result"]) == {"x": 6, "position": 1, "size": 2}
    assert redis_client.hget(running.keys.task(expired), "status") == b"PENDING"


def test_an_output_that_is_not_a_list_or_does_not_encode_fails_with_the_reason(tmp_path, redis_client):
    class Model:
        """A class bundle declares its batch predict with a class attribute."""

        batch = True

        def __call__(self, inputs):
            if inputs == ["dict"]:
                return {"not": "a list"}
            return [{1, 2} if x == "set" else x for x in inputs]

    running = BatchingReplica(bundle_file(tmp_path, Model), size=2)
    task_ids = [running.submit(redis_client, {"args": x}) for x in ("ok", "set")]
    with running:
        ok, unencodable = results(running, redis_client, task_ids)
        lone = running.record(redis_client, running.submit(redis_client, {"args": "dict"}))
    assert ok["status"] == "SUCCESS" and ok["result"] == '"ok"'
    assert unencodable["status"] == "FAILURE" and "not JSON serializable" in unencodable["traceback"]
    assert lone["status"] == "FAILURE" and "returned dict, not a list" in lone["traceback"]


def test_a_batch_predict_on_an_endpoint_without_batching_gets_lists_of_one(tmp_path, redis_client):
    with RunningReplica(bundle_file(tmp_path, batch_bundle())) as running:
        record = running.record(redis_client, running.submit(redis_client, {"args": 4}))
    assert json.loads(record["result"]) == {"x": 8, "position": 0, "size": 1}


def _load_error(tmp_path, redis_client, obj, size: int) -> str:
    running = RunningReplica(bundle_file(tmp_path, obj))
    running.replica.max_batch_size = size
    with pytest.raises(SystemExit):
        running.replica.load()
    return redis_client.hget(running.keys.replica("rep_test"), "error").decode()


def test_batching_with_a_predict_that_is_not_a_batch_predict_fails_to_load_saying_why(tmp_path, redis_client):
    plain = {"model": 2, "load_predict_fn": lambda model: (lambda x: x * model)}
    error = _load_error(tmp_path, redis_client, plain, size=8)
    assert "max_batch_size 8" in error and "predict.batch = True" in error


def test_an_ambiguous_batch_declaration_is_refused(tmp_path, redis_client):
    def load_predict_fn(model):
        def predict(inputs):
            return inputs

        predict.batch = 32  # a size? a flag? neither is guessed
        return predict

    error = _load_error(tmp_path, redis_client, {"model": None, "load_predict_fn": load_predict_fn}, size=0)
    assert "`batch` attribute is 32" in error


def slow_bundle(seconds: float, *, batch: bool):
    def load_predict_fn(model):
        def predict(value):
            import time as _time

            _time.sleep(seconds)
            return value

        predict.batch = batch
        return predict

    return {"model": None, "load_predict_fn": load_predict_fn}


@pytest.mark.parametrize("size", [0, 4], ids=["single", "batched"])
def test_a_predict_longer_than_the_redis_health_check_interval_is_answered(tmp_path, redis_client, size):
    """The serve loop sends a task's STARTED mark and reads its reply after the predict: a
    health-check PING in between (redis-py's health_check_interval, 30 s in production, when
    the replica used redis-py) once read that reply as its PONG and killed the worker thread."""
    running = BatchingReplica(bundle_file(tmp_path, slow_bundle(1.5, batch=bool(size))), size=size)
    with running:
        first = running.record(redis_client, running.submit(redis_client, {"args": [1]}), timeout=6)
        second = running.record(redis_client, running.submit(redis_client, {"args": [2]}), timeout=6)
    assert first is not None and second is not None, "the worker thread died"
    assert (first["result"], second["result"]) == ("[1]", "[2]")


# --- the settings ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_batching_settings_read_back_and_reach_the_replica_and_zero_turns_them_off(owner):
    from endpoints.deployment import bundle_replica_spec
    from endpoints.models import ModelEndpoint

    bundle = make_bundle(owner.team)
    body = endpoint_body(bundle.id, name="batched", max_batch_size=16)
    endpoint_id = owner.client.post("/v1/model-endpoints", body, format="json").json()["endpoint_creation_task_id"]
    endpoint = owner.client.get(f"/v1/model-endpoints/{endpoint_id}").json()
    assert (endpoint["max_batch_size"], endpoint["max_batch_wait_ms"]) == (16, 10)  # the default wait
    spec = bundle_replica_spec(ModelEndpoint.objects.get(pk=endpoint_id), kind="endpoint", prefix="p:",
                               replica_id="r", labels={})
    assert (spec.env["LAUNCH_MAX_BATCH_SIZE"], spec.env["LAUNCH_MAX_BATCH_WAIT_MS"]) == ("16", "10")

    generation = ModelEndpoint.objects.get(pk=endpoint_id).generation
    response = owner.client.put(f"/v1/model-endpoints/{endpoint_id}", {"max_batch_wait_ms": 250}, format="json")
    assert response.status_code == 200, response.content
    endpoint = owner.client.get(f"/v1/model-endpoints/{endpoint_id}").json()
    assert (endpoint["max_batch_size"], endpoint["max_batch_wait_ms"]) == (16, 250)
    assert ModelEndpoint.objects.get(pk=endpoint_id).generation == generation + 1  # replicas roll over

    owner.client.put(f"/v1/model-endpoints/{endpoint_id}", {"max_batch_size": 0}, format="json")
    endpoint = owner.client.get(f"/v1/model-endpoints/{endpoint_id}").json()
    assert (endpoint["max_batch_size"], endpoint["max_batch_wait_ms"]) == (None, None)
    spec = bundle_replica_spec(ModelEndpoint.objects.get(pk=endpoint_id), kind="endpoint", prefix="p:",
                               replica_id="r", labels={})
    assert "LAUNCH_MAX_BATCH_SIZE" not in spec.env


@pytest.mark.django_db
def test_batching_is_off_by_default(owner):
    bundle = make_bundle(owner.team)
    body = endpoint_body(bundle.id, name="plain")
    endpoint_id = owner.client.post("/v1/model-endpoints", body, format="json").json()["endpoint_creation_task_id"]
    endpoint = owner.client.get(f"/v1/model-endpoints/{endpoint_id}").json()
    assert (endpoint["max_batch_size"], endpoint["max_batch_wait_ms"]) == (None, None)


@pytest.mark.django_db
@pytest.mark.parametrize("fields, field, message", [
    ({"max_batch_size": -1}, "max_batch_size", "between 0 and 256"),
    ({"max_batch_size": 257}, "max_batch_size", "between 0 and 256"),
    ({"max_batch_size": 10**30}, "max_batch_size", ""),
    ({"max_batch_size": "many"}, "max_batch_size", ""),
    ({"max_batch_size": 8, "max_batch_wait_ms": -5}, "max_batch_wait_ms", "between 0 and 5000"),
    ({"max_batch_size": 8, "max_batch_wait_ms": 5001}, "max_batch_wait_ms", "between 0 and 5000"),
    ({"max_batch_wait_ms": 20}, "max_batch_wait_ms", "set max_batch_size"),
    ({"max_batch_size": 0, "max_batch_wait_ms": 20}, "max_batch_wait_ms", "set max_batch_size"),
    ({"max_batch_size": 8, "endpoint_type": "streaming"}, "max_batch_size", "streaming endpoint"),
])
def test_bad_batching_settings_are_4xx_naming_the_field_and_create_nothing(owner, fields, field, message):
    bundle = make_bundle(owner.team)
    response = owner.client.post("/v1/model-endpoints", endpoint_body(bundle.id, name="bad", **fields), format="json")
    assert 400 <= response.status_code < 500 and response.status_code != 404, response.content
    assert field in json.dumps(response.json())
    assert message in json.dumps(response.json())
    assert owner.client.get("/v1/model-endpoints").json()["model_endpoints"] == []


@pytest.mark.django_db
def test_a_wait_for_an_endpoint_that_does_not_batch_is_refused_on_update_and_changes_nothing(owner):
    bundle = make_bundle(owner.team)
    endpoint_id = owner.client.post(
        "/v1/model-endpoints", endpoint_body(bundle.id, name="plain"), format="json"
    ).json()["endpoint_creation_task_id"]
    before = owner.client.get(f"/v1/model-endpoints/{endpoint_id}").json()
    response = owner.client.put(f"/v1/model-endpoints/{endpoint_id}", {"max_batch_wait_ms": 50}, format="json")
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "max_batch_wait_ms"
    assert owner.client.get(f"/v1/model-endpoints/{endpoint_id}").json() == before


@pytest.mark.django_db
def test_the_endpoint_page_shows_its_batching(owner):
    bundle = make_bundle(owner.team)
    endpoint_id = owner.client.post(
        "/v1/model-endpoints", endpoint_body(bundle.id, name="shown", max_batch_size=12, max_batch_wait_ms=40),
        format="json",
    ).json()["endpoint_creation_task_id"]
    from django.test import Client

    browser = Client()
    browser.force_login(owner.user)
    page = browser.get(f"/endpoints/{endpoint_id}/").content.decode()
    assert "up to 12 requests per call of the batch predict, waiting at most 40 ms" in page


# --- end to end --------------------------------------------------------------------------------


def test_32_clients_racing_each_get_their_own_answer_from_batches(live_stack, asgi_server, owner):
    # The 32 clients race through the web server `launch up` runs (asgi_server), not Django's
    # test server, which once reset a fresh connection among 32 opened at once in CI.
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(batch_bundle(seconds_per_call=0.02), "batched")
    endpoint_id = api.create_endpoint(bundle_id, "batched", max_batch_size=32, max_batch_wait_ms=20)
    api.wait_endpoint(endpoint_id, "READY", available_workers=1)

    def client(number: int) -> list[tuple[int, dict]]:
        with requests.Session() as session:
            session.auth = (owner.key, "")
            answers = []
            for round_ in range(4):
                x = number * 100 + round_
                response = session.post(f"{asgi_server}/v1/sync-tasks?model_endpoint_id={endpoint_id}",
                                        json={"args": x}, timeout=60)
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["status"] == "SUCCESS", body
                answers.append((x, json.loads(body["result"]["result"])))
            return answers

    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = [answer for batch in pool.map(client, range(32)) for answer in batch]
    assert len(answers) == 128
    assert all(output["x"] == 2 * x for x, output in answers)
    assert max(output["size"] for _, output in answers) > 1  # it batched


def test_a_replica_sigkilled_mid_batch_loses_no_task(live_stack, owner):
    from launch_site.redis_client import get_redis
    from workers.models import Replica

    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(batch_bundle(seconds_per_call=3), "killed")
    endpoint_id = api.create_endpoint(bundle_id, "killed", endpoint_type="async", max_batch_size=8,
                                      max_batch_wait_ms=2000)
    api.wait_endpoint(endpoint_id, "READY", available_workers=1)
    keys = protocol.Keys(protocol.endpoint_prefix(endpoint_id))
    task_ids = []
    for x in range(8):
        response = api.post(f"/v1/async-tasks?model_endpoint_id={endpoint_id}", json={"args": x})
        assert response.status_code == 200, response.text
        task_ids.append(response.json()["task_id"])
    deadline = time.monotonic() + 15
    while get_redis().zcard(keys.running) < 8:  # the whole batch runs
        assert time.monotonic() < deadline, "the batch never started"
        time.sleep(0.02)
    victim = Replica.objects.get(owner_id=endpoint_id, state=Replica.State.READY)
    os.kill(int(victim.handle), signal.SIGKILL)

    tasks = [api.wait_task(task_id, timeout=60) for task_id in task_ids]
    assert [t["status"] for t in tasks] == ["SUCCESS"] * 8, tasks
    assert [json.loads(t["result"]["result"])["x"] for t in tasks] == [2 * x for x in range(8)]
    assert all(get_redis().hget(keys.task(t), "attempts") == b"2" for t in task_ids)  # each ran again


def test_an_endpoint_that_batches_a_bundle_without_batch_predict_fails_to_update_saying_why(live_stack, owner):
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle({"model": 2, "load_predict_fn": lambda model: (lambda x: x * model)}, "single")
    endpoint_id = api.create_endpoint(bundle_id, "single", max_batch_size=4)
    endpoint = api.wait_endpoint(endpoint_id, "UPDATE_FAILED", timeout=30)
    assert "not a batch predict" in endpoint["status_reason"]



def test_a_hanging_batch_times_out_each_of_its_tasks_and_the_queue_moves_on(live_stack, owner):
    api = api_for(live_stack, owner)

    def load_predict_fn(model):
        def predict(inputs):
            import time as _time

            if "hang" in inputs:
                _time.sleep(3600)
            return inputs

        predict.batch = True
        return predict

    bundle_id = api.upload_bundle({"model": None, "load_predict_fn": load_predict_fn}, "hangs")
    endpoint_id = api.create_endpoint(bundle_id, "hangs", endpoint_type="async", max_batch_size=4,
                                      max_batch_wait_ms=1000, queue_message_timeout_seconds=2)
    api.wait_endpoint(endpoint_id, "READY", available_workers=1)
    task_ids = [
        api.post(f"/v1/async-tasks?model_endpoint_id={endpoint_id}", json={"args": x}).json()["task_id"]
        for x in ("hang", "a", "b", "c")
    ]
    tasks = [api.wait_task(task_id, timeout=30) for task_id in task_ids]
    assert [t["status"] for t in tasks] == ["FAILURE"] * 4, tasks
    assert all("timed out after 2 s" in t["traceback"] for t in tasks)
    after = api.post(f"/v1/async-tasks?model_endpoint_id={endpoint_id}", json={"args": "d"}).json()["task_id"]
    task = api.wait_task(after, timeout=60)
    assert task["status"] == "SUCCESS" and task["result"] == {"result": '"d"'}, task


@pytest.mark.django_db
def test_the_edit_page_turns_batching_on_and_off_and_shows_a_bad_value_on_its_field(owner):
    from django.test import Client

    from endpoints.models import ModelEndpoint

    bundle = make_bundle(owner.team)
    endpoint_id = owner.client.post(
        "/v1/model-endpoints", endpoint_body(bundle.id, name="edited"), format="json"
    ).json()["endpoint_creation_task_id"]
    browser = Client()
    browser.force_login(owner.user)
    form = {"bundle": bundle.id, "min_workers": 1, "max_workers": 2, "labels": "{}", "metadata": "{}"}

    response = browser.post(f"/endpoints/{endpoint_id}/edit/", {**form, "max_batch_size": 999})
    assert response.status_code == 422
    assert "between 0 and 256" in response.content.decode()
    assert ModelEndpoint.objects.get(pk=endpoint_id).max_batch_size is None

    browser.post(f"/endpoints/{endpoint_id}/edit/", {**form, "max_batch_size": 16, "max_batch_wait_ms": 40})
    endpoint = ModelEndpoint.objects.get(pk=endpoint_id)
    assert (endpoint.max_batch_size, endpoint.max_batch_wait_ms) == (16, 40)
    html = browser.get(f"/endpoints/{endpoint_id}/edit/").content.decode()
    assert 'name="max_batch_size" value="16"' in html and 'name="max_batch_wait_ms" value="40"' in html

    browser.post(f"/endpoints/{endpoint_id}/edit/", {**form, "max_batch_size": 0})
    endpoint = ModelEndpoint.objects.get(pk=endpoint_id)
    assert (endpoint.max_batch_size, endpoint.max_batch_wait_ms) == (None, None)

"""The scale-launch 0.3.3 dialect of endpoints and tasks under /v1/hosted_inference/: names
instead of ids, `{}` bodies on GET and DELETE, return_pickled on by default, and only the
task states PENDING, SUCCESS and FAILURE. Replicas are not started here (see
test_client_scale_launch.py for the real client against real replicas)."""

from __future__ import annotations

import json

import pytest

from endpoints.models import ModelEndpoint
from tests.factories import make_bundle
from workers import protocol

pytestmark = pytest.mark.django_db

BASE = "/v1/hosted_inference"


def legacy_body(**fields) -> dict:
    """What LaunchClient.create_model_endpoint sends."""
    return {
        "endpoint_name": "demo",
        "bundle_name": "model",
        "cpus": 1,
        "memory": "1Gi",
        "storage": None,
        "gpus": 0,
        "min_workers": 1,
        "max_workers": 2,
        "per_worker": 5,
        "endpoint_type": "sync",
        "post_inference_hooks": None,
        "labels": {},
        **fields,
    }


def _get(persona, path):
    # The client sends a JSON body `{}` with every GET and DELETE.
    return persona.client.generic("GET", BASE + path, "{}", content_type="application/json")


def _delete(persona, path):
    return persona.client.generic("DELETE", BASE + path, "{}", content_type="application/json")


def _create(persona, **fields):
    return persona.client.post(f"{BASE}/endpoints", legacy_body(**fields), format="json")


def test_create_by_bundle_name_uses_the_newest_bundle_of_that_name(owner):
    make_bundle(owner.team, name="model")
    newest = make_bundle(owner.team, name="model")
    response = _create(owner)
    assert response.status_code == 200, response.content
    endpoint_id = response.json()["endpoint_creation_task_id"]
    assert ModelEndpoint.objects.get(pk=endpoint_id).bundle_id == newest.id


def test_get_by_name_answers_the_fields_the_client_reads(owner):
    make_bundle(owner.team, name="model")
    _create(owner, labels={"team": "vision"}, endpoint_type="async", min_workers=0)
    response = _get(owner, "/endpoints/demo")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["name"] == "demo"
    assert body["bundle_name"] == "model"
    assert body["endpoint_type"] == "async"
    assert body["status"] == "UPDATE_PENDING"
    assert body["destination"]
    assert body["metadata"] == {}
    assert body["resource_settings"] == {"cpus": "1", "gpus": 0, "memory": "1Gi", "gpu_type": None, "storage": None}
    assert body["worker_settings"] == {
        "min_workers": 0,
        "max_workers": 2,
        "per_worker": 5,
        "available_workers": 0,
        "unavailable_workers": 0,
    }
    assert body["configs"]["labels"] == {"team": "vision"}


def test_list_wraps_endpoints_and_shows_only_own_team(owner, outsider):
    make_bundle(owner.team, name="model")
    make_bundle(outsider.team, name="model")
    _create(owner, endpoint_name="a")
    _create(owner, endpoint_name="b")
    _create(outsider, endpoint_name="theirs")
    body = _get(owner, "/endpoints").json()
    assert sorted(e["name"] for e in body["endpoints"]) == ["a", "b"]


def test_other_teams_endpoint_is_404_by_name(owner, outsider):
    make_bundle(owner.team, name="model")
    _create(owner)
    assert _get(outsider, "/endpoints/demo").status_code == 404
    assert _delete(outsider, "/endpoints/demo").status_code == 404
    assert outsider.client.put(f"{BASE}/endpoints/demo", {"min_workers": 2}, format="json").status_code == 404


def test_unknown_bundle_name_is_a_422_naming_bundle_name(owner, outsider):
    make_bundle(outsider.team, name="model")
    response = _create(owner)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "bundle_name"]
    assert "no model bundle named 'model'" in error["msg"]


def test_duplicate_name_is_a_422_naming_endpoint_name(owner):
    make_bundle(owner.team, name="model")
    assert _create(owner).status_code == 200
    response = _create(owner)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "endpoint_name"]


def test_missing_endpoint_name_and_bad_types_are_rejected(owner):
    make_bundle(owner.team, name="model")
    body = legacy_body(min_workers="many")
    del body["endpoint_name"]
    response = owner.client.post(f"{BASE}/endpoints", body, format="json")
    assert response.status_code == 422
    fields = {tuple(e["loc"]) for e in response.json()["detail"]}
    assert fields == {("body", "endpoint_name"), ("body", "min_workers")}


def test_edit_by_name_switches_to_the_newest_bundle_and_keeps_unsent_fields(owner):
    make_bundle(owner.team, name="model")
    _create(owner)
    replacement = make_bundle(owner.team, name="other")
    # The client trims None values before sending (trim_kwargs).
    response = owner.client.put(f"{BASE}/endpoints/demo", {"bundle_name": "other", "max_workers": 3}, format="json")
    assert response.status_code == 200, response.content
    endpoint = ModelEndpoint.objects.get(name="demo")
    assert (endpoint.bundle_id, endpoint.max_workers, endpoint.per_worker) == (replacement.id, 3, 5)
    assert endpoint.generation == 2


def test_delete_by_name_with_an_empty_json_body(owner):
    make_bundle(owner.team, name="model")
    _create(owner)
    response = _delete(owner, "/endpoints/demo")
    assert response.status_code == 200
    assert response.json() == {"deleted": True}
    assert ModelEndpoint.objects.get(name="demo").status == "DELETE_IN_PROGRESS"


def _async_endpoint(persona) -> ModelEndpoint:
    make_bundle(persona.team, name="model")
    _create(persona, endpoint_type="async", min_workers=0)
    return ModelEndpoint.objects.get(team=persona.team, name="demo")


def test_async_task_defaults_to_pickled_result_and_prefers_url_over_args(owner, redis_client):
    endpoint = _async_endpoint(owner)
    response = owner.client.post(f"{BASE}/task_async/demo", {"url": "http://x/1", "args": {"a": 1}}, format="json")
    assert response.status_code == 200, response.content
    task_id = response.json()["task_id"]
    # The payload travels in the queue entry (stored once, not also in the task hash).
    entry = redis_client.lindex(protocol.Keys(protocol.endpoint_prefix(endpoint.id)).queue, 0)
    queued_id, _, stored = protocol.parse_entry(entry)
    assert queued_id == task_id
    assert json.loads(bytes(stored)) == {"return_pickled": True, "url": "http://x/1"}


@pytest.mark.parametrize(
    ("stored", "state"),
    [(protocol.PENDING, "PENDING"), (protocol.STARTED, "PENDING"), (protocol.FAILURE, "FAILURE")],
)
def test_async_task_state_is_one_of_the_three_the_client_knows(owner, redis_client, stored, state):
    endpoint = _async_endpoint(owner)
    task_id = owner.client.post(f"{BASE}/task_async/demo", {"args": {"x": 1}}, format="json").json()["task_id"]
    task_key = protocol.Keys(protocol.endpoint_prefix(endpoint.id)).task(task_id)
    # The status a replica writes into the task record (workers.protocol).
    redis_client.hset(task_key, mapping={"status": stored, "traceback": "boom"})
    body = _get(owner, f"/endpoints/demo/task_async/{task_id}").json()
    assert body["state"] == state
    assert body["result"] is None and body["result_url"] is None


def test_async_task_success_gives_result_text_or_result_url(owner, redis_client):
    endpoint = _async_endpoint(owner)
    keys = protocol.Keys(protocol.endpoint_prefix(endpoint.id))
    plain = owner.client.post(
        f"{BASE}/task_async/demo", {"args": {"x": 1}, "return_pickled": False}, format="json"
    ).json()["task_id"]
    redis_client.hset(keys.task(plain), mapping={"status": protocol.SUCCESS, "result": '{"y": 2}'})
    assert _get(owner, f"/endpoints/demo/task_async/{plain}").json() == {
        "task_id": plain,
        "state": "SUCCESS",
        "result": '{"y": 2}',
        "result_url": None,
        "traceback": None,
    }
    pickled = owner.client.post(f"{BASE}/task_async/demo", {"args": {"x": 1}}, format="json").json()["task_id"]
    redis_client.hset(keys.task(pickled), mapping={"status": protocol.SUCCESS, "result_pickled": b"\x80\x04K\x02."})
    body = _get(owner, f"/endpoints/demo/task_async/{pickled}").json()
    assert body["state"] == "SUCCESS"
    assert body["result_url"] == f"http://testserver/v1/task-results/{pickled}"
    assert owner.client.get(f"/v1/task-results/{pickled}").content == b"\x80\x04K\x02."


def test_task_of_another_endpoint_or_team_is_404(owner, outsider):
    _async_endpoint(owner)
    make_bundle(owner.team, name="model")
    _create(owner, endpoint_name="second", endpoint_type="async", min_workers=0)
    task_id = owner.client.post(f"{BASE}/task_async/demo", {"args": {"x": 1}}, format="json").json()["task_id"]
    assert _get(owner, f"/endpoints/second/task_async/{task_id}").status_code == 404
    assert _get(outsider, f"/endpoints/demo/task_async/{task_id}").status_code == 404
    assert outsider.client.post(f"{BASE}/task_async/demo", {"args": {"x": 1}}, format="json").status_code == 404


def test_task_without_args_or_url_is_a_422(owner):
    _async_endpoint(owner)
    response = owner.client.post(f"{BASE}/task_async/demo", {"return_pickled": False}, format="json")
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"].startswith("args")

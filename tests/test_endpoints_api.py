"""Endpoint routes: the contract's fields, validation and team scoping (no replicas)."""

from __future__ import annotations

import pytest

from endpoints.models import ModelEndpoint
from tests.factories import endpoint_body, make_bundle

pytestmark = pytest.mark.django_db


def _create(persona, **fields):
    bundle = make_bundle(persona.team)
    return persona.client.post("/v1/model-endpoints", endpoint_body(bundle.id, **fields), format="json")


def _error_for(response, field: str) -> str:
    assert response.status_code == 422, response.content
    errors = response.json()["detail"]
    matching = [e["msg"] for e in errors if field in e["loc"]]
    assert matching, errors
    assert matching[0].startswith(field)
    return matching[0]


def test_create_returns_id_and_get_shows_contract_fields(owner):
    response = _create(owner, memory="8Gi", cpus="500m", labels={"team": "vision"})
    assert response.status_code == 200, response.content
    endpoint_id = response.json()["endpoint_creation_task_id"]
    body = owner.client.get(f"/v1/model-endpoints/{endpoint_id}").json()
    for field in ("id", "name", "endpoint_type", "destination", "bundle_name", "status", "created_by",
                  "created_at", "last_updated_at"):
        assert body[field] not in (None, ""), field
    assert body["status"] == "UPDATE_PENDING"
    assert body["resource_state"]["memory"] == "8Gi"
    assert body["deployment_state"] == {
        "min_workers": 1, "max_workers": 2, "per_worker": 4, "concurrent_requests_per_worker": 4,
        "available_workers": 0, "unavailable_workers": 0,
    }
    endpoint = ModelEndpoint.objects.get(pk=endpoint_id)
    assert endpoint.memory_bytes == 8 * 2**30 and endpoint.cpus_millis == 500


def test_list_filters_by_exact_name(owner):
    _create(owner, name="alpha")
    _create(owner, name="alpha-2")
    listed = owner.client.get("/v1/model-endpoints?name=alpha").json()["model_endpoints"]
    assert [e["name"] for e in listed] == ["alpha"]
    assert len(owner.client.get("/v1/model-endpoints").json()["model_endpoints"]) == 2


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"min_workers": 0}, "min_workers", "sync endpoint"),
        ({"min_workers": 3, "max_workers": 2}, "max_workers", "min_workers"),
        ({"gpus": 1}, "gpu_type", "required"),
        ({"gpus": 0, "gpu_type": "nvidia-tesla-t4"}, "gpu_type", "gpus is 0"),
        ({"gpus": 1, "gpu_type": "nvidia-geforce-rtx"}, "gpu_type", "not a valid choice"),
        ({"memory": "8Gx"}, "memory", "unit"),
        ({"memory": "lots"}, "memory", "size"),
        ({"cpus": "-1"}, "cpus", "CPUs"),
        ({"per_worker": 0}, "per_worker", ""),
        ({"endpoint_type": "batch"}, "endpoint_type", ""),
        ({"name": "has space"}, "name", ""),
        ({"model_bundle_id": "bun_missing"}, "model_bundle_id", "no model bundle"),
    ],
)
def test_bad_endpoint_is_422_naming_the_field(owner, fields, field, words):
    message = _error_for(_create(owner, **fields), field)
    assert words in message


def test_missing_required_fields_are_named(owner):
    response = owner.client.post("/v1/model-endpoints", {"name": "x"}, format="json")
    assert response.status_code == 422
    named = {e["loc"][-1] for e in response.json()["detail"]}
    assert {"model_bundle_id", "endpoint_type", "cpus", "memory", "gpus", "min_workers", "max_workers",
            "per_worker"} <= named


def test_gpus_on_the_local_runtime_are_refused_clearly(owner):
    message = _error_for(_create(owner, gpus=1, gpu_type="nvidia-ampere-a10"), "gpus")
    assert "no GPU hosts" in message


def test_names_are_unique_per_team_not_globally(owner, outsider):
    assert _create(owner, name="shared").status_code == 200
    assert "already has an endpoint" in _error_for(_create(owner, name="shared"), "name")
    assert _create(outsider, name="shared").status_code == 200


def test_malformed_json_is_422_not_500(owner):
    response = owner.client.generic("POST", "/v1/model-endpoints", "{not json", content_type="application/json")
    assert response.status_code == 422
    assert "malformed" in response.json()["detail"][0]["msg"]


def test_other_teams_endpoint_is_404_everywhere(owner, outsider):
    endpoint_id = _create(owner).json()["endpoint_creation_task_id"]
    assert outsider.client.get(f"/v1/model-endpoints/{endpoint_id}").status_code == 404
    assert outsider.client.put(f"/v1/model-endpoints/{endpoint_id}", {"max_workers": 3}, format="json").status_code == 404
    assert outsider.client.delete(f"/v1/model-endpoints/{endpoint_id}").status_code == 404
    assert outsider.client.post(f"/v1/async-tasks?model_endpoint_id={endpoint_id}", {"args": {}}, format="json").status_code == 404
    assert outsider.client.get(f"/v1/async-tasks/{endpoint_id}-0123").status_code == 404
    assert outsider.client.get("/v1/model-endpoints").json()["model_endpoints"] == []


def test_teammate_sees_the_teams_endpoint(owner, teammate):
    endpoint_id = _create(owner).json()["endpoint_creation_task_id"]
    assert teammate.client.get(f"/v1/model-endpoints/{endpoint_id}").status_code == 200


def test_update_validates_against_the_stored_values(owner):
    endpoint_id = _create(owner, min_workers=1, max_workers=2).json()["endpoint_creation_task_id"]
    response = owner.client.put(f"/v1/model-endpoints/{endpoint_id}", {"min_workers": 5}, format="json")
    assert "min_workers" in _error_for(response, "max_workers")
    ok = owner.client.put(f"/v1/model-endpoints/{endpoint_id}", {"max_workers": 5, "memory": "2Gi"}, format="json")
    assert ok.status_code == 200
    endpoint = ModelEndpoint.objects.get(pk=endpoint_id)
    assert (endpoint.max_workers, endpoint.memory, endpoint.generation) == (5, "2Gi", 2)


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "args"), ({"args": {"x": 1}, "url": "http://x"}, "args"), ({"url": 3}, "url"),
     ({"args": {}, "return_pickled": "yes"}, "return_pickled"), ({"cloudpickle": "abc"}, "cloudpickle")],
)
def test_bad_task_body_is_422_naming_the_field(owner, body, field):
    endpoint_id = _create(owner).json()["endpoint_creation_task_id"]
    _error_for(owner.client.post(f"/v1/async-tasks?model_endpoint_id={endpoint_id}", body, format="json"), field)


def test_task_route_without_endpoint_id_is_422_naming_it(owner):
    response = owner.client.post("/v1/async-tasks", {"args": {}}, format="json")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "model_endpoint_id"]


def test_quota_limits_endpoints_and_workers(owner):
    from accounts.models import Quota

    Quota.objects.create(team=owner.team, max_endpoints=1, max_workers=3)
    assert _create(owner, name="a", max_workers=2).status_code == 200
    assert _create(owner, name="b").status_code == 409
    Quota.objects.filter(team=owner.team).update(max_endpoints=5)
    assert "quota" in _error_for(_create(owner, name="c", max_workers=2), "max_workers")

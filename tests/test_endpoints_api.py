"""Endpoint routes: the contract's fields, validation and team scoping (no replicas)."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from rest_framework.renderers import JSONRenderer

from bundles.models import ModelBundle
from endpoints.models import ModelEndpoint
from tests.factories import endpoint_body, make_bundle
from workers import protocol
from workers.models import Replica

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


def _varied_endpoints(persona) -> list[ModelEndpoint]:
    """Endpoints covering each kind of value the answer shows: GPUs, labels, hooks, callback
    auth, billing tags, batching, each status, a deleted creator, live replicas and a queue."""
    bundle = make_bundle(persona.team, name="varied-model")
    common = dict(team=persona.team, bundle=bundle, min_workers=0, max_workers=2, per_worker=3, cpus="500m",
                  cpus_millis=500, memory="2Gi", memory_bytes=2 * 2**30)
    plain = ModelEndpoint.objects.create(name="plain", endpoint_type="sync", created_by=persona.user, **common)
    rich = ModelEndpoint.objects.create(
        name="rich", endpoint_type="async", created_by=persona.user, gpus=2, gpu_type="nvidia-ampere-a10",
        storage="4Gi", storage_bytes=4 * 2**30, labels={"owner": "ml", "tier": "gold", "note": "a\u2028b"},
        metadata={"nested": {"list": [1, 2.5, None, "é", 1e16]}}, post_inference_hooks=["callback"],
        default_callback_url="http://127.0.0.1:9/hook",
        default_callback_auth={"kind": "basic", "username": "hook", "password": "s3cret"},
        billing_tags={"cost_center": "42", "project": {"id": 7}}, high_priority=True, prewarm=True,
        optimize_costs=False, concurrent_requests_per_worker=5, task_expires_seconds=3600,
        queue_message_timeout_seconds=120, max_batch_size=8, max_batch_wait_ms=20,
        status=ModelEndpoint.Status.READY, **common,
    )
    orphan = ModelEndpoint.objects.create(
        name="orphan", endpoint_type="streaming", created_by=None, status=ModelEndpoint.Status.UPDATE_FAILED,
        status_reason="the bundle failed to load", **common,
    )
    for state in (Replica.State.READY, Replica.State.READY, Replica.State.STARTING, Replica.State.STOPPED):
        Replica.objects.create(owner_kind=Replica.Owner.ENDPOINT, owner_id=rich.id, runtime="local", state=state)
    for status in (ModelEndpoint.Status.UPDATE_IN_PROGRESS, ModelEndpoint.Status.DELETE_IN_PROGRESS):
        ModelEndpoint.objects.create(name=status.lower().replace("_", "-"), endpoint_type="sync", status=status,
                                     created_by=persona.user, **common)
    return [plain, rich, orphan]


def _exact_json(response) -> bytes:
    """The body, checked to be what DRF's JSONRenderer writes of its content (compact, UTF-8,
    U+2028 escaped): the answers' bytes stay the same however they are produced."""
    assert response.status_code == 200, response.content
    assert response.content == JSONRenderer().render(response.json())
    return response.content


def test_list_items_read_exactly_as_each_endpoint_alone(owner, redis_client):
    """The list routes and the retrieve routes answer the same bytes for an endpoint, in both
    dialects, whatever its fields hold."""
    _, rich, _ = _varied_endpoints(owner)
    redis_client.rpush(protocol.Keys(protocol.endpoint_prefix(rich.id)).queue, "task-1", "task-2")
    page = _exact_json(owner.client.get("/v1/model-endpoints"))
    listed = json.loads(page)["model_endpoints"]
    assert len(listed) == 5
    alone = [_exact_json(owner.client.get(f"/v1/model-endpoints/{item['id']}")) for item in listed]
    assert page == b'{"model_endpoints":[' + b",".join(alone) + b"]}"
    legacy_page = _exact_json(owner.client.get("/v1/hosted_inference/endpoints"))
    legacy_listed = json.loads(legacy_page)["endpoints"]
    assert [e["id"] for e in legacy_listed] == [e["id"] for e in listed]
    legacy_alone = [_exact_json(owner.client.get(f"/v1/hosted_inference/endpoints/{item['name']}"))
                    for item in legacy_listed]
    assert legacy_page == b'{"endpoints":[' + b",".join(legacy_alone) + b"]}"
    # The variants really show (else the comparison above proves little).
    by_name = {item["name"]: item for item in listed}
    assert by_name["rich"]["resource_state"] == {
        "cpus": "500m", "gpus": 2, "memory": "2Gi", "gpu_type": "nvidia-ampere-a10", "storage": "4Gi",
        "nodes_per_worker": 1, "optimize_costs": False,
    }
    assert by_name["rich"]["deployment_state"] == {
        "min_workers": 0, "max_workers": 2, "per_worker": 3, "concurrent_requests_per_worker": 5,
        "available_workers": 2, "unavailable_workers": 1,
    }
    assert by_name["rich"]["num_queued_items"] == 2
    assert by_name["rich"]["metadata"] == {"nested": {"list": [1, 2.5, None, "é", 1e16]}}
    assert by_name["rich"]["labels"]["note"] == "a\u2028b" and b'"a\\u2028b"' in page and "é".encode() in page
    assert by_name["rich"]["default_callback_auth"] == {"kind": "basic", "username": "hook", "password": "s3cret"}
    assert (by_name["rich"]["max_batch_size"], by_name["rich"]["max_batch_wait_ms"]) == (8, 20)
    assert by_name["rich"]["billing_tags"] == {"cost_center": "42", "project": {"id": 7}}
    assert by_name["plain"]["deployment_state"]["concurrent_requests_per_worker"] == 3  # per_worker when unset
    assert by_name["plain"]["status_reason"] is None and by_name["plain"]["created_by"] == owner.user.username
    assert by_name["orphan"]["created_by"] == ""
    assert (by_name["orphan"]["status"], by_name["orphan"]["status_reason"]) == (
        "UPDATE_FAILED", "the bundle failed to load"
    )


def test_replicas_count_as_available_when_ready_and_unavailable_when_starting_or_draining(owner):
    response = _create(owner, name="counted", endpoint_type="async", min_workers=0)
    endpoint_id = response.json()["endpoint_creation_task_id"]
    for state in Replica.State:
        Replica.objects.create(owner_kind=Replica.Owner.ENDPOINT, owner_id=endpoint_id, runtime="local", state=state)
    # A batch job's replica is not the endpoint's, whatever its owner id.
    Replica.objects.create(owner_kind=Replica.Owner.BATCH_JOB, owner_id=endpoint_id, runtime="local",
                           state=Replica.State.READY)
    listed = owner.client.get("/v1/model-endpoints").json()["model_endpoints"]
    alone = owner.client.get(f"/v1/model-endpoints/{endpoint_id}").json()
    for answer in (listed[0], alone):
        assert (answer["deployment_state"]["available_workers"], answer["deployment_state"]["unavailable_workers"]) == (
            1, 2
        )


def test_an_indent_asked_for_in_accept_indents_lists_and_endpoints(owner):
    """DRF's `Accept: application/json; indent=N`, kept for the answers of both dialects."""
    _varied_endpoints(owner)
    endpoint_id = ModelEndpoint.objects.get(name="rich").id
    for path in ("/v1/model-endpoints", f"/v1/model-endpoints/{endpoint_id}", "/v1/hosted_inference/endpoints",
                 "/v1/hosted_inference/endpoints/rich"):
        response = owner.client.get(path, HTTP_ACCEPT="application/json; indent=2")
        assert response.status_code == 200, response.content
        assert response.content.startswith(b'{\n  "') and response["Content-Type"] == "application/json", path
        assert response.content == JSONRenderer().render(response.json(), "application/json; indent=2"), path


def test_an_endpoint_listed_before_a_change_reads_changed(owner, redis_client):
    """Answers are remembered once rendered (endpoints.api.views.rendered_answers); whatever
    changes after a read shows in the next one, including changes that leave the endpoint's
    own last_updated_at alone."""
    _, rich, _ = _varied_endpoints(owner)
    for path in ("/v1/model-endpoints", f"/v1/model-endpoints/{rich.id}", "/v1/hosted_inference/endpoints"):
        assert owner.client.get(path).status_code == 200
    ModelEndpoint.objects.filter(pk=rich.id).update(labels={"owner": "research"})
    ModelBundle.objects.filter(pk=rich.bundle_id).update(name="renamed-model")
    get_user_model().objects.filter(pk=owner.user.pk).update(username="olivia-2")
    Replica.objects.create(owner_kind=Replica.Owner.ENDPOINT, owner_id=rich.id, runtime="local",
                           state=Replica.State.DRAINING)
    redis_client.rpush(protocol.Keys(protocol.endpoint_prefix(rich.id)).queue, "task-1")
    listed = {e["name"]: e for e in owner.client.get("/v1/model-endpoints").json()["model_endpoints"]}
    for answer in (listed["rich"], owner.client.get(f"/v1/model-endpoints/{rich.id}").json()):
        assert answer["labels"] == {"owner": "research"}
        assert (answer["bundle_name"], answer["created_by"], answer["num_queued_items"]) == (
            "renamed-model", "olivia-2", 1
        )
        assert answer["deployment_state"]["unavailable_workers"] == 2
    legacy = {e["name"]: e for e in owner.client.get("/v1/hosted_inference/endpoints").json()["endpoints"]}
    assert legacy["rich"]["configs"]["labels"] == {"owner": "research"}
    assert legacy["rich"]["worker_settings"]["unavailable_workers"] == 2

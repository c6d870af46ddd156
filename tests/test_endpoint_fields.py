"""No field of the contract's endpoint bodies is accepted and dropped: every field of
CreateModelEndpointV1Request and UpdateModelEndpointV1Request (read from
docs/reference/launch-openapi.json, so a field the contract gains fails here until handled)
either reads back as sent or is refused with a 422 naming it, and a refused create makes
nothing. Also: restart, the endpoints' OpenAPI routes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.conf import settings

from tests.factories import endpoint_body, make_bundle

pytestmark = pytest.mark.django_db

SPEC = json.loads((Path(settings.BASE_DIR) / "docs/reference/launch-openapi.json").read_text())
CREATE_FIELDS = sorted(SPEC["components"]["schemas"]["CreateModelEndpointV1Request"]["properties"])
UPDATE_FIELDS = sorted(SPEC["components"]["schemas"]["UpdateModelEndpointV1Request"]["properties"])

# field -> (a value to send, how it reads back from GET /v1/model-endpoints/{id})
READS_BACK = {
    "name": ("walked", lambda e: e["name"]),
    "model_bundle_id": (None, lambda e: e["model_bundle_id"]),  # the test's bundle
    "endpoint_type": ("async", lambda e: e["endpoint_type"]),
    "metadata": ({"team": "vision"}, lambda e: e["metadata"]),
    "post_inference_hooks": (["callback"], lambda e: e["post_inference_hooks"]),
    "cpus": ("1500m", lambda e: e["resource_state"]["cpus"]),
    "gpus": (0, lambda e: e["resource_state"]["gpus"]),
    "memory": ("2Gi", lambda e: e["resource_state"]["memory"]),
    "gpu_type": (None, lambda e: e["resource_state"]["gpu_type"]),  # gpus need a GPU host
    "storage": ("4Gi", lambda e: e["resource_state"]["storage"]),
    "nodes_per_worker": (1, lambda e: e["resource_state"]["nodes_per_worker"]),
    "optimize_costs": (False, lambda e: e["resource_state"]["optimize_costs"]),
    "min_workers": (0, lambda e: e["deployment_state"]["min_workers"]),
    "max_workers": (3, lambda e: e["deployment_state"]["max_workers"]),
    "per_worker": (5, lambda e: e["deployment_state"]["per_worker"]),
    "concurrent_requests_per_worker": (7, lambda e: e["deployment_state"]["concurrent_requests_per_worker"]),
    "labels": ({"owner": "ml"}, lambda e: e["labels"]),
    "prewarm": (True, lambda e: e["prewarm"]),
    "high_priority": (True, lambda e: e["high_priority"]),
    "billing_tags": ({"cost_center": "42", "project": {"id": 7}}, lambda e: e["billing_tags"]),
    "default_callback_url": ("http://127.0.0.1:9/hook", lambda e: e["default_callback_url"]),
    "default_callback_auth": (
        {"kind": "basic", "username": "u", "password": "p"}, lambda e: e["default_callback_auth"],
    ),
    "public_inference": (False, lambda e: e["public_inference"]),
    "queue_message_timeout_seconds": (120, lambda e: e["queue_message_timeout_seconds"]),
    "task_expires_seconds": (3600, lambda e: e["task_expires_seconds"]),
    "forwarder_max_concurrency": (None, lambda e: None),  # only null is accepted (see REFUSED)
}
# field -> a value this server cannot honour, refused with a 422 naming the field.
REFUSED = {
    "nodes_per_worker": 2,
    "optimize_costs": True,
    "prewarm": False,
    "public_inference": True,
    "forwarder_max_concurrency": 4,
}


def test_every_contract_field_is_walked():
    assert set(CREATE_FIELDS) | set(UPDATE_FIELDS) <= set(READS_BACK)


@pytest.fixture(autouse=True)
def private_callbacks(settings):
    settings.CALLBACK_ALLOW_PRIVATE_TARGETS = True


def _create(owner, bundle_id, **fields):
    body = endpoint_body(bundle_id, name="walked", endpoint_type="async", min_workers=0)
    body.update(fields)
    return owner.client.post("/v1/model-endpoints", body, format="json")


@pytest.mark.parametrize("field", CREATE_FIELDS)
def test_create_field_reads_back_as_sent(owner, field):
    bundle = make_bundle(owner.team)
    value, read = READS_BACK[field]
    if value is None and field == "model_bundle_id":
        value = bundle.id
    response = _create(owner, bundle.id, **{field: value})
    assert response.status_code == 200, response.content
    endpoint = owner.client.get(f"/v1/model-endpoints/{response.json()['endpoint_creation_task_id']}").json()
    assert read(endpoint) == value


@pytest.mark.parametrize("field", sorted(REFUSED))
def test_create_field_it_cannot_honour_is_422_naming_it_and_creates_nothing(owner, field):
    bundle = make_bundle(owner.team)
    response = _create(owner, bundle.id, **{field: REFUSED[field]})
    assert response.status_code == 422, response.content
    assert response.json()["detail"][0]["loc"][-1] == field
    assert owner.client.get("/v1/model-endpoints").json()["model_endpoints"] == []


@pytest.mark.parametrize("field", UPDATE_FIELDS)
def test_update_field_reads_back_or_is_refused(owner, field):
    bundle = make_bundle(owner.team)
    endpoint_id = _create(owner, bundle.id).json()["endpoint_creation_task_id"]
    value, read = READS_BACK[field]
    if field == "model_bundle_id":
        value = make_bundle(owner.team, name="second").id
    if value is not None:
        response = owner.client.put(f"/v1/model-endpoints/{endpoint_id}", {field: value}, format="json")
        assert response.status_code == 200, response.content
        assert read(owner.client.get(f"/v1/model-endpoints/{endpoint_id}").json()) == value
    if field in REFUSED:
        before = owner.client.get(f"/v1/model-endpoints/{endpoint_id}").json()
        response = owner.client.put(f"/v1/model-endpoints/{endpoint_id}", {field: REFUSED[field]}, format="json")
        assert response.status_code == 422, response.content
        assert response.json()["detail"][0]["loc"][-1] == field
        after = owner.client.get(f"/v1/model-endpoints/{endpoint_id}").json()
        assert after["last_updated_at"] == before["last_updated_at"]


def test_concurrency_defaults_to_per_worker_and_reaches_the_replica(owner):
    from endpoints.deployment import bundle_replica_spec
    from endpoints.models import ModelEndpoint

    bundle = make_bundle(owner.team)
    endpoint_id = _create(owner, bundle.id, per_worker=3).json()["endpoint_creation_task_id"]
    assert owner.client.get(f"/v1/model-endpoints/{endpoint_id}").json()["deployment_state"][
        "concurrent_requests_per_worker"] == 3
    owner.client.put(f"/v1/model-endpoints/{endpoint_id}", {"concurrent_requests_per_worker": 6}, format="json")
    endpoint = ModelEndpoint.objects.get(pk=endpoint_id)
    spec = bundle_replica_spec(endpoint, kind="endpoint", prefix="p:", replica_id="r", labels={})
    assert spec.env["LAUNCH_CONCURRENCY"] == "6"


def test_high_priority_endpoints_are_reconciled_first(owner, monkeypatch):
    """Where endpoints compete for capacity, the tick places high-priority ones first."""
    from workers import controller, tick

    bundle = make_bundle(owner.team)
    low = _create(owner, bundle.id, name="low").json()["endpoint_creation_task_id"]
    high = _create(owner, bundle.id, name="high", high_priority=True).json()["endpoint_creation_task_id"]
    order: list[str] = []
    monkeypatch.setattr(controller, "reconcile", lambda kind, owner_id: order.append(owner_id))
    tick.tick()
    assert order.index(high) < order.index(low)


def test_restart_bumps_the_generation_and_asks_for_a_rollover(owner, outsider):
    from endpoints.models import ModelEndpoint

    bundle = make_bundle(owner.team)
    endpoint_id = _create(owner, bundle.id).json()["endpoint_creation_task_id"]
    before = ModelEndpoint.objects.get(pk=endpoint_id).generation
    response = owner.client.post(f"/v1/model-endpoints/{endpoint_id}/restart")
    assert response.status_code == 200 and response.json() == {"restarted": True}
    assert ModelEndpoint.objects.get(pk=endpoint_id).generation == before + 1
    assert outsider.client.post(f"/v1/model-endpoints/{endpoint_id}/restart").status_code == 404


def test_endpoints_schema_describes_each_endpoint_of_the_team(owner, outsider):
    bundle = make_bundle(owner.team)
    endpoint_id = _create(owner, bundle.id).json()["endpoint_creation_task_id"]
    document = owner.client.get("/v1/model-endpoints-schema.json").json()
    path = f"/v1/async-tasks?model_endpoint_id={endpoint_id}"
    assert list(document["paths"]) == [path]
    request_ref = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert request_ref.rsplit("/", 1)[1] in document["components"]["schemas"]
    assert outsider.client.get("/v1/model-endpoints-schema.json").json()["paths"] == {}
    page = owner.client.get("/v1/model-endpoints-api", HTTP_ACCEPT="text/html")
    assert page.status_code == 200 and b"walked (async)" in page.content

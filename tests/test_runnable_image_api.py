"""Runnable-image bundles on /v2/model-bundles (the contract's three image flavors): stored
and read back field for field, bad fields named, and refused at endpoint create on the local
runtime with the runtime they need. Serving them is in tests/test_runnable_image_docker.py."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def image_flavor(flavor: str = "runnable_image", **fields) -> dict:
    base = {
        "flavor": flavor, "repository": "acme/server", "tag": "1.0", "command": ["python", "serve.py"],
        "protocol": "http", "env": {"GREETING": "hi"}, "predict_route": "/v1/predict",
        "healthcheck_route": "/health", "readiness_initial_delay_seconds": 30,
    }
    if flavor == "streaming_enhanced_runnable_image":
        base["streaming_command"] = ["python", "stream.py"]
    if flavor == "triton_enhanced_runnable_image":
        base.update(triton_model_repository="s3://models/triton", triton_num_cpu=2, triton_commit_tag="abc123")
    return {**base, **fields}


def create(persona, flavor: dict):
    body = {"name": "my-server", "schema_location": "", "metadata": {"team": "vision"}, "flavor": flavor}
    return persona.client.post("/v2/model-bundles", body, format="json")


@pytest.mark.parametrize(
    "flavor", ["runnable_image", "streaming_enhanced_runnable_image", "triton_enhanced_runnable_image"]
)
def test_runnable_image_bundles_are_stored_and_read_back_with_defaults(owner, flavor):
    response = create(owner, image_flavor(flavor))
    assert response.status_code == 200, response.content
    bundle_id = response.json()["model_bundle_id"]
    read = owner.client.get(f"/v2/model-bundles/{bundle_id}").json()
    got = read["flavor"]
    assert got["flavor"] == flavor
    assert (got["repository"], got["tag"], got["command"]) == ("acme/server", "1.0", ["python", "serve.py"])
    assert got["env"] == {"GREETING": "hi"} and got["protocol"] == "http"
    assert (got["predict_route"], got["healthcheck_route"], got["readiness_initial_delay_seconds"]) == (
        "/v1/predict", "/health", 30,
    )
    assert got["extra_routes"] == [] and got["forwarder_type"] == "default" and got["worker_command"] is None
    if flavor == "streaming_enhanced_runnable_image":
        assert got["streaming_command"] == ["python", "stream.py"] and got["streaming_predict_route"] == "/stream"
    if flavor == "triton_enhanced_runnable_image":
        assert got["triton_commit_tag"] == "abc123" and got["triton_readiness_initial_delay_seconds"] == 300
    assert read["metadata"] == {"team": "vision"}
    # In the list and as the name's latest too; another team does not see it.
    listed = owner.client.get("/v2/model-bundles").json()["model_bundles"]
    assert [b["flavor"]["flavor"] for b in listed] == [flavor]
    assert owner.client.get("/v2/model-bundles/latest?model_name=my-server").json()["id"] == bundle_id


def test_another_teams_runnable_image_bundle_is_404(owner, outsider):
    bundle_id = create(owner, image_flavor()).json()["model_bundle_id"]
    assert outsider.client.get(f"/v2/model-bundles/{bundle_id}").status_code == 404


@pytest.mark.parametrize(
    "change, field",
    [
        ({"repository": None}, "flavor.repository"),
        ({"tag": "no spaces allowed"}, "flavor.tag"),
        ({"command": "python serve.py"}, "flavor.command"),
        ({"protocol": "grpc"}, "flavor.protocol"),
        ({"predict_route": "predict"}, "flavor.predict_route"),
        ({"env": {"A": 1}}, "flavor.env"),
        ({"readiness_initial_delay_seconds": -1}, "flavor.readiness_initial_delay_seconds"),
        ({"extra_routes": ["/metrics"]}, "flavor.extra_routes"),
        ({"worker_command": ["celery"]}, "flavor.worker_command"),
        ({"forwarder_type": "passthrough"}, "flavor.forwarder_type"),
        ({"location": "s3://x/y"}, "flavor.location"),
    ],
)
def test_a_bad_runnable_image_field_is_422_naming_it(owner, change, field):
    flavor = {k: v for k, v in {**image_flavor(), **change}.items() if v is not None}
    response = create(owner, flavor)
    assert response.status_code == 422, response.content
    assert [".".join(e["loc"][1:]) for e in response.json()["detail"]] == [field]
    assert not owner.client.get("/v2/model-bundles").json()["model_bundles"]  # nothing half-created


def test_streaming_flavor_needs_its_streaming_command(owner):
    flavor = image_flavor("streaming_enhanced_runnable_image")
    del flavor["streaming_command"]
    response = create(owner, flavor)
    assert response.status_code == 422
    assert [".".join(e["loc"][1:]) for e in response.json()["detail"]] == ["flavor.streaming_command"]


def test_the_local_runtime_refuses_a_runnable_image_endpoint_naming_the_docker_runtime(owner, settings):
    settings.LAUNCH_RUNTIME = "local"
    bundle_id = create(owner, image_flavor()).json()["model_bundle_id"]
    body = {
        "name": "server", "model_bundle_id": bundle_id, "endpoint_type": "sync", "metadata": {}, "cpus": 1,
        "gpus": 0, "memory": "1Gi", "storage": None, "min_workers": 1, "max_workers": 1, "per_worker": 1,
        "labels": {},
    }
    response = owner.client.post("/v1/model-endpoints", body, format="json")
    assert response.status_code == 422, response.content
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "model_bundle_id"]
    assert "docker runtime" in error["msg"] and "LAUNCH_RUNTIME=docker" in error["msg"]
    assert owner.client.get("/v1/model-endpoints").json()["model_endpoints"] == []


def test_a_batch_job_over_a_runnable_image_is_refused(owner):
    bundle_id = create(owner, image_flavor()).json()["model_bundle_id"]
    body = {
        "model_bundle_id": bundle_id, "input_path": "s3://launch-bundles/nothing", "serialization_format": "JSON",
        "resource_requests": {"cpus": 1, "memory": "1Gi", "gpus": 0, "max_workers": 1, "per_worker": 1},
        "labels": {},
    }
    response = owner.client.post("/v1/batch-jobs", body, format="json")
    assert response.status_code == 422, response.content
    assert "runnable image" in response.content.decode()

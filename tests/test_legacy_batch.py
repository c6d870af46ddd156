"""Batch jobs in the scale-launch 0.3.3 dialect: POST batch_job/<bundle_name> with the
resources as top-level fields, GET batch_job/<job_id>. No replicas run here (see
test_client_scale_launch.py for the real client against real replicas)."""

from __future__ import annotations

import pytest

from batchjobs.models import BatchJob
from tests.factories import make_bundle

pytestmark = pytest.mark.django_db

BASE = "/v1/hosted_inference"
# What the client uploads: header id,args; args is JSON text quoted with "'".
CLIENT_CSV = b"id,args\r\n0,'{\"x\": 1}'\r\n1,'{\"x\": 2}'\r\n"


def _upload_input(persona, data: bytes = CLIENT_CSV) -> str:
    target = persona.client.post(f"{BASE}/batch_task_input_upload", {}, format="json").json()
    path = "/" + target["signedUrl"].split("://", 1)[1].split("/", 1)[1]
    put = persona.client.generic("PUT", path, data, content_type="")
    assert put.status_code < 300, put.content
    return f"s3://{target['bucket']}/{target['key']}"


def _create(persona, bundle_name: str = "model", **fields):
    body = {"input_path": _upload_input(persona), "serialization_format": "json", "labels": None, **fields}
    return persona.client.post(f"{BASE}/batch_job/{bundle_name}", body, format="json")


def test_create_by_bundle_name_takes_top_level_resources_and_the_newest_bundle(owner):
    make_bundle(owner.team, name="model")
    newest = make_bundle(owner.team, name="model")
    response = _create(owner, cpus=2, memory="2Gi", max_workers=3, pyspark_partition_size=100)
    assert response.status_code == 200, response.content
    job = BatchJob.objects.get(pk=response.json()["job_id"])
    assert (job.bundle_id, job.cpus, job.memory, job.max_workers) == (newest.id, "2", "2Gi", 3)
    assert job.serialization_format == "JSON"


def test_get_by_id_answers_status_result_and_duration(owner):
    make_bundle(owner.team, name="model")
    job_id = _create(owner).json()["job_id"]
    # The client sends `{}` as the body of its GETs.
    response = owner.client.generic("GET", f"{BASE}/batch_job/{job_id}", "{}", content_type="application/json")
    assert response.status_code == 200
    body = response.json()
    assert body["job_id"] == job_id
    assert body["status"] == "PENDING"
    assert body["result"] is None
    assert body["duration"].startswith("PT")


def test_other_teams_job_and_bundle_are_not_found(owner, outsider):
    make_bundle(owner.team, name="model")
    job_id = _create(owner).json()["job_id"]
    assert outsider.client.get(f"{BASE}/batch_job/{job_id}").status_code == 404
    response = _create(outsider)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "bundle_name"]


def test_bad_resource_is_a_422_naming_the_top_level_field(owner):
    make_bundle(owner.team, name="model")
    response = _create(owner, memory="lots")
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "memory"]
    assert error["msg"].startswith("memory: ")


def test_missing_input_path_is_a_422(owner):
    make_bundle(owner.team, name="model")
    response = owner.client.post(f"{BASE}/batch_job/model", {"serialization_format": "json"}, format="json")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "input_path"]

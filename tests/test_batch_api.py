"""The batch job routes: validation, tenancy, immutability (no replicas run here)."""

from __future__ import annotations

import pytest

from batchjobs.models import BatchJob
from tests.factories import make_bundle

pytestmark = pytest.mark.django_db


def upload(client, bundle_id: str, content: bytes = b'{"args": {"x": 1}}\n', **fields):
    from django.core.files.uploadedfile import SimpleUploadedFile

    data = {"file": SimpleUploadedFile("inputs.jsonl", content), "model_bundle_id": bundle_id, **fields}
    return client.post("/v1/batch-jobs/upload", data, format="multipart")


def create_body(bundle_id: str, input_path: str, **fields) -> dict:
    return {
        "model_bundle_id": bundle_id,
        "input_path": input_path,
        "serialization_format": "JSON",
        "labels": {},
        "resource_requests": {"max_workers": 1},
        **fields,
    }


def error_fields(response) -> list[str]:
    return [".".join(error["loc"][1:]) for error in response.json()["detail"]]


@pytest.fixture
def bundle(owner):
    return make_bundle(owner.team, name="doubler")


@pytest.fixture
def job_id(owner, bundle) -> str:
    from bundles.models import StoredObject

    stored = StoredObject.objects.create(key=f"{owner.team.id}/batch_input/x", team=owner.team, kind="batch_input")
    job = BatchJob.objects.create(
        team=owner.team, bundle=bundle, input=stored, input_path=stored.location, serialization_format="JSON"
    )
    return job.id


def test_upload_creates_a_pending_job_with_the_contract_fields(owner, bundle):
    response = upload(owner.client, bundle.id)
    assert response.status_code == 200, response.content
    job_id = response.json()["job_id"]
    assert job_id.startswith("btch_")
    body = owner.client.get(f"/v1/batch-jobs/{job_id}").json()
    assert body["status"] == "PENDING"
    assert body["result"] is None
    assert body["num_tasks_completed"] == 0
    assert body["duration"].startswith("PT") and body["duration"].endswith("S")
    assert {"num_tasks_pending", "num_tasks_failed", "created_at", "started_at", "finished_at"} <= set(body)


def test_teammate_sees_the_job_and_outsider_gets_404(teammate, outsider, job_id):
    assert teammate.client.get(f"/v1/batch-jobs/{job_id}").status_code == 200
    assert outsider.client.get(f"/v1/batch-jobs/{job_id}").status_code == 404
    assert outsider.client.put(f"/v1/batch-jobs/{job_id}", {"cancel": True}, format="json").status_code == 404
    assert outsider.client.get(f"/v1/batch-jobs/{job_id}/result").status_code == 404


def test_cancel_then_any_change_of_the_finished_job_is_409(owner, job_id):
    response = owner.client.put(f"/v1/batch-jobs/{job_id}", {"cancel": True}, format="json")
    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert owner.client.get(f"/v1/batch-jobs/{job_id}").json()["status"] == "CANCELLED"
    for body in ({"cancel": True}, {"cancel": False}):
        again = owner.client.put(f"/v1/batch-jobs/{job_id}", body, format="json")
        assert again.status_code == 409
        assert "already finished with status CANCELLED" in again.json()["detail"]


def test_succeeded_job_cannot_be_cancelled(owner, job_id):
    BatchJob.objects.filter(pk=job_id).update(status=BatchJob.Status.SUCCESS)
    response = owner.client.put(f"/v1/batch-jobs/{job_id}", {"cancel": True}, format="json")
    assert response.status_code == 409
    assert "cannot be cancelled, restarted or changed" in response.json()["detail"]


def test_create_with_an_unknown_input_path_names_input_path(owner, bundle):
    response = owner.client.post("/v1/batch-jobs", create_body(bundle.id, "s3://nowhere/x.csv"), format="json")
    assert response.status_code == 422
    assert error_fields(response) == ["input_path"]


def test_create_with_another_teams_bundle_names_model_bundle_id(owner, outsider):
    foreign = make_bundle(outsider.team, name="theirs")
    response = upload(owner.client, foreign.id)
    assert response.status_code == 422
    assert error_fields(response) == ["model_bundle_id"]


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"serialization_format": "XML"}, "serialization_format"),
        ({"resource_requests": '{"max_workers": 0}'}, "resource_requests.max_workers"),
        ({"resource_requests": '{"cpus": "lots"}'}, "resource_requests.cpus"),
        ({"resource_requests": '{"memory": "12 parsecs"}'}, "resource_requests.memory"),
        ({"resource_requests": '{"gpus": 1, "gpu_type": "nvidia-tesla-t4"}'}, "resource_requests.gpus"),
        ({"resource_requests": '{"wheels": 4}'}, "resource_requests.wheels"),
    ],
)
def test_bad_create_fields_are_422_naming_the_field(owner, bundle, fields, field):
    response = upload(owner.client, bundle.id, **fields)
    assert response.status_code == 422, response.content
    assert error_fields(response) == [field]
    assert not BatchJob.objects.exists()


@pytest.mark.parametrize(
    "content, field, message",
    [
        (b"name,value\n1,2\n", "input_path", "line 1: the CSV header must be id,url or id,args"),
        (b'{"x": 1}\n', "input_path", "line 1: needs exactly one of"),
        (b"", "file", "empty"),
    ],
)
def test_an_input_file_bad_from_its_first_line_is_422(owner, bundle, content, field, message):
    response = upload(owner.client, bundle.id, content=content)
    assert response.status_code == 422
    assert error_fields(response) == [field]
    assert message in response.json()["detail"][0]["msg"]


def test_concurrent_batch_job_quota_is_enforced(owner, bundle, job_id):
    from accounts.models import Quota

    Quota.objects.create(team=owner.team, max_concurrent_batch_jobs=1)
    response = upload(owner.client, bundle.id)
    assert response.status_code == 409
    assert "at most 1 batch jobs at once" in response.json()["detail"]


def test_unknown_job_is_404(owner):
    assert owner.client.get("/v1/batch-jobs/btch_nope").status_code == 404

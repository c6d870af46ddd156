"""Team quotas (accounts.quotas): endpoints and batch jobs draw on the same workers and GPUs,
whichever comes first, through the real API."""

from __future__ import annotations

import json

import pytest

from accounts.models import Quota
from batchjobs.models import BatchJob
from endpoints.models import ModelEndpoint
from tests.factories import endpoint_body, make_bundle

pytestmark = pytest.mark.django_db

GPU = {"gpus": 1, "gpu_type": "nvidia-tesla-t4"}


@pytest.fixture
def bundle(owner):
    return make_bundle(owner.team, name="doubler")


@pytest.fixture
def gpu_hosts(settings):
    # GPU endpoints and jobs are refused on the local runtime before any quota is looked at;
    # nothing here starts a replica (on-commit work does not run in these tests).
    settings.LAUNCH_RUNTIME = "docker"


def create_endpoint(persona, bundle, name: str = "ep", **fields):
    body = endpoint_body(bundle.id, name=name, min_workers=1, **fields)
    return persona.client.post("/v1/model-endpoints", body, format="json")


def create_batch_job(persona, bundle, **resource_requests):
    from django.core.files.uploadedfile import SimpleUploadedFile

    data = {
        "file": SimpleUploadedFile("inputs.jsonl", b'{"args": {"x": 1}}\n'),
        "model_bundle_id": bundle.id,
        "resource_requests": json.dumps(resource_requests),
    }
    return persona.client.post("/v1/batch-jobs/upload", data, format="multipart")


def refusal(response, field: str) -> str:
    assert response.status_code == 422, response.content
    [error] = response.json()["detail"]
    assert ".".join(error["loc"][1:]) == field
    assert error["msg"].startswith(f"{field}: quota: ")
    return error["msg"]


def set_quota(persona, **limits) -> None:
    Quota.objects.update_or_create(team=persona.team, defaults=limits)


def test_batch_job_workers_count_against_a_new_endpoint(owner, bundle):
    set_quota(owner, max_workers=3)
    assert create_batch_job(owner, bundle, max_workers=2).status_code == 200
    message = refusal(create_endpoint(owner, bundle, max_workers=2), "max_workers")
    assert "3 workers in all; 2 are taken (0 by endpoints, 2 by pending or running batch jobs)" in message
    assert not ModelEndpoint.objects.exists()


def test_endpoint_workers_count_against_a_new_batch_job(owner, bundle):
    set_quota(owner, max_workers=3)
    assert create_endpoint(owner, bundle, max_workers=2).status_code == 200
    message = refusal(create_batch_job(owner, bundle, max_workers=2), "resource_requests.max_workers")
    assert "3 workers in all; 2 are taken (2 by endpoints, 0 by pending or running batch jobs)" in message
    assert not BatchJob.objects.exists()


def test_what_fits_is_accepted_up_to_the_quota(owner, bundle):
    set_quota(owner, max_workers=3)
    assert create_batch_job(owner, bundle, max_workers=1).status_code == 200
    assert create_endpoint(owner, bundle, max_workers=2).status_code == 200
    refusal(create_batch_job(owner, bundle, max_workers=1), "resource_requests.max_workers")


def test_a_finished_batch_job_frees_its_workers(owner, bundle):
    set_quota(owner, max_workers=3)
    job_id = create_batch_job(owner, bundle, max_workers=2).json()["job_id"]
    refusal(create_endpoint(owner, bundle, max_workers=2), "max_workers")
    assert owner.client.put(f"/v1/batch-jobs/{job_id}", {"cancel": True}, format="json").status_code == 200
    assert create_endpoint(owner, bundle, max_workers=2).status_code == 200


def test_a_succeeded_batch_job_frees_its_workers(owner, bundle):
    set_quota(owner, max_workers=3)
    job_id = create_batch_job(owner, bundle, max_workers=2).json()["job_id"]
    BatchJob.objects.filter(pk=job_id).update(status=BatchJob.Status.SUCCESS)
    assert create_batch_job(owner, bundle, max_workers=3).status_code == 200


def test_an_endpoint_being_deleted_frees_its_workers(owner, bundle):
    set_quota(owner, max_workers=3, max_endpoints=1)
    endpoint_id = create_endpoint(owner, bundle, name="old", max_workers=3).json()["endpoint_creation_task_id"]
    assert create_endpoint(owner, bundle, name="new", max_workers=3).status_code == 409
    assert owner.client.delete(f"/v1/model-endpoints/{endpoint_id}").status_code == 200
    assert create_endpoint(owner, bundle, name="new", max_workers=3).status_code == 200


def test_an_edit_past_the_worker_quota_is_refused_and_changes_nothing(owner, bundle):
    set_quota(owner, max_workers=4)
    create_batch_job(owner, bundle, max_workers=1)
    endpoint_id = create_endpoint(owner, bundle, max_workers=2).json()["endpoint_creation_task_id"]
    response = owner.client.put(
        f"/v1/model-endpoints/{endpoint_id}", {"max_workers": 4, "memory": "2Gi"}, format="json"
    )
    assert "4 workers in all; 1 are taken (0 by endpoints, 1 by pending or running batch jobs)" in refusal(
        response, "max_workers"
    )
    endpoint = ModelEndpoint.objects.get(pk=endpoint_id)
    assert (endpoint.max_workers, endpoint.memory, endpoint.generation) == (2, "1Gi", 1)
    # Its own workers are not counted twice: up to what is left is fine.
    ok = owner.client.put(f"/v1/model-endpoints/{endpoint_id}", {"max_workers": 3}, format="json")
    assert ok.status_code == 200, ok.content


def test_an_edit_that_takes_no_more_passes_a_quota_already_exceeded(owner, bundle):
    endpoint_id = create_endpoint(owner, bundle, max_workers=3).json()["endpoint_creation_task_id"]
    create_endpoint(owner, bundle, name="second", max_workers=1)
    set_quota(owner, max_workers=2, max_endpoints=1)  # lowered by an admin below what is held
    response = owner.client.put(f"/v1/model-endpoints/{endpoint_id}", {"max_workers": 2}, format="json")
    assert response.status_code == 200, response.content
    response = owner.client.put(f"/v1/model-endpoints/{endpoint_id}", {"max_workers": 3}, format="json")
    refusal(response, "max_workers")


def test_the_second_of_two_creates_for_the_last_workers_is_refused(owner, bundle):
    # Both go through quota_check, which locks the team row (select_for_update) and counts
    # what is saved: the second create sees the first. (SQLite runs them one after another.)
    set_quota(owner, max_workers=2, max_endpoints=5)
    assert create_endpoint(owner, bundle, name="first", max_workers=2).status_code == 200
    refusal(create_endpoint(owner, bundle, name="second", max_workers=1), "max_workers")
    assert list(ModelEndpoint.objects.values_list("name", flat=True)) == ["first"]


def test_endpoint_count_and_concurrent_batch_jobs_are_409(owner, bundle):
    set_quota(owner, max_endpoints=1, max_concurrent_batch_jobs=1)
    assert create_endpoint(owner, bundle, name="a").status_code == 200
    response = create_endpoint(owner, bundle, name="b")
    assert response.status_code == 409
    assert response.json()["detail"] == "quota: your team may have at most 1 endpoints"
    assert create_batch_job(owner, bundle).status_code == 200
    response = create_batch_job(owner, bundle)
    assert response.status_code == 409
    assert "at most 1 batch jobs at once" in response.json()["detail"]


def test_gpu_quota_counts_endpoints_and_batch_jobs(owner, bundle, gpu_hosts):
    set_quota(owner, max_gpus=4)
    assert create_endpoint(owner, bundle, max_workers=2, **GPU).status_code == 200  # 2 GPUs
    message = refusal(create_batch_job(owner, bundle, max_workers=3, **GPU), "resource_requests.gpus")
    assert "4 GPUs in all; 2 are taken (2 by endpoints, 0 by pending or running batch jobs)" in message
    assert "asks for 3" in message
    assert create_batch_job(owner, bundle, max_workers=2, **GPU).status_code == 200  # 4 GPUs
    message = refusal(create_endpoint(owner, bundle, name="more", max_workers=1, **GPU), "gpus")
    assert "(2 by endpoints, 2 by pending or running batch jobs)" in message
    # Workers without GPUs are not GPUs.
    assert create_endpoint(owner, bundle, name="cpu", max_workers=5).status_code == 200


def test_gpu_quota_refuses_an_edit_that_adds_gpus(owner, bundle, gpu_hosts):
    set_quota(owner, max_gpus=2)
    endpoint_id = create_endpoint(owner, bundle, max_workers=3).json()["endpoint_creation_task_id"]
    response = owner.client.put(f"/v1/model-endpoints/{endpoint_id}", GPU, format="json")
    assert "asks for 3" in refusal(response, "gpus")
    assert ModelEndpoint.objects.get(pk=endpoint_id).gpus == 0
    response = owner.client.put(f"/v1/model-endpoints/{endpoint_id}", {**GPU, "max_workers": 2}, format="json")
    assert response.status_code == 200, response.content


def test_another_teams_endpoints_and_jobs_do_not_count(owner, outsider, bundle):
    set_quota(owner, max_workers=2)
    theirs = make_bundle(outsider.team)
    assert create_endpoint(outsider, theirs, max_workers=5).status_code == 200
    assert create_batch_job(outsider, theirs, max_workers=5).status_code == 200
    assert create_endpoint(owner, bundle, max_workers=2).status_code == 200

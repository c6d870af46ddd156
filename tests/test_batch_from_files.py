"""A team's file (/v1/files) as a batch job's input: `input_path` names it by id or by its
/v1/files/{id} path or URL. Another team's file is unknown (422 naming input_path, nothing
created); a file a running job reads cannot be deleted under it."""

from __future__ import annotations

import json

import pytest
import requests

from batchjobs.models import BatchJob
from bundles.models import File
from tests.stack import api_for
from tests.test_batch_e2e import doubler_bundle, download, wait_job, wait_no_replicas

pytestmark = pytest.mark.django_db(transaction=True)

LINES = b"".join(json.dumps({"args": {"x": i, "label": f"line {i}"}}).encode() + b"\n" for i in range(12))


def upload_file(api, content: bytes, name: str = "inputs.jsonl") -> str:
    response = api.post("/v1/files", files={"file": (name, content)})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def job_body(bundle_id: str, input_path: str, **resources) -> dict:
    return {"model_bundle_id": bundle_id, "input_path": input_path, "serialization_format": "JSON", "labels": {},
            "resource_requests": {"max_workers": 1, **resources}}


def field_error(response: requests.Response, field: str) -> str:
    assert response.status_code == 422, response.text
    [message] = [e["msg"] for e in response.json()["detail"] if e["loc"][-1] == field]
    return message


def test_a_file_round_trips_and_feeds_a_batch_job_to_success(live_stack, owner):
    api = api_for(live_stack, owner)
    file_id = upload_file(api, LINES)
    assert api.get(f"/v1/files/{file_id}/content").json()["content"] == LINES.decode()
    bundle_id = api.upload_bundle(doubler_bundle(sleep=0.3), "doubler")

    job_id = api.post("/v1/batch-jobs", json=job_body(bundle_id, file_id)).json()["job_id"]
    # While the job reads it, the file cannot be deleted from under it.
    refused = api.delete(f"/v1/files/{file_id}")
    assert refused.status_code == 409, refused.text
    assert f"is the input of batch job {job_id}" in refused.text

    job = wait_job(api, job_id)
    assert job["status"] == "SUCCESS", job
    assert (job["num_tasks_completed"], job["num_tasks_failed"]) == (12, 0)
    results = json.loads(download(api, job))
    assert results == [{"id": i + 1, "result": {"double": 2 * i, "label": f"line {i}"}} for i in range(12)]
    wait_no_replicas(job_id)

    # Named by its URL this time; and once no job runs over it, the file can go (the
    # finished jobs keep their metadata and results).
    url_job = api.post("/v1/batch-jobs", json=job_body(bundle_id, f"{api.base}/v1/files/{file_id}")).json()["job_id"]
    assert wait_job(api, url_job)["status"] == "SUCCESS"
    assert api.delete(f"/v1/files/{file_id}").status_code == 200
    assert api.get(f"/v1/files/{file_id}").status_code == 404
    for finished in (job_id, url_job):
        assert api.get(f"/v1/batch-jobs/{finished}").json()["status"] == "SUCCESS"
    assert json.loads(download(api, api.get(f"/v1/batch-jobs/{job_id}").json()))[0]["result"]["double"] == 0
    # A deleted file names nothing any more.
    message = field_error(api.post("/v1/batch-jobs", json=job_body(bundle_id, file_id)), "input_path")
    assert f"your team has no file {file_id!r}" in message


def test_another_teams_file_is_unknown_and_nothing_is_created(live_stack, owner, outsider):
    api, other = api_for(live_stack, owner), api_for(live_stack, outsider)
    theirs = upload_file(other, LINES)
    bundle_id = api.upload_bundle(doubler_bundle(), "doubler")
    for reference in (theirs, f"/v1/files/{theirs}", f"{api.base}/v1/files/{theirs}/content"):
        message = field_error(api.post("/v1/batch-jobs", json=job_body(bundle_id, reference)), "input_path")
        assert f"your team has no file {theirs!r}" in message
    assert not BatchJob.objects.filter(team=owner.team).exists()
    assert File.objects.get(pk=theirs).team == outsider.team


def test_a_file_that_is_not_batch_input_is_422_naming_input_path(live_stack, owner):
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(doubler_bundle(), "doubler")
    file_id = upload_file(api, b"just some notes\n", name="notes.txt")
    response = api.post("/v1/batch-jobs", json=job_body(bundle_id, file_id))
    assert field_error(response, "input_path")
    assert not BatchJob.objects.exists()

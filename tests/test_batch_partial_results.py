"""A batch job that ends early keeps what it finished (batchjobs.runner.batch_job_keep_partial_results),
sealed by the tick when no loop is left to do it."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from batchjobs import runner
from batchjobs.models import BatchJob
from batchjobs.results import ResultsFile
from bundles.models import StoredObject
from tests.factories import make_bundle

pytestmark = pytest.mark.django_db


@pytest.fixture
def ended_job(owner, settings, tmp_path):
    """A CANCELLED job whose loop had collected two items (one failed) and then died, with a
    third item appended to the file but never counted."""
    settings.LAUNCH_HOME = str(tmp_path)
    stored = StoredObject.objects.create(key=f"{owner.team.id}/batch_input/x", team=owner.team, kind="batch_input")
    job = BatchJob.objects.create(
        team=owner.team, bundle=make_bundle(owner.team), input=stored, input_path=stored.location,
        serialization_format="JSON", status=BatchJob.Status.CANCELLED, chunk_size=1,
        failed_items=[{"id": "1", "error": "ValueError: cannot handle 1"}],
    )  # fmt: skip
    results = ResultsFile(runner.results_path(job.id), "JSON")
    length = results.start()
    counted = [{"id": "0", "result": 0}, {"id": "1", "error": "ValueError: cannot handle 1"}]
    length = results.append(results.encode(counted, first=True), expected_length=length)
    results.append(results.encode([{"id": "2", "result": 4}], first=False), expected_length=length)
    BatchJob.objects.filter(pk=job.pk).update(results_bytes=length, items_completed=1, items_failed=1)
    job.refresh_from_db()
    return job


def test_tick_saves_the_counted_items_of_a_job_whose_loop_is_gone(ended_job, owner, redis_client):
    runner.batch_tick()
    ended_job.refresh_from_db()
    assert ended_job.result is not None
    assert not runner.results_path(ended_job.id).exists()

    client = Client()
    client.force_login(owner.user)
    download = client.get(f"/v1/batch-jobs/{ended_job.id}/result")
    assert download.status_code == 200
    assert json.loads(b"".join(download.streaming_content)) == [
        {"id": "0", "result": 0},
        {"id": "1", "error": "ValueError: cannot handle 1"},
    ]
    body = client.get(f"/v1/batch-jobs/{ended_job.id}").json()
    assert body["status"] == "CANCELLED" and body["result"].endswith(f"/v1/batch-jobs/{ended_job.id}/result")
    assert body["failed_items"] == [{"id": "1", "error": "ValueError: cannot handle 1"}]

    page = client.get(f"/batch-jobs/{ended_job.id}/").content.decode()
    assert "Download partial results" in page
    assert "the 2 items finished before the job ended" in page
    assert 'class="failed-item"' in page and "ValueError: cannot handle 1" in page


def test_tick_leaves_the_file_alone_while_a_loop_holds_the_lease(ended_job, redis_client):
    lease = redis_client.lock(runner._lease_key(ended_job.id), timeout=10, blocking=False)
    assert lease.acquire()
    try:
        runner.batch_tick()
    finally:
        lease.release()
    ended_job.refresh_from_db()
    assert ended_job.result is None
    assert runner.results_path(ended_job.id).exists()


def test_a_successful_job_is_never_given_partial_results(ended_job):
    BatchJob.objects.filter(pk=ended_job.pk).update(status=BatchJob.Status.SUCCESS)
    runner.batch_job_keep_partial_results(ended_job.id)
    ended_job.refresh_from_db()
    assert ended_job.result is None


def test_a_job_that_finished_no_item_has_no_results(ended_job):
    BatchJob.objects.filter(pk=ended_job.pk).update(items_completed=0, items_failed=0)
    runner.batch_job_keep_partial_results(ended_job.id)
    ended_job.refresh_from_db()
    assert ended_job.result is None
    assert not runner.results_path(ended_job.id).exists()

"""Batch job pages of the dashboard, through Django's test client."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from batchjobs.models import BatchJob
from tests.factories import make_bundle
from tests.test_dashboard import HTMX, field_errors

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(owner) -> Client:
    client = Client()
    client.force_login(owner.user)
    return client


@pytest.fixture
def bundle(owner):
    return make_bundle(owner.team, name="doubler")


def job_form(bundle_row, content: bytes, **fields) -> dict:
    return {
        "bundle": bundle_row.id,
        "input_file": SimpleUploadedFile("inputs.json", content, content_type="application/json"),
        "max_workers": 1,
        "per_worker": 1,
        "cpus": "1",
        "memory": "1Gi",
        **fields,
    }


def create_job(browser, bundle_row) -> BatchJob:
    inputs = json.dumps([{"args": {"x": 1}}, {"args": {"x": 2}}, {"id": "c", "args": {"x": 3}}]).encode()
    response = browser.post("/batch-jobs/new/", job_form(bundle_row, inputs))
    assert response.status_code == 302, response.content.decode()[-2000:]
    return BatchJob.objects.get()


def test_create_form_starts_a_job_and_shows_its_progress(browser, bundle):
    job = create_job(browser, bundle)
    assert job.status == BatchJob.Status.PENDING and job.bundle == bundle
    page = browser.get(f"/batch-jobs/{job.id}/")
    assert page.status_code == 200
    assert b"PENDING" in page.content and b"every 2s" in page.content
    assert job.id in browser.get("/batch-jobs/").content.decode()


def test_progress_panel_polls_while_running_and_stops_when_done(browser, bundle):
    job = create_job(browser, bundle)
    BatchJob.objects.filter(pk=job.pk).update(
        status=BatchJob.Status.RUNNING, total_items=4, items_completed=2, items_failed=1
    )
    url = f"/batch-jobs/{job.id}/progress/"
    running = browser.get(url, **HTMX)
    assert running.status_code == 200
    html = running.content.decode()
    assert "<html" not in html
    assert 'class="completed" style="width: 50.0%"' in html and 'class="failed" style="width: 25.0%"' in html
    assert '<b class="completed-count">2</b>' in html and "<b>1</b> pending" in html

    BatchJob.objects.filter(pk=job.pk).update(status=BatchJob.Status.SUCCESS, items_completed=3)
    done = browser.get(url, **HTMX)
    assert done.status_code == 286
    assert b"SUCCESS" in done.content and b"hx-trigger" not in done.content


def test_bad_input_file_is_a_field_error_not_a_500(browser, bundle):
    response = browser.post("/batch-jobs/new/", job_form(bundle, b"\x00\x01 not an input file"))
    assert response.status_code == 422
    assert field_errors(response, "input_file")
    assert not BatchJob.objects.exists()


def test_bad_resources_are_shown_next_to_their_field(browser, bundle):
    response = browser.post("/batch-jobs/new/", job_form(bundle, b'[{"args": {"x": 1}}]', memory="lots", max_workers=0))
    assert response.status_code == 422
    assert "is not a size" in field_errors(response, "memory")
    assert "greater than or equal to 1" in field_errors(response, "max_workers")


def test_cancel_stops_a_running_job(browser, bundle):
    job = create_job(browser, bundle)
    response = browser.post(f"/batch-jobs/{job.id}/cancel/", follow=True)
    job.refresh_from_db()
    assert job.status == BatchJob.Status.CANCELLED
    assert b"CANCELLED" in response.content
    again = browser.post(f"/batch-jobs/{job.id}/cancel/", follow=True)
    assert b"cannot be cancelled" in again.content


def test_other_teams_batch_job_is_404(browser, outsider):
    client = Client()
    client.force_login(outsider.user)
    theirs = make_bundle(outsider.team)
    job = create_job(client, theirs)
    for path in (f"/batch-jobs/{job.id}/", f"/batch-jobs/{job.id}/progress/"):
        assert browser.get(path).status_code == 404
    assert browser.post(f"/batch-jobs/{job.id}/cancel/").status_code == 404
    job.refresh_from_db()
    assert job.status == BatchJob.Status.PENDING


def test_a_finished_job_links_its_results_and_the_link_downloads_for_the_session_user(browser, bundle, tmp_path):
    from batchjobs import storage

    job = create_job(browser, bundle)
    results = tmp_path / "results.json"
    results.write_bytes(b'[{"result": 2}, {"result": 4}, {"result": 6}]')
    stored = storage.save_results(job, results, results.stat().st_size)
    BatchJob.objects.filter(pk=job.pk).update(
        status=BatchJob.Status.SUCCESS, total_items=3, items_completed=3, result=stored
    )

    html = browser.get(f"/batch-jobs/{job.id}/").content.decode()
    assert f'id="download-results" href="/v1/batch-jobs/{job.id}/result"' in html
    assert "hx-trigger" not in html
    download = browser.get(f"/v1/batch-jobs/{job.id}/result")
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == results.read_bytes()


def test_a_job_with_failed_items_does_not_look_like_a_clean_success(browser, bundle):
    job = create_job(browser, bundle)
    BatchJob.objects.filter(pk=job.pk).update(
        status=BatchJob.Status.SUCCESS, total_items=3, items_completed=2, items_failed=1,
        status_reason="1 of 3 items failed; each failed item has its error in the results",
        failed_items=[{"id": "c", "error": "Traceback (most recent call last):\nValueError: cannot handle 3"}],
    )  # fmt: skip
    page = browser.get(f"/batch-jobs/{job.id}/").content.decode()
    assert '<span class="badge warn"' in page and "SUCCESS · 1 failed" in page
    assert '<span class="badge ok">SUCCESS</span>' not in page
    assert "1 of 3 items failed" in page
    assert 'class="failed-item"><td><code>c</code>' in page and "ValueError: cannot handle 3" in page
    listing = browser.get("/batch-jobs/").content.decode()
    assert "SUCCESS · 1 failed" in listing

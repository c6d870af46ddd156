"""Every dashboard list searches, filters and pages on the server, by query parameters that
plain links and htmx share (launch_site.dashboard.common.list_page)."""

from __future__ import annotations

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from accounts.services import api_key_create, api_key_revoke
from batchjobs.models import BatchJob
from endpoints.models import ModelEndpoint
from endpoints.services import endpoint_create
from launch_site.dashboard import common
from tests.factories import make_bundle

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture(autouse=True)
def two_per_page(monkeypatch):
    from launch_site.dashboard import endpoints

    monkeypatch.setattr(common, "LIST_PAGE_SIZE", 2)
    monkeypatch.setattr(endpoints, "REQUESTS_PAGE_SIZE", 2)


@pytest.fixture
def browser(owner) -> Client:
    client = Client()
    client.force_login(owner.user)
    return client


def rows(html: str, table_id: str) -> str:
    return re.search(rf'<table id="{table_id}">.*?</table>', html, re.S).group(0)


def pager(html: str) -> str:
    match = re.search(r'<nav class="pager".*?</nav>', html, re.S)
    return match.group(0) if match else ""


def test_endpoints_search_filter_and_pages(browser, owner):
    bundle = make_bundle(owner.team)
    for name in ("alpha-one", "alpha-two", "beta"):
        endpoint_create(
            team=owner.team, user=owner.user, name=name, model_bundle_id=bundle.id, endpoint_type="async",
            min_workers=0, max_workers=1, per_worker=1, cpus=1, memory="1Gi",
        )  # fmt: skip
    ModelEndpoint.objects.filter(name="alpha-one").update(status="READY")

    first = browser.get("/endpoints/").content.decode()
    assert "Page 1 of 2 · 3 in all" in pager(first) and 'rel="next" href="?page=2"' in pager(first)
    assert [n for n in ("alpha-one", "alpha-two", "beta") if n in rows(first, "endpoints")] == ["alpha-two", "beta"]
    second = browser.get("/endpoints/?page=2").content.decode()
    assert "alpha-one" in rows(second, "endpoints") and "beta" not in rows(second, "endpoints")
    # A page past the end is the last page, not an error.
    assert "alpha-one" in rows(browser.get("/endpoints/?page=99").content.decode(), "endpoints")

    searched = browser.get("/endpoints/", {"q": "ALPHA"}, **HTMX).content.decode()
    assert "<html" not in searched and 'id="list-results"' in searched
    assert "beta" not in rows(searched, "endpoints") and "alpha-one" in searched and "alpha-two" in searched
    ready = browser.get("/endpoints/", {"q": "alpha", "status": "READY"}).content.decode()
    assert "alpha-one" in rows(ready, "endpoints") and "alpha-two" not in rows(ready, "endpoints")
    # The live rows keep polling the same search.
    assert 'hx-get="/endpoints/?rows=1&amp;page=1&amp;q=alpha&amp;status=READY"' in ready
    nothing = browser.get("/endpoints/", {"q": "gamma"}).content.decode()
    assert "No endpoint named like “gamma”" in nothing


def test_bundles_search_and_pages(browser, owner):
    for name in ("resnet", "bert", "bert-large"):
        make_bundle(owner.team, name=name)
    page = browser.get("/bundles/").content.decode()
    assert "Page 1 of 2 · 3 in all" in pager(page)
    searched = browser.get("/bundles/", {"q": "bert"}).content.decode()
    assert "resnet" not in rows(searched, "bundles") and "bert-large" in searched
    assert pager(searched) == ""  # two rows: one page


def test_batch_jobs_search_filter_and_pages(browser, owner):
    for name in ("doubler", "tripler"):
        bundle = make_bundle(owner.team, name=name)
        for _ in range(2):
            upload = SimpleUploadedFile("in.json", b'[{"args": {"x": 1}}]')
            form = {"bundle": bundle.id, "input_file": upload, "max_workers": 1, "per_worker": 1, "cpus": "1",
                    "memory": "1Gi"}  # fmt: skip
            assert browser.post("/batch-jobs/new/", form).status_code == 302
    cancelled = BatchJob.objects.filter(bundle_name="tripler").first()
    BatchJob.objects.filter(pk=cancelled.pk).update(status="CANCELLED")

    page = browser.get("/batch-jobs/").content.decode()
    assert "Page 1 of 2 · 4 in all" in pager(page)
    by_bundle = browser.get("/batch-jobs/", {"q": "tripl"}).content.decode()
    assert rows(by_bundle, "batch-jobs").count("<tr>") == 1 + 2 and "doubler" not in rows(by_bundle, "batch-jobs")
    by_status = browser.get("/batch-jobs/", {"status": "CANCELLED"}).content.decode()
    assert cancelled.id in by_status and rows(by_status, "batch-jobs").count("<tr>") == 1 + 1
    by_id = browser.get("/batch-jobs/", {"q": cancelled.id[-6:]}).content.decode()
    assert cancelled.id in rows(by_id, "batch-jobs")
    assert "No batch job matches" in browser.get("/batch-jobs/", {"q": "nope"}).content.decode()


def test_api_keys_search_filter_and_pages(browser, owner):
    for name in ("ci", "laptop", "notebook"):
        key, _ = api_key_create(user=owner.user, team=owner.team, name=name)
    api_key_revoke(api_key=key)  # notebook
    page = browser.get("/api-keys/").content.decode()
    assert "in all" in pager(page)  # the persona's own key, plus three
    laptop = browser.get("/api-keys/", {"q": "lapt"}).content.decode()
    assert "laptop" in rows(laptop, "api-keys") and "notebook" not in rows(laptop, "api-keys")
    revoked = browser.get("/api-keys/", {"status": "revoked"}).content.decode()
    assert "notebook" in rows(revoked, "api-keys") and "laptop" not in rows(revoked, "api-keys")


def test_request_history_search_filter_and_pages(browser, owner):
    from endpoints.gateway import task_submit

    bundle = make_bundle(owner.team)
    endpoint = endpoint_create(
        team=owner.team, user=owner.user, name="doubler", model_bundle_id=bundle.id, endpoint_type="async",
        min_workers=0, max_workers=1, per_worker=1, cpus=1, memory="1Gi",
    )  # fmt: skip
    task_ids = [task_submit(endpoint=endpoint, payload={"args": {"x": i}, "return_pickled": False}) for i in range(3)]
    url = f"/endpoints/{endpoint.id}/requests/"
    first = browser.get(url, **HTMX).content.decode()
    assert "Page 1 of 2 · 3 in all" in pager(first)
    assert f'hx-get="{url}?page=1"' in first
    one = browser.get(url, {"q": task_ids[0][-8:]}, **HTMX).content.decode()
    assert task_ids[0][-10:] in one and task_ids[1][-10:] not in one
    assert f'hx-get="{url}?page=1&amp;q={task_ids[0][-8:]}"' in one  # the poll keeps the search
    failed = browser.get(url, {"status": "FAILURE"}, **HTMX).content.decode()
    assert "No FAILURE requests among the recent ones" in failed

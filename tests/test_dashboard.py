"""The dashboard as a logged-in user sees it, through Django's test client."""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client

from endpoints.models import ModelEndpoint
from endpoints.services import endpoint_create
from launch_site.redis_client import get_redis
from tests.factories import make_bundle
from workers import protocol

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def browser(owner) -> Client:
    client = Client()
    client.force_login(owner.user)
    return client


@pytest.fixture
def bundle(owner):
    return make_bundle(owner.team, name="doubler")


@pytest.fixture
def endpoint(owner, bundle) -> ModelEndpoint:
    return endpoint_create(
        team=owner.team, user=owner.user, name="doubler", model_bundle_id=bundle.id, endpoint_type="sync",
        min_workers=1, max_workers=2, per_worker=1, cpus=1, memory="1Gi",
    )  # fmt: skip


def deploy_form(bundle_row, **fields) -> dict:
    return {
        "name": "my-endpoint", "bundle": bundle_row.id, "endpoint_type": "sync", "min_workers": 1, "max_workers": 1,
        "per_worker": 1, "cpus": "1", "memory": "1Gi", "gpus": 0, "gpu_type": "", **fields,
    }  # fmt: skip


def field_errors(response, field: str) -> str:
    """The text of the error list under one form field ('' if none)."""
    html = response.content.decode()
    match = re.search(rf'id="field-{field}".*?</div>', html, re.S)
    assert match, f"no field {field} on the page"
    errors = re.search(r'<ul class="errorlist">(.*?)</ul>', match.group(0), re.S)
    return re.sub(r"<[^>]+>", "", errors.group(1)) if errors else ""


@pytest.mark.parametrize(
    "path", ["/", "/bundles/", "/bundles/new/", "/endpoints/", "/endpoints/new/", "/batch-jobs/", "/api-keys/"]
)
def test_pages_send_anonymous_visitors_to_login(client, path):
    response = client.get(path, follow=True)
    assert response.redirect_chain[-1][0].startswith("/accounts/login/")
    assert b"Log in to Launch" in response.content


def test_login_with_password_lands_on_endpoints(client, owner):
    owner.user.set_password("correct horse")
    owner.user.save()
    wrong = client.post("/accounts/login/", {"username": "olivia", "password": "nope"})
    assert wrong.status_code == 200
    assert b"Please enter a correct username and password" in wrong.content
    response = client.post("/accounts/login/", {"username": "olivia", "password": "correct horse"}, follow=True)
    assert response.redirect_chain[-1][0] == "/endpoints/"
    assert b"No endpoints yet" in response.content

    logged_out = client.post("/accounts/logout/", follow=True)
    assert b"Log in to Launch" in logged_out.content
    assert client.get("/endpoints/").status_code == 302


def test_every_page_renders_for_the_owner(browser, endpoint, bundle):
    pages = {
        "/bundles/": "doubler",
        "/bundles/new/": "Upload and create",
        f"/bundles/{bundle.id}/": bundle.id,
        "/endpoints/": "doubler",
        "/endpoints/new/": "Deploy",
        f"/endpoints/{endpoint.id}/": "Try it",
        f"/endpoints/{endpoint.id}/edit/": "Edit doubler",
        "/batch-jobs/": "Batch jobs",
        "/batch-jobs/new/": "New batch job",
        "/api-keys/": "Create a key",
    }
    for path, text in pages.items():
        response = browser.get(path)
        assert response.status_code == 200, path
        assert text in response.content.decode(), path
        assert b'src="/static/js/htmx.min.js"' in response.content
        assert b"X-CSRFToken" in response.content


def test_staff_see_the_admin_link_and_others_do_not(browser, owner):
    assert b'href="/admin/"' not in browser.get("/endpoints/").content
    owner.user.is_staff = True
    owner.user.save()
    assert b'href="/admin/"' in browser.get("/endpoints/").content


def test_other_teams_endpoint_and_bundle_pages_are_404(outsider, endpoint, bundle):
    client = Client()
    client.force_login(outsider.user)
    paths = [
        f"/bundles/{bundle.id}/",
        f"/endpoints/{endpoint.id}/",
        f"/endpoints/{endpoint.id}/status/",
        f"/endpoints/{endpoint.id}/edit/",
    ]
    for path in paths:
        response = client.get(path)
        assert response.status_code == 404, path
        assert b"Not found" in response.content
    assert client.post(f"/endpoints/{endpoint.id}/delete/").status_code == 404
    assert client.post(f"/endpoints/{endpoint.id}/tasks/", {"args": "{}"}).status_code == 404
    endpoint.refresh_from_db()
    assert endpoint.status == ModelEndpoint.Status.UPDATE_PENDING
    assert b"doubler" not in client.get("/endpoints/").content
    assert b"doubler" not in client.get("/bundles/").content


def test_a_teammate_sees_the_teams_endpoint(teammate, endpoint):
    client = Client()
    client.force_login(teammate.user)
    assert client.get(f"/endpoints/{endpoint.id}/").status_code == 200


def test_deploy_form_creates_the_endpoint_and_shows_it(browser, bundle, owner):
    response = browser.post("/endpoints/new/", deploy_form(bundle, name="fresh"), follow=True)
    endpoint = ModelEndpoint.objects.get(team=owner.team, name="fresh")
    assert response.redirect_chain[-1][0] == f"/endpoints/{endpoint.id}/"
    assert b"UPDATE_PENDING" in response.content
    assert endpoint.bundle == bundle and endpoint.endpoint_type == "sync"


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"min_workers": 0}, "min_workers", "a sync endpoint keeps at least one worker"),
        ({"min_workers": 2, "max_workers": 1}, "max_workers", "must be &gt;= min_workers (2)"),
        ({"memory": "lots"}, "memory", "is not a size"),
        ({"cpus": "-1"}, "cpus", "must be a positive amount of CPUs"),
        ({"name": "bad name!"}, "name", "characters that are not allowed"),
        ({"name": ""}, "name", "This field is required"),
        ({"per_worker": "many"}, "per_worker", "Enter a whole number"),
        ({"gpus": 1, "gpu_type": ""}, "gpu_type", "is required when gpus &gt; 0"),
        ({"bundle": "bun_missing"}, "bundle", "Select a valid choice"),
    ],
)
def test_deploy_form_shows_errors_next_to_the_field(browser, bundle, fields, field, message):
    response = browser.post("/endpoints/new/", deploy_form(bundle, **fields))
    assert response.status_code == 422
    assert message in field_errors(response, field)
    assert not ModelEndpoint.objects.exists()


def test_deploy_form_refuses_a_duplicate_name_on_the_name_field(browser, bundle, endpoint):
    response = browser.post("/endpoints/new/", deploy_form(bundle, name="doubler"))
    assert response.status_code == 422
    assert "already has an endpoint named" in field_errors(response, "name")


def test_deploy_form_shows_a_quota_refusal_on_top(browser, bundle, owner, endpoint):
    from accounts.models import Quota

    Quota.objects.create(team=owner.team, max_endpoints=1)
    response = browser.post("/endpoints/new/", deploy_form(bundle, name="second"))
    assert response.status_code == 422
    assert b'class="form-errors"' in response.content
    assert b"at most 1 endpoints" in response.content


def version_of(response) -> str:
    return re.search(r'hx-vals=\'\{"v": "([0-9a-f]+)"\}\'', response.content.decode()).group(1)


def test_status_panel_keeps_polling_when_ready_and_sends_only_changes(browser, endpoint):
    url = f"/endpoints/{endpoint.id}/status/"
    pending = browser.get(url, **HTMX)
    assert pending.status_code == 200
    assert b"every 2s, launch:visible from:document" in pending.content
    assert b"<html" not in pending.content

    # An endpoint is never terminal: READY replicas and its queue still move.
    ModelEndpoint.objects.filter(pk=endpoint.pk).update(status=ModelEndpoint.Status.READY)
    ready = browser.get(url, **HTMX)
    assert ready.status_code == 200
    assert b"READY" in ready.content and b"hx-trigger" in ready.content
    # Polling with the version it shows: nothing changed, nothing sent (204, htmx swaps nothing).
    assert browser.get(url, {"v": version_of(ready)}, **HTMX).status_code == 204
    get_redis().lpush(protocol.Keys(protocol.endpoint_prefix(endpoint.id)).queue, "x")
    moved = browser.get(url, {"v": version_of(ready)}, **HTMX)
    assert moved.status_code == 200
    assert re.search(rb'class="queue-depth">1<', moved.content)

    ModelEndpoint.objects.filter(pk=endpoint.pk).update(
        status=ModelEndpoint.Status.UPDATE_FAILED, status_reason="Traceback: <weights> missing"
    )
    failed = browser.get(url, **HTMX)
    assert failed.status_code == 200
    # The traceback shows once (the log tails are folded away), scrolled to its end.
    assert failed.content.count(b"Traceback: &lt;weights&gt; missing") == 1
    assert b'id="status-reason" data-scroll-end' in failed.content


def test_status_fragment_of_a_deleted_endpoint_stops_polling(browser, endpoint):
    url = f"/endpoints/{endpoint.id}/status/"
    ModelEndpoint.objects.filter(pk=endpoint.pk).update(status=ModelEndpoint.Status.DELETE_IN_PROGRESS)
    assert browser.get(url, **HTMX).status_code == 200
    ModelEndpoint.objects.filter(pk=endpoint.pk).delete()
    gone = browser.get(url, **HTMX)
    assert gone.status_code == 286
    assert b"DELETED" in gone.content


def test_list_rows_stay_live_with_workers_and_queue(browser, endpoint, bundle, owner):
    ready = endpoint_create(
        team=owner.team, user=owner.user, name="steady", model_bundle_id=bundle.id, endpoint_type="async",
        min_workers=0, max_workers=1, per_worker=1, cpus=1, memory="1Gi",
    )  # fmt: skip
    ModelEndpoint.objects.filter(pk=ready.pk).update(status=ModelEndpoint.Status.READY)
    html = browser.get("/endpoints/").content.decode()
    assert 'id="endpoint-rows" hx-get="/endpoints/?rows=1&amp;page=1"' in html
    get_redis().lpush(protocol.Keys(protocol.endpoint_prefix(ready.id)).queue, "a", "b", "c")
    rows = browser.get("/endpoints/", {"rows": "1"}, **HTMX).content.decode()
    assert "<html" not in rows and 'class="page-head"' not in rows
    steady_row = re.search(r"<tr>(?:(?!</tr>).)*steady(?:(?!</tr>).)*</tr>", rows, re.S).group(0)
    assert '<td class="num queue-cell">3</td>' in steady_row
    searched = browser.get("/endpoints/", {"rows": "1", "q": "stead"}, **HTMX).content.decode()
    assert ready.id in searched and endpoint.id not in searched


def test_htmx_request_gets_the_fragment_and_a_plain_request_the_page(browser, endpoint):
    page = browser.get("/endpoints/")
    assert b"<html" in page.content and b'class="topbar"' in page.content
    fragment = browser.get("/endpoints/", **HTMX)
    assert fragment.status_code == 200
    assert b"<html" not in fragment.content and b'class="topbar"' not in fragment.content
    assert b"doubler" in fragment.content

    status_page = browser.get(f"/endpoints/{endpoint.id}/status/")
    assert status_page.status_code == 200
    assert b"<html" in status_page.content


def test_try_it_queues_a_task_and_its_status_polls_until_done(browser, endpoint):
    response = browser.post(f"/endpoints/{endpoint.id}/tasks/", {"args": '{"x": 21}'}, **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    task_id = re.search(r'/tasks/([^/"]+)/" hx-trigger="every 1s"', html).group(1)
    assert "PENDING" in html

    redis = get_redis()
    keys = protocol.Keys(protocol.endpoint_prefix(endpoint.id))
    [entry] = redis.lrange(keys.queue, 0, -1)
    queued_id, _, payload = protocol.parse_entry(entry)
    assert queued_id == task_id
    assert json.loads(bytes(payload)) == {"args": {"x": 21}, "return_pickled": False}
    # Stored once, in the queue entry; the hash keeps the start of it for the task page.
    assert redis.hget(keys.task(task_id), "payload") is None
    assert json.loads(redis.hget(keys.task(task_id), "payload_preview")) == {"args": {"x": 21}, "return_pickled": False}

    url = f"/endpoints/{endpoint.id}/tasks/{task_id}/"
    assert browser.get(url, **HTMX).status_code == 200
    # What a replica writes when it finishes (workers/protocol.py).
    redis.hset(keys.task(task_id), mapping={"status": protocol.SUCCESS, "result": json.dumps({"value": 42})})
    done = browser.get(url, **HTMX)
    assert done.status_code == 286
    assert b"SUCCESS" in done.content
    assert b"&quot;value&quot;: 42" in done.content

    redis.hset(keys.task(task_id), mapping={"status": protocol.FAILURE, "traceback": "ValueError: nope"})
    failed = browser.get(url, **HTMX)
    assert failed.status_code == 286
    assert b"ValueError: nope" in failed.content


def test_try_it_without_htmx_redirects_to_the_task_page(browser, endpoint):
    response = browser.post(f"/endpoints/{endpoint.id}/tasks/", {"args": '{"x": 1}'}, follow=True)
    assert response.status_code == 200
    assert re.match(rf"/endpoints/{endpoint.id}/tasks/{endpoint.id}-[0-9a-f]+/$", response.redirect_chain[-1][0])
    assert b"<html" in response.content and b"PENDING" in response.content


@pytest.mark.parametrize(
    ("args", "message"),
    [("{not json", "not valid JSON"), ("[1, 2]", "must be a JSON object"), ("", "This field is required")],
)
def test_try_it_with_bad_arguments_shows_the_error_and_queues_nothing(browser, endpoint, args, message):
    response = browser.post(f"/endpoints/{endpoint.id}/tasks/", {"args": args}, **HTMX)
    assert response.status_code == 422
    assert message in field_errors(response, "args")
    assert get_redis().llen(protocol.Keys(protocol.endpoint_prefix(endpoint.id)).queue) == 0


def test_another_teams_task_is_404(browser, outsider):
    theirs = endpoint_create(
        team=outsider.team, user=outsider.user, name="theirs", model_bundle_id=make_bundle(outsider.team).id,
        endpoint_type="async", min_workers=0, max_workers=1, per_worker=1, cpus=1, memory="1Gi",
    )  # fmt: skip
    from endpoints.gateway import task_submit

    task_id = task_submit(endpoint=theirs, payload={"args": {}, "return_pickled": False})
    assert browser.get(f"/endpoints/{theirs.id}/tasks/{task_id}/").status_code == 404


def test_task_of_another_endpoint_is_not_shown_under_this_one(browser, endpoint, bundle, owner):
    other = endpoint_create(
        team=owner.team, user=owner.user, name="other", model_bundle_id=bundle.id, endpoint_type="async",
        min_workers=0, max_workers=1, per_worker=1, cpus=1, memory="1Gi",
    )  # fmt: skip
    from endpoints.gateway import task_submit

    task_id = task_submit(endpoint=other, payload={"args": {}, "return_pickled": False})
    assert browser.get(f"/endpoints/{endpoint.id}/tasks/{task_id}/").status_code == 404
    assert browser.get(f"/endpoints/{other.id}/tasks/{task_id}/").status_code == 200


def test_edit_changes_workers_and_bundle(browser, endpoint, owner):
    newer = make_bundle(owner.team, name="doubler")
    response = browser.post(
        f"/endpoints/{endpoint.id}/edit/", {"bundle": newer.id, "min_workers": 2, "max_workers": 3}, follow=True
    )
    assert response.redirect_chain[-1][0] == f"/endpoints/{endpoint.id}/"
    endpoint.refresh_from_db()
    assert (endpoint.bundle_id, endpoint.min_workers, endpoint.max_workers) == (newer.id, 2, 3)
    assert endpoint.generation == 2


def test_edit_shows_service_errors_next_to_the_field(browser, endpoint, bundle):
    response = browser.post(
        f"/endpoints/{endpoint.id}/edit/", {"bundle": bundle.id, "min_workers": 3, "max_workers": 2}
    )
    assert response.status_code == 422
    assert "must be &gt;= min_workers (3)" in field_errors(response, "max_workers")
    endpoint.refresh_from_db()
    assert endpoint.max_workers == 2


def test_delete_is_a_post_and_marks_the_endpoint_for_deletion(browser, endpoint):
    assert browser.get(f"/endpoints/{endpoint.id}/delete/").status_code == 405
    response = browser.post(f"/endpoints/{endpoint.id}/delete/", follow=True)
    assert response.redirect_chain[-1][0] == "/endpoints/"
    endpoint.refresh_from_db()
    assert endpoint.status == ModelEndpoint.Status.DELETE_IN_PROGRESS
    assert b"DELETE_IN_PROGRESS" in response.content


def test_api_key_is_shown_once_works_and_can_be_revoked(browser, owner):
    from rest_framework.test import APIClient

    created = browser.post("/api-keys/", {"name": "laptop"})
    # Post/redirect/get: the key is shown on the page the redirect leads to, and only there.
    assert created.status_code == 302 and created["Location"] == "/api-keys/"
    response = browser.get("/api-keys/")
    raw_key = re.search(rb'<code id="new-key-value">(lk_[0-9a-f]+_[^<]+)</code>', response.content).group(1).decode()
    assert response["Cache-Control"] == "no-store"
    assert b"data-copy" in response.content
    assert owner.team.api_keys.filter(name="laptop").count() == 1
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert api.get("/v1/model-endpoints").status_code == 200

    listing = browser.get("/api-keys/").content.decode()
    assert raw_key not in listing
    assert "laptop" in listing and raw_key[:11] in listing

    key = owner.team.api_keys.get(name="laptop")
    revoked = browser.post(f"/api-keys/{key.id}/revoke/", follow=True)
    assert b"revoked" in revoked.content
    assert api.get("/v1/model-endpoints").status_code == 401


def test_someone_elses_key_cannot_be_revoked(browser, outsider):
    key = outsider.team.api_keys.get()
    assert browser.post(f"/api-keys/{key.id}/revoke/").status_code == 404
    key.refresh_from_db()
    assert key.revoked_at is None


def test_a_user_without_a_team_gets_a_clear_page(db, django_user_model):
    user = django_user_model.objects.create_user("loner", password="pw")
    client = Client()
    client.force_login(user)
    response = client.get("/endpoints/")
    assert response.status_code == 403
    assert b"You belong to no team" in response.content


class WritesAMarkerWhenUnpickled:
    """A pickle with a side effect: proof that the web process never loads a bundle."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def upload_form(content: bytes, **fields) -> dict:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return {
        "name": "doubler",
        "file": SimpleUploadedFile("bundle.pkl", content, content_type="application/octet-stream"),
        "packaging_type": "cloudpickle",
        "requirements": "",
        "app_config": "",
        **fields,
    }


def test_upload_form_stores_the_bytes_as_is_and_never_unpickles_them(browser, owner, tmp_path, settings):
    import pickle

    from bundles import store
    from bundles.models import ModelBundle

    marker = tmp_path / "unpickled"
    content = pickle.dumps(WritesAMarkerWhenUnpickled(str(marker)))
    form = upload_form(content, requirements='["numpy==2.1.0"]', app_config='{"scale": 3}', python_version="3.11")
    response = browser.post("/bundles/new/", form, follow=True)
    bundle = ModelBundle.objects.get(team=owner.team)
    assert response.redirect_chain[-1][0] == f"/bundles/{bundle.id}/"
    assert (bundle.name, bundle.requirements, bundle.app_config) == ("doubler", ["numpy==2.1.0"], {"scale": 3})
    assert bundle.python_version == "3.11"
    with store.open_object(bundle.artifact) as stored:
        assert stored.read() == content
    assert b"numpy==2.1.0" in response.content and b"&quot;scale&quot;: 3" in response.content
    assert browser.get("/bundles/").status_code == 200 and browser.get(f"/bundles/{bundle.id}/").status_code == 200
    assert not marker.exists()


def test_a_second_upload_of_a_name_is_a_new_version(browser, owner):
    browser.post("/bundles/new/", upload_form(b"one"))
    browser.post("/bundles/new/", upload_form(b"two"))
    html = browser.get("/bundles/").content.decode()
    assert re.search(r"doubler</b></a></td>\s*<td class=\"num\">2</td>", html)


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"requirements": "[numpy"}, "requirements", "not valid JSON"),
        ({"requirements": '{"a": 1}'}, "requirements", "must be a JSON list"),
        ({"requirements": "[1, 2]"}, "requirements", "must be a list of strings"),
        ({"app_config": "[1]"}, "app_config", "must be a JSON object"),
        ({"name": ""}, "name", "This field is required"),
        ({"name": "a/b"}, "name", "has characters that are not allowed"),
        ({"python_version": "python3"}, "python_version", "must be a Python version"),
        ({"packaging_type": "zip"}, "load_predict_fn_module_path", "is required for zip bundles"),
        ({"packaging_type": "tar"}, "packaging_type", "Select a valid choice"),
    ],
)
def test_upload_form_shows_errors_next_to_the_field(browser, fields, field, message):
    from bundles.models import ModelBundle, StoredObject

    response = browser.post("/bundles/new/", upload_form(b"bytes", **fields))
    assert response.status_code == 422
    assert message in field_errors(response, field)
    assert not ModelBundle.objects.exists() and not StoredObject.objects.exists()


def test_upload_without_a_file_or_over_the_limit_is_a_file_error(browser, settings):
    missing = browser.post("/bundles/new/", {"name": "doubler"})
    assert missing.status_code == 422
    assert "This field is required" in field_errors(missing, "file")
    settings.MAX_UPLOAD_BYTES = 10
    too_big = browser.post("/bundles/new/", upload_form(b"x" * 11))
    assert too_big.status_code == 422
    assert "larger than the limit of 10 bytes" in field_errors(too_big, "file")


def test_a_poll_after_the_session_ended_sends_the_page_to_login(client, endpoint):
    response = client.get(
        f"/endpoints/{endpoint.id}/status/", HTTP_HX_CURRENT_URL="http://testserver/endpoints/", **HTMX
    )
    assert response.status_code == 200
    assert response["HX-Redirect"] == "/accounts/login/?next=%2Fendpoints%2F"
    assert b"Log in" not in response.content


def test_polling_an_expired_task_stops_with_a_message(browser, endpoint):
    response = browser.post(f"/endpoints/{endpoint.id}/tasks/", {"args": "{}"}, follow=True)
    task_url = response.redirect_chain[-1][0]
    task_id = task_url.rstrip("/").rsplit("/", 1)[1]
    get_redis().delete(protocol.Keys(protocol.endpoint_prefix(endpoint.id)).task(task_id))
    expired = browser.get(task_url, **HTMX)
    assert expired.status_code == 286
    assert b"may have expired" in expired.content
    assert browser.get(task_url).status_code == 404


def test_try_it_on_an_endpoint_being_deleted_queues_nothing(browser, endpoint):
    ModelEndpoint.objects.filter(pk=endpoint.pk).update(status=ModelEndpoint.Status.DELETE_IN_PROGRESS)
    response = browser.post(f"/endpoints/{endpoint.id}/tasks/", {"args": "{}"}, **HTMX)
    assert response.status_code == 422
    assert b"being deleted" in response.content
    assert get_redis().llen(protocol.Keys(protocol.endpoint_prefix(endpoint.id)).queue) == 0

"""Dashboard forms as a user meets them: the endpoint edit page covers what the API lets a user
change and shows every error at once; a file chosen before an error is asked for again by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.test import Client

from endpoints.models import ModelEndpoint
from endpoints.services import endpoint_create
from launch_site.dashboard.forms import EndpointEditForm
from tests.factories import make_bundle
from tests.test_dashboard import field_errors

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(owner) -> Client:
    client = Client()
    client.force_login(owner.user)
    return client


@pytest.fixture
def endpoint(owner) -> ModelEndpoint:
    return endpoint_create(
        team=owner.team, user=owner.user, name="doubler", model_bundle_id=make_bundle(owner.team).id,
        endpoint_type="sync", min_workers=1, max_workers=2, per_worker=1, cpus=1, memory="1Gi",
    )  # fmt: skip

CONTRACT = Path(__file__).resolve().parent.parent / "docs/reference/launch-openapi.json"

# Update fields the page does not offer, each with why.
NOT_OFFERED = {
    "model_bundle_id": "offered as `bundle`",
    "concurrent_requests_per_worker": "another name of per_worker",
    "prewarm": "only true is accepted (replicas always load before serving)",
    "optimize_costs": "only false is accepted (no cost optimizer)",
    "public_inference": "only false is accepted",
    "forwarder_max_concurrency": "runnable-image bundles only; refused here",
}


def test_the_form_offers_every_update_field_of_the_contract():
    request = json.loads(CONTRACT.read_text())["components"]["schemas"]["UpdateModelEndpointV1Request"]
    missing = set(request["properties"]) - set(EndpointEditForm.base_fields) - set(NOT_OFFERED)
    assert not missing, f"the edit page lacks {sorted(missing)}"


def test_the_page_shows_the_current_values(browser, endpoint):
    ModelEndpoint.objects.filter(pk=endpoint.pk).update(
        labels={"team": "search"}, billing_tags={"cost_center": "42"}, queue_message_timeout_seconds=120
    )
    html = browser.get(f"/endpoints/{endpoint.id}/edit/").content.decode()
    assert "{&quot;team&quot;: &quot;search&quot;}" in html
    assert "{&quot;cost_center&quot;: &quot;42&quot;}" in html
    assert 'name="queue_message_timeout_seconds" value="120"' in html


def edit_form(endpoint_row, **fields) -> dict:
    form = {"bundle": endpoint_row.bundle_id, "min_workers": 1, "max_workers": 1, "labels": "{}", "metadata": "{}"}
    return {**form, **fields}


def test_one_save_changes_every_kind_of_field(browser, endpoint, settings):
    settings.CALLBACK_ALLOW_PRIVATE_TARGETS = True  # no DNS here: a loopback target
    response = browser.post(f"/endpoints/{endpoint.id}/edit/", edit_form(
        endpoint, max_workers=3, per_worker=2, cpus="0.5", memory="512Mi", storage="2Gi",
        labels='{"team": "search"}', metadata='{"owner": "ana"}', billing_tags='{"cost_center": "42"}',
        post_inference_hooks='["callback"]', default_callback_url="http://127.0.0.1:9/hook",
        default_callback_auth='{"kind": "basic", "username": "u", "password": "p"}',
        task_expires_seconds=300, queue_message_timeout_seconds=90, high_priority="on",
    ), follow=True)  # fmt: skip
    assert response.redirect_chain[-1][0] == f"/endpoints/{endpoint.id}/", response.content.decode()[-3000:]
    endpoint.refresh_from_db()
    assert (endpoint.max_workers, endpoint.per_worker, endpoint.cpus, endpoint.memory, endpoint.storage) == (
        3, 2, "0.5", "512Mi", "2Gi"
    )
    assert endpoint.labels == {"team": "search"} and endpoint.metadata == {"owner": "ana"}
    assert endpoint.billing_tags == {"cost_center": "42"} and endpoint.post_inference_hooks == ["callback"]
    assert endpoint.default_callback_url == "http://127.0.0.1:9/hook"
    assert endpoint.default_callback_auth == {"kind": "basic", "username": "u", "password": "p"}
    assert (endpoint.task_expires_seconds, endpoint.queue_message_timeout_seconds) == (300, 90)
    assert endpoint.high_priority is True
    assert endpoint.generation == 2  # new resources: a rollover


def test_a_save_that_changes_nothing_that_replicas_run_is_no_rollover(browser, endpoint):
    form = {k: v for k, v in EndpointEditForm.initial_for(endpoint).items() if v is not None}
    form.update(labels='{"team": "search"}', metadata="{}")
    assert browser.post(f"/endpoints/{endpoint.id}/edit/", form).status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.labels == {"team": "search"} and endpoint.generation == 1


def test_every_bad_field_is_shown_at_once_and_nothing_changes(browser, endpoint):
    response = browser.post(f"/endpoints/{endpoint.id}/edit/", edit_form(
        endpoint, min_workers=3, max_workers=2, cpus="lots", memory="big", labels='{"team": 1}',
        metadata="{not json", queue_message_timeout_seconds=50000, post_inference_hooks='[1]',
    ))  # fmt: skip
    assert response.status_code == 422
    assert "must be &gt;= min_workers (3)" in field_errors(response, "max_workers")
    assert field_errors(response, "cpus") and field_errors(response, "memory")
    assert "must be a string" in field_errors(response, "labels")
    assert "not valid JSON" in field_errors(response, "metadata")
    assert "43200" in field_errors(response, "queue_message_timeout_seconds")
    assert "list of strings" in field_errors(response, "post_inference_hooks")
    endpoint.refresh_from_db()
    assert (endpoint.min_workers, endpoint.cpus, endpoint.labels) == (1, "1", {})


def test_a_refused_callback_target_is_shown_next_to_its_field(browser, endpoint):
    response = browser.post(f"/endpoints/{endpoint.id}/edit/", edit_form(endpoint, default_callback_url="http://127.0.0.1/"))
    assert response.status_code == 422
    assert "private or loopback" in field_errors(response, "default_callback_url")


def test_a_form_error_asks_again_for_the_chosen_file_by_name(browser):
    from tests.test_dashboard import upload_form

    response = browser.post("/bundles/new/", upload_form(b"bytes", requirements="[numpy"))
    assert response.status_code == 422
    html = response.content.decode()
    assert 'class="reask" role="status">Choose <b>bundle.pkl</b> again' in html
    # A first visit asks nothing.
    assert 'class="reask"' not in browser.get("/bundles/new/").content.decode()

"""Guessing is throttled: wrong logins, invalid API keys per client address, and inference
requests per API key (429 with Retry-After), counted in Redis."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client
from rest_framework.test import APIClient

from tests.factories import endpoint_body, make_bundle

pytestmark = pytest.mark.django_db


def an_address() -> str:
    """A client address of this test's own (counters and blocks are per address)."""
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"


@pytest.mark.parametrize("login_url", ["/accounts/login/", "/admin/login/"])
def test_thirty_wrong_logins_then_the_right_one_is_refused(login_url):
    from accounts.services import team_get_or_create_for_user

    username = f"u{uuid.uuid4().hex[:8]}"
    user, _ = team_get_or_create_for_user(username=username, team_name=username, password="the-right-one")
    user.is_staff = True
    user.save()
    address = an_address()
    client = Client(REMOTE_ADDR=address)
    for attempt in range(30):
        response = client.post(login_url, {"username": username, "password": f"guess-{attempt}"})
        assert response.status_code == 200  # the form again, not a redirect
    response = client.post(login_url, {"username": username, "password": "the-right-one"})
    assert response.status_code == 200 and "_auth_user_id" not in client.session
    # The same user from another address still logs in: the lock is per (user, address).
    other = Client(REMOTE_ADDR=an_address())
    response = other.post(login_url, {"username": username, "password": "the-right-one"})
    assert response.status_code == 302 and "_auth_user_id" in other.session


def test_invalid_keys_from_one_address_get_429_then_even_a_good_key_waits(owner, settings):
    settings.INVALID_KEY_LIMIT = 5
    address = an_address()
    guesser = APIClient(REMOTE_ADDR=address)
    statuses = []
    for _ in range(7):
        guesser.credentials(HTTP_AUTHORIZATION=f"Bearer lk_{uuid.uuid4().hex[:8]}_{uuid.uuid4().hex}")
        statuses.append(guesser.get("/v1/model-bundles").status_code)
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429, 429]
    guesser.credentials(HTTP_AUTHORIZATION=f"Bearer {owner.key}")
    response = guesser.get("/v1/model-bundles")
    assert response.status_code == 429 and int(response["Retry-After"]) >= 1
    assert "too many invalid API keys" in response.json()["detail"]
    elsewhere = APIClient(REMOTE_ADDR=an_address())
    elsewhere.credentials(HTTP_AUTHORIZATION=f"Bearer {owner.key}")
    assert elsewhere.get("/v1/model-bundles").status_code == 200


def test_inference_over_the_key_rate_gets_429_with_retry_after(owner, teammate, settings):
    settings.INFERENCE_RATE_LIMIT = 3
    settings.INFERENCE_RATE_WINDOW_SECONDS = 3600.0
    body = endpoint_body(make_bundle(owner.team).id, endpoint_type="async", min_workers=0)
    endpoint_id = owner.client.post("/v1/model-endpoints", body, format="json").json()["endpoint_creation_task_id"]
    submit = f"/v1/async-tasks?model_endpoint_id={endpoint_id}"
    statuses = [owner.client.post(submit, {"args": {"x": i}}, format="json").status_code for i in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    limited = owner.client.post(submit, {"args": {}}, format="json")
    assert 1 <= int(limited["Retry-After"]) <= 3600 and "rate limit" in limited.json()["detail"]
    legacy = owner.client.post("/v1/hosted_inference/task_async/my-endpoint", {"args": {}}, format="json")
    assert legacy.status_code == 429
    # Another key of the same team has its own count.
    assert teammate.client.post(submit, {"args": {}}, format="json").status_code == 200


def test_the_key_count_holds_across_processes(owner, settings):
    """A second web worker (no local memory of the block) learns it from Redis's count."""
    from accounts import throttling

    settings.INFERENCE_RATE_LIMIT = 2
    settings.INFERENCE_RATE_WINDOW_SECONDS = 3600.0
    body = endpoint_body(make_bundle(owner.team).id, endpoint_type="async", min_workers=0)
    endpoint_id = owner.client.post("/v1/model-endpoints", body, format="json").json()["endpoint_creation_task_id"]
    submit = f"/v1/async-tasks?model_endpoint_id={endpoint_id}"
    for _ in range(2):
        assert owner.client.post(submit, {"args": {}}, format="json").status_code == 200
    throttling._blocked = throttling._LocalBlocks()  # what another process starts with
    assert owner.client.post(submit, {"args": {}}, format="json").status_code == 200  # its one overshoot
    assert owner.client.post(submit, {"args": {}}, format="json").status_code == 429

"""The serving promises, kept by the web server `make run` starts (uvicorn, ASGI, the task
routes as async views) and not only by the test live server: a wait past redis-py's 5 s
default answers, a wait past its timeout is a 504 naming the task, an oversized body is a JSON
413 with the limit, a missing key a JSON 401."""

from __future__ import annotations

import time

import pytest
import requests
from django.conf import settings

from tests.stack import api_for
from tests.test_resilience import sleepy_bundle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("asgi-promises")]


@pytest.fixture
def slow_endpoint(live_stack, owner) -> str:
    api = api_for(live_stack, owner)
    endpoint_id = api.create_endpoint(api.upload_bundle(sleepy_bundle(predict_seconds=7), "slow"), "slow",
                                      concurrent_requests_per_worker=2)
    api.wait_endpoint(endpoint_id, "READY", available_workers=1)
    return endpoint_id


def test_seven_second_sync_predict_answers_and_a_shorter_timeout_is_a_504(asgi_server, owner, slow_endpoint):
    api = api_for(asgi_server, owner)
    url = f"/v1/sync-tasks?model_endpoint_id={slow_endpoint}"
    started = time.monotonic()
    response = api.post(url, json={"args": {"x": 1}}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["result"] == {"result": "2"}
    assert time.monotonic() - started >= 7

    response = api.post(url, json={"args": {"x": 2}, "timeout_seconds": 5.5}, timeout=30)
    assert response.status_code == 504, response.text
    task_id = response.json()["detail"].split("the task ")[1].split()[0]
    assert api_for(asgi_server, owner).wait_task(task_id, timeout=15)["result"] == {"result": "3"}


def test_oversized_body_and_missing_key_get_json_errors(asgi_server, owner, slow_endpoint):
    url = f"{asgi_server}/v1/async-tasks?model_endpoint_id={slow_endpoint}"
    body = b'{"args": "' + b"x" * (settings.MAX_REQUEST_BYTES + 1) + b'"}'
    response = requests.post(url, data=body, headers={"Authorization": f"Bearer {owner.key}",
                                                      "Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 413, response.text[:300]
    assert response.json()["limit_bytes"] == settings.MAX_REQUEST_BYTES
    headers = {"Authorization": f"Bearer {owner.key}", "Content-Type": "application/json"}

    # Chunked, without a Content-Length: refused the same way past the limit, and read whole
    # (its pieces joined) within it.
    def pieces(body: bytes, size: int = 1024**2):
        yield from (body[start:start + size] for start in range(0, len(body), size))

    response = requests.post(url, data=pieces(body), headers=headers, timeout=60)
    assert response.status_code == 413, response.text[:300]
    body = b'{"args": "' + b"x" * (3 * 1024**2) + b'"}'
    response = requests.post(url, data=pieces(body), headers=headers, timeout=60)
    assert response.status_code == 200, response.text[:300]

    response = requests.post(url, json={"args": {"x": 1}}, timeout=30)
    assert response.status_code == 401, response.text[:300]
    assert "API key" in response.json()["detail"]

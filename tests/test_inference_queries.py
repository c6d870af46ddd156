"""The inference routes' database cost: a task submit reads the API key and the endpoint, in
two queries, whatever the task asks for. A field the gateway reads but the route's lookup did
not load is a deferred load, one more query on every request (it happened: the callback check
read the endpoint's hooks on every sync task)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.factories import endpoint_body, make_bundle

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _loopback_callbacks(settings):
    settings.CALLBACK_ALLOW_PRIVATE_TARGETS = True  # no DNS here: a loopback target

HOOK_FIELDS = {"post_inference_hooks": ["callback"], "default_callback_url": "http://127.0.0.1:9/hook"}


def _endpoint(persona, endpoint_type: str, **fields) -> str:
    body = endpoint_body(make_bundle(persona.team).id, name=f"q-{endpoint_type}-{len(fields)}",
                         endpoint_type=endpoint_type, min_workers=int(endpoint_type != "async"), **fields)
    response = persona.client.post("/v1/model-endpoints", body, format="json")
    assert response.status_code == 200, response.content
    return response.json()["endpoint_creation_task_id"]


@pytest.mark.parametrize("fields", [{}, HOOK_FIELDS], ids=["plain", "default-callback"])
@pytest.mark.parametrize("task", [{"args": {"x": 1}}, {"args": {"x": 1}, "callback_url": "http://127.0.0.1:9/cb"}],
                         ids=["args", "own-callback"])
def test_an_async_task_costs_two_queries(owner, fields, task):
    endpoint_id = _endpoint(owner, "async", **fields)
    with CaptureQueriesContext(connection) as captured:
        response = owner.client.post(f"/v1/async-tasks?model_endpoint_id={endpoint_id}", task, format="json")
    assert response.status_code == 200, response.content
    assert len(captured) == 2, [q["sql"] for q in captured]


@pytest.mark.parametrize("route,endpoint_type", [("sync-tasks", "sync"), ("streaming-tasks", "streaming")])
def test_a_refused_sync_or_stream_task_is_refused_after_two_queries(owner, route, endpoint_type):
    # A callback on a sync task or a stream is a 422: decided from the key and endpoint alone.
    endpoint_id = _endpoint(owner, endpoint_type, **HOOK_FIELDS)
    with CaptureQueriesContext(connection) as captured:
        response = owner.client.post(f"/v1/{route}?model_endpoint_id={endpoint_id}",
                                     {"args": {}, "callback_url": "http://127.0.0.1:9/cb"}, format="json")
    assert response.status_code == 422, response.content
    assert "callback_url" in response.content.decode()
    assert len(captured) == 2, [q["sql"] for q in captured]

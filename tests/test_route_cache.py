"""The inference routes' per-process cache of the API key and endpoint lookups
(endpoints.route_cache): a second task to a READY endpoint costs no query, and every change a
request's authorization or routing depends on is seen by the very next request."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import ApiKey, Membership
from accounts.services import api_key_revoke
from endpoints import route_cache
from endpoints.models import ModelEndpoint
from launch_site.redis_client import get_redis
from tests.factories import endpoint_body, make_bundle
from workers import protocol

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def own_generation(monkeypatch):
    """A generation of this test's own: the test workers share one Redis, and another worker's
    writes move the shared one (as they should), which would make these checks racy."""
    import uuid

    key = f"launch:route-generation:test-{uuid.uuid4().hex}"
    monkeypatch.setattr(protocol, "ROUTE_GENERATION_KEY", key)
    yield key
    get_redis().delete(key)


@pytest.fixture
def endpoint(owner) -> ModelEndpoint:
    body = endpoint_body(make_bundle(owner.team).id, name="cached", endpoint_type="async", min_workers=0)
    response = owner.client.post("/v1/model-endpoints", body, format="json")
    assert response.status_code == 200, response.content
    ModelEndpoint.objects.filter(pk=response.json()["endpoint_creation_task_id"]).update(status="READY")
    return ModelEndpoint.objects.get(pk=response.json()["endpoint_creation_task_id"])


def _task(persona, endpoint):
    return persona.client.post(f"/v1/async-tasks?model_endpoint_id={endpoint.id}", {"args": {"x": 1}}, format="json")


def _legacy_task(persona, endpoint):
    return persona.client.post(f"/v1/hosted_inference/task_async/{endpoint.name}", {"args": {"x": 1}}, format="json")


@pytest.mark.parametrize("send", [_task, _legacy_task], ids=["native", "legacy"])
def test_the_second_task_runs_no_query(owner, endpoint, send):
    assert send(owner, endpoint).status_code == 200
    with CaptureQueriesContext(connection) as captured:
        assert send(owner, endpoint).status_code == 200
    assert len(captured) == 0, [q["sql"] for q in captured]


def _revoke(persona, endpoint):
    api_key_revoke(api_key=ApiKey.objects.get(team=persona.team))


def _deactivate_user(persona, endpoint):
    persona.user.is_active = False
    persona.user.save()


def _leave_team(persona, endpoint):
    Membership.objects.filter(user=persona.user, team=persona.team).delete()


@pytest.mark.parametrize("change", [_revoke, _deactivate_user, _leave_team])
def test_a_key_that_stops_working_is_refused_by_the_next_request(owner, endpoint, change):
    assert _task(owner, endpoint).status_code == 200
    change(owner, endpoint)
    assert _task(owner, endpoint).status_code == 401


def test_a_deleted_endpoint_is_not_found_by_the_next_request(owner, endpoint):
    assert _task(owner, endpoint).status_code == 200
    assert owner.client.delete(f"/v1/model-endpoints/{endpoint.id}").status_code == 200
    assert _task(owner, endpoint).status_code == 409  # being deleted
    ModelEndpoint.objects.filter(pk=endpoint.pk).delete()
    assert _task(owner, endpoint).status_code == 404


def test_an_endpoint_change_written_with_update_is_seen_by_the_next_request(owner, endpoint):
    assert _legacy_task(owner, endpoint).status_code == 200
    ModelEndpoint.objects.filter(pk=endpoint.pk).update(name="renamed")
    assert _legacy_task(owner, endpoint).status_code == 404
    endpoint.name = "renamed"
    assert _legacy_task(owner, endpoint).status_code == 200


def test_writes_the_routes_do_not_read_leave_the_cache_alone(owner, endpoint):
    assert _task(owner, endpoint).status_code == 200
    ModelEndpoint.objects.filter(pk=endpoint.pk).update(labels={"team": "search"})
    ApiKey.objects.filter(team=owner.team).update(last_used_at=None)
    with CaptureQueriesContext(connection) as captured:
        assert _task(owner, endpoint).status_code == 200
    assert len(captured) == 0


def test_a_lost_generation_move_lags_at_most_max_age(owner, endpoint, monkeypatch):
    """A write whose move was lost (Redis unreachable just then; here: the row changed in
    SQL, which moves nothing) is seen once the entry is MAX_AGE_SECONDS old."""
    now = [1000.0]
    monkeypatch.setattr(route_cache.time, "monotonic", lambda: now[0])
    assert _task(owner, endpoint).status_code == 200
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {ApiKey._meta.db_table} SET revoked_at = CURRENT_TIMESTAMP")
    assert _task(owner, endpoint).status_code == 200  # the cache cannot know yet
    now[0] += route_cache.MAX_AGE_SECONDS + 0.1
    assert _task(owner, endpoint).status_code == 401


def test_redis_losing_the_generation_does_not_revive_old_entries(owner, endpoint):
    assert _task(owner, endpoint).status_code == 200
    get_redis().delete(protocol.ROUTE_GENERATION_KEY)  # e.g. Redis restarted without its data
    with CaptureQueriesContext(connection) as captured:
        assert _task(owner, endpoint).status_code == 200
    assert len(captured) == 2  # read again from the database


def _queued(endpoint) -> int:
    return get_redis().llen(protocol.Keys(protocol.endpoint_prefix(endpoint.id)).queue)


# A large body's queue entry is pushed apart from the script (protocol.PUSHED_APART_BYTES):
# a stale submit must take it back too.
LARGE_ARGS = {"x": "y" * protocol.PUSHED_APART_BYTES}


@pytest.mark.parametrize("args", [{"x": 1}, LARGE_ARGS], ids=["small", "large"])
def test_a_route_that_moved_between_lookup_and_queueing_queues_the_task_once(owner, endpoint, args):
    send = lambda: owner.client.post(f"/v1/async-tasks?model_endpoint_id={endpoint.id}", {"args": args},  # noqa: E731
                                     format="json")
    assert send().status_code == 200
    get_redis().incr(protocol.ROUTE_GENERATION_KEY)  # some write elsewhere, after this process cached the route
    with CaptureQueriesContext(connection) as captured:
        response = send()
    assert response.status_code == 200
    assert len(captured) == 2  # looked up again
    keys = protocol.Keys(protocol.endpoint_prefix(endpoint.id))
    entries = get_redis().lrange(keys.queue, 0, -1)
    assert len(entries) == 2  # the stale attempt queued nothing
    assert protocol.parse_entry(entries[0])[0] == response.json()["task_id"]
    for entry in entries:
        task_id, _, payload = protocol.parse_entry(entry)
        assert protocol.load_json(payload)["args"] == args
        assert get_redis().hget(keys.task(task_id), "status") == b"PENDING"


@pytest.mark.parametrize("args", [{}, LARGE_ARGS], ids=["small", "large"])
def test_a_stale_sync_submit_does_not_wait_for_its_answer(owner, endpoint, args):
    import asyncio

    from endpoints import gateway
    from launch_site.redis_client import async_redis

    ModelEndpoint.objects.filter(pk=endpoint.pk).update(endpoint_type="sync")
    endpoint.refresh_from_db()
    submission = gateway.prepare_sync(endpoint=endpoint, payload={"args": args}, timeout_seconds=60)
    stale = type(submission)(**{**submission.__dict__, "route_generation": b"not-the-current-one"})

    async def submit():
        async with async_redis(shared=False) as clients:
            await route_cache.current_generation(clients.client)
            await asyncio.wait_for(gateway.run_sync_async(clients, stale), timeout=10)

    with pytest.raises(gateway.StaleRoute):
        asyncio.run(submit())
    assert _queued(endpoint) == 0

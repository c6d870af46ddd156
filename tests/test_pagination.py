"""GET lists come in pages (launch_site.pagination): the contract's shape, `limit`/`offset`,
a Link header to the next page, bad values refused naming the parameter, and a page's
queries independent of its size (no query per item)."""

from __future__ import annotations

import datetime
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from endpoints.models import ModelEndpoint
from launch_site.pagination import MAX_PAGE_SIZE
from tests.factories import endpoint_body, make_bundle
from workers.models import Replica

pytestmark = pytest.mark.django_db


def _create_endpoints(persona, count: int, start: int = 0) -> list[str]:
    bundle = make_bundle(persona.team)
    ids = []
    for i in range(start, start + count):
        response = persona.client.post(
            "/v1/model-endpoints",
            endpoint_body(bundle.id, name=f"ep-{i}", endpoint_type="async", min_workers=0),
            format="json",
        )
        assert response.status_code == 200, response.content
        ids.append(response.json()["endpoint_creation_task_id"])
    return ids


def _next_link(response) -> str | None:
    link = response.headers.get("Link")
    if link is None:
        return None
    match = re.fullmatch(r'<http://testserver(/[^>]*)>; rel="next"', link)
    assert match, link
    return match.group(1)


def test_following_next_links_walks_every_endpoint_once_newest_first(owner):
    ids = _create_endpoints(owner, 5)
    seen, path, pages = [], "/v1/model-endpoints?limit=2", 0
    while path is not None:
        response = owner.client.get(path)
        assert response.status_code == 200, response.content
        assert list(response.json()) == ["model_endpoints"]  # the contract's shape
        seen += [e["id"] for e in response.json()["model_endpoints"]]
        path, pages = _next_link(response), pages + 1
    assert seen == list(reversed(ids))
    assert pages == 3


def test_without_parameters_a_short_list_is_whole_and_has_no_next_link(owner):
    ids = _create_endpoints(owner, 3)
    response = owner.client.get("/v1/model-endpoints")
    assert [e["id"] for e in response.json()["model_endpoints"]] == list(reversed(ids))
    assert "Link" not in response.headers


def test_offset_and_filters_compose(owner):
    _create_endpoints(owner, 4)
    response = owner.client.get("/v1/model-endpoints?order_by=oldest&limit=2&offset=1")
    assert [e["name"] for e in response.json()["model_endpoints"]] == ["ep-1", "ep-2"]
    assert _next_link(response) == "/v1/model-endpoints?order_by=oldest&limit=2&offset=3"
    assert owner.client.get("/v1/model-endpoints?offset=10").json() == {"model_endpoints": []}


def _walk(persona, path: str, key: str) -> list[str]:
    seen = []
    while path is not None:
        response = persona.client.get(path)
        assert response.status_code == 200, response.content
        seen += [e["id"] for e in response.json()[key]]
        path = _next_link(response)
    return seen


def test_endpoints_created_at_the_same_moment_are_each_paged_once_in_id_order(owner):
    ids = _create_endpoints(owner, 5)
    ModelEndpoint.objects.filter(pk__in=ids).update(created_at=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))
    assert _walk(owner, "/v1/model-endpoints?limit=2", "model_endpoints") == sorted(ids, reverse=True)
    assert _walk(owner, "/v1/model-endpoints?limit=2&order_by=oldest", "model_endpoints") == sorted(ids)
    assert _walk(owner, "/v1/hosted_inference/endpoints?limit=2", "endpoints") == sorted(ids, reverse=True)


@pytest.mark.parametrize("path", [
    "/v1/model-endpoints", "/v1/model-endpoints?name=ep-1", "/v1/hosted_inference/endpoints",
    "/v1/model-endpoints/{id}", "/v1/hosted_inference/endpoints/ep-1",
])
def test_endpoints_are_read_with_their_replica_counts_in_one_query(owner, path):
    ids = _create_endpoints(owner, 3)
    for state in (Replica.State.READY, Replica.State.STARTING):
        Replica.objects.create(owner_kind=Replica.Owner.ENDPOINT, owner_id=ids[1], runtime="local", state=state)
    path = path.format(id=ids[1])
    owner.client.get(path)  # the key's first use also records when it was used
    with CaptureQueriesContext(connection) as captured:
        response = owner.client.get(path)
    assert response.status_code == 200, response.content
    assert len(captured) == 2, [q["sql"] for q in captured]  # the key, then the endpoints
    answer = response.json()
    items = answer.get("model_endpoints") or answer.get("endpoints") or [answer]
    counts = [e.get("deployment_state") or e["worker_settings"] for e in items if e["id"] == ids[1]]
    assert [(c["available_workers"], c["unavailable_workers"]) for c in counts] == [(1, 1)]


@pytest.mark.parametrize("query, param", [
    ("limit=0", "limit"), (f"limit={MAX_PAGE_SIZE + 1}", "limit"), ("limit=ten", "limit"), ("limit=-1", "limit"),
    ("offset=-1", "offset"), ("offset=1.5", "offset"),
])
@pytest.mark.parametrize("route", [
    "/v1/model-endpoints", "/v1/hosted_inference/endpoints", "/v1/model-bundles", "/v2/model-bundles",
    "/v1/hosted_inference/model_bundle", "/v1/files", "/v1/docker-image-batch-jobs", "/v1/triggers",
    "/v1/docker-image-batch-job-bundles",
])
def test_bad_page_parameters_are_refused_naming_them(owner, route, query, param):
    response = owner.client.get(f"{route}?{query}")
    assert 400 <= response.status_code < 500, (route, response.content)
    assert param in response.content.decode(), response.content


def test_bundle_lists_page_too(owner):
    for i in range(3):
        make_bundle(owner.team, name=f"model-{i}")
    first = owner.client.get("/v1/model-bundles?limit=2")
    assert len(first.json()["model_bundles"]) == 2
    rest = owner.client.get(_next_link(first))
    assert len(rest.json()["model_bundles"]) == 1 and "Link" not in rest.headers


def test_a_page_costs_the_same_queries_whatever_its_size(owner):
    _create_endpoints(owner, 2)

    def queries(limit: int) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert owner.client.get(f"/v1/model-endpoints?limit={limit}").status_code == 200
        return len(captured)

    small = queries(1)
    _create_endpoints(owner, 10, start=2)
    assert queries(12) == small


@pytest.mark.parametrize("route", ["/v1/model-bundles", "/v2/model-bundles", "/v1/hosted_inference/model_bundle"])
def test_a_page_of_bundles_costs_the_same_queries_whatever_its_size(owner, route):
    def queries(limit: int) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert owner.client.get(f"{route}?limit={limit}").status_code == 200
        return len(captured)

    make_bundle(owner.team, name="model-0")
    queries(1)  # the key's first use also records when it was used
    small = queries(1)
    for i in range(1, 6):
        make_bundle(owner.team, name=f"model-{i}")
    assert queries(6) == small

"""The isolation matrix: every API route the URL resolver serves (native and legacy dialect)
against every persona: the owner and a teammate (their success codes), a member of another
team, no key, a revoked key, and a user removed from the team (their key stops working at
once). A new route fails test_every_served_route_is_classified until it is added to ROUTES.

Nobody outside the team ever sees or changes the team's objects: after each refused request
the team's rows are as they were, and no answer names an object of the team that the request
did not name itself.
"""

from __future__ import annotations

import base64
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.apps import apps
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from tests.test_contract import World

API_PREFIXES = ("v1/", "v2/")
# Routes of the API that take no key, so neither this matrix nor the key-auth schema has them:
# a signed store URL (upload PUT, download GET), where the token in the path is the credential,
# checked by bundles.store (tests/test_store.py tries tampering, expiry and replay).
NOT_KEY_AUTH = {("*", "/v1/store/objects/{token}")}

OWN = "own"  # acts on the caller's own team only: a list, or a create that names nothing of another team
FOREIGN = "foreign"  # names the team's object: another team gets 404 (or the 422 naming the field in `outsider`)
STAFF = "staff"  # server administration: 403 for every key of a non-staff user

Request = tuple[str, object, str]  # url, body, format


@dataclass
class Route:
    build: Callable[[World, int], Request]
    kind: str
    ok: tuple[int, ...] = (200,)
    outsider: tuple[int, ...] = (404,)


def _json(url: str, body=None) -> Callable[[World, int], Request]:
    return lambda world, n: (url.format(w=world, n=n), body(world, n) if callable(body) else body, "json")


def _fresh_file(world: World, n: int) -> str:
    return world.ok("post", "/v1/files", {"file": SimpleUploadedFile(f"m{n}.txt", b"x")}, format="multipart")["id"]


def _fresh_endpoint(world: World, n: int) -> str:
    return world.ok("post", "/v1/model-endpoints", world.endpoint_body(name=f"matrix-doomed-{n}"))[
        "endpoint_creation_task_id"
    ]


def _fresh_bundle(world: World, n: int) -> str:
    world.ok("post", "/v1/model-bundles", world.bundle_v1_body(name=f"matrix-doomed-{n}"))
    return f"matrix-doomed-{n}"


def _fresh_trigger(world: World, n: int) -> str:
    return world.ok("post", "/v1/triggers", world.trigger_body(f"matrix-doomed-{n}"))["trigger_id"]


def _fresh_batch_job(world: World, n: int) -> str:
    return world.ok("post", "/v1/batch-jobs", world.batch_body())["job_id"]


def _fresh_image_job(world: World, n: int) -> str:
    return world.ok("post", "/v1/docker-image-batch-jobs", world.image_job_body())["job_id"]


def _legacy_endpoint_body(world: World, n: int) -> dict:
    return {"endpoint_name": f"matrix-legacy-{n}", "bundle_name": "contract-model", "cpus": 1, "memory": "1Gi",
            "storage": None, "gpus": 0, "min_workers": 0, "max_workers": 1, "per_worker": 1,
            "endpoint_type": "async", "post_inference_hooks": None, "labels": {}}


def _legacy_bundle_body(world: World, n: int) -> dict:
    return {"packaging_type": "cloudpickle", "bundle_name": f"matrix-legacy-{n}", "location": world.bundle_location,
            "bundle_metadata": {}, "requirements": [], "env_params": {"framework_type": "pytorch",
                                                                     "pytorch_image_tag": "1.7"}, "app_config": None}


def _multipart(url: str, fields: Callable[[World, int], dict]) -> Callable[[World, int], Request]:
    return lambda world, n: (url, fields(world, n), "multipart")


TASK = {"args": {"x": 1}}
E = "{w.endpoint_id}"
ROUTES: dict[tuple[str, str], Route] = {
    # Bundles, native.
    ("GET", "/v1/model-bundles"): Route(_json("/v1/model-bundles"), OWN),
    ("POST", "/v1/model-bundles"): Route(
        _json("/v1/model-bundles", lambda w, n: w.bundle_v1_body(name=f"matrix-{n}")), FOREIGN, outsider=(404, 422)),
    ("GET", "/v1/model-bundles/latest"): Route(_json("/v1/model-bundles/latest?model_name=contract-model"), FOREIGN),
    ("POST", "/v1/model-bundles/clone-with-changes"): Route(
        _json("/v1/model-bundles/clone-with-changes", lambda w, n: {"original_model_bundle_id": w.bundle_id}), FOREIGN),
    ("POST", "/v1/model-bundles/upload"): Route(
        _multipart("/v1/model-bundles/upload", lambda w, n: {"file": SimpleUploadedFile("b.pkl", b"\x80\x04N."),
                                                              "name": f"matrix-up-{n}"}), OWN),
    ("GET", "/v1/model-bundles/{model_bundle_id}"): Route(_json("/v1/model-bundles/{w.bundle_id}"), FOREIGN),
    ("GET", "/v2/model-bundles"): Route(_json("/v2/model-bundles"), OWN),
    ("POST", "/v2/model-bundles"): Route(
        _json("/v2/model-bundles", lambda w, n: w.bundle_v2_body(name=f"matrix-v2-{n}")), FOREIGN, outsider=(404, 422)),
    ("GET", "/v2/model-bundles/latest"): Route(_json("/v2/model-bundles/latest?model_name=contract-model"), FOREIGN),
    ("POST", "/v2/model-bundles/clone-with-changes"): Route(
        _json("/v2/model-bundles/clone-with-changes", lambda w, n: {"original_model_bundle_id": w.bundle_id}), FOREIGN),
    ("GET", "/v2/model-bundles/{model_bundle_id}"): Route(_json("/v2/model-bundles/{w.bundle_id}"), FOREIGN),
    # Files and signed upload URLs.
    ("GET", "/v1/files"): Route(_json("/v1/files"), OWN),
    ("POST", "/v1/files"): Route(_multipart("/v1/files", lambda w, n: {"file": SimpleUploadedFile("f.txt", b"x")}), OWN),
    ("GET", "/v1/files/{file_id}"): Route(_json("/v1/files/{w.file_id}"), FOREIGN),
    ("DELETE", "/v1/files/{file_id}"): Route(lambda w, n: (f"/v1/files/{_fresh_file(w, n)}", None, "json"), FOREIGN),
    ("GET", "/v1/files/{file_id}/content"): Route(_json("/v1/files/{w.file_id}/content"), FOREIGN),
    ("POST", "/v1/hosted_inference/model_bundle_upload"): Route(_json("/v1/hosted_inference/model_bundle_upload", {}), OWN),
    ("POST", "/v1/hosted_inference/batch_task_input_upload"): Route(
        _json("/v1/hosted_inference/batch_task_input_upload", {}), OWN),
    # Bundles, legacy dialect.
    ("GET", "/v1/hosted_inference/model_bundle"): Route(_json("/v1/hosted_inference/model_bundle"), OWN),
    ("POST", "/v1/hosted_inference/model_bundle"): Route(
        _json("/v1/hosted_inference/model_bundle", _legacy_bundle_body), FOREIGN, outsider=(404, 422)),
    ("POST", "/v1/hosted_inference/model_bundle/clone_with_changes"): Route(
        _json("/v1/hosted_inference/model_bundle/clone_with_changes",
              lambda w, n: {"existing_bundle_name": "contract-model", "new_bundle_name": f"matrix-clone-{n}"}), FOREIGN),
    ("GET", "/v1/hosted_inference/model_bundle/{name}"): Route(_json("/v1/hosted_inference/model_bundle/contract-model"),
                                                               FOREIGN),
    ("DELETE", "/v1/hosted_inference/model_bundle/{name}"): Route(
        lambda w, n: (f"/v1/hosted_inference/model_bundle/{_fresh_bundle(w, n)}", None, "json"), FOREIGN),
    # Endpoints, native.
    ("GET", "/v1/model-endpoints"): Route(_json("/v1/model-endpoints"), OWN),
    ("POST", "/v1/model-endpoints"): Route(
        _json("/v1/model-endpoints", lambda w, n: w.endpoint_body(name=f"matrix-{n}")), FOREIGN, outsider=(404, 422)),
    ("GET", "/v1/model-endpoints-schema.json"): Route(_json("/v1/model-endpoints-schema.json"), OWN),
    ("GET", "/v1/model-endpoints-api"): Route(_json("/v1/model-endpoints-api"), OWN),
    ("GET", "/v1/model-endpoints/{endpoint_id}"): Route(_json(f"/v1/model-endpoints/{E}"), FOREIGN),
    ("PUT", "/v1/model-endpoints/{endpoint_id}"): Route(_json(f"/v1/model-endpoints/{E}", {"max_workers": 2}), FOREIGN),
    ("DELETE", "/v1/model-endpoints/{endpoint_id}"): Route(
        lambda w, n: (f"/v1/model-endpoints/{_fresh_endpoint(w, n)}", None, "json"), FOREIGN),
    ("POST", "/v1/model-endpoints/{endpoint_id}/restart"): Route(_json(f"/v1/model-endpoints/{E}/restart", {}), FOREIGN),
    # Tasks, native. No replica runs here: a sync task reaches its endpoint and times out (504).
    ("POST", "/v1/sync-tasks"): Route(_json(f"/v1/sync-tasks?model_endpoint_id={E}", TASK), FOREIGN, ok=(504,)),
    ("POST", "/v1/async-tasks"): Route(_json(f"/v1/async-tasks?model_endpoint_id={E}", TASK), FOREIGN),
    ("POST", "/v1/streaming-tasks"): Route(
        lambda w, n: (f"/v1/streaming-tasks?model_endpoint_id={w.streaming_endpoint_id}", TASK, "json"), FOREIGN),
    ("GET", "/v1/async-tasks/{task_id}"): Route(_json("/v1/async-tasks/{w.task_id}"), FOREIGN),
    ("GET", "/v1/task-results/{task_id}"): Route(_json("/v1/task-results/{w.task_id}"), FOREIGN,
                                                 ok=(404,)),  # the owner's task has no pickled result
    ("GET", "/v1/hosted_inference/endpoints/creation_logs/{name}"): Route(
        _json("/v1/hosted_inference/endpoints/creation_logs/contract-endpoint"), FOREIGN),
    # Endpoints and tasks, legacy dialect.
    ("GET", "/v1/hosted_inference/endpoints"): Route(_json("/v1/hosted_inference/endpoints"), OWN),
    ("POST", "/v1/hosted_inference/endpoints"): Route(
        _json("/v1/hosted_inference/endpoints", _legacy_endpoint_body), FOREIGN, outsider=(404, 422)),
    ("GET", "/v1/hosted_inference/endpoints/{name}"): Route(_json("/v1/hosted_inference/endpoints/contract-endpoint"),
                                                            FOREIGN),
    ("PUT", "/v1/hosted_inference/endpoints/{name}"): Route(
        _json("/v1/hosted_inference/endpoints/contract-endpoint", {"max_workers": 2}), FOREIGN),
    ("DELETE", "/v1/hosted_inference/endpoints/{name}"): Route(
        lambda w, n: (f"/v1/hosted_inference/endpoints/{_fresh_legacy_endpoint(w, n)}", None, "json"), FOREIGN),
    ("POST", "/v1/hosted_inference/task_sync/{endpoint_name}"): Route(
        _json("/v1/hosted_inference/task_sync/contract-endpoint", TASK), FOREIGN, ok=(504,)),
    ("POST", "/v1/hosted_inference/task_async/{endpoint_name}"): Route(
        _json("/v1/hosted_inference/task_async/contract-endpoint", TASK), FOREIGN),
    ("GET", "/v1/hosted_inference/endpoints/{endpoint_name}/task_async/{task_id}"): Route(
        _json("/v1/hosted_inference/endpoints/contract-endpoint/task_async/{w.task_id}"), FOREIGN),
    ("GET", "/v1/hosted_inference/task/result/{task_id}"): Route(_json("/v1/hosted_inference/task/result/{w.task_id}"),
                                                                 FOREIGN),
    # Batch jobs.
    ("POST", "/v1/batch-jobs"): Route(_json("/v1/batch-jobs", lambda w, n: w.batch_body()), FOREIGN,
                                      outsider=(404, 422)),
    ("POST", "/v1/batch-jobs/upload"): Route(
        _multipart("/v1/batch-jobs/upload", lambda w, n: {"file": SimpleUploadedFile("in.jsonl", b'{"args": 1}\n'),
                                                           "model_bundle_id": w.bundle_id}), FOREIGN,
        outsider=(404, 422)),
    ("GET", "/v1/batch-jobs/{batch_job_id}"): Route(_json("/v1/batch-jobs/{w.batch_job_id}"), FOREIGN),
    ("PUT", "/v1/batch-jobs/{batch_job_id}"): Route(
        lambda w, n: (f"/v1/batch-jobs/{_fresh_batch_job(w, n)}", {"cancel": True}, "json"), FOREIGN),
    ("GET", "/v1/batch-jobs/{batch_job_id}/result"): Route(_json("/v1/batch-jobs/{w.batch_job_id}/result"), FOREIGN,
                                                           ok=(404,)),  # pending: no results file yet
    ("GET", "/v1/hosted_inference/batch_job/{key}"): Route(_json("/v1/hosted_inference/batch_job/{w.batch_job_id}"),
                                                           FOREIGN),
    ("POST", "/v1/hosted_inference/batch_job/{key}"): Route(
        _json("/v1/hosted_inference/batch_job/contract-model",
              lambda w, n: {"input_path": w.batch_input, "serialization_format": "json", "labels": None}),
        FOREIGN, outsider=(404, 422)),
    # Docker image batch jobs and triggers.
    ("GET", "/v1/docker-image-batch-job-bundles"): Route(_json("/v1/docker-image-batch-job-bundles"), OWN),
    ("POST", "/v1/docker-image-batch-job-bundles"): Route(
        _json("/v1/docker-image-batch-job-bundles", lambda w, n: {**w.image_bundle_body(), "name": f"matrix-{n}"}), OWN),
    ("GET", "/v1/docker-image-batch-job-bundles/latest"): Route(
        _json("/v1/docker-image-batch-job-bundles/latest?bundle_name=contract-image-job"), FOREIGN),
    ("GET", "/v1/docker-image-batch-job-bundles/{bundle_id}"): Route(
        _json("/v1/docker-image-batch-job-bundles/{w.image_bundle_id}"), FOREIGN),
    ("GET", "/v1/docker-image-batch-jobs"): Route(_json("/v1/docker-image-batch-jobs"), OWN),
    ("POST", "/v1/docker-image-batch-jobs"): Route(
        _json("/v1/docker-image-batch-jobs", lambda w, n: w.image_job_body()), FOREIGN, outsider=(404, 422)),
    ("GET", "/v1/docker-image-batch-jobs/{job_id}"): Route(_json("/v1/docker-image-batch-jobs/{w.image_job_id}"), FOREIGN),
    ("PUT", "/v1/docker-image-batch-jobs/{job_id}"): Route(
        lambda w, n: (f"/v1/docker-image-batch-jobs/{_fresh_image_job(w, n)}", {"cancel": True}, "json"), FOREIGN),
    ("GET", "/v1/docker-image-batch-jobs/{job_id}/logs"): Route(
        _json("/v1/docker-image-batch-jobs/{w.image_job_id}/logs"), FOREIGN),
    ("GET", "/v1/triggers"): Route(_json("/v1/triggers"), OWN),
    ("POST", "/v1/triggers"): Route(
        _json("/v1/triggers", lambda w, n: w.trigger_body(f"matrix-{n}")), FOREIGN, outsider=(404, 422)),
    ("GET", "/v1/triggers/{trigger_id}"): Route(_json("/v1/triggers/{w.trigger_id}"), FOREIGN),
    ("PUT", "/v1/triggers/{trigger_id}"): Route(_json("/v1/triggers/{w.trigger_id}", {"cron_schedule": "5 * * * *"}),
                                                FOREIGN),
    ("DELETE", "/v1/triggers/{trigger_id}"): Route(
        lambda w, n: (f"/v1/triggers/{_fresh_trigger(w, n)}", None, "json"), FOREIGN),
    # Hosts: staff only (tests/test_hosts.py covers the staff user's own answers).
    ("GET", "/v1/hosts"): Route(_json("/v1/hosts"), STAFF, ok=(403,)),
    ("POST", "/v1/hosts"): Route(_json("/v1/hosts", {"name": "box", "docker_url": "tcp://127.0.0.1:1"}), STAFF, ok=(403,)),
    ("GET", "/v1/hosts/{host_id}"): Route(_json("/v1/hosts/1"), STAFF, ok=(403,)),
    ("PATCH", "/v1/hosts/{host_id}"): Route(_json("/v1/hosts/1", {"draining": True}), STAFF, ok=(403,)),
    ("DELETE", "/v1/hosts/{host_id}"): Route(_json("/v1/hosts/1"), STAFF, ok=(403,)),
}


def _fresh_legacy_endpoint(world: World, n: int) -> str:
    _fresh_endpoint(world, n)
    return f"matrix-doomed-{n}"


def served_routes() -> set[tuple[str, str]]:
    """(METHOD, /path/{param}) of every API view the URL resolver serves."""
    routes: set[tuple[str, str]] = set()

    def walk(patterns, prefix: str):
        for pattern in patterns:
            text = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, text)
            elif isinstance(pattern, URLPattern) and text.startswith(API_PREFIXES):
                path = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", text)
                view = getattr(pattern.callback, "view_class", None)
                methods = [m for m in ("get", "post", "put", "patch", "delete") if view and hasattr(view, m)]
                routes.update({(m.upper(), path) for m in methods} or {("*", path)})

    walk(get_resolver().url_patterns, "")
    return routes


def test_every_served_route_is_classified():
    served = served_routes() - NOT_KEY_AUTH
    assert served - set(ROUTES) == set(), "classify the new route in ROUTES"
    assert set(ROUTES) - served == set(), "ROUTES names a route no longer served"


def team_rows(team) -> dict[str, list]:
    """Every row that belongs to `team`, as plain values."""
    rows = {}
    for model in apps.get_models():
        if any(field.name == "team" for field in model._meta.fields):
            rows[model._meta.label] = sorted(map(repr, model.objects.filter(team=team).values()))
    return rows


def _client(key: str | None, *, scheme: str = "Bearer") -> APIClient:
    # An address of its own: its invalid keys must not lock other tests out of 127.0.0.1.
    client = APIClient(REMOTE_ADDR="10.0.0.10")
    if key and scheme == "Basic":  # what the public client sends: the key as username
        client.credentials(HTTP_AUTHORIZATION="Basic " + base64.b64encode(f"{key}:".encode()).decode())
    elif key:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def _call(client: APIClient, method: str, request: Request):
    url, body, fmt = request
    response = getattr(client, method.lower())(url, body, format=fmt)
    if response.streaming:
        response.close()  # a stream of an endpoint with no replica: the gateway lets go of it
    return response


@pytest.mark.django_db(transaction=True)
def test_isolation_matrix(owner, teammate, outsider, settings):
    from accounts.models import ApiKey, Membership
    from accounts.services import api_key_create, api_key_revoke, team_get_or_create_for_user

    settings.LAUNCH_RUNTIME = "docker"  # docker-image batch jobs need it (nothing runs here)
    settings.SYNC_TASK_TIMEOUT_SECONDS = 0.2
    settings.INVALID_KEY_LIMIT = 10_000  # the refused personas send hundreds (throttling: tests/test_throttling.py)
    world = World(owner)
    world.streaming_endpoint_id = world.ok(
        "post", "/v1/model-endpoints", world.endpoint_body(name="matrix-stream", endpoint_type="streaming", min_workers=1)
    )["endpoint_creation_task_id"]
    revoked_user, _ = team_get_or_create_for_user(username="rita", team_name=owner.team.name)
    revoked_key_row, revoked_key = api_key_create(user=revoked_user, team=owner.team)
    api_key_revoke(api_key=revoked_key_row)
    removed_user, _ = team_get_or_create_for_user(username="remy", team_name=owner.team.name)
    _, removed_key = api_key_create(user=removed_user, team=owner.team)
    assert _client(removed_key).get("/v1/model-endpoints").status_code == 200  # worked until the removal
    Membership.objects.filter(user=removed_user, team=owner.team).delete()
    assert ApiKey.objects.filter(user=removed_user, revoked_at=None).exists()  # the key itself lives on

    teammate_basic = _client(teammate.key, scheme="Basic")  # the owner's client sends Bearer
    refused = {"no key": _client(None), "revoked key": _client(revoked_key), "removed member": _client(removed_key)}
    team_ids = {world.bundle_id, world.endpoint_id, world.task_id, world.batch_job_id, world.image_job_id,
                world.image_bundle_id, world.trigger_id, world.file_id, world.streaming_endpoint_id}
    counter, cells, violations = itertools.count(1), 0, []

    def check(persona: str, method: str, path: str, client: APIClient, expected: tuple[int, ...], *, outside: bool):
        nonlocal cells
        cells += 1
        request = ROUTES[(method, path)].build(world, next(counter))
        before = team_rows(owner.team) if outside else None
        response = _call(client, method, request)
        where = f"{persona}: {method} {request[0]}"
        if response.status_code not in expected:
            violations.append(f"{where} -> {response.status_code} (expected {expected}) {response.content[:200]!r}")
        if outside:
            if team_rows(owner.team) != before:
                violations.append(f"{where} changed the team's objects")
            named = str(request[0]) + repr(request[1])
            seen = [i for i in team_ids if i not in named and not response.streaming and i.encode() in response.content]
            if seen:
                violations.append(f"{where} answered with the team's {seen}")

    for (method, path), route in ROUTES.items():
        for persona, client in refused.items():
            check(persona, method, path, client, (401,), outside=True)
        outsider_codes = (403,) if route.kind == STAFF else (200,) if route.kind == OWN else route.outsider
        check("other team", method, path, outsider.client, outsider_codes, outside=True)
        check("teammate", method, path, teammate_basic, route.ok, outside=False)
        check("owner", method, path, owner.client, route.ok, outside=False)
    assert violations == [], "\n".join(violations)
    assert cells == len(ROUTES) * 6

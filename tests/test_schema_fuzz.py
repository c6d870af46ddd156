"""The served OpenAPI schema (/api/schema/) tells the truth: every API route the URL resolver
serves is in it, with key auth, and schemathesis, generating requests from it against a live
server with a real API key, gets no 5xx and no status code the schema does not declare."""

from __future__ import annotations

import collections
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    status_code_conformance,
)

from tests.test_isolation_matrix import NOT_KEY_AUTH, served_routes


def served_api_paths() -> set[str]:
    return {path for _, path in served_routes()}


def test_every_served_api_route_is_in_the_schema_with_key_auth(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    assert served_api_paths() - set(schema["paths"]) == {path for _, path in NOT_KEY_AUTH}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert {"apiKeyBasic": []} in operation["security"], (method, path)
            assert {"apiKeyBearer": []} in operation["security"], (method, path)
            assert {"401", "404", "422"} <= set(operation["responses"]), (method, path)
    # The inference routes take only a key (no dashboard session) and name their endpoint.
    sync = schema["paths"]["/v1/sync-tasks"]["post"]
    assert sync["security"] == [{"apiKeyBasic": []}, {"apiKeyBearer": []}]
    assert [p["name"] for p in sync["parameters"]] == ["model_endpoint_id"]
    assert "text/event-stream" in schema["paths"]["/v1/streaming-tasks"]["post"]["responses"]["200"]["content"]


SYNC_ROUTES = ("/v1/sync-tasks", "/v1/hosted_inference/task_sync/{endpoint_name}")
# Bounded: the run takes under a minute on two cores. LAUNCH_FUZZ_EXAMPLES=200 for a deeper
# run by hand.
MAX_EXAMPLES = int(os.environ.get("LAUNCH_FUZZ_EXAMPLES", "16"))


def real_parameters(world) -> dict[str, object]:
    """The owner's objects by the parameter names the schema uses (`name` means a different
    object on different paths: see real_value)."""
    return {
        "endpoint_id": world.endpoint_id, "model_endpoint_id": world.endpoint_id, "endpoint_name": "contract-endpoint",
        "model_bundle_id": world.bundle_id, "task_id": world.task_id, "batch_job_id": world.batch_job_id,
        "key": world.batch_job_id, "job_id": world.image_job_id, "bundle_id": world.image_bundle_id,
        "trigger_id": world.trigger_id, "file_id": world.file_id,
    }


def real_value(path: str, name: str, real: dict):
    if name == "name":
        return "contract-model" if "model_bundle" in path else "contract-endpoint"
    return real.get(name)


@pytest.fixture
def invalid_keys_unthrottled(settings, redis_client):
    """ignored_auth sends hundreds of invalid keys from 127.0.0.1: neither this run nor the
    tests after it on this worker may be locked out by them (throttling: test_throttling.py)."""
    from accounts.throttling import PREFIX

    settings.INVALID_KEY_LIMIT = 1_000_000
    yield
    for key in redis_client.scan_iter(f"{PREFIX}badkey:*"):
        redis_client.delete(key)


@pytest.mark.django_db(transaction=True)
def test_generated_requests_get_no_5xx_and_only_declared_statuses(live_server, owner, settings,
                                                                  invalid_keys_unthrottled):
    from tests.test_contract import World

    # A sync task on an endpoint with no replica waits this long, not a minute.
    settings.SYNC_TASK_TIMEOUT_SECONDS = 0.5
    settings.LAUNCH_RUNTIME = "docker"  # docker-image batch jobs need it (nothing runs here)
    real = real_parameters(World(owner))
    loaded = schemathesis.openapi.from_url(live_server.url + "/api/schema/?format=json", timeout=30)
    headers = {"Authorization": f"Bearer {owner.key}"}
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, ignored_auth, negative_data_rejection]
    failures, operations, statuses = {}, 0, []
    # Deletes last, so that they may take the seeded objects (a bundle still in use: 409).
    all_operations = sorted((result.ok() for result in loaded.get_all_operations()), key=lambda o: o.method.upper() == "DELETE")
    for operation in all_operations:
        operations += 1
        # Bodies and parameters that fit the schema, and ones that do not (a hostile client's).
        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

        @given(case=cases, use_real_objects=st.booleans())
        @hypothesis_settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def run(case, use_real_objects):
            # Half the examples name the owner's real objects, so the fuzzed bodies reach the
            # services and not only the 404 of an unknown id.
            if use_real_objects:
                for name in case.path_parameters or {}:
                    value = real_value(case.path, name, real)
                    case.path_parameters[name] = value if value is not None else case.path_parameters[name]
                if case.query and "model_endpoint_id" in case.query:
                    case.query["model_endpoint_id"] = real["model_endpoint_id"]
            response = case.call(base_url=live_server.url, headers=headers, timeout=30)
            statuses.append(response.status_code)
            if response.status_code == 504 and case.path in SYNC_ROUTES:
                # The seeded endpoint has no replica, so a valid sync task times out: the
                # documented 504 (README), which must still be declared and say so.
                assert "did not answer within" in response.json()["detail"]
                case.validate_response(response, checks=[status_code_conformance, content_type_conformance])
            else:
                case.validate_response(response, checks=checks)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - every operation's failure is collected and shown
            failures[operation.label] = str(exc)[:2000]
    assert operations == len(served_routes() - NOT_KEY_AUTH)
    counts = collections.Counter(statuses)
    assert failures == {}, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    assert counts[200] > 0  # the key is real: not a run of 401s


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/v1/model-bundles", "/v2/model-bundles", "/v1/model-endpoints",
                                  "/v1/docker-image-batch-job-bundles"])
def test_an_empty_order_by_is_refused_not_read_as_the_default(owner, path):
    # Found by schemathesis (negative_data_rejection): `?order_by=` was answered 200.
    response = owner.client.get(path, {"order_by": ""})
    assert response.status_code == 422, response.content
    assert response.json()["detail"][0]["loc"] == ["query", "order_by"]


@pytest.mark.django_db
def test_a_sub_millisecond_sync_timeout_times_out_instead_of_blocking_redis(owner, settings):
    # Found by schemathesis: timeout_seconds 5e-324 became BLPOP 0 (Redis: wait forever), and
    # the request answered 503 "Redis is unavailable" once the socket timed out.
    import time

    from tests.test_contract import World

    settings.LAUNCH_RUNTIME = "docker"
    world = World(owner)
    started = time.monotonic()
    response = owner.client.post(
        f"/v1/sync-tasks?model_endpoint_id={world.endpoint_id}", {"args": 1, "timeout_seconds": 5e-324}, format="json"
    )
    assert response.status_code == 504, response.content
    assert time.monotonic() - started < 5


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["/v1/sync-tasks?model_endpoint_id={id}", "/v1/hosted_inference/task_sync/{name}"])
def test_a_task_for_an_endpoint_being_deleted_is_a_409_not_a_retryable_503(owner, settings, route):
    # Found by schemathesis: a sync task after the endpoint's DELETE answered 503, which
    # clients retry; edits and restarts of a deleting endpoint already answered 409.
    from tests.test_contract import World

    settings.LAUNCH_RUNTIME = "docker"
    world = World(owner)
    assert owner.client.delete(f"/v1/model-endpoints/{world.endpoint_id}").status_code == 200
    url = route.format(id=world.endpoint_id, name="contract-endpoint")
    response = owner.client.post(url, {"args": 1}, format="json")
    assert response.status_code == 409, response.content
    assert "being deleted" in response.json()["detail"]


@pytest.mark.django_db
def test_a_form_body_on_a_json_route_is_a_415_not_an_empty_update(owner, settings):
    # Found by schemathesis: a multipart PUT whose part had no name parsed as an empty form,
    # and the trigger update answered 200 having changed nothing.
    from tests.test_contract import World

    settings.LAUNCH_RUNTIME = "docker"
    world = World(owner)
    before = owner.client.get(f"/v1/triggers/{world.trigger_id}").json()
    response = owner.client.generic(
        "PUT", f"/v1/triggers/{world.trigger_id}", b"--b\r\n[1, 2]--b--\r\n", content_type="multipart/form-data; boundary=b"
    )
    assert response.status_code == 415, response.content
    assert response["Content-Type"].startswith("application/json")
    assert owner.client.get(f"/v1/triggers/{world.trigger_id}").json() == before


@pytest.mark.django_db
def test_an_unacceptable_accept_header_is_a_406_the_schema_declares(owner, client):
    # Found by schemathesis: DRF answers 406 to an Accept it cannot meet; the schema did not say so.
    response = owner.client.get("/v1/model-endpoints", HTTP_ACCEPT="text/x-nothing")
    assert response.status_code == 406
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    assert "406" in schema["paths"]["/v1/model-endpoints"]["get"]["responses"]
    assert "406" not in schema["paths"]["/v1/sync-tasks"]["post"]["responses"]
    answered = owner.client.post("/v1/sync-tasks?model_endpoint_id=nope", {"args": 1}, format="json",
                                 HTTP_ACCEPT="text/x-nothing")
    assert answered.status_code == 404  # no negotiation on the task routes


@pytest.mark.django_db
def test_an_empty_host_header_is_a_json_400(owner):
    # Found by schemathesis: `Host:` empty got Django's HTML "Bad Request (400)" page.
    response = owner.client.get("/v1/model-endpoints", HTTP_HOST="")
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/json")
    assert response.json() == {"detail": "Bad request."}

"""Every input bounded: the numbers, names and bodies a hostile client sends answer a 4xx that
names the field (or the limit), never a 500, and leave nothing behind."""

from __future__ import annotations

import json

import pytest

from tests.factories import endpoint_body, make_bundle
from tests.test_batch_api import upload
from tests.test_bundles_api import uploaded_location, v1_body, v2_body

pytestmark = pytest.mark.django_db


def post_raw(persona, path: str, text: str):
    """A JSON body as text: `NaN`, `Infinity` and `1e309` survive no dict on the way."""
    return persona.client.generic("POST", path, text, content_type="application/json")


def named_fields(response) -> set[str]:
    return {".".join(str(part) for part in error["loc"][1:]) for error in response.json()["detail"]}


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("task_expires_seconds", "9223372036854775807"),
        ("queue_message_timeout_seconds", "9223372036854775807"),
        ("min_workers", "1000000000"),
        ("max_workers", "1000000000"),
        ("per_worker", "9223372036854775807"),
        ("gpus", "1000000"),
        ("cpus", '"nan"'),
        ("cpus", '"inf"'),
        ("cpus", "1e309"),
        ("cpus", '"1e12"'),
        ("memory", '"inf"'),
        ("memory", "1e309"),
        ("memory", '"99999Pi"'),
        ("storage", '"nan"'),
        ("name", '"evil\\u202egnp.exe"'),
        ("name", '"two\\nlines"'),
    ],
)
def test_an_out_of_range_endpoint_field_is_422_naming_it(owner, field, raw):
    bundle = make_bundle(owner.team)
    body = json.dumps(endpoint_body(bundle.id, **{field: "PLACEHOLDER"})).replace('"PLACEHOLDER"', raw)
    response = post_raw(owner, "/v1/model-endpoints", body)
    assert response.status_code == 422, response.content
    assert field in named_fields(response)


def test_bare_nan_and_infinity_literals_are_a_malformed_body(owner):
    bundle = make_bundle(owner.team)
    for literal in ("NaN", "Infinity", "-Infinity"):
        body = json.dumps(endpoint_body(bundle.id, cpus="PLACEHOLDER")).replace('"PLACEHOLDER"', literal)
        assert post_raw(owner, "/v1/model-endpoints", body).status_code == 422


def test_an_endpoint_update_is_held_to_the_same_bounds(owner):
    bundle = make_bundle(owner.team)
    created = owner.client.post("/v1/model-endpoints", endpoint_body(bundle.id), format="json")
    endpoint_id = created.json()["endpoint_creation_task_id"]
    for field, raw in (("cpus", '"inf"'), ("task_expires_seconds", "9223372036854775807"), ("max_workers", "100000")):
        response = owner.client.generic(
            "PUT", f"/v1/model-endpoints/{endpoint_id}", f'{{"{field}": {raw}}}', content_type="application/json"
        )
        assert response.status_code == 422, response.content
        assert field in named_fields(response)


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-1", "1e309", "9223372036854775807"])
def test_a_sync_task_timeout_that_is_not_a_sane_number_is_422(owner, raw):
    bundle = make_bundle(owner.team)
    endpoint_id = owner.client.post("/v1/model-endpoints", endpoint_body(bundle.id), format="json").json()[
        "endpoint_creation_task_id"
    ]
    response = post_raw(owner, f"/v1/sync-tasks?model_endpoint_id={endpoint_id}", f'{{"args": {{}}, "timeout_seconds": {raw}}}')
    assert response.status_code == 422, response.content
    assert "timeout_seconds" in named_fields(response)


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("timeout_seconds", "1e309"),
        ("timeout_seconds", "1e12"),
        ("resource_requests.max_workers", "1000000000000"),
        ("resource_requests.per_worker", "1000000000000"),
        ("resource_requests.cpus", '"nan"'),
        ("resource_requests.memory", '"inf"'),
    ],
)
def test_an_out_of_range_batch_job_field_is_422_naming_it(owner, field, raw):
    bundle = make_bundle(owner.team)
    name = field.rpartition(".")[2]
    requests = {"max_workers": 1}
    body = {"model_bundle_id": bundle.id, "input_path": "s3://x/y", "serialization_format": "JSON", "labels": {}}
    if field.startswith("resource_requests."):
        requests[name] = "PLACEHOLDER"
    else:
        body[name] = "PLACEHOLDER"
    body["resource_requests"] = requests
    response = post_raw(owner, "/v1/batch-jobs", json.dumps(body).replace('"PLACEHOLDER"', raw))
    assert response.status_code == 422, response.content
    assert field in named_fields(response)


@pytest.mark.parametrize(
    "flavor", [{"flavor": {}}, {"flavor": []}, {"flavor": 1}, {"flavor": None}, "cloudpickle_artifact", None]
)
def test_a_bundle_flavor_of_the_wrong_shape_is_422(owner, flavor):
    response = owner.client.post("/v2/model-bundles", {"name": "m", "flavor": flavor}, format="json")
    assert response.status_code == 422, response.content


@pytest.mark.parametrize("name", ["two\nlines", "evil\u202egnp.exe", "tab\there", "nul\x00", "has space", "-dash", "x" * 201])
def test_a_bundle_name_follows_the_endpoint_name_rule(owner, name):
    location = uploaded_location(owner, b"bytes")
    for path, body in (("/v1/model-bundles", v1_body(location, name=name)), ("/v2/model-bundles", {**v2_body(location), "name": name})):
        response = owner.client.post(path, body, format="json")
        assert response.status_code == 422, (path, response.content)
        assert "name" in named_fields(response)
    make_bundle(owner.team, name="original")
    response = owner.client.post(
        "/v1/hosted_inference/model_bundle/clone_with_changes",
        {"existing_bundle_name": "original", "new_bundle_name": name}, format="json",
    )
    assert response.status_code == 422, response.content


def test_the_dashboard_refuses_non_finite_resources_next_to_the_field(owner, client):
    from tests.test_dashboard import deploy_form, field_errors

    client.force_login(owner.user)
    bundle = make_bundle(owner.team)
    for fields, field in (({"cpus": "nan"}, "cpus"), ({"cpus": "inf"}, "cpus"), ({"memory": "1e309"}, "memory"),
                          ({"max_workers": 10**9}, "max_workers")):
        response = client.post("/endpoints/new/", deploy_form(bundle, **fields))
        assert response.status_code == 422, (fields, response.status_code)
        assert field_errors(response, field), fields


@pytest.mark.parametrize(
    "path",
    ["/v1/model-endpoints", "/v2/model-bundles", "/v1/async-tasks?model_endpoint_id=x",
     "/v1/hosted_inference/task_sync/x", "/v1/batch-jobs", "/accounts/login/", "/endpoints/new/"],
)
def test_an_oversized_body_is_a_json_413_with_the_limit_on_every_route(owner, path, settings):
    body = b'{"args": "' + b"x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1) + b'"}'
    response = owner.client.generic("POST", path, body, content_type="application/json")
    assert response.status_code == 413, response.content[:300]
    assert response.json()["limit_bytes"] == settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    assert str(settings.DATA_UPLOAD_MAX_MEMORY_SIZE) in response.json()["detail"]


def test_an_oversized_form_field_in_a_multipart_upload_is_a_json_413(owner, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = upload(owner.client, make_bundle(owner.team).id, labels=json.dumps({"k": "v" * 5000}))
    assert response.status_code == 413, response.content[:300]
    assert response.json()["limit_bytes"] == 1000


def test_a_refused_batch_upload_leaves_no_file_and_no_row(owner, settings):
    from bundles.models import StoredObject

    bundle = make_bundle(owner.team)
    before = {path for path in settings.BUNDLE_STORE_DIR.rglob("*") if path.is_file()}
    for content, fields in ((b"this is not json\n", {}), (b'{"args": {"x": 1}}\n', {"timeout_seconds": "1e12"})):
        response = upload(owner.client, bundle.id, content, **fields)
        assert response.status_code == 422, response.content
    after = {path for path in settings.BUNDLE_STORE_DIR.rglob("*") if path.is_file()}
    assert after == before
    assert not StoredObject.objects.filter(team=owner.team, kind="batch_input").exists()


def test_a_form_with_too_many_fields_is_a_json_400_not_an_html_page(owner, client):
    from urllib.parse import urlencode

    from django.test import Client

    client = Client(enforce_csrf_checks=True)  # CSRF reads the form before the view
    client.force_login(owner.user)
    body = urlencode({f"f{i}": "x" for i in range(1500)})
    for response in (
        client.post("/endpoints/new/", body, content_type="application/x-www-form-urlencoded"),
        owner.client.generic("POST", "/v1/batch-jobs/upload", body, content_type="application/x-www-form-urlencoded"),
    ):
        assert response.status_code in (400, 415, 422), response.content[:200]
        assert response["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("fields", [{"gpus": 10**12}, {"gpu_device_ids": [str(i) for i in range(1000)]}])
def test_a_host_with_an_absurd_gpu_count_is_422(owner, fields):
    owner.user.is_staff = True
    owner.user.save()
    body = {"name": "big", "docker_url": "unix:///tmp/launch-no-such-docker.sock", **fields}
    response = owner.client.post("/v1/hosts", body, format="json")
    assert response.status_code == 422, response.content[:300]
    assert set(fields) & named_fields(response)

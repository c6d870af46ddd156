"""The native API against the reference contract (docs/reference/launch-openapi.json, a copy of
the design team's shared/reference file, kept in the repository so CI always has it).

Every path and method of the spec is either served, with a valid request whose answer must
carry every field the spec marks required (with the spec's types), or listed in NOT_SERVED
and answered 404/405. For each request body of a served route, dropping a required field or
sending a value of the wrong type is a 422 naming that field, except for the fields listed in
IGNORED_FIELDS, which this server accepts and does not use.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.stack import api_for

SPEC_PATH = Path(settings.BASE_DIR) / "docs/reference/launch-openapi.json"

# Routes of the contract this server does not serve (it answers 404 or 405 for them).
NOT_SERVED: set[tuple[str, str]] = set()

# Request fields of the contract that this server accepts and ignores, so a wrong type in
# them is not rejected (every endpoint and task field is now honoured or refused:
# tests/test_endpoint_fields.py walks them).
IGNORED_FIELDS = {"schema_location"}

# Request fields refused whatever their value (this server takes no pickled inputs): a 422
# that names the feature, not necessarily the field.
UNSUPPORTED_FIELDS = {"cloudpickle"}

# Bodies the spec rejects and this server still accepts, each with its reason; they fail
# loudly (strict xfail) once fixed, so this list only shrinks.
KNOWN_LENIENT: dict[tuple[str, str, str, str], str] = {}


def load_spec() -> dict:
    return json.loads(SPEC_PATH.read_text())


def spec_routes() -> list[tuple[str, str]]:
    methods = ("get", "post", "put", "delete", "patch")
    return sorted((m, p) for p, ops in load_spec()["paths"].items() for m in ops if m in methods)


class Schemas:
    """Just enough of OpenAPI 3.0 to check answers: $ref, nullable, anyOf/oneOf/allOf, enum,
    required and the JSON types."""

    def __init__(self, spec: dict):
        self.spec = spec

    def resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            extra = {k: v for k, v in schema.items() if k != "$ref"}
            name = schema["$ref"].rsplit("/", 1)[1]
            schema = {**self.spec["components"]["schemas"][name], **extra}
        return schema

    def errors(self, value, schema: dict, where: str = "$") -> list[str]:
        schema = self.resolve(schema)
        if value is None:
            if schema.get("nullable") or schema.get("type") == "null" or not schema:
                return []
            if any(self.resolve(s).get("type") == "null" for s in schema.get("anyOf", [])):
                return []
            return [f"{where}: null where the spec does not allow it"]
        for key in ("anyOf", "oneOf"):
            if key in schema:
                branches = [self.errors(value, s, where) for s in schema[key]]
                if not any(not b for b in branches):
                    return [f"{where}: matches none of {key}: {min(branches, key=len)}"]
        for sub in schema.get("allOf", []):
            found = self.errors(value, sub, where)
            if found:
                return found
        if "enum" in schema and value not in schema["enum"]:
            return [f"{where}: {value!r} is not one of {schema['enum']}"]
        kind = schema.get("type")
        checks = {
            "string": lambda v: isinstance(v, str),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "boolean": lambda v: isinstance(v, bool),
            "object": lambda v: isinstance(v, dict),
            "array": lambda v: isinstance(v, list),
        }
        if kind in checks and not checks[kind](value):
            return [f"{where}: {type(value).__name__} where the spec says {kind}"]
        found: list[str] = []
        if kind == "object" or "properties" in schema:
            for name in schema.get("required", []):
                if name not in value:
                    found.append(f"{where}.{name}: required by the spec, missing")
            for name, sub in schema.get("properties", {}).items():
                if name in value:
                    found.extend(self.errors(value[name], sub, f"{where}.{name}"))
        if kind == "array":
            for index, item in enumerate(value):
                found.extend(self.errors(item, schema.get("items", {}), f"{where}[{index}]"))
        return found

    def response_schema(self, method: str, path: str) -> dict:
        response = self.spec["paths"][path][method]["responses"]["200"]
        return response.get("content", {}).get("application/json", {}).get("schema", {})

    def request_schema(self, method: str, path: str) -> dict | None:
        body = self.spec["paths"][path][method].get("requestBody")
        if body is None:
            return None
        content = body["content"]
        return self.resolve((content.get("application/json") or content["multipart/form-data"])["schema"])

    def request_format(self, method: str, path: str) -> str:
        """How the test client encodes the body: "multipart" for a form upload, else "json"."""
        body = self.spec["paths"][path][method].get("requestBody", {})
        return "multipart" if "multipart/form-data" in body.get("content", {}) else "json"

    def wrong_value(self, schema: dict):
        """A value of the wrong type for `schema` that any validator rejects, or None when
        every value is allowed."""
        schema = self.resolve(schema)
        branches = [self.resolve(s) for s in schema.get("anyOf", []) + schema.get("oneOf", [])]
        kinds = {schema.get("type")} | {b.get("type") for b in branches}
        if schema.get("contentMediaType") == "application/octet-stream" or schema.get("format") == "binary":
            return "a text field, not a file part"  # a form upload's file sent as a plain value
        if "enum" in schema or any("enum" in b for b in branches):
            return "not-one-of-the-choices"
        if kinds & {"string"}:
            return {"not": "a string"}
        if kinds & {"integer", "number"}:
            return "not a number"
        if kinds & {"boolean"}:
            return "not-a-boolean"
        if kinds & {"object", "array"} or branches:
            return 12345
        return None


@pytest.fixture(scope="module")
def schemas() -> Schemas:
    return Schemas(load_spec())


class World:
    """Objects of the owner's team for the valid requests: a bundle (uploaded through the
    signed URL), an async endpoint, a task, a batch job."""

    def __init__(self, persona):
        self.client = persona.client
        self.bundle_location = self.upload(b"\x80\x04N.", "/v1/hosted_inference/model_bundle_upload")
        self.bundle_id = self.ok("post", "/v1/model-bundles", self.bundle_v1_body())["model_bundle_id"]
        self.endpoint_id = self.ok("post", "/v1/model-endpoints", self.endpoint_body())["endpoint_creation_task_id"]
        self.task_id = self.ok("post", f"/v1/async-tasks?model_endpoint_id={self.endpoint_id}", {"args": {"x": 1}})[
            "task_id"
        ]
        self.batch_input = self.upload(b'[{"args": {"x": 1}}]', "/v1/hosted_inference/batch_task_input_upload")
        self.batch_job_id = self.ok("post", "/v1/batch-jobs", self.batch_body())["job_id"]
        self.image_bundle_id = self.ok("post", "/v1/docker-image-batch-job-bundles", self.image_bundle_body())[
            "docker_image_batch_job_bundle_id"
        ]
        self.image_job_id = self.ok("post", "/v1/docker-image-batch-jobs", self.image_job_body())["job_id"]
        self.trigger_id = self.ok("post", "/v1/triggers", self.trigger_body())["trigger_id"]
        self.file_id = self.ok("post", "/v1/files", self.file_body(), format="multipart")["id"]

    def file_body(self) -> dict:
        return {"file": SimpleUploadedFile("contract.txt", b"some text\n")}

    def image_bundle_body(self) -> dict:
        return {"name": "contract-image-job", "image_repository": "acme/job", "image_tag": "1", "command": ["run"],
                "env": {}, "mount_location": "/launch/job.json", "resource_requests": {"cpus": 1}, "public": False}

    def image_job_body(self) -> dict:
        return {"docker_image_batch_job_bundle_id": self.image_bundle_id, "job_config": {"a": 1}, "labels": {},
                "resource_requests": {"memory": "1Gi"}, "override_job_max_runtime_s": 60}

    def trigger_body(self, name: str = "contract-trigger") -> dict:
        return {"name": name, "cron_schedule": "0 * * * *", "bundle_id": self.image_bundle_id,
                "default_job_config": {}, "default_job_metadata": {}}

    def ok(self, method: str, url: str, body: dict | None = None, format: str = "json") -> dict:
        response = getattr(self.client, method)(url, body, format=format)
        assert response.status_code == 200, (method, url, response.content)
        return response.json()

    def upload(self, data: bytes, route: str) -> str:
        target = self.ok("post", route, {})
        path = target["signedUrl"].split("://", 1)[1].split("/", 1)[1]
        put = self.client.generic("PUT", "/" + path, data, content_type="application/octet-stream")
        assert put.status_code < 300, put.content
        return f"s3://{target['bucket']}/{target['key']}"

    def bundle_v1_body(self, **fields) -> dict:
        return {
            "name": "contract-model",
            "location": self.bundle_location,
            "requirements": [],
            "env_params": {"framework_type": "pytorch", "pytorch_image_tag": "latest"},
            "packaging_type": "cloudpickle",
            "metadata": {},
            **fields,
        }

    def bundle_v2_body(self, **fields) -> dict:
        return {
            "name": "contract-model-v2",
            "schema_location": "s3://bucket/schema.json",
            "metadata": {},
            "flavor": {
                "flavor": "cloudpickle_artifact",
                "requirements": [],
                "framework": {"framework_type": "pytorch", "pytorch_image_tag": "latest"},
                "location": self.bundle_location,
                "load_predict_fn": "def load_predict_fn(model): ...",
                "load_model_fn": "def load_model_fn(): ...",
                "app_config": None,
            },
            **fields,
        }

    def endpoint_body(self, **fields) -> dict:
        return {
            "name": "contract-endpoint",
            "model_bundle_id": self.bundle_id,
            "endpoint_type": "async",
            "metadata": {},
            "cpus": 1,
            "gpus": 0,
            "memory": "1Gi",
            "storage": None,
            "min_workers": 0,
            "max_workers": 1,
            "per_worker": 1,
            "labels": {},
            **fields,
        }

    def batch_body(self, **fields) -> dict:
        return {
            "model_bundle_id": self.bundle_id,
            "input_path": self.batch_input,
            "serialization_format": "JSON",
            "labels": {},
            "resource_requests": {"cpus": 1, "memory": "1Gi", "max_workers": 1},
            **fields,
        }

    def valid_request(self, method: str, path: str, fresh: int = 0) -> tuple[str, dict | None]:
        """A URL and body the contract calls valid; `fresh` makes names unique per call."""
        suffix = f"-{fresh}" if fresh else ""
        bodies = {
            ("post", "/v1/model-bundles"): lambda: self.bundle_v1_body(),
            ("post", "/v2/model-bundles"): lambda: self.bundle_v2_body(),
            ("post", "/v1/model-bundles/clone-with-changes"): lambda: {
                "original_model_bundle_id": self.bundle_id,
                "new_app_config": {"k": 1},
            },
            ("post", "/v2/model-bundles/clone-with-changes"): lambda: {
                "original_model_bundle_id": self.bundle_id,
                "new_app_config": {"k": 2},
            },
            ("post", "/v1/model-endpoints"): lambda: self.endpoint_body(name=f"contract-new{suffix}"),
            ("put", "/v1/model-endpoints/{model_endpoint_id}"): lambda: {"max_workers": 2},
            ("post", "/v1/async-tasks"): lambda: {"args": {"x": 2}},
            ("post", "/v1/batch-jobs"): lambda: self.batch_body(),
            ("put", "/v1/batch-jobs/{batch_job_id}"): lambda: {"cancel": True},
            ("post", "/v1/docker-image-batch-job-bundles"): lambda: self.image_bundle_body(),
            ("post", "/v1/docker-image-batch-jobs"): lambda: self.image_job_body(),
            ("put", "/v1/docker-image-batch-jobs/{batch_job_id}"): lambda: {"cancel": True},
            ("post", "/v1/triggers"): lambda: self.trigger_body(f"contract-trigger-new{suffix}"),
            ("put", "/v1/triggers/{trigger_id}"): lambda: {"cron_schedule": "5 * * * *", "suspend": False},
            ("post", "/v1/files"): lambda: self.file_body(),
        }
        url = (
            path.replace("{model_bundle_id}", self.bundle_id)
            .replace("{model_endpoint_id}", self.endpoint_id)
            .replace("{task_id}", self.task_id)
            .replace("{batch_job_id}", self.image_job_id if "docker-image" in path else self.batch_job_id)
            .replace("{docker_image_batch_job_bundle_id}", self.image_bundle_id)
            .replace("{trigger_id}", self.trigger_id)
            .replace("{file_id}", self.file_id)
        )
        query = {
            "/v1/model-bundles/latest": "?model_name=contract-model",
            "/v2/model-bundles/latest": "?model_name=contract-model",
            "/v1/async-tasks": f"?model_endpoint_id={self.endpoint_id}",
            "/v1/sync-tasks": f"?model_endpoint_id={self.endpoint_id}",
            "/v1/docker-image-batch-job-bundles/latest": "?bundle_name=contract-image-job",
        }.get(path, "")
        body = bodies.get((method, path))
        return url + query, body() if body else None


@pytest.fixture
def world(owner, settings) -> World:
    settings.LAUNCH_RUNTIME = "docker"  # docker-image batch jobs need it (nothing runs here)
    return World(owner)


# The routes whose valid request needs a live replica are checked with one
# (test_sync_task_answer_has_the_contract_fields, tests/test_streaming.py).
SERVED = sorted(set(spec_routes()) - NOT_SERVED - {("post", "/v1/sync-tasks"), ("post", "/v1/streaming-tasks")})


def test_every_route_of_the_spec_is_served_or_listed_as_not_served():
    routes = set(spec_routes())
    assert routes, "the spec lists no routes"
    assert NOT_SERVED <= routes, f"NOT_SERVED names routes the spec does not have: {NOT_SERVED - routes}"


@pytest.mark.django_db
def test_routes_listed_as_not_served_answer_404_or_405(owner):
    # Empty while every route of the spec is served; it guards the list once a route leaves.
    for method, path in sorted(NOT_SERVED):
        url = path.replace("{", "").replace("}", "")
        response = getattr(owner.client, method)(url, {}, format="json")
        assert response.status_code in (404, 405), f"{method} {path} is served now: move it out of NOT_SERVED"


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "path"), SERVED)
def test_valid_request_answers_every_required_field(world, schemas, method, path):
    url, body = world.valid_request(method, path)
    response = getattr(world.client, method)(url, body, format=schemas.request_format(method, path))
    assert response.status_code == 200, (url, response.content)
    errors = schemas.errors(response.json(), schemas.response_schema(method, path))
    assert errors == [], f"{method.upper()} {path}: {errors}"


def _bodied_routes() -> list[tuple[str, str]]:
    spec = load_spec()
    return [(m, p) for m, p in SERVED if "requestBody" in spec["paths"][p][m]]


def _rejection_cases() -> list[tuple[str, str, str, str]]:
    """(method, path, "missing" | "wrong_type", field) for every body field the spec checks."""
    schemas = Schemas(load_spec())
    cases = []
    for method, path in _bodied_routes():
        schema = schemas.request_schema(method, path)
        found = [(method, path, "missing", field) for field in schema.get("required", [])]
        found += [
            (method, path, "wrong_type", field)
            for field, sub in schema.get("properties", {}).items()
            if field not in IGNORED_FIELDS and schemas.wrong_value(sub) is not None
        ]
        for case in found:
            reason = KNOWN_LENIENT.get(case)
            cases.append(pytest.param(*case, marks=pytest.mark.xfail(reason=reason, strict=True)) if reason else case)
    return cases


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "path", "case", "field"), _rejection_cases())
def test_body_the_spec_rejects_is_a_422_naming_the_field(world, schemas, method, path, case, field):
    url, body = world.valid_request(method, path, fresh=1)
    body = copy.deepcopy(body)
    if case == "missing":
        del body[field]
    else:
        body[field] = schemas.wrong_value(schemas.request_schema(method, path)["properties"][field])
        if field == "url":
            body.pop("args", None)  # a predict request carries url or args, not both
    response = getattr(world.client, method)(url, body, format=schemas.request_format(method, path))
    assert response.status_code == 422, f"{case} {field}: {response.status_code} {response.content[:300]}"
    detail = response.json()["detail"]
    if field in UNSUPPORTED_FIELDS:
        return
    assert any(field in ".".join(map(str, error["loc"])) for error in detail), detail


@pytest.mark.client
@pytest.mark.xdist_group("client")
@pytest.mark.django_db(transaction=True)
def test_sync_task_answer_has_the_contract_fields(live_stack, owner, schemas):
    """The one route that needs a replica to answer."""
    import cloudpickle  # noqa: F401 - the bundle below is pickled by tests.stack

    api = api_for(live_stack, owner)

    def load_predict_fn(model):
        return lambda x: x + model

    bundle_id = api.upload_bundle({"model": 1, "load_predict_fn": load_predict_fn}, "contract-sync")
    endpoint_id = api.create_endpoint(bundle_id, "contract-sync")
    api.wait_endpoint(endpoint_id, "READY", available_workers=1)
    for body in ({"args": {"x": 1}}, {"args": {"x": 1}, "return_pickled": True}):
        response = api.post(f"/v1/sync-tasks?model_endpoint_id={endpoint_id}", json=body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert schemas.errors(answer, schemas.response_schema("post", "/v1/sync-tasks")) == []
        assert answer["status"] == "SUCCESS"
    rejected = api.post(
        f"/v1/sync-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": 1}, "timeout_seconds": "x"}
    )
    assert rejected.status_code == 422

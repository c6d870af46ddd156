"""The bundle routes of the older public client (scale-launch 0.3.3, legacy-dialect.md): Basic
auth, a JSON body `{}` even on GET and DELETE, and its own field names."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import urlparse

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework.test import APIClient

from bundles.models import ModelBundle, StoredObject
from tests.factories import endpoint_body

pytestmark = pytest.mark.django_db
BASE = "/v1/hosted_inference"
LEGACY_FIELDS = {"name", "bundle_id", "env_params", "location", "metadata", "packaging_type", "requirements"}


@pytest.fixture(autouse=True)
def store_dir(settings, tmp_path) -> Path:
    settings.BUNDLE_STORE_DIR = tmp_path / "store"
    return settings.BUNDLE_STORE_DIR


class LegacyClient:
    """Sends what scale-launch 0.3.3 sends: Basic auth, JSON content type, `{}` on GET/DELETE."""

    def __init__(self, key: str):
        self.client = APIClient()
        self.client.credentials(HTTP_AUTHORIZATION="Basic " + base64.b64encode(f"{key}:".encode()).decode())

    def request(self, method: str, route: str, body: dict | None = None):
        return self.client.generic(
            method, f"{BASE}/{route}", data=json.dumps(body or {}), content_type="application/json"
        )

    def upload(self, data: bytes = b"bundle bytes") -> str:
        target = self.request("POST", "model_bundle_upload").json()
        # Unchecked by the client, but it must work: raw PUT, no auth, no content type.
        Client().generic("PUT", urlparse(target["signedUrl"]).path, data=data, content_type="")
        return f"s3://{target['bucket']}/{target['key']}"

    def create(self, name: str = "legacy-model", **fields):
        body = {
            "packaging_type": "cloudpickle", "bundle_name": name, "location": fields.pop("location", None) or self.upload(),
            "bundle_metadata": {"load_predict_fn": "def f(): ...", "load_model_fn": "def g(): ..."},
            "requirements": ["numpy"], "env_params": {"framework_type": "pytorch", "pytorch_image_tag": "1.7"},
            "app_config": None, **fields,
        }  # fmt: skip
        return self.request("POST", "model_bundle", body)


@pytest.fixture
def legacy(owner) -> LegacyClient:
    return LegacyClient(owner.key)


@pytest.fixture
def stranger(outsider) -> LegacyClient:
    return LegacyClient(outsider.key)


def test_legacy_flow_upload_create_list_get_clone_delete(legacy, owner):
    created = legacy.create()
    assert created.status_code == 200, created.content

    listed = legacy.request("GET", "model_bundle")
    assert listed.status_code == 200
    bundles = listed.json()["bundles"]
    assert len(bundles) == 1
    assert LEGACY_FIELDS <= set(bundles[0])
    assert bundles[0]["name"] == "legacy-model"
    assert bundles[0]["packaging_type"] == "cloudpickle"
    assert bundles[0]["metadata"]["load_predict_fn"] == "def f(): ..."

    one = legacy.request("GET", "model_bundle/legacy-model")
    assert one.status_code == 200
    assert one.json() == {"bundles": bundles}

    clone = legacy.request(
        "POST",
        "model_bundle/clone_with_changes",
        {"existing_bundle_name": "legacy-model", "new_bundle_name": "legacy-model-2", "app_config": {"a": 1}},
    )
    assert clone.status_code == 200, clone.content
    assert clone.json()["name"] == "legacy-model-2"
    assert clone.json()["app_config"] == {"a": 1}
    assert clone.json()["location"] == bundles[0]["location"]

    # The native routes see the same bundles.
    native = owner.client.get("/v1/model-bundles/latest", {"model_name": "legacy-model-2"})
    assert native.json()["id"] == clone.json()["bundle_id"]

    deleted = legacy.request("DELETE", "model_bundle/legacy-model")
    assert deleted.status_code == 200
    assert deleted.json() == {"deleted": True}
    assert legacy.request("GET", "model_bundle/legacy-model").status_code == 404
    # The clone still uses the artifact, so its bytes stay.
    assert StoredObject.objects.count() == 1


def test_get_by_name_answers_the_latest_version(legacy):
    legacy.create()
    second = legacy.create(app_config={"v": 2})
    assert second.status_code == 200
    bundles = legacy.request("GET", "model_bundle/legacy-model").json()["bundles"]
    assert [b["bundle_id"] for b in bundles] == [second.json()["bundle_id"]]
    assert bundles[0]["app_config"] == {"v": 2}


def test_delete_removes_every_version_and_unused_bytes(legacy, store_dir, django_capture_on_commit_callbacks):
    legacy.create()
    legacy.create()
    with django_capture_on_commit_callbacks(execute=True):
        assert legacy.request("DELETE", "model_bundle/legacy-model").json() == {"deleted": True}
    assert ModelBundle.objects.count() == 0
    assert StoredObject.objects.count() == 0
    assert [p for p in store_dir.rglob("*") if p.is_file()] == []


def test_delete_of_a_bundle_an_endpoint_uses_is_409(legacy, owner):
    bundle_id = legacy.create().json()["bundle_id"]
    endpoint = owner.client.post("/v1/model-endpoints", endpoint_body(bundle_id, name="live"), format="json")
    assert endpoint.status_code == 200, endpoint.content
    response = legacy.request("DELETE", "model_bundle/legacy-model")
    assert response.status_code == 409
    assert "live" in response.json()["detail"]
    assert ModelBundle.objects.filter(id=bundle_id).exists()


def test_zip_bundle_takes_module_paths_from_bundle_metadata(legacy):
    metadata = {"load_predict_fn_module_path": "pkg.predict", "load_model_fn_module_path": "pkg.load"}
    created = legacy.create(packaging_type="zip", bundle_metadata=metadata)
    assert created.status_code == 200, created.content
    bundle = ModelBundle.objects.get(id=created.json()["bundle_id"])
    assert (bundle.flavor, bundle.load_predict_fn_module_path) == ("zip_artifact", "pkg.predict")


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"bundle_name": ""}, "bundle_name"),
        ({"bundle_name": "a/b"}, "bundle_name"),
        ({"location": "s3://launch-bundles/1/bundle/missing"}, "location"),
        ({"packaging_type": "lira"}, "packaging_type"),
        ({"bundle_metadata": {"python_version": "x"}}, "bundle_metadata.python_version"),
        ({"requirements": "numpy"}, "requirements"),
    ],
)
def test_bad_legacy_field_is_422_naming_the_legacy_field(legacy, fields, field):
    response = legacy.create(**fields)
    assert response.status_code == 422, response.content
    assert [".".join(e["loc"][1:]) for e in response.json()["detail"]] == [field]
    assert ModelBundle.objects.count() == 0


def test_other_teams_bundle_is_404_on_every_legacy_route(legacy, stranger):
    legacy.create()
    assert stranger.request("GET", "model_bundle").json() == {"bundles": []}
    assert stranger.request("GET", "model_bundle/legacy-model").status_code == 404
    assert stranger.request("DELETE", "model_bundle/legacy-model").status_code == 404
    clone = stranger.request(
        "POST", "model_bundle/clone_with_changes", {"existing_bundle_name": "legacy-model", "new_bundle_name": "x"}
    )
    assert clone.status_code == 404
    assert ModelBundle.objects.count() == 1


def test_create_over_another_teams_upload_is_422(legacy, stranger):
    location = legacy.upload()
    response = stranger.create(location=location)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "location"]


def test_clone_without_new_bundle_name_is_422_naming_it(legacy):
    legacy.create()
    response = legacy.request("POST", "model_bundle/clone_with_changes", {"existing_bundle_name": "legacy-model"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "new_bundle_name"]


def test_a_bundle_is_deletable_once_its_batch_jobs_have_finished(legacy, owner):
    from batchjobs.models import BatchJob

    bundle_id = legacy.create().json()["bundle_id"]
    upload = {"file": SimpleUploadedFile("in.jsonl", b'{"args": {"x": 1}}\n'), "model_bundle_id": bundle_id}
    created = owner.client.post("/v1/batch-jobs/upload", upload, format="multipart")
    assert created.status_code == 200, created.content
    job_id = created.json()["job_id"]

    refused = legacy.request("DELETE", "model_bundle/legacy-model")
    assert refused.status_code == 409
    assert job_id in refused.json()["detail"]
    assert ModelBundle.objects.filter(id=bundle_id).exists()

    BatchJob.objects.filter(pk=job_id).update(status=BatchJob.Status.SUCCESS)
    assert legacy.request("DELETE", "model_bundle/legacy-model").status_code == 200
    assert not ModelBundle.objects.filter(id=bundle_id).exists()
    # The finished job keeps its record, naming the bundle it ran.
    job = owner.client.get(f"/v1/batch-jobs/{job_id}").json()
    assert job["status"] == "SUCCESS" and job["model_bundle_id"] == bundle_id
    browser = Client()
    browser.force_login(owner.user)
    page = browser.get(f"/batch-jobs/{job_id}/").content.decode()
    assert "legacy-model <span class=\"muted\">(deleted)</span>" in page
    assert "legacy-model" in browser.get("/batch-jobs/").content.decode()

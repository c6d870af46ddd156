"""Our one-request multipart upload (`curl -F file=@bundle.pkl -F name=my-model`): stores the
bytes and creates the bundle together, or neither."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlparse

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from accounts.models import Quota
from bundles.models import ModelBundle, StoredObject
from bundles.services import download_url_for

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def store_dir(settings, tmp_path) -> Path:
    settings.BUNDLE_STORE_DIR = tmp_path / "store"
    return settings.BUNDLE_STORE_DIR


def upload(persona, content: bytes = b"\x80\x05cloudpickled", **fields):
    data = {"file": SimpleUploadedFile("bundle.pkl", content), "name": "my-model", **fields}
    return persona.client.post("/v1/model-bundles/upload", data, format="multipart")


def assert_nothing_created(store_dir: Path) -> None:
    assert ModelBundle.objects.count() == 0
    assert StoredObject.objects.count() == 0
    assert not store_dir.exists() or [p for p in store_dir.rglob("*") if p.is_file()] == []


def error_fields(response) -> list[str]:
    return [".".join(error["loc"][1:]) for error in response.json()["detail"]]


def test_upload_stores_the_file_and_answers_the_full_bundle(owner, store_dir):
    content = b"\x80\x05" + bytes(range(256)) * 100
    response = upload(
        owner,
        content,
        requirements='["numpy==2.1.0"]',
        app_config='{"scale": 2}',
        metadata='{"team": "search"}',
        python_version="3.11",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["name"] == "my-model"
    assert body["packaging_type"] == "cloudpickle"
    assert body["requirements"] == ["numpy==2.1.0"]
    assert body["app_config"] == {"scale": 2}
    assert body["metadata"] == {"team": "search"}
    assert body["model_artifact_ids"] == []
    assert owner.client.get(f"/v1/model-bundles/{body['id']}").json() == body

    bundle = ModelBundle.objects.get(id=body["id"])
    assert bundle.python_version == "3.11"
    assert bundle.artifact.sha256 == hashlib.sha256(content).hexdigest()
    assert bundle.location == f"s3://launch-bundles/{bundle.artifact.key}"
    fetched = Client().get(urlparse(download_url_for(bundle.artifact, ttl_seconds=60)).path)
    assert b"".join(fetched.streaming_content) == content


def test_upload_of_a_zip_bundle_takes_module_paths(owner):
    response = upload(
        owner, b"PK\x03\x04", packaging_type="zip", load_predict_fn_module_path="m.p", load_model_fn_module_path="m.l"
    )
    assert response.status_code == 200, response.content
    bundle = ModelBundle.objects.get(id=response.json()["id"])
    assert (bundle.flavor, bundle.load_predict_fn_module_path, bundle.load_model_fn_module_path) == (
        "zip_artifact", "m.p", "m.l",
    )  # fmt: skip


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"requirements": "[numpy"}, "requirements"),
        ({"requirements": '{"a": 1}'}, "requirements"),
        ({"app_config": "{nope}"}, "app_config"),
        ({"metadata": "[1, 2]"}, "metadata"),
        ({"env_params": "not json"}, "env_params"),
        ({"packaging_type": "lira"}, "packaging_type"),
        ({"python_version": "snake"}, "python_version"),
        ({"packaging_type": "zip"}, "load_predict_fn_module_path"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_field_is_422_naming_it_and_creates_nothing(owner, store_dir, fields, field):
    response = upload(owner, **fields)
    assert response.status_code == 422, response.content
    assert error_fields(response) == [field]
    assert response.json()["detail"][0]["msg"].startswith(f"{field}: ")
    assert_nothing_created(store_dir)


def test_missing_file_is_422_naming_file(owner, store_dir):
    response = owner.client.post("/v1/model-bundles/upload", {"name": "x"}, format="multipart")
    assert response.status_code == 422
    assert error_fields(response) == ["file"]
    assert_nothing_created(store_dir)


def test_file_over_the_limit_is_413_and_creates_nothing(owner, settings, store_dir):
    settings.MAX_UPLOAD_BYTES = 1000
    response = upload(owner, b"x" * 1001)
    assert response.status_code == 413
    assert "1000 bytes" in response.json()["detail"]
    assert_nothing_created(store_dir)


def test_storage_quota_is_409_and_creates_nothing(owner, store_dir):
    Quota.objects.create(team=owner.team, max_bundle_storage_bytes=5)
    response = upload(owner, b"123456")
    assert response.status_code == 409
    assert "quota" in response.json()["detail"]
    assert_nothing_created(store_dir)


def test_a_failure_after_the_bytes_are_stored_removes_them(owner, settings, store_dir):
    # The location (s3://<bucket>/<key>) is only known once the bytes are in; with an absurd
    # bucket name it no longer fits its column, so the bundle fails after the store succeeded.
    settings.BUNDLE_STORE_BUCKET = "b" * 600
    response = upload(owner)
    assert response.status_code == 422
    assert error_fields(response) == ["location"]
    assert_nothing_created(store_dir)


def test_a_connection_dropped_mid_upload_leaves_nothing(owner, store_dir):
    from bundles import services

    with pytest.raises(ValueError):
        services.bundle_create_from_upload(team=owner.team, user=owner.user, name="ok", file=_ExplodingAfter(b"abc"))
    assert_nothing_created(store_dir)


class _ExplodingAfter:
    """A stream that gives its bytes, then fails on the read that would end it."""

    def __init__(self, data: bytes):
        self.data, self.done = data, False

    def read(self, size: int) -> bytes:
        if self.done:
            raise ValueError("connection dropped")
        self.done = True
        return self.data


def test_upload_needs_an_api_key(store_dir):
    response = Client().post("/v1/model-bundles/upload", {"name": "x", "file": SimpleUploadedFile("b", b"1")})
    assert response.status_code == 401
    assert_nothing_created(store_dir)


def test_uploaded_bundles_are_team_scoped(owner, outsider):
    bundle_id = upload(owner).json()["id"]
    assert outsider.client.get(f"/v1/model-bundles/{bundle_id}").status_code == 404

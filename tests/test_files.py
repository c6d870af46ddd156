"""The contract's /v1/files routes: a team's text files in the bundle store, bounded by
MAX_UPLOAD_BYTES and the team's storage quota, invisible to other teams."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.models import Quota
from bundles.models import File, StoredObject
from bundles.store import CHUNK_BYTES

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def store_dir(settings, tmp_path) -> Path:
    settings.BUNDLE_STORE_DIR = tmp_path / "store"
    return settings.BUNDLE_STORE_DIR


def upload(persona, content: bytes, name: str = "train.csv"):
    return persona.client.post("/v1/files", {"file": SimpleUploadedFile(name, content)}, format="multipart")


def stored_files(store_dir: Path) -> list[Path]:
    return [p for p in store_dir.rglob("*") if p.is_file()] if store_dir.exists() else []


def assert_nothing_stored(store_dir: Path) -> None:
    assert File.objects.count() == 0
    assert StoredObject.objects.count() == 0
    assert stored_files(store_dir) == []


def error_fields(response) -> list[str]:
    return [".".join(error["loc"][1:]) for error in response.json()["detail"]]


def test_round_trip_upload_list_get_content_delete(owner, store_dir, django_capture_on_commit_callbacks):
    content = "prompt,response\nhéllo,wörld ✓\n".encode()
    response = upload(owner, content)
    assert response.status_code == 200, response.content
    file_id = response.json()["id"]
    described = {"id": file_id, "filename": "train.csv", "size": len(content)}

    assert owner.client.get("/v1/files").json() == {"files": [described]}
    assert owner.client.get(f"/v1/files/{file_id}").json() == described
    answer = owner.client.get(f"/v1/files/{file_id}/content").json()
    assert answer["id"] == file_id
    assert answer["content"].encode() == content

    with django_capture_on_commit_callbacks(execute=True):  # the bytes go once the delete commits
        deleted = owner.client.delete(f"/v1/files/{file_id}")
    assert deleted.status_code == 200
    assert deleted.json() == {"deleted": True}
    for url in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content"):
        assert owner.client.get(url).status_code == 404
    assert owner.client.delete(f"/v1/files/{file_id}").status_code == 404
    assert owner.client.get("/v1/files").json() == {"files": []}
    assert_nothing_stored(store_dir)


def test_a_teammate_sees_the_file_and_another_team_gets_404_everywhere(owner, teammate, outsider):
    file_id = upload(owner, b"secret\n").json()["id"]
    assert teammate.client.get(f"/v1/files/{file_id}/content").json()["content"] == "secret\n"

    assert outsider.client.get("/v1/files").json() == {"files": []}
    for method, url in (
        ("get", f"/v1/files/{file_id}"),
        ("get", f"/v1/files/{file_id}/content"),
        ("delete", f"/v1/files/{file_id}"),
    ):
        response = getattr(outsider.client, method)(url)
        assert response.status_code == 404, (method, url)
        assert "secret" not in response.content.decode()
    assert owner.client.get(f"/v1/files/{file_id}/content").json()["content"] == "secret\n"


def test_oversized_upload_is_413_naming_the_limit_and_stores_nothing(owner, settings, store_dir):
    settings.MAX_UPLOAD_BYTES = 1000
    response = upload(owner, b"x" * 1001)
    assert response.status_code == 413
    assert "1000 bytes" in response.json()["detail"]
    assert_nothing_stored(store_dir)
    assert upload(owner, b"x" * 1000).status_code == 200


def test_storage_quota_counts_files_is_409_and_deleting_frees_it(owner, store_dir):
    Quota.objects.create(team=owner.team, max_bundle_storage_bytes=10)
    first = upload(owner, b"123456").json()["id"]
    refused = upload(owner, b"12345")
    assert refused.status_code == 409
    assert "quota" in refused.json()["detail"]
    assert File.objects.count() == 1
    assert len(stored_files(store_dir)) == 1

    owner.client.delete(f"/v1/files/{first}")
    assert upload(owner, b"12345").status_code == 200


def test_file_that_is_not_utf8_text_is_422_naming_file_and_stores_nothing(owner, store_dir):
    # The content route answers a JSON string, so bytes that cannot be one are refused up front.
    response = upload(owner, b"ok so far" + b"\xff\xfe" + b"x" * 10)
    assert response.status_code == 422
    assert error_fields(response) == ["file"]
    assert_nothing_stored(store_dir)


def test_a_character_split_across_chunks_is_still_text(owner):
    content = b"a" * (CHUNK_BYTES - 1) + "€".encode() + b"z"  # the 3 bytes of € straddle a chunk edge
    file_id = upload(owner, content).json()["id"]
    assert owner.client.get(f"/v1/files/{file_id}/content").json()["content"].encode() == content


def test_truncated_character_at_the_end_is_422(owner, store_dir):
    assert upload(owner, "€".encode()[:2]).status_code == 422
    assert_nothing_stored(store_dir)


def test_missing_file_is_422_naming_file(owner, store_dir):
    response = owner.client.post("/v1/files", {}, format="multipart")
    assert response.status_code == 422
    assert error_fields(response) == ["file"]
    assert_nothing_stored(store_dir)


def test_deleting_the_team_deletes_its_files(owner):
    upload(owner, b"text\n")
    owner.team.delete()
    assert File.objects.count() == 0
    assert StoredObject.objects.count() == 0

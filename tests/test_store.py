"""The bundle store and its signed URLs: upload URLs taking a raw PUT without auth, scoped
download URLs for replicas, size limits, quotas, and nothing left behind on failure."""

from __future__ import annotations

import hashlib
import io
import time
import types
from pathlib import Path
from urllib.parse import urlparse

import pytest
from django.core import signing
from django.test import Client

from accounts.models import Quota
from bundles import services, store
from bundles.models import StoredObject
from launch_site.errors import PayloadTooLargeError

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def store_dir(settings, tmp_path) -> Path:
    settings.BUNDLE_STORE_DIR = tmp_path / "store"
    return settings.BUNDLE_STORE_DIR


def files_in(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()] if directory.exists() else []


def ask_upload_url(persona, route: str = "model_bundle_upload") -> dict:
    response = persona.client.post(f"/v1/hosted_inference/{route}", {}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def put(url: str, data: bytes):
    """What the public client does: a raw PUT with no auth header and no content type."""
    return Client().generic("PUT", urlparse(url).path, data=data, content_type="")


def get(url: str):
    return Client().get(urlparse(url).path)


def shift_signing_clock(monkeypatch, seconds: float) -> None:
    """Make django.core.signing (only it) believe `seconds` have passed."""
    real_time = time.time
    monkeypatch.setattr(signing, "time", types.SimpleNamespace(time=lambda: real_time() + seconds))


def test_upload_url_answers_signed_url_bucket_and_key(owner, settings):
    target = ask_upload_url(owner)
    assert set(target) == {"signedUrl", "bucket", "key"}
    assert target["bucket"] == settings.BUNDLE_STORE_BUCKET
    assert target["key"].startswith(f"{owner.team.id}/bundle/")
    assert target["signedUrl"].startswith("http://testserver/v1/store/objects/")


def test_put_without_auth_stores_the_bytes_with_size_and_sha256(owner, store_dir):
    target = ask_upload_url(owner)
    payload = b"\x80\x05not-really-a-pickle" * 1000
    response = put(target["signedUrl"], payload)
    assert response.status_code == 200, response.content
    stored = StoredObject.objects.get(key=target["key"])
    assert stored.size == len(payload)
    assert stored.sha256 == hashlib.sha256(payload).hexdigest()
    assert stored.uploaded_at is not None
    assert (store_dir / target["key"]).read_bytes() == payload
    assert files_in(store_dir) == [store_dir / target["key"]]  # no temporary file left


def test_an_empty_body_is_a_valid_zero_byte_object(owner):
    target = ask_upload_url(owner)
    assert put(target["signedUrl"], b"").status_code == 200
    assert StoredObject.objects.get(key=target["key"]).size == 0


def test_tampered_upload_token_is_403(owner, store_dir):
    target = ask_upload_url(owner)
    url = target["signedUrl"]
    tampered = url[:-1] + ("A" if url[-1] != "A" else "B")
    response = put(tampered, b"evil")
    assert response.status_code == 403
    assert "signature" in response.json()["detail"]
    assert files_in(store_dir) == []


def test_upload_token_naming_another_key_cannot_be_forged(owner, outsider):
    mine = ask_upload_url(owner)
    theirs = ask_upload_url(outsider)
    token = urlparse(mine["signedUrl"]).path.rsplit("/", 1)[1]
    payload, timestamp, signature = token.split(":")
    forged_payload = signing.b64_encode(f'{{"k":"{theirs["key"]}","ttl":3600}}'.encode()).decode()
    response = put(f"/v1/store/objects/{forged_payload}:{timestamp}:{signature}", b"evil")
    assert response.status_code == 403
    assert StoredObject.objects.get(key=theirs["key"]).uploaded_at is None


def test_expired_upload_url_is_403_saying_expired(owner, settings, monkeypatch):
    target = ask_upload_url(owner)
    shift_signing_clock(monkeypatch, settings.UPLOAD_URL_TTL_SECONDS + 5)
    response = put(target["signedUrl"], b"late")
    assert response.status_code == 403
    assert response.json() == {"detail": "upload URL expired; ask for a new one"}
    assert StoredObject.objects.get(key=target["key"]).uploaded_at is None


def test_upload_url_lives_for_the_configured_ttl(owner, settings, monkeypatch):
    settings.UPLOAD_URL_TTL_SECONDS = 30
    early, late = ask_upload_url(owner), ask_upload_url(owner)
    shift_signing_clock(monkeypatch, 10)
    assert put(early["signedUrl"], b"in time").status_code == 200
    shift_signing_clock(monkeypatch, 40)
    assert put(late["signedUrl"], b"too late").status_code == 403


def test_upload_over_the_size_limit_is_413_and_leaves_nothing(owner, settings, store_dir):
    settings.MAX_UPLOAD_BYTES = 100
    target = ask_upload_url(owner)
    response = put(target["signedUrl"], b"x" * 101)
    assert response.status_code == 413
    assert "100 bytes" in response.json()["detail"]
    assert files_in(store_dir) == []
    assert StoredObject.objects.get(key=target["key"]).size is None
    assert put(target["signedUrl"], b"x" * 100).status_code == 200  # the URL still works


def test_a_stream_without_length_is_cut_off_at_the_limit(owner, settings, store_dir):
    # Chunked or lying clients give no usable Content-Length: the stream itself is capped.
    settings.MAX_UPLOAD_BYTES = store.CHUNK_BYTES + 10
    stored, _ = services.upload_url_create(team=owner.team, kind="bundle", request=_FakeRequest())
    with pytest.raises(PayloadTooLargeError, match="limit"):
        services.stored_object_upload(stored=stored, stream=io.BytesIO(b"x" * (3 * store.CHUNK_BYTES)))
    assert files_in(store_dir) == []


class _FakeRequest:
    def build_absolute_uri(self, path: str) -> str:
        return "http://testserver" + path


def test_second_put_to_a_used_url_is_409_and_keeps_the_first_bytes(owner, store_dir):
    target = ask_upload_url(owner)
    assert put(target["signedUrl"], b"first").status_code == 200
    response = put(target["signedUrl"], b"second")
    assert response.status_code == 409
    assert (store_dir / target["key"]).read_bytes() == b"first"


def test_storage_quota_refuses_an_upload_with_409_and_leaves_nothing(owner, store_dir):
    Quota.objects.create(team=owner.team, max_bundle_storage_bytes=10)
    first = ask_upload_url(owner)
    assert put(first["signedUrl"], b"123456").status_code == 200
    second = ask_upload_url(owner)
    response = put(second["signedUrl"], b"1234567")
    assert response.status_code == 409
    assert "quota" in response.json()["detail"] and "4 bytes left" in response.json()["detail"]
    assert files_in(store_dir) == [store_dir / first["key"]]
    assert put(second["signedUrl"], b"1234").status_code == 200


def test_download_url_streams_the_exact_bytes(owner, settings):
    target = ask_upload_url(owner)
    payload = bytes(range(256)) * 5000
    put(target["signedUrl"], payload)
    stored = StoredObject.objects.get(key=target["key"])
    url = services.download_url_for(stored, ttl_seconds=60)
    assert url.startswith(settings.LAUNCH_INTERNAL_URL + "/v1/store/objects/")
    response = get(url)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == payload


def test_download_url_expires_after_its_ttl(owner, monkeypatch):
    target = ask_upload_url(owner)
    put(target["signedUrl"], b"bytes")
    url = services.download_url_for(StoredObject.objects.get(key=target["key"]), ttl_seconds=60)
    shift_signing_clock(monkeypatch, 61)
    response = get(url)
    assert response.status_code == 403
    assert "expired" in response.json()["detail"]


def test_upload_and_download_tokens_are_not_interchangeable(owner):
    target = ask_upload_url(owner)
    assert get(target["signedUrl"]).status_code == 403  # an upload URL does not read
    put(target["signedUrl"], b"bytes")
    download = services.download_url_for(StoredObject.objects.get(key=target["key"]), ttl_seconds=60)
    assert put(download, b"overwrite").status_code == 403  # a download URL does not write


def test_download_of_an_object_not_yet_uploaded_is_404(owner):
    target = ask_upload_url(owner)
    url = services.download_url_for(StoredObject.objects.get(key=target["key"]), ttl_seconds=60)
    assert get(url).status_code == 404


def test_store_follows_the_setting_at_call_time(owner, settings, tmp_path):
    settings.BUNDLE_STORE_DIR = tmp_path / "elsewhere"
    target = ask_upload_url(owner)
    put(target["signedUrl"], b"here")
    assert (tmp_path / "elsewhere" / target["key"]).read_bytes() == b"here"


def test_batch_input_upload_url_makes_a_batch_input_object(owner):
    target = ask_upload_url(owner, "batch_task_input_upload")
    assert target["key"].startswith(f"{owner.team.id}/batch_input/")
    assert put(target["signedUrl"], b"id,args\n").status_code == 200
    location = f"s3://{target['bucket']}/{target['key']}"
    stored = services.stored_object_resolve(team=owner.team, location=location, kind="batch_input", field="input_path")
    assert stored.key == target["key"]


def test_upload_url_routes_need_an_api_key():
    assert Client().post("/v1/hosted_inference/model_bundle_upload").status_code == 401


def test_keys_outside_the_store_layout_never_become_paths():
    with pytest.raises(LookupError):
        store.object_path("../../etc/passwd")
    with pytest.raises(LookupError):
        store.object_path("/1/bundle/abc")


@pytest.mark.django_db(transaction=True)
def test_raw_put_over_real_http_streams_a_multi_chunk_body(owner, live_server, store_dir):
    import requests

    target = ask_upload_url(owner)
    payload = bytes(range(256)) * (3 * store.CHUNK_BYTES // 256 + 7)
    response = requests.put(live_server.url + urlparse(target["signedUrl"]).path, data=payload, timeout=30)
    assert response.status_code == 200, response.text
    assert (store_dir / target["key"]).read_bytes() == payload
    download = services.download_url_for(StoredObject.objects.get(key=target["key"]), ttl_seconds=60)
    fetched = requests.get(live_server.url + urlparse(download).path, timeout=30)
    assert fetched.content == payload

"""The bundle store: bytes on the filesystem under settings.BUNDLE_STORE_DIR, one file per
StoredObject key (`<team_id>/<kind>/<uuid hex>`), and the signed tokens that let a caller
without an API key (the public client's raw PUT, a replica fetching its bundle) reach
exactly one key.

This module only moves bytes; the rows are written by bundles.services. It never looks
inside the bytes (a bundle is unpickled by its replica only).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from django.conf import settings
from django.core import signing

from launch_site.errors import ApplicationError, PayloadTooLargeError

CHUNK_BYTES = 1024 * 1024
# Keys are made by us (services.new_object_key, batchjobs.storage); anything else, in
# particular `..` or an absolute path, must never become a path on disk.
_KEY_PATTERN = re.compile(r"^[0-9]+/[a-z_]+/[A-Za-z0-9][A-Za-z0-9._-]*$")

UPLOAD_SALT = "bundles.store.upload"
DOWNLOAD_SALT = "bundles.store.download"


class QuotaExceededError(ApplicationError):
    status_code = 409


def store_dir() -> Path:
    # Read at call time: tests and `launch up` point it elsewhere after import.
    return Path(settings.BUNDLE_STORE_DIR)


def object_path(key: str) -> Path:
    if not _KEY_PATTERN.match(key):
        raise LookupError(f"not a store key: {key!r}")
    return store_dir() / key


def too_large_message(limit: int) -> str:
    return f"upload is larger than the limit of {limit} bytes (MAX_UPLOAD_BYTES)"


@dataclass
class ReceivedFile:
    """Bytes streamed to a temporary file next to their final place, not yet visible."""

    key: str
    temp_path: Path
    size: int
    sha256: str

    def commit(self) -> None:
        # Same directory, so the rename is atomic: readers see the old file or the whole new one.
        os.replace(self.temp_path, object_path(self.key))

    def discard(self) -> None:
        self.temp_path.unlink(missing_ok=True)


def receive(
    key: str, stream: IO[bytes], *, max_bytes: int | None = None, quota_bytes: int | None = None
) -> ReceivedFile:
    """Stream `stream` to a temporary file in chunks, hashing as it goes.

    Stops as soon as the size passes `max_bytes` (default MAX_UPLOAD_BYTES: 413) or the
    team's remaining storage `quota_bytes` (409), and leaves no file behind on any error.
    """
    limit = settings.MAX_UPLOAD_BYTES if max_bytes is None else max_bytes
    final = object_path(key)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=final.parent, prefix=".incoming-")
    temp_path = Path(temp_name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(too_large_message(limit))
                if quota_bytes is not None and size > quota_bytes:
                    raise QuotaExceededError(quota_message(quota_bytes))
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    return ReceivedFile(key=key, temp_path=temp_path, size=size, sha256=digest.hexdigest())


def quota_message(available: int) -> str:
    return f"quota: your team's bundle storage has {max(available, 0)} bytes left (max_bundle_storage_bytes)"


def write_object(stored, stream: IO[bytes], *, max_bytes: int | None = None) -> tuple[int, str]:
    """Store the bytes of `stream` under `stored.key` at once; returns (size, sha256).

    The caller records both on the row. Capped at MAX_UPLOAD_BYTES unless `max_bytes` says
    otherwise; no quota check (bundles.services.stored_object_upload does that)."""
    received = receive(stored.key, stream, max_bytes=max_bytes)
    try:
        received.commit()
    except BaseException:
        received.discard()
        raise
    return received.size, received.sha256


def open_object(stored) -> IO[bytes]:
    """A binary stream of the object's bytes (FileNotFoundError when they never arrived)."""
    return open(object_path(stored.key), "rb")  # the caller (a FileResponse) closes it


def delete_object(key: str) -> None:
    try:
        object_path(key).unlink(missing_ok=True)
    except LookupError:
        pass


# Signed tokens. The payload names one key and the token's lifetime; TimestampSigner adds
# the time of signing, so the expiry is checked against the lifetime given at issue time.


# The route that hands out an object's bytes for a token (bundles/urls.py, which the root
# URLconf mounts at "/"). Written out here, not reverse()d, for the URLs on
# LAUNCH_INTERNAL_URL that the controller gives each replica it starts: reverse() loads the
# whole URLconf (every view, DRF, the admin), 21 MB the controller would keep for nothing.
OBJECT_ROUTE = "v1/store/objects/"


def object_url_path(token: str) -> str:
    return f"/{OBJECT_ROUTE}{token}"


def make_token(key: str, *, salt: str, ttl_seconds: int, replica_id: str | None = None) -> str:
    """With `replica_id`, the token works only while that replica lives (bundles.selectors)."""
    payload = {"k": key, "ttl": int(ttl_seconds)}
    if replica_id:
        payload["r"] = replica_id
    return signing.TimestampSigner(salt=salt).sign_object(payload)


class TokenError(Exception):
    def __init__(self, message: str, *, expired: bool = False):
        super().__init__(message)
        self.expired = expired


def read_token(token: str, *, salt: str) -> str:
    """The key a token names; TokenError if it is tampered with, of the other kind, or expired."""
    return read_token_claims(token, salt=salt)[0]


def read_token_claims(token: str, *, salt: str) -> tuple[str, str | None]:
    """The key a token names and the replica it is bound to (None: not bound)."""
    signer = signing.TimestampSigner(salt=salt)
    try:
        payload = signer.unsign_object(token)
        signer.unsign_object(token, max_age=int(payload["ttl"]))
    except signing.SignatureExpired:
        raise TokenError("expired", expired=True) from None
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        raise TokenError("invalid signature") from None
    return str(payload["k"]), (str(payload["r"]) if payload.get("r") else None)

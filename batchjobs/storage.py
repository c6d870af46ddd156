"""The few store operations batch jobs need, over the bundle store (bundles.store)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from django.utils import timezone

from bundles.models import StoredObject


class StoreError(Exception):
    """The store could not give or take the bytes."""


def _store():
    from bundles import store

    return store


@contextlib.contextmanager
def open_input(stored: StoredObject) -> Iterator[IO[bytes]]:
    try:
        stream = _store().open_object(stored)
    except (OSError, LookupError) as error:
        raise StoreError(str(error)) from None
    try:
        yield stream
    finally:
        stream.close()


def open_stored(stored: StoredObject) -> IO[bytes]:
    return _store().open_object(stored)


def save_input(*, team, file: IO[bytes], size: int) -> StoredObject:
    """Through the bundle store's upload: bounded by MAX_UPLOAD_BYTES and counted against the
    team's storage quota like every other stored byte."""
    from bundles.services import stored_object_upload

    kind = StoredObject.Kind.BATCH_INPUT
    stored = StoredObject(key=f"{team.id}/{kind}/{uuid.uuid4().hex}-input", team=team, kind=kind)
    return stored_object_upload(stored=stored, stream=file, content_length=size)


def delete_bytes(stored: StoredObject) -> None:
    _store().delete_object(stored.key)


def delete_stored(stored: StoredObject) -> None:
    """A stored object nobody will point at (its row lost a compare-and-set)."""
    delete_bytes(stored)
    stored.delete()


def save_results(job, path: Path, length: int) -> StoredObject:
    with open(path, "rb") as file:
        return _save(team=job.team, kind=StoredObject.Kind.BATCH_RESULT, file=file, name=f"{job.id}-results")


def _save(*, team, kind: str, file: IO[bytes], name: str) -> StoredObject:
    key = f"{team.id}/{kind}/{uuid.uuid4().hex}-{name}"
    stored = StoredObject(key=key, team=team, kind=kind)
    size, sha256 = _store().write_object(stored, file)
    stored.size, stored.sha256, stored.uploaded_at = size, sha256, timezone.now()
    stored.full_clean()
    stored.save()
    return stored

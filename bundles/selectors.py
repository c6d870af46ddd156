"""Reads of the bundles app. Everything is scoped to one team: another team's bundle or
object is simply not found."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import Team
from bundles import store
from bundles.models import File, ModelBundle, StoredObject
from launch_site.errors import NotFoundError

# The id breaks ties, so that pages (launch_site.pagination) neither repeat nor skip.
ORDERINGS = {"newest": ("-created_at", "-id"), "oldest": ("created_at", "id")}


def bundle_list(*, team: Team, model_name: str | None = None, order_by: str | None = None) -> QuerySet[ModelBundle]:
    # No artifact join: the API's bundle objects show the bundle's own location, and the join
    # cost a third of a page's query and answer (BENCHMARKS.md, "A page of endpoints").
    bundles = ModelBundle.objects.filter(team=team)
    if model_name:
        bundles = bundles.filter(name=model_name)
    return bundles.order_by(*ORDERINGS[order_by or "newest"])


def bundle_get(*, team: Team, bundle_id: str) -> ModelBundle:
    bundle = ModelBundle.objects.filter(team=team, id=bundle_id).first()
    if bundle is None:
        raise NotFoundError(f"No model bundle with id {bundle_id!r}.")
    return bundle


def bundle_latest(*, team: Team, name: str) -> ModelBundle:
    """The newest bundle of that name (bundles are versioned by name)."""
    bundle = ModelBundle.objects.filter(team=team, name=name).order_by("-created_at").first()
    if bundle is None:
        raise NotFoundError(f"No model bundle named {name!r}.")
    return bundle


def stored_object_for_token(token: str, *, salt: str) -> StoredObject:
    """The object a signed token names (store.TokenError when the token is bad or expired)."""
    key, replica_id = store.read_token_claims(token, salt=salt)
    if replica_id is not None:
        from workers.models import Replica

        live = (Replica.State.STARTING, Replica.State.READY, Replica.State.DRAINING)
        if not Replica.objects.filter(pk=replica_id, state__in=live).exists():
            # A bundle URL read from a replica's environment is no use once that replica is gone.
            raise store.TokenError("bound to a replica that is no longer running")
    stored = StoredObject.objects.select_related("team").filter(key=key).first()
    if stored is None:
        raise NotFoundError("No such object.")
    return stored


def file_list(*, team: Team) -> QuerySet[File]:
    return File.objects.filter(team=team).select_related("stored").order_by("-created_at", "-id")


def file_get(*, team: Team, file_id: str) -> File:
    file = File.objects.filter(team=team, id=file_id).select_related("stored").first()
    if file is None:
        raise NotFoundError(f"No file with id {file_id!r}.")
    return file


def file_content(file: File) -> str:
    """The file's text (uploads are checked to be UTF-8, bundles.services.file_upload)."""
    with store.open_object(file.stored) as stream:
        return stream.read().decode("utf-8")

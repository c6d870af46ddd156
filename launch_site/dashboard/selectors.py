"""Reads the dashboard needs that the apps' selectors do not offer (team-scoped, like theirs)."""

from __future__ import annotations

from django.db.models import Count, Exists, Max, OuterRef

from accounts.models import ApiKey, Membership, Team
from bundles.models import ModelBundle
from endpoints.models import ModelEndpoint
from launch_site.errors import NotFoundError
from launch_site.redis_client import get_redis
from workers import protocol
from workers.models import Replica
from workers.runtimes import get_runtime


def bundle_names(*, team: Team) -> list[dict]:
    """One row per bundle name: how many versions, the newest one and when it was made."""
    rows = (
        ModelBundle.objects.filter(team=team)
        .values("name")
        .annotate(versions=Count("id"), latest_at=Max("created_at"))
        .order_by("-latest_at")
    )
    latest = {}
    for bundle in ModelBundle.objects.filter(team=team).order_by("name", "-created_at"):
        latest.setdefault(bundle.name, bundle)
    return [{**row, "latest": latest[row["name"]]} for row in rows]


def bundle_get(*, team: Team, bundle_id: str) -> ModelBundle:
    bundle = ModelBundle.objects.select_related("artifact", "created_by").filter(team=team, pk=bundle_id).first()
    if bundle is None:
        raise NotFoundError(f"no model bundle {bundle_id!r}")
    return bundle


def bundles_for_select(*, team: Team):
    return ModelBundle.objects.filter(team=team).order_by("-created_at")


def queue_depths(endpoints) -> dict[str, int]:
    """Requests waiting in each endpoint's queue (not counting those in flight)."""
    endpoints = list(endpoints)
    if not endpoints:
        return {}
    with get_redis().pipeline(transaction=False) as pipe:
        for endpoint in endpoints:
            pipe.llen(protocol.Keys(protocol.endpoint_prefix(endpoint.id)).queue)
        return {endpoint.id: depth for endpoint, depth in zip(endpoints, pipe.execute(), strict=True)}


def creation_logs(endpoint: ModelEndpoint, *, tail_lines: int = 60) -> str:
    """The output tail of the endpoint's newest replicas (why a load failed, what it printed)."""
    replicas = Replica.objects.filter(owner_kind=Replica.Owner.ENDPOINT, owner_id=endpoint.id).order_by("-created_at")[
        :3
    ]
    parts = []
    for replica in reversed(replicas):
        try:
            text = get_runtime(replica.runtime).logs(replica, tail_lines=tail_lines)
        except Exception as error:  # noqa: BLE001 - a host that is down must not break the page
            text = f"(logs unavailable: {error})"
        parts.append(f"--- replica {replica.id} ({replica.state}) ---\n{text}")
    return "\n".join(parts)


def _visible_keys(*, team: Team, user):
    """A team owner sees (and may revoke) every key of the team, with whose it is; a member
    sees their own."""
    keys = ApiKey.objects.filter(team=team).select_related("user").annotate(
        owner_is_member=Exists(Membership.objects.filter(team=team, user=OuterRef("user")))
    )
    if not Membership.objects.filter(team=team, user=user, role=Membership.Role.OWNER).exists():
        keys = keys.filter(user=user)
    return keys


def api_keys(*, team: Team, user) -> list[ApiKey]:
    return list(_visible_keys(team=team, user=user).order_by("-created_at"))


def api_key_get(*, team: Team, user, key_id: int) -> ApiKey:
    api_key = _visible_keys(team=team, user=user).filter(pk=key_id).first()
    if api_key is None:
        raise NotFoundError(f"no API key {key_id}")
    return api_key

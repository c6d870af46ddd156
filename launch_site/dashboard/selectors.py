"""Reads the dashboard needs that the apps' selectors do not offer (team-scoped, like theirs)."""

from __future__ import annotations

from django.conf import settings
from django.db.models import Count, Exists, Max, OuterRef, Q

from accounts.models import ApiKey, Membership, Team
from bundles.models import ModelBundle
from endpoints.models import ModelEndpoint
from launch_site.errors import NotFoundError
from launch_site.redis_client import get_redis
from workers import protocol
from workers.models import Replica
from workers.runtimes import get_runtime


def bundle_names(*, team: Team, search: str = "") -> list[dict]:
    """One row per bundle name (names containing `search`): how many versions, the newest one
    and when it was made."""
    rows = (
        ModelBundle.objects.filter(team=team, name__icontains=search)
        .values("name")
        .annotate(versions=Count("id"), latest_at=Max("created_at"))
        .order_by("-latest_at")
    )
    latest = {}
    for bundle in ModelBundle.objects.filter(team=team, name__icontains=search).order_by("name", "-created_at"):
        latest.setdefault(bundle.name, bundle)
    return [{**row, "latest": latest[row["name"]]} for row in rows]


def bundle_get(*, team: Team, bundle_id: str) -> ModelBundle:
    bundle = ModelBundle.objects.select_related("artifact", "created_by").filter(team=team, pk=bundle_id).first()
    if bundle is None:
        raise NotFoundError(f"no model bundle {bundle_id!r}")
    return bundle


def bundles_for_select(*, team: Team):
    return ModelBundle.objects.filter(team=team).order_by("-created_at")


REPLICAS_SHOWN = 10
# Log tails are read (a file, or a Docker call) only for the newest few replicas per refresh.
REPLICAS_WITH_LOGS = 3


def replica_rows(endpoint: ModelEndpoint, *, tail_lines: int = 60) -> list[Replica]:
    """The endpoint's newest replicas (live ones first), the newest few with their log tail
    (why a load failed, what it printed)."""
    replicas = list(
        Replica.objects.select_related("host")
        .filter(owner_kind=Replica.Owner.ENDPOINT, owner_id=endpoint.id)
        .order_by("-created_at")[:REPLICAS_SHOWN]
    )
    for index, replica in enumerate(replicas):
        replica.log_tail = None
        if index < REPLICAS_WITH_LOGS:
            try:
                replica.log_tail = get_runtime(replica.runtime).logs(replica, tail_lines=tail_lines)
            except Exception as error:  # noqa: BLE001 - a host that is down must not break the page
                replica.log_tail = f"(logs unavailable: {error})"
    return sorted(replicas, key=lambda r: (not r.is_live, -r.created_at.timestamp()))


def recent_tasks(endpoint: ModelEndpoint) -> list[dict]:
    keys = protocol.Keys(protocol.endpoint_prefix(endpoint.id))
    return protocol.recent_tasks(get_redis(), keys, limit=settings.REQUEST_HISTORY_LENGTH)


def task_detail(endpoint: ModelEndpoint, task_id: str) -> dict | None:
    return protocol.read_task_detail(get_redis(), protocol.Keys(protocol.endpoint_prefix(endpoint.id)), task_id)


def getting_started(request, *, team: Team, endpoint: ModelEndpoint | None = None) -> dict:
    """What the first-steps snippets need: this server's real URL and the user's newest key's
    prefix (the raw key is never stored, so the snippet shows where it goes)."""
    key = ApiKey.objects.filter(team=team, user=request.user, revoked_at__isnull=True).order_by("-created_at").first()
    return {
        "base_url": request.build_absolute_uri("/").rstrip("/"),
        "key_hint": f"lk_{key.prefix}_…" if key else None,
        "has_bundles": ModelBundle.objects.filter(team=team).exists(),
        "has_endpoints": ModelEndpoint.objects.filter(team=team).exists(),
        "endpoint": endpoint,
    }


def _visible_keys(*, team: Team, user):
    """A team owner sees (and may revoke) every key of the team, with whose it is; a member
    sees their own."""
    keys = ApiKey.objects.filter(team=team).select_related("user").annotate(
        owner_is_member=Exists(Membership.objects.filter(team=team, user=OuterRef("user")))
    )
    if not Membership.objects.filter(team=team, user=user, role=Membership.Role.OWNER).exists():
        keys = keys.filter(user=user)
    return keys


API_KEY_STATES = ("active", "revoked", "owner left")


def api_keys(*, team: Team, user, search: str = "", state: str = ""):
    """The keys the user may see, newest first: `search` in the key's name, prefix or owner;
    `state` one of API_KEY_STATES."""
    keys = _visible_keys(team=team, user=user).order_by("-created_at")
    if search:
        keys = keys.filter(Q(name__icontains=search) | Q(prefix__icontains=search) | Q(user__username__icontains=search))
    if state == "active":
        keys = keys.filter(revoked_at__isnull=True, owner_is_member=True)
    elif state == "revoked":
        keys = keys.filter(revoked_at__isnull=False)
    elif state == "owner left":
        keys = keys.filter(revoked_at__isnull=True, owner_is_member=False)
    return keys


def api_key_get(*, team: Team, user, key_id: int) -> ApiKey:
    api_key = _visible_keys(team=team, user=user).filter(pk=key_id).first()
    if api_key is None:
        raise NotFoundError(f"no API key {key_id}")
    return api_key

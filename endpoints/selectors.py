from __future__ import annotations

from django.db import connection

from accounts.models import Team
from endpoints.models import ModelEndpoint
from launch_site.db import instance_from_row
from launch_site.errors import NotFoundError
from workers.models import Replica


def endpoint_get(*, team: Team, endpoint_id: str) -> ModelEndpoint:
    endpoint = ModelEndpoint.objects.select_related("bundle", "created_by").filter(team=team, pk=endpoint_id).first()
    if endpoint is None:
        raise NotFoundError(f"no model endpoint {endpoint_id!r}")
    return endpoint


# The columns the task routes read, fetched with one cursor query and no ORM compilation
# (the inference hot path); none of them needs a type converter.
_TASK_ROUTE_COLUMNS = ModelEndpoint.ROUTE_FIELDS
_TASK_ROUTE_SQL = "SELECT {columns} FROM {table} WHERE team_id = %s AND {column} = %s"


def endpoint_for_tasks(*, team: Team, endpoint_id: str | None = None, name: str | None = None) -> ModelEndpoint:
    """The endpoint a task is sent to, by id or by name, with only what the gateway reads
    loaded (other fields load on access)."""
    column, value = ("id", endpoint_id) if endpoint_id is not None else ("name", name)
    sql = _TASK_ROUTE_SQL.format(
        columns=", ".join(_TASK_ROUTE_COLUMNS), table=ModelEndpoint._meta.db_table, column=column
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [team.id, value])
        row = cursor.fetchone()
    if row is None:
        what = f"named {name!r}" if endpoint_id is None else repr(endpoint_id)
        raise NotFoundError(f"no model endpoint {what}")
    return instance_from_row(ModelEndpoint, _TASK_ROUTE_COLUMNS, row)


def endpoint_get_by_name(*, team: Team, name: str) -> ModelEndpoint:
    endpoint = ModelEndpoint.objects.select_related("bundle", "created_by").filter(team=team, name=name).first()
    if endpoint is None:
        raise NotFoundError(f"no model endpoint named {name!r}")
    return endpoint


# What the API's endpoint answer shows (endpoints.api.views.endpoint_representation reads
# these keys), read as values() rows: model instances (three per endpoint, with the bundle and
# the user) took about a quarter of a page's time (BENCHMARKS.md, "A page of endpoints").
ANSWER_COLUMNS = (
    "id", "name", "endpoint_type", "metadata", "bundle_id", "bundle__name", "status", "status_reason",
    "post_inference_hooks", "default_callback_url", "default_callback_auth", "labels", "created_by__username",
    "created_at", "last_updated_at", "min_workers", "max_workers", "per_worker", "concurrent_requests_per_worker",
    "cpus", "gpus", "memory", "gpu_type", "storage", "optimize_costs", "high_priority", "billing_tags", "prewarm",
    "task_expires_seconds", "queue_message_timeout_seconds", "max_batch_size", "max_batch_wait_ms",
)


def endpoint_answer_rows(*, team: Team, name: str | None = None, order_by: str | None = None):
    """endpoint_list as ANSWER_COLUMNS rows (dicts), for the API's list routes."""
    return endpoint_list(team=team, name=name, order_by=order_by).values(*ANSWER_COLUMNS)


def endpoint_answer_row(*, team: Team, endpoint_id: str | None = None, name: str | None = None) -> dict:
    """One endpoint's ANSWER_COLUMNS row, by id or by name, for the API's retrieve routes (the
    same rows as the lists', so that an endpoint reads the same in both)."""
    rows = ModelEndpoint.objects.filter(team=team)
    row = (rows.filter(pk=endpoint_id) if endpoint_id is not None else rows.filter(name=name)).values(
        *ANSWER_COLUMNS
    ).first()
    if row is None:
        raise NotFoundError(f"no model endpoint named {name!r}" if endpoint_id is None else
                            f"no model endpoint {endpoint_id!r}")
    return row


def endpoint_list(*, team: Team, name: str | None = None, order_by: str | None = None):
    endpoints = ModelEndpoint.objects.select_related("bundle", "created_by").filter(team=team)
    if name is not None:
        endpoints = endpoints.filter(name=name)
    # The id breaks ties, so that pages (launch_site.pagination) neither repeat nor skip.
    return endpoints.order_by(*(("created_at", "id") if order_by == "oldest" else ("-created_at", "-id")))


def replica_counts(endpoint_ids: list[str]) -> dict[str, dict[str, int]]:
    """{endpoint id: {"available": ready replicas, "unavailable": starting or draining}}."""
    counts: dict[str, dict[str, int]] = {endpoint_id: {"available": 0, "unavailable": 0} for endpoint_id in endpoint_ids}
    rows = Replica.objects.filter(
        owner_kind=Replica.Owner.ENDPOINT,
        owner_id__in=list(counts),
        state__in=[Replica.State.STARTING, Replica.State.READY, Replica.State.DRAINING],
    ).values_list("owner_id", "state")
    for owner_id, state in rows:
        counts[owner_id]["available" if state == Replica.State.READY else "unavailable"] += 1
    return counts

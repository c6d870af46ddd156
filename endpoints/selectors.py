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


def endpoint_page_source(*, team: Team, name: str | None = None, order_by: str | None = None):
    """endpoint_list for the API's list route: of the bundle and the user, only what the answer
    shows (their names) is loaded; the bundle's JSON fields and the user's row cost more than
    the endpoint itself."""
    from django.contrib.auth import get_user_model

    from bundles.models import ModelBundle

    skipped = [
        f"{relation}__{field.name}"
        for relation, model, shown in (("bundle", ModelBundle, "name"), ("created_by", get_user_model(), "username"))
        for field in model._meta.concrete_fields
        if field.name != shown and not field.primary_key
    ]
    return endpoint_list(team=team, name=name, order_by=order_by).defer(*skipped)


def endpoint_list(*, team: Team, name: str | None = None, order_by: str | None = None):
    endpoints = ModelEndpoint.objects.select_related("bundle", "created_by").filter(team=team)
    if name is not None:
        endpoints = endpoints.filter(name=name)
    # The id breaks ties, so that pages (launch_site.pagination) neither repeat nor skip.
    return endpoints.order_by(*(("created_at", "id") if order_by == "oldest" else ("-created_at", "-id")))


def replica_counts(endpoints) -> dict[str, dict[str, int]]:
    """{endpoint id: {"available": ready replicas, "unavailable": starting or draining}}."""
    counts: dict[str, dict[str, int]] = {e.id: {"available": 0, "unavailable": 0} for e in endpoints}
    rows = Replica.objects.filter(
        owner_kind=Replica.Owner.ENDPOINT,
        owner_id__in=list(counts),
        state__in=[Replica.State.STARTING, Replica.State.READY, Replica.State.DRAINING],
    ).values_list("owner_id", "state")
    for owner_id, state in rows:
        counts[owner_id]["available" if state == Replica.State.READY else "unavailable"] += 1
    return counts

from __future__ import annotations

import functools
import weakref

from django.contrib.auth import get_user_model
from django.db import DEFAULT_DB_ALIAS, connection, connections
from redis.commands.core import Script

from accounts.models import Team
from bundles.models import ModelBundle
from endpoints.models import ModelEndpoint
from launch_site.db import instance_from_row
from launch_site.errors import NotFoundError
from launch_site.redis_client import get_redis
from workers import protocol
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
# these keys, and "available_workers"/"unavailable_workers"), read as plain rows: model
# instances (three per endpoint, with the bundle and the user) took about a quarter of a
# page's time, and then the ORM's compilation of the values() query and its per-value
# converters about half of what was left (BENCHMARKS.md, "A page of endpoints").
ANSWER_COLUMNS = (
    "id", "name", "endpoint_type", "metadata", "bundle_id", "bundle__name", "status", "status_reason",
    "post_inference_hooks", "default_callback_url", "default_callback_auth", "labels", "created_by__username",
    "created_at", "last_updated_at", "min_workers", "max_workers", "per_worker", "concurrent_requests_per_worker",
    "cpus", "gpus", "memory", "gpu_type", "storage", "optimize_costs", "high_priority", "billing_tags", "prewarm",
    "task_expires_seconds", "queue_message_timeout_seconds", "max_batch_size", "max_batch_wait_ms",
)

# A team's endpoints are listed newest first (or oldest first) by these fields; the id breaks
# ties, so that pages (launch_site.pagination) neither repeat nor skip. The index
# endpoint_team_newest holds this order.
LIST_ORDER = ("created_at", "id")

# Which replicas of an endpoint count as its available and its unavailable workers.
AVAILABLE_STATES = (Replica.State.READY,)
UNAVAILABLE_STATES = (Replica.State.STARTING, Replica.State.DRAINING)


@functools.cache
def _answer_select() -> tuple[str, tuple]:
    """The SELECT ... FROM ... of the answer rows (ANSWER_COLUMNS, then the two replica
    counts, whose states are the first parameters), and each column as the ORM's expression."""
    User = get_user_model()
    quote = connection.ops.quote_name
    joined = {"bundle__name": ("b", ModelBundle, "name"), "created_by__username": ("u", User, "username")}
    expressions, columns = [], []
    for name in ANSWER_COLUMNS:
        alias, model, field_name = joined.get(name, ("e", ModelEndpoint, name))
        field = model._meta.get_field(field_name)
        expressions.append(field.get_col(alias))
        columns.append(f"{alias}.{quote(field.column)}")
    replicas = quote(Replica._meta.db_table)

    def count(states) -> str:
        return (f"(SELECT COUNT(*) FROM {replicas} r WHERE r.owner_kind = %s AND r.owner_id = e.id"
                f" AND r.state IN ({', '.join(['%s'] * len(states))}))")

    sql = (
        f"SELECT {', '.join(columns)}, {count(AVAILABLE_STATES)}, {count(UNAVAILABLE_STATES)}"
        f" FROM {quote(ModelEndpoint._meta.db_table)} e"
        f" INNER JOIN {quote(ModelBundle._meta.db_table)} b ON b.id = e.bundle_id"
        f" LEFT OUTER JOIN {quote(User._meta.db_table)} u ON u.id = e.created_by_id"
    )
    return sql, tuple(expressions)


# Per connection (a thread's own; they live as long as their thread): what the ORM's
# compiler would apply to the values of each column (a JSON field's text decoded, a datetime
# made aware and a boolean made one on SQLite), found once instead of for every query.
_converters: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _answer_converters(wrapper, expressions: tuple) -> list[tuple[int, list, object]]:
    converters = _converters.get(wrapper)
    if converters is None:
        converters = _converters[wrapper] = [
            (i, functions, expression) for i, expression in enumerate(expressions)
            if (functions := wrapper.ops.get_db_converters(expression) + expression.get_db_converters(wrapper))
        ]
    return converters


_COUNT_PARAMS = (Replica.Owner.ENDPOINT, *AVAILABLE_STATES, Replica.Owner.ENDPOINT, *UNAVAILABLE_STATES)


def _answer_rows(where: str, params: list, tail: str = "") -> list[tuple]:
    """The rows as read: ANSWER_COLUMNS' values before any conversion, then the two counts."""
    select, _ = _answer_select()
    with connection.cursor() as cursor:
        cursor.execute(f"{select} WHERE {where}{tail}", [*_COUNT_PARAMS, *params])
        return cursor.fetchall()


def answer_dict(row: tuple) -> dict:
    """A row as read (endpoint_answer_rows, endpoint_answer_row) as a dict of ANSWER_COLUMNS,
    each value converted as the ORM would, and "available_workers" and "unavailable_workers"."""
    _, expressions = _answer_select()
    wrapper = connections[DEFAULT_DB_ALIAS]  # this thread's (`connection` is a proxy to it)
    row = list(row)
    for i, functions, expression in _answer_converters(wrapper, expressions):
        for function in functions:
            row[i] = function(row[i], expression, wrapper)
    answer = dict(zip(ANSWER_COLUMNS, row[:-2], strict=True))
    answer["available_workers"], answer["unavailable_workers"] = row[-2:]
    return answer


# Where a row as read holds the endpoint's id.
ID = ANSWER_COLUMNS.index("id")


class EndpointAnswerRows:
    """A team's endpoints as answer rows (as read: answer_dict converts one), newest first (or
    oldest), sliced as a queryset is (launch_site.pagination.page_of): a slice is one query
    with LIMIT and OFFSET."""

    def __init__(self, *, team: Team, name: str | None = None, order_by: str | None = None):
        self.where = "e.team_id = %s" + (" AND e.name = %s" if name is not None else "")
        self.params = [team.id] + ([name] if name is not None else [])
        direction = "" if order_by == "oldest" else " DESC"
        self.order = " ORDER BY " + ", ".join(f"e.{field}{direction}" for field in LIST_ORDER)

    def __getitem__(self, page: slice) -> list[tuple]:  # [start:stop], both given
        return _answer_rows(self.where, [*self.params, page.stop - page.start, page.start],
                            f"{self.order} LIMIT %s OFFSET %s")


def endpoint_answer_rows(*, team: Team, name: str | None = None, order_by: str | None = None) -> EndpointAnswerRows:
    """The API's list routes' rows, to slice into a page."""
    return EndpointAnswerRows(team=team, name=name, order_by=order_by)


def endpoint_answer_row(*, team: Team, endpoint_id: str | None = None, name: str | None = None) -> tuple:
    """One endpoint's answer row (as read), by id or by name, for the API's retrieve routes
    (the same rows as the lists', so that an endpoint reads the same in both)."""
    rows = _answer_rows("e.team_id = %s AND " + ("e.id = %s" if endpoint_id is not None else "e.name = %s"),
                        [team.id, endpoint_id if endpoint_id is not None else name])
    if not rows:
        raise NotFoundError(f"no model endpoint named {name!r}" if endpoint_id is None else
                            f"no model endpoint {endpoint_id!r}")
    return rows[0]


# One command for all the queue lengths of a page: a pipeline of LLENs cost about three times
# as much in redis-py's packing and parsing of each command.
_QUEUE_LENGTHS_SCRIPT = Script(
    None, b"local n = {} for i, key in ipairs(KEYS) do n[i] = redis.call('LLEN', key) end return n"
)


def queue_lengths(endpoint_ids: list[str]) -> list[int]:
    """The number of tasks waiting in each endpoint's queue."""
    if not endpoint_ids:
        return []
    keys = [protocol.Keys(protocol.endpoint_prefix(endpoint_id)).queue for endpoint_id in endpoint_ids]
    return _QUEUE_LENGTHS_SCRIPT(keys=keys, client=get_redis())


def endpoint_list(*, team: Team, name: str | None = None, order_by: str | None = None):
    endpoints = ModelEndpoint.objects.select_related("bundle", "created_by").filter(team=team)
    if name is not None:
        endpoints = endpoints.filter(name=name)
    return endpoints.order_by(*(LIST_ORDER if order_by == "oldest" else [f"-{field}" for field in LIST_ORDER]))


def replica_counts(endpoint_ids: list[str]) -> dict[str, dict[str, int]]:
    """{endpoint id: {"available": ready replicas, "unavailable": starting or draining}}."""
    counts: dict[str, dict[str, int]] = {endpoint_id: {"available": 0, "unavailable": 0} for endpoint_id in endpoint_ids}
    rows = Replica.objects.filter(
        owner_kind=Replica.Owner.ENDPOINT, owner_id__in=list(counts), state__in=AVAILABLE_STATES + UNAVAILABLE_STATES,
    ).values_list("owner_id", "state")
    for owner_id, state in rows:
        counts[owner_id]["available" if state in AVAILABLE_STATES else "unavailable"] += 1
    return counts

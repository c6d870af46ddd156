"""Model instances from raw rows, for the few hot-path lookups that skip the ORM's compiler;
the database work of async views (in_db_thread)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db import close_old_connections, connection


def instance_from_row(model, columns: Sequence[str], row: Sequence):
    """An instance with `columns` loaded from `row` and every other field deferred (loaded on
    access). Model.from_db takes values in the model's field order, not the query's."""
    values = dict(zip(columns, row, strict=True))
    fields = [field for field in model._meta.concrete_fields if field.attname in values]
    return model.from_db(connection.alias, [field.attname for field in fields], [
        # What the ORM's compiler would apply, e.g. a JSON field's text decoded.
        field.from_db_value(values[field.attname], None, connection) if hasattr(field, "from_db_value")
        else values[field.attname]
        for field in fields
    ])


# Long-lived threads for the database work of async views under ASGI: each keeps its own
# connection across requests (CONN_MAX_AGE), as a WSGI worker thread does. A handful is
# enough: the work there is one or two indexed queries, never a wait.
_DB_THREADS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="launch-db")


def with_connection_upkeep(function):
    @functools.wraps(function)
    def run(*args, **kwargs):
        # What the request_started/request_finished signals do for a WSGI thread: drop a
        # connection past CONN_MAX_AGE or left broken, before and after the work.
        close_old_connections()
        try:
            return function(*args, **kwargs)
        finally:
            close_old_connections()

    return run


async def in_db_thread(request, function, *args, **kwargs):
    """Run sync code that may query the database from an async view. Under ASGI: on
    _DB_THREADS (not the request's own thread_sensitive thread, which Django makes afresh for
    each request and which would open a database connection per request). Under WSGI (tests,
    a WSGI server): in the request's own thread, whose connection the request signals keep."""
    if isinstance(request, ASGIRequest):
        return await sync_to_async(
            with_connection_upkeep(function), thread_sensitive=False, executor=_DB_THREADS
        )(*args, **kwargs)
    return await sync_to_async(function)(*args, **kwargs)

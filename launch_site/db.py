"""Model instances from raw rows, for the few hot-path lookups that skip the ORM's compiler."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import connection


def instance_from_row(model, columns: Sequence[str], row: Sequence):
    """An instance with `columns` loaded from `row` and every other field deferred (loaded on
    access). Model.from_db takes values in the model's field order, not the query's."""
    values = dict(zip(columns, row, strict=True))
    names = [field.attname for field in model._meta.concrete_fields if field.attname in values]
    return model.from_db(connection.alias, names, [values[name] for name in names])

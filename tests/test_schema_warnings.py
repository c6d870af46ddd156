"""The served schema is generated without a warning: the first GET /api/schema/ used to print
49 of them into the `make run` console."""

from __future__ import annotations

import pytest
from drf_spectacular.drainage import GENERATOR_STATS
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def test_the_first_schema_request_prints_no_warning_or_error(capsys):
    GENERATOR_STATS.reset()
    capsys.readouterr()
    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    problems = {**GENERATOR_STATS._warn_cache, **GENERATOR_STATS._error_cache}
    assert not problems, "\n".join(problems)
    assert capsys.readouterr().err == ""


def test_every_operation_id_is_unique_and_none_is_numbered():
    paths = APIClient().get("/api/schema/", HTTP_ACCEPT="application/json").json()["paths"]
    ids = [op["operationId"] for ops in paths.values() for op in ops.values() if isinstance(op, dict)]
    assert len(ids) == len(set(ids))
    # drf-spectacular numbers colliding ids (..._retrieve_2): a list and its detail route.
    assert not [i for i in ids if i[-2:-1] == "_" and i[-1].isdigit()]

"""Keep what DRF imports only in case from every process of the stack.

rest_framework.compat imports, whenever they are installed, `requests` (for DRF's
RequestsClient, a test client) and `django.contrib.postgres` (its ModelSerializer mapping of
postgres fields), which imports psycopg2 with the libssl, libcrypto and libkrb5 that
psycopg2-binary bundles. Nothing of ours uses either on the request path: the test client is
not ours, and on SQLite no postgres field exists. Imported before the web server and
controller fork, they cost about 9 MB of the embedded stack's memory (BENCHMARKS.md, "What
DRF imports in case").

So settings import rest_framework.compat once, first, with those two reported missing, which
is how DRF itself behaves where they are not installed. Only that one import sees them
missing: docker-py, which needs requests, imports it afterwards as usual, and on PostgreSQL
the database backend imports psycopg2 itself (and postgres fields stay mapped).
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder


class _ReportMissing(MetaPathFinder):
    def __init__(self, names: frozenset[str]):
        self.names = names

    def find_spec(self, fullname, path, target=None):
        if fullname in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None  # the next finder finds it


def import_drf_compat(database_engine: str) -> None:
    """Import rest_framework.compat without `requests`, and without django.contrib.postgres
    unless the database is PostgreSQL. A no-op where compat is imported already."""
    if "rest_framework.compat" in sys.modules:
        return
    missing = {"requests"}
    if "postgresql" not in database_engine:
        missing.add("django.contrib.postgres")
    finder = _ReportMissing(frozenset(missing))
    sys.meta_path.insert(0, finder)
    try:
        import rest_framework.compat  # noqa: F401
    finally:
        sys.meta_path.remove(finder)

"""What DRF imports only in case stays out of the stack (launch_site/lean_imports.py), and only
that: everything else that wants those modules still gets them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The web server's and the controller's imports, as the supervisor makes them before it forks.
PROBE = """
import json, sys
from launch_site import web_server
web_server.import_app()
import launch_site.management.commands.controller
import rest_framework.compat as compat
loaded = {name: name in sys.modules for name in ("requests", "psycopg2", "django.contrib.postgres")}
import docker  # needs requests: imports it as usual
print(json.dumps({**loaded, "postgres_fields": compat.postgres_fields is not None,
                  "requests_after": "requests" in sys.modules, "docker_client": hasattr(docker, "DockerClient")}))
"""


def _probe(tmp_path: Path, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    environ.update(LAUNCH_HOME=str(tmp_path), DJANGO_SETTINGS_MODULE="launch_site.settings", **env)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=environ, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_on_sqlite_neither_requests_nor_psycopg2_is_in_the_image(tmp_path):
    found = _probe(tmp_path)
    assert found == {"requests": False, "psycopg2": False, "django.contrib.postgres": False,
                     "postgres_fields": False, "requests_after": True, "docker_client": True}


def test_on_postgresql_drf_keeps_its_postgres_fields(tmp_path):
    # Nothing connects: the URL only picks the backend.
    found = _probe(tmp_path, DATABASE_URL="postgres://nobody@127.0.0.1:1/none", SECRET_KEY="x" * 50)
    assert found["requests"] is False
    assert found["django.contrib.postgres"] is True and found["postgres_fields"] is True

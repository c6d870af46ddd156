from __future__ import annotations

from django.db import connection
from django.http import JsonResponse

from launch_site.redis_client import get_redis


def healthz(request):
    """The process is up."""
    return JsonResponse({"status": "ok"})


def readyz(request):
    """The process can reach its database and Redis."""
    problems = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        problems["database"] = str(exc)
    try:
        get_redis().ping()
    except Exception as exc:  # noqa: BLE001
        problems["redis"] = str(exc)
    if problems:
        return JsonResponse({"status": "unavailable", "problems": problems}, status=503)
    return JsonResponse({"status": "ok"})

from __future__ import annotations

import hmac

from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse

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


def metrics(request):
    """Prometheus exposition (workers.metrics): for staff sessions, or with
    `Authorization: Bearer <METRICS_TOKEN>`."""
    from prometheus_client import CONTENT_TYPE_LATEST

    from workers.metrics import prometheus_text

    header = request.headers.get("Authorization", "")
    token_ok = bool(settings.METRICS_TOKEN) and hmac.compare_digest(
        header.encode(), f"Bearer {settings.METRICS_TOKEN}".encode()
    )
    staff = request.user.is_authenticated and request.user.is_staff
    if not (token_ok or staff):
        return JsonResponse(
            {"detail": "metrics need a staff session or Authorization: Bearer <METRICS_TOKEN>"}, status=401
        )
    return HttpResponse(prometheus_text(), content_type=CONTENT_TYPE_LATEST)

"""Usage and capacity: what the team holds against its quota (accounts.quotas' one rule), the
requests per endpoint, requests and GPU-hours per endpoint per day (with its billing_tags),
and the hosts' capacity, used and free, with their health."""

from __future__ import annotations

import datetime

from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from accounts.models import Quota, Team
from accounts.quotas import team_usage
from bundles.services import storage_used_bytes
from endpoints import selectors as endpoint_selectors
from launch_site.dashboard.common import render_page, team_view
from workers import metrics
from workers.models import Host, Replica
from workers.placement import host_capacity


def _row(name: str, used: int, limit: int | None, *, unit: str = "") -> dict:
    return {
        "name": name, "used": used, "limit": limit, "unit": unit,
        "pct": min(100, round(used * 100 / limit)) if limit else None,
    }  # fmt: skip


@team_view
def usage(request: HttpRequest, team: Team) -> HttpResponse:
    held = team_usage(team).total
    quota = Quota.objects.filter(team=team).first()
    rows = [
        _row("Endpoints", held.endpoints, quota.max_endpoints if quota else None),
        _row("Workers (max_workers of endpoints and running batch jobs)", held.workers, quota.max_workers if quota else None),
        _row("GPUs (gpus × max_workers)", held.gpus, quota.max_gpus if quota else None),
        _row("Concurrent batch jobs", held.batch_jobs, quota.max_concurrent_batch_jobs if quota else None),
        _row("Bundle storage", storage_used_bytes(team.id), quota.max_bundle_storage_bytes if quota else None, unit="bytes"),
    ]
    endpoints = list(endpoint_selectors.endpoint_list(team=team))
    figures = metrics.endpoint_figures([endpoint.id for endpoint in endpoints])
    per_endpoint = [{"endpoint": endpoint, **figures[endpoint.id]} for endpoint in endpoints]
    days, per_day = _per_day(endpoints)
    hosts = [
        {"host": free.host, "cpus_used": (free.host.cpus or 0) - max(free.cpus, 0), "cpus_free": max(free.cpus, 0),
         "memory_used": (free.host.memory_bytes or 0) - max(free.memory_bytes, 0),
         "memory_free": max(free.memory_bytes, 0), "gpus_total": len(free.host.gpu_device_ids or []),
         "gpus_free": len(free.gpu_ids)}
        for free in host_capacity(list(Host.objects.order_by("name")))
    ]  # fmt: skip
    context = {
        "rows": rows, "quota": quota, "per_endpoint": per_endpoint, "hosts": hosts, "days": days, "per_day": per_day,
    }  # fmt: skip
    return render_page(request, "dashboard/usage.html", context)


USAGE_DAYS = 7


def _per_day(endpoints) -> tuple[list[datetime.date], list[dict]]:
    """The last USAGE_DAYS UTC days, newest first, and per endpoint: its billing tags and, for
    each day, the requests it finished and the GPU-hours its replicas held."""
    now = timezone.now()
    today = now.astimezone(datetime.UTC).date()
    days = [today - datetime.timedelta(days=back) for back in range(USAGE_DAYS)]
    ids = [endpoint.id for endpoint in endpoints]
    since = datetime.datetime.combine(days[-1], datetime.time(), tzinfo=datetime.UTC)
    replicas = Replica.objects.filter(owner_kind=Replica.Owner.ENDPOINT, owner_id__in=ids).exclude(
        stopped_at__lt=since
    ).only("owner_id", "gpu_device_ids", "created_at", "stopped_at")
    gpu_hours = metrics.gpu_hours_by_day(replicas, days, now=now)
    requests = metrics.requests_by_day(ids, days)
    rows = [
        {
            "endpoint": endpoint,
            "billing_tags": endpoint.billing_tags or {},
            "days": [
                {"requests": requests[endpoint.id][day], "gpu_hours": gpu_hours.get(endpoint.id, {}).get(day, 0.0)}
                for day in days
            ],
        }
        for endpoint in endpoints
    ]
    return days, rows

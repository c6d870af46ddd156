"""Endpoint pages: list, deploy, detail with live parts (status and replicas, recent requests,
charts), edit, delete, "Try it", the task page.

An endpoint is never terminal (its replicas and queue move while READY), so its live parts
poll for as long as the page is open and visible; only a deleted endpoint stops them (286)."""

from __future__ import annotations

import json

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_http_methods, require_POST

from accounts.models import Team
from endpoints import gateway, selectors, services
from endpoints.models import ModelEndpoint
from launch_site.dashboard import charts
from launch_site.dashboard import selectors as dashboard_selectors
from launch_site.dashboard.common import (
    SERVICE_ERRORS,
    STOP_POLLING,
    add_service_error,
    list_page,
    live_response,
    render_page,
    search_text,
    status_filter,
    team_view,
)
from launch_site.dashboard.forms import EndpointEditForm, EndpointForm, TryItForm
from launch_site.errors import NotFoundError
from workers import metrics, protocol

TERMINAL_TASK_STATUSES = (protocol.SUCCESS, protocol.FAILURE)
FIELD_NAMES = {"model_bundle_id": "bundle"}


def _with_state(endpoints: list[ModelEndpoint]) -> list[ModelEndpoint]:
    """Attach live worker counts, queue depth and counters (one query and one Redis round
    trip for all)."""
    ids = [endpoint.id for endpoint in endpoints]
    counts = selectors.replica_counts(ids)
    figures = metrics.endpoint_figures(ids)
    for endpoint in endpoints:
        endpoint.workers = counts[endpoint.id]
        endpoint.queue_depth = figures[endpoint.id]["queued"]
        endpoint.figures = figures[endpoint.id]
    return endpoints


@team_view
def endpoint_list(request: HttpRequest, team: Team) -> HttpResponse:
    """The list (`?q=` name search, `?status=`, `?page=`); its rows are one live part
    (`?rows=1` with the same query), refreshed while the page is visible."""
    endpoints = selectors.endpoint_list(team=team).select_related("bundle")
    if search := search_text(request):
        endpoints = endpoints.filter(name__icontains=search)
    if status := status_filter(request, ModelEndpoint.Status.values):
        endpoints = endpoints.filter(status=status)
    context = {**list_page(request, endpoints), "status": status, "statuses": ModelEndpoint.Status.values}
    context["endpoints"] = _with_state(context["items"])
    for endpoint in context["endpoints"]:
        endpoint.sparkline = charts.sparkline(
            metrics.chart_series(endpoint.id, seconds=3600, points=30)["requests"]
        )
    if request.htmx and request.GET.get("rows"):
        return live_response(request, render_page(request, "dashboard/endpoints/rows.html", context))
    context["getting_started"] = dashboard_selectors.getting_started(request, team=team)
    return render_page(request, "dashboard/endpoints/list.html", context)


@team_view
@require_http_methods(["GET", "POST"])
def endpoint_create(request: HttpRequest, team: Team) -> HttpResponse:
    bundles = dashboard_selectors.bundles_for_select(team=team)
    initial = {"bundle": request.GET.get("bundle")} if request.GET.get("bundle") else {}
    form = EndpointForm(request.POST or None, bundles=bundles, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            endpoint = services.endpoint_create(
                team=team, user=request.user, name=data["name"], model_bundle_id=data["bundle"],
                endpoint_type=data["endpoint_type"], min_workers=data["min_workers"],
                max_workers=data["max_workers"], per_worker=data["per_worker"], cpus=data["cpus"],
                memory=data["memory"], gpus=data["gpus"], gpu_type=data["gpu_type"] or None,
            )  # fmt: skip
        except SERVICE_ERRORS as error:
            add_service_error(form, error, field_names=FIELD_NAMES)
        else:
            # No flash message: the live status panel says what happens (a "starting" banner
            # would stay above an UPDATE_FAILED badge).
            return redirect("dashboard:endpoint-detail", endpoint_id=endpoint.id)
    status = 422 if form.errors else 200
    return render_page(
        request, "dashboard/endpoints/form.html", {"form": form, "has_bundles": bundles.exists()}, status=status
    )


@team_view
def endpoint_detail(request: HttpRequest, team: Team, endpoint_id: str) -> HttpResponse:
    endpoint = _with_state([selectors.endpoint_get(team=team, endpoint_id=endpoint_id)])[0]
    context = {
        **_status_context(endpoint),
        **_requests_context(request, endpoint),
        **_charts_context(request, endpoint),
        "try_form": TryItForm(initial={"args": "{}"}),
        "getting_started": dashboard_selectors.getting_started(request, team=team, endpoint=endpoint),
    }
    return render_page(request, "dashboard/endpoints/detail.html", context)


def _status_context(endpoint: ModelEndpoint) -> dict:
    replicas = dashboard_selectors.replica_rows(endpoint)
    return {
        "endpoint": endpoint, "replicas": replicas,
        "restarts": sum(replica.state == "failed" for replica in replicas),
    }


def _live_part(request: HttpRequest, team: Team, endpoint_id: str, template: str, context_of) -> HttpResponse:
    """A live part of the endpoint page: it polls for as long as the endpoint exists."""
    try:
        endpoint = _with_state([selectors.endpoint_get(team=team, endpoint_id=endpoint_id)])[0]
    except NotFoundError:
        if not request.htmx:
            raise
        # Deleted while the page was open: say so and stop polling (htmx would ignore a 404 and poll on).
        response = render_page(request, template, {"endpoint": None, "endpoint_id": endpoint_id})
        response.status_code = STOP_POLLING
        return response
    return live_response(request, render_page(request, template, context_of(endpoint)))


@team_view
def endpoint_status(request: HttpRequest, team: Team, endpoint_id: str) -> HttpResponse:
    """The status panel with the replica table and log tails."""
    return _live_part(request, team, endpoint_id, "dashboard/endpoints/status.html", _status_context)


TASK_STATUS_FILTERS = (protocol.PENDING, protocol.STARTED, protocol.SUCCESS, protocol.FAILURE)
REQUESTS_PAGE_SIZE = 50


def _requests_context(request: HttpRequest, endpoint: ModelEndpoint) -> dict:
    """The recent requests: `?status=`, `?q=` (part of a task id), `?page=`."""
    wanted = status_filter(request, TASK_STATUS_FILTERS)
    search = search_text(request)
    tasks = dashboard_selectors.recent_tasks(endpoint)
    shown = [
        task for task in tasks if (not wanted or task["status"] == wanted) and (not search or search in task["task_id"])
    ]
    page = list_page(request, shown, per_page=REQUESTS_PAGE_SIZE)
    return {"endpoint": endpoint, **page, "tasks": page["items"], "task_count": len(tasks), "status_filter": wanted,
            "status_filters": TASK_STATUS_FILTERS}


@team_view
def endpoint_requests(request: HttpRequest, team: Team, endpoint_id: str) -> HttpResponse:
    """The recent requests, newest first, optionally of one status (`?status=`)."""
    return _live_part(
        request, team, endpoint_id, "dashboard/endpoints/requests.html", lambda e: _requests_context(request, e)
    )


CHART_RANGES = {"1h": 3600, "6h": 6 * 3600, "24h": 24 * 3600}


def _charts_context(request: HttpRequest, endpoint: ModelEndpoint) -> dict:
    chosen = request.GET.get("range", "1h")
    chosen = chosen if chosen in CHART_RANGES else "1h"
    series = metrics.chart_series(endpoint.id, seconds=CHART_RANGES[chosen])
    return {"endpoint": endpoint, "charts": charts.endpoint_charts(series), "chart_range": chosen,
            "chart_ranges": list(CHART_RANGES)}


@team_view
def endpoint_charts(request: HttpRequest, team: Team, endpoint_id: str) -> HttpResponse:
    """Requests, errors, latency, queue and replicas over the last hour (or `?range=6h|24h`)."""
    return _live_part(
        request, team, endpoint_id, "dashboard/endpoints/charts.html", lambda e: _charts_context(request, e)
    )


@team_view
@require_http_methods(["GET", "POST"])
def endpoint_edit(request: HttpRequest, team: Team, endpoint_id: str) -> HttpResponse:
    endpoint = selectors.endpoint_get(team=team, endpoint_id=endpoint_id)
    bundles = dashboard_selectors.bundles_for_select(team=team)
    form = EndpointEditForm(request.POST or None, bundles=bundles, initial=EndpointEditForm.initial_for(endpoint))
    if request.method == "POST" and form.is_valid():
        try:
            services.endpoint_update(endpoint=endpoint, changes=form.changes(endpoint))
        except SERVICE_ERRORS as error:
            add_service_error(form, error, field_names=FIELD_NAMES)
        else:
            messages.success(request, f"Updating {endpoint.name}.")
            return redirect("dashboard:endpoint-detail", endpoint_id=endpoint.id)
    status = 422 if form.errors else 200
    return render_page(request, "dashboard/endpoints/edit.html", {"form": form, "endpoint": endpoint}, status=status)


@team_view
@require_POST
def endpoint_delete(request: HttpRequest, team: Team, endpoint_id: str) -> HttpResponse:
    endpoint = selectors.endpoint_get(team=team, endpoint_id=endpoint_id)
    services.endpoint_delete(endpoint=endpoint)
    messages.success(request, f"Deleting {endpoint.name}: its replicas finish their work and stop.")
    return redirect("dashboard:endpoint-list")


@team_view
@require_POST
def task_create(request: HttpRequest, team: Team, endpoint_id: str) -> HttpResponse:
    """ "Try it": submit an async task through the gateway and answer with its live status."""
    endpoint = selectors.endpoint_get(team=team, endpoint_id=endpoint_id)
    form = TryItForm(request.POST)
    task_id = None
    if form.is_valid():
        try:
            payload = gateway.task_payload({"args": form.cleaned_data["args"]})
            if endpoint.status == ModelEndpoint.Status.DELETE_IN_PROGRESS:
                form.add_error(None, "this endpoint is being deleted")
            else:
                task_id = gateway.task_submit(endpoint=endpoint, payload=payload)
        except SERVICE_ERRORS as error:
            add_service_error(form, error)
    if task_id is None:
        return render_page(
            request, "dashboard/endpoints/try_form.html", {"endpoint": endpoint, "try_form": form}, status=422
        )
    if not request.htmx:
        return redirect("dashboard:task-detail", endpoint_id=endpoint.id, task_id=task_id)
    task = {"task_id": task_id, "status": protocol.PENDING}
    return render_page(
        request, "dashboard/endpoints/try_form.html", {"endpoint": endpoint, "try_form": form, "task": task}
    )


PAYLOAD_SHOWN_CHARS = 2000


def _task_view(record: dict, task_id: str) -> dict:
    task = {"task_id": task_id, **record, "is_terminal": record["status"] in TERMINAL_TASK_STATUSES}
    payload = record.get("payload") or ""
    task["payload_text"] = payload[:PAYLOAD_SHOWN_CHARS]
    task["payload_truncated"] = len(payload) > PAYLOAD_SHOWN_CHARS
    if record.get("result") is not None:
        # The replica stores json.dumps(output); show it indented, or as is if it is not JSON.
        try:
            task["result_text"] = json.dumps(json.loads(record["result"]), indent=2)
        except ValueError:
            task["result_text"] = record["result"]
    return task


@team_view
def task_detail(request: HttpRequest, team: Team, endpoint_id: str, task_id: str) -> HttpResponse:
    endpoint = selectors.endpoint_get(team=team, endpoint_id=endpoint_id)
    if protocol.endpoint_id_of_task(task_id) != endpoint.id:
        raise NotFoundError(f"no task {task_id!r} on this endpoint")
    record = gateway.task_get(team=team, task_id=task_id)
    details = dashboard_selectors.task_detail(endpoint, task_id) or {}
    task = _task_view({**details, **record}, task_id)
    response = render_page(request, "dashboard/endpoints/task.html", {"endpoint": endpoint, "task": task})
    if request.htmx and task["is_terminal"]:
        response.status_code = STOP_POLLING
    return response

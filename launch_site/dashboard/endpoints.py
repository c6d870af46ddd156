"""Endpoint pages: list, deploy, detail with a live status panel, edit, delete, "Try it"."""

from __future__ import annotations

import json

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_http_methods, require_POST

from accounts.models import Team
from endpoints import gateway, selectors, services
from endpoints.models import ModelEndpoint
from launch_site.dashboard import selectors as dashboard_selectors
from launch_site.dashboard.common import SERVICE_ERRORS, STOP_POLLING, add_service_error, render_page, team_view
from launch_site.dashboard.forms import EndpointEditForm, EndpointForm, TryItForm
from launch_site.errors import NotFoundError
from workers import protocol

# The states an endpoint stays in until someone edits it; the others change on their own.
TERMINAL_STATUSES = (ModelEndpoint.Status.READY, ModelEndpoint.Status.UPDATE_FAILED)
TERMINAL_TASK_STATUSES = (protocol.SUCCESS, protocol.FAILURE)
FIELD_NAMES = {"model_bundle_id": "bundle"}


def _with_state(endpoints: list[ModelEndpoint]) -> list[ModelEndpoint]:
    """Attach live worker counts and queue depth (one query and one Redis round trip for all)."""
    counts = selectors.replica_counts(endpoints)
    depths = dashboard_selectors.queue_depths(endpoints)
    for endpoint in endpoints:
        endpoint.workers = counts[endpoint.id]
        endpoint.queue_depth = depths[endpoint.id]
        endpoint.is_terminal = endpoint.status in TERMINAL_STATUSES
    return endpoints


@team_view
def endpoint_list(request: HttpRequest, team: Team) -> HttpResponse:
    endpoints = _with_state(list(selectors.endpoint_list(team=team)))
    return render_page(request, "dashboard/endpoints/list.html", {"endpoints": endpoints})


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
            messages.success(request, f"Deploying {endpoint.name}: replicas are starting.")
            return redirect("dashboard:endpoint-detail", endpoint_id=endpoint.id)
    status = 422 if form.errors else 200
    return render_page(
        request, "dashboard/endpoints/form.html", {"form": form, "has_bundles": bundles.exists()}, status=status
    )


@team_view
def endpoint_detail(request: HttpRequest, team: Team, endpoint_id: str) -> HttpResponse:
    endpoint = _with_state([selectors.endpoint_get(team=team, endpoint_id=endpoint_id)])[0]
    context = {
        "endpoint": endpoint,
        "logs": dashboard_selectors.creation_logs(endpoint),
        "try_form": TryItForm(initial={"args": "{}"}),
    }
    return render_page(request, "dashboard/endpoints/detail.html", context)


@team_view
def endpoint_status(request: HttpRequest, team: Team, endpoint_id: str) -> HttpResponse:
    """The live status cell (`?cell=1`, for list rows) or panel (detail page): polled while not terminal."""
    template = "dashboard/endpoints/status_cell.html" if request.GET.get("cell") else "dashboard/endpoints/status.html"
    try:
        endpoint = _with_state([selectors.endpoint_get(team=team, endpoint_id=endpoint_id)])[0]
    except NotFoundError:
        if not request.htmx:
            raise
        # Deleted while the page was open: say so and stop polling (htmx would ignore a 404 and poll on).
        response = render_page(request, template, {"endpoint": None, "endpoint_id": endpoint_id})
        response.status_code = STOP_POLLING
        return response
    context = {"endpoint": endpoint}
    if not request.GET.get("cell"):
        context["logs"] = dashboard_selectors.creation_logs(endpoint)
    response = render_page(request, template, context)
    if request.htmx and endpoint.is_terminal:
        response.status_code = STOP_POLLING
    return response


@team_view
@require_http_methods(["GET", "POST"])
def endpoint_edit(request: HttpRequest, team: Team, endpoint_id: str) -> HttpResponse:
    endpoint = selectors.endpoint_get(team=team, endpoint_id=endpoint_id)
    bundles = dashboard_selectors.bundles_for_select(team=team)
    initial = {"bundle": endpoint.bundle_id, "min_workers": endpoint.min_workers, "max_workers": endpoint.max_workers}
    form = EndpointEditForm(request.POST or None, bundles=bundles, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        changes = {"min_workers": data["min_workers"], "max_workers": data["max_workers"]}
        if data["bundle"] != endpoint.bundle_id:
            changes["model_bundle_id"] = data["bundle"]
        try:
            services.endpoint_update(endpoint=endpoint, changes=changes)
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


def _task_view(record: dict, task_id: str) -> dict:
    task = {"task_id": task_id, **record, "is_terminal": record["status"] in TERMINAL_TASK_STATUSES}
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
    task = _task_view(gateway.task_get(team=team, task_id=task_id), task_id)
    response = render_page(request, "dashboard/endpoints/task.html", {"endpoint": endpoint, "task": task})
    if request.htmx and task["is_terminal"]:
        response.status_code = STOP_POLLING
    return response

"""Batch job pages: list, create from an uploaded input file, detail with live progress."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from accounts.models import Team
from batchjobs import selectors, services
from batchjobs.models import BatchJob
from launch_site.dashboard import selectors as dashboard_selectors
from launch_site.dashboard.common import (
    SERVICE_ERRORS,
    STOP_POLLING,
    add_service_error,
    list_page,
    render_page,
    search_text,
    status_filter,
    team_view,
)
from launch_site.dashboard.forms import BatchJobForm

# Service field names -> form field names (resource errors arrive as resource_requests.<name>).
FIELD_NAMES = {"model_bundle_id": "bundle", "input_path": "input_file", "file": "input_file", "body": "input_file"}


def progress(job: BatchJob) -> dict:
    """Counts and bar widths (percent of the total, when it is known)."""
    total = job.total_items
    done = job.items_completed + job.items_failed
    pending = max(total - done, 0) if total is not None else None
    scale = 100 / total if total else 0
    # Duration, throughput and ETA from the job's own timestamps (no extra bookkeeping).
    end = job.finished_at or timezone.now()
    elapsed = (end - job.started_at).total_seconds() if job.started_at else None
    rate = done / elapsed if elapsed and done else None
    eta = pending / rate if rate and pending and not job.is_terminal else None
    return {
        "elapsed": elapsed,
        "rate": rate,
        "eta": eta,
        "total": total,
        "completed": job.items_completed,
        "failed": job.items_failed,
        "pending": pending,
        "completed_pct": round(job.items_completed * scale, 1),
        "failed_pct": round(job.items_failed * scale, 1),
        "done_pct": round(done * scale) if total else (100 if job.is_terminal else 0),
    }


@team_view
def batch_job_list(request: HttpRequest, team: Team) -> HttpResponse:
    """Jobs newest first: `?q=` (job id or bundle name), `?status=`, `?page=`."""
    jobs = selectors.batch_job_list(team=team)
    if search := search_text(request):
        jobs = jobs.filter(Q(id__icontains=search) | Q(bundle_name__icontains=search))
    if status := status_filter(request, BatchJob.Status.values):
        jobs = jobs.filter(status=status)
    context = {**list_page(request, jobs), "status": status, "statuses": BatchJob.Status.values}
    for job in context["items"]:
        job.progress = progress(job)
    return render_page(request, "dashboard/batch/list.html", context)


@team_view
@require_http_methods(["GET", "POST"])
def batch_job_create(request: HttpRequest, team: Team) -> HttpResponse:
    bundles = dashboard_selectors.bundles_for_select(team=team)
    initial = {"bundle": request.GET.get("bundle")} if request.GET.get("bundle") else {}
    form = BatchJobForm(request.POST or None, request.FILES or None, bundles=bundles, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        upload = data["input_file"]
        try:
            job = services.batch_job_create_from_upload(
                team=team, user=request.user, file=upload, size=upload.size, model_bundle_id=data["bundle"],
                resource_requests={
                    "max_workers": data["max_workers"], "per_worker": data["per_worker"],
                    "cpus": data["cpus"], "memory": data["memory"],
                },
            )  # fmt: skip
        except SERVICE_ERRORS as error:
            add_service_error(form, error, field_names=FIELD_NAMES)
        else:
            messages.success(request, f"Batch job {job.id} created.")
            return redirect("dashboard:batch-detail", job_id=job.id)
    status = 422 if form.errors else 200
    return render_page(
        request, "dashboard/batch/form.html", {"form": form, "has_bundles": bundles.exists()}, status=status
    )


@team_view
def batch_job_detail(request: HttpRequest, team: Team, job_id: str) -> HttpResponse:
    job = selectors.batch_job_get(team=team, job_id=job_id)
    job.progress = progress(job)
    return render_page(request, "dashboard/batch/detail.html", {"job": job})


@team_view
def batch_job_progress(request: HttpRequest, team: Team, job_id: str) -> HttpResponse:
    """The progress panel, polled while the job is pending or running."""
    job = selectors.batch_job_get(team=team, job_id=job_id)
    job.progress = progress(job)
    response = render_page(request, "dashboard/batch/progress.html", {"job": job})
    # The terminal render is sent (Finished, the result link, no Cancel) and polling stops.
    if request.htmx and job.is_terminal:
        response.status_code = STOP_POLLING
    return response


@team_view
@require_POST
def batch_job_cancel(request: HttpRequest, team: Team, job_id: str) -> HttpResponse:
    job = selectors.batch_job_get(team=team, job_id=job_id)
    try:
        services.batch_job_cancel(job=job)
    except SERVICE_ERRORS as error:
        messages.error(request, getattr(error, "message", str(error)))
    else:
        messages.success(request, f"Batch job {job.id} cancelled.")
    return redirect("dashboard:batch-detail", job_id=job.id)

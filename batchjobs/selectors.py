from __future__ import annotations

from django.utils import timezone

from accounts.models import Team
from batchjobs.models import BatchJob
from launch_site.errors import NotFoundError


def batch_job_get(*, team: Team, job_id: str) -> BatchJob:
    """A job of the caller's team; another team's job is not found."""
    job = BatchJob.objects.select_related("result", "bundle").filter(team=team, pk=job_id).first()
    if job is None:
        raise NotFoundError(f"no batch job {job_id!r}")
    return job


def batch_job_list(*, team: Team):
    return BatchJob.objects.select_related("bundle").filter(team=team).order_by("-created_at")


def iso_duration(seconds: float) -> str:
    """ISO 8601, as the contract's `format: duration` (pydantic's form: PT12.5S)."""
    return f"PT{max(seconds, 0):.3f}".rstrip("0").rstrip(".") + "S"


def batch_job_status(job: BatchJob, *, result_url: str | None) -> dict:
    """GetBatchJobV1Response plus our own fields. `num_tasks_completed` counts finished
    items, failed ones included (pending + completed = total, as the hosted service);
    `num_tasks_failed` is how many of those failed, `failed_items` the first of them with
    their errors. `result` is also set on a job that ended early (CANCELLED, FAILURE,
    TIMEOUT) after some items finished: the results of those items."""
    end = job.finished_at or timezone.now()
    done = job.items_completed + job.items_failed
    total = job.total_items
    return {
        "job_id": job.id,
        "status": job.status,
        "status_reason": job.status_reason or None,
        "result": result_url if job.result_id else None,
        "duration": iso_duration((end - job.created_at).total_seconds()),
        "num_tasks_pending": max(total - done, 0) if total is not None else None,
        "num_tasks_completed": done,
        "num_tasks_failed": job.items_failed,
        "failed_items": job.failed_items,
        "model_bundle_id": job.model_bundle_id,
        "serialization_format": job.serialization_format,
        "labels": job.labels,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }

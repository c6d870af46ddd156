"""Writes of batch jobs. The controller runs them (batchjobs.runner); these record what the
user asked for and enqueue the work on commit."""

from __future__ import annotations

from typing import IO, Any

from django.conf import settings
from django.db import transaction

from accounts.models import Team
from accounts.quotas import quota_check, usage_of
from batchjobs import storage
from batchjobs.inputs import HEAD_BYTES, InputError, check_head
from batchjobs.models import ACTIVE_STATUSES, BatchJob
from bundles.models import ModelBundle, StoredObject
from endpoints.models import GPU_TYPES
from endpoints.quantities import parse_bytes, parse_cpus
from launch_site import limits
from launch_site.errors import ConflictError, FieldError
from workers.runtimes.local_gpus import local_gpu_refusal
from workers.tick import wake_controller

RESOURCE_FIELDS = (
    "cpus",
    "memory",
    "gpus",
    "gpu_type",
    "storage",
    "max_workers",
    "per_worker",
    "concurrent_requests_per_worker",
)


def _resource_error(name: str, message: str) -> FieldError:
    return FieldError(f"resource_requests.{name}", message)


def _apply_resources(job: BatchJob, requests: dict[str, Any]) -> None:
    unknown = set(requests) - set(RESOURCE_FIELDS)
    if unknown:
        raise _resource_error(sorted(unknown)[0], f"unknown resource (use {', '.join(RESOURCE_FIELDS[:-1])})")
    values = {key: value for key, value in requests.items() if value is not None}
    if "cpus" in values:
        try:
            job.cpus_millis = parse_cpus(values["cpus"])
        except ValueError as error:
            raise _resource_error("cpus", str(error)) from None
        job.cpus = str(values["cpus"])
    for name in ("memory", "storage"):
        if name in values:
            try:
                size = parse_bytes(values[name])
            except ValueError as error:
                raise _resource_error(name, str(error)) from None
            setattr(job, name, str(values[name]))
            setattr(job, f"{name}_bytes", size)
    for name in ("gpus", "max_workers", "per_worker", "concurrent_requests_per_worker"):
        if name in values and (not isinstance(values[name], int) or isinstance(values[name], bool)):
            raise _resource_error(name, "must be an integer")
    job.gpus = values.get("gpus", 0)
    job.gpu_type = values.get("gpu_type") or None
    job.max_workers = values.get("max_workers", 1)
    job.per_worker = values.get("per_worker", values.get("concurrent_requests_per_worker", 1))
    for name, minimum, maximum in (
        ("gpus", 0, limits.MAX_GPUS),
        ("max_workers", 1, limits.MAX_WORKERS),
        ("per_worker", 1, limits.MAX_PER_WORKER),
    ):
        limits.check_integer(getattr(job, name), field=f"resource_requests.{name}", minimum=minimum, maximum=maximum)
    if job.gpus:
        if job.gpu_type not in GPU_TYPES:
            raise _resource_error("gpu_type", f"is required when gpus > 0: one of {', '.join(GPU_TYPES)}")
        refusal = local_gpu_refusal(job.gpus, job.gpu_type) if settings.LAUNCH_RUNTIME == "local" else None
        if refusal:
            raise _resource_error(*refusal)
    elif job.gpu_type:
        raise _resource_error("gpu_type", "must be empty when gpus is 0")


def _check_input(stored: StoredObject) -> None:
    """The cheap part of input validation: the header and the first item."""
    try:
        with storage.open_input(stored) as stream:
            head = stream.read(HEAD_BYTES)
    except storage.StoreError as error:
        raise FieldError("input_path", f"cannot read the input file: {error}") from None
    try:
        check_head(head)
    except InputError as error:
        raise FieldError("input_path", str(error)) from None


def _enqueue_prepare(job_id: str) -> None:
    # The controller's tick starts the job's loop at once, and the loop prepares the job under
    # the job's lease: one loop per job, so one writer of its results file.
    transaction.on_commit(wake_controller)


def _bundle_for(team: Team, bundle_id: str) -> ModelBundle:
    bundle = ModelBundle.objects.select_related("artifact").filter(team=team, pk=bundle_id).first()
    if bundle is None:
        raise FieldError("model_bundle_id", f"no model bundle {bundle_id!r} in your team")
    if bundle.is_runnable_image:
        raise FieldError(
            "model_bundle_id",
            f"bundle {bundle_id!r} is a runnable image ({bundle.flavor}); batch jobs run cloudpickle or zip "
            "bundles (for an image of your own, use /v1/docker-image-batch-jobs)",
        )
    return bundle


def _new_job(
    *,
    team: Team,
    user,
    bundle: ModelBundle,
    serialization_format: str,
    labels: dict[str, str] | None,
    resource_requests: dict[str, Any] | None,
    timeout_seconds: float | None,
) -> BatchJob:
    """An unsaved job with every field but its input checked (before any bytes are stored)."""
    fmt = serialization_format.upper() if isinstance(serialization_format, str) else serialization_format
    if fmt not in BatchJob.SerializationFormat.values:
        raise FieldError("serialization_format", "must be JSON or PICKLE")
    if labels is not None and (not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values())):
        raise FieldError("labels", "must be an object of strings")
    if resource_requests is not None and not isinstance(resource_requests, dict):
        raise FieldError("resource_requests", "must be an object")
    timeout = limits.check_seconds(
        43200.0 if timeout_seconds is None else timeout_seconds,
        field="timeout_seconds", maximum=limits.MAX_BATCH_TIMEOUT_SECONDS,
    )
    job = BatchJob(
        team=team,
        created_by=user if getattr(user, "pk", None) else None,
        bundle=bundle,
        model_bundle_id=bundle.id,
        bundle_name=bundle.name,
        serialization_format=fmt,
        labels=labels or {},
        timeout_seconds=float(timeout),
    )
    _apply_resources(job, resource_requests or {})
    quota_check(team=team, adding=usage_of(job), field_prefix="resource_requests.")
    return job


def _save(job: BatchJob, *, stored: StoredObject, input_path: str) -> BatchJob:
    _check_input(stored)
    job.input, job.input_path = stored, input_path
    job.full_clean()
    job.save()
    _enqueue_prepare(job.id)
    return job


@transaction.atomic
def batch_job_create(
    *,
    team: Team,
    user,
    model_bundle_id: str,
    input_path: str,
    serialization_format: str,
    labels: dict[str, str] | None = None,
    resource_requests: dict[str, Any] | None = None,
    timeout_seconds: float | None = None,
) -> BatchJob:
    """Record a PENDING job over an input file; the controller runs it. `input_path` is what
    batch_task_input_upload handed out (s3://<bucket>/<key>), or one of the team's files
    (/v1/files): its id, or its /v1/files/{id} path or URL."""
    from bundles.services import file_for_reference, stored_object_resolve

    job = _new_job(
        team=team,
        user=user,
        bundle=_bundle_for(team, model_bundle_id),
        serialization_format=serialization_format,
        labels=labels,
        resource_requests=resource_requests,
        timeout_seconds=timeout_seconds,
    )
    file = file_for_reference(team=team, reference=input_path, field="input_path")
    if file is not None:
        stored = file.stored
    else:
        stored = stored_object_resolve(team=team, location=input_path, kind="batch_input", field="input_path")
    return _save(job, stored=stored, input_path=input_path)


@transaction.atomic
def batch_job_create_for_bundle_name(
    *,
    team: Team,
    user,
    bundle_name: str,
    input_path: str,
    serialization_format: str,
    labels: dict[str, str] | None = None,
    resource_requests: dict[str, Any] | None = None,
    timeout_seconds: float | None = None,
) -> BatchJob:
    """The legacy route's create (`POST /v1/hosted_inference/batch_job/<bundle_name>`): the
    newest bundle of that name; `serialization_format` may be lower case."""
    bundle = ModelBundle.objects.filter(team=team, name=bundle_name).order_by("-created_at").first()
    if bundle is None:
        raise FieldError("bundle_name", f"no model bundle named {bundle_name!r} in your team")
    return batch_job_create(
        team=team,
        user=user,
        model_bundle_id=bundle.id,
        input_path=input_path,
        serialization_format=serialization_format,
        labels=labels,
        resource_requests=resource_requests,
        timeout_seconds=timeout_seconds,
    )


@transaction.atomic
def batch_job_create_from_upload(
    *,
    team: Team,
    user,
    file: IO[bytes],
    size: int,
    model_bundle_id: str,
    serialization_format: str = "JSON",
    labels: dict[str, str] | None = None,
    resource_requests: dict[str, Any] | None = None,
    timeout_seconds: float | None = None,
) -> BatchJob:
    """Our own direct upload: store the input file and create the job over it in one go."""
    job = _new_job(
        team=team,
        user=user,
        bundle=_bundle_for(team, model_bundle_id),
        serialization_format=serialization_format,
        labels=labels,
        resource_requests=resource_requests,
        timeout_seconds=timeout_seconds,
    )
    stored = storage.save_input(team=team, file=file, size=size)
    try:
        with transaction.atomic():
            return _save(job, stored=stored, input_path=stored.location)
    except BaseException:
        # The row goes with the rolled-back transaction; the file must go too (nothing
        # refused is half created, and a refused input would sit outside any quota).
        storage.delete_bytes(stored)
        raise


@transaction.atomic
def batch_job_cancel(*, job: BatchJob) -> BatchJob:
    """Cancel a pending or running job: CANCELLED at once; the controller stops its replicas.
    A finished job cannot change (409)."""
    job = BatchJob.objects.get(pk=job.pk)
    if not job.cancel(reason="cancelled by the user"):
        # It finished first (or was already finished): say with which status.
        job.refresh_from_db(fields=["status"])
        raise _finished_error(job)
    transaction.on_commit(lambda: _stop_replicas(job.id))
    return job


def _finished_error(job: BatchJob) -> ConflictError:
    return ConflictError(
        f"batch job {job.id} already finished with status {job.status}; a finished job cannot be "
        "cancelled, restarted or changed"
    )


def _stop_replicas(job_id: str) -> None:
    from workers.jobs import enqueue_reconcile

    enqueue_reconcile("batch_job", job_id)


def batch_job_update(*, job: BatchJob, cancel: bool) -> BatchJob:
    """PUT /v1/batch-jobs/<id>: the only change a job takes is a cancel."""
    if job.status not in ACTIVE_STATUSES:
        raise _finished_error(job)
    if not cancel:
        return job
    return batch_job_cancel(job=job)

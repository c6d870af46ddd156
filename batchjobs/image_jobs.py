"""Docker-image batch jobs: a user's image and command run once, in one container, over its
job_config (written as a JSON file at the bundle's mount_location), on the docker runtime.

Writes (bundle and job create, cancel) are services here; the controller's tick
(`image_jobs_tick`, a tick hook) starts PENDING jobs and follows RUNNING ones:

  PENDING --(placed and started)--> RUNNING --(exit 0)--> SUCCESS
                                            --(exit != 0, OOM, container gone)--> FAILURE
                                            --(past override_job_max_runtime_s)--> TIMEOUT
  PENDING | RUNNING --(cancel)--> CANCELLED (its container is removed)

Each job holds one Replica row (owner_kind image_job) while it runs: placement
(workers.placement) books the host's CPUs, memory and GPU ids on it, so jobs and replicas
share hosts without double booking, and the orphan sweep spares its container. Every
transition is a compare-and-set on the status; the container's logs and exit status are
copied onto the job before the container is removed.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import tarfile
import time
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import Team
from accounts.quotas import Usage, quota_check
from batchjobs.models import ACTIVE_STATUSES, BatchJob, DockerImageBatchJob, DockerImageBatchJobBundle
from endpoints.models import GPU_TYPES
from endpoints.quantities import parse_bytes, parse_cpus
from launch_site.errors import ConflictError, FieldError, NotFoundError

logger = logging.getLogger(__name__)

Status = BatchJob.Status
LOG_LIMIT_CHARS = 200_000
DEFAULT_CPUS, DEFAULT_MEMORY = "1", "1Gi"


# --- bundles ---------------------------------------------------------------------------------


def _resources(requests: dict[str, Any] | None, *, field: str) -> dict[str, Any]:
    """The contract's CreateDockerImageBatchJobResourceRequests, checked; keys left out stay out."""
    requests = requests or {}
    if not isinstance(requests, dict):
        raise FieldError(field, "must be an object")
    known = ("cpus", "memory", "gpus", "gpu_type", "storage", "nodes_per_worker")
    for key in requests:
        if key not in known:
            raise FieldError(f"{field}.{key}", "is not a resource request")
    out = {key: value for key, value in requests.items() if value is not None}
    if out.get("nodes_per_worker", 1) != 1:
        raise FieldError(f"{field}.nodes_per_worker", "multi-node jobs are not supported here; use 1")
    out.pop("nodes_per_worker", None)
    for key, parse in (("cpus", parse_cpus), ("memory", parse_bytes), ("storage", parse_bytes)):
        if key in out:
            try:
                parse(out[key])
            except ValueError as error:
                raise FieldError(f"{field}.{key}", str(error)) from None
            out[key] = str(out[key])
    if "gpus" in out and (isinstance(out["gpus"], bool) or not isinstance(out["gpus"], int) or out["gpus"] < 0):
        raise FieldError(f"{field}.gpus", "must be a non-negative integer")
    if "gpu_type" in out and out["gpu_type"] not in GPU_TYPES:
        raise FieldError(f"{field}.gpu_type", f"must be one of {', '.join(GPU_TYPES)}")
    return out


@transaction.atomic
def image_job_bundle_create(
    *, team: Team, user, name: Any, image_repository: Any, image_tag: Any, command: Any, env: Any = None,
    mount_location: Any = None, resource_requests: dict | None = None, public: Any = False,
) -> DockerImageBatchJobBundle:
    if not isinstance(name, str) or not name.strip() or "/" in name:
        raise FieldError("name", "must be a non-empty string without '/'")
    for field, value in (("image_repository", image_repository), ("image_tag", image_tag)):
        if not isinstance(value, str) or not value or any(c.isspace() for c in value):
            raise FieldError(field, "must be a non-empty string without spaces")
    if not isinstance(command, list) or not command or not all(isinstance(part, str) for part in command):
        raise FieldError("command", "must be a non-empty list of strings")
    env = env or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise FieldError("env", "must be an object of strings")
    if mount_location is not None and (not isinstance(mount_location, str) or not posixpath.isabs(mount_location)
                                       or mount_location.endswith("/")):
        raise FieldError("mount_location", "must be an absolute file path such as /launch/config.json")
    resources = _resources(resource_requests, field="resource_requests")
    if public is not None and not isinstance(public, bool):
        raise FieldError("public", "must be true or false")
    bundle = DockerImageBatchJobBundle(
        team=team, created_by=user if getattr(user, "pk", None) else None, name=name,
        image_repository=image_repository, image_tag=image_tag, command=command, env=env,
        mount_location=mount_location, cpus=resources.get("cpus"), memory=resources.get("memory"),
        storage=resources.get("storage"), gpus=resources.get("gpus"), gpu_type=resources.get("gpu_type"),
        public=bool(public),
    )
    bundle.full_clean()
    bundle.save()
    return bundle


def image_job_bundle_get(*, team: Team, bundle_id: str) -> DockerImageBatchJobBundle:
    bundle = DockerImageBatchJobBundle.objects.filter(team=team, pk=bundle_id).first()
    if bundle is None:
        raise NotFoundError(f"No docker image batch job bundle {bundle_id!r}.")
    return bundle


def image_job_bundle_latest(*, team: Team, name: str) -> DockerImageBatchJobBundle:
    bundle = DockerImageBatchJobBundle.objects.filter(team=team, name=name).order_by("-created_at").first()
    if bundle is None:
        raise NotFoundError(f"No docker image batch job bundle named {name!r}.")
    return bundle


# --- jobs ------------------------------------------------------------------------------------


def _runtime_refusal() -> str | None:
    if settings.LAUNCH_RUNTIME != "docker":
        return (
            "docker image batch jobs run a container of your image, which needs the docker runtime "
            f"(LAUNCH_RUNTIME=docker and a registered Docker host); this server runs the {settings.LAUNCH_RUNTIME} "
            "runtime"
        )
    return None


@transaction.atomic
def image_job_create(
    *, team: Team, user, bundle_id: str | None = None, bundle_name: str | None = None, job_config: Any = None,
    labels: Any = None, resource_requests: dict | None = None, override_job_max_runtime_s: Any = None,
    trigger_id: str = "",
) -> DockerImageBatchJob:
    """A PENDING job over the bundle (by id, or the latest of a name); the tick starts it."""
    for field, value in (("docker_image_batch_job_bundle_id", bundle_id), ("docker_image_batch_job_bundle_name", bundle_name)):
        if value is not None and not isinstance(value, str):
            raise FieldError(field, "must be a string")
    if bundle_id:
        bundle = DockerImageBatchJobBundle.objects.filter(team=team, pk=bundle_id).first()
        if bundle is None:
            raise FieldError("docker_image_batch_job_bundle_id", f"no docker image batch job bundle {bundle_id!r}")
    elif bundle_name:
        bundle = DockerImageBatchJobBundle.objects.filter(team=team, name=bundle_name).order_by("-created_at").first()
        if bundle is None:
            raise FieldError("docker_image_batch_job_bundle_name", f"no docker image batch job bundle {bundle_name!r}")
    else:
        raise FieldError("docker_image_batch_job_bundle_id", "give a bundle id or a bundle name")
    refusal = _runtime_refusal()
    if refusal:
        raise FieldError("docker_image_batch_job_bundle_id", refusal)
    if job_config is not None and not isinstance(job_config, dict):
        raise FieldError("job_config", "must be a JSON object or null")
    if job_config is not None and not bundle.mount_location:
        raise FieldError("job_config", "its bundle has no mount_location to write it to")
    labels = labels or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise FieldError("labels", "must be an object of strings")
    if override_job_max_runtime_s is not None and (
        isinstance(override_job_max_runtime_s, bool) or not isinstance(override_job_max_runtime_s, int)
        or override_job_max_runtime_s < 1
    ):
        raise FieldError("override_job_max_runtime_s", "must be a positive integer (seconds)")
    asked = _resources(resource_requests, field="resource_requests")
    defaults = {"cpus": bundle.cpus, "memory": bundle.memory, "gpus": bundle.gpus, "gpu_type": bundle.gpu_type}
    resources = {**{k: v for k, v in defaults.items() if v is not None}, **asked}
    gpus = int(resources.get("gpus") or 0)
    gpu_type = resources.get("gpu_type")
    if gpus and not gpu_type:
        raise FieldError("resource_requests.gpu_type", "is required when gpus > 0")
    job = DockerImageBatchJob(
        team=team, created_by=user if getattr(user, "pk", None) else None, bundle=bundle, trigger_id=trigger_id,
        job_config=job_config, labels=labels, cpus_millis=parse_cpus(resources.get("cpus", DEFAULT_CPUS)),
        memory_bytes=parse_bytes(resources.get("memory", DEFAULT_MEMORY)), gpus=gpus,
        gpu_type=gpu_type if gpus else None, override_job_max_runtime_s=override_job_max_runtime_s,
    )
    quota_check(team=team, adding=Usage(batch_jobs=1, workers=1, gpus=gpus), field_prefix="resource_requests.")
    job.full_clean()
    job.save()
    transaction.on_commit(_wake)
    return job


def _wake() -> None:
    from workers.tick import wake_controller

    wake_controller()


def image_job_get(*, team: Team, job_id: str) -> DockerImageBatchJob:
    job = DockerImageBatchJob.objects.filter(team=team, pk=job_id).first()
    if job is None:
        raise NotFoundError(f"No docker image batch job {job_id!r}.")
    return job


def _move(job: DockerImageBatchJob, to: str, *, reason: str = "", **fields) -> bool:
    """Compare-and-set from an active status to `to`; False when the job moved meanwhile."""
    changes = {"status": to, "status_reason": reason, **fields}
    if to not in ACTIVE_STATUSES:
        changes.setdefault("completed_at", timezone.now())
    won = bool(DockerImageBatchJob.objects.filter(pk=job.pk, status=job.status).update(**changes))
    if won:
        for name, value in changes.items():
            setattr(job, name, value)
    return won


def image_job_cancel(*, job: DockerImageBatchJob) -> DockerImageBatchJob:
    """Cancel a pending or running job: CANCELLED at once, its container removed (logs kept)."""
    job.refresh_from_db()
    if job.status not in ACTIVE_STATUSES:
        raise ConflictError(f"docker image batch job {job.id} is {job.status}: only a pending or running job can be cancelled")
    if not _move(job, Status.CANCELLED, reason="cancelled"):
        raise ConflictError(f"docker image batch job {job.id} changed while cancelling; try again")
    _release(job, keep_logs=True)
    return job


# --- the tick ----------------------------------------------------------------------------------


def job_replica(job: DockerImageBatchJob):
    from workers.models import Replica

    return Replica.objects.filter(pk=job.replica_id).select_related("host").first() if job.replica_id else None


def _release(job: DockerImageBatchJob, *, keep_logs: bool) -> None:
    """Copy the container's logs onto the job, remove it, and free what its replica booked."""
    from workers import lifecycle
    from workers.models import LIVE_STATES, Replica
    from workers.runtimes import get_runtime

    replica = job_replica(job)
    if replica is None:
        return
    runtime = get_runtime("docker")
    if keep_logs:
        logs = runtime.logs(replica, tail_lines=5000)
        if logs:
            DockerImageBatchJob.objects.filter(pk=job.pk).update(logs=logs[-LOG_LIMIT_CHARS:])
            job.logs = logs[-LOG_LIMIT_CHARS:]
    runtime.kill(replica)
    if replica.state in LIVE_STATES:
        lifecycle.compare_and_set(replica, Replica.State.STOPPED, f"docker image batch job {job.status}")


def image_jobs_tick() -> None:
    """Registered as a controller tick hook: start PENDING jobs, follow RUNNING ones, and clean
    up after jobs that ended while the controller was away."""
    if not DockerImageBatchJob.objects.filter(status__in=ACTIVE_STATUSES).exists():
        return
    for job in DockerImageBatchJob.objects.filter(status__in=ACTIVE_STATUSES).select_related("bundle", "team"):
        try:
            if job.status == Status.PENDING:
                _start_once(job)
            else:
                _follow(job)
        except Exception:  # noqa: BLE001 - one bad job must not stop the others
            logger.exception("docker image batch job %s: tick failed", job.id)


def _job_files(job: DockerImageBatchJob) -> bytes | None:
    """A tar with the job_config JSON at the bundle's mount_location, for put_archive."""
    if not job.bundle.mount_location:
        return None
    data = json.dumps(job.job_config if job.job_config is not None else {}).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(job.bundle.mount_location.lstrip("/"))
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# Long enough for a start that pulls its image; a controller killed mid-start holds the job
# up for at most this long.
START_LOCK_SECONDS = 120


def _start_once(job: DockerImageBatchJob) -> None:
    """_start under a lock of the job: a second controller (or a tick loop that outlived its
    stop) would otherwise take the first one's starting replica for a stale one and remove its
    container while the job goes RUNNING."""
    from launch_site.redis_client import get_redis

    lock = get_redis().lock(f"launch:lock:image_job:{job.id}", timeout=START_LOCK_SECONDS)
    if not lock.acquire(blocking=False):
        return
    try:
        job.refresh_from_db(fields=["status", "replica_id"])
        if job.status == Status.PENDING:
            _start(job)
    finally:
        try:
            lock.release()
        except Exception:  # noqa: BLE001 - expired lock: nothing to release
            pass


def _start(job: DockerImageBatchJob) -> None:
    from workers.models import Replica
    from workers.runtimes.base import PlacementError, ReplicaSpec
    from workers.runtimes.docker import DockerRuntime

    refusal = _runtime_refusal()
    if refusal:
        _move(job, Status.FAILURE, reason=refusal)
        return
    stale = job_replica(job)
    if stale is not None:  # a start interrupted by a controller restart: begin again
        DockerRuntime().kill(stale)
        stale.delete()
    replica = Replica.objects.create(owner_kind=Replica.Owner.IMAGE_JOB, owner_id=job.id, runtime="docker")
    DockerImageBatchJob.objects.filter(pk=job.pk).update(replica_id=replica.id)
    job.replica_id = replica.id
    spec = ReplicaSpec(
        replica_id=replica.id, owner_kind=Replica.Owner.IMAGE_JOB, owner_id=job.id, team=job.team.name, env={},
        cpus=job.cpus_millis / 1000, memory_bytes=job.memory_bytes, gpus=job.gpus, gpu_type=job.gpu_type,
        labels={"launch.image_job": job.id, **{f"user.{k}": str(v) for k, v in job.labels.items()}},
    )
    runtime = DockerRuntime()
    try:
        placement = runtime.place(spec)
        handle = runtime.start_job_container(
            spec, placement, image=job.bundle.image, command=job.bundle.command, environment=job.bundle.env,
            files=_job_files(job),
        )
    except PlacementError as error:  # no capacity yet, or the image is being pulled
        replica.delete()
        reason = f"waiting for capacity: {error}"
        DockerImageBatchJob.objects.filter(pk=job.pk, status=Status.PENDING).update(replica_id="", status_reason=reason)
        return
    except Exception as error:  # noqa: BLE001 - a start that cannot work is the job's failure
        runtime.kill(replica)
        replica.delete()
        _move(job, Status.FAILURE, reason=f"could not start the container: {error}")
        return
    Replica.objects.filter(pk=replica.pk).update(handle=handle, state=Replica.State.READY, ready_at=timezone.now())
    if not _move(job, Status.RUNNING, started_at=timezone.now()):
        # Cancelled while it started: take the container down again.
        runtime.kill(replica)
        Replica.objects.filter(pk=replica.pk).update(state=Replica.State.STOPPED, stopped_at=timezone.now())
    logger.info("docker image batch job %s started as replica %s", job.id, replica.id)


def _follow(job: DockerImageBatchJob) -> None:
    from workers.runtimes import get_runtime

    replica = job_replica(job)
    if replica is None:
        _move(job, Status.FAILURE, reason="its container is gone")
        return
    runtime = get_runtime("docker")
    # A host that does not answer now (a few failed probes: a busy or restarting daemon) says
    # nothing of the container: the job waits for it rather than failing and removing a
    # container that may still be running; its max runtime still bounds it.
    host_unreachable = replica.host is not None and not replica.host.healthy
    if host_unreachable or runtime.is_alive(replica):
        limit = job.override_job_max_runtime_s
        if limit and job.started_at and (timezone.now() - job.started_at).total_seconds() > limit:
            if _move(job, Status.TIMEOUT, reason=f"ran past override_job_max_runtime_s ({limit} s)"):
                _release(job, keep_logs=True)
        return
    ended = runtime.exit_info(replica)
    if ended is None:
        status, reason, code = Status.FAILURE, "its container is gone (removed, or its host is unreachable)", None
    elif ended.exit_code == 0 and not ended.oom:
        status, reason, code = Status.SUCCESS, "", 0
    else:
        status, reason, code = Status.FAILURE, f"the container {ended.describe()}", ended.exit_code
    logs = runtime.logs(replica, tail_lines=5000)[-LOG_LIMIT_CHARS:]
    if _move(job, status, reason=reason, exit_code=code, logs=logs):
        _release(job, keep_logs=False)

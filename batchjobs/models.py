from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from launch_site.ids import new_id


def new_batch_job_id() -> str:
    return new_id("btch")


class BatchJob(models.Model):
    """A bundle run over a file of inputs by its own replicas.

    The input is never held in one row or one Redis value: the controller streams it into
    chunks of `chunk_size` items (task `<id>-<index>` on the job's queue) and keeps a cursor
    here. `chunks_collected` and `results_bytes` move together in one UPDATE, after the
    collected chunks were appended to the results file, so a controller that dies between
    the two truncates the file back to `results_bytes` and collects those chunks again.
    """

    class Status(models.TextChoices):
        PENDING = "PENDING"
        RUNNING = "RUNNING"
        SUCCESS = "SUCCESS"
        FAILURE = "FAILURE"
        CANCELLED = "CANCELLED"
        UNDEFINED = "UNDEFINED"
        TIMEOUT = "TIMEOUT"

    class SerializationFormat(models.TextChoices):
        JSON = "JSON"
        PICKLE = "PICKLE"

    id = models.CharField(max_length=32, primary_key=True, default=new_batch_job_id, editable=False)
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="batch_jobs")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    # A finished job outlives its bundle: deleting the bundle (refused while an active job
    # uses it) leaves the job its bundle's id and name as plain metadata.
    bundle = models.ForeignKey(
        "bundles.ModelBundle", null=True, blank=True, on_delete=models.SET_NULL, related_name="batch_jobs"
    )
    model_bundle_id = models.CharField(max_length=32, blank=True)
    bundle_name = models.CharField(max_length=200, blank=True)
    # Null only once the job has finished and the file it read (/v1/files) was deleted.
    input = models.ForeignKey("bundles.StoredObject", on_delete=models.PROTECT, related_name="+", null=True, blank=True)
    input_path = models.CharField(max_length=512)
    serialization_format = models.CharField(max_length=8, choices=SerializationFormat.choices)
    labels = models.JSONField(default=dict, blank=True)

    # Resources of each replica, as given and parsed (endpoints.quantities).
    cpus = models.CharField(max_length=32, default="1")
    cpus_millis = models.PositiveIntegerField(default=1000)
    memory = models.CharField(max_length=32, default="1Gi")
    memory_bytes = models.BigIntegerField(default=2**30)
    storage = models.CharField(max_length=32, null=True, blank=True)
    storage_bytes = models.BigIntegerField(null=True, blank=True)
    gpus = models.PositiveIntegerField(default=0)
    gpu_type = models.CharField(max_length=40, null=True, blank=True)
    max_workers = models.PositiveIntegerField(default=1)
    per_worker = models.PositiveIntegerField(default=1)
    timeout_seconds = models.FloatField(default=43200.0)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    status_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # Progress. total_items is a line count until the input has been read to its end.
    total_items = models.PositiveIntegerField(null=True, blank=True)
    items_completed = models.PositiveIntegerField(default=0)
    items_failed = models.PositiveIntegerField(default=0)
    result = models.ForeignKey(
        "bundles.StoredObject", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    desired_workers = models.PositiveIntegerField(default=0)
    # The first FAILED_ITEMS_KEPT failed items, {"id", "error"} (the error's tail), so the
    # page and the API can list them without reading the results file; every failed item's
    # full error is in that file.
    failed_items = models.JSONField(default=list, blank=True)

    # The resume cursor (see the class docstring).
    chunk_size = models.PositiveIntegerField(default=0)
    chunks_enqueued = models.PositiveIntegerField(default=0)
    items_enqueued = models.PositiveIntegerField(default=0)
    chunks_collected = models.PositiveIntegerField(default=0)
    input_exhausted = models.BooleanField(default=False)
    results_bytes = models.BigIntegerField(default=0)
    # Replicas stopped and Redis keys removed after the job ended.
    released = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["team", "-created_at"]), models.Index(fields=["status", "released"])]

    def __str__(self) -> str:
        return self.id

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    # --- transitions ------------------------------------------------------------------------
    # Each is a compare-and-set on the status (UPDATE ... WHERE status IN <ALLOWED_FROM>), so
    # of two writers racing (the loop finishing, the user cancelling, the controller seeing a
    # load error) exactly one wins; each returns whether it did, and only then updates this
    # instance.

    def start(self, *, total_items: int, chunk_size: int, results_bytes: int) -> bool:
        """PENDING -> RUNNING, once the inputs are counted and the results file is started.
        Only a job not yet prepared (chunk_size 0) starts."""
        return self._move(
            self.Status.RUNNING,
            only_if={"chunk_size": 0},
            started_at=timezone.now(),
            total_items=total_items,
            chunk_size=chunk_size,
            results_bytes=results_bytes,
            status_reason="",
        )

    def finish(self, *, result: models.Model, results_bytes: int) -> bool:
        """RUNNING -> SUCCESS, with the stored results file. A job some of whose items failed
        says so in its reason: SUCCESS means it ran to the end, not that every item did."""
        reason = ""
        if self.items_failed:
            done = self.items_completed + self.items_failed
            reason = f"{self.items_failed} of {done} items failed; each failed item has its error in the results"
        return self._move(
            self.Status.SUCCESS,
            finished_at=timezone.now(),
            result=result,
            results_bytes=results_bytes,
            desired_workers=0,
            status_reason=reason,
        )

    def keep_partial_results(self, *, result: models.Model) -> bool:
        """Attach the results of the items finished before the job ended early (CANCELLED,
        FAILURE, TIMEOUT). Compare-and-set: only once, and never on a SUCCESS job."""
        won = bool(
            BatchJob.objects.filter(pk=self.pk, status__in=ENDED_EARLY_STATUSES, result__isnull=True).update(
                result=result
            )
        )
        if won:
            self.result = result
        return won

    def fail(self, reason: str, *, status: str = Status.FAILURE) -> bool:
        """PENDING or RUNNING -> FAILURE (or TIMEOUT), with the reason the user will read."""
        if status not in (self.Status.FAILURE, self.Status.TIMEOUT):
            raise ValueError(f"a batch job fails with FAILURE or TIMEOUT, not {status!r}")
        return self._move(status, finished_at=timezone.now(), status_reason=reason, desired_workers=0)

    def cancel(self, reason: str = "cancelled by the user") -> bool:
        """PENDING or RUNNING -> CANCELLED; the controller then stops the replicas."""
        return self._move(self.Status.CANCELLED, finished_at=timezone.now(), status_reason=reason, desired_workers=0)

    def _move(self, to: str, *, only_if: dict | None = None, **fields) -> bool:
        won = bool(
            BatchJob.objects.filter(pk=self.pk, status__in=ALLOWED_FROM[to], **(only_if or {})).update(
                status=to, **fields
            )
        )
        if won:
            self.status = to
            for name, value in fields.items():
                setattr(self, name, value)
        return won


TERMINAL_STATUSES = (
    BatchJob.Status.SUCCESS,
    BatchJob.Status.FAILURE,
    BatchJob.Status.CANCELLED,
    BatchJob.Status.TIMEOUT,
    BatchJob.Status.UNDEFINED,
)
ACTIVE_STATUSES = (BatchJob.Status.PENDING, BatchJob.Status.RUNNING)
ENDED_EARLY_STATUSES = (BatchJob.Status.FAILURE, BatchJob.Status.TIMEOUT, BatchJob.Status.CANCELLED)
FAILED_ITEMS_KEPT = 50
FAILED_ITEM_ERROR_CHARS = 2000

# The one table of a batch job's transitions: the status a job may move to, from which.
# Nothing leaves a terminal status (a finished job cannot be cancelled, restarted or changed).
ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    BatchJob.Status.RUNNING: (BatchJob.Status.PENDING,),
    BatchJob.Status.SUCCESS: (BatchJob.Status.RUNNING,),
    BatchJob.Status.FAILURE: ACTIVE_STATUSES,
    BatchJob.Status.TIMEOUT: ACTIVE_STATUSES,
    BatchJob.Status.CANCELLED: ACTIVE_STATUSES,
}


def new_image_job_bundle_id() -> str:
    return new_id("dibun")


def new_image_job_id() -> str:
    return new_id("dij")


class DockerImageBatchJobBundle(models.Model):
    """A user's image and command to run once per job (/v1/docker-image-batch-job-bundles).
    Versioned by name like model bundles: the newest of a name is its latest."""

    id = models.CharField(max_length=32, primary_key=True, default=new_image_job_bundle_id, editable=False)
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="image_job_bundles")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    name = models.CharField(max_length=200)
    image_repository = models.CharField(max_length=300)
    image_tag = models.CharField(max_length=128)
    command = models.JSONField(default=list)
    env = models.JSONField(default=dict, blank=True)
    # Where the job's job_config is written, as a JSON file, inside the container.
    mount_location = models.CharField(max_length=300, null=True, blank=True)
    # Default resources of its jobs (a job's resource_requests override them), as given.
    cpus = models.CharField(max_length=32, null=True, blank=True)
    memory = models.CharField(max_length=32, null=True, blank=True)
    storage = models.CharField(max_length=32, null=True, blank=True)
    gpus = models.PositiveIntegerField(null=True, blank=True)
    gpu_type = models.CharField(max_length=40, null=True, blank=True)
    public = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["team", "name", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"

    @property
    def image(self) -> str:
        return f"{self.image_repository}:{self.image_tag}"


class DockerImageBatchJob(models.Model):
    """One run of a DockerImageBatchJobBundle: one container, placed like a replica (its
    Replica row books the host's CPUs, memory and GPUs), driven by the controller's tick
    (batchjobs.image_jobs). Status, timings, exit status and logs stay after it ends."""

    id = models.CharField(max_length=32, primary_key=True, default=new_image_job_id, editable=False)
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="image_jobs")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    bundle = models.ForeignKey(DockerImageBatchJobBundle, on_delete=models.PROTECT, related_name="jobs")
    trigger_id = models.CharField(max_length=32, blank=True, db_index=True)
    job_config = models.JSONField(null=True, blank=True)
    labels = models.JSONField(default=dict, blank=True)
    cpus_millis = models.PositiveIntegerField(default=1000)
    memory_bytes = models.BigIntegerField(default=2**30)
    gpus = models.PositiveIntegerField(default=0)
    gpu_type = models.CharField(max_length=40, null=True, blank=True)
    override_job_max_runtime_s = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=BatchJob.Status.choices, default=BatchJob.Status.PENDING,
                              db_index=True)
    status_reason = models.TextField(blank=True)
    replica_id = models.CharField(max_length=32, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    logs = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"docker image batch job {self.id}"


def new_trigger_id() -> str:
    return new_id("trg")


class Trigger(models.Model):
    """A cron schedule that creates a docker-image batch job from a bundle (/v1/triggers).

    `next_run_at` is the next scheduled time not fired yet; the controller fires a trigger by
    moving it forward with a compare-and-set (batchjobs.triggers.triggers_fire), so each
    scheduled time fires at most once, across controller restarts and racing controllers."""

    id = models.CharField(max_length=32, primary_key=True, default=new_trigger_id, editable=False)
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="triggers")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    name = models.CharField(max_length=200)
    cron_schedule = models.CharField(max_length=200)
    bundle = models.ForeignKey(DockerImageBatchJobBundle, on_delete=models.PROTECT, related_name="triggers")
    default_job_config = models.JSONField(null=True, blank=True)
    default_job_metadata = models.JSONField(null=True, blank=True)
    suspended = models.BooleanField(default=False)
    next_run_at = models.DateTimeField(db_index=True)
    last_fired_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="unique_trigger_name_per_team")]

    def __str__(self) -> str:
        return f"trigger {self.name} ({self.id})"

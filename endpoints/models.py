from __future__ import annotations

from django.conf import settings
from django.db import models

from launch_site.ids import new_id
from launch_site.route_generation import RouteChangingQuerySet

GPU_TYPES = (
    "nvidia-tesla-t4",
    "nvidia-ampere-a10",
    "nvidia-ampere-a100",
    "nvidia-ampere-a100e",
    "nvidia-hopper-h100",
    "nvidia-hopper-h100-1g20gb",
    "nvidia-hopper-h100-3g40gb",
    # Beyond the contract's GpuType (same naming): GPUs teams own today. A client that checks
    # the contract's list cannot send these; the REST API and the dashboard take them.
    "nvidia-hopper-h200",
    "nvidia-blackwell-b200",
    "nvidia-ada-l4",
    "nvidia-ada-l40s",
)


def new_endpoint_id() -> str:
    return new_id("end")


class ModelEndpoint(models.Model):
    """Desired state of a deployment; replicas (workers.Replica) are the observed state."""

    # What a task submit reads of its endpoint (endpoints.selectors.endpoint_for_tasks); a write
    # to one of them moves the routing generation (launch_site.route_generation).
    ROUTE_FIELDS = (
        "id", "name", "team_id", "status", "status_reason", "desired_workers", "task_expires_seconds", "endpoint_type",
        "default_callback_url", "default_callback_auth", "post_inference_hooks",
    )
    objects = RouteChangingQuerySet.as_manager()

    class EndpointType(models.TextChoices):
        SYNC = "sync"
        ASYNC = "async"
        STREAMING = "streaming"

    class Status(models.TextChoices):
        READY = "READY"
        UPDATE_PENDING = "UPDATE_PENDING"
        UPDATE_IN_PROGRESS = "UPDATE_IN_PROGRESS"
        UPDATE_FAILED = "UPDATE_FAILED"
        DELETE_IN_PROGRESS = "DELETE_IN_PROGRESS"

    id = models.CharField(max_length=32, primary_key=True, default=new_endpoint_id, editable=False)
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="endpoints")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    name = models.CharField(max_length=63)
    bundle = models.ForeignKey("bundles.ModelBundle", on_delete=models.PROTECT, related_name="endpoints")
    endpoint_type = models.CharField(max_length=9, choices=EndpointType.choices)
    min_workers = models.PositiveIntegerField()
    max_workers = models.PositiveIntegerField()
    # The autoscaling target (requests per worker) ...
    per_worker = models.PositiveIntegerField()
    # ... and the tasks one replica runs at once; None: per_worker (what it reads back as).
    concurrent_requests_per_worker = models.PositiveIntegerField(null=True, blank=True)
    # Resources as the user wrote them ("8Gi", 2, "500m") and parsed for placement.
    cpus = models.CharField(max_length=32)
    cpus_millis = models.PositiveIntegerField()
    memory = models.CharField(max_length=32)
    memory_bytes = models.BigIntegerField()
    storage = models.CharField(max_length=32, null=True, blank=True)
    storage_bytes = models.BigIntegerField(null=True, blank=True)
    gpus = models.PositiveIntegerField(default=0)
    gpu_type = models.CharField(max_length=40, null=True, blank=True, choices=[(t, t) for t in GPU_TYPES])
    labels = models.JSONField(default=dict, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    post_inference_hooks = models.JSONField(null=True, blank=True)
    default_callback_url = models.CharField(max_length=1000, null=True, blank=True)
    default_callback_auth = models.JSONField(null=True, blank=True)
    task_expires_seconds = models.PositiveIntegerField(null=True, blank=True)
    queue_message_timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    # Served first where endpoints compete for capacity: the tick reconciles (and so places)
    # high-priority endpoints before the others.
    high_priority = models.BooleanField(default=False)
    # Stored and returned as sent; the usage figures can be grouped by them.
    billing_tags = models.JSONField(null=True, blank=True)
    # Replicas always load their bundle before serving: prewarm true (or unset) is what happens.
    prewarm = models.BooleanField(null=True, blank=True)
    # Only false (or unset) is accepted: there is no cost optimizer here.
    optimize_costs = models.BooleanField(null=True, blank=True)
    # Adaptive request batching (docs/batching.md), off while max_batch_size is null: a
    # replica takes up to max_batch_size waiting requests at once, waiting at most
    # max_batch_wait_ms for them, and calls the bundle's batch predict with the list.
    max_batch_size = models.PositiveIntegerField(null=True, blank=True)
    max_batch_wait_ms = models.PositiveIntegerField(null=True, blank=True)
    # Signs callback deliveries (HMAC-SHA256); shown once, in the creation answer.
    callback_secret = models.CharField(max_length=64, blank=True, default="", editable=False)

    status = models.CharField(max_length=24, choices=Status.choices, default=Status.UPDATE_PENDING)
    status_reason = models.TextField(blank=True)
    # Bumped by every edit that changes what replicas run; replicas of an older generation
    # are rolled over.
    generation = models.PositiveIntegerField(default=1)
    # The autoscaler's current target, between min_workers and max_workers.
    desired_workers = models.PositiveIntegerField(default=0)
    # When demand first fell below desired_workers (scale down waits scale_down_delay).
    low_demand_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            # A deleted endpoint keeps its row while it drains; its name is free again once gone.
            models.UniqueConstraint(fields=["team", "name"], name="unique_endpoint_name_per_team"),
        ]
        # endpoints.selectors.LIST_ORDER: a page of the API's list is read in order from the
        # index, instead of sorting all the team's endpoints for every page.
        indexes = [models.Index(fields=["team", "created_at", "id"], name="endpoint_team_newest")]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"

    @property
    def concurrency(self) -> int:
        return self.tasks_per_replica(self.concurrent_requests_per_worker, self.per_worker)

    @staticmethod
    def tasks_per_replica(concurrent_requests_per_worker: int | None, per_worker: int) -> int:
        """Tasks one replica runs at once (also for a values() row, endpoints.selectors)."""
        return concurrent_requests_per_worker or per_worker

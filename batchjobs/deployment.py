"""A batch job as the controller deploys it (workers.deployments.Deployment)."""

from __future__ import annotations

from django.conf import settings

from batchjobs.models import ACTIVE_STATUSES, BatchJob
from endpoints.deployment import bundle_replica_spec
from workers.deployments import Deployment
from workers.protocol import job_prefix
from workers.runtimes.base import ReplicaSpec

LOAD_ERROR_PREFIX = "the bundle could not be loaded: "


class BatchJobDeployment(Deployment):
    kind = "batch_job"

    def __init__(self, job: BatchJob):
        self.job = job
        self.id = job.id
        self.prefix = job_prefix(job.id)
        self.generation = 1
        # A finished job keeps its row; "deleting" here means: stop every replica.
        self.deleting = job.status not in ACTIVE_STATUSES
        self.desired = 0 if self.deleting else job.desired_workers
        self.min_ready = 0
        self.failed_generation = False
        self.runtime_name = settings.LAUNCH_RUNTIME
        # A chunk holds many items; the job's own timeout_seconds bounds it.
        self.task_timeout_seconds = None
        self.memory_limit = job.memory

    def replica_spec(self, replica_id: str) -> ReplicaSpec:
        return bundle_replica_spec(
            self.job, kind=self.kind, prefix=self.prefix, replica_id=replica_id, labels={"launch.batch_job": self.job.id}
        )

    def report(self, *, ready: int, starting: int, old: int, load_error: str | None, waiting: str | None) -> None:
        if self.deleting:
            return
        if load_error is not None:
            # Every item would fail the same way: end the job with the reason instead.
            self.job.fail(LOAD_ERROR_PREFIX + load_error)
        elif waiting:
            BatchJob.objects.filter(pk=self.id, status__in=ACTIVE_STATUSES).exclude(status_reason=waiting).update(
                status_reason=waiting
            )
        elif self.job.status_reason:
            BatchJob.objects.filter(pk=self.id, status__in=ACTIVE_STATUSES).update(status_reason="")

    def finalize(self) -> None:
        BatchJob.objects.filter(pk=self.id).exclude(status__in=ACTIVE_STATUSES).update(released=True)


def load_deployment(job_id: str) -> BatchJobDeployment | None:
    job = BatchJob.objects.select_related("bundle__artifact", "team").filter(pk=job_id).first()
    return BatchJobDeployment(job) if job else None

"""RQ entry points of batch jobs: ids in, a service call out."""

from __future__ import annotations

import django_rq

from batchjobs import runner
from workers.controller import wake_controller


def prepare_job(job_id: str) -> None:
    """Count the inputs and mark the job RUNNING; the controller's tick starts its loop."""
    runner.batch_job_prepare(job_id)
    wake_controller()


def enqueue_prepare(job_id: str) -> None:
    """Called on commit after a job is created."""
    django_rq.get_queue("batch").enqueue(prepare_job, job_id, result_ttl=0, failure_ttl=24 * 3600, job_timeout=3600)
    wake_controller()

"""RQ entry points of the control plane: a few lines each, ids in, a service call out."""

from __future__ import annotations

import django_rq

from workers import controller


def reconcile_job(kind: str, owner_id: str) -> None:
    controller.reconcile(kind, owner_id)


def enqueue_reconcile(kind: str, owner_id: str) -> None:
    """Called on commit after a write of desired state."""
    django_rq.get_queue("control").enqueue(
        reconcile_job, kind, owner_id, result_ttl=0, failure_ttl=24 * 3600, job_timeout=300
    )
    controller.wake_controller()

"""RQ entry points of the control plane: a few lines each, ids in, a service call out."""

from __future__ import annotations

import logging

import django_rq
import redis.exceptions

from workers import controller
from workers.tick import wake_controller

logger = logging.getLogger(__name__)


def reconcile_job(kind: str, owner_id: str) -> None:
    controller.reconcile(kind, owner_id)


def enqueue_reconcile(kind: str, owner_id: str) -> None:
    """Called on commit after a write of desired state. With Redis down the write has
    already committed: raising here would turn it into an error answer for a change that
    was made. So log and carry on; the controller's tick reconciles every owner each
    TICK_SECONDS anyway, this only makes it start at once."""
    try:
        django_rq.get_queue("control").enqueue(
            reconcile_job, kind, owner_id, result_ttl=0, failure_ttl=24 * 3600, job_timeout=300
        )
        wake_controller()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
        logger.warning(
            "could not enqueue reconcile of %s %s (Redis unavailable: %s); the tick will", kind, owner_id, error
        )

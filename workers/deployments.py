"""What the controller deploys: an endpoint or a batch job, behind one small interface, so
replicas, rollovers, healing and autoscaling are written once for both."""

from __future__ import annotations

import abc
import importlib

from workers.runtimes.base import ReplicaSpec


class Deployment(abc.ABC):
    kind: str  # Replica.Owner value
    id: str
    prefix: str  # Redis key prefix of its request queue
    generation: int
    desired: int  # replicas wanted now
    min_ready: int  # replicas that must answer for the deployment to be READY
    deleting: bool  # stop every replica, then finalize()
    failed_generation: bool  # the current generation failed to load: start no more
    runtime_name: str
    # A task running longer is failed and its replica replaced (None: no limit but the owner's).
    task_timeout_seconds: float | None
    memory_limit: str  # as the user wrote it, for "out of memory (limit 1Gi)"

    @abc.abstractmethod
    def replica_spec(self, replica_id: str) -> ReplicaSpec: ...

    @abc.abstractmethod
    def report(self, *, ready: int, starting: int, old: int, load_error: str | None, waiting: str | None) -> None:
        """Record what the controller observed (status, reason)."""

    @abc.abstractmethod
    def finalize(self) -> None:
        """Every replica is gone after a delete or finish: clean up."""


# owner_kind -> "module:function" returning a Deployment or None (gone).
_LOADERS = {
    "endpoint": "endpoints.deployment:load_deployment",
    "batch_job": "batchjobs.deployment:load_deployment",
}


def load_deployment(kind: str, owner_id: str) -> Deployment | None:
    module_name, _, function = _LOADERS[kind].partition(":")
    return getattr(importlib.import_module(module_name), function)(owner_id)

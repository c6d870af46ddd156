from __future__ import annotations

import json

from django.conf import settings

from bundles.services import download_url_for
from endpoints.models import ModelEndpoint
from workers.deployments import Deployment
from workers.protocol import endpoint_prefix
from workers.runtimes.base import ReplicaSpec


def _bundle_env(bundle, *, prefix: str, replica_id: str, concurrency: int,
                batching: tuple[int, int] | None = None) -> dict[str, str]:
    """The LAUNCH_* variables workers.serve reads. LAUNCH_REDIS_URL is added by the controller
    when it starts the replica (workers.redis_acl: credentials of the replica's own).
    `batching`: (max batch size, max wait in ms) of an endpoint that batches requests."""
    common = {
        "LAUNCH_PREFIX": prefix,
        "LAUNCH_REPLICA_ID": replica_id,
        "LAUNCH_CONCURRENCY": str(concurrency),
        "LAUNCH_HEARTBEAT_TTL_SECONDS": str(settings.HEARTBEAT_TIMEOUT_SECONDS),
    }
    if batching is not None:
        common["LAUNCH_MAX_BATCH_SIZE"], common["LAUNCH_MAX_BATCH_WAIT_MS"] = (str(n) for n in batching)
    if bundle.is_runnable_image:
        image = bundle.image_config
        forward = {
            "port": settings.RUNNABLE_IMAGE_PORT,
            "predict_route": image["predict_route"],
            "healthcheck_route": image["healthcheck_route"],
            "readiness_timeout_seconds": image["readiness_initial_delay_seconds"],
        }
        if image.get("streaming_predict_route"):  # the streaming flavor
            forward["streaming_predict_route"] = image["streaming_predict_route"]
        return {**common, "LAUNCH_FORWARD_CONFIG": json.dumps(forward)}
    config = {
        "packaging_type": bundle.packaging_type,
        "app_config": bundle.app_config,
        "load_predict_fn_module_path": bundle.load_predict_fn_module_path,
        "load_model_fn_module_path": bundle.load_model_fn_module_path,
        "python_version": bundle.python_version,
    }
    return {
        **common,
        "LAUNCH_BUNDLE_URL": download_url_for(
            bundle.artifact, ttl_seconds=settings.BUNDLE_URL_TTL_SECONDS, replica_id=replica_id
        ),
        "LAUNCH_BUNDLE_CONFIG": json.dumps(config),
    }


def _batching(owner) -> tuple[int, int] | None:
    """An endpoint's batching settings; batch jobs (which have none) run their chunks as they are."""
    size = getattr(owner, "max_batch_size", None)
    return (size, owner.max_batch_wait_ms) if size else None


def bundle_replica_spec(owner, *, kind: str, prefix: str, replica_id: str, labels: dict[str, str]) -> ReplicaSpec:
    """The replica of an endpoint or a batch job: both carry a bundle, a team and the same
    resource fields (per_worker, cpus_millis, memory_bytes, gpus, gpu_type, labels)."""
    bundle = owner.bundle
    return ReplicaSpec(
        replica_id=replica_id,
        owner_kind=kind,
        owner_id=owner.id,
        team=owner.team.name,
        env=_bundle_env(bundle, prefix=prefix, replica_id=replica_id,
                        concurrency=getattr(owner, "concurrency", owner.per_worker), batching=_batching(owner)),
        cpus=owner.cpus_millis / 1000,
        memory_bytes=owner.memory_bytes,
        gpus=owner.gpus,
        gpu_type=owner.gpu_type,
        framework=bundle.framework or bundle.env_params or {},
        requirements=tuple(bundle.requirements or ()),
        labels={**labels, **{f"user.{k}": str(v) for k, v in owner.labels.items()}},
        runnable_image={**bundle.image_config, "image": bundle.image} if bundle.is_runnable_image else {},
    )


class EndpointDeployment(Deployment):
    kind = "endpoint"

    def __init__(self, endpoint: ModelEndpoint):
        self.endpoint = endpoint
        self.id = endpoint.id
        self.prefix = endpoint_prefix(endpoint.id)
        self.generation = endpoint.generation
        self.deleting = endpoint.status == ModelEndpoint.Status.DELETE_IN_PROGRESS
        self.desired = 0 if self.deleting else endpoint.desired_workers
        self.min_ready = endpoint.min_workers
        self.failed_generation = endpoint.status == ModelEndpoint.Status.UPDATE_FAILED
        self.runtime_name = settings.LAUNCH_RUNTIME
        # The contract's queue_message_timeout_seconds is "how long a worker has to process a
        # message"; past it we fail the task instead of redelivering it (a task that hung once
        # hangs again, and each redelivery would hold a replica for the whole timeout).
        self.task_timeout_seconds = float(endpoint.queue_message_timeout_seconds or settings.TASK_TIMEOUT_SECONDS)
        self.memory_limit = endpoint.memory

    def replica_spec(self, replica_id: str) -> ReplicaSpec:
        return bundle_replica_spec(
            self.endpoint, kind=self.kind, prefix=self.prefix, replica_id=replica_id,
            labels={"launch.endpoint": self.endpoint.name},
        )

    def report(self, *, ready: int, starting: int, old: int, load_error: str | None, waiting: str | None) -> None:
        """READY once min_workers replicas of the current generation answer (also after an
        UPDATE_FAILED: a replica of the generation that answers is proof the bundle loads);
        UPDATE_FAILED only for a load error of the bundle itself."""
        Status = ModelEndpoint.Status
        if self.deleting:
            return
        if load_error is not None:
            status, reason = Status.UPDATE_FAILED, load_error
        elif self.failed_generation and ready < max(self.min_ready, 1):
            return
        elif ready >= self.min_ready and old == 0:
            status, reason = Status.READY, waiting or ""
        else:
            status, reason = Status.UPDATE_IN_PROGRESS, waiting or ""
        if status == self.endpoint.status and reason == self.endpoint.status_reason:
            return
        # Guarded by generation: an edit that landed meanwhile owns the status.
        ModelEndpoint.objects.filter(pk=self.id, generation=self.generation).exclude(
            status=Status.DELETE_IN_PROGRESS
        ).exclude(status=status, status_reason=reason).update(status=status, status_reason=reason)

    def finalize(self) -> None:
        ModelEndpoint.objects.filter(pk=self.id, status=ModelEndpoint.Status.DELETE_IN_PROGRESS).delete()


def load_deployment(endpoint_id: str) -> EndpointDeployment | None:
    endpoint = ModelEndpoint.objects.select_related("bundle__artifact", "team").filter(pk=endpoint_id).first()
    return EndpointDeployment(endpoint) if endpoint else None


__all__ = ["EndpointDeployment", "load_deployment", "bundle_replica_spec"]

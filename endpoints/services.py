"""Writes of endpoints: desired state only. The controller (workers.controller) makes the
replicas match, from an RQ job enqueued on commit and from the tick."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F

from accounts.models import Team
from accounts.quotas import quota_check, usage_of
from bundles.models import ModelBundle
from endpoints import callbacks
from endpoints.models import GPU_TYPES, ModelEndpoint
from endpoints.quantities import parse_bytes, parse_cpus
from launch_site import limits
from launch_site.errors import ConflictError, FieldError
from workers.runtimes.local_gpus import local_gpu_refusal

# Fields an edit may change; the ones in ROLLOVER_FIELDS change what replicas run.
EDITABLE_FIELDS = (
    "bundle", "min_workers", "max_workers", "per_worker", "cpus", "memory", "storage", "gpus", "gpu_type",
    "labels", "metadata", "post_inference_hooks", "default_callback_url", "default_callback_auth",
    "task_expires_seconds", "queue_message_timeout_seconds", "concurrent_requests_per_worker",
    "high_priority", "billing_tags", "prewarm", "optimize_costs", "max_batch_size", "max_batch_wait_ms",
)
ROLLOVER_FIELDS = (
    "bundle", "cpus", "memory", "storage", "gpus", "gpu_type", "per_worker", "concurrent_requests_per_worker",
    "max_batch_size", "max_batch_wait_ms",
)
# Set by _apply_batching, which gives them their rules (0 turns batching off).
BATCHING_FIELDS = ("max_batch_size", "max_batch_wait_ms")


def check_contract_options(values: dict[str, Any]) -> dict[str, Any]:
    """The contract's fields this server cannot honour with the value sent are refused here,
    naming the field; the others are cleaned. Returns the values to store."""
    if values.get("public_inference"):
        raise FieldError("public_inference", "unauthenticated inference is not offered by this server; "
                                             "send false or leave it out")
    if values.get("nodes_per_worker") not in (None, 1):
        raise FieldError("nodes_per_worker", "multi-node workers are not supported: it must be 1")
    if values.get("optimize_costs"):
        raise FieldError("optimize_costs", "there is no cost optimizer here: send false or leave it out")
    if values.get("prewarm") is False:
        raise FieldError("prewarm", "replicas always load their bundle before they take requests "
                                    "(prewarm true); false is not offered")
    if values.get("forwarder_max_concurrency") is not None:
        raise FieldError("forwarder_max_concurrency", "applies to runnable-image bundles, which this server does "
                                                      "not serve; leave it out")
    cleaned = {key: value for key, value in values.items()
               if key not in ("public_inference", "nodes_per_worker", "forwarder_max_concurrency")}
    if "post_inference_hooks" in cleaned:
        cleaned["post_inference_hooks"] = callbacks.clean_hooks(cleaned["post_inference_hooks"])
    if "default_callback_url" in cleaned:
        cleaned["default_callback_url"] = callbacks.clean_url(cleaned["default_callback_url"], "default_callback_url")
    if "default_callback_auth" in cleaned:
        cleaned["default_callback_auth"] = callbacks.clean_auth(
            cleaned["default_callback_auth"], "default_callback_auth"
        )
    return cleaned


def _bundle_for(team: Team, bundle_id: str, field: str = "model_bundle_id") -> ModelBundle:
    bundle = ModelBundle.objects.filter(team=team, pk=bundle_id).first()
    if bundle is None:
        raise FieldError(field, f"no model bundle {bundle_id!r} in your team")
    return bundle


def _apply_resources(endpoint: ModelEndpoint, values: dict[str, Any]) -> None:
    if "cpus" in values:
        try:
            endpoint.cpus_millis = parse_cpus(values["cpus"])
        except ValueError as error:
            raise FieldError("cpus", str(error)) from None
        endpoint.cpus = str(values["cpus"])
    if "memory" in values:
        try:
            endpoint.memory_bytes = parse_bytes(values["memory"])
        except ValueError as error:
            raise FieldError("memory", str(error)) from None
        endpoint.memory = str(values["memory"])
    if "storage" in values:
        storage = values["storage"]
        if storage in (None, ""):
            endpoint.storage, endpoint.storage_bytes = None, None
        else:
            try:
                endpoint.storage_bytes = parse_bytes(storage)
            except ValueError as error:
                raise FieldError("storage", str(error)) from None
            endpoint.storage = str(storage)


def _apply_batching(endpoint: ModelEndpoint, values: dict[str, Any]) -> None:
    """Request batching (docs/batching.md). max_batch_size 0 turns it off: in an update, null
    means "unchanged", as for every field. A wait without batching is refused rather than
    kept for later; batching without a wait gets the default one."""
    if values.get("max_batch_size") is not None:
        size = limits.check_integer(values["max_batch_size"], field="max_batch_size", minimum=0,
                                    maximum=limits.MAX_BATCH_SIZE)
        endpoint.max_batch_size = size or None
        if not size:
            endpoint.max_batch_wait_ms = None
    if values.get("max_batch_wait_ms") is not None:
        wait = limits.check_integer(values["max_batch_wait_ms"], field="max_batch_wait_ms", minimum=0,
                                    maximum=limits.MAX_BATCH_WAIT_MS)
        if endpoint.max_batch_size is None:
            raise FieldError("max_batch_wait_ms", "applies only to an endpoint that batches requests: "
                                                  "set max_batch_size (1 or more) too")
        endpoint.max_batch_wait_ms = wait
    if endpoint.max_batch_size is not None and endpoint.max_batch_wait_ms is None:
        endpoint.max_batch_wait_ms = limits.DEFAULT_BATCH_WAIT_MS


def batching_refusal(endpoint: ModelEndpoint) -> str | None:
    """Why this endpoint cannot batch its requests, when it asks to. A bundle whose predict
    is not a batch predict is found out by its replica (the web never opens a bundle): the
    replica then fails to load with the reason, and the endpoint is UPDATE_FAILED."""
    if endpoint.max_batch_size is None:
        return None
    if endpoint.endpoint_type == ModelEndpoint.EndpointType.STREAMING:
        return "a streaming endpoint sends each request's items as they come; it cannot batch requests"
    if endpoint.bundle.is_runnable_image:
        return (f"bundle {endpoint.bundle_id!r} is a runnable image: its server gets requests one by one "
                "from our forwarder, which does not batch them")
    return None


def _validate_bounds(endpoint: ModelEndpoint) -> None:
    for field, minimum, maximum in (
        ("min_workers", 0, limits.MAX_WORKERS),
        ("max_workers", 0, limits.MAX_WORKERS),
        ("per_worker", 1, limits.MAX_PER_WORKER),
        ("gpus", 0, limits.MAX_GPUS),
    ):
        limits.check_integer(getattr(endpoint, field), field=field, minimum=minimum, maximum=maximum)
    for field, maximum in (
        ("task_expires_seconds", limits.MAX_TASK_EXPIRES_SECONDS),
        ("queue_message_timeout_seconds", limits.MAX_QUEUE_MESSAGE_TIMEOUT_SECONDS),
    ):
        if getattr(endpoint, field) is not None:
            limits.check_integer(getattr(endpoint, field), field=field, minimum=1, maximum=maximum)


def _validate_rules(endpoint: ModelEndpoint) -> None:
    _validate_bounds(endpoint)
    if endpoint.endpoint_type != ModelEndpoint.EndpointType.ASYNC and endpoint.min_workers < 1:
        raise FieldError(
            "min_workers", f"a {endpoint.endpoint_type} endpoint keeps at least one worker: min_workers must be >= 1"
        )
    if endpoint.max_workers < endpoint.min_workers:
        raise FieldError("max_workers", f"must be >= min_workers ({endpoint.min_workers})")
    if endpoint.max_workers < 1:
        raise FieldError("max_workers", "must be at least 1")
    if endpoint.per_worker < 1:
        raise FieldError("per_worker", "must be at least 1")
    if endpoint.concurrent_requests_per_worker is not None and endpoint.concurrent_requests_per_worker < 1:
        raise FieldError("concurrent_requests_per_worker", "must be at least 1")
    if endpoint.billing_tags is not None and not isinstance(endpoint.billing_tags, dict):
        raise FieldError("billing_tags", "must be an object")
    if endpoint.gpus > 0:
        if not endpoint.gpu_type:
            raise FieldError("gpu_type", "is required when gpus > 0")
        if endpoint.gpu_type not in GPU_TYPES:
            raise FieldError("gpu_type", f"must be one of {', '.join(GPU_TYPES)}")
        refusal = local_gpu_refusal(endpoint.gpus, endpoint.gpu_type) if settings.LAUNCH_RUNTIME == "local" else None
        if refusal:
            raise FieldError(*refusal)
    elif endpoint.gpu_type:
        raise FieldError("gpu_type", "must be empty when gpus is 0")
    refusal = runnable_image_refusal(endpoint.bundle, settings.LAUNCH_RUNTIME)
    if refusal:
        raise FieldError("model_bundle_id", refusal)
    refusal = batching_refusal(endpoint)
    if refusal:
        raise FieldError("max_batch_size", refusal)


def runnable_image_refusal(bundle: ModelBundle, runtime: str) -> str | None:
    """Why this server cannot deploy `bundle`, when it is a runnable image it cannot run."""
    if not bundle.is_runnable_image:
        return None
    if runtime != "docker":
        return (
            f"bundle {bundle.id!r} is a runnable image ({bundle.flavor}): its container runs next to our "
            f"forwarder, which needs the docker runtime (LAUNCH_RUNTIME=docker and a registered Docker host); "
            f"this server runs the {runtime} runtime"
        )
    if bundle.flavor == ModelBundle.Flavor.TRITON_ENHANCED_RUNNABLE_IMAGE:
        return (
            f"bundle {bundle.id!r} is a triton_enhanced_runnable_image: it is stored, but this server does not "
            "start a Triton server next to it yet; use the runnable_image flavor with Triton inside your image"
        )
    return None


def _enqueue_reconcile(endpoint_id: str) -> None:
    from workers.jobs import enqueue_reconcile

    transaction.on_commit(lambda: enqueue_reconcile("endpoint", endpoint_id))


@transaction.atomic
def endpoint_create(*, team: Team, user, name: str, model_bundle_id: str, endpoint_type: str, min_workers: int,
                    max_workers: int, per_worker: int, cpus: Any, memory: Any, storage: Any = None, gpus: int = 0,
                    gpu_type: str | None = None, labels: dict | None = None, metadata: dict | None = None,
                    **options: Any) -> ModelEndpoint:
    """Record a new endpoint (UPDATE_PENDING) and ask the controller to deploy it. `options`:
    the contract's other fields (check_contract_options); its callback secret is generated here
    and shown once, by the caller."""
    limits.check_name(name, field="name", max_length=limits.ENDPOINT_NAME_MAX_LENGTH)
    if endpoint_type not in ModelEndpoint.EndpointType.values:
        raise FieldError("endpoint_type", "must be sync, async or streaming")
    options = check_contract_options(options)
    unknown = set(options) - set(EDITABLE_FIELDS)
    if unknown:
        raise TypeError(f"endpoint_create got unknown fields {sorted(unknown)}")
    endpoint = ModelEndpoint(
        team=team, created_by=user, name=name, bundle=_bundle_for(team, model_bundle_id),
        endpoint_type=endpoint_type, min_workers=min_workers, max_workers=max_workers, per_worker=per_worker,
        gpus=gpus or 0, gpu_type=gpu_type or None, labels=labels or {}, metadata=metadata or {},
        status=ModelEndpoint.Status.UPDATE_PENDING, desired_workers=min_workers,
        callback_secret=callbacks.new_secret(),
    )
    for field, value in options.items():
        if value is not None and field not in BATCHING_FIELDS:
            setattr(endpoint, field, value)
    _apply_batching(endpoint, options)
    _apply_resources(endpoint, {"cpus": cpus, "memory": memory, "storage": storage})
    _validate_rules(endpoint)
    quota_check(team=team, adding=usage_of(endpoint))
    if ModelEndpoint.objects.filter(team=team, name=name).exists():
        raise FieldError("name", f"your team already has an endpoint named {name!r}")
    endpoint.full_clean()
    endpoint.save()
    _enqueue_reconcile(endpoint.id)
    return endpoint


@transaction.atomic
def endpoint_update(*, endpoint: ModelEndpoint, changes: dict[str, Any]) -> ModelEndpoint:
    """Apply an edit; a change to what replicas run bumps the generation (a rollover)."""
    endpoint = ModelEndpoint.objects.select_for_update().get(pk=endpoint.pk)
    if endpoint.status == ModelEndpoint.Status.DELETE_IN_PROGRESS:
        raise ConflictError(f"endpoint {endpoint.name!r} is being deleted")
    changes = check_contract_options({key: value for key, value in changes.items() if value is not None})
    if "model_bundle_id" in changes:
        changes["bundle"] = _bundle_for(endpoint.team, changes.pop("model_bundle_id"))
    before = {field: getattr(endpoint, field) for field in ROLLOVER_FIELDS}
    _apply_resources(endpoint, changes)
    _apply_batching(endpoint, changes)
    for field in EDITABLE_FIELDS:
        if field in changes and field not in ("cpus", "memory", "storage", *BATCHING_FIELDS):
            setattr(endpoint, field, changes[field])
    if endpoint.gpus == 0 and "gpus" in changes and "gpu_type" not in changes:
        endpoint.gpu_type = None
    _validate_rules(endpoint)
    quota_check(team=endpoint.team, adding=usage_of(endpoint), replacing=endpoint)
    endpoint.desired_workers = min(max(endpoint.desired_workers, endpoint.min_workers), endpoint.max_workers)
    if any(getattr(endpoint, field) != value for field, value in before.items()) or (
        endpoint.status == ModelEndpoint.Status.UPDATE_FAILED
    ):
        endpoint.generation += 1
        endpoint.status_reason = ""
    endpoint.status = ModelEndpoint.Status.UPDATE_PENDING
    endpoint.full_clean()
    endpoint.save()
    _enqueue_reconcile(endpoint.id)
    return endpoint


@transaction.atomic
def endpoint_restart(*, endpoint: ModelEndpoint) -> None:
    """A rolling restart: a new generation, so the controller replaces every replica the way
    it rolls over an edit (new ones ready before old ones drain), and no request fails."""
    updated = ModelEndpoint.objects.filter(pk=endpoint.pk).exclude(
        status=ModelEndpoint.Status.DELETE_IN_PROGRESS
    ).update(generation=F("generation") + 1, status=ModelEndpoint.Status.UPDATE_PENDING, status_reason="")
    if not updated:
        raise ConflictError(f"endpoint {endpoint.name!r} is being deleted")
    _enqueue_reconcile(endpoint.id)


@transaction.atomic
def endpoint_delete(*, endpoint: ModelEndpoint) -> None:
    """Mark for deletion; the controller drains and stops the replicas, then removes the row."""
    updated = ModelEndpoint.objects.filter(pk=endpoint.pk).exclude(
        status=ModelEndpoint.Status.DELETE_IN_PROGRESS
    ).update(status=ModelEndpoint.Status.DELETE_IN_PROGRESS, desired_workers=0, status_reason="")
    if updated:
        _enqueue_reconcile(endpoint.id)

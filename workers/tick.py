"""The controller's tick: every TICK_SECONDS (or at once when woken), autoscale every
endpoint, reconcile the ones that need it, then run the other apps' periodic work (batch
jobs, Docker hosts, log rotation).

The tick reads all endpoints, their live replicas and their queue depths in three batched
reads, so an idle endpoint (no replica, nothing queued, READY) costs no per-endpoint query:
200 idle endpoints are one tick of a few milliseconds (bench/tick_cost.py). Slow runtime
work (image builds) runs in RQ jobs, never here.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from django.conf import settings
from django.db import close_old_connections, connections
from django.utils import timezone

from launch_site.redis_client import get_redis
from workers import autoscaling, controller, protocol, redis_acl
from workers.models import LIVE_STATES, Replica

logger = logging.getLogger(__name__)

_tick_hooks: list = []
SLOW_HOOK_SECONDS = 2.0


def register_tick_hook(function) -> None:
    """Other apps (batch jobs, hosts) add their periodic work here."""
    if function not in _tick_hooks:
        _tick_hooks.append(function)


def wake_controller(redis_client=None) -> None:
    """Ask the tick loop to run now (e.g. a task arrived for an endpoint at zero replicas)."""
    protocol.wake_controller(redis_client or get_redis())


_redis_run_id: str | None = None


def restore_replica_credentials() -> None:
    """When Redis restarted (its run id changed, or this process has not looked yet), give
    live replicas their ACL users back before anything judges their heartbeats."""
    global _redis_run_id
    run_id = get_redis().info("server").get("run_id")
    if run_id == _redis_run_id:
        return
    live = Replica.objects.filter(state__in=LIVE_STATES).values_list("id", "owner_kind", "owner_id")
    restored = redis_acl.restore_users([(rid, protocol.owner_prefix(kind, oid)) for rid, kind, oid in live])
    if _redis_run_id is not None:
        logger.warning("Redis restarted (run id %s); restored the credentials of %s replicas", run_id, restored)
    _redis_run_id = run_id


def tick() -> None:
    from endpoints.models import ModelEndpoint

    restore_replica_credentials()
    # High-priority endpoints first: where endpoints compete for the same capacity (hosts,
    # quotas), the ones reconciled first are placed first.
    endpoints = list(ModelEndpoint.objects.only(
        "id", "status", "status_reason", "generation", "min_workers", "max_workers", "per_worker",
        "desired_workers", "low_demand_since", "high_priority",
    ).order_by("-high_priority", "created_at"))
    live: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for owner_kind, owner_id, replica_id, state in Replica.objects.filter(state__in=LIVE_STATES).values_list(
        "owner_kind", "owner_id", "id", "state"
    ):
        live[(owner_kind, owner_id)].append((replica_id, state))
    depths = _queue_depths(endpoints, live)
    now = timezone.now()
    for endpoint, (queued, in_flight) in zip(endpoints, depths, strict=True):
        try:
            autoscale(endpoint, queued=queued, in_flight=in_flight, now=now)
            if _needs_reconcile(endpoint, live.get(("endpoint", endpoint.id), [])):
                controller.reconcile("endpoint", endpoint.id)
        except Exception:  # noqa: BLE001 - one bad endpoint must not stop the others
            logger.exception("tick failed for endpoint %s", endpoint.id)
    # Replicas whose endpoint row is gone (deleted while the controller was down).
    known = {endpoint.id for endpoint in endpoints}
    for kind, owner_id in list(live):
        if kind == "endpoint" and owner_id not in known:
            controller.reconcile(kind, owner_id)
    for hook in list(_tick_hooks):
        started = time.monotonic()
        try:
            hook()
        except Exception:  # noqa: BLE001
            logger.exception("tick hook %s failed", getattr(hook, "__name__", hook))
        took = time.monotonic() - started
        if took > SLOW_HOOK_SECONDS:
            # Every hook shares this one thread: a slow one delays all the others.
            logger.warning("tick hook %s took %.1f s", getattr(hook, "__name__", hook), took)


def _queue_depths(endpoints, live) -> list[tuple[int, int]]:
    """(queued, in flight) of every endpoint, in one pipeline."""
    with get_redis().pipeline(transaction=False) as pipe:
        for endpoint in endpoints:
            keys = protocol.Keys(protocol.endpoint_prefix(endpoint.id))
            pipe.llen(keys.queue)
            for replica_id, _ in live.get(("endpoint", endpoint.id), []):
                pipe.llen(keys.inflight(replica_id))
        answers = iter(pipe.execute())
    depths = []
    for endpoint in endpoints:
        queued = next(answers)
        in_flight = sum(next(answers) for _ in live.get(("endpoint", endpoint.id), []))
        depths.append((queued, in_flight))
    return depths


def autoscale(endpoint, *, queued: int, in_flight: int, now) -> bool:
    """Set the endpoint's desired_workers from its demand; returns whether it changed."""
    from endpoints.models import ModelEndpoint

    if endpoint.status == ModelEndpoint.Status.DELETE_IN_PROGRESS:
        return False
    target = autoscaling.desired_workers(
        queued=queued, in_flight=in_flight, per_worker=endpoint.per_worker,
        min_workers=endpoint.min_workers, max_workers=endpoint.max_workers,
    )
    desired, since = autoscaling.next_desired(
        current=endpoint.desired_workers, target=target, low_demand_since=endpoint.low_demand_since,
        now=now, delay_seconds=settings.SCALE_DOWN_DELAY_SECONDS,
    )
    if desired != endpoint.desired_workers or since != endpoint.low_demand_since:
        # Guarded by generation so an edit in between is not overwritten.
        ModelEndpoint.objects.filter(pk=endpoint.id, generation=endpoint.generation).update(
            desired_workers=desired, low_demand_since=since
        )
        changed = desired != endpoint.desired_workers
        endpoint.desired_workers, endpoint.low_demand_since = desired, since
        return changed
    return False


def _needs_reconcile(endpoint, replicas: list[tuple[str, str]]) -> bool:
    """An endpoint with replicas is observed every tick (heartbeats, exits, timeouts); one
    without needs work only when it wants replicas or its status is not settled."""
    from endpoints.models import ModelEndpoint

    return bool(replicas) or endpoint.desired_workers > 0 or endpoint.status != ModelEndpoint.Status.READY or bool(
        endpoint.status_reason
    )


def run_tick_loop(stop_event) -> None:
    """Tick every TICK_SECONDS until stop_event is set; a wake-up runs a tick at once."""
    redis = get_redis()
    try:
        while not stop_event.is_set():
            close_old_connections()
            try:
                tick()
            except Exception:  # noqa: BLE001 - the loop must survive a bad tick
                logger.exception("tick failed")
            try:
                redis.blpop([protocol.WAKE_KEY], timeout=settings.TICK_SECONDS)
            except Exception:  # noqa: BLE001 - Redis restarting: wait and retry
                logger.exception("waiting for a wake-up failed")
                stop_event.wait(settings.TICK_SECONDS)
    finally:
        connections.close_all()  # this thread's connections; nobody else can close them

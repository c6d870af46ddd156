"""The controller: makes replicas match desired state, heals, autoscales.

`reconcile(kind, owner_id)` is idempotent and may run from an RQ job (after an API write)
and from the tick at the same time; a short Redis lock per owner keeps them from both
starting replicas. `tick()` runs every TICK_SECONDS (or at once when the gateway wakes it):
autoscale every endpoint, reconcile every owner, probe hosts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connections
from django.utils import timezone

from launch_site.redis_client import get_redis
from workers import protocol, redis_acl
from workers.deployments import Deployment, load_deployment
from workers.models import LIVE_STATES, Replica
from workers.runtimes import get_runtime
from workers.runtimes.base import PlacementError

logger = logging.getLogger(__name__)

WAKE_KEY = "launch:controller:wake"


def wake_controller(redis_client=None) -> None:
    """Ask the tick loop to run now (e.g. a task arrived for an endpoint at zero replicas)."""
    client = redis_client or get_redis()
    client.lpush(WAKE_KEY, "1")
    client.ltrim(WAKE_KEY, 0, 0)


# --- tasks of dead replicas -------------------------------------------------------------

def requeue_inflight(prefix: str, replica_id: str, reason: str) -> None:
    """Put back what a dead replica was running, or fail it after TASK_MAX_ATTEMPTS."""
    redis = get_redis()
    keys = protocol.Keys(prefix)
    inflight = keys.inflight(replica_id)
    for entry in redis.lrange(inflight, 0, -1):
        task_id, _, _ = protocol.parse_entry(entry)
        task_key = keys.task(task_id)
        attempts = redis.hget(task_key, "attempts")
        if attempts is None:  # expired meanwhile
            redis.lrem(inflight, 0, entry)
            continue
        if int(attempts) >= settings.TASK_MAX_ATTEMPTS:
            traceback = f"{reason}; gave up after {int(attempts)} attempts"
            record = json.dumps({"status": protocol.FAILURE, "result": None, "traceback": traceback})
            with redis.pipeline() as pipe:
                pipe.hset(task_key, mapping={"status": protocol.FAILURE, "traceback": traceback,
                                             "finished_at": time.time()})
                pipe.lpush(keys.done(task_id), record)
                pipe.expire(keys.done(task_id), protocol.DONE_LIST_TTL_SECONDS)
                pipe.hincrby(keys.stats, "failed", 1)
                pipe.lrem(inflight, 0, entry)
                pipe.execute()
        else:
            with redis.pipeline() as pipe:
                pipe.hset(task_key, "status", protocol.PENDING)
                # RPUSH: the replicas take from the right, so it runs next.
                pipe.rpush(keys.queue, entry)
                pipe.lrem(inflight, 0, entry)
                pipe.execute()
    redis.delete(keys.heartbeat(replica_id), keys.replica(replica_id))


# --- reconcile ----------------------------------------------------------------------------

def _mark(replica: Replica, state: str, reason: str = "") -> None:
    now = timezone.now()
    replica.state = state
    replica.reason = reason or replica.reason
    fields = ["state", "reason"]
    if state == Replica.State.READY:
        replica.ready_at = now
        fields.append("ready_at")
    if state in (Replica.State.STOPPED, Replica.State.FAILED):
        redis_acl.revoke(replica.id)
    if state in (Replica.State.DRAINING, Replica.State.STOPPED, Replica.State.FAILED) and replica.stopped_at is None:
        replica.stopped_at = now
        fields.append("stopped_at")
    replica.save(update_fields=fields)


def _observe(deployment: Deployment, replicas: list[Replica]) -> str | None:
    """Update replica rows from what runs; returns the load error of the current
    generation, if one of its replicas failed to load."""
    redis = get_redis()
    keys = protocol.Keys(deployment.prefix)
    with redis.pipeline(transaction=False) as pipe:
        for replica in replicas:
            pipe.hgetall(keys.replica(replica.id))
            pipe.exists(keys.heartbeat(replica.id))
        answers = pipe.execute()
    load_error = None
    now = timezone.now()
    grace = timedelta(seconds=settings.REPLICA_STOP_GRACE_SECONDS)
    for index, replica in enumerate(replicas):
        info = {k.decode(): v.decode(errors="replace") for k, v in answers[2 * index].items()}
        heartbeating = bool(answers[2 * index + 1])
        runtime = get_runtime(replica.runtime)
        alive = runtime.is_alive(replica)
        state = info.get("state")
        if replica.state == Replica.State.STARTING:
            if state == protocol.REPLICA_FAILED or (not alive and state != protocol.REPLICA_READY):
                error = info.get("error") or _exit_reason(runtime, replica, "exited while loading its bundle")
                runtime.kill(replica)
                _mark(replica, Replica.State.FAILED, error)
                requeue_inflight(deployment.prefix, replica.id, f"replica {replica.id} failed")
                if replica.generation == deployment.generation:
                    load_error = error
            elif state == protocol.REPLICA_READY and alive:
                _mark(replica, Replica.State.READY)
            elif now - replica.created_at > timedelta(seconds=settings.REPLICA_START_TIMEOUT_SECONDS):
                runtime.kill(replica)
                _mark(replica, Replica.State.FAILED, "did not become ready in time")
                if replica.generation == deployment.generation:
                    load_error = f"replica {replica.id} did not load its bundle within {settings.REPLICA_START_TIMEOUT_SECONDS:.0f} s"
        elif replica.state == Replica.State.READY:
            if not alive or not heartbeating:
                why = "exited" if not alive else "stopped heartbeating"
                runtime.kill(replica)
                _mark(replica, Replica.State.FAILED, _exit_reason(runtime, replica, f"replica {why}"))
                requeue_inflight(deployment.prefix, replica.id, f"replica {replica.id} {why} while running it")
        elif replica.state == Replica.State.DRAINING:
            if not alive:
                _mark(replica, Replica.State.STOPPED)
                requeue_inflight(deployment.prefix, replica.id, f"replica {replica.id} stopped while running it")
            elif replica.stopped_at and now - replica.stopped_at > grace:
                runtime.kill(replica)
                _mark(replica, Replica.State.STOPPED, "killed after the stop grace period")
                requeue_inflight(deployment.prefix, replica.id, f"replica {replica.id} was killed while running it")
    return load_error


def _exit_reason(runtime, replica: Replica, headline: str) -> str:
    tail = runtime.logs(replica, tail_lines=30).strip()
    return f"{headline}; last output:\n{tail}" if tail else headline


def _start_replicas(deployment: Deployment, count: int) -> str | None:
    """Start `count` replicas; returns why it could not place one, if so."""
    runtime = get_runtime(deployment.runtime_name)
    for _ in range(count):
        # The row exists before placement and start: placement books the host's CPUs, memory and
        # GPU ids on it (so a concurrent placement sees them), and a controller crash leaves
        # a row to clean up or adopt rather than a stray process.
        replica = Replica.objects.create(
            owner_kind=deployment.kind, owner_id=deployment.id, generation=deployment.generation,
            runtime=runtime.name, state=Replica.State.STARTING,
        )
        spec = deployment.replica_spec(replica.id)
        try:
            placement = runtime.place(spec)
        except PlacementError as error:
            replica.delete()
            return f"waiting for capacity: {error}"
        redis_url = redis_acl.replica_redis_url(prefix=deployment.prefix, replica_id=replica.id)
        spec = dataclasses.replace(spec, env={**spec.env, "LAUNCH_REDIS_URL": redis_url})
        try:
            replica.handle = runtime.start(spec, placement)
        except Exception as error:  # noqa: BLE001 - a runtime failure is reported, not raised
            logger.exception("starting replica %s failed", replica.id)
            _mark(replica, Replica.State.FAILED, f"could not start: {error}")
            return f"could not start a replica: {error}"
        replica.host_id = placement.host_id
        replica.gpu_device_ids = list(placement.gpu_device_ids)
        replica.save(update_fields=["handle", "host", "gpu_device_ids"])
        logger.info("started replica %s of %s %s", replica.id, deployment.kind, deployment.id)
    return None


def _stop(replica: Replica) -> None:
    get_runtime(replica.runtime).stop(replica)
    _mark(replica, Replica.State.DRAINING)


def reconcile(kind: str, owner_id: str) -> None:
    lock = get_redis().lock(f"launch:lock:{kind}:{owner_id}", timeout=60, blocking_timeout=0.5)
    if not lock.acquire():
        return  # another reconcile of this owner is running; the next tick catches up
    try:
        _reconcile(kind, owner_id)
    finally:
        try:
            lock.release()
        except Exception:  # noqa: BLE001 - expired lock: nothing to release
            pass


def _reconcile(kind: str, owner_id: str) -> None:
    deployment = load_deployment(kind, owner_id)
    replicas = list(
        Replica.objects.filter(owner_kind=kind, owner_id=owner_id, state__in=LIVE_STATES)
        .select_related("host")
        .order_by("created_at")
    )
    if deployment is None:
        for replica in replicas:
            get_runtime(replica.runtime).kill(replica)
            _mark(replica, Replica.State.STOPPED, "owner deleted")
        return
    load_error = _observe(deployment, replicas)
    live = [r for r in replicas if r.state in LIVE_STATES]
    serving = [r for r in live if r.state != Replica.State.DRAINING]

    if deployment.deleting:
        for replica in serving:
            _stop(replica)
        if not live:
            leftover = _all_keys(deployment.prefix)
            if leftover:
                get_redis().delete(*leftover)
            deployment.finalize()
        return

    # Replicas of an older generation, and those on a host being drained, are replaced first
    # and stopped once their replacements answer.
    current = [r for r in serving if r.generation == deployment.generation and not _leaving_host(r)]
    old = [r for r in serving if r not in current]
    waiting = None
    failed = deployment.failed_generation or load_error is not None
    if not failed and len(current) < deployment.desired:
        waiting = _start_replicas(deployment, deployment.desired - len(current))
    elif len(current) > deployment.desired:
        # Scale down: replicas still loading go first, then the newest.
        excess = sorted(current, key=lambda r: (r.state == Replica.State.READY, r.created_at))
        for replica in excess[: len(current) - deployment.desired]:
            _stop(replica)
            current.remove(replica)
    ready_current = sum(r.state == Replica.State.READY for r in current)
    # Rollover: old replicas serve until the new generation answers (never when it failed).
    if old and not failed and ready_current >= max(deployment.desired, 1 if deployment.desired else 0):
        for replica in old:
            _stop(replica)
        old = []
    starting = sum(r.state == Replica.State.STARTING for r in current)
    deployment.report(ready=ready_current, starting=starting, old=len(old), load_error=load_error, waiting=waiting)


def _leaving_host(replica: Replica) -> bool:
    return replica.host is not None and (replica.host.draining or not replica.host.healthy)


def _all_keys(prefix: str) -> list[bytes]:
    return list(get_redis().scan_iter(match=prefix + "*", count=1000))


# --- autoscaling --------------------------------------------------------------------------

def desired_workers(*, queued: int, in_flight: int, per_worker: int, min_workers: int, max_workers: int) -> int:
    """DESIGN §3: clamp(ceil((queued + in_flight) / per_worker), min, max)."""
    demand = math.ceil((queued + in_flight) / max(per_worker, 1))
    return max(min_workers, min(max_workers, demand))


def next_desired(*, current: int, target: int, low_demand_since, now, delay_seconds: float):
    """Scale up at once; scale down only after `delay_seconds` of lower demand.
    Returns (desired, low_demand_since)."""
    if target >= current:
        return target, None
    if low_demand_since is None:
        return current, now
    if (now - low_demand_since).total_seconds() >= delay_seconds:
        return target, None
    return current, low_demand_since


def queue_depth(prefix: str, replica_ids: list[str]) -> tuple[int, int]:
    """(queued, in flight) of one queue."""
    keys = protocol.Keys(prefix)
    with get_redis().pipeline(transaction=False) as pipe:
        pipe.llen(keys.queue)
        for replica_id in replica_ids:
            pipe.llen(keys.inflight(replica_id))
        answers = pipe.execute()
    return answers[0], sum(answers[1:])


def autoscale_endpoint(endpoint) -> bool:
    """Set desired_workers from the queue; returns whether it changed."""
    from endpoints.models import ModelEndpoint

    if endpoint.status == ModelEndpoint.Status.DELETE_IN_PROGRESS:
        return False
    replica_ids = list(
        Replica.objects.filter(owner_kind="endpoint", owner_id=endpoint.id, state__in=LIVE_STATES).values_list(
            "id", flat=True
        )
    )
    queued, in_flight = queue_depth(protocol.endpoint_prefix(endpoint.id), replica_ids)
    target = desired_workers(
        queued=queued, in_flight=in_flight, per_worker=endpoint.per_worker,
        min_workers=endpoint.min_workers, max_workers=endpoint.max_workers,
    )
    desired, since = next_desired(
        current=endpoint.desired_workers, target=target, low_demand_since=endpoint.low_demand_since,
        now=timezone.now(), delay_seconds=settings.SCALE_DOWN_DELAY_SECONDS,
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


# --- the tick -----------------------------------------------------------------------------

_tick_hooks: list = []


def register_tick_hook(function) -> None:
    """Other apps (batch jobs, hosts) add their periodic work here."""
    if function not in _tick_hooks:
        _tick_hooks.append(function)


def tick() -> None:
    from endpoints.models import ModelEndpoint

    for endpoint in ModelEndpoint.objects.all():
        try:
            autoscale_endpoint(endpoint)
            reconcile("endpoint", endpoint.id)
        except Exception:  # noqa: BLE001 - one bad endpoint must not stop the others
            logger.exception("tick failed for endpoint %s", endpoint.id)
    # Replicas whose owner row is gone (deleted while the controller was down).
    orphans = Replica.objects.filter(state__in=LIVE_STATES).values_list("owner_kind", "owner_id").distinct()
    for kind, owner_id in orphans:
        if kind == "endpoint" and not ModelEndpoint.objects.filter(pk=owner_id).exists():
            reconcile(kind, owner_id)
    for hook in list(_tick_hooks):
        try:
            hook()
        except Exception:  # noqa: BLE001
            logger.exception("tick hook %s failed", getattr(hook, "__name__", hook))


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
                redis.blpop([WAKE_KEY], timeout=settings.TICK_SECONDS)
            except Exception:  # noqa: BLE001 - Redis restarting: wait and retry
                logger.exception("waiting for a wake-up failed")
                stop_event.wait(settings.TICK_SECONDS)
    finally:
        connections.close_all()  # this thread's connections; nobody else can close them

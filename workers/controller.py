"""Reconcile: make one owner's replicas (an endpoint's or a batch job's) match its desired state.

`reconcile(kind, owner_id)` is idempotent and may run from an RQ job (after an API write)
and from the tick at the same time; a short Redis lock per owner keeps them from both
starting replicas, and every replica state change is a compare-and-set (workers.lifecycle).
One pass: observe every live replica and move it through the lifecycle, fail the tasks that
ran past their timeout, then start, stop or roll over replicas, and report the status.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from django.conf import settings
from django.utils import timezone

from launch_site.redis_client import get_redis
from workers import lifecycle, protocol, redis_acl
from workers.deployments import Deployment, load_deployment
from workers.models import LIVE_STATES, Replica
from workers.runtimes import get_runtime
from workers.runtimes.base import WAITING_FOR_CAPACITY, BundleStartFailed, PlacementError

logger = logging.getLogger(__name__)

State = Replica.State
LOG_TAIL_LINES = 30
RECONCILE_LOCK_SECONDS = 15


def reconcile(kind: str, owner_id: str) -> None:
    # Short: a controller killed in the middle of a reconcile must not hold the owner up for
    # long. _start_replicas extends it for each replica it starts (a docker start may be slow).
    lock = get_redis().lock(f"launch:lock:{kind}:{owner_id}", timeout=RECONCILE_LOCK_SECONDS, blocking_timeout=0.5)
    if not lock.acquire():
        return  # another reconcile of this owner is running; the next tick catches up
    try:
        _reconcile(kind, owner_id, lock)
    finally:
        try:
            lock.release()
        except Exception:  # noqa: BLE001 - expired lock: nothing to release
            pass


def _reconcile(kind: str, owner_id: str, lock) -> None:
    deployment = load_deployment(kind, owner_id)
    replicas = list(
        Replica.objects.filter(owner_kind=kind, owner_id=owner_id, state__in=LIVE_STATES)
        .select_related("host")
        .order_by("created_at")
    )
    if deployment is None:
        for replica in replicas:
            runtime = get_runtime(replica.runtime)
            lifecycle.apply(replica, lifecycle.Transition(State.STOPPED, "owner deleted", kill=True),
                            runtime=runtime, prefix=protocol.owner_prefix(kind, owner_id))
        return
    load_error, pending = _observe(deployment, replicas)
    _time_out_tasks(deployment, replicas)
    _requeue_orphans(deployment, replicas)
    live = [r for r in replicas if r.state in LIVE_STATES]
    serving = [r for r in live if r.state != State.DRAINING]

    if deployment.deleting:
        for replica in serving:
            lifecycle.stop(replica, runtime=get_runtime(replica.runtime))
        if not live:
            leftover = list(get_redis().scan_iter(match=deployment.prefix + "*", count=1000))
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
        waiting, load_error = _start_replicas(deployment, deployment.desired - len(current), lock)
        failed = load_error is not None
    elif len(current) > deployment.desired:
        # Scale down: replicas still loading go first, then the newest.
        excess = sorted(current, key=lambda r: (r.state == State.READY, r.created_at))
        for replica in excess[: len(current) - deployment.desired]:
            lifecycle.stop(replica, runtime=get_runtime(replica.runtime))
            current.remove(replica)
    ready_current = sum(r.state == State.READY for r in current)
    # Rollover: old replicas serve until the new generation answers (never when it failed).
    if old and not failed and ready_current >= max(deployment.desired, 1 if deployment.desired else 0):
        for replica in old:
            lifecycle.stop(replica, runtime=get_runtime(replica.runtime))
        old = []
    starting = sum(r.state == State.STARTING for r in current)
    waiting = waiting or pending
    deployment.report(ready=ready_current, starting=starting, old=len(old), load_error=load_error, waiting=waiting)


def _observe(deployment: Deployment, replicas: list[Replica]) -> tuple[str | None, str | None]:
    """Move every live replica through the lifecycle from what runs; returns the load error
    of the current generation, when one of its replicas failed for the bundle's own reason,
    and why a replica the runtime holds pending waits (Ray: no node has room yet)."""
    redis = get_redis()
    keys = protocol.Keys(deployment.prefix)
    phase_fields = [f"t_{phase}" for phase in lifecycle.COLD_START_PHASES]
    with redis.pipeline(transaction=False) as pipe:
        for replica in replicas:
            pipe.hmget(keys.replica(replica.id), ["state", "error", *phase_fields])
            pipe.exists(keys.heartbeat(replica.id))
        answers = pipe.execute()
    load_error = pending = None
    now = timezone.now()
    for index, replica in enumerate(replicas):
        reported, error, *times = (v.decode(errors="replace") if v is not None else None for v in answers[2 * index])
        runtime = get_runtime(replica.runtime)
        alive = runtime.is_alive(replica)
        starting = alive and replica.state == State.STARTING
        pending_reason = runtime.pending_reason(replica) if starting else None
        if pending_reason and pending is None:
            pending = f"{WAITING_FOR_CAPACITY}: replica {replica.id} pending: {pending_reason}"
        facts = lifecycle.Facts(
            state=replica.state,
            alive=alive,
            exit=None if alive else runtime.exit_info(replica),
            reported=reported,
            load_error=error or "",
            heartbeat=bool(answers[2 * index + 1]),
            seconds_in_state=lifecycle.seconds_in_state(
                replica, now, runtime.started_at(replica) if starting else None
            ),
            start_timeout=settings.REPLICA_START_TIMEOUT_SECONDS,
            stop_grace=settings.REPLICA_STOP_GRACE_SECONDS,
            memory_limit=deployment.memory_limit,
            pending=bool(pending_reason),
        )
        transition = lifecycle.next_transition(facts)
        if transition is None:
            continue
        # The replica's last output goes with a failure, unless the reason is its traceback.
        tail = ""
        if transition.to == State.FAILED and not facts.load_error:
            tail = runtime.logs(replica, tail_lines=LOG_TAIL_LINES).strip()
        fields = None
        if transition.to == State.READY:
            fields = {"cold_start": lifecycle.cold_start_times(dict(zip(phase_fields, times, strict=True)), replica.created_at)}
        won = lifecycle.apply(
            replica, transition, runtime=runtime, prefix=deployment.prefix, log_tail=tail, fields=fields
        )
        if won and transition.to == State.FAILED:
            logger.warning("replica %s of %s %s failed (%s): %s", replica.id, deployment.kind, deployment.id,
                           transition.cause, transition.reason.splitlines()[0] if transition.reason else "")
        if won and transition.cause == lifecycle.BUNDLE and replica.generation == deployment.generation:
            load_error = replica.reason
    return load_error, pending


def _time_out_tasks(deployment: Deployment, replicas: list[Replica]) -> None:
    """Fail the tasks that have run past the task timeout, and replace the replicas that ran
    them (a predict that hangs holds its replica, and the queue behind it, forever)."""
    timeout = deployment.task_timeout_seconds
    if not timeout or not any(r.state == State.READY for r in replicas):
        return
    redis = get_redis()
    keys = protocol.Keys(deployment.prefix)
    overdue = redis.zrangebyscore(keys.running, "-inf", time.time() - timeout)
    by_id = {r.id: r for r in replicas}
    reason = f"timed out after {timeout:g} s"
    to_kill: dict[str, str] = {}
    # Every overdue task fails before any replica is killed: a kill requeues what its replica
    # still runs, and an overdue task requeued that way (one of a batch, or of another thread)
    # would be failed here anyway and then run again, finished, by the next replica.
    for raw_task_id in overdue:
        task_id = raw_task_id.decode()
        replica_id = (redis.hget(keys.task(task_id), "replica") or b"").decode()
        protocol.time_out_task(redis, keys, task_id, replica_id, reason=reason)
        to_kill.setdefault(replica_id, task_id)
    for replica_id, task_id in to_kill.items():
        replica = by_id.get(replica_id)
        if replica is not None and replica.state in LIVE_STATES:
            runtime = get_runtime(replica.runtime)
            lifecycle.apply(
                replica,
                lifecycle.Transition(State.FAILED, f"killed: task {task_id} {reason}", lifecycle.INFRA, kill=True),
                runtime=runtime, prefix=deployment.prefix,
            )


ORPHAN_SWEEP_SECONDS = 30


def _requeue_orphans(deployment: Deployment, replicas: list[Replica]) -> None:
    """A safety net, every ORPHAN_SWEEP_SECONDS per owner: in-flight lists of replicas that
    are no longer live (their release failed, e.g. Redis was down when the stack stopped) go
    back on the queue, so nothing accepted is stranded."""
    redis = get_redis()
    if not redis.set(f"launch:orphan-sweep:{deployment.prefix}", "1", nx=True, ex=ORPHAN_SWEEP_SECONDS):
        return
    keys = protocol.Keys(deployment.prefix)
    live = {r.id for r in replicas if r.state in LIVE_STATES}
    for key in redis.scan_iter(match=keys.inflight_pattern, count=1000):
        replica_id = key.decode().rsplit(":", 1)[1]
        if replica_id not in live:
            requeued, failed = protocol.requeue_inflight(
                redis, keys, replica_id, reason=f"replica {replica_id} is gone", max_attempts=settings.TASK_MAX_ATTEMPTS
            )
            logger.warning("requeued %s and failed %s tasks left by replica %s", requeued, failed, replica_id)


def _start_replicas(deployment: Deployment, count: int, lock) -> tuple[str | None, str | None]:
    """Start `count` replicas; returns why it could not start them, if so: (waiting, None)
    for what passes (capacity, an install under way), (None, reason) when the bundle itself
    cannot start (its requirements do not install): the generation fails with the reason."""
    recent = list(
        Replica.objects.filter(owner_kind=deployment.kind, owner_id=deployment.id).order_by("-created_at")[:12]
    )
    delay = lifecycle.restart_delay(recent, timezone.now())
    if delay > 0:
        last = recent[0]
        headline = (last.reason or "failed").splitlines()[0]
        return f"replica {last.id} {headline.removeprefix('replica ')}; starting another in {delay:.1f} s", None
    runtime = get_runtime(deployment.runtime_name)
    for _ in range(count):
        lock.reacquire()
        # The row exists before placement and start: placement books the host's CPUs, memory and
        # GPU ids on it (so a concurrent placement sees them), and a controller crash leaves
        # a row to clean up or adopt rather than a stray process.
        replica = Replica.objects.create(
            owner_kind=deployment.kind, owner_id=deployment.id, generation=deployment.generation,
            runtime=runtime.name, state=State.STARTING,
        )
        spec = deployment.replica_spec(replica.id)
        try:
            placement = runtime.place(spec)
        except PlacementError as error:
            replica.delete()
            return f"{WAITING_FOR_CAPACITY}: {error}", None
        redis_url = redis_acl.replica_redis_url(prefix=deployment.prefix, replica_id=replica.id)
        spec = dataclasses.replace(spec, env={**spec.env, "LAUNCH_REDIS_URL": redis_url})
        try:
            replica.handle = runtime.start(spec, placement)
        except PlacementError as error:  # e.g. an image still building: try again later
            replica.delete()
            redis_acl.revoke(replica.id)
            return f"{WAITING_FOR_CAPACITY}: {error}", None
        except BundleStartFailed as error:
            logger.warning("replica %s of %s %s cannot start: %s", replica.id, deployment.kind, deployment.id,
                           str(error).splitlines()[0])
            lifecycle.compare_and_set(replica, State.FAILED, str(error))
            redis_acl.revoke(replica.id)
            return None, str(error)
        except Exception as error:  # noqa: BLE001 - a runtime failure is reported, not raised
            logger.exception("starting replica %s failed", replica.id)
            lifecycle.compare_and_set(replica, State.FAILED, f"could not start: {error}")
            redis_acl.revoke(replica.id)
            return f"could not start a replica: {error}", None
        replica.host_id = placement.host_id
        replica.gpu_device_ids = list(placement.gpu_device_ids)
        replica.save(update_fields=["handle", "host", "gpu_device_ids"])
        logger.info("started replica %s of %s %s", replica.id, deployment.kind, deployment.id)
    return None, None


def _leaving_host(replica: Replica) -> bool:
    return replica.host is not None and (replica.host.draining or not replica.host.healthy)

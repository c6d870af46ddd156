"""The replica lifecycle: the one home of a replica's states and transitions.

    STARTING --(reports ready, alive)------------------------------> READY
    STARTING --(load traceback | non-zero exit | start timeout)----> FAILED   cause: bundle
    STARTING --(killed by a signal | gone without a word)----------> FAILED   cause: infra
    STARTING --(out of memory while loading)------------------------> FAILED   cause: bundle
    READY    --(out of memory)--------------------------------------> FAILED   cause: oom
    READY    --(process gone | heartbeat stopped)-------------------> FAILED   cause: infra
    STARTING/READY --(controller stops it: scale down, rollover)----> DRAINING
    DRAINING --(exited | grace period over: killed)-----------------> STOPPED

`next_transition(facts)` is a pure function from what the controller observed to the next
state; `apply(replica, transition)` writes it as a compare-and-set (`UPDATE ... WHERE
state = old`), so two controllers (or a tick and an RQ job) observing the same death move
the replica once, and only the winner requeues its tasks. Every way out of a live state
hands the replica's in-flight tasks back at once (workers.protocol.requeue_inflight).

Only a bundle cause makes the endpoint's generation UPDATE_FAILED; an infra cause (a kill,
a lost machine) is replaced, after a growing delay when replicas keep dying before they
ever become ready (`restart_delay`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from launch_site.redis_client import get_redis
from workers import protocol, redis_acl
from workers.models import Replica
from workers.runtimes.base import ExitInfo

State = Replica.State

BUNDLE = "bundle"  # the bundle's own fault: the generation fails
INFRA = "infra"  # killed, lost, stuck: replace it
OOM = "oom"  # over its memory limit


@dataclass(frozen=True)
class Facts:
    """What the controller saw of one replica in one tick."""

    state: str  # the row's state
    alive: bool  # the runtime's is_alive
    exit: ExitInfo | None  # how it ended, when not alive and the runtime knows
    reported: str | None  # what the replica wrote in Redis: loading | ready | failed | stopping
    load_error: str  # the load traceback it wrote, if any
    heartbeat: bool  # its heartbeat key is present
    seconds_in_state: float
    start_timeout: float
    stop_grace: float
    memory_limit: str = ""  # as the user wrote it ("1Gi"), for messages
    # A cluster scheduler holds it until a node has room (Ray): not the bundle's slowness.
    pending: bool = False


@dataclass(frozen=True)
class Transition:
    to: str
    reason: str = ""
    cause: str = ""  # BUNDLE | INFRA | OOM, for FAILED
    kill: bool = False  # SIGKILL what is left of it before the state changes


def out_of_memory_reason(memory_limit: str) -> str:
    return f"out of memory (limit {memory_limit})" if memory_limit else "out of memory"


def next_transition(facts: Facts) -> Transition | None:
    """The next state of one replica, or None to leave it as it is."""
    if facts.state == State.STARTING:
        return _starting(facts)
    if facts.state == State.READY:
        return _ready(facts)
    if facts.state == State.DRAINING:
        if not facts.alive:
            return Transition(State.STOPPED)
        if facts.seconds_in_state > facts.stop_grace:
            return Transition(State.STOPPED, "killed after the stop grace period", kill=True)
    return None


def _starting(facts: Facts) -> Transition | None:
    if facts.reported == protocol.REPLICA_FAILED:
        return Transition(State.FAILED, facts.load_error or "failed to load its bundle", BUNDLE, kill=True)
    if not facts.alive:
        ended = facts.exit
        if ended is not None and ended.oom:
            # It will run out of memory every time it loads: the bundle's fault, not bad luck.
            return Transition(State.FAILED, f"{out_of_memory_reason(facts.memory_limit)} while loading its bundle", BUNDLE)
        if facts.reported == protocol.REPLICA_READY:
            # It died between reporting ready and the controller seeing it: not the bundle's
            # load, and it may have taken a task already.
            how = ended.describe() if ended else "is gone"
            return Transition(State.FAILED, f"replica {how} just after becoming ready", INFRA)
        if ended is not None and ended.signal is None and ended.exit_code not in (None, 0):
            return Transition(
                State.FAILED, f"replica {ended.describe()} while loading its bundle", BUNDLE
            )
        how = ended.describe() if ended else "is gone"
        return Transition(State.FAILED, f"replica {how} while loading its bundle", INFRA)
    if facts.reported == protocol.REPLICA_READY:
        return Transition(State.READY)
    if facts.pending:
        return None
    if facts.seconds_in_state > facts.start_timeout:
        return Transition(
            State.FAILED, f"did not load its bundle within {facts.start_timeout:.0f} s", BUNDLE, kill=True
        )
    return None


def _ready(facts: Facts) -> Transition | None:
    if not facts.alive:
        ended = facts.exit
        if ended is not None and ended.oom:
            return Transition(State.FAILED, out_of_memory_reason(facts.memory_limit), OOM)
        if ended is not None and ended.signal is None and ended.exit_code == protocol.EXIT_OUT_OF_MEMORY:
            return Transition(State.FAILED, out_of_memory_reason(facts.memory_limit), OOM)
        how = ended.describe() if ended else "is gone"
        return Transition(State.FAILED, f"replica {how}", INFRA)
    if not facts.heartbeat:
        return Transition(State.FAILED, "replica stopped heartbeating", INFRA, kill=True)
    return None


def seconds_in_state(replica: Replica, now: datetime, started_at: datetime | None = None) -> float:
    """Since the state began: a DRAINING replica since it was stopped, a STARTING one since it
    began to run (`started_at`, when the runtime held it pending before) or was created."""
    if replica.state == State.DRAINING and replica.stopped_at:
        since = replica.stopped_at
    elif replica.state == State.STARTING and started_at is not None:
        since = max(started_at, replica.created_at)
    else:
        since = replica.created_at
    return (now - since).total_seconds()


# --- writing transitions ----------------------------------------------------------------------

def compare_and_set(replica: Replica, to: str, reason: str = "", *, now: datetime | None = None,
                    fields: dict | None = None) -> bool:
    """Move the row from the state we read to `to` (writing `fields` with it); False when
    someone else moved it first."""
    now = now or timezone.now()
    changes: dict = {"state": to, **(fields or {})}
    if reason:
        changes["reason"] = reason
    if to == State.READY:
        changes["ready_at"] = now
    if to in (State.DRAINING, State.STOPPED, State.FAILED) and replica.stopped_at is None:
        changes["stopped_at"] = now
    won = bool(Replica.objects.filter(pk=replica.pk, state=replica.state).update(**changes))
    if won:
        for name, value in changes.items():
            setattr(replica, name, value)
    return won


def apply(replica: Replica, transition: Transition, *, runtime, prefix: str, log_tail: str = "",
          fields: dict | None = None) -> bool:
    """Carry out a transition; returns whether this caller made it (the compare-and-set won).

    A replica that leaves the live states hands back its in-flight tasks: requeued, or failed
    once they have had TASK_MAX_ATTEMPTS (a poison task), or failed at once when it ran out of
    memory. The reason written on a failed task names how the replica ended and its last
    output, so a user whose predict kills its process sees why."""
    if transition.kill:
        runtime.kill(replica)
    reason = transition.reason
    if log_tail:
        reason = f"{reason}; last output:\n{log_tail}"
    if not compare_and_set(replica, transition.to, reason, fields=fields):
        return False
    if transition.to in (State.STOPPED, State.FAILED):
        release(replica, prefix=prefix, reason=transition.reason, cause=transition.cause, log_tail=log_tail)
    return True


def release(replica: Replica, *, prefix: str, reason: str, cause: str = "", log_tail: str = "") -> None:
    """What a replica that is gone leaves behind: its tasks, its keys, its Redis user."""
    keys = protocol.Keys(prefix)
    task_reason = f"replica {replica.id} ended while running this task: {reason}"
    if log_tail:
        task_reason += f"\nlast output of the replica:\n{log_tail}"
    protocol.requeue_inflight(
        get_redis(), keys, replica.id, reason=task_reason, max_attempts=settings.TASK_MAX_ATTEMPTS,
        fail_reason=reason if cause == OOM else "",
    )
    get_redis().delete(keys.heartbeat(replica.id), keys.replica(replica.id))
    redis_acl.revoke(replica.id)


def stop(replica: Replica, *, runtime) -> bool:
    """Ask a live replica to finish its in-flight work and exit (scale down, rollover)."""
    if replica.state not in (State.STARTING, State.READY):
        return False
    runtime.stop(replica)
    return compare_and_set(replica, State.DRAINING)


# --- cold starts ----------------------------------------------------------------------------------

# The phases of a cold start, in order: the replica writes the t_* times into its hash
# (workers.serve); `placed` is the row's creation (the controller placed it and starts it).
COLD_START_PHASES = ("started", "downloaded", "loaded", "ready")


def cold_start_times(reported: dict[str, str | None], placed_at: datetime) -> dict[str, float]:
    """The phase times (unix seconds) to keep on the row, from the replica hash's t_* fields."""
    times = {"placed": placed_at.timestamp()}
    for phase in COLD_START_PHASES:
        try:
            times[phase] = float(reported[f"t_{phase}"])
        except (KeyError, TypeError, ValueError):
            continue
    return times


def cold_start_phases(times: dict[str, float]) -> list[tuple[str, float]]:
    """[(phase, seconds it took)] from the previous phase to each one, e.g. ("downloaded", 0.2)
    is the bundle download; the seconds add up to placed -> ready."""
    phases = []
    previous = times.get("placed")
    for phase in COLD_START_PHASES:
        if phase in times and previous is not None:
            phases.append((phase, max(0.0, times[phase] - previous)))
            previous = times[phase]
    return phases


# --- restarts -----------------------------------------------------------------------------------

def restart_delay(recent: list[Replica], now: datetime) -> float:
    """Seconds to wait before starting another replica, from the owner's newest replicas
    (newest first): doubling with each replica in a row that died before it was ever ready,
    counted from the newest death. A replica that served breaks the run: a killed replica
    that was serving is replaced at once."""
    failures = 0
    newest_death = None
    for replica in recent:
        if replica.state != State.FAILED or replica.ready_at is not None:
            break
        failures += 1
        newest_death = newest_death or replica.stopped_at
    if failures == 0 or newest_death is None:
        return 0.0
    delay = min(
        settings.REPLICA_RESTART_BACKOFF_SECONDS * 2 ** (failures - 1), settings.REPLICA_RESTART_BACKOFF_MAX_SECONDS
    )
    waited = (now - newest_death).total_seconds()
    return max(0.0, delay - waited)


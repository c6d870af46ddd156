"""The replica state machine (workers.lifecycle): its transition function over a table of
observed facts, the compare-and-set that makes one caller win, and the restart backoff."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from workers import lifecycle, protocol
from workers.lifecycle import BUNDLE, INFRA, OOM, Facts
from workers.models import Replica
from workers.runtimes.base import ExitInfo

S = Replica.State
KILLED = ExitInfo(signal=9)
EXIT_1 = ExitInfo(exit_code=1)
EXIT_0 = ExitInfo(exit_code=0)
OOM_KILLED = ExitInfo(signal=9, oom=True)
RLIMIT_OOM = ExitInfo(exit_code=protocol.EXIT_OUT_OF_MEMORY)


def facts(state, *, alive=True, exit=None, reported=None, load_error="", heartbeat=True, age=1.0, pending=False):
    return Facts(state=state, alive=alive, exit=exit, reported=reported, load_error=load_error, heartbeat=heartbeat,
                 seconds_in_state=age, start_timeout=600, stop_grace=60, memory_limit="1Gi", pending=pending)


CASES = [
    # (facts, expected state or None, cause, kill, reason contains)
    ("loading, alive", facts(S.STARTING, reported="loading"), None, "", False, ""),
    ("not yet reported", facts(S.STARTING), None, "", False, ""),
    ("reports ready", facts(S.STARTING, reported="ready"), S.READY, "", False, ""),
    ("held pending by Ray past the start timeout", facts(S.STARTING, age=3600, pending=True), None, "", False, ""),
    ("its node died while it was pending", facts(S.STARTING, alive=False, exit=ExitInfo(signal=9, detail="its Ray node died"),
                                                 pending=True), S.FAILED, INFRA, False, "SIGKILL (its Ray node died)"),
    ("load traceback", facts(S.STARTING, reported="failed", load_error="Traceback: boom"), S.FAILED, BUNDLE, True,
     "boom"),
    ("load traceback, process already gone", facts(S.STARTING, alive=False, exit=EXIT_1, reported="failed",
                                                   load_error="Traceback: boom"), S.FAILED, BUNDLE, True, "boom"),
    ("SIGKILL while loading", facts(S.STARTING, alive=False, exit=KILLED, reported="loading"), S.FAILED, INFRA, False,
     "SIGKILL while loading"),
    ("SIGKILL before it wrote anything", facts(S.STARTING, alive=False, exit=KILLED), S.FAILED, INFRA, False,
     "SIGKILL"),
    ("died just after reporting ready", facts(S.STARTING, alive=False, exit=KILLED, reported="ready"), S.FAILED,
     INFRA, False, "just after becoming ready"),
    ("exit 1 while loading, no traceback", facts(S.STARTING, alive=False, exit=EXIT_1, reported="loading"), S.FAILED,
     BUNDLE, False, "exited with status 1"),
    ("exit 0 while loading", facts(S.STARTING, alive=False, exit=EXIT_0, reported="loading"), S.FAILED, INFRA, False,
     "status 0"),
    ("gone, exit unknown (adopted)", facts(S.STARTING, alive=False, exit=None, reported="loading"), S.FAILED, INFRA,
     False, "is gone"),
    ("out of memory while loading", facts(S.STARTING, alive=False, exit=OOM_KILLED, reported="loading"), S.FAILED,
     BUNDLE, False, "out of memory (limit 1Gi) while loading"),
    ("start timeout", facts(S.STARTING, reported="loading", age=601), S.FAILED, BUNDLE, True, "within 600 s"),
    ("serving", facts(S.READY, reported="ready"), None, "", False, ""),
    ("ready, SIGKILL", facts(S.READY, alive=False, exit=KILLED, reported="ready"), S.FAILED, INFRA, False,
     "killed by SIGKILL"),
    ("ready, OOM-killed", facts(S.READY, alive=False, exit=OOM_KILLED), S.FAILED, OOM, False,
     "out of memory (limit 1Gi)"),
    ("ready, MemoryError exit", facts(S.READY, alive=False, exit=RLIMIT_OOM), S.FAILED, OOM, False,
     "out of memory (limit 1Gi)"),
    ("ready, exit 1", facts(S.READY, alive=False, exit=EXIT_1), S.FAILED, INFRA, False, "exited with status 1"),
    ("ready, no heartbeat (hung)", facts(S.READY, heartbeat=False), S.FAILED, INFRA, True, "heartbeating"),
    ("draining, still finishing", facts(S.DRAINING, age=5), None, "", False, ""),
    ("draining, exited", facts(S.DRAINING, alive=False, exit=EXIT_0), S.STOPPED, "", False, ""),
    ("draining past grace", facts(S.DRAINING, age=61), S.STOPPED, "", True, "grace"),
    ("stopped stays", facts(S.STOPPED, alive=False), None, "", False, ""),
    ("failed stays", facts(S.FAILED, alive=False), None, "", False, ""),
]


@pytest.mark.parametrize(("case", "observed", "state", "cause", "kill", "reason"), CASES, ids=[c[0] for c in CASES])
def test_transition_table(case, observed, state, cause, kill, reason):
    transition = lifecycle.next_transition(observed)
    if state is None:
        assert transition is None, case
        return
    assert transition is not None, case
    assert (transition.to, transition.cause, transition.kill) == (state, cause, kill), case
    assert reason in transition.reason, (case, transition.reason)


@pytest.mark.django_db
def test_only_one_observer_wins_the_compare_and_set():
    replica = Replica.objects.create(owner_kind="endpoint", owner_id="end_x", runtime="local", state=S.READY)
    first = Replica.objects.get(pk=replica.pk)
    second = Replica.objects.get(pk=replica.pk)
    assert lifecycle.compare_and_set(first, S.FAILED, "replica was killed by SIGKILL") is True
    # The second observer read READY too; its write must not land on a FAILED replica.
    assert lifecycle.compare_and_set(second, S.DRAINING) is False
    replica.refresh_from_db()
    assert replica.state == S.FAILED and replica.stopped_at is not None


@pytest.mark.django_db
def test_restart_delay_doubles_for_replicas_that_never_became_ready(settings):
    settings.REPLICA_RESTART_BACKOFF_SECONDS = 1.0
    settings.REPLICA_RESTART_BACKOFF_MAX_SECONDS = 8.0
    now = timezone.now()

    def replica(state, ready, died_ago):
        return Replica(state=state, ready_at=now if ready else None, stopped_at=now - timedelta(seconds=died_ago))

    assert lifecycle.restart_delay([], now) == 0
    # A replica that served and was killed: replaced at once.
    assert lifecycle.restart_delay([replica(S.FAILED, True, 0)], now) == 0
    assert lifecycle.restart_delay([replica(S.FAILED, False, 0)], now) == 1.0
    three = [replica(S.FAILED, False, 0), replica(S.FAILED, False, 5), replica(S.FAILED, False, 9)]
    assert lifecycle.restart_delay(three, now) == 4.0
    assert lifecycle.restart_delay([replica(S.FAILED, False, 3)] + three[1:], now) == 1.0  # 4 s, 3 s waited
    assert lifecycle.restart_delay([replica(S.FAILED, False, 0)] * 10, now) == 8.0  # capped
    # A replica that served breaks the run of failures.
    assert lifecycle.restart_delay([replica(S.FAILED, False, 0), replica(S.STOPPED, True, 50)] + three, now) == 1.0


def test_the_start_timeout_counts_from_when_a_pending_replica_began_to_run():
    now = timezone.now()
    replica = Replica(state=S.STARTING, created_at=now - timedelta(hours=1))
    assert lifecycle.seconds_in_state(replica, now) == pytest.approx(3600)
    assert lifecycle.seconds_in_state(replica, now, now - timedelta(seconds=5)) == pytest.approx(5)

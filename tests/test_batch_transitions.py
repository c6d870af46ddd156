"""BatchJob's transitions (batchjobs.models): every status x every transition, allowed or
refused, and a refused one changes nothing."""

from __future__ import annotations

import pytest

from batchjobs.models import ALLOWED_FROM, BatchJob
from bundles.models import StoredObject
from tests.factories import make_bundle

pytestmark = pytest.mark.django_db

S = BatchJob.Status

TRANSITIONS = {
    "start": (S.RUNNING, lambda job: job.start(total_items=10, chunk_size=1, results_bytes=2)),
    "finish": (S.SUCCESS, lambda job: job.finish(result=job.input, results_bytes=7)),
    "fail": (S.FAILURE, lambda job: job.fail("the bundle could not be loaded")),
    "time_out": (S.TIMEOUT, lambda job: job.fail("ran too long", status=S.TIMEOUT)),
    "cancel": (S.CANCELLED, lambda job: job.cancel()),
}

# status before -> the transitions it allows (the rest are refused)
EXPECTED = {
    S.PENDING: {"start", "fail", "time_out", "cancel"},
    S.RUNNING: {"finish", "fail", "time_out", "cancel"},
    S.SUCCESS: set(),
    S.FAILURE: set(),
    S.CANCELLED: set(),
    S.TIMEOUT: set(),
    S.UNDEFINED: set(),
}


@pytest.fixture
def make_job(owner):
    bundle = make_bundle(owner.team)

    def make(status: str) -> BatchJob:
        stored = StoredObject.objects.create(
            key=f"{owner.team.id}/batch_input/{status}", team=owner.team, kind="batch_input"
        )
        return BatchJob.objects.create(
            team=owner.team,
            bundle=bundle,
            input=stored,
            input_path=stored.location,
            serialization_format="JSON",
            status=status,
            desired_workers=2,
        )

    return make


def test_the_table_covers_every_status():
    assert set(EXPECTED) == set(S.values)
    for to, allowed_from in ALLOWED_FROM.items():
        assert {name for name, (target, _) in TRANSITIONS.items() if target == to}
        assert set(allowed_from) == {
            status for status, names in EXPECTED.items() if any(TRANSITIONS[name][0] == to for name in names)
        }


@pytest.mark.parametrize("transition", sorted(TRANSITIONS))
@pytest.mark.parametrize("before", list(S.values))
def test_transition_from_status(make_job, before, transition):
    job = make_job(before)
    to, move = TRANSITIONS[transition]
    allowed = transition in EXPECTED[before]
    assert move(job) is allowed
    saved = BatchJob.objects.get(pk=job.pk)
    if not allowed:
        assert saved.status == before and job.status == before
        assert (saved.finished_at, saved.started_at, saved.desired_workers) == (None, None, 2)
        return
    assert saved.status == to and job.status == to
    if to == S.RUNNING:
        assert saved.started_at is not None and saved.finished_at is None
        assert (saved.total_items, saved.chunk_size, saved.results_bytes) == (10, 1, 2)
    else:
        assert saved.finished_at is not None and saved.desired_workers == 0
    if to == S.SUCCESS:
        assert saved.result_id == job.input_id and saved.results_bytes == 7
    reasons = {
        S.FAILURE: "the bundle could not be loaded",
        S.TIMEOUT: "ran too long",
        S.CANCELLED: "cancelled by the user",
    }
    assert saved.status_reason == reasons.get(to, "")


def test_a_prepared_job_does_not_start_again(make_job):
    job = make_job(S.PENDING)
    BatchJob.objects.filter(pk=job.pk).update(chunk_size=5)
    assert job.start(total_items=10, chunk_size=1, results_bytes=2) is False
    assert BatchJob.objects.get(pk=job.pk).status == S.PENDING


def test_of_two_racing_writers_only_the_first_wins(make_job):
    job = make_job(S.RUNNING)
    stale = BatchJob.objects.get(pk=job.pk)  # e.g. the loop's copy while the user cancels
    assert job.cancel() is True
    assert stale.finish(result=stale.input, results_bytes=1) is False
    assert stale.fail("late") is False
    saved = BatchJob.objects.get(pk=job.pk)
    assert (saved.status, saved.status_reason, saved.result_id) == (S.CANCELLED, "cancelled by the user", None)


def test_fail_takes_only_failure_statuses(make_job):
    job = make_job(S.RUNNING)
    with pytest.raises(ValueError):
        job.fail("no", status=S.SUCCESS)
    assert BatchJob.objects.get(pk=job.pk).status == S.RUNNING

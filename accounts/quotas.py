"""What a team holds against its quota, and the one check of it.

Endpoints and batch jobs draw on the same workers and GPUs, so both are counted here, in one
place, by every service that creates or grows them:

  - endpoints: every endpoint of the team except those being deleted (DELETE_IN_PROGRESS);
  - workers: max_workers of those endpoints + max_workers of its active (PENDING/RUNNING)
    batch jobs;
  - GPUs: gpus x max_workers, over the same endpoints and jobs;
  - concurrent batch jobs: its active batch jobs;
  - docker-image batch jobs (batchjobs.image_jobs) count as batch jobs of one worker each.

An endpoint being deleted holds nothing: its desired_workers is already 0 and the user can
neither edit nor delete it again, so counting it would refuse a redeploy for as long as its
replicas drain with nothing the user could do about it. It is the same rule as for a cancelled
batch job, whose workers are free the moment it is cancelled while its replicas still stop.

Bundle storage (max_bundle_storage_bytes) is checked in bundles.services: it is measured in
bytes received, after an upload has streamed, under a lock of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from accounts.models import Quota, Team
from batchjobs.models import ACTIVE_STATUSES, BatchJob, DockerImageBatchJob
from endpoints.models import ModelEndpoint
from launch_site.errors import ConflictError, FieldError


@dataclass(frozen=True)
class Usage:
    """An amount of each thing a quota limits."""

    endpoints: int = 0
    batch_jobs: int = 0
    workers: int = 0
    gpus: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            endpoints=self.endpoints + other.endpoints,
            batch_jobs=self.batch_jobs + other.batch_jobs,
            workers=self.workers + other.workers,
            gpus=self.gpus + other.gpus,
        )


def usage_of(thing: ModelEndpoint | BatchJob) -> Usage:
    """What one endpoint or active batch job holds (as it is in memory, saved or not)."""
    if isinstance(thing, ModelEndpoint):
        return Usage(endpoints=1, workers=thing.max_workers, gpus=thing.gpus * thing.max_workers)
    return Usage(batch_jobs=1, workers=thing.max_workers, gpus=thing.gpus * thing.max_workers)


@dataclass(frozen=True)
class TeamUsage:
    """What a team holds, split by what holds it (the split goes into refusal messages)."""

    by_endpoints: Usage
    by_batch_jobs: Usage

    @property
    def total(self) -> Usage:
        return self.by_endpoints + self.by_batch_jobs


def _holding_endpoints(team: Team):
    return ModelEndpoint.objects.filter(team=team).exclude(status=ModelEndpoint.Status.DELETE_IN_PROGRESS)


def _holding_batch_jobs(team: Team):
    return BatchJob.objects.filter(team=team, status__in=ACTIVE_STATUSES)


def team_usage(team: Team, *, excluding: ModelEndpoint | BatchJob | None = None) -> TeamUsage:
    """What `team` holds now, leaving out `excluding` (the endpoint or job being edited)."""
    endpoints, jobs = _holding_endpoints(team), _holding_batch_jobs(team)
    if isinstance(excluding, ModelEndpoint) and excluding.pk is not None:
        endpoints = endpoints.exclude(pk=excluding.pk)
    if isinstance(excluding, BatchJob) and excluding.pk is not None:
        jobs = jobs.exclude(pk=excluding.pk)
    by_endpoints, by_batch_jobs = Usage(), Usage()
    for max_workers, gpus in endpoints.values_list("max_workers", "gpus"):
        by_endpoints += Usage(endpoints=1, workers=max_workers, gpus=gpus * max_workers)
    for max_workers, gpus in jobs.values_list("max_workers", "gpus"):
        by_batch_jobs += Usage(batch_jobs=1, workers=max_workers, gpus=gpus * max_workers)
    # A docker-image batch job is one container: one worker, its GPUs.
    for gpus in DockerImageBatchJob.objects.filter(team=team, status__in=ACTIVE_STATUSES).values_list(
        "gpus", flat=True
    ):
        by_batch_jobs += Usage(batch_jobs=1, workers=1, gpus=gpus)
    return TeamUsage(by_endpoints=by_endpoints, by_batch_jobs=by_batch_jobs)


def _saved_usage(team: Team, thing: ModelEndpoint | BatchJob | None) -> Usage:
    """What the saved row of `thing` holds (its caller has usually changed it in memory)."""
    if thing is None or thing.pk is None:
        return Usage()
    holding = _holding_endpoints(team) if isinstance(thing, ModelEndpoint) else _holding_batch_jobs(team)
    saved = holding.filter(pk=thing.pk).first()
    return usage_of(saved) if saved is not None else Usage()


def quota_check(
    *, team: Team, adding: Usage, replacing: ModelEndpoint | BatchJob | None = None, field_prefix: str = ""
) -> None:
    """Refuse `adding` if it would take the team past its quota; call inside the transaction
    that saves the change.

    `replacing` is the endpoint or job being edited: what it held is left out of the count and
    `adding` is what it will hold. Only what the change grows is checked, so an edit that
    holds no more than before (a smaller max_workers, a new bundle) is never refused, even
    when an admin has lowered the quota below what the team holds. Counts over the quota are a
    ConflictError (409); workers and GPUs a FieldError naming `field_prefix` + max_workers or
    gpus (422).
    """
    # Lock the team row: two racing creates (or an endpoint and a batch job) queue here, and
    # the second counts what the first saved, so they cannot both pass.
    Team.objects.select_for_update().get(pk=team.pk)
    quota = Quota.objects.filter(team=team).first()
    if quota is None:
        return
    before = _saved_usage(team, replacing)
    held = team_usage(team, excluding=replacing)
    total = held.total

    if (
        quota.max_endpoints is not None
        and adding.endpoints > before.endpoints
        and total.endpoints + adding.endpoints > quota.max_endpoints
    ):
        raise ConflictError(f"quota: your team may have at most {quota.max_endpoints} endpoints")
    if (
        quota.max_concurrent_batch_jobs is not None
        and adding.batch_jobs > before.batch_jobs
        and total.batch_jobs + adding.batch_jobs > quota.max_concurrent_batch_jobs
    ):
        raise ConflictError(
            f"quota: your team may run at most {quota.max_concurrent_batch_jobs} batch jobs at once; "
            "wait for one to finish or cancel one"
        )
    if (
        quota.max_workers is not None
        and adding.workers > before.workers
        and total.workers + adding.workers > quota.max_workers
    ):
        raise FieldError(
            f"{field_prefix}max_workers",
            f"quota: your team may run {quota.max_workers} workers in all; {total.workers} are taken "
            f"({_split(held, 'workers')}) and this asks for {adding.workers}",
        )
    if quota.max_gpus is not None and adding.gpus > before.gpus and total.gpus + adding.gpus > quota.max_gpus:
        raise FieldError(
            f"{field_prefix}gpus",
            f"quota: your team may use {quota.max_gpus} GPUs in all; {total.gpus} are taken "
            f"({_split(held, 'gpus')}) and this asks for {adding.gpus} (gpus x max_workers)",
        )


def _split(held: TeamUsage, name: str) -> str:
    return (
        f"{getattr(held.by_endpoints, name)} by endpoints, "
        f"{getattr(held.by_batch_jobs, name)} by pending or running batch jobs"
    )

"""Triggers: a cron schedule (parsed by croniter) that creates a docker-image batch job from a
bundle with the trigger's default job_config and labels.

Firing is one compare-and-set per scheduled time: `next_run_at` moves from the time being
fired to the next one (UPDATE ... WHERE next_run_at = <the time read>), in the transaction that
creates the job, so a time fires at most once even with two controllers or a restart between
reading and firing. Times missed while the controller was down fire once (the latest), not
once each.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from croniter import croniter
from django.db import transaction
from django.utils import timezone

from accounts.models import Team
from batchjobs import image_jobs
from batchjobs.models import DockerImageBatchJobBundle, Trigger
from launch_site.errors import ApplicationError, FieldError, NotFoundError

logger = logging.getLogger(__name__)


def _next_after(schedule: str, after: datetime) -> datetime:
    return croniter(schedule, after).get_next(datetime)


def _check_schedule(schedule: Any) -> str:
    if not isinstance(schedule, str) or not croniter.is_valid(schedule) or len(schedule.split()) != 5:
        raise FieldError("cron_schedule", f"{schedule!r} is not a cron schedule of five fields, such as '0 * * * *'")
    return schedule


def _check_defaults(job_config: Any, metadata: Any) -> None:
    if job_config is not None and not isinstance(job_config, dict):
        raise FieldError("default_job_config", "must be a JSON object or null")
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise FieldError("default_job_metadata", "must be an object of strings or null")


@transaction.atomic
def trigger_create(*, team: Team, user, name: Any, cron_schedule: Any, bundle_id: Any,
                   default_job_config: Any = None, default_job_metadata: Any = None) -> Trigger:
    if not isinstance(name, str) or not name.strip():
        raise FieldError("name", "must be a non-empty string")
    schedule = _check_schedule(cron_schedule)
    if not isinstance(bundle_id, str):
        raise FieldError("bundle_id", "must be a string")
    bundle = DockerImageBatchJobBundle.objects.filter(team=team, pk=bundle_id).first()
    if bundle is None:
        raise FieldError("bundle_id", f"no docker image batch job bundle {bundle_id!r} in your team")
    _check_defaults(default_job_config, default_job_metadata)
    if Trigger.objects.filter(team=team, name=name).exists():
        raise FieldError("name", f"your team already has a trigger named {name!r}")
    trigger = Trigger(
        team=team, created_by=user if getattr(user, "pk", None) else None, name=name, cron_schedule=schedule,
        bundle=bundle, default_job_config=default_job_config, default_job_metadata=default_job_metadata,
        next_run_at=_next_after(schedule, timezone.now()),
    )
    trigger.full_clean()
    trigger.save()
    return trigger


def trigger_get(*, team: Team, trigger_id: str) -> Trigger:
    trigger = Trigger.objects.filter(team=team, pk=trigger_id).first()
    if trigger is None:
        raise NotFoundError(f"No trigger {trigger_id!r}.")
    return trigger


@transaction.atomic
def trigger_update(*, trigger: Trigger, cron_schedule: Any = None, suspend: Any = None) -> Trigger:
    """A new schedule (its next time counted from now) and/or suspend (true) or resume (false)."""
    trigger = Trigger.objects.select_for_update().get(pk=trigger.pk)
    if cron_schedule is not None:
        trigger.cron_schedule = _check_schedule(cron_schedule)
        trigger.next_run_at = _next_after(trigger.cron_schedule, timezone.now())
    if suspend is not None:
        if not isinstance(suspend, bool):
            raise FieldError("suspend", "must be true or false")
        if trigger.suspended and not suspend:
            # Resuming does not fire the times passed while suspended.
            trigger.next_run_at = _next_after(trigger.cron_schedule, timezone.now())
        trigger.suspended = suspend
    trigger.full_clean()
    trigger.save()
    return trigger


def trigger_delete(*, trigger: Trigger) -> None:
    """Jobs it created stay (their trigger_id keeps naming it)."""
    trigger.delete()


def triggers_fire(now: datetime | None = None) -> list[str]:
    """Fire every trigger due at `now` (default: the clock); returns the job ids created."""
    now = now or timezone.now()
    created = []
    for trigger in Trigger.objects.filter(suspended=False, next_run_at__lte=now).select_related("team", "bundle"):
        try:
            job_id = _fire(trigger, now)
        except Exception:  # noqa: BLE001 - one bad trigger must not stop the others
            logger.exception("trigger %s failed to fire", trigger.id)
            continue
        if job_id:
            created.append(job_id)
    return created


def _fire(trigger: Trigger, now: datetime) -> str | None:
    due = trigger.next_run_at
    following = _next_after(trigger.cron_schedule, due)
    if following <= now:  # missed times (controller down): fire once, then count from now
        following = _next_after(trigger.cron_schedule, now)
    with transaction.atomic():
        won = Trigger.objects.filter(pk=trigger.pk, next_run_at=due, suspended=False).update(
            next_run_at=following, last_fired_at=now
        )
        if not won:
            return None  # another controller fired this time, or the trigger changed
        try:
            with transaction.atomic():
                job = image_jobs.image_job_create(
                    team=trigger.team, user=trigger.created_by, bundle_id=trigger.bundle_id,
                    job_config=trigger.default_job_config, labels=trigger.default_job_metadata or {},
                    trigger_id=trigger.id,
                )
        except ApplicationError as error:  # a quota, the runtime: this time is skipped, with why
            Trigger.objects.filter(pk=trigger.pk).update(last_error=f"{due.isoformat()}: {error}")
            return None
        Trigger.objects.filter(pk=trigger.pk).exclude(last_error="").update(last_error="")
    logger.info("trigger %s fired for %s: job %s", trigger.id, due.isoformat(), job.id)
    return job.id


def triggers_tick() -> None:
    """Registered as a controller tick hook."""
    triggers_fire()

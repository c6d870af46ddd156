"""RQ entry points of the local runtime: installing a bundle's requirements into their
virtualenv (workers.runtimes.local_venvs), on the control queue like the docker runtime's
image builds (workers.runtimes.docker_jobs)."""

from __future__ import annotations

import django_rq

from workers.runtimes import local_venvs


def prepare_venv_job(requirements: list[str]) -> str:
    return str(local_venvs.prepare_venv(tuple(requirements)))


def enqueue_prepare_venv(*, requirements: list[str], job_id: str, timeout: int) -> None:
    """Enqueued at once, not on commit: the job reads no row, and the caller's pending key
    must not outlive a rolled-back enqueue. No retries: a failure is remembered and reported
    (local_venvs.VENV_FAILURE_TTL_SECONDS)."""
    django_rq.get_queue("control", commit_mode="auto").enqueue(
        prepare_venv_job,
        list(requirements),
        job_id=job_id,
        job_timeout=timeout + 30,
        result_ttl=3600,
        failure_ttl=24 * 3600,
        description=f"install requirements {', '.join(requirements)} into a virtualenv",
    )

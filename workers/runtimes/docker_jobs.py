"""RQ entry points of the docker runtime: preparing a replica's image on a host.

Apart from workers/jobs.py because the docker runtime owns image preparation; the controller
runs these on its control queue like the reconcile jobs.
"""

from __future__ import annotations

import django_rq
from django.conf import settings

from workers.models import Host
from workers.runtimes import docker as docker_runtime


def prepare_image_job(
    host_id: int, image: str, python: str, workdir: str, custom: bool, requirements: list[str]
) -> str:
    host = Host.objects.get(pk=host_id)
    choice = docker_runtime.WorkerImageChoice(image=image, python=python, workdir=workdir, custom=custom)
    return docker_runtime.prepare_image(host=host, choice=choice, requirements=tuple(requirements))


def enqueue_prepare_image(
    *, host_id: int, image: str, python: str, workdir: str, custom: bool, requirements: list[str], job_id: str
) -> None:
    """Enqueued at once, not on commit: the job reads only the host row, committed long
    before, and the caller's pending key (docker_runtime.request_image) must not outlive a
    rolled-back enqueue. No retries: a failure is remembered and reported (IMAGE_FAILURE_TTL_SECONDS)."""
    django_rq.get_queue("control", commit_mode="auto").enqueue(
        prepare_image_job,
        host_id,
        image,
        python,
        workdir,
        custom,
        list(requirements),
        job_id=job_id,
        job_timeout=int(settings.DOCKER_BUILD_TIMEOUT_SECONDS) + 30,
        result_ttl=3600,
        failure_ttl=24 * 3600,
        description=f"prepare image {image} (+{len(requirements)} requirements) on host {host_id}",
    )

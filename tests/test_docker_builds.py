"""Images a replica needs but its host lacks are prepared by an RQ job, not inside start():
start() runs in the controller's tick, which must not stall for the length of a build.

Against the throwaway engines of tests/docker_harness.py. The test worker image's
"interpreter" is a busybox script that records `python -m pip install ...` (no real pip and
no network here); the failing case uses an image whose "pip" rejects every requirement.
"""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import django_rq
import pytest
from rq import SimpleWorker
from rq.registry import FailedJobRegistry

from tests import test_docker_runtime
from tests.docker_harness import PIP_RECORD, PYTHON, TEST_IMAGE
from workers import hosts
from workers.runtimes.base import BundleStartFailed, PlacementError, StartDeferred
from workers.runtimes.docker import (
    DERIVED_REPOSITORY,
    ImageBuildFailed,
    image_job_id,
    image_keys,
)

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("docker")]

FAILING_PIP_IMAGE = "launch-test-failing-pip:latest"

# Shared with the runtime tests.
bundle_url = test_docker_runtime.bundle_url
runtime = test_docker_runtime.runtime
make_spec = test_docker_runtime.make_spec


def control_queue():
    return django_rq.get_queue("control")


def image_jobs(requirements: tuple[str, ...] = ("tiny-model==1.0",)) -> int:
    """Jobs waiting on the control queue that build the image of these requirements (other
    control work may be queued too, by other tests of this process)."""
    return sum(
        job.func_name.endswith("prepare_image_job") and tuple(job.args[5]) == requirements
        for job in control_queue().get_jobs()
    )


def run_control_jobs() -> None:
    """What the controller's `rqworker control` does, in this process."""
    queue = control_queue()
    SimpleWorker([queue], connection=queue.connection).work(burst=True)


def start_replica(docker_runtime, url: str, **kwargs):
    replica, spec = make_spec(url, **kwargs)
    handle = docker_runtime.start(spec, docker_runtime.place(spec))
    replica.refresh_from_db()
    replica.handle = handle
    replica.save(update_fields=["handle"])
    return replica


def timed_deferral(docker_runtime, url: str, **kwargs) -> tuple[StartDeferred, float]:
    replica, spec = make_spec(url, **kwargs)
    placement = docker_runtime.place(spec)
    began = time.monotonic()
    with pytest.raises(StartDeferred) as caught:
        docker_runtime.start(spec, placement)
    replica.delete()  # as the controller does with a replica that is waiting
    return caught.value, time.monotonic() - began


@pytest.fixture
def on_d1(docker_hosts, docker_engines):
    """Builds happen on d1 only; its derived images, the control queue and the images' pending
    and failed marks start empty (an earlier test's mark for the same host id and image, its
    job emptied from the queue, would stop this test's build from being asked for)."""
    hosts.host_set_cordoned(host=docker_hosts["d2"], cordoned=True)
    client = docker_engines.client("d1")
    for image in client.images.list(name=DERIVED_REPOSITORY):
        client.images.remove(image.id, force=True)
    control_queue().empty()
    redis = control_queue().connection
    for key in [*redis.scan_iter("launch:image:pending:*"), *redis.scan_iter("launch:image:failed:*")]:
        redis.delete(key)
    yield client
    client.close()


def test_start_defers_while_a_job_builds_the_requirements_image_then_reuses_it(on_d1, runtime, bundle_url):
    if on_d1.containers.run(TEST_IMAGE, ["/launch-test/busybox", "true"], remove=True) is None:
        pytest.fail("the test image cannot run its build shell")

    deferred, seconds = timed_deferral(runtime, bundle_url, requirements=["tiny-model==1.0"])
    assert isinstance(deferred, PlacementError)  # the controller waits on it like on capacity
    assert seconds < 1.0
    assert str(deferred).startswith(f"building image {DERIVED_REPOSITORY}:")
    assert "on host d1 (requirements: tiny-model==1.0)" in str(deferred)
    # Asked again before the build ran: still waiting, and still one build.
    again, _ = timed_deferral(runtime, bundle_url, requirements=["tiny-model==1.0"])
    assert str(again) == str(deferred)
    assert image_jobs() == 1
    assert on_d1.images.list(name=DERIVED_REPOSITORY) == []

    run_control_jobs()
    first = start_replica(runtime, bundle_url, requirements=["tiny-model==1.0"])
    second = start_replica(runtime, bundle_url, requirements=["tiny-model==1.0"])
    image_of = {r.id: on_d1.containers.get(r.handle).attrs["Config"]["Image"] for r in (first, second)}
    assert image_of[first.id].startswith(f"{DERIVED_REPOSITORY}:")
    assert image_of[first.id] == image_of[second.id]
    assert image_jobs() == 0

    # Other requirements: another image, built once more.
    timed_deferral(runtime, bundle_url, requirements=["tiny-model==2.0"])
    run_control_jobs()
    other = start_replica(runtime, bundle_url, requirements=["tiny-model==2.0"])
    assert on_d1.containers.get(other.handle).attrs["Config"]["Image"] != image_of[first.id]
    assert len(on_d1.images.list(name=DERIVED_REPOSITORY)) == 2

    archive, _ = on_d1.containers.get(first.handle).get_archive(PIP_RECORD)
    with tarfile.open(fileobj=io.BytesIO(b"".join(archive))) as tar:
        recorded = tar.extractfile(Path(PIP_RECORD).name).read().decode()
    assert recorded.strip() == "-m pip install --no-cache-dir -r /tmp/launch-requirements.txt"


@pytest.fixture
def failing_pip_image(on_d1):
    """The test image with an interpreter whose `pip install -r FILE` fails the way pip does
    on a requirement it cannot find, naming it."""
    fake = (
        b"#!/launch-test/busybox sh\n"
        b'for req in $(/launch-test/busybox cat "$6"); do\n'
        b'  echo "ERROR: Could not find a version that satisfies the requirement $req" >&2\n'
        b"done\n"
        b"exit 1\n"
    )
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data, mode in (
            ("Dockerfile", f"FROM {TEST_IMAGE}\nCOPY python {PYTHON}\n".encode(), 0o644),
            ("python", fake, 0o755),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    on_d1.images.build(fileobj=context, custom_context=True, tag=FAILING_PIP_IMAGE, rm=True)
    return FAILING_PIP_IMAGE


def test_a_failed_build_is_reported_by_start_instead_of_rebuilt_until_it_is_forgotten(
    on_d1, failing_pip_image, runtime, bundle_url, settings, redis_client
):
    settings.DOCKER_WORKER_IMAGE = failing_pip_image
    requirement = "./wheels/no-such-model-0.1-py3-none-any.whl"
    deferred, seconds = timed_deferral(runtime, bundle_url, requirements=[requirement])
    assert seconds < 1.0 and "building image" in str(deferred)

    run_control_jobs()
    [job_id] = FailedJobRegistry(queue=control_queue()).get_job_ids()
    tag = str(deferred).split()[2]
    assert job_id == image_job_id(on_d1_host_id(), tag)

    replica, spec = make_spec(bundle_url, requirements=[requirement])
    placement = runtime.place(spec)
    began = time.monotonic()
    with pytest.raises(ImageBuildFailed) as caught:
        runtime.start(spec, placement)
    assert time.monotonic() - began < 1.0
    # The requirements' step failed: the bundle's doing, so the controller fails the
    # generation (UPDATE_FAILED with pip's message) rather than retrying the start.
    assert isinstance(caught.value, BundleStartFailed)
    message = str(caught.value)
    assert f"building image {tag} on host d1 for requirements ['{requirement}'] failed" in message
    assert f"Could not find a version that satisfies the requirement {requirement}" in message
    assert image_jobs((requirement,)) == 0  # no rebuild in a loop
    assert on_d1.containers.list(all=True, filters={"label": f"launch.replica={replica.id}"}) == []

    # Once the failure is forgotten (its TTL), the next start tries again.
    _, failed_key = image_keys(on_d1_host_id(), tag)
    assert 0 < redis_client.ttl(failed_key) <= 300
    redis_client.delete(failed_key)
    timed_deferral(runtime, bundle_url, requirements=[requirement])
    assert image_jobs((requirement,)) == 1


def on_d1_host_id() -> int:
    return hosts.Host.objects.get(name="d1").pk

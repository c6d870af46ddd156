"""Docker-image batch jobs on the docker runtime (the engines of tests/docker_harness.py):
a user's image and command run once over its job_config file, with status, timings, exit
status and logs kept; cancel removes a running container; the local runtime refuses them."""

from __future__ import annotations

import time

import pytest

from tests.docker_harness import PYTHON, TEST_IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("docker")]

SUM_SCRIPT = (
    "import json, sys; config = json.load(open('/launch/job.json')); "
    "print('sum is', sum(config['numbers'])); sys.exit(config.get('exit', 0))"
)


@pytest.fixture
def job_image(docker_hosts, docker_engines, settings):
    for name in docker_engines.names:
        docker_engines.client(name).images.get(TEST_IMAGE).tag("acme/job", "1")
    settings.DOCKER_RUNNABLE_IMAGE_NETWORK = "none"
    settings.LAUNCH_RUNTIME = "docker"


def wait_job(api, job_id: str, statuses: tuple[str, ...], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = api.get(f"/v1/docker-image-batch-jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job never reached {statuses}: {job}")
        time.sleep(0.2)


def job_containers(docker_engines, job_id: str) -> list:
    # sparse: no inspect of each listed container, which a container removed in between (a
    # finished job's, once its logs are kept) turned into a 404.
    return [c for name in docker_engines.names
            for c in docker_engines.client(name).containers.list(all=True, sparse=True,
                                                                 filters={"label": f"launch.owner_id={job_id}"})]


def test_a_job_runs_over_its_config_file_to_success_with_logs_and_cancel_stops_one(
    live_stack, job_image, docker_engines, owner, outsider
):
    from tests.stack import api_for

    api = api_for(live_stack, owner)
    created = api.post("/v1/docker-image-batch-job-bundles", json={
        "name": "summer", "image_repository": "acme/job", "image_tag": "1", "command": [PYTHON, "-c", SUM_SCRIPT],
        "env": {"MODE": "test"}, "mount_location": "/launch/job.json",
        "resource_requests": {"cpus": 0.5, "memory": "256Mi"},
    })
    assert created.status_code == 200, created.text
    bundle_id = created.json()["docker_image_batch_job_bundle_id"]
    latest = api.get("/v1/docker-image-batch-job-bundles/latest?bundle_name=summer").json()
    assert latest["id"] == bundle_id and latest["cpus"] == "0.5" and latest["mount_location"] == "/launch/job.json"

    job_id = api.post("/v1/docker-image-batch-jobs", json={
        "docker_image_batch_job_bundle_id": bundle_id, "job_config": {"numbers": [1, 2, 39]},
        "labels": {"team": "ml"},
    }).json()["job_id"]
    job = wait_job(api, job_id, ("SUCCESS", "FAILURE"))
    assert job["status"] == "SUCCESS", job
    assert job["started_at"] and job["completed_at"] and job["exit_code"] == 0 and job["annotations"] == {"team": "ml"}
    assert "sum is 42" in api.get(f"/v1/docker-image-batch-jobs/{job_id}/logs").text
    assert not job_containers(docker_engines, job_id)  # removed once its logs were kept
    assert api_for(live_stack, outsider).get(f"/v1/docker-image-batch-jobs/{job_id}").status_code == 404

    # A failing command is FAILURE with its exit status.
    failing = api.post("/v1/docker-image-batch-jobs", json={
        "docker_image_batch_job_bundle_name": "summer", "job_config": {"numbers": [1], "exit": 3}, "labels": {},
    }).json()["job_id"]
    failed = wait_job(api, failing, ("SUCCESS", "FAILURE"))
    assert failed["status"] == "FAILURE" and failed["exit_code"] == 3 and "status 3" in failed["status_reason"]

    # Cancel stops a running one.
    sleeper = api.post("/v1/docker-image-batch-job-bundles", json={
        "name": "sleeper", "image_repository": "acme/job", "image_tag": "1",
        "command": [PYTHON, "-c", "import time; print('sleeping', flush=True); time.sleep(300)"],
        "resource_requests": {"cpus": 0.25, "memory": "128Mi"},
    }).json()["docker_image_batch_job_bundle_id"]
    running_id = api.post("/v1/docker-image-batch-jobs", json={
        "docker_image_batch_job_bundle_id": sleeper, "labels": {},
    }).json()["job_id"]
    wait_job(api, running_id, ("RUNNING",))
    assert [c.status for c in job_containers(docker_engines, running_id)] == ["running"]
    assert api.put(f"/v1/docker-image-batch-jobs/{running_id}", json={"cancel": True}).json() == {"success": True}
    assert wait_job(api, running_id, ("CANCELLED",), timeout=5)["completed_at"]
    assert not job_containers(docker_engines, running_id)
    assert api.put(f"/v1/docker-image-batch-jobs/{running_id}", json={"cancel": True}).status_code == 409
    listed = api.get("/v1/docker-image-batch-jobs").json()["jobs"]
    assert {j["id"]: j["status"] for j in listed} == {job_id: "SUCCESS", failing: "FAILURE", running_id: "CANCELLED"}


def pending_sleeper_job(owner) -> str:
    """A PENDING job whose container sleeps 5 minutes (no controller runs here to start it)."""
    bundle = owner.client.post("/v1/docker-image-batch-job-bundles", {
        "name": "sleeper", "image_repository": "acme/job", "image_tag": "1",
        "command": [PYTHON, "-c", "import time; time.sleep(300)"],
        "resource_requests": {"cpus": 0.25, "memory": "128Mi"},
    }, format="json").json()["docker_image_batch_job_bundle_id"]
    return owner.client.post("/v1/docker-image-batch-jobs", {
        "docker_image_batch_job_bundle_id": bundle, "labels": {},
    }, format="json").json()["job_id"]


@pytest.mark.django_db(transaction=True)
def test_two_controllers_starting_one_job_at_once_start_one_container(job_image, docker_engines, owner):
    import threading

    from django.db import connection

    from batchjobs import image_jobs
    from batchjobs.models import DockerImageBatchJob

    job_id = pending_sleeper_job(owner)
    barrier = threading.Barrier(2)
    errors = []

    def controller():
        try:
            job = DockerImageBatchJob.objects.select_related("bundle", "team").get(pk=job_id)
            barrier.wait()
            image_jobs._start_once(job)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=controller) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    job = DockerImageBatchJob.objects.get(pk=job_id)
    assert job.status == "RUNNING"
    assert [c.status for c in job_containers(docker_engines, job_id)] == ["running"]
    image_jobs.image_job_cancel(job=job)
    assert not job_containers(docker_engines, job_id)


@pytest.mark.django_db(transaction=True)
def test_a_running_job_whose_host_stops_answering_waits_instead_of_failing(job_image, docker_engines, owner):
    from batchjobs import image_jobs
    from batchjobs.models import DockerImageBatchJob
    from workers.models import Host

    job_id = pending_sleeper_job(owner)
    image_jobs._start_once(DockerImageBatchJob.objects.select_related("bundle", "team").get(pk=job_id))
    job = DockerImageBatchJob.objects.get(pk=job_id)
    assert job.status == "RUNNING"
    host = image_jobs.job_replica(job).host
    Host.objects.filter(pk=host.pk).update(healthy=False)  # as after three failed probes

    image_jobs._follow(DockerImageBatchJob.objects.get(pk=job_id))
    assert DockerImageBatchJob.objects.get(pk=job_id).status == "RUNNING"
    assert [c.status for c in job_containers(docker_engines, job_id)] == ["running"]

    # Back: the running container is followed as before (once, it was taken for half a
    # runnable-image replica and removed).
    Host.objects.filter(pk=host.pk).update(healthy=True)
    image_jobs._follow(DockerImageBatchJob.objects.get(pk=job_id))
    job = DockerImageBatchJob.objects.get(pk=job_id)
    assert job.status == "RUNNING", (job.status_reason, job.logs)
    assert [c.status for c in job_containers(docker_engines, job_id)] == ["running"]
    image_jobs.image_job_cancel(job=DockerImageBatchJob.objects.get(pk=job_id))
    assert not job_containers(docker_engines, job_id)

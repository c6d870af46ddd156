"""Triggers (/v1/triggers) and docker-image batch job validation through the API: a cron
schedule fires a job once per scheduled time (the firing function is called with a given
"now", as the controller's tick calls it with the clock), also when two controllers race or
one restarts; invalid cron is 422; suspend, update, delete; another team gets 404."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection

from batchjobs.models import DockerImageBatchJob, Trigger
from batchjobs.triggers import triggers_fire

pytestmark = pytest.mark.django_db


@pytest.fixture
def bundle_id(owner, settings):
    settings.LAUNCH_RUNTIME = "docker"
    response = owner.client.post("/v1/docker-image-batch-job-bundles", {
        "name": "nightly", "image_repository": "acme/job", "image_tag": "1", "command": ["run"],
        "mount_location": "/launch/job.json",
    }, format="json")
    assert response.status_code == 200, response.content
    return response.json()["docker_image_batch_job_bundle_id"]


def make_trigger(owner, bundle_id, **fields) -> str:
    body = {"name": "every-minute", "cron_schedule": "* * * * *", "bundle_id": bundle_id,
            "default_job_config": {"day": "today"}, "default_job_metadata": {"source": "cron"}, **fields}
    response = owner.client.post("/v1/triggers", body, format="json")
    assert response.status_code == 200, response.content
    return response.json()["trigger_id"]


def test_a_trigger_fires_once_per_scheduled_time_with_its_defaults(owner, bundle_id):
    trigger_id = make_trigger(owner, bundle_id)
    first_time = Trigger.objects.get(pk=trigger_id).next_run_at
    assert triggers_fire(first_time - timedelta(seconds=1)) == []  # not due yet
    [job_id] = triggers_fire(first_time + timedelta(seconds=1))
    assert triggers_fire(first_time + timedelta(seconds=30)) == []  # the same minute: nothing more
    [second] = triggers_fire(first_time + timedelta(seconds=61))
    job = DockerImageBatchJob.objects.get(pk=job_id)
    assert (job.job_config, job.labels, job.trigger_id, job.status) == ({"day": "today"}, {"source": "cron"},
                                                                         trigger_id, "PENDING")
    listed = owner.client.get(f"/v1/docker-image-batch-jobs?trigger_id={trigger_id}").json()["jobs"]
    assert {j["id"] for j in listed} == {job_id, second}
    # A controller down for ten minutes fires the missed times once, not ten times.
    assert len(triggers_fire(first_time + timedelta(minutes=12))) == 1
    assert len(triggers_fire(first_time + timedelta(minutes=12, seconds=10))) == 0


@pytest.mark.django_db(transaction=True)
def test_two_controllers_firing_at_once_create_one_job(owner, bundle_id):
    if connection.vendor == "sqlite":
        pytest.skip("SQLite serializes writers; the race needs PostgreSQL (CI)")
    trigger_id = make_trigger(owner, bundle_id)
    due = Trigger.objects.get(pk=trigger_id).next_run_at + timedelta(seconds=1)
    results: list = []
    barrier = threading.Barrier(4)

    def fire():
        barrier.wait()
        results.extend(triggers_fire(due))
        connection.close()

    threads = [threading.Thread(target=fire) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 1 and DockerImageBatchJob.objects.filter(trigger_id=trigger_id).count() == 1


def test_a_restarted_controller_does_not_fire_a_time_again(owner, bundle_id):
    trigger_id = make_trigger(owner, bundle_id)
    due = Trigger.objects.get(pk=trigger_id).next_run_at
    stale = Trigger.objects.get(pk=trigger_id)  # what a controller read before it died
    assert len(triggers_fire(due)) == 1
    from batchjobs import triggers

    assert triggers._fire(stale, due) is None  # its compare-and-set loses
    assert DockerImageBatchJob.objects.filter(trigger_id=trigger_id).count() == 1


@pytest.mark.parametrize("schedule", ["every minute", "* * *", "61 * * * *", "* * * * * *", ""])
def test_an_invalid_cron_schedule_is_422(owner, bundle_id, schedule):
    response = owner.client.post("/v1/triggers", {"name": "t", "cron_schedule": schedule, "bundle_id": bundle_id},
                                 format="json")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "cron_schedule"]
    assert not Trigger.objects.exists()


def test_suspend_update_delete_and_other_teams(owner, outsider, bundle_id):
    trigger_id = make_trigger(owner, bundle_id)
    due = Trigger.objects.get(pk=trigger_id).next_run_at
    assert owner.client.put(f"/v1/triggers/{trigger_id}", {"suspend": True}, format="json").json() == {"success": True}
    assert triggers_fire(due + timedelta(minutes=5)) == []
    assert owner.client.put(f"/v1/triggers/{trigger_id}", {"cron_schedule": "0 3 * * *", "suspend": False},
                            format="json").status_code == 200
    got = owner.client.get(f"/v1/triggers/{trigger_id}").json()
    assert got["cron_schedule"] == "0 3 * * *" and got["suspended"] is False
    assert got["docker_image_batch_job_bundle_id"] == bundle_id and got["default_job_metadata"] == {"source": "cron"}
    assert owner.client.put(f"/v1/triggers/{trigger_id}", {"cron_schedule": "nope"}, format="json").status_code == 422
    assert outsider.client.get(f"/v1/triggers/{trigger_id}").status_code == 404
    assert outsider.client.delete(f"/v1/triggers/{trigger_id}").status_code == 404
    assert [t["id"] for t in owner.client.get("/v1/triggers").json()["triggers"]] == [trigger_id]
    assert owner.client.delete(f"/v1/triggers/{trigger_id}").json() == {"success": True}
    assert owner.client.get(f"/v1/triggers/{trigger_id}").status_code == 404


def test_docker_image_jobs_are_refused_on_the_local_runtime_and_bad_fields_named(owner, bundle_id, settings):
    bad = owner.client.post("/v1/docker-image-batch-jobs", {
        "docker_image_batch_job_bundle_id": bundle_id, "labels": {}, "resource_requests": {"memory": "lots"},
    }, format="json")
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "resource_requests.memory"]
    settings.LAUNCH_RUNTIME = "local"
    response = owner.client.post("/v1/docker-image-batch-jobs", {
        "docker_image_batch_job_bundle_id": bundle_id, "labels": {},
    }, format="json")
    assert response.status_code == 422 and "docker runtime" in response.content.decode()
    assert not DockerImageBatchJob.objects.exists()

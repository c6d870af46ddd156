"""Batch jobs run by real replica processes, real Redis and real HTTP, as a user drives them."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.stack import api_for, kill_all_replicas

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent


# --- bundles (closures, so cloudpickle takes them by value) ----------------------------------


def doubler_bundle(fail_on: int | None = None, sleep: float = 0.0):
    def load_predict_fn(model):
        def predict(x, label=""):
            import time as _time

            if sleep:
                _time.sleep(sleep)
            if x == fail_on:
                raise ValueError(f"cannot handle {x}")
            return {"double": x * model, "label": label}

        return predict

    return {"model": 2, "load_predict_fn": load_predict_fn}


def identity_bundle():
    def load_predict_fn(model):
        def predict(**kwargs):
            return kwargs

        return predict

    return {"model": None, "load_predict_fn": load_predict_fn}


def broken_bundle():
    def load_model():
        raise RuntimeError("weights file is corrupt")

    def load_predict_fn(model):
        return lambda **kwargs: None

    return {"load_model_fn": load_model, "load_predict_fn": load_predict_fn}


# --- helpers --------------------------------------------------------------------------------


def legacy_csv(args_rows: list[dict]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["id", "args"], quotechar="'")
    writer.writeheader()
    for index, args in enumerate(args_rows):
        writer.writerow({"id": index, "args": json.dumps(args)})
    return out.getvalue().encode()


def upload_input(api, content: bytes) -> str:
    """The client's flow: a signed PUT URL, then the raw bytes."""
    target = api.post("/v1/hosted_inference/batch_task_input_upload", json={})
    assert target.status_code == 200, target.text
    target = target.json()
    put = requests.put(target["signedUrl"], data=content, timeout=30)
    assert put.status_code < 300, put.text
    return f"s3://{target['bucket']}/{target['key']}"


def create_job(api, bundle_id: str, input_path: str, **fields) -> str:
    body = {
        "model_bundle_id": bundle_id,
        "input_path": input_path,
        "serialization_format": "JSON",
        "labels": {},
        "resource_requests": {"max_workers": 2},
        **fields,
    }
    response = api.post("/v1/batch-jobs", json=body)
    assert response.status_code == 200, response.text
    return response.json()["job_id"]


def upload_job(api, bundle_id: str, content: bytes, **fields) -> str:
    data = {"model_bundle_id": bundle_id, "serialization_format": "JSON", **fields}
    response = api.post("/v1/batch-jobs/upload", files={"file": ("inputs.jsonl", content)}, data=data)
    assert response.status_code == 200, response.text
    return response.json()["job_id"]


def wait_job(
    api,
    job_id: str,
    statuses=("SUCCESS", "FAILURE", "CANCELLED", "TIMEOUT"),
    timeout: float = 60,
    seen: list | None = None,
) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = api.get(f"/v1/batch-jobs/{job_id}").json()
        if seen is not None:
            seen.append(job)
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"batch job never reached {statuses}: {job}")
        time.sleep(0.05)


def live_replicas(job_id: str) -> int:
    from workers.models import LIVE_STATES, Replica

    return Replica.objects.filter(owner_kind="batch_job", owner_id=job_id, state__in=LIVE_STATES).count()


def wait_no_replicas(job_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while live_replicas(job_id):
        assert time.monotonic() < deadline, "replicas were not stopped"
        time.sleep(0.1)


def download(api, job: dict) -> bytes:
    response = api.get(job["result"].replace(api.base, ""))
    assert response.status_code == 200, response.text
    return response.content


# --- tests ----------------------------------------------------------------------------------


def test_client_csv_job_results_match_the_inputs_in_order(live_stack, owner):
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(doubler_bundle(), "doubler")
    rows = [{"x": i, "label": f"it's, row {i}"} for i in range(37)]
    job_id = create_job(api, bundle_id, upload_input(api, legacy_csv(rows)))

    job = wait_job(api, job_id)
    assert job["status"] == "SUCCESS", job
    assert (job["num_tasks_completed"], job["num_tasks_pending"], job["num_tasks_failed"]) == (37, 0, 0)
    assert job["started_at"] and job["finished_at"]
    results = json.loads(download(api, job))
    assert results == [{"id": str(i), "result": {"double": 2 * i, "label": f"it's, row {i}"}} for i in range(37)]
    wait_no_replicas(job_id)
    # Metadata stays after the replicas are gone.
    assert api.get(f"/v1/batch-jobs/{job_id}").json()["status"] == "SUCCESS"


def test_json_lines_job_keeps_going_past_a_failing_item(live_stack, owner):
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(doubler_bundle(fail_on=3), "picky")
    lines = b"".join(json.dumps({"args": {"x": i}}).encode() + b"\n" for i in range(8))
    job = wait_job(api, upload_job(api, bundle_id, lines))
    assert job["status"] == "SUCCESS", job
    assert (job["num_tasks_completed"], job["num_tasks_failed"]) == (8, 1)
    # SUCCESS ran to the end; the reason and the listed failures say not every item did.
    assert job["status_reason"].startswith("1 of 8 items failed")
    [failed] = job["failed_items"]
    assert failed["id"] == 4 and "ValueError: cannot handle 3" in failed["error"]
    results = json.loads(download(api, job))
    assert [entry["id"] for entry in results] == list(range(1, 9))  # line numbers
    assert "ValueError: cannot handle 3" in results[3]["error"]
    assert "result" not in results[3]
    assert [entry["result"]["double"] for i, entry in enumerate(results) if i != 3] == [0, 2, 4, 8, 10, 12, 14]


def test_pickle_job_gives_back_a_pickled_list(live_stack, owner):
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(doubler_bundle(fail_on=1), "doubler")
    lines = b"".join(json.dumps({"id": f"k{i}", "args": {"x": i}}).encode() + b"\n" for i in range(3))
    job = wait_job(api, upload_job(api, bundle_id, lines, serialization_format="PICKLE"))
    assert job["status"] == "SUCCESS", job
    results = pickle.loads(download(api, job))
    assert results[0] == {"id": "k0", "result": {"double": 0, "label": ""}}
    assert "ValueError: cannot handle 1" in results[1]["error"]
    assert results[2] == {"id": "k2", "result": {"double": 4, "label": ""}}


def test_progress_is_visible_while_the_job_runs(live_stack, owner):
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(doubler_bundle(sleep=0.05), "slow")
    lines = b"".join(json.dumps({"args": {"x": i}}).encode() + b"\n" for i in range(60))
    seen: list[dict] = []
    job = wait_job(api, upload_job(api, bundle_id, lines, max_workers=1), seen=seen)
    assert job["status"] == "SUCCESS"
    partial = [s for s in seen if s["status"] == "RUNNING" and 0 < s["num_tasks_completed"] < 60]
    assert partial, "never saw a running job part-way through"
    assert all(s["num_tasks_pending"] == 60 - s["num_tasks_completed"] for s in partial)


def test_cancel_stops_the_replicas_and_the_job_stays_cancelled(live_stack, owner):
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(doubler_bundle(sleep=0.2), "slow")
    lines = b"".join(json.dumps({"args": {"x": i}}).encode() + b"\n" for i in range(200))
    job_id = upload_job(api, bundle_id, lines, max_workers=2)
    wait_job(api, job_id, statuses=("RUNNING",))
    deadline = time.monotonic() + 30
    while api.get(f"/v1/batch-jobs/{job_id}").json()["num_tasks_completed"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    response = api.put(f"/v1/batch-jobs/{job_id}", json={"cancel": True})
    assert response.status_code == 200 and response.json() == {"success": True}
    wait_no_replicas(job_id)
    job = api.get(f"/v1/batch-jobs/{job_id}").json()
    assert job["status"] == "CANCELLED"
    assert job["num_tasks_completed"] < 200
    # What finished before the cancel is downloadable, in input order.
    results = json.loads(download(api, job))
    assert len(results) == job["num_tasks_completed"] > 0
    assert results == [{"id": i + 1, "result": {"double": 2 * i, "label": ""}} for i in range(len(results))]
    again = api.put(f"/v1/batch-jobs/{job_id}", json={"cancel": True})
    assert again.status_code == 409


def test_job_over_its_timeout_ends_timeout_with_replicas_stopped(live_stack, owner):
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(doubler_bundle(sleep=0.5), "slow")
    lines = b"".join(json.dumps({"args": {"x": i}}).encode() + b"\n" for i in range(100))
    job = wait_job(api, upload_job(api, bundle_id, lines, timeout_seconds=3))
    assert job["status"] == "TIMEOUT", job
    assert "timeout_seconds" in job["status_reason"]
    wait_no_replicas(job["job_id"])
    job = api.get(f"/v1/batch-jobs/{job['job_id']}").json()
    if job["num_tasks_completed"]:  # the items done before the timeout are kept
        assert len(json.loads(download(api, job))) == job["num_tasks_completed"]
    else:
        assert job["result"] is None


def test_bundle_that_cannot_load_fails_the_job_with_the_load_error(live_stack, owner):
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(broken_bundle(), "broken")
    job = wait_job(api, upload_job(api, bundle_id, b'{"args": {"x": 1}}\n'))
    assert job["status"] == "FAILURE"
    assert "weights file is corrupt" in job["status_reason"]
    assert job["result"] is None


def test_input_bad_past_its_first_line_fails_the_job_naming_the_line(live_stack, owner):
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(doubler_bundle(), "doubler")
    content = b'{"args": {"x": 1}}\n{"args": {"x": 2}}\n{"args": oops}\n'
    job = wait_job(api, upload_job(api, bundle_id, content))
    assert job["status"] == "FAILURE"
    assert "input_path: line 3: not valid JSON" in job["status_reason"]


def test_100k_inputs_are_streamed_in_small_chunks(live_stack, owner, redis_client):
    from batchjobs.models import BatchJob

    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(identity_bundle(), "identity")
    content = legacy_csv([{"i": i} for i in range(100_000)])
    job_id = create_job(api, bundle_id, upload_input(api, content), resource_requests={"max_workers": 4})
    prefix = f"launch:job:{job_id}:".encode()
    largest = 0
    deadline = time.monotonic() + 180
    while api.get(f"/v1/batch-jobs/{job_id}").json()["status"] in ("PENDING", "RUNNING"):
        assert time.monotonic() < deadline
        for key in redis_client.scan_iter(match=prefix + b"task:*", count=1000):
            largest = max(largest, redis_client.hstrlen(key, "payload"), redis_client.hstrlen(key, "result"))
        time.sleep(0.05)
    job = BatchJob.objects.get(pk=job_id)
    assert job.status == "SUCCESS", job.status_reason
    assert job.items_completed == 100_000
    assert 100 <= job.chunks_collected <= 400
    assert 0 < largest < len(content) / 50  # no value holds more than a chunk's share
    results = json.loads(download(api, api.get(f"/v1/batch-jobs/{job_id}").json()))
    assert len(results) == 100_000
    assert results[0] == {"id": "0", "result": {"i": 0}} and results[-1] == {"id": "99999", "result": {"i": 99999}}


# --- resume after a controller kill -------------------------------------------------------------


def database_url() -> str:
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


class ControllerProcess:
    """`manage.py controller` against the test database: the real thing, killable."""

    def __init__(self, live_server_url: str):
        from django.conf import settings

        self.env = dict(
            os.environ,
            DATABASE_URL=database_url(),
            SECRET_KEY=settings.SECRET_KEY,
            LAUNCH_HOME=str(settings.LAUNCH_HOME),
            BUNDLE_STORE_DIR=str(settings.BUNDLE_STORE_DIR),
            LAUNCH_INTERNAL_URL=live_server_url,
            REDIS_URL=settings.REDIS_URL,
            TICK_SECONDS="0.2",
            ALLOWED_HOSTS="127.0.0.1",
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> ControllerProcess:
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "controller"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    def kill(self) -> None:
        # SIGKILL: no cleanup of any kind. Replicas live in their own sessions and survive.
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture
def controller_subprocess(transactional_db, live_server, settings):
    settings.LAUNCH_INTERNAL_URL = live_server.url
    started: list[ControllerProcess] = []

    def start() -> ControllerProcess:
        controller = ControllerProcess(live_server.url).start()
        started.append(controller)
        return controller

    yield live_server.url, start
    for controller in started:
        if controller.process.poll() is None:
            controller.kill()
    kill_all_replicas()


def test_controller_killed_mid_job_resumes_with_no_item_lost_or_written_twice(controller_subprocess, owner):
    from batchjobs.models import BatchJob
    from batchjobs.runner import results_path

    base, start_controller = controller_subprocess
    api = api_for(base, owner)
    bundle_id = api.upload_bundle(doubler_bundle(sleep=0.02), "slow")
    total = 300
    lines = b"".join(json.dumps({"args": {"x": i}}).encode() + b"\n" for i in range(total))
    first = start_controller()
    job_id = upload_job(api, bundle_id, lines, max_workers=2)

    deadline = time.monotonic() + 60
    while True:
        job = BatchJob.objects.get(pk=job_id)
        if job.items_completed >= total // 4:
            break
        assert job.status in ("PENDING", "RUNNING") and time.monotonic() < deadline, job.status_reason
        time.sleep(0.02)
    first.kill()
    killed_at = BatchJob.objects.get(pk=job_id)
    assert killed_at.status == "RUNNING" and killed_at.items_completed < total
    # The worst moment to die: a chunk appended to the file but not yet counted in the row.
    with open(results_path(job_id), "ab") as file:
        file.write(b',\n{"id": "written but never recorded"}')

    start_controller()
    job = wait_job(api, job_id, timeout=90)
    assert job["status"] == "SUCCESS", job
    results = json.loads(download(api, job))
    assert [entry["id"] for entry in results] == list(range(1, total + 1))
    assert [entry["result"]["double"] for entry in results] == [2 * i for i in range(total)]
    assert job["num_tasks_completed"] == total

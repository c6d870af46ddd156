"""Waiting is cheap: sync requests waiting for their replica hold no web thread, so many slow
ones at once all get their answer (the ASGI entry point that `launch up` serves).

The predict is a barrier: each call waits until CONCURRENT calls have started. Under a server
that held a thread per waiting request (the WSGI setup had 32), fewer tasks than that would
ever reach the replica and every predict would give up: the test fails on behaviour (answers
that are not 200), not on a timing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.stack import api_for

CONCURRENT = 200
BARRIER_GIVE_UP_SECONDS = 90


def barrier_bundle(directory: str, parties: int):
    def load_predict_fn(model):
        import os
        import time
        import uuid

        def predict(**kwargs):
            open(os.path.join(directory, uuid.uuid4().hex), "w").close()
            deadline = time.monotonic() + BARRIER_GIVE_UP_SECONDS
            while len(os.listdir(directory)) < parties:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(os.listdir(directory))} of {parties} requests reached the replica")
                time.sleep(0.1)
            return kwargs

        return predict

    return {"model": None, "load_predict_fn": load_predict_fn}


@pytest.fixture
def barrier_dir():
    # The replica may run under a uid of its own: a directory it can enter and write.
    path = tempfile.mkdtemp(prefix="launch-barrier-")
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_two_hundred_slow_sync_requests_at_once_all_answer(live_stack, asgi_server, owner, barrier_dir):
    setup = api_for(live_stack, owner)
    bundle_id = setup.upload_bundle(barrier_bundle(barrier_dir, CONCURRENT), "barrier")
    endpoint_id = setup.create_endpoint(bundle_id, "barrier", concurrent_requests_per_worker=CONCURRENT,
                                   memory="4Gi")  # each of its CONCURRENT threads maps a stack
    setup.wait_endpoint(endpoint_id, "READY", available_workers=1, timeout=90)

    def one(i: int) -> tuple[int, str]:
        # A connection each: the point is CONCURRENT requests in flight at the server.
        response = requests.post(
            f"{asgi_server}/v1/sync-tasks?model_endpoint_id={endpoint_id}", json={"args": {"i": i}},
            auth=(owner.key, ""), timeout=BARRIER_GIVE_UP_SECONDS + 60,
        )
        return response.status_code, response.text

    with ThreadPoolExecutor(CONCURRENT) as pool:
        answers = list(pool.map(one, range(CONCURRENT)))
    failed = [answer for answer in answers if answer[0] != 200]
    logs = setup.get("/v1/hosted_inference/endpoints/creation_logs/barrier").text
    assert not failed, f"{len(failed)} of {CONCURRENT} failed, e.g. {failed[:2]}; replica: {logs[-1500:]}"
    results = [json.loads(json.loads(text)["result"]["result"])["i"] for _, text in answers]
    assert sorted(results) == list(range(CONCURRENT))
    assert len(os.listdir(barrier_dir)) == CONCURRENT  # each predict ran once

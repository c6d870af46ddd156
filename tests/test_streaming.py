"""Streaming endpoints, end to end: real replicas, real HTTP, server-sent events read the way
the current public client reads them, and generator predicts for sync requests too.

The current client (launch-python-client, 0.4.x) is not on PyPI and its code is not ours to
commit, so `EndpointResponseStream` below is our own reader that does what its reader does:
sseclient over the raw response, and from each event's JSON the status, result.result and
traceback."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import sseclient

from tests.stack import api_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.xdist_group("streaming")]


class EndpointResponseStream:
    """Reads a stream as the current client's reader of the same name does (see above)."""

    def __init__(self, response):
        self.events = sseclient.SSEClient(response).events()

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        event = self.events.__next__()
        data = json.loads(event.data)
        result = data.get("result", {}) or {}
        return {"status": data["status"], "result": result.get("result", None), "traceback": data.get("traceback")}


def stream_bundle():
    def load_predict_fn(model):
        def predict(mode, n=3, gate="", marker=""):
            if mode == "plain":
                return mode  # not a generator: one item
            return items(mode, n, gate, marker)

        def items(mode, n, gate, marker):
            import os
            import time as _time

            if mode == "count":
                for i in range(n):
                    yield {"i": i}
            elif mode == "gated":
                yield "first"
                deadline = _time.monotonic() + 60
                while not os.path.exists(gate):  # the client has the first event before this ends
                    if _time.monotonic() > deadline:
                        raise TimeoutError("the first event never reached the client")
                    _time.sleep(0.01)
                yield "second"
            elif mode == "fails":
                yield 1
                raise ValueError("broke after one item")
            elif mode == "endless":
                try:
                    i = 0
                    while True:
                        yield i
                        i += 1
                        _time.sleep(0.02)
                finally:
                    with open(marker, "w") as f:
                        f.write("closed")

        return predict

    return {"model": None, "load_predict_fn": load_predict_fn}


def open_stream(api, endpoint_id: str, args: dict) -> requests.Response:
    """What the current client's `_streaming_request` sends."""
    response = requests.post(
        f"{api.base}/v1/streaming-tasks?model_endpoint_id={endpoint_id}", json={"args": args, "return_pickled": False},
        auth=(api.key, ""), stream=True, timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return response


@pytest.fixture
def shared_dir():
    """A directory the replica can use too: it may run under a uid of its own (the local
    runtime's containment), which cannot enter pytest's tmp_path."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="launch-stream-test-")
    os.chmod(path, 0o777)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def streaming(live_stack, owner):
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(stream_bundle(), "streamer")
    endpoint_id = api.create_endpoint(bundle_id, "streamer", endpoint_type="streaming",
                                      concurrent_requests_per_worker=8)
    endpoint = api.wait_endpoint(endpoint_id, "READY", available_workers=1, timeout=60)
    assert endpoint["deployment_state"]["concurrent_requests_per_worker"] == 8
    return api, endpoint_id


def test_stream_sends_each_item_as_it_is_produced(streaming, shared_dir):
    api, endpoint_id = streaming
    gate = shared_dir / "gate"
    events = EndpointResponseStream(open_stream(api, endpoint_id, {"mode": "gated", "gate": str(gate)}))
    first = next(events)
    assert first == {"status": "SUCCESS", "result": json.dumps("first"), "traceback": None}
    gate.touch()  # the predict is still running: it waits for this
    assert [e["result"] for e in events] == [json.dumps("second")]


def test_error_mid_stream_ends_with_a_failure_event_carrying_the_traceback(streaming):
    api, endpoint_id = streaming
    events = list(EndpointResponseStream(open_stream(api, endpoint_id, {"mode": "fails"})))
    assert [e["status"] for e in events] == ["SUCCESS", "FAILURE"]
    assert events[0]["result"] == "1"
    assert "ValueError: broke after one item" in events[1]["traceback"]


def test_eight_concurrent_streams_all_complete_in_order(streaming):
    api, endpoint_id = streaming

    def run(_):
        events = list(EndpointResponseStream(open_stream(api, endpoint_id, {"mode": "count", "n": 40})))
        return [json.loads(e["result"])["i"] for e in events if e["status"] == "SUCCESS"], events[-1]["status"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, range(8)))
    for items, last in results:
        assert (items, last) == (list(range(40)), "SUCCESS")


def assert_leaving_stops_the_predict(api, endpoint_id: str, shared_dir) -> None:
    """A client that reads three items of an endless stream and leaves: the predict's
    generator is closed on the replica (it writes the marker in its `finally`)."""
    marker = shared_dir / "closed"
    response = open_stream(api, endpoint_id, {"mode": "endless", "marker": str(marker)})
    events = EndpointResponseStream(response)
    assert [next(events)["result"] for _ in range(3)] == ["0", "1", "2"]
    response.close()
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline, "the replica kept running the predict after the client left"
        time.sleep(0.05)
    assert marker.read_text() == "closed"


def test_client_that_disconnects_stops_the_predict_on_the_replica(streaming, shared_dir):
    api, endpoint_id = streaming
    assert_leaving_stops_the_predict(api, endpoint_id, shared_dir)


def test_non_generator_predict_streams_one_item(streaming):
    api, endpoint_id = streaming
    events = list(EndpointResponseStream(open_stream(api, endpoint_id, {"mode": "plain"})))
    assert events == [{"status": "SUCCESS", "result": json.dumps("plain"), "traceback": None}]


def test_sync_and_async_requests_to_a_generator_get_the_collected_list(live_stack, owner):
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(stream_bundle(), "collector")
    sync_id = api.create_endpoint(bundle_id, "collector-sync")
    async_id = api.create_endpoint(bundle_id, "collector-async", endpoint_type="async")
    api.wait_endpoint(sync_id, "READY", available_workers=1, timeout=60)
    answer = api.post(f"/v1/sync-tasks?model_endpoint_id={sync_id}", json={"args": {"mode": "count", "n": 3}})
    assert answer.status_code == 200, answer.text
    assert json.loads(answer.json()["result"]["result"]) == [{"i": 0}, {"i": 1}, {"i": 2}]
    task = api.post(f"/v1/async-tasks?model_endpoint_id={async_id}", json={"args": {"mode": "count", "n": 2}})
    done = api.wait_task(task.json()["task_id"], timeout=60)
    assert json.loads(done["result"]["result"]) == [{"i": 0}, {"i": 1}]


def test_streaming_route_refuses_other_endpoints_and_pickled_results(live_stack, owner):
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(stream_bundle(), "not-streaming")
    endpoint_id = api.create_endpoint(bundle_id, "not-streaming", endpoint_type="async", min_workers=0)
    refused = api.post(f"/v1/streaming-tasks?model_endpoint_id={endpoint_id}", json={"args": {"mode": "x"}})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"][-1] == "model_endpoint_id"


def test_under_the_asgi_server_items_arrive_as_produced_and_a_gone_client_stops_the_predict(
    streaming, asgi_server, owner, shared_dir
):
    """What `launch up` serves (uvicorn, ASGI): the stream is an async iterator there."""
    _, endpoint_id = streaming
    api = api_for(asgi_server, owner)
    gate = shared_dir / "gate"
    events = EndpointResponseStream(open_stream(api, endpoint_id, {"mode": "gated", "gate": str(gate)}))
    assert next(events)["result"] == json.dumps("first")
    gate.touch()
    assert [e["result"] for e in events] == [json.dumps("second")]

    assert_leaving_stops_the_predict(api, endpoint_id, shared_dir)

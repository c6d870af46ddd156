"""The public scale-launch 0.3.3 client, unchanged, against a live server with real replicas.

Each test runs one of the client's documented flows as a script in the client's own venv
(tests/client_venv.py: cloudpickle 2.x), pointed at the live server with a real API key; the
script prints what the client returned as JSON and the test asserts on it. Replicas run this
server's Python with cloudpickle 3.x, so every flow here also checks that bundles pickled by
the client's cloudpickle 2.x load and run on them.
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest

from tests.client_venv import run_client_script

pytestmark = [
    pytest.mark.client,
    pytest.mark.xdist_group("client"),
    pytest.mark.django_db(transaction=True),
]

PRELUDE = r"""
import json, os, sys, time

import cloudpickle
import requests
from launch import EndpointRequest, LaunchClient

KEY = os.environ["LAUNCH_KEY"]
client = LaunchClient(api_key=KEY, endpoint=os.environ["LAUNCH_URL"] + "/v1/hosted_inference")
ENV_PARAMS = {"framework_type": "pytorch", "pytorch_image_tag": "1.10.0-cuda11.3-cudnn8-runtime"}
SMALL = {"cpus": 1, "memory": "1Gi", "per_worker": 1}
out = {}


def wait_ready(name, timeout=90):
    deadline = time.time() + timeout
    while True:
        endpoint = client.get_model_endpoint(name)
        if endpoint is not None and endpoint.status() == "READY":
            return endpoint
        if endpoint is not None and endpoint.status() == "UPDATE_FAILED":
            raise SystemExit("endpoint failed:\n" + client.read_endpoint_creation_logs(name))
        if time.time() > deadline:
            raise SystemExit(f"{name} never became READY: {endpoint!r}")
        time.sleep(0.5)


def unpickle(result_url):
    # result_url is served by the Launch server to the key that owns the task.
    response = requests.get(result_url, auth=(KEY, ""), timeout=30)
    response.raise_for_status()
    return cloudpickle.loads(response.content)


def response_dict(response):
    return {"status": response.status, "result": response.result, "result_url": response.result_url,
            "traceback": response.traceback}
"""

EPILOGUE = "\nprint(json.dumps(out))\n"


@pytest.fixture
def run_flow(live_stack, owner):
    def run(script: str, **env: str) -> dict:
        return run_client_script(
            PRELUDE + script + EPILOGUE, env={"LAUNCH_URL": live_stack, "LAUNCH_KEY": owner.key, **env}
        )

    return run


@pytest.fixture
def file_server(tmp_path):
    """A small HTTP server for `predict(url=...)` inputs: files of tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


SYNC_FLOWS = r"""
def load_predict_doubler(model):
    def predict(x):
        return {"doubled": x * model["scale"]}
    return predict


def load_greeter():
    return {"greeting": "hello "}


def load_predict_greeter(model):
    def predict(data):
        text = data.decode() if isinstance(data, bytes) else data
        return model["greeting"] + text
    return predict


def load_adder(app_config):
    return {"offset": app_config["offset"]}


def load_predict_adder(app_config, model):
    def predict(x):
        return x + model["offset"] + app_config["extra"]
    return predict


doubler = client.create_model_bundle(
    "doubler", ENV_PARAMS, model={"scale": 2}, load_predict_fn=load_predict_doubler, requirements=[])
client.create_model_bundle(
    "greeter", ENV_PARAMS, load_model_fn=load_greeter, load_predict_fn=load_predict_greeter, requirements=[])
client.create_model_bundle(
    "adder", ENV_PARAMS, load_model_fn=load_adder, load_predict_fn=load_predict_adder,
    app_config={"offset": 10, "extra": 1}, requirements=[])

for name, bundle in (("doubler-sync", doubler), ("greeter-sync", "greeter"), ("adder-sync", "adder")):
    client.create_model_endpoint(name, bundle, endpoint_type="sync", **SMALL)
endpoints = {name: wait_ready(name) for name in ("doubler-sync", "greeter-sync", "adder-sync")}

pickled = endpoints["doubler-sync"].predict(EndpointRequest(args={"x": 21}))
out["pickled"] = response_dict(pickled)
out["pickled_value"] = unpickle(pickled.result_url)
out["plain"] = response_dict(endpoints["doubler-sync"].predict(EndpointRequest(args={"x": 4}, return_pickled=False)))
out["greet_args"] = response_dict(
    endpoints["greeter-sync"].predict(EndpointRequest(args={"data": "args"}, return_pickled=False)))
out["greet_url"] = response_dict(
    endpoints["greeter-sync"].predict(EndpointRequest(url=os.environ["INPUT_URL"], return_pickled=False)))
out["adder"] = response_dict(endpoints["adder-sync"].predict(EndpointRequest(args={"x": 5}, return_pickled=False)))
out["sync_repr_type"] = type(endpoints["adder-sync"]).__name__
"""


def test_cloudpickle_bundles_serve_sync_predictions_with_args_and_url(run_flow, file_server):
    root, base_url = file_server
    (root / "input.txt").write_text("from a url")
    out = run_flow(SYNC_FLOWS, INPUT_URL=f"{base_url}/input.txt")

    assert out["pickled"]["status"] == "SUCCESS"
    assert "/v1/task-results/" in out["pickled"]["result_url"]
    assert out["pickled_value"] == {"doubled": 42}
    assert out["plain"] == {"status": "SUCCESS", "result": '{"doubled":8}', "result_url": None, "traceback": None}
    assert out["greet_args"]["result"] == '"hello args"'
    assert out["greet_url"]["result"] == '"hello from a url"'
    assert out["adder"]["result"] == "16"
    assert out["sync_repr_type"] == "SyncEndpoint"


ASYNC_FLOW = r"""
def load_predict_square(model):
    def predict(x):
        if x < 0:
            raise ValueError(f"negative input {x}")
        return x * x
    return predict


client.create_model_bundle("square", ENV_PARAMS, model={}, load_predict_fn=load_predict_square, requirements=[])
endpoint = client.create_model_endpoint(
    "square-async", "square", endpoint_type="async", min_workers=0, max_workers=1, **SMALL)
out["created_type"] = type(endpoint).__name__
wait_ready("square-async")
plain = endpoint.predict(EndpointRequest(args={"x": 7}, return_pickled=False))
pickled = endpoint.predict(EndpointRequest(args={"x": 3}))
failing = endpoint.predict(EndpointRequest(args={"x": -1}, return_pickled=False))
out["plain"] = response_dict(plain.get())
pickled_response = pickled.get()
out["pickled"] = response_dict(pickled_response)
out["pickled_value"] = unpickle(pickled_response.result_url)
out["failing"] = response_dict(failing.get())
out["task_id_is_text"] = isinstance(plain.async_task_id, str)
out["by_id"] = client.get_async_response(plain.async_task_id)
"""


def test_async_endpoint_predict_then_get_returns_results_and_tracebacks(run_flow):
    out = run_flow(ASYNC_FLOW)
    assert out["created_type"] == "AsyncEndpoint"
    assert out["task_id_is_text"]
    assert out["plain"] == {"status": "SUCCESS", "result": "49", "result_url": None, "traceback": None}
    assert out["pickled"]["status"] == "SUCCESS"
    assert out["pickled_value"] == 9
    assert out["failing"]["status"] == "FAILURE"
    assert "ValueError: negative input -1" in out["failing"]["traceback"]
    # get_async_response: GET task/result/{id}, the task by its id alone
    assert out["by_id"]["state"] == "SUCCESS" and out["by_id"]["result"] == "49"


ZIP_FLOW = r"""
os.makedirs("my_module", exist_ok=True)
with open("my_module/__init__.py", "w") as f:
    f.write("")
with open("my_module/inference.py", "w") as f:
    f.write(
        "from my_module.words import PREFIX\n"
        "def load_model():\n"
        "    return {'prefix': PREFIX}\n"
        "def load_predict_fn(model):\n"
        "    def predict(word):\n"
        "        return model['prefix'] + word.upper()\n"
        "    return predict\n"
    )
with open("my_module/words.py", "w") as f:
    f.write("PREFIX = 'zip:'\n")
with open("requirements.txt", "w") as f:
    f.write("")

client.create_model_bundle_from_dirs(
    model_bundle_name="zipped",
    base_paths=["my_module"],
    requirements_path="requirements.txt",
    env_params=ENV_PARAMS,
    load_predict_fn_module_path="my_module.inference.load_predict_fn",
    load_model_fn_module_path="my_module.inference.load_model",
)
bundle = client.get_model_bundle("zipped")
out["bundle"] = {"name": bundle.name, "packaging_type": bundle.packaging_type}
endpoint = client.create_model_endpoint("zipped-sync", "zipped", endpoint_type="sync", **SMALL)
wait_ready("zipped-sync")
out["predict"] = response_dict(endpoint.predict(EndpointRequest(args={"word": "abc"}, return_pickled=False)))
"""


def test_zip_bundle_from_dirs_serves_its_module_functions(run_flow):
    out = run_flow(ZIP_FLOW)
    assert out["bundle"] == {"name": "zipped", "packaging_type": "zip"}
    assert out["predict"] == {"status": "SUCCESS", "result": '"zip:ABC"', "result_url": None, "traceback": None}


MANAGE_FLOW = r"""
def load_predict_first(model):
    return lambda x: f"first {x}"


def load_predict_second(model):
    return lambda x: f"second {x}"


client.create_model_bundle("first", ENV_PARAMS, model={}, load_predict_fn=load_predict_first, requirements=[])
client.create_model_bundle("second", ENV_PARAMS, model={}, load_predict_fn=load_predict_second, requirements=[])
client.create_model_bundle("spare", ENV_PARAMS, model={}, load_predict_fn=load_predict_first, requirements=[])
out["bundles"] = sorted(b.name for b in client.list_model_bundles())
spare = client.get_model_bundle("spare")
out["spare"] = {"name": spare.name, "packaging_type": spare.packaging_type, "has_id": bool(spare.bundle_id),
                "requirements": spare.requirements}
out["deleted_bundle"] = client.delete_model_bundle("spare")
out["bundles_after_delete"] = sorted(b.name for b in client.list_model_bundles())

client.create_model_endpoint("managed", "first", endpoint_type="sync", labels={"team": "ml"}, **SMALL)
endpoint = wait_ready("managed")
out["first"] = endpoint.predict(EndpointRequest(args={"x": 1}, return_pickled=False)).result

client.edit_model_endpoint(model_endpoint="managed", model_bundle="second", max_workers=2)
deadline = time.time() + 90
while True:
    answer = endpoint.predict(EndpointRequest(args={"x": 2}, return_pickled=False)).result
    if answer == json.dumps("second 2"):
        break
    if time.time() > deadline:
        raise SystemExit(f"edit never rolled over: {answer}")
    time.sleep(0.5)
out["after_edit"] = answer

fetched = client.get_model_endpoint("managed")
model_endpoint = fetched.model_endpoint
out["fetched"] = {
    "type": type(fetched).__name__,
    "name": model_endpoint.name,
    "bundle_name": model_endpoint.bundle_name,
    "endpoint_type": model_endpoint.endpoint_type,
    "max_workers": fetched.worker_settings()["max_workers"],
    "min_workers": model_endpoint.worker_settings["min_workers"],
    "memory": model_endpoint.resource_settings["memory"],
}
out["listed"] = sorted(e.model_endpoint.name for e in client.list_model_endpoints())
out["logs"] = client.read_endpoint_creation_logs("managed")
out["deleted"] = client.delete_model_endpoint("managed")
deadline = time.time() + 60
while client.get_model_endpoint("managed") is not None:
    if time.time() > deadline:
        raise SystemExit("endpoint was never removed")
    time.sleep(0.5)
out["listed_after_delete"] = [e.model_endpoint.name for e in client.list_model_endpoints()]
out["missing_is_none"] = client.get_model_endpoint("never-existed") is None
"""


def test_edit_list_get_delete_and_creation_logs(run_flow):
    out = run_flow(MANAGE_FLOW)
    assert out["bundles"] == ["first", "second", "spare"]
    assert out["spare"] == {"name": "spare", "packaging_type": "cloudpickle", "has_id": True, "requirements": []}
    assert out["deleted_bundle"] is True
    assert out["bundles_after_delete"] == ["first", "second"]
    assert out["first"] == '"first 1"'
    assert out["after_edit"] == '"second 2"'
    assert out["fetched"] == {
        "type": "SyncEndpoint",
        "name": "managed",
        "bundle_name": "second",
        "endpoint_type": "sync",
        "max_workers": 2,
        "min_workers": 1,
        "memory": "1Gi",
    }
    assert out["listed"] == ["managed"]
    assert "--- replica " in out["logs"]
    assert out["deleted"] is True
    assert out["listed_after_delete"] == []
    assert out["missing_is_none"] is True


BATCH_FLOW = r"""
def load_predict_batch(model):
    def predict(x):
        # args call predict(x=...); a url input arrives as the bytes at that url.
        return len(x) if isinstance(x, bytes) else x * 10
    return predict


client.create_model_bundle("batcher", ENV_PARAMS, model={}, load_predict_fn=load_predict_batch, requirements=[])


def wait_job(job_id, timeout=120):
    deadline = time.time() + timeout
    while True:
        job = client.get_batch_async_response(job_id)
        if job["status"] in ("SUCCESS", "FAILURE", "CANCELLED", "TIMEOUT"):
            return job
        if time.time() > deadline:
            raise SystemExit(f"batch job never finished: {job}")
        time.sleep(0.5)


options = {"cpus": 1, "memory": "1Gi", "max_workers": 2}
args_job = client.batch_async_request("batcher", inputs=[{"x": 1}, {"x": 2}, {"x": 3}],
                                      batch_task_options=options, labels={"team": "ml"})
url_job = client.batch_async_request("batcher", urls=[os.environ["INPUT_URL"]] * 2, batch_task_options=options)
for label, job_id in (("args", args_job), ("urls", url_job)):
    job = wait_job(job_id)
    out[label] = {"status": job["status"], "duration": job.get("duration")}
    results = requests.get(job["result"], auth=(KEY, ""), timeout=30)
    results.raise_for_status()
    out[label]["results"] = results.json()
"""


def test_batch_async_request_then_get_batch_async_response_until_success(run_flow, file_server):
    root, base_url = file_server
    (root / "input.bin").write_bytes(b"12345")
    out = run_flow(BATCH_FLOW, INPUT_URL=f"{base_url}/input.bin")
    assert out["args"]["status"] == "SUCCESS"
    assert out["args"]["duration"]
    assert out["args"]["results"] == [
        {"id": "0", "result": 10},
        {"id": "1", "result": 20},
        {"id": "2", "result": 30},
    ]
    assert out["urls"]["status"] == "SUCCESS"
    assert out["urls"]["results"] == [{"id": "0", "result": 5}, {"id": "1", "result": 5}]


def test_client_venv_keeps_cloudpickle_2_apart_from_the_server():
    import cloudpickle

    from tests.client_venv import client_python

    assert int(cloudpickle.__version__.split(".")[0]) >= 3
    python = Path(client_python())
    assert python.parent.parent.parent.name == "client-venv"
    out = run_client_script(
        "import cloudpickle, json, launch, sys\n"
        "print(json.dumps({'cloudpickle': cloudpickle.__version__, 'python': sys.version_info[:2]}))\n",
        env={},
    )
    assert out["cloudpickle"].startswith("2.")
    import sys

    assert out["python"] == list(sys.version_info[:2])

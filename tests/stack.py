"""A live stack for end-to-end tests: pytest-django's live server (real HTTP), the
controller's tick loop in a thread, and real replica processes; plus small clients."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import pytest
import requests


@dataclass
class Api:
    """A keep-alive HTTP client for one persona's key against the live server."""

    base: str
    key: str

    def __post_init__(self):
        self.session = requests.Session()
        self.session.auth = (self.key, "")

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self.session.request(method, self.base + path, **kwargs)

    def get(self, path: str, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs):
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs):
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs):
        return self.request("DELETE", path, **kwargs)

    def upload_bundle(self, obj, name: str, **fields) -> str:
        """The client's two-step flow: signed upload URL, raw PUT, then create."""
        upload = self.post("/v1/hosted_inference/model_bundle_upload", json={})
        assert upload.status_code == 200, upload.text
        target = upload.json()
        put = requests.put(target["signedUrl"], data=cloudpickle.dumps(obj), timeout=30)
        assert put.status_code < 300, put.text
        body = {
            "name": name,
            "location": f"s3://{target['bucket']}/{target['key']}",
            "requirements": [],
            "env_params": {"framework_type": "pytorch", "pytorch_image_tag": "latest"},
            "packaging_type": "cloudpickle",
            **fields,
        }
        created = self.post("/v1/model-bundles", json=body)
        assert created.status_code == 200, created.text
        return created.json()["model_bundle_id"]

    def create_endpoint(self, bundle_id: str, name: str, **fields) -> str:
        body = {
            "name": name, "model_bundle_id": bundle_id, "endpoint_type": "sync", "metadata": {},
            "cpus": 1, "gpus": 0, "memory": "1Gi", "storage": None, "min_workers": 1, "max_workers": 1,
            "per_worker": 1, "labels": {}, **fields,
        }
        created = self.post("/v1/model-endpoints", json=body)
        assert created.status_code == 200, created.text
        return created.json()["endpoint_creation_task_id"]

    def endpoint(self, endpoint_id: str) -> dict:
        response = self.get(f"/v1/model-endpoints/{endpoint_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_endpoint(self, endpoint_id: str, status: str | tuple, timeout: float = 30, **state) -> dict:
        """Poll until the endpoint has `status` (and deployment_state values such as available_workers=1)."""
        statuses = (status,) if isinstance(status, str) else status
        deadline = time.monotonic() + timeout
        while True:
            endpoint = self.endpoint(endpoint_id)
            deployment = endpoint.get("deployment_state") or {}
            if endpoint["status"] in statuses and all(deployment.get(k) == v for k, v in state.items()):
                return endpoint
            if time.monotonic() > deadline:
                raise AssertionError(f"endpoint never reached {statuses} {state}: {endpoint}")
            time.sleep(0.1)

    def wait_task(self, task_id: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            task = self.get(f"/v1/async-tasks/{task_id}").json()
            if task["status"] in ("SUCCESS", "FAILURE"):
                return task
            if time.monotonic() > deadline:
                raise AssertionError(f"task never finished: {task}")
            time.sleep(0.05)


class ControllerThread:
    """The controller's tick loop, in a thread of the test process (shares its database)."""

    def __init__(self):
        from workers.tick import run_tick_loop

        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(run_tick_loop,), daemon=True)

    def _run(self, run_tick_loop):
        from django.db import connections

        try:
            run_tick_loop(self.stop_event)
        finally:
            connections.close_all()  # this thread's: the controller process would exit here

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        from workers.tick import wake_controller

        self.stop_event.set()
        wake_controller()
        self.thread.join(timeout=60)
        # A tick loop that outlives its test would act on the next test's objects as a second
        # controller: say so where it happens.
        assert not self.thread.is_alive(), "the controller thread did not stop within 60 s"


def kill_all_replicas():
    from workers import redis_acl
    from workers.models import LIVE_STATES, Replica
    from workers.runtimes import get_runtime

    for replica in Replica.objects.filter(state__in=LIVE_STATES):
        get_runtime(replica.runtime).kill(replica)
        redis_acl.revoke(replica.id)
        replica.state = Replica.State.STOPPED
        replica.save(update_fields=["state"])


@pytest.fixture
def live_stack(transactional_db, live_server, settings):
    """Live HTTP server + controller thread; replicas are real processes."""
    settings.LAUNCH_INTERNAL_URL = live_server.url
    settings.TICK_SECONDS = 0.2
    settings.HEARTBEAT_TIMEOUT_SECONDS = 10
    controller = ControllerThread().start()
    yield live_server.url
    controller.stop()
    kill_all_replicas()


def api_for(base: str, persona) -> Api:
    return Api(base=base, key=persona.key)


def _database_url() -> str:
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def asgi_server(live_stack):
    """A web worker as `launch up` runs it (web_server.serve_web_worker) on the test's
    database and Redis; the live stack's controller and replicas serve its tasks."""
    from django.conf import settings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(
        os.environ, DATABASE_URL=_database_url(), REDIS_URL=settings.REDIS_URL, SECRET_KEY=settings.SECRET_KEY,
        ALLOWED_HOSTS="*", BUNDLE_STORE_DIR=str(settings.BUNDLE_STORE_DIR),
        LAUNCH_INTERNAL_URL=settings.LAUNCH_INTERNAL_URL,  # a stored bundle's URL: the live stack serves it
    )
    serve = "import sys; from launch_site.web_server import serve_web_worker; serve_web_worker('127.0.0.1', int(sys.argv[1]))"
    process = subprocess.Popen(
        [sys.executable, "-c", serve, str(port)],
        cwd=settings.BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(url + "/healthz", timeout=2)
            break
        except requests.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"the web server did not start: {process.communicate()[0]}") from None
            time.sleep(0.2)
    try:
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:  # requests still in flight: nothing may outlive the test
            process.kill()
            process.wait()

"""Start a throwaway embedded stack (`manage.py launch up`) for a benchmark."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cloudpickle
import requests

ROOT = Path(__file__).resolve().parent.parent


def is_web_worker(cmdline: str | bytes) -> bool:
    """A web worker of a stack, from its command line: "launch web: ..." (the title the
    supervisor gives it), or granian's (a checkout from before uvicorn, for --compare-root)."""
    text = cmdline.decode(errors="replace") if isinstance(cmdline, bytes) else cmdline
    return text.startswith("launch web:") or "granian" in text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    def __init__(self, root: Path = ROOT, args: tuple[str, ...] = (), **env):
        """`root`: the checkout whose `launch up` runs (another one to compare a change);
        `args`: more arguments of `launch up` (e.g. --web-workers 1)."""
        self.root = Path(root)
        self.args = list(args)
        self.home = Path(tempfile.mkdtemp(prefix="launch-bench-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        self.env.update(LAUNCH_HOME=str(self.home), PORT=str(self.port), **{k: str(v) for k, v in env.items()})
        self.process = None
        self.key = None

    def __enter__(self) -> Stack:
        # Output to a file, not a pipe: reading a pipe here would take CPU (and the GIL) from
        # the benchmark's own client, and an unread pipe would block the server.
        self.log_path = self.home / "stack.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(self.root / "manage.py"), "launch", "up", *self.args],
                cwd=self.root,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        try:
            return self._started()
        except BaseException:  # not started (or Ctrl-C meanwhile): nothing may stay behind
            self.__exit__()
            raise

    def _started(self) -> Stack:
        deadline = time.monotonic() + 90
        while True:
            output = self.log_path.read_text()
            if "Press Ctrl-C" in output:
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"stack did not start:\n{output[-3000:]}")
            time.sleep(0.1)
        match = re.search(r"API key:\s+(lk_\S+)", output)
        if not match:
            raise RuntimeError("stack printed no API key")
        self.key = match.group(1)
        self.session = requests.Session()
        self.session.auth = (self.key, "")
        return self

    def __exit__(self, *exc) -> None:
        self.process.send_signal(2)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
        shutil.rmtree(self.home, ignore_errors=True)

    def redis(self):
        """A client of the stack's embedded Redis, with its generated password."""
        import redis

        return redis.Redis(unix_socket_path=str(self.home / "run" / "redis.sock"),
                           password=(self.home / "redis_password").read_text().strip())

    def api(self, method: str, path: str, **kwargs):
        response = self.session.request(method, self.url + path, timeout=120, **kwargs)
        if response.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    def bundle(self, obj, name: str) -> str:
        upload = self.api("POST", "/v1/hosted_inference/model_bundle_upload", json={})
        requests.put(upload["signedUrl"], data=cloudpickle.dumps(obj), timeout=60).raise_for_status()
        return self.api(
            "POST",
            "/v1/model-bundles",
            json={
                "name": name,
                "location": f"s3://{upload['bucket']}/{upload['key']}",
                "requirements": [],
                "env_params": {"framework_type": "pytorch", "pytorch_image_tag": "x"},
                "packaging_type": "cloudpickle",
            },
        )["model_bundle_id"]

    def endpoint(self, bundle_id: str, name: str, wait_ready: bool = True, ready_timeout: float = 60,
                 **fields) -> str:
        body = {
            "name": name,
            "model_bundle_id": bundle_id,
            "endpoint_type": "sync",
            "metadata": {},
            "cpus": 1,
            "gpus": 0,
            "memory": "1Gi",
            "storage": None,
            "min_workers": 1,
            "max_workers": 1,
            "per_worker": 1,
            "labels": {},
            **fields,
        }
        endpoint_id = self.api("POST", "/v1/model-endpoints", json=body)["endpoint_creation_task_id"]
        if wait_ready:
            self.wait(
                endpoint_id,
                lambda e: e["status"] == "READY" and e["deployment_state"]["available_workers"] >= body["min_workers"],
                timeout=ready_timeout,
            )
        return endpoint_id

    def wait(self, endpoint_id: str, predicate, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            endpoint = self.api("GET", f"/v1/model-endpoints/{endpoint_id}")
            if predicate(endpoint):
                return endpoint
            time.sleep(0.05)
        raise RuntimeError(f"endpoint {endpoint_id} not ready: {endpoint}")


def identity_bundle():
    def load_predict_fn(model):
        def predict(**kwargs):
            return kwargs

        return predict

    return {"model": None, "load_predict_fn": load_predict_fn}


def machine() -> str:
    import platform

    cpu = "unknown cpu"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"
    )

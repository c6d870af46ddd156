"""Cold start: an async endpoint at zero replicas -> the first result of a task.

  --runtime local   replicas are local processes (the embedded default)
  --runtime docker  replicas are containers on a throwaway dockerd (scripts/docker-engine.sh)
                    registered as a host; the worker image is present (built locally like the
                    test image: this machine's Python mounted read-only), so the figure is
                    container start + interpreter + bundle load, not an image pull.

Against the targets: 1.5 s local, 2.5 s docker (ratio = median / target).

Usage: .venv/bin/python bench/cold_start.py [--runs 5] [--runtime local|docker] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Figure, table, write_json  # noqa: E402
from _stack import ROOT, Stack, identity_bundle, machine  # noqa: E402

TARGET_SECONDS = {"local": 1.5, "docker": 2.5}


@contextlib.contextmanager
def docker_engine():
    """One dockerd with the worker image; yields (docker URL, the stack's extra env)."""
    sys.path.insert(0, str(ROOT))
    from tests.docker_harness import PYTHON, TEST_IMAGE, Engines, _rootfs_tar, replica_mounts

    engines = Engines(Path(tempfile.mkdtemp(prefix="ldk-", dir="/tmp")), names=("bench",))
    engines.start()
    try:
        client = engines.client("bench")
        client.api.import_image_from_data(_rootfs_tar(), repository=TEST_IMAGE.split(":")[0], tag="latest")
        client.close()
        yield engines.url("bench"), {
            "LAUNCH_RUNTIME": "docker",
            "LAUNCH_DOCKER_WORKER_IMAGE": TEST_IMAGE,
            "LAUNCH_DOCKER_PYTHON": PYTHON,
            "LAUNCH_DOCKER_WORKDIR": str(ROOT),
            "LAUNCH_DOCKER_EXTRA_MOUNTS": ",".join(f"{s}:{t}:{m}" for s, t, m in replica_mounts()),
        }
    finally:
        engines.stop()
        shutil.rmtree(engines.directory, ignore_errors=True)


def cold_endpoint(stack: Stack) -> str:
    """An async endpoint that scales to zero half a second after its last task."""
    bundle_id = stack.bundle(identity_bundle(), "identity")
    return stack.endpoint(bundle_id, "cold", endpoint_type="async", min_workers=0, max_workers=1,
                          per_worker=1, cpus=0.5, memory="512Mi")


def cold_run(stack: Stack, endpoint_id: str, run: int, idle_timeout: float = 60) -> float:
    """Seconds from a task's submit to its SUCCESS, once the endpoint is back at zero."""
    stack.wait(endpoint_id, lambda e: e["deployment_state"]["available_workers"] == 0
               and e["deployment_state"]["unavailable_workers"] == 0, timeout=idle_timeout)
    start = time.perf_counter()
    task_id = stack.api("POST", f"/v1/async-tasks?model_endpoint_id={endpoint_id}",
                        json={"args": {"x": run}})["task_id"]
    while True:
        task = stack.api("GET", f"/v1/async-tasks/{task_id}")
        if task["status"] in ("SUCCESS", "FAILURE"):
            break
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    assert task["status"] == "SUCCESS", task
    return elapsed


def measure(stack: Stack, runs: int) -> list[float]:
    endpoint_id = cold_endpoint(stack)
    timings = []
    for run in range(runs):
        timings.append(cold_run(stack, endpoint_id, run))
        print(f"run {run + 1}: {timings[-1]:.3f} s", file=sys.stderr)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--runtime", choices=("local", "docker"), default="local")
    parser.add_argument("--json", help="also write the figures here (for bench/figures.py)")
    args = parser.parse_args()
    with contextlib.ExitStack() as exits:
        env = {"SCALE_DOWN_DELAY_SECONDS": 0.5}
        docker_url = None
        if args.runtime == "docker":
            docker_url, docker_env = exits.enter_context(docker_engine())
            env.update(docker_env)
        stack = exits.enter_context(Stack(**env))
        if docker_url:
            subprocess.run(
                [sys.executable, str(ROOT / "manage.py"), "register_host", "bench", "--docker-url", docker_url],
                env={**os.environ, **stack.env}, cwd=ROOT, check=True, capture_output=True,
            )
        timings = measure(stack, args.runs)
    target = TARGET_SECONDS[args.runtime]
    figures = [Figure(f"async endpoint at zero -> first result ({args.runtime} runtime)", timings, "s",
                      f"target {target:g} s", target, "<= 1")]
    print(f"machine: {machine()}")
    print(table(figures))
    if args.json:
        write_json(args.json, figures)


if __name__ == "__main__":
    main()

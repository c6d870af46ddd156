"""The Ray runtime against the local one, in the same run: cold start from zero and sync
latency through a Ray actor vs a local replica (the request path is the same Redis queue).

A one-node Ray cluster on 127.0.0.1, every port explicit (tests/ray_cluster.py), and two
embedded stacks, LAUNCH_RUNTIME=local and LAUNCH_RUNTIME=ray (RAY_ADDRESS: that cluster), up
at the same time; each rep measures local then ray:
  cold  an async endpoint at min_workers 0: submit -> SUCCESS of a task, from zero replicas
  sync  p50/p99 of sequential sync requests to an identity bundle with one replica
Everything started here (stacks, their replicas, the Ray node's processes) is torn down at
the end, also on Ctrl-C, SIGTERM or an error.

Usage: .venv/bin/python bench/ray_vs_local.py [--reps 3] [--requests 300]
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import statistics
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import ROOT, Stack, identity_bundle, machine  # noqa: E402
from cold_start import cold_endpoint, cold_run  # noqa: E402
from sync_latency import SyncClient, percentile  # noqa: E402

sys.path.insert(0, str(ROOT))
from tests.ray_cluster import RayTestCluster, ray_installed  # noqa: E402

RUNTIMES = ("local", "ray")
# A Ray replica's scale-down goes through its actor: give it more than the local minute.
IDLE_TIMEOUT_SECONDS = 180


def _raise_on_sigterm(signum, frame) -> None:
    raise SystemExit(f"stopped by signal {signum}")


@contextlib.contextmanager
def ray_cluster():
    """One Ray node on 127.0.0.1 (4 logical CPUs: room for both benchmark endpoints)."""
    cluster = RayTestCluster(ip="127.0.0.1")
    try:
        cluster.add_node("bench", num_cpus=4)
        import ray

        ray.shutdown()  # this script needs no driver of its own: the ray stack has one
        # ray.init and ray.shutdown replace the SIGTERM handler (shutdown leaves the default,
        # which would end this script without tearing anything down): ours again.
        signal.signal(signal.SIGTERM, _raise_on_sigterm)
        yield cluster
    finally:
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    if not ray_installed():
        print("skipped: Ray is not installed (pip install -r requirements-ray.txt)")
        return
    signal.signal(signal.SIGTERM, _raise_on_sigterm)

    cold: dict[str, list[float]] = {r: [] for r in RUNTIMES}
    p50: dict[str, list[float]] = {r: [] for r in RUNTIMES}
    p99: dict[str, list[float]] = {r: [] for r in RUNTIMES}
    with contextlib.ExitStack() as exits:
        cluster = exits.enter_context(ray_cluster())
        print(f"ray node up at {cluster.address}", file=sys.stderr)
        runtime_env = {
            "local": {"LAUNCH_RUNTIME": "local"},
            "ray": {"LAUNCH_RUNTIME": "ray", "RAY_ADDRESS": cluster.address,
                    "LAUNCH_RAY_NAMESPACE": f"bench-{uuid.uuid4().hex[:8]}"},
        }
        stacks, cold_ids, clients = {}, {}, {}
        for runtime in RUNTIMES:
            stack = exits.enter_context(Stack(SCALE_DOWN_DELAY_SECONDS=0.5, **runtime_env[runtime]))
            # The sync endpoint first: on Ray its replica also ships the serve loop's files to
            # the node once, so the cold starts below measure a replica start, not that upload.
            sync_id = stack.endpoint(stack.bundle(identity_bundle(), "identity"), "identity", ready_timeout=120)
            stacks[runtime], clients[runtime] = stack, SyncClient(stack, sync_id)
            exits.callback(clients[runtime].close)
            cold_ids[runtime] = cold_endpoint(stack)
            print(f"{runtime} stack up", file=sys.stderr)

        for rep in range(args.reps):
            for runtime in RUNTIMES:
                stack = stacks[runtime]
                cold[runtime].append(cold_run(stack, cold_ids[runtime], rep, idle_timeout=IDLE_TIMEOUT_SECONDS))
                timings = clients[runtime].timings(args.requests, warm_up=min(100, args.requests))
                p50[runtime].append(percentile(timings, 0.5))
                p99[runtime].append(percentile(timings, 0.99))
                print(f"rep {rep + 1} {runtime}: cold {cold[runtime][-1]:.3f} s, sync p50 "
                      f"{p50[runtime][-1]:.3f} ms, p99 {p99[runtime][-1]:.3f} ms", file=sys.stderr)

    print(f"machine: {machine()}")
    print(f"median of {args.reps} reps ({args.requests} sync requests each), local and ray alternating")
    print("| measure | local | ray | ray/local |")
    print("| --- | --- | --- | --- |")
    for label, values, unit in (("cold start from zero (submit -> SUCCESS)", cold, "s"),
                                ("sync p50", p50, "ms"), ("sync p99", p99, "ms")):
        local, ray = statistics.median(values["local"]), statistics.median(values["ray"])
        print(f"| {label} | {local:.3f} {unit} | {ray:.3f} {unit} | {ray / local:.2f} |")


if __name__ == "__main__":
    main()

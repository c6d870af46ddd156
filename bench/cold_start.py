"""Cold start: an async endpoint at zero replicas -> the first result of a task.

Usage: .venv/bin/python bench/cold_start.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import Stack, identity_bundle, machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    timings = []
    with Stack(SCALE_DOWN_DELAY_SECONDS=0.5) as stack:
        bundle_id = stack.bundle(identity_bundle(), "identity")
        endpoint_id = stack.endpoint(bundle_id, "cold", endpoint_type="async", min_workers=0, max_workers=1,
                                     per_worker=1)
        for run in range(args.runs):
            stack.wait(endpoint_id, lambda e: e["deployment_state"]["available_workers"] == 0
                       and e["deployment_state"]["unavailable_workers"] == 0, timeout=60)
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
            timings.append(elapsed)
            print(f"run {run + 1}: {elapsed:.3f} s", file=sys.stderr)
    print(f"machine: {machine()}")
    print(f"| measure | median of {args.runs} runs |")
    print("| --- | --- |")
    print(f"| async endpoint at zero -> first result (local runtime) | {statistics.median(timings):.3f} s |")


if __name__ == "__main__":
    main()

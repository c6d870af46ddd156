"""Batch job throughput on a throwaway embedded stack (`manage.py launch up`).

1. CPU-bound: 10,000 items of a predict that burns 1 ms of CPU, max_workers=2. The limit is
   2 x the in-process rate of the same function, measured in this process first.
   - end to end: from the create request to SUCCESS (replicas start from zero inside it);
   - steady: items finished between the first progress seen and SUCCESS, over that time.
2. Identity: 100,000 items of an identity predict, end to end (create -> SUCCESS; the input
   upload is timed apart).
Each figure is the median of --runs runs. Targets: the steady CPU-bound rate at 90% of the
limit, the identity job at 20,000 items/s.

Usage: .venv/bin/python bench/batch_throughput.py [--runs 3] [--items 10000] [--identity-items 100000]
       [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Figure, table, write_json  # noqa: E402
from _stack import Stack, identity_bundle, machine  # noqa: E402

TARGET_SHARE_OF_LIMIT = 0.9
TARGET_IDENTITY_ITEMS_PER_SECOND = 20_000


def burn_bundle():
    def load_predict_fn(model):
        def predict(x):
            import time as _time

            end = _time.perf_counter() + 0.001
            while _time.perf_counter() < end:
                pass
            return x

        return predict

    return {"model": None, "load_predict_fn": load_predict_fn}


def in_process_rate(items: int = 3000) -> float:
    predict = burn_bundle()["load_predict_fn"](None)
    start = time.perf_counter()
    for i in range(items):
        predict(x=i)
    return items / (time.perf_counter() - start)


def jsonl(items: int, make_args) -> bytes:
    return b"".join(json.dumps({"args": make_args(i)}).encode() + b"\n" for i in range(items))


def run_job(stack: Stack, bundle_id: str, content: bytes, max_workers: int) -> dict:
    upload_start = time.perf_counter()
    target = stack.api("POST", "/v1/hosted_inference/batch_task_input_upload", json={})
    stack.session.put(target["signedUrl"], data=content, timeout=300).raise_for_status()
    upload_seconds = time.perf_counter() - upload_start
    start = time.perf_counter()
    job_id = stack.api(
        "POST",
        "/v1/batch-jobs",
        json={
            "model_bundle_id": bundle_id,
            "input_path": f"s3://{target['bucket']}/{target['key']}",
            "serialization_format": "JSON",
            "labels": {},
            "resource_requests": {"max_workers": max_workers},
        },
    )["job_id"]
    first_progress = None
    while True:
        job = stack.api("GET", f"/v1/batch-jobs/{job_id}")
        now = time.perf_counter()
        if first_progress is None and job["num_tasks_completed"]:
            first_progress = (now, job["num_tasks_completed"])
        if job["status"] not in ("PENDING", "RUNNING"):
            break
        time.sleep(0.25)  # a busier poll takes CPU from the replicas on a small machine
    if job["status"] != "SUCCESS":
        raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('status_reason')}")
    total = job["num_tasks_completed"]
    steady = None
    if first_progress and now > first_progress[0]:
        steady = (total - first_progress[1]) / (now - first_progress[0])
    return {"end_to_end": total / (now - start), "steady": steady, "upload_seconds": upload_seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--identity-items", type=int, default=100_000)
    parser.add_argument("--identity-workers", type=int, default=2)
    parser.add_argument("--json", help="also write the figures here (for bench/figures.py)")
    args = parser.parse_args()

    baseline = statistics.median(in_process_rate() for _ in range(3))
    limit = 2 * baseline
    cpu_runs, identity_runs = [], []
    with Stack() as stack:
        burn_id = stack.bundle(burn_bundle(), "burn")
        identity_id = stack.bundle(identity_bundle(), "identity")
        cpu_input = jsonl(args.items, lambda i: {"x": i})
        identity_input = jsonl(args.identity_items, lambda i: {"i": i})
        for run in range(args.runs):
            cpu_runs.append(run_job(stack, burn_id, cpu_input, max_workers=2))
            identity_runs.append(run_job(stack, identity_id, identity_input, max_workers=args.identity_workers))
            print(f"run {run + 1}: cpu {cpu_runs[-1]}, identity {identity_runs[-1]}", file=sys.stderr)

    def values(runs: list[dict], key: str) -> list[float]:
        return [r[key] for r in runs if r[key] is not None]

    against_limit = f"limit: 2 x the in-process rate of the predict ({limit:,.0f} items/s, this run)"
    figures = [
        Figure(f"{args.items:,} x 1 ms CPU, 2 replicas, steady (first progress -> done)",
               values(cpu_runs, "steady"), "items/s", against_limit, limit, f">= {TARGET_SHARE_OF_LIMIT:g}"),
        Figure(f"{args.items:,} x 1 ms CPU, 2 replicas, end to end (create -> SUCCESS, replicas from zero)",
               values(cpu_runs, "end_to_end"), "items/s", against_limit, limit),
        Figure(f"{args.identity_items:,} identity, {args.identity_workers} replicas, end to end",
               values(identity_runs, "end_to_end"), "items/s",
               f"target {TARGET_IDENTITY_ITEMS_PER_SECOND:,} items/s", TARGET_IDENTITY_ITEMS_PER_SECOND, ">= 1"),
    ]
    upload = statistics.median(r["upload_seconds"] for r in identity_runs)
    notes = [f"input upload of the {args.identity_items:,}-item file (not in the figures): {upload:.2f} s"]
    print(f"Machine: {machine()}\n")
    print(table(figures))
    print("\n" + notes[0])
    if args.json:
        write_json(args.json, figures, notes)


if __name__ == "__main__":
    main()

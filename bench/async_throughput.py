"""Async throughput on a trivial bundle.

1. Submit rate: 10,000 POST /v1/async-tasks over HTTP (4 client processes, keep-alive), and
   the rate from the first submit to the last task done with 2 replicas draining meanwhile.
2. Completion rate with 1 and 2 replicas: 10,000 tasks pushed onto the endpoint's queue with
   the gateway's protocol (pipelined, far faster than replicas drain it), rate =
   tasks / (last finished_at - first started_at) read from the task records.
Against the target of 1,500 tasks/s (ratio = median / target; met by the 2-replica
completion rate).

Usage: .venv/bin/python bench/async_throughput.py [--tasks 10000] [--runs 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _report import Figure, table, write_json  # noqa: E402
from _stack import Stack, identity_bundle, machine  # noqa: E402

from workers import protocol  # noqa: E402

TARGET_TASKS_PER_SECOND = 1500


def _submit_many(port: int, key: str, endpoint_id: str, count: int, ready, go) -> None:
    """One client process: `count` POSTs on one keep-alive connection (http.client)."""
    connection = http.client.HTTPConnection("127.0.0.1", port)
    headers = {
        "Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode(),
        "Content-Type": "application/json",
    }
    path = f"/v1/async-tasks?model_endpoint_id={endpoint_id}"
    ready.set()
    go.wait()
    for i in range(count):
        connection.request("POST", path, body=json.dumps({"args": {"x": i}}), headers=headers)
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, body


def submit_rate(stack: Stack, endpoint_id: str, tasks: int, clients: int = 4) -> float:
    """Submit rate over HTTP from `clients` processes (threads of one Python process would
    measure the client's GIL, not the server)."""
    context = multiprocessing.get_context("fork")
    go = context.Event()
    readies = [context.Event() for _ in range(clients)]
    workers = [
        context.Process(target=_submit_many, args=(stack.port, stack.key, endpoint_id, tasks // clients, ready, go))
        for ready in readies
    ]
    for worker in workers:
        worker.start()
    for ready in readies:
        ready.wait()
    start = time.perf_counter()
    go.set()
    for worker in workers:
        worker.join()
        assert worker.exitcode == 0
    return tasks // clients * clients / (time.perf_counter() - start)


def wait_drained(redis_client, endpoint_id: str) -> None:
    keys = protocol.Keys(protocol.endpoint_prefix(endpoint_id))
    deadline = time.monotonic() + 300
    while redis_client.llen(keys.queue) or any(
        redis_client.llen(k) for k in redis_client.scan_iter(keys.inflight_pattern)
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("tasks did not finish")
        time.sleep(0.01)


def completion_rate(redis_client, endpoint_id: str, tasks: int) -> float:
    keys = protocol.Keys(protocol.endpoint_prefix(endpoint_id))
    ids = [protocol.task_id_for(endpoint_id, uuid.uuid4().hex) for _ in range(tasks)]
    payload = json.dumps({"args": {"x": 1}, "return_pickled": False})
    with redis_client.pipeline(transaction=False) as pipe:
        for task_id in ids:
            pipe.hset(
                keys.task(task_id),
                mapping={"payload": payload, "status": "PENDING", "attempts": 0, "created_at": time.time()},
            )
            pipe.expire(keys.task(task_id), 3600)
        pipe.execute()
    expires_at = time.time() + 3600
    entries = [protocol.queue_entry(task_id, expires_at=expires_at, payload=payload) for task_id in ids]
    with redis_client.pipeline(transaction=False) as pipe:
        for start in range(0, tasks, 1000):
            pipe.lpush(keys.queue, *entries[start : start + 1000])
        pipe.execute()
    wait_drained(redis_client, endpoint_id)
    time.sleep(0.2)
    with redis_client.pipeline(transaction=False) as pipe:
        for task_id in ids:
            pipe.hmget(keys.task(task_id), ["status", "started_at", "finished_at"])
        rows = pipe.execute()
    done = [(float(s), float(f)) for status, s, f in rows if status == b"SUCCESS"]
    assert len(done) == tasks, f"only {len(done)} of {tasks} succeeded"
    first = min(s for s, _ in done)
    last = max(f for _, f in done)
    return tasks / (last - first)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="also write the figures here (for bench/figures.py)")
    args = parser.parse_args()
    results: dict[str, list[float]] = {"submit": [], "e2e": [], "1": [], "2": []}
    with Stack() as stack:
        redis_client = stack.redis()
        bundle_id = stack.bundle(identity_bundle(), "identity")
        submit_endpoint = stack.endpoint(
            bundle_id, "submit", endpoint_type="async", min_workers=2, max_workers=2, per_worker=1
        )
        for replicas in (1, 2):
            endpoint_id = stack.endpoint(
                bundle_id,
                f"drain-{replicas}",
                endpoint_type="async",
                min_workers=replicas,
                max_workers=replicas,
                per_worker=1,
            )
            for run in range(args.runs):
                rate = completion_rate(redis_client, endpoint_id, args.tasks)
                results[str(replicas)].append(rate)
                print(f"{replicas} replica(s) run {run + 1}: {rate:,.0f} tasks/s", file=sys.stderr)
            stack.api("DELETE", f"/v1/model-endpoints/{endpoint_id}")
        for run in range(args.runs):
            # End to end: HTTP submits while the 2 replicas drain; until the last task is done.
            start = time.perf_counter()
            rate = submit_rate(stack, submit_endpoint, args.tasks)
            wait_drained(redis_client, submit_endpoint)
            results["submit"].append(rate)
            results["e2e"].append(args.tasks / (time.perf_counter() - start))
            print(
                f"submit run {run + 1}: {rate:,.0f} tasks/s, end to end {results['e2e'][-1]:,.0f} tasks/s",
                file=sys.stderr,
            )
    target = f"target {TARGET_TASKS_PER_SECOND:,} tasks/s"
    figures = [
        Figure("completion rate, 1 replica (queue pushed, first start -> last finish)", results["1"], "tasks/s",
               target, TARGET_TASKS_PER_SECOND),
        Figure("completion rate, 2 replicas", results["2"], "tasks/s", target, TARGET_TASKS_PER_SECOND, ">= 1"),
        Figure("HTTP submit rate, 4 client processes", results["submit"], "tasks/s", target, TARGET_TASKS_PER_SECOND),
        Figure("HTTP submit -> last task done, 2 replicas", results["e2e"], "tasks/s", target,
               TARGET_TASKS_PER_SECOND),
    ]
    print(f"machine: {machine()}; {args.runs} runs x {args.tasks:,} tasks")
    print(table(figures))
    if args.json:
        write_json(args.json, figures)


if __name__ == "__main__":
    main()

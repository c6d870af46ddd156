"""Adaptive request batching (docs/batching.md): requests/s with batching on vs off.

A model that costs 5 ms per call plus 0.05 ms per item (time.sleep, as a GPU's launch cost
and per-item cost would), declared as a batch predict, served by two sync endpoints of one
replica each in the same embedded stack: one with max_batch_size 32, one without batching
(the same batch predict, called with lists of one). 32 keep-alive connections through the
real API with a key (the raw HTTP client of bench/peers.py), closed loop; the two endpoints
alternate within each rep, the order swapped every rep. Reports the median of the reps and
the ratio on/off.

Also, without the web path: the replica's own capacity, `--tasks` tasks pushed onto each
endpoint's queue with the gateway's protocol (bench/async_throughput.py's completion_rate:
tasks / (last finished_at - first started_at)), so the gain of batching itself shows where
the web server, not the replica, is what limits the first figure.

Target (issue 14): requests/s through the API with batching on >= 5x off, at 32 connections.

Usage: .venv/bin/python bench/batching.py [--reps 3] [--seconds 5] [--connections 32] [--wait-ms 10]
       [--tasks 1500] [--json PATH]
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Figure, table, write_json  # noqa: E402
from _stack import Stack, machine  # noqa: E402
from async_throughput import completion_rate  # noqa: E402
from peers import load  # noqa: E402

BATCH_SIZE = 32
TARGET_RATIO = 5


def costly_batch_bundle():
    """5 ms per call + 0.05 ms per item; each input is echoed back."""

    def load_predict_fn(model):
        def predict(inputs):
            import time

            time.sleep(0.005 + 0.00005 * len(inputs))
            return inputs

        predict.batch = True
        return predict

    return {"model": None, "load_predict_fn": load_predict_fn}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=1500, help="tasks per drain of the replica-only figure")
    parser.add_argument("--wait-ms", type=int, default=10, help="max_batch_wait_ms of the batching endpoint")
    parser.add_argument("--json", help="also write the figures here (for bench/figures.py)")
    options = parser.parse_args()

    with Stack() as stack:
        bundle_id = stack.bundle(costly_batch_bundle(), "costly")
        endpoints = {
            "off": stack.endpoint(bundle_id, "unbatched"),
            "on": stack.endpoint(bundle_id, "batched", max_batch_size=BATCH_SIZE, max_batch_wait_ms=options.wait_ms),
        }
        auth = "Authorization: Basic " + base64.b64encode(f"{stack.key}:".encode()).decode() + "\r\n"
        body = b'{"args": {"x": 1}}'

        def request(mode: str) -> bytes:
            return (
                f"POST /v1/sync-tasks?model_endpoint_id={endpoints[mode]} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{stack.port}\r\n{auth}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body

        for mode in ("off", "on"):  # warm both paths (connections, scripts, replicas)
            load(stack.port, request(mode), connections=options.connections, seconds=1)
        redis_client = stack.redis()
        figures: dict[str, list[dict]] = {"off": [], "on": []}
        for rep in range(options.reps):
            for mode in (("off", "on") if rep % 2 == 0 else ("on", "off")):
                figure = load(stack.port, request(mode), connections=options.connections, seconds=options.seconds)
                if figure["errors"]:
                    raise SystemExit(f"{mode}: {figure['errors']} requests were not answered 200")
                figure["drain"] = completion_rate(redis_client, endpoints[mode], options.tasks)
                figures[mode].append(figure)
                print(f"rep {rep + 1} batching {mode:3}: {figure['rps']:7.0f} req/s, p50 {figure['p50']:6.1f} ms, "
                      f"p99 {figure['p99']:6.1f} ms; replica alone {figure['drain']:7.0f} tasks/s", flush=True)

    def values(mode: str, key: str) -> list[float]:
        return [f[key] for f in figures[mode]]

    def median(mode: str, key: str) -> float:
        return statistics.median(values(mode, key))

    off = "batching off (same run)"
    results = [
        Figure("batching off: requests/s through the API", values("off", "rps"), "req/s"),
        Figure("batching on: requests/s through the API", values("on", "rps"), "req/s", off, median("off", "rps"),
               f">= {TARGET_RATIO}"),
        Figure("batching off: p99", values("off", "p99"), "ms"),
        Figure("batching on: p99", values("on", "p99"), "ms", off, median("off", "p99")),
        Figure("batching off: replica alone (queue pushed, no web path)", values("off", "drain"), "tasks/s"),
        Figure("batching on: replica alone (queue pushed, no web path)", values("on", "drain"), "tasks/s", off,
               median("off", "drain")),
    ]
    per_rep = ", ".join(f"{on['rps'] / off['rps']:.1f}" for on, off in zip(figures["on"], figures["off"], strict=True))
    notes = [f"per rep, on/off requests/s through the API: {per_rep}"]
    print(f"\nmachine: {machine()}")
    print(f"model: 5 ms per call + 0.05 ms per item; {options.connections} connections, sync, one replica; "
          f"batching on: max_batch_size {BATCH_SIZE}, max_batch_wait_ms {options.wait_ms}; "
          f"{options.reps} reps of {options.seconds:g} s, alternating; replica alone: {options.tasks:,} tasks")
    print(table(results))
    print(notes[0])
    if options.json:
        write_json(options.json, results, notes)


if __name__ == "__main__":
    main()

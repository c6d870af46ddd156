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

Usage: .venv/bin/python bench/batching.py [--reps 3] [--seconds 5] [--connections 32] [--wait-ms 10]
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import Stack, machine  # noqa: E402
from async_throughput import completion_rate  # noqa: E402
from peers import load  # noqa: E402

BATCH_SIZE = 32


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
        import redis

        redis_client = redis.Redis(unix_socket_path=str(stack.home / "run" / "redis.sock"),
                                   password=(stack.home / "redis_password").read_text().strip())
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

    def median(mode: str, key: str) -> float:
        return statistics.median(f[key] for f in figures[mode])

    print(f"\nmachine: {machine()}")
    print(f"model: 5 ms per call + 0.05 ms per item; {options.connections} connections, sync, one replica; "
          f"batching on: max_batch_size {BATCH_SIZE}, max_batch_wait_ms {options.wait_ms}; "
          f"median of {options.reps} reps of {options.seconds:g} s, alternating")
    print("| batching | requests/s through the API | p50 ms | p99 ms | replica alone, tasks/s |")
    print("| --- | --- | --- | --- | --- |")
    for mode in ("off", "on"):
        print(f"| {mode} | {median(mode, 'rps'):.0f} | {median(mode, 'p50'):.1f} | {median(mode, 'p99'):.1f} "
              f"| {median(mode, 'drain'):.0f} |")
    print(f"| ratio on/off | {median('on', 'rps') / median('off', 'rps'):.1f}x | | | "
          f"{median('on', 'drain') / median('off', 'drain'):.1f}x |")
    per_rep = ", ".join(f"{on['rps'] / off['rps']:.1f}" for on, off in zip(figures["on"], figures["off"], strict=True))
    print(f"per rep, on/off requests/s through the API: {per_rep}")


if __name__ == "__main__":
    main()

"""Many slow sync requests at once: CONCURRENT `POST /v1/sync-tasks` sent together to a
predict that sleeps 1 s, with replicas sized to run them all at once (issue 14, item 4).

Each request has a connection of its own (an asyncio client, so the client is not the
bound). Reports, per rep: how many answered 200, the p50 and the slowest answer; the baseline,
measured in the same run, is one such request alone. The target: every one 200 within 3 s.

Usage: .venv/bin/python bench/slow_concurrency.py [--concurrent 500] [--reps 3]
       [--replicas 2] [--root OTHER_CHECKOUT] [--json PATH]   (--root: run another checkout's stack, e.g.
       the one before this change, with the same client)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Figure, table, write_json  # noqa: E402
from _stack import ROOT, Stack, machine  # noqa: E402

SLEEP_SECONDS = 1.0
TARGET_SECONDS = 3.0
CLIENT_TIMEOUT_SECONDS = 120


def sleep_bundle(seconds: float):
    def load_predict_fn(model):
        import time

        def predict(**kwargs):
            time.sleep(seconds)
            return kwargs

        return predict

    return {"model": None, "load_predict_fn": load_predict_fn}


async def one_request(port: int, request: bytes) -> tuple[int, float]:
    """(status, seconds) of one request on a connection of its own; status 0 when it failed."""
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        writer.close()
        return status, time.perf_counter() - started
    except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
        return 0, time.perf_counter() - started


async def burst(port: int, request: bytes, concurrent: int) -> list[tuple[int, float]]:
    tasks = [one_request(port, request) for _ in range(concurrent)]
    return await asyncio.wait_for(asyncio.gather(*tasks), CLIENT_TIMEOUT_SECONDS)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrent", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--json", help="also write the figures here (for bench/figures.py)")
    args = parser.parse_args()
    per_replica = math.ceil(args.concurrent / args.replicas)
    with Stack(root=args.root) as stack:
        endpoint_id = stack.endpoint(
            stack.bundle(sleep_bundle(SLEEP_SECONDS), "sleeper"), "sleeper", ready_timeout=120,
            min_workers=args.replicas, max_workers=args.replicas, per_worker=per_replica,
            concurrent_requests_per_worker=per_replica,
            memory="4Gi",  # each task thread of a replica maps a stack (RLIMIT_DATA)
        )
        auth = base64.b64encode(f"{stack.key}:".encode()).decode()
        body = json.dumps({"args": {"x": 1}}).encode()
        request = (
            f"POST /v1/sync-tasks?model_endpoint_id={endpoint_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + body
        alone, oks, p50s, slowest = [], [], [], []
        for rep in range(args.reps):
            status, seconds = asyncio.run(burst(stack.port, request, 1))[0]
            assert status == 200, status
            alone.append(seconds)
            answers = asyncio.run(burst(stack.port, request, args.concurrent))
            times = sorted(seconds for _, seconds in answers)
            oks.append(sum(1 for status, _ in answers if status == 200))
            p50s.append(times[len(times) // 2])
            slowest.append(times[-1])
            print(f"rep {rep + 1}: alone {alone[-1]:.3f} s; {oks[-1]}/{args.concurrent} answered 200, "
                  f"p50 {p50s[-1]:.3f} s, slowest {slowest[-1]:.3f} s", file=sys.stderr)
            time.sleep(2)  # let the replicas' threads go back to waiting
    base = statistics.median(alone)
    sent = f"{args.concurrent} at once, predict sleeps {SLEEP_SECONDS:g} s, {args.replicas} replicas x {per_replica}"
    figures = [
        Figure(f"{sent}: answered 200", oks, "requests", f"all {args.concurrent}", args.concurrent, ">= 1"),
        Figure(f"{sent}: slowest answer", slowest, "s", f"target {TARGET_SECONDS:g} s", TARGET_SECONDS, "<= 1"),
        Figure(f"{sent}: p50", p50s, "s", "one request alone (same run)", base),
    ]
    print(f"machine: {machine()}; checkout: {args.root}")
    print(table(figures))
    if args.json:
        write_json(args.json, figures)


if __name__ == "__main__":
    main()

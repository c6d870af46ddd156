"""Sequential sync requests to an identity bundle over HTTP with a keep-alive client
(http.client: one connection, so the figure is the server's and not a client library's).

Reports p50/p99 end to end and the same call made directly in-process (the baseline).
Usage: .venv/bin/python bench/sync_latency.py [--requests 2000] [--runs 3] [--compare-root PATH]

--compare-root: also start the stack of another checkout (e.g. the commit before a change) and
alternate runs between the two in the same session, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import ROOT, Stack, identity_bundle, is_web_worker, machine  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def web_cpu_seconds(stack: Stack) -> float:
    """CPU time (user + system) the stack's web server processes have used: per request, a
    figure the machine's other load moves much less than a latency."""
    from peers import descendants

    total = 0.0
    for pid in descendants(stack.process.pid):
        try:
            if not is_web_worker(Path(f"/proc/{pid}/cmdline").read_bytes()):
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def direct_call_ms(n: int) -> list[float]:
    bundle = identity_bundle()
    predict = bundle["load_predict_fn"](bundle["model"])
    timings = []
    for i in range(n):
        start = time.perf_counter()
        predict(x=i)
        timings.append((time.perf_counter() - start) * 1000)
    return timings


class SyncClient:
    """Sequential sync requests to one endpoint on one keep-alive connection."""

    def __init__(self, stack: Stack, endpoint_id: str):
        self.path = f"/v1/sync-tasks?model_endpoint_id={endpoint_id}"
        self.connection = http.client.HTTPConnection("127.0.0.1", stack.port)
        self.headers = {
            "Authorization": "Basic " + base64.b64encode(f"{stack.key}:".encode()).decode(),
            "Content-Type": "application/json",
        }

    def request(self, i: int) -> dict:
        self.connection.request("POST", self.path, body=json.dumps({"args": {"x": i}}), headers=self.headers)
        response = self.connection.getresponse()
        body = response.read()
        assert response.status == 200, body
        return json.loads(body)

    def timings(self, requests: int, warm_up: int = 200) -> list[float]:
        """Milliseconds per request of `requests` answered ones, after `warm_up` untimed ones."""
        for i in range(warm_up):  # warm up connections and caches
            self.request(i)
        timings = []
        for i in range(requests):
            start = time.perf_counter()
            answer = self.request(i)
            timings.append((time.perf_counter() - start) * 1000)
            assert answer["status"] == "SUCCESS", answer
        return timings

    def close(self) -> None:
        self.connection.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compare-root", type=Path)
    args = parser.parse_args()
    roots = [ROOT] + ([args.compare_root] if args.compare_root else [])
    stacks = [Stack(root=root) for root in roots]
    p50s: dict[Path, list[float]] = {root: [] for root in roots}
    p99s: dict[Path, list[float]] = {root: [] for root in roots}
    cpus: dict[Path, list[float]] = {root: [] for root in roots}
    try:
        clients = []
        for stack in stacks:
            stack.__enter__()
            clients.append(SyncClient(stack, stack.endpoint(stack.bundle(identity_bundle(), "identity"), "identity")))
            clients[-1].timings(1)  # warm up connections and caches (200 requests)
        for run in range(args.runs):
            pairs = list(zip(roots, clients, strict=True))
            for (root, client), stack in zip(pairs if run % 2 == 0 else reversed(pairs),
                                             stacks if run % 2 == 0 else reversed(stacks), strict=True):
                cpu_before = web_cpu_seconds(stack)
                timings = client.timings(args.requests, warm_up=0)
                cpus[root].append((web_cpu_seconds(stack) - cpu_before) * 1000 / args.requests)
                p50s[root].append(percentile(timings, 0.5))
                p99s[root].append(percentile(timings, 0.99))
                print(f"run {run + 1}, {root}: p50 {p50s[root][-1]:.3f} ms, p99 {p99s[root][-1]:.3f} ms, "
                      f"web CPU {cpus[root][-1]:.3f} ms/request", file=sys.stderr)
        for client in clients:
            client.close()
    finally:
        for stack in stacks:
            if stack.process is not None:
                stack.__exit__()
    direct = direct_call_ms(args.requests)
    base50 = percentile(direct, 0.5)
    print(f"machine: {machine()}")
    print(f"| measure | median of {args.runs} runs x {args.requests} requests |" + (" compared checkout | ratio |" if args.compare_root else ""))
    print("| --- | --- |" + (" --- | --- |" if args.compare_root else ""))
    for label, values in (("HTTP sync p50", p50s), ("HTTP sync p99", p99s), ("web server CPU per request", cpus)):
        ours = statistics.median(values[ROOT])
        row = f"| {label} | {ours:.3f} ms |"
        if args.compare_root:
            other = statistics.median(values[args.compare_root])
            row += f" {other:.3f} ms | {ours / other:.2f} |"
        print(row)
    print(f"| direct in-process call p50 | {base50 * 1000:.2f} µs |")
    print(f"| overhead p50 (HTTP - direct) | {statistics.median(p50s[ROOT]) - base50:.3f} ms |")


if __name__ == "__main__":
    main()

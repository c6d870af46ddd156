"""GET one page of endpoints (`GET /v1/model-endpoints`, the default page of 100) as the
team's endpoints grow from 10 to 1,000 (issue 14, item 3: under 10 ms at 1,000).

The endpoints are async, `min_workers: 0` (no replica), created through the API. Each
figure is the median of REQUESTS sequential GETs on one keep-alive connection; each rep
measures each figure again, and the table gives the median over reps. The baseline, in the
same run, is the same GET at 10 endpoints (the list whole); a page of the same 10 items at
1,000 endpoints shows what the total costs a page, and `/healthz` and a 404 of the retrieve
route show the fixed cost of any request. Each figure also has the CPU time (user + system)
of the stack's web server processes per GET, warm-up GETs included, the median over reps:
on a shared machine, the figure to trust.

Usage: .venv/bin/python bench/list_endpoints.py [--endpoints 1000] [--reps 3] [--requests 100]
       [--compare-root PATH] [--json PATH]

--compare-root: also start the stack of another checkout (e.g. the commit before a change),
give it the same endpoints, and have the two take turns GET by GET, so both see the same
machine load; the table then has a column for each and their ratio.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Figure, table, write_json  # noqa: E402
from _stack import ROOT, Stack, identity_bundle, machine  # noqa: E402
from sync_latency import web_cpu_seconds  # noqa: E402

BASELINE_ENDPOINTS = 10
TARGET_PAGE_MS = 10


def get_ms(stacks: list[Stack], path: str, requests: int, status: int = 200) -> tuple[list[float], int, list[float]]:
    """Median milliseconds of `requests` GETs of `path` on each stack (one keep-alive connection
    each, the stacks taking turns GET by GET so that both see the same machine load), how
    many endpoints one answer held, and the CPU milliseconds per GET of each stack's web
    server processes (which the machine's other load moves much less than wall time)."""
    connections = [http.client.HTTPConnection("127.0.0.1", stack.port) for stack in stacks]
    headers = [{"Authorization": "Basic " + base64.b64encode(f"{stack.key}:".encode()).decode()} for stack in stacks]
    timings: list[list[float]] = [[] for _ in stacks]
    count = 0
    cpu_before = [web_cpu_seconds(stack) for stack in stacks]
    for i in range(requests + 5):
        turn = list(range(len(stacks)))
        for n in turn if i % 2 == 0 else reversed(turn):
            started = time.perf_counter()
            connections[n].request("GET", path, headers=headers[n])
            response = connections[n].getresponse()
            body = response.read()
            if i >= 5:  # after a few to warm up
                timings[n].append((time.perf_counter() - started) * 1000)
            assert response.status == status, body
            count = len(json.loads(body).get("model_endpoints", []))
    cpu = [(web_cpu_seconds(stack) - before) * 1000 / (requests + 5)
           for stack, before in zip(stacks, cpu_before, strict=True)]
    for connection in connections:
        connection.close()
    return [statistics.median(t) for t in timings], count, cpu


def create_endpoints(stack: Stack, bundle_id: str, first: int, last: int) -> None:
    def create(i: int) -> None:
        stack.endpoint(bundle_id, f"ep-{i:04d}", wait_ready=False, endpoint_type="async", min_workers=0,
                       max_workers=1)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(create, range(first, last)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--compare-root", type=Path)
    parser.add_argument("--json", help="also write the figures of this checkout here (for bench/figures.py)")
    args = parser.parse_args()
    roots = [ROOT] + ([args.compare_root.resolve()] if args.compare_root else [])
    stacks = [Stack(root=root) for root in roots]
    figures = ("baseline", "healthz", "missing", "same", "page", "whole")
    ms: dict[str, dict[Path, list[float]]] = {figure: {root: [] for root in roots} for figure in figures}
    cpu: dict[str, dict[Path, list[float]]] = {figure: {root: [] for root in roots} for figure in figures}
    items: dict[str, int] = {}  # figure -> endpoints one answer held
    try:
        bundles = {}
        for root, stack in zip(roots, stacks, strict=True):
            stack.__enter__()
            bundles[root] = stack.bundle(identity_bundle(), "identity")
            create_endpoints(stack, bundles[root], 0, BASELINE_ENDPOINTS)
        for _ in range(args.reps):
            taken, _, used = get_ms(stacks, "/v1/model-endpoints", args.requests)
            for root, each, each_cpu in zip(roots, taken, used, strict=True):
                ms["baseline"][root].append(each)
                cpu["baseline"][root].append(each_cpu)
        for root, stack in zip(roots, stacks, strict=True):
            create_endpoints(stack, bundles[root], BASELINE_ENDPOINTS, args.endpoints)
        for rep in range(args.reps):
            paths = {
                "healthz": ("/healthz", args.requests),
                "missing": ("/v1/model-endpoints/end_missing", args.requests),
                "page": ("/v1/model-endpoints", args.requests),
                "same": (f"/v1/model-endpoints?limit={BASELINE_ENDPOINTS}", args.requests),
                "whole": ("/v1/model-endpoints?limit=1000", max(10, args.requests // 10)),
            }
            for figure, (path, requests) in paths.items():
                taken, items[figure], used = get_ms(stacks, path, requests, status=404 if figure == "missing" else 200)
                for root, each, each_cpu in zip(roots, taken, used, strict=True):
                    ms[figure][root].append(each)
                    cpu[figure][root].append(each_cpu)
            print(f"rep {rep + 1}: " + "; ".join(
                f"{root}: " + ", ".join(f"{f} {ms[f][root][-1]:.2f} ms (CPU {cpu[f][root][-1]:.2f})" for f in figures)
                for root in roots
            ), file=sys.stderr)
    finally:
        for stack in stacks:
            if stack.process is not None:
                stack.__exit__()
    labels = {
        "baseline": f"{BASELINE_ENDPOINTS} endpoints, whole list (baseline)",
        # The fixed cost of a request: the serving path alone, then with the key and one query.
        "healthz": f"{args.endpoints} endpoints, `/healthz` (no key, no query)",
        "missing": f"{args.endpoints} endpoints, `/v1/model-endpoints/end_missing` (the key, one query: 404)",
        "same": f"{args.endpoints} endpoints, a page of {BASELINE_ENDPOINTS} (`limit={BASELINE_ENDPOINTS}`)",
        "page": f"{args.endpoints} endpoints, default page ({items['page']} items)",
        "whole": f"{args.endpoints} endpoints, `limit=1000` ({items['whole']} items)",
    }
    base = statistics.median(ms["baseline"][ROOT])
    print(f"machine: {machine()}")
    header = f"| GET | median of {args.reps} reps (each the median of {args.requests} GETs) "
    header += "| ratio to the baseline | web CPU per GET |"
    if args.compare_root:
        header += f" compared checkout ({args.compare_root}) | this / compared | its web CPU per GET | this / compared |"
    print(header)
    print("| --- | --- | --- | --- |" + (" --- | --- | --- | --- |" if args.compare_root else ""))
    for figure in figures:
        ours, ours_cpu = statistics.median(ms[figure][ROOT]), statistics.median(cpu[figure][ROOT])
        row = f"| {labels[figure]} | {ours:.2f} ms | {ours / base:.2f} | {ours_cpu:.2f} ms |"
        if args.compare_root:
            other, other_cpu = statistics.median(ms[figure][roots[1]]), statistics.median(cpu[figure][roots[1]])
            row += f" {other:.2f} ms | {ours / other:.2f} | {other_cpu:.2f} ms | {ours_cpu / other_cpu:.2f} |"
        print(row)

    page = f"GET `/v1/model-endpoints`, default page ({items['page']} items), {args.endpoints:,} endpoints"
    figures = [
        Figure(page, ms["page"][ROOT], "ms", f"target {TARGET_PAGE_MS} ms", TARGET_PAGE_MS, "<= 1"),
        Figure(page, ms["page"][ROOT], "ms", f"the whole list at {BASELINE_ENDPOINTS} endpoints (same run)", base),
    ]
    print("\n" + table(figures))
    if args.json:
        write_json(args.json, figures)


if __name__ == "__main__":
    main()

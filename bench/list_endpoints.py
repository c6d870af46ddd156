"""GET one page of endpoints (`GET /v1/model-endpoints`, the default page of 100) as the
team's endpoints grow from 10 to 1,000 (issue 14, item 3: under 10 ms at 1,000).

The endpoints are async, `min_workers: 0` (no replica), created through the API. Each
figure is the median of REQUESTS sequential GETs on one keep-alive connection; each rep
measures each figure again, and the table gives the median over reps. The baseline, in the
same run, is the same GET at 10 endpoints (the list whole); a page of the same 10 items at
1,000 endpoints shows what the total costs a page.

Usage: .venv/bin/python bench/list_endpoints.py [--endpoints 1000] [--reps 3] [--requests 100]
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
from _stack import Stack, identity_bundle, machine  # noqa: E402

BASELINE_ENDPOINTS = 10


def get_ms(stack: Stack, path: str, requests: int) -> tuple[float, int]:
    """Median milliseconds of `requests` GETs of `path`, and how many endpoints one answer held."""
    connection = http.client.HTTPConnection("127.0.0.1", stack.port)
    headers = {"Authorization": "Basic " + base64.b64encode(f"{stack.key}:".encode()).decode()}
    timings, count = [], 0
    for i in range(requests + 5):
        started = time.perf_counter()
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        if i >= 5:  # after a few to warm up
            timings.append((time.perf_counter() - started) * 1000)
        assert response.status == 200, body
        count = len(json.loads(body)["model_endpoints"])
    connection.close()
    return statistics.median(timings), count


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
    args = parser.parse_args()
    with Stack() as stack:
        bundle_id = stack.bundle(identity_bundle(), "identity")
        create_endpoints(stack, bundle_id, 0, BASELINE_ENDPOINTS)
        small = [get_ms(stack, "/v1/model-endpoints", args.requests)[0] for _ in range(args.reps)]
        create_endpoints(stack, bundle_id, BASELINE_ENDPOINTS, args.endpoints)
        page, same, whole = [], [], []
        for _ in range(args.reps):
            ms, count = get_ms(stack, "/v1/model-endpoints", args.requests)
            page.append(ms)
            same.append(get_ms(stack, f"/v1/model-endpoints?limit={BASELINE_ENDPOINTS}", args.requests)[0])
            whole_ms, whole_count = get_ms(stack, "/v1/model-endpoints?limit=1000", max(10, args.requests // 10))
            whole.append(whole_ms)
    base = statistics.median(small)
    print(f"machine: {machine()}")
    print(f"| GET /v1/model-endpoints | median of {args.reps} reps (each the median of {args.requests} GETs) "
          "| ratio to the baseline |")
    print("| --- | --- | --- |")
    print(f"| {BASELINE_ENDPOINTS} endpoints, whole list (baseline) | {base:.2f} ms | 1.00 |")
    print(f"| {args.endpoints} endpoints, a page of {BASELINE_ENDPOINTS} (`limit={BASELINE_ENDPOINTS}`) | "
          f"{statistics.median(same):.2f} ms | {statistics.median(same) / base:.2f} |")
    print(f"| {args.endpoints} endpoints, default page ({count} items) | {statistics.median(page):.2f} ms | "
          f"{statistics.median(page) / base:.2f} |")
    print(f"| {args.endpoints} endpoints, `limit=1000` ({whole_count} items) | {statistics.median(whole):.2f} ms | "
          f"{statistics.median(whole) / base:.2f} |")


if __name__ == "__main__":
    main()

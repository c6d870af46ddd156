"""What a replica spends writing a task's result: the result text (workers.protocol.result_json)
and, for a sync waiter, its JSON string literal (protocol.final_record), against what they
cost before (json.dumps, then the literal through the json module), for outputs of the shapes
models return. In-process, one core; each figure the median of --runs timings of --reps reps.

Usage: .venv/bin/python bench/result_encoding.py [--reps 5] [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import machine  # noqa: E402

from workers import protocol  # noqa: E402

OUTPUTS = {
    "1 MB string (identity of the peers' 1 MB body)": {"data": "x" * (1024 * 1024 - 22)},
    "base64 image, 700 KB": {"image": "iVBORw0KGgo" * 65_000, "format": "png"},
    "embedding, 100,000 floats": {"embedding": [i / 7 for i in range(100_000)]},
    "50,000 small objects": [{"label": "cat", "score": i / 50_000} for i in range(50_000)],
    "50,000 small objects with a null each (falls back to json.dumps)": [
        {"label": "cat", "box": None} for _ in range(50_000)
    ],
    "small dict (the 1 KB requests)": {"x": 1, "label": "cat", "scores": [0.1, 0.9]},
}


def before(output) -> bytes:
    """The text and literal as workers.serve wrote them before result_json."""
    text = json.dumps(output)
    return json.dumps(text).encode()


def after(output) -> bytes:
    return protocol.final_record(protocol.SUCCESS, result=protocol.result_json(output))


def median_seconds(function, output, runs: int) -> float:
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        function(output)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def compare(cases: dict, before, after, header: str) -> None:
    """For each case, the median time of `before` and of `after` on it (the two alternate, so
    both see the same machine), printed as a table under `header` (its first line)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    print(f"# {machine()}; median of {args.reps} reps, each the median of {args.runs} timings")
    print(header)
    print("| --- | ---: | ---: | ---: |")
    for label, case in cases.items():
        old, new = [], []
        for _ in range(args.reps):
            old.append(median_seconds(before, case, args.runs))
            new.append(median_seconds(after, case, args.runs))
        old_ms, new_ms = statistics.median(old) * 1000, statistics.median(new) * 1000
        print(f"| {label} | {old_ms:.3f} ms | {new_ms:.3f} ms | {new_ms / old_ms:.2f} |")


def main() -> None:
    compare(OUTPUTS, before, after,
            "| output | before: json.dumps + literal | after: result_json + literal | after / before |")


if __name__ == "__main__":
    main()

"""What the web (a request body) and a replica (a task's payload) spend reading a payload:
protocol.load_json (orjson, checked against what json.loads would read) against what they did
before (decode the bytes, then json.loads), for the inputs of bench/result_encoding.py's
output shapes and one that sends load_json back to json.loads (an integer past 64 bits).
In-process, one core; each figure the median of --runs timings of --reps reps, the two
alternating.

Usage: .venv/bin/python bench/payload_reading.py [--reps 5] [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import machine  # noqa: E402
from result_encoding import OUTPUTS, median_seconds  # noqa: E402

from workers import protocol  # noqa: E402

PAYLOADS = {
    label: json.dumps({"args": output}).encode()
    for label, output in {**OUTPUTS, "10,000 floats and one integer past 64 bits (read twice)":
                          [i / 7 for i in range(10_000)] + [2**64]}.items()
}


def before(payload: bytes):
    return json.loads(payload.decode())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    print(f"# {machine()}; median of {args.reps} reps, each the median of {args.runs} timings")
    print("| payload ({\"args\": ...}) | before: decode + json.loads | after: load_json | after / before |")
    print("| --- | ---: | ---: | ---: |")
    for label, payload in PAYLOADS.items():
        assert protocol.load_json(payload) == before(payload)
        old, new = [], []
        for _ in range(args.reps):
            old.append(median_seconds(before, payload, args.runs))
            new.append(median_seconds(protocol.load_json, payload, args.runs))
        old_ms, new_ms = statistics.median(old) * 1000, statistics.median(new) * 1000
        print(f"| {label} | {old_ms:.3f} ms | {new_ms:.3f} ms | {new_ms / old_ms:.2f} |")


if __name__ == "__main__":
    main()

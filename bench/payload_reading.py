"""What the web (a request body) and a replica (a task's payload) spend reading a payload:
protocol.load_json (orjson, checked against what json.loads would read) against what they did
before (decode the bytes, then json.loads), for the inputs of bench/result_encoding.py's
output shapes and one that sends load_json back to json.loads (an integer past 64 bits).
In-process, one core; each figure the median of --runs timings of --reps reps, the two
alternating.

Usage: .venv/bin/python bench/payload_reading.py [--reps 5] [--runs 30]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_encoding import OUTPUTS, compare  # noqa: E402

from workers import protocol  # noqa: E402

PAYLOADS = {
    label: json.dumps({"args": output}).encode()
    for label, output in {**OUTPUTS, "10,000 floats and one integer past 64 bits (read twice)":
                          [i / 7 for i in range(10_000)] + [2**64]}.items()
}


def before(payload: bytes):
    return json.loads(payload.decode())


def main() -> None:
    for payload in PAYLOADS.values():
        assert protocol.load_json(payload) == before(payload)
    compare(PAYLOADS, before, protocol.load_json,
            '| payload ({"args": ...}) | before: decode + json.loads | after: load_json | after / before |')


if __name__ == "__main__":
    main()

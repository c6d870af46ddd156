"""Two checkouts side by side on the peers' serving figures (ours only): sequential, 8 and 32
connections (identity, and 32 with the 1 ms CPU model), 100 KB and 1 MB bodies; both stacks
up at once, the order alternating each rep, the load generator of bench/peers.py.

Usage: .venv/bin/python bench/compare_serving.py --compare-root PATH [--reps 3]
Prints medians and this checkout's ratio to the other.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import ROOT, Stack, identity_bundle, machine  # noqa: E402
from peers import body_of, cpu_bundle, load  # noqa: E402

PLAN = (
    ("sequential", "identity", {"connections": 1, "count": 1000, "size": 0}),
    ("8 conn", "identity", {"connections": 8, "seconds": 3, "size": 0}),
    ("32 conn", "identity", {"connections": 32, "seconds": 3, "size": 0}),
    ("32 conn, cpu", "cpu", {"connections": 32, "seconds": 3, "size": 0}),
    ("100 KB", "identity", {"connections": 1, "count": 300, "size": 100 * 1024}),
    ("1 MB", "identity", {"connections": 1, "count": 100, "size": 1024 * 1024}),
)


class Target:
    def __init__(self, root: Path):
        self.root = root
        self.stack = Stack(root=root).__enter__()
        self.auth = "Authorization: Basic " + base64.b64encode(f"{self.stack.key}:".encode()).decode() + "\r\n"
        self.endpoints = {
            "identity": self.stack.endpoint(self.stack.bundle(identity_bundle(), "identity"), "identity"),
            "cpu": self.stack.endpoint(self.stack.bundle(cpu_bundle(), "cpu"), "cpu"),
        }

    def request(self, model: str, body: bytes) -> bytes:
        return (f"POST /v1/sync-tasks?model_endpoint_id={self.endpoints[model]} HTTP/1.1\r\nHost: x\r\n{self.auth}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--compare-root", type=Path, required=True)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    targets: list[Target] = []
    results: dict[tuple[str, Path], list[dict]] = {}
    try:
        for root in (ROOT, args.compare_root.resolve()):
            targets.append(Target(root))
        for target in targets:  # warm-up: connections, caches, lazy imports
            for model in ("identity", "cpu"):
                load(target.stack.port, target.request(model, body_of(0)), connections=8, count=50)
        for rep in range(args.reps):
            for label, model, how in PLAN:
                for target in targets if rep % 2 == 0 else targets[::-1]:
                    figure = load(target.stack.port, target.request(model, body_of(how["size"])),
                                  connections=how["connections"], seconds=how.get("seconds"), count=how.get("count"))
                    results.setdefault((label, target.root), []).append(figure)
                    print(f"rep {rep + 1} {label:14} {target.root}: {figure['rps']:7.0f}/s p50 {figure['p50']:6.2f} "
                          f"p99 {figure['p99']:6.2f} ms errors {figure['errors']}", file=sys.stderr)
    finally:
        for target in targets:
            target.stack.__exit__(None, None, None)
    ours, other = (target.root for target in targets)
    print(f"machine: {machine()}; median of {args.reps} reps")
    print(f"| figure | this checkout | {other} | ratio |\n| --- | --- | --- | --- |")
    for label, _, _ in PLAN:
        for key, unit in (("rps", "/s"), ("p50", " ms"), ("p99", " ms")):
            mine = statistics.median(f[key] for f in results[(label, ours)])
            theirs = statistics.median(f[key] for f in results[(label, other)])
            print(f"| {label}: {key} | {mine:.2f}{unit} | {theirs:.2f}{unit} | {mine / theirs:.2f} |")


if __name__ == "__main__":
    main()

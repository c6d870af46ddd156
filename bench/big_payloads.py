"""Sync requests with large JSON bodies (1 KB, 100 KB, 1 MB) to an identity model, through
`POST /v1/sync-tasks` of an embedded stack, with bench/peers.py's client (one keep-alive
connection, closed loop). Reports p50 per size and the CPU time each part of the stack used
per request (web workers, replica, Redis), which the machine's other load moves less than a
latency.

Usage:
  .venv/bin/python bench/big_payloads.py [--reps 3] [--compare-root PATH ...]
  .venv/bin/python bench/big_payloads.py --profile DIR [--size 1048576] [--seconds 15]
  .venv/bin/python bench/big_payloads.py --phases [--size 1048576] [--compare-root PATH ...]
  .venv/bin/python bench/big_payloads.py --memory 1000 [--reps 3] [--size 1048576] [--compare-root PATH ...]
                                         [--json PATH]

--compare-root (repeatable): also start the stacks of other checkouts and alternate all of them
within each rep (same machine load), printing each one's ratio to the last one given. --profile: py-spy (`record -f raw`,
PY_SPY or /tmp/pyspyt/bin/py-spy, samples of the thread holding the GIL) on the web workers and the replica while one size runs;
the raw files go to DIR, with the top functions by own samples printed. --memory N: N sync
requests of --size in a row to each checkout's stack, --reps times, with Redis's memory (INFO
used_memory) and its keys by kind before, right after the last answer and once it is back at
its size before (target: within a minute), and what its append-only file grows by per request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Figure, table, write_json  # noqa: E402
from _stack import ROOT, Stack, identity_bundle, is_web_worker, machine  # noqa: E402
from peers import _read_response, body_of, descendants, load  # noqa: E402

SIZES = ((1024, "1 KB"), (100 * 1024, "100 KB"), (1024 * 1024, "1 MB"))
# Target (issue 14): Redis back to its starting size within a minute of the last answer.
RELEASE_TARGET_SECONDS = 60
RELEASE_SLACK_MB = 1
PARTS = ("web", "replica", "redis")
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Target:
    """One stack with an identity endpoint, and the raw HTTP request for a body."""

    def __init__(self, root: Path):
        self.root = root

    def __enter__(self) -> Target:
        self.stack = Stack(root=self.root).__enter__()
        self.endpoint = self.stack.endpoint(self.stack.bundle(identity_bundle(), "identity"), "identity")
        self.auth = base64.b64encode(f"{self.stack.key}:".encode()).decode()
        return self

    def __exit__(self, *exc) -> None:
        self.stack.__exit__(*exc)

    def request(self, body: bytes) -> bytes:
        return (
            f"POST /v1/sync-tasks?model_endpoint_id={self.endpoint} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Basic {self.auth}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def processes(self) -> dict[str, list[int]]:
        """The stack's processes by part: web, replica (workers.serve), redis."""
        parts: dict[str, list[int]] = collections.defaultdict(list)
        for pid in descendants(self.stack.process.pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if is_web_worker(cmd):
                parts["web"].append(pid)
            elif b"workers.serve" in cmd:
                parts["replica"].append(pid)
            elif b"redis-server" in cmd:
                parts["redis"].append(pid)
        return parts

    def phases(self, request: bytes) -> tuple[float, ...]:
        """One request on a connection of its own: (client send -> queued, queued -> started,
        the run, finished -> the client's last byte, total), seconds."""

        async def send() -> tuple[float, float, int]:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.stack.port, limit=2**24)
            sent = time.time()
            writer.write(request)
            status = await _read_response(reader)
            received = time.time()
            writer.close()
            return sent, received, status

        sent, received, status = asyncio.run(send())
        if status != 200:
            raise RuntimeError(f"{status} from {self.root}")
        client, prefix = self.stack.redis(), f"launch:ep:{self.endpoint}:"
        task_id = client.lindex(prefix + "history", 0).decode()
        created, started, finished = (float(value) for value in client.hmget(
            prefix + "task:" + task_id, "created_at", "started_at", "finished_at"))
        return created - sent, started - created, finished - started, received - finished, received - sent

    def rss_mb(self) -> dict[str, float]:
        """Resident memory (MB) of each part, summed over its processes."""
        rss: dict[str, float] = collections.defaultdict(float)
        for part, pids in self.processes().items():
            for pid in pids:
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                rss[part] += int(status.split("VmRSS:")[1].split()[0]) / 1024
        return rss

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) and minor page faults so far, by part (`<part>`,
        `<part>_faults`)."""
        used: dict[str, float] = collections.defaultdict(float)
        for part, pids in self.processes().items():
            for pid in pids:
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                used[part] += (int(fields[11]) + int(fields[12])) / CLK_TCK
                used[f"{part}_faults"] += int(fields[7])
        return used


def measure(target: Target, size: int, count: int) -> dict:
    request = target.request(body_of(size))
    before = target.cpu()
    figures = load(target.stack.port, request, connections=1, count=count)
    after = target.cpu()
    if figures["errors"]:
        raise RuntimeError(f"{figures['errors']} non-200 answers from {target.root}")
    for part in ("web", "replica", "redis"):
        figures[f"{part}_cpu_ms"] = (after[part] - before[part]) * 1000 / count
        figures[f"{part}_faults"] = (after[f"{part}_faults"] - before[f"{part}_faults"]) / count
    return figures


def count_for(size: int, scale: float) -> int:
    return max(10, int((60 if size >= 1024 * 1024 else 300) * scale))


def compare(args) -> None:
    sizes = [(size, label) for size, label in SIZES if not args.sizes or label in args.sizes.split(",")]
    roots = [ROOT] + [Path(root).resolve() for root in args.compare_root]
    names = [root.name for root in roots]
    results: dict[tuple[int, str], list[dict]] = collections.defaultdict(list)
    with contextlib.ExitStack() as stack:
        targets = [stack.enter_context(Target(root)) for root in roots]
        for target in targets:  # warm-up: first requests load code and open pools
            for size, _ in SIZES:
                measure(target, size, 10)
        for rep in range(args.reps):
            for size, label in sizes:
                order = list(enumerate(targets))
                if rep % 2:
                    order.reverse()  # no stack always goes first
                for index, target in order:
                    results[(index, label)].append(measure(target, size, count_for(size, args.scale)))
        memory = [target.rss_mb() for target in targets]
    print(f"# {machine()}; {args.reps} rep(s), median shown; 1 connection; ratios: each checkout / the last")
    for index, name in enumerate(names):
        print(f"# [{index}] {name}: {roots[index]}")
    print("| body | checkout | p50 | ratio | ratio per rep | CPU ms web/replica/redis | minor faults web/replica/redis |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    last = len(roots) - 1
    for _, label in sizes:
        for index in range(len(roots)):
            runs, base = results[(index, label)], results[(last, label)]
            p50 = statistics.median(r["p50"] for r in runs)
            ratio = p50 / statistics.median(r["p50"] for r in base)
            per_rep = ", ".join(f"{a['p50'] / b['p50']:.2f}" for a, b in zip(runs, base, strict=True))
            cpu = "/".join(f"{statistics.median(r[f'{p}_cpu_ms'] for r in runs):.2f}" for p in PARTS)
            faults = "/".join(f"{statistics.median(r[f'{p}_faults'] for r in runs):.0f}" for p in PARTS)
            print(f"| {label} | [{index}] | {p50:.2f} ms | {ratio:.2f} | {per_rep} | {cpu} | {faults} |")
    for index, rss in enumerate(memory):
        print(f"# [{index}] RSS after the runs, MB: " + ", ".join(f"{p} {rss[p]:.0f}" for p in PARTS))


def phases(args) -> None:
    """Where a request's time goes, from its task hash's timestamps (created_at: queued by the
    web process; started_at, finished_at: the replica's marks) and the client's clock."""
    roots = [ROOT] + [Path(root).resolve() for root in args.compare_root]
    names = ("submit", "queue->start", "run", "finish->client", "total")
    rows: dict[int, list[tuple[float, ...]]] = collections.defaultdict(list)
    with contextlib.ExitStack() as stack:
        targets = [stack.enter_context(Target(root)) for root in roots]
        for _ in range(25):
            for index, target in enumerate(targets):
                rows[index].append(target.phases(target.request(body_of(args.size))))
    for index, root in enumerate(roots):
        medians = [statistics.median(column) * 1000 for column in zip(*rows[index][5:], strict=True)]
        print(f"{root}: " + " | ".join(f"{name} {value:.1f} ms" for name, value in zip(names, medians, strict=True)))


def redis_memory(target: Target) -> str:
    """Redis's used memory (MB) and its keys of the endpoint, counted by kind (`task`, `done`, ...)."""
    client, prefix = target.stack.redis(), f"launch:ep:{target.endpoint}:"
    kinds = collections.Counter(key[len(prefix):].split(b":")[0].decode() for key in client.scan_iter(prefix + "*"))
    used = client.info("memory")["used_memory"] / 2**20
    return f"{used:.1f} MB, keys: " + (", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())) or "none")


def used_mb(target: Target) -> float:
    return target.stack.redis().info("memory")["used_memory"] / 2**20


def memory(args) -> None:
    """Whether Redis lets go of large sync requests once they are answered: per rep, --memory
    requests in a row, then Redis's used memory polled until it is back at its size before them
    (within RELEASE_SLACK_MB) or RELEASE_TARGET_SECONDS have passed."""
    roots = [ROOT] + [Path(root).resolve() for root in args.compare_root]
    runs: dict[Path, list[dict]] = {root: [] for root in roots}
    with contextlib.ExitStack() as stack:
        targets = [stack.enter_context(Target(root)) for root in roots]
        for target in targets:
            request = target.request(body_of(args.size))
            load(target.stack.port, request, connections=1, count=5)
            client = target.stack.redis()
            # What the append-only file gets per request: its size over a few requests (few, so
            # that no rewrite, which shrinks it, falls between the two readings).
            aof_start = client.info("persistence")["aof_current_size"]
            load(target.stack.port, request, connections=1, count=10)
            aof_per_request = (client.info("persistence")["aof_current_size"] - aof_start) / 10 / 2**20
            print(f"{target.root}: append-only file +{aof_per_request:.2f} MB per request")
        for rep in range(args.reps):
            for target in targets:
                before, before_keys = used_mb(target), redis_memory(target)
                figures = load(target.stack.port, target.request(body_of(args.size)), connections=1,
                               count=args.memory)
                answered = time.perf_counter()
                after, after_keys = used_mb(target), redis_memory(target)
                while used_mb(target) > before + RELEASE_SLACK_MB:
                    if time.perf_counter() - answered > RELEASE_TARGET_SECONDS:
                        back = math.inf
                        break
                    time.sleep(0.1)
                else:
                    back = time.perf_counter() - answered
                runs[target.root].append({"before": before, "after": after, "back": back})
                print(f"rep {rep + 1} {target.root}: {args.memory} requests of {args.size} bytes "
                      f"(p50 {figures['p50']:.1f} ms, {figures['errors']} errors); Redis before: {before_keys}; "
                      f"right after: {after_keys}; back to its size before after {back:.2f} s: {redis_memory(target)}")
    mine = runs[ROOT]
    sent = f"Redis used memory, {args.memory:,} sync requests of {args.size / 2**20:g} MB"
    figures = [
        Figure(f"{sent}: right after the last answer", [r["after"] for r in mine], "MB",
               "before them (same run)", statistics.median(r["before"] for r in mine)),
        Figure(f"{sent}: seconds until back to its size before (+{RELEASE_SLACK_MB:g} MB)",
               [r["back"] for r in mine], "s", f"target {RELEASE_TARGET_SECONDS:g} s", RELEASE_TARGET_SECONDS,
               "<= 1"),
    ]
    print(table(figures))
    if args.json:
        write_json(args.json, figures)


def profile(args) -> None:
    py_spy = os.environ.get("PY_SPY", "/tmp/pyspyt/bin/py-spy")
    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    with Target(ROOT) as target:
        request = target.request(body_of(args.size))
        load(target.stack.port, request, connections=1, count=10)
        parts = target.processes()
        recorders = []
        for part in ("web", "replica"):
            for pid in parts[part]:
                raw = out / f"{part}-{pid}.txt"
                recorders.append((raw, subprocess.Popen(
                    [py_spy, "record", "-f", "raw", "--gil", "-r", "500", "-d", str(int(args.seconds)), "-p", str(pid),
                     "-o", str(raw), "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )))
        time.sleep(1)
        before = target.cpu()
        figures = load(target.stack.port, request, connections=1, seconds=args.seconds - 2)
        after = target.cpu()
        for _, recorder in recorders:
            recorder.wait()
    count = figures["rps"] * (args.seconds - 2)
    print(f"p50 {figures['p50']:.2f} ms, {figures['rps']:.1f} req/s; per request: " + ", ".join(
        f"{p} {(after[p] - before[p]) * 1000 / count:.2f} ms CPU, {(after[p + '_faults'] - before[p + '_faults']) / count:.0f}"
        " minor faults" for p in ("web", "replica", "redis")))
    for raw, _ in recorders:
        if raw.exists() and raw.stat().st_size:
            print(f"\n== {raw.name}")
            print(top_functions(raw))


def top_functions(raw: Path, limit: int = 25) -> str:
    """The functions with the most samples of their own (the stack's leaf), and their share."""
    own: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack:
            continue
        n = int(samples)
        total += n
        own[stack.split(";")[-1]] += n
    return "\n".join(f"{n / total:6.1%}  {frame}" for frame, n in own.most_common(limit))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="requests per measure, times this")
    parser.add_argument("--compare-root", action="append", default=[],
                        help="another checkout to alternate with (repeatable; ratios are to the last)")
    parser.add_argument("--profile")
    parser.add_argument("--phases", action="store_true", help="where a request of --size spends its time")
    parser.add_argument("--sizes", help="only these, e.g. '1 KB,1 MB'")
    parser.add_argument("--memory", type=int, help="N sync requests of --size, Redis memory before and after")
    parser.add_argument("--size", type=int, default=1024 * 1024)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--json", help="with --memory: also write its figures here (for bench/figures.py)")
    args = parser.parse_args()
    if args.profile:
        profile(args)
    elif args.phases:
        phases(args)
    elif args.memory:
        memory(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()

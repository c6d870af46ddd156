"""A replica process on its own (`python -m workers.serve`, an identity bundle, one worker
thread) against a Redis of this run's own: its memory (RSS / PSS from /proc/<pid>/smaps_rollup)
idle after loading its bundle and after serving tasks, and its CPU time per task (all its
threads, from /proc/<pid>/task/*/schedstat) for 1 KB and 1 MB payloads. Tasks are queued the
way the gateway queues a sync request (protocol.add_task, a waiter's `sync` flag) and waited
for on their done list, one at a time (closed loop), from this process.

Each rep starts a fresh replica from each checkout; checkouts alternate within each size of
each rep (same machine load), and the table gives medians over reps with each checkout's ratio
to the first one (this checkout).

Usage: .venv/bin/python bench/replica_cost.py [--reps 3] [--tasks 2000] [--big-tasks 200]
       [--compare-root OTHER_CHECKOUT ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import cloudpickle
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from launch_site.embedded_redis import start_embedded_redis, stop_process  # noqa: E402
from workers import protocol  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import identity_bundle, machine  # noqa: E402


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    fields = dict(line.split(":", 1) for line in text.splitlines()[1:] if ":" in line)
    return int(fields["Rss"].split()[0]) / 1024, int(fields["Pss"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    """CPU time of all the process's threads so far (nanoseconds in schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            pass  # a thread that just ended
    return total / 1e9


class Replica:
    def __init__(self, root: Path, redis_url: str, bundle_url: str, log_dir: Path):
        self.prefix = f"launch:ep:end_bench{uuid.uuid4().hex[:8]}:"
        self.keys = protocol.Keys(self.prefix)
        self.replica_id = f"rep_{uuid.uuid4().hex[:8]}"
        env = {
            **os.environ, "PYTHONPATH": str(root), "LAUNCH_REDIS_URL": redis_url, "LAUNCH_PREFIX": self.prefix,
            "LAUNCH_REPLICA_ID": self.replica_id, "LAUNCH_BUNDLE_URL": bundle_url,
            "LAUNCH_BUNDLE_CONFIG": json.dumps({"packaging_type": "cloudpickle"}),
        }
        self.log = open(log_dir / f"{self.replica_id}.log", "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "workers.serve"], cwd=root, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, client: redis.Redis) -> None:
        deadline = time.monotonic() + 60
        while client.hget(self.keys.replica(self.replica_id), "state") != b"ready":
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"replica did not get ready; see {self.log.name}")
            time.sleep(0.05)

    def serve(self, client: redis.Redis, value: str, count: int) -> float:
        """CPU seconds of the replica per task over `count` tasks, one at a time."""
        payload = json.dumps({"args": {"x": value}})
        before = cpu_seconds(self.process.pid)
        for _ in range(count):
            task_id = protocol.task_id_for("end_bench", uuid.uuid4().hex)
            with client.pipeline(transaction=False) as pipe:
                protocol.add_task(pipe, self.keys, task_id, payload, ttl_seconds=60, now=time.time(),
                                  extra={"sync": "1"})
                protocol.wait_final(pipe, self.keys, task_id, timeout_seconds=30)
                answer = pipe.execute()[-1]
            if answer is None:
                raise RuntimeError(f"no answer; see {self.log.name}")
        return (cpu_seconds(self.process.pid) - before) / count

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=2000, help="1 KB tasks per rep")
    parser.add_argument("--big-tasks", type=int, default=200, help="1 MB tasks per rep")
    parser.add_argument("--compare-root", action="append", default=[], type=Path)
    args = parser.parse_args()
    roots = [ROOT] + [root.resolve() for root in args.compare_root]
    directory = Path(tempfile.mkdtemp(prefix="launch-bench-"))  # short: a unix socket's path
    process, url = start_embedded_redis(directory, persist=False)
    bundle = directory / "identity.pkl"
    bundle.write_bytes(cloudpickle.dumps(identity_bundle()))
    client = redis.Redis.from_url(url)
    figures: dict[Path, dict[str, list[float]]] = {root: {} for root in roots}

    def note(root: Path, name: str, value: float) -> None:
        figures[root].setdefault(name, []).append(value)

    try:
        for rep in range(args.reps):
            order = roots if rep % 2 == 0 else roots[::-1]
            replicas = {root: Replica(root, url, f"file://{bundle}", directory) for root in order}
            for root in order:
                replicas[root].wait_ready(client)
            time.sleep(1)
            for root in order:
                rss, pss = memory_mb(replicas[root].process.pid)
                note(root, "idle RSS", rss)
                note(root, "idle PSS", pss)
            for size, count, name in ((1024, args.tasks, "1 KB"), (1024 * 1024, args.big_tasks, "1 MB")):
                value = "x" * size
                for root in order:
                    note(root, f"CPU ms per task, {name}", 1000 * replicas[root].serve(client, value, count))
                for root in order:
                    rss, pss = memory_mb(replicas[root].process.pid)
                    note(root, f"RSS after {name} tasks", rss)
                    note(root, f"PSS after {name} tasks", pss)
            for replica in replicas.values():
                replica.stop()
            print(f"rep {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
    finally:
        stop_process(process)
        shutil.rmtree(directory, ignore_errors=True)

    print(f"{machine()}; {args.reps} reps, {args.tasks} tasks of 1 KB and {args.big_tasks} of 1 MB per rep\n")
    names = list(figures[ROOT])
    header = ["figure (median)"] + [str(root) for root in roots]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for name in names:
        base = statistics.median(figures[ROOT][name])
        cells = []
        for root in roots:
            median = statistics.median(figures[root][name])
            ratio = f" ({median / base:.2f})" if root != ROOT else ""
            cells.append(f"{median:.3f}{ratio}" if "CPU" in name else f"{median:.1f}{ratio}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nall reps:", json.dumps({str(root): figures[root] for root in roots}))


if __name__ == "__main__":
    main()

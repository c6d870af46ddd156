"""Memory of the embedded stack (`launch up`: supervisor, web server, controller, Redis, one
replica) serving one sync identity endpoint, by process role, and what the web worker count
buys (issue 14, item 5): for each `--web-workers` value, RSS/PSS by role after a load (and in
total right after start-up, as bench/peers.py reads it), and requests/s with p99 at 8 and 32
keep-alive connections.

Configurations alternate within each rep (the machine's load moves between minutes); the table
gives medians over reps. The baseline is the first --workers value, measured in the same run.

Usage: .venv/bin/python bench/stack_memory.py [--workers 1 2] [--reps 3] [--seconds 4]
       [--compare-root OTHER_CHECKOUT]   (also each --workers value on another checkout's stack)
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import ROOT, Stack, identity_bundle, is_web_worker, machine  # noqa: E402
from peers import descendants, load  # noqa: E402

ROLES = ("supervisor", "web workers", "controller", "redis", "replica")


def role_of(pid: int, root: int, cmd: str) -> str | None:
    # The pid started as `manage.py launch up` (it exec()s `python -m launch_site.supervisor`).
    if pid == root:
        return "supervisor"
    if is_web_worker(cmd):
        return "web workers"
    if "manage.py controller" in cmd:
        return "controller"
    if "redis-server" in cmd:
        return "redis"
    if "workers.serve" in cmd or "workers/serve" in cmd:
        return "replica"
    return None


def roles_of(root: int) -> dict[int, str]:
    """{pid: role} of the stack's processes (replicas may be re-parented to the supervisor's
    session, so they are looked for among its descendants)."""
    commands = {}
    for pid in descendants(root):
        try:
            commands[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    found = {pid: role_of(pid, root, cmd) for pid, cmd in commands.items()}
    return {pid: role for pid, role in found.items() if role is not None}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_with_cpu(root: int, port: int, request: bytes, connections: int, seconds: float) -> dict:
    """load()'s figures, and the share of one core each role used meanwhile ("cpu": {role: %}),
    the load generator (this process) included: where the machine's two cores went."""
    roles = roles_of(root)
    before = {pid: cpu_seconds(pid) for pid in roles}
    started, client_before = time.monotonic(), time.process_time()
    out = load(port, request, connections=connections, seconds=seconds)
    elapsed = time.monotonic() - started
    cpu = {role: 0.0 for role in ROLES}
    for pid, role in roles.items():
        try:
            cpu[role] += (cpu_seconds(pid) - before[pid]) / elapsed * 100
        except OSError:
            continue
    cpu["load generator"] = (time.process_time() - client_before) / elapsed * 100
    out["cpu"] = cpu
    return out


def memory_by_role(root: int) -> dict[str, tuple[float, float]]:
    """{role: (RSS MB, PSS MB)} of the stack's processes."""
    found: dict[str, list[float]] = {role: [0.0, 0.0] for role in ROLES}
    for pid, role in roles_of(root).items():
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines()[1:] if ":" in line)
        found[role][0] += int(fields["Rss"].split()[0]) / 1024
        found[role][1] += int(fields.get("Pss", "0 kB").split()[0]) / 1024
    return {role: (rss, pss) for role, (rss, pss) in found.items()}


def measure(root: Path, workers: int, seconds: float) -> dict:
    with Stack(root=root, args=("--web-workers", str(workers))) as stack:
        endpoint_id = stack.endpoint(stack.bundle(identity_bundle(), "identity"), "identity")
        auth = base64.b64encode(f"{stack.key}:".encode()).decode()
        body = b'{"args": {"x": 1}}'
        request = (
            f"POST /v1/sync-tasks?model_endpoint_id={endpoint_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        time.sleep(1)
        started = memory_by_role(stack.process.pid)  # what bench/peers.py reads: after start-up, before load
        load(stack.port, request, connections=8, count=50)  # warm-up
        out = {f"{c} conn": load_with_cpu(stack.process.pid, stack.port, request, c, seconds) for c in (8, 32)}
        time.sleep(1)
        out["memory"] = memory_by_role(stack.process.pid)
        out["memory after start-up"] = started
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--compare-root", type=Path)
    args = parser.parse_args()
    configs = [(ROOT, w) for w in args.workers] + [(args.compare_root, w) for w in args.workers if args.compare_root]
    runs: dict[tuple, list[dict]] = {c: [] for c in configs}
    for rep in range(args.reps):
        for config in configs if rep % 2 == 0 else list(reversed(configs)):
            result = measure(*config, args.seconds)
            runs[config].append(result)
            print(f"rep {rep + 1}, {config[0]}, {config[1]} web workers: 8 conn {result['8 conn']['rps']:.0f}/s, 32 conn "
                  f"{result['32 conn']['rps']:.0f}/s, errors {result['8 conn']['errors'] + result['32 conn']['errors']}; "
                  + ", ".join(f"{role} {rss:.0f}" for role, (rss, _) in result["memory"].items()), file=sys.stderr)

    def med(config, pick) -> float:
        return statistics.median(pick(r) for r in runs[config])

    def label(config) -> str:
        root, workers = config
        where = "" if root == ROOT else f" ({root})"
        return f"{workers} web worker{'s' if workers > 1 else ''}{where}"

    base = configs[0]
    print(f"machine: {machine()}")
    print("| figure | " + " | ".join(label(c) for c in configs) + " |")
    print("| --- |" + " --- |" * len(configs))
    for role in ROLES:
        cells = [f"{med(c, lambda r, role=role: r['memory'][role][0]):.0f} / {med(c, lambda r, role=role: r['memory'][role][1]):.0f}"
                 for c in configs]
        print(f"| {role}: RSS / PSS MB | " + " | ".join(cells) + " |")
    totals = [(med(c, lambda r: sum(v[0] for v in r["memory"].values())),
               med(c, lambda r: sum(v[1] for v in r["memory"].values()))) for c in configs]
    print("| whole stack: RSS / PSS MB | " + " | ".join(f"{rss:.0f} / {pss:.0f}" for rss, pss in totals) + " |")
    for what, roles in (("web workers", ("web workers",)), ("whole stack", ROLES)):
        cells = [f"{med(c, lambda r, roles=roles: sum(r['memory after start-up'][role][0] for role in roles)):.0f} / "
                 f"{med(c, lambda r, roles=roles: sum(r['memory after start-up'][role][1] for role in roles)):.0f}"
                 for c in configs]
        print(f"| {what} after start-up, before the load: RSS / PSS MB | " + " | ".join(cells) + " |")
    for conn in ("8 conn", "32 conn"):
        rps = [med(c, lambda r, conn=conn: r[conn]["rps"]) for c in configs]
        p99 = [med(c, lambda r, conn=conn: r[conn]["p99"]) for c in configs]
        print(f"| {conn}: requests/s (ratio to {label(base)}) | " + " | ".join(f"{x:.0f} ({x / rps[0]:.2f})" for x in rps) + " |")
        print(f"| {conn}: p99 ms | " + " | ".join(f"{x:.1f}" for x in p99) + " |")
        for role in (*ROLES[1:4], "redis", "replica", "load generator"):
            cells = [f"{med(c, lambda r, conn=conn, role=role: r[conn]['cpu'][role]):.0f} %" for c in configs]
            print(f"| {conn}: CPU of {role} (% of a core) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

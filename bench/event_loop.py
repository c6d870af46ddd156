"""What granian's ASGI bridge costs per request under each event loop, with an app that does
nothing (so the figure is the server's and the loop's, not ours): sequential p50, the server's
CPU per request (/proc), and requests/s at 8 connections, for asyncio's loop and uvloop, with
the RSGI interface alongside for scale. Alternating, median of --reps.

Usage: .venv/bin/python bench/event_loop.py [--reps 3] [--requests 5000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import free_port, machine  # noqa: E402
from peers import descendants, load  # noqa: E402

APP = '''
async def asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"result": "1"}'})


class RSGI:
    async def __rsgi__(self, scope, protocol):
        await protocol()
        protocol.response_bytes(200, [("content-type", "application/json")], b'{"result": "1"}')


rsgi = RSGI()
'''

CONFIGS = (("asgi", "asyncio"), ("asgi", "uvloop"), ("rsgi", "asyncio"), ("rsgi", "uvloop"))


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    (folder / "app.py").write_text(APP)
    servers = {}
    try:
        for interface, loop in CONFIGS:
            port = free_port()
            servers[(interface, loop)] = port, subprocess.Popen(
                [str(Path(sys.executable).parent / "granian"), "--interface", interface, "--port", str(port),
                 "--workers", "1", "--loop", loop, "--log-level", "error", f"app:{interface}"],
                cwd=folder, start_new_session=True,
            )
        time.sleep(3)
        request = b'POST /x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 18\r\n\r\n{"args": {"x": 1}}'
        figures: dict[tuple, list[tuple[float, float, float]]] = {config: [] for config in CONFIGS}
        for port, _ in servers.values():
            load(port, request, connections=1, count=500)
        for rep in range(args.reps):
            for config in (CONFIGS if rep % 2 == 0 else CONFIGS[::-1]):
                port, process = servers[config]
                pids = [process.pid, *descendants(process.pid)]
                before = cpu_seconds(pids)
                sequential = load(port, request, connections=1, count=args.requests)
                cpu = (cpu_seconds(pids) - before) * 1000 / args.requests
                parallel = load(port, request, connections=8, seconds=3)
                figures[config].append((sequential["p50"], cpu, parallel["rps"]))
    finally:
        for _, process in servers.values():
            os.killpg(process.pid, 15)
            process.wait()
    print(f"machine: {machine()}; granian, 1 worker, an app that answers at once; median of {args.reps} reps")
    print("| interface, loop | sequential p50 | server CPU per request | requests/s at 8 connections |")
    print("| --- | --- | --- | --- |")
    for config in CONFIGS:
        p50, cpu, rps = (statistics.median(f[i] for f in figures[config]) for i in range(3))
        print(f"| {config[0]}, {config[1]} | {p50:.3f} ms | {cpu:.3f} ms | {rps:.0f} |")


if __name__ == "__main__":
    main()

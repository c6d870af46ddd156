"""The task routes' Redis round trip from the event loop: a sync task's pipeline (the rate
count, protocol.ADD_TASK_SCRIPT's EVAL, the BLPOP of its answer, here answered by the script
itself) through redis.asyncio's pipeline and through launch_site.redis_pipelines, alternating;
the caller's CPU and wall time per round trip, median of --reps. Runs against REDIS_URL
(default: an embedded redis-server of its own, as `launch up` runs); keys under
bench:round-trip:*, removed after.

Usage: .venv/bin/python bench/redis_round_trip.py [--reps 5] [--count 2000] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _stack import machine  # noqa: E402

# The script's shape: a hash, its TTL, a queue push; and the answer the BLPOP reads.
SCRIPT = """
redis.call('HSET', KEYS[1], 'status', 'PENDING', 'payload', ARGV[1])
redis.call('EXPIRE', KEYS[1], 60)
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], 60)
return 1
"""


async def measure(url: str, reps: int, count: int) -> dict[str, list[tuple[float, float]]]:
    import redis.asyncio

    from launch_site.redis_pipelines import PipelinePool

    client = redis.asyncio.Redis.from_url(url)
    pool = PipelinePool(url, connect_timeout=5, timeout=10)
    payload = '{"args": {"x": 1}}'

    def keys() -> tuple[str, str]:
        name = f"bench:round-trip:{uuid.uuid4().hex}"
        return name, f"{name}:done"

    async def through_redis_py():
        task, done = keys()
        async with client.pipeline(transaction=False) as pipe:
            pipe.incr("bench:round-trip:count")
            pipe.eval(SCRIPT, 2, task, done, payload)
            pipe.blpop([done], timeout=5)
            return await pipe.execute()

    async def through_ours():
        task, done = keys()
        pipe = pool.pipeline()
        pipe.incr("bench:round-trip:count")
        pipe.eval(SCRIPT, 2, task, done, payload)
        pipe.blpop([done], timeout=5)
        return await pool.execute(pipe)

    ways = {"redis.asyncio pipeline": through_redis_py, "launch_site.redis_pipelines": through_ours}
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for way in ways.values():
        for _ in range(200):
            await way()
    for rep in range(reps):
        for name in (list(ways) if rep % 2 == 0 else list(ways)[::-1]):
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(count):
                await ways[name]()
            figures[name].append(((time.process_time() - cpu) / count * 1000, (time.perf_counter() - wall) / count * 1000))
    async for key in client.scan_iter("bench:round-trip:*"):
        await client.delete(key)
    await client.aclose()
    pool.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--uvloop", action="store_true", help="under uvloop, as the web workers run")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "launch_site.settings")
    url, server = os.environ.get("REDIS_URL"), None
    if not url:
        from launch_site.embedded_redis import start_embedded_redis, stop_process

        server, url = start_embedded_redis(Path(tempfile.mkdtemp(prefix="bench-round-trip-")), persist=False)
    try:
        if args.uvloop:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        figures = asyncio.run(measure(url, args.reps, args.count))
    finally:
        if server is not None:
            stop_process(server)
    print(f"machine: {machine()}; {'uvloop' if args.uvloop else 'asyncio'}; median of {args.reps} reps x {args.count}")
    print("| client | caller CPU per round trip | wall per round trip |")
    print("| --- | --- | --- |")
    for name, values in figures.items():
        cpu, wall = (statistics.median(v[i] for v in values) for i in range(2))
        print(f"| {name} | {cpu:.3f} ms | {wall:.3f} ms |")


if __name__ == "__main__":
    main()

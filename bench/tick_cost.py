"""The controller tick's cost with many idle endpoints.

Creates N async endpoints at min_workers 0 with no traffic (default 200) and times the
controller's `tick()` in this process: wall time (median of --ticks ticks after a warm-up),
CPU time of this process per tick and per endpoint, SQL queries and Redis commands per tick,
and the embedded Redis's own CPU per tick. Baselines from the same run: one trivial ORM
query, and the tick with no endpoint at all. With --profile, a cProfile of the ticks (top 15
by cumulative time).

Django is set up here with a temporary LAUNCH_HOME: SQLite there and an embedded Redis,
unless DATABASE_URL / REDIS_URL are given (then use empty ones: endpoints are created there).

--reps: times the ticks that many times (each figure the median of --ticks ticks), then
gives the median over reps. Target (issue 14): 200 idle endpoints cost the controller under 5%
of one core, i.e. the tick's CPU over the tick period (TICK_SECONDS).

Usage: .venv/bin/python bench/tick_cost.py [--endpoints 200] [--ticks 20] [--reps 1] [--profile]
                                          [--tick workers.controller] [--json PATH]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Figure, table, write_json  # noqa: E402
from _stack import ROOT, machine  # noqa: E402

TARGET_SHARE_OF_A_CORE = 5.0  # percent


def setup_django(home: Path):
    """Django on a temporary LAUNCH_HOME; the embedded Redis unless REDIS_URL is set."""
    os.environ["LAUNCH_HOME"] = str(home)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "launch_site.settings")
    sys.path.insert(0, str(ROOT))
    redis_process = None
    if not os.environ.get("REDIS_URL"):
        from launch_site.embedded_redis import start_embedded_redis

        redis_process, _ = start_embedded_redis(home, persist=False)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return redis_process


def import_tick(module: str):
    """workers.tick.tick where it exists (the tick moved there from workers.controller)."""
    import importlib

    candidates = ["workers.tick", "workers.controller"] if module == "auto" else [module]
    for name in candidates:
        try:
            return importlib.import_module(name).tick
        except (ImportError, AttributeError):
            continue
    raise SystemExit(f"no tick() in {', '.join(candidates)}")


class Counters:
    """SQL queries (a connection execute wrapper) and Redis commands and CPU (INFO) of a span."""

    def __init__(self):
        from django.db import connection

        from launch_site.redis_client import get_redis

        self.connection = connection
        self.redis = get_redis()
        self.queries = 0

    def _count(self, execute, sql, params, many, context):
        self.queries += 1
        return execute(sql, params, many, context)

    def redis_state(self) -> tuple[int, float]:
        stats, cpu = self.redis.info("stats"), self.redis.info("cpu")
        return int(stats["total_commands_processed"]), float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def time_ticks(tick, ticks: int, warmup: int = 3, profile: cProfile.Profile | None = None) -> dict:
    counters = Counters()
    for _ in range(warmup):
        tick()
    walls, cpus = [], []
    commands_before, redis_cpu_before = counters.redis_state()
    with counters.connection.execute_wrapper(counters._count):
        for _ in range(ticks):
            wall, cpu = time.perf_counter(), time.process_time()
            if profile is not None:
                profile.enable()
            tick()
            if profile is not None:
                profile.disable()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    commands_after, redis_cpu_after = counters.redis_state()
    return {
        "wall": statistics.median(walls),
        "wall_max": max(walls),
        "cpu": statistics.median(cpus),
        # INFO itself is one command per reading; not the tick's.
        "redis_commands": (commands_after - commands_before - 2) / ticks,
        "redis_cpu": (redis_cpu_after - redis_cpu_before) / ticks,
        "queries": counters.queries / ticks,
    }


def trivial_query_seconds(repeat: int = 200) -> float:
    from endpoints.models import ModelEndpoint

    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        ModelEndpoint.objects.filter(pk="none").exists()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples)


def create_endpoints(count: int) -> None:
    from django.db import transaction

    from accounts.services import team_get_or_create_for_user
    from endpoints.services import endpoint_create
    from tests.factories import make_bundle

    user, team = team_get_or_create_for_user(username="bench", team_name="bench")
    bundle = make_bundle(team, "idle")
    for index in range(count):
        with transaction.atomic():
            endpoint_create(
                team=team,
                user=user,
                name=f"idle-{index:04d}",
                model_bundle_id=bundle.id,
                endpoint_type="async",
                min_workers=0,
                max_workers=4,
                per_worker=1,
                cpus=0.5,
                memory="256Mi",
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=200)
    parser.add_argument("--ticks", type=int, default=20)
    parser.add_argument(
        "--tick", default="auto", help="module whose tick() to time (default: workers.tick, else workers.controller)"
    )
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="cProfile the ticks with endpoints (top 15)")
    parser.add_argument("--json", help="also write the figures here (for bench/figures.py)")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="launch-bench-tick-"))
    redis_process = setup_django(home)
    try:
        from django.conf import settings

        tick = import_tick(args.tick)
        query = trivial_query_seconds()
        empties = [time_ticks(tick, args.ticks) for _ in range(args.reps)]
        create_endpoints(args.endpoints)
        profile = cProfile.Profile() if args.profile else None
        fulls = [time_ticks(tick, args.ticks, profile=profile) for _ in range(args.reps)]
        empty, full = ({key: statistics.median(rep[key] for rep in reps) for key in reps[0]}
                       for reps in (empties, fulls))
        engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]

        print(f"tick cost: {args.endpoints} async endpoints at min_workers 0, no traffic")
        print(
            f"machine: {machine()}; database {engine}; redis {'REDIS_URL' if os.environ.get('REDIS_URL') else 'embedded'}"
        )
        print(f"tick: {tick.__module__}.tick; median of {args.ticks} ticks after 3 warm-up ticks"
              f"{f', median of {args.reps} reps' if args.reps > 1 else ''}\n")
        header = (
            f"{'':32} {'wall ms':>9} {'max ms':>8} {'cpu ms':>8} {'SQL':>6} {'redis cmds':>10} {'redis cpu ms':>12}"
        )
        print(header)
        print("-" * len(header))
        print(f"{'one trivial ORM query':32} {query * 1e3:9.3f}")
        for label, row in (("tick, 0 endpoints", empty), (f"tick, {args.endpoints} endpoints", full)):
            print(
                f"{label:32} {row['wall'] * 1e3:9.1f} {row['wall_max'] * 1e3:8.1f} {row['cpu'] * 1e3:8.1f}"
                f" {row['queries']:6.0f} {row['redis_commands']:10.0f} {row['redis_cpu'] * 1e3:12.1f}"
            )
        per_endpoint_wall = (full["wall"] - empty["wall"]) / args.endpoints
        per_endpoint_cpu = (full["cpu"] - empty["cpu"]) / args.endpoints
        print(
            f"\nper endpoint per tick: {per_endpoint_wall * 1e3:.2f} ms wall, {per_endpoint_cpu * 1e3:.2f} ms CPU,"
            f" {(full['queries'] - empty['queries']) / args.endpoints:.1f} SQL queries,"
            f" {(full['redis_commands'] - empty['redis_commands']) / args.endpoints:.1f} Redis commands"
            f" ({per_endpoint_wall / query:.1f}x one trivial query)"
        )
        budget = settings.TICK_SECONDS
        print(
            f"a {budget:g} s tick is full at about {budget / per_endpoint_wall:.0f} idle endpoints"
            if per_endpoint_wall > 0
            else ""
        )
        figures = [
            Figure(f"tick CPU, {args.endpoints} idle endpoints", [r["cpu"] * 1e3 for r in fulls], "ms",
                   "tick CPU, 0 endpoints (same run)", empty["cpu"] * 1e3),
            Figure(f"controller CPU, {args.endpoints} idle endpoints, one tick per {budget:g} s",
                   [r["cpu"] / budget * 100 for r in fulls], "% of a core",
                   f"target {TARGET_SHARE_OF_A_CORE:g}% of a core", TARGET_SHARE_OF_A_CORE, "<= 1"),
        ]
        print("\n" + table(figures))
        if args.json:
            write_json(args.json, figures)
        if profile is not None:
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(15)
            print("\n" + out.getvalue())
    finally:
        if redis_process is not None:
            from launch_site.embedded_redis import stop_process

            stop_process(redis_process)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

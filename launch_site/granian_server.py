"""The web server of `launch up`: granian's own command line (same flags, same behaviour), with
the application imported in granian's main process before it forks its workers.

Granian starts its workers with multiprocessing's fork and each worker then imports the
target; imported here first, the target is in sys.modules already when a worker looks it up,
so the workers share Django, DRF and our apps (about 60 MB) copy-on-write with the main
process and each other instead of each building its own copy (BENCHMARKS.md, "Web workers
that share the app"). gc.freeze() keeps the collector from writing to those shared objects,
so that it does not copy their pages into every worker; the collector is off while
importing, so that no freed objects leave holes that the workers' allocations would then
write into (the recipe of the gc module's documentation).

Granian's respawns (a crashed worker, SIGHUP) fork from the same imported code: a code change
needs the web server started again, as it did under `launch up` anyway (no --reload).

Nothing opens a connection at import (the database connections and Redis pools open on first
use, in a worker), so no socket is shared across the fork.

Usage (the web image, docker/web.Dockerfile): python -m launch_site.granian_server GRANIAN_ARGS... APP
`launch up` calls main() in a process its supervisor forks, where the app (and the controller's
code) is imported already, so that the controller shares it too (launch_site/supervisor.py).
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

from granian._internal import load_target
from granian.cli import cli

# What granian's `granian` script passes (GRANIAN_WORKERS and the like set defaults).
ENVVAR_PREFIX = "GRANIAN"


def preload(args: list[str]) -> None:
    """Import the target (and its URLconf, which a worker would import on its first request)
    as a worker would. Not for a single worker: it shares with no other worker, and what it
    writes to would then be in memory twice, its copy and the main process's (the stack 13 MB
    larger in PSS with `--web-workers 1`). Nor when granian reloads on changes (a reload must
    import afresh)."""
    with cli.make_context("granian", list(args), auto_envvar_prefix=ENVVAR_PREFIX) as context:
        params = dict(context.params)
    if params["reload"] or params["workers"] < 2:
        return
    import_app(params["app"], working_dir=params["working_dir"])


def import_app(target: str, working_dir: Path | None = None) -> None:
    """Import the ASGI target and its URLconf as a worker would on its first request (also the
    supervisor's preload, launch_site/supervisor.py)."""
    load_target(target, wd=working_dir)
    if "django" in sys.modules:
        from django.urls import get_resolver

        get_resolver().url_patterns  # noqa: B018 - imports the URLconf and every view module


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else args
    gc.disable()
    preload(args)
    gc.freeze()
    gc.enable()
    cli.main(args, prog_name="granian", auto_envvar_prefix=ENVVAR_PREFIX)


if __name__ == "__main__":
    main()

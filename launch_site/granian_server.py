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

`launch up` does not use granian's process manager: its supervisor, which imported the app
already, forks each web worker itself and each runs serve_embedded(), granian's embedded server
in that process (launch_site/supervisor.py). Granian's main process, idle between respawns, is
then not there to hold 6 MB of its own, and the supervisor heals the workers as it heals the
controller.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from pathlib import Path
from typing import Any

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


def serve_embedded(app: Any, *, kill_timeout: float, **options: Any) -> None:
    """Serve the ASGI `app` with granian's embedded server in this process, on uvloop, until
    SIGTERM or SIGINT; then stop as a worker under granian's process manager does: no new
    connections, the requests in flight answered, the lifespan shutdown; and, like that
    manager, end the process at once if requests are still in flight `kill_timeout` seconds
    after the signal (their connections close). `options` are granian.server.embed.Server's.
    Several such processes can serve one port: granian binds it with SO_REUSEPORT on Linux and
    the kernel spreads connections across them."""
    import uvloop
    from granian.server.embed import Server

    server = Server(app, **options)
    # Our deadline, not the embedded server's: on expiry it raises out of its shutdown.
    server.workers_kill_timeout = None

    def cut() -> None:
        print(f"web worker: requests still in flight {kill_timeout:g} s after the stop signal; "
              "closing their connections", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(0)

    def stop() -> None:
        if not server.interrupt_signal:
            server.stop()
            asyncio.get_running_loop().call_later(kill_timeout, cut)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop)
        await server.serve(_asgi_worker_target())

    uvloop.run(run())
    if server.interrupt_children:  # the worker's task ended without being asked to
        raise SystemExit("the web server stopped unexpectedly; see above")


def _asgi_worker_target():
    """Granian's embedded ASGI worker (granian.server.embed.Server._spawn_asgi_lifespan_worker,
    granian 2.8.7) with one change: the Rust side runs on a runtime thread of its own
    (serve_mtr, what granian's worker processes use for ASGI), not on the event loop's
    thread (serve_async, the embedded default), which served 20 % fewer requests/s
    (BENCHMARKS.md, "Granian's process manager, gone")."""
    from granian._futures import _future_watcher_wrapper, _new_cbscheduler
    from granian._granian import ASGIWorker
    from granian.asgi import LifespanProtocol, _callback_wrapper
    from granian.errors import FatalError
    from granian.server.common import TaskImpl
    from granian.server.embed import AsyncWorker

    @AsyncWorker.wrap_target
    async def worker(worker_id, shutdown_event, callback, sock, loop, runtime_threads, runtime_blocking_threads,
                     blocking_threads, blocking_threads_idle_timeout, backpressure, task_impl, http_mode,
                     http1_settings, http2_settings, websockets, static_path, log_access_fmt, ssl_ctx, scope_opts):
        lifespan = LifespanProtocol(callback)
        wcallback = _future_watcher_wrapper(_callback_wrapper(callback, scope_opts, lifespan.state, log_access_fmt))
        await lifespan.startup()
        if lifespan.interrupt:
            raise FatalError("ASGI lifespan startup")
        # Called from the Rust side once its connections are drained.
        stopped = loop.create_future()
        shutdown_event.add_cb(lambda: loop.call_soon_threadsafe(lambda: stopped.done() or stopped.set_result(None)))
        server = ASGIWorker(
            worker_id, sock, None, runtime_threads, runtime_blocking_threads, blocking_threads,
            blocking_threads_idle_timeout, backpressure, http_mode, http1_settings, http2_settings, websockets,
            static_path, *ssl_ctx, (None, None),
        )
        serve = server.serve_mtr_uds if (sock[0] or sock[1]).is_uds() else server.serve_mtr
        serve(_new_cbscheduler(loop, wcallback, impl_asyncio=task_impl == TaskImpl.asyncio), loop, shutdown_event)
        await stopped
        await lifespan.shutdown()

    return worker


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else args
    gc.disable()
    preload(args)
    gc.freeze()
    gc.enable()
    cli.main(args, prog_name="granian", auto_envvar_prefix=ENVVAR_PREFIX)


if __name__ == "__main__":
    main()

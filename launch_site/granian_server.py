"""The web server, two ways.

`launch up`: serve_web_worker(), one web worker, granian's embedded server in the calling
process. The supervisor, which imported the app already, forks each web worker itself
(launch_site/supervisor.py), so that they share it; granian's process manager, idle between
respawns, is then not there to hold 6 MB of its own, and the supervisor heals the workers as it
heals the controller. The tests' live web server runs the same function (tests/stack.py).

The web image (docker/web.Dockerfile): python -m launch_site.granian_server GRANIAN_ARGS... APP,
granian's own command line (same flags, same behaviour) with the application imported in
granian's main process before it forks its workers. Each worker would otherwise import the
target itself; imported first, it is in sys.modules already when a worker looks it up, so the
workers share Django, DRF and our apps (about 60 MB) copy-on-write with the main process and
each other (BENCHMARKS.md, "Web workers that share the app"). gc.freeze() keeps the collector
from writing to those shared objects, so that it does not copy their pages into every worker;
the collector is off while importing, so that no freed objects leave holes that the workers'
allocations would then write into (the recipe of the gc module's documentation). Granian's
respawns (a crashed worker, SIGHUP) fork from the same imported code: a code change needs the
web server started again (no --reload).

Either way nothing opens a connection at import (the database connections and Redis pools open
on first use, in a worker), so no socket is shared across a fork.
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
WEB_APP = "launch_site.asgi:application"
# Requests one web worker serves at once (granian's backpressure). A waiting sync request
# costs a coroutine and a Redis connection, not a thread; past this, requests queue in the
# listen backlog.
WEB_BACKPRESSURE = 1024
# How long a stopping web worker answers the requests it holds; then they are cut.
WEB_KILL_TIMEOUT_SECONDS = 20.0
ACCESS_LOG_FORMAT = '%(addr)s "%(method)s %(path)s" %(status)d %(dt_ms).1fms'  # never the Authorization header


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


def serve_web_worker(host: str, port: int, *, access_log: bool = False) -> None:
    """One web worker of `launch up` (and of the tests' live web server, tests/stack.py):
    granian running the ASGI app (launch_site/asgi.py) in this process, on uvloop (it halves
    what granian's ASGI bridge costs per request: BENCHMARKS.md, "The event loop"). The
    inference routes are async views, so a sync request waiting for its replica holds no
    thread; the other routes run in Django's threads."""
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    from launch_site.asgi import application

    logging = dict(log_level=LogLevels.info, log_access=True, log_access_format=ACCESS_LOG_FORMAT) if access_log \
        else dict(log_level=LogLevels.error)  # the access log costs a tenth of a sync request
    serve_embedded(
        application, kill_timeout=WEB_KILL_TIMEOUT_SECONDS,
        address=host, port=port, interface=Interfaces.ASGI,
        http1_settings=HTTP1Settings(),  # what granian's command line passes (None: the Rust side's own)
        # Waits are cheap: let replicas be the bound.
        backpressure=WEB_BACKPRESSURE, backlog=WEB_BACKPRESSURE,
        **logging,
    )


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

"""The web server: one web worker, uvicorn's server (httptools, uvloop) in this process.

The supervisor (launch_site/supervisor.py), which imported the app already, forks each web
worker itself, so that they share it copy-on-write, and heals them as it heals the controller;
the workers share the port through SO_REUSEPORT. That is `launch up`, and the web image
(docker/web.Dockerfile: the supervisor with --web-only). The tests' live web server runs the
same function (tests/stack.py).

Why uvicorn with httptools, and not granian (what served here before): httptools parses HTTP in
the event loop's thread, where the app runs, so a request costs no hand-over between threads.
Granian parses in a Rust runtime thread and hands each request to the loop and each answer
back. On our request path (a sync task: two Redis round trips) uvicorn took 0.72x granian's web
CPU per request, with 0.70x-0.79x the sequential p50 and 1.25x-1.42x the requests/s at 8 and 32
connections (BENCHMARKS.md, "uvicorn in place of granian").

Nothing opens a connection at import (the database connections and Redis pools open on first
use, in a worker), so no socket is shared across a fork.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

import uvicorn
import uvloop
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

# Requests one web worker serves at once; past it, a request waits for one of them to end
# before it is read. A waiting sync request costs a coroutine and a Redis connection, not a
# thread, so replicas are the bound well before this; it keeps a burst from opening a Redis
# connection per request without end (the task routes' pipelines have no cap of their own).
WEB_MAX_REQUESTS = 1024
# The listen backlog of a web worker: connections past it wait in the kernel.
WEB_BACKLOG = 1024
# How long a stopping web worker answers the requests it holds; then they are cut.
WEB_KILL_TIMEOUT_SECONDS = 20.0
# How long an idle keep-alive connection stays open. uvicorn's default is 5 s: a client that
# pools connections (requests, the scale-launch clients) and sends its next request as the
# server closes one gets a connection error on a POST, which it does not retry. 75 s outlasts
# the usual client and proxy pools (nginx's keepalive_timeout is 75 s too).
WEB_KEEP_ALIVE_SECONDS = 75
# The most a request's line and headers may take. Neither httptools (llhttp) nor uvicorn has a
# limit: a client sending headers without end made a worker hold them all (200 MB of headers,
# 219 MB of memory). 64 KiB is twice what nginx takes by default (4 buffers of 8 KiB).
WEB_MAX_HEAD_BYTES = 64 * 1024
# How long a request's line and headers may take to arrive, from a new connection or from the
# first byte of a request on a kept-alive one. uvicorn has no such limit: a client that opens
# connections and sends a head slowly, or nothing, held each one for ever (slowloris), where
# granian's hyper gave up after 30 s, the figure kept here.
WEB_HEAD_TIMEOUT_SECONDS = 30.0
# How long a request's body may go without a byte while the server reads it. uvicorn has no such
# limit either: a client sending a body a byte a minute held one of WEB_MAX_REQUESTS for as long
# as it liked.
WEB_BODY_IDLE_SECONDS = 30.0
ACCESS_LOG_FORMAT = '%s "%s %s" %d %.1fms'  # address, method, path, status, time; never the Authorization header


def import_app() -> None:
    """Import the ASGI app and its URLconf as a worker would on its first request (the
    supervisor's preload, launch_site/supervisor.py), and the server's modules."""
    import uvicorn.lifespan.on  # noqa: F401 - what serve() loads, imported once for every worker
    import uvicorn.protocols.http.httptools_impl  # noqa: F401
    from django.urls import get_resolver

    import launch_site.asgi  # noqa: F401 - sets Django up

    get_resolver().url_patterns  # noqa: B018 - imports the URLconf and every view module


def serve_web_worker(host: str, port: int, *, access_log: bool = False) -> None:
    """One web worker: the ASGI app (launch_site/asgi.py) on `host`:`port`, shared with the
    other workers through SO_REUSEPORT, until SIGTERM or SIGINT. The inference routes are async
    views, so a sync request waiting for its replica holds no thread; the other routes run in
    Django's threads."""
    from launch_site.asgi import application

    app = with_request_limit(application, WEB_MAX_REQUESTS)
    if access_log:  # it costs a tenth of a sync request
        app = with_access_log(app)
    serve(app, listening_socket(host, port), kill_timeout=WEB_KILL_TIMEOUT_SECONDS)


def listening_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # the other web workers' port too
    sock.bind(address)
    sock.listen(WEB_BACKLOG)
    sock.set_inheritable(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling (serve() has its own)."""

    @contextlib.contextmanager
    def capture_signals(self):
        # uvicorn's own would, once stopped, raise the signal again under its default handler:
        # the worker would end "killed by SIGTERM" instead of exiting 0.
        yield


class _FlowControl(FlowControl):
    """uvicorn's flow control, telling the protocol when it pauses or resumes reading (while
    paused, a body that does not come is the server's doing, not the client's)."""

    def __init__(self, transport, protocol: HttpProtocol):
        super().__init__(transport)
        self.protocol = protocol

    def pause_reading(self) -> None:
        super().pause_reading()
        self.protocol.watch_body()

    def resume_reading(self) -> None:
        super().resume_reading()
        self.protocol.watch_body()


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the request head bounded in size (WEB_MAX_HEAD_BYTES:
    past it, 431) and in time (WEB_HEAD_TIMEOUT_SECONDS: past it, 408), and a body that stops
    coming while it is read refused (WEB_BODY_IDLE_SECONDS: 408); either way the connection
    closes. What is counted of a head is what arrived while it was incomplete, checked before
    each read is parsed, so a head may pass the bound by one read at most and a body that came
    in the same read as its head is never counted. A request that came whole in one read, the
    usual one, starts no body timer."""

    in_head = True
    head_bytes = 0
    head_timer: asyncio.TimerHandle | None = None
    body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.flow = _FlowControl(transport, self)
        self._start_head_timer()

    def connection_lost(self, exc) -> None:
        self.head_timer = _cancelled(self.head_timer)
        self.body_timer = _cancelled(self.body_timer)
        super().connection_lost(exc)

    def watch_body(self) -> None:
        """Start the body's timer afresh while a body is being read (its head in, its end not,
        reading not paused), stop it otherwise: called after each read and each pause or
        resume of reading."""
        self.body_timer = _cancelled(self.body_timer)
        if (not self.in_head and self.cycle is not None and self.cycle.more_body and not self.flow.read_paused
                and not self.transport.is_closing()):
            self.body_timer = self.loop.call_later(WEB_BODY_IDLE_SECONDS, self._body_timed_out)

    def _body_timed_out(self) -> None:
        self.body_timer = None
        # The app reading it is told the client went away (the connection closes).
        if self.cycle is not None and not self.cycle.response_started:
            self._refuse(408, f"no byte of the request body came for {WEB_BODY_IDLE_SECONDS:g} s")
        else:
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.head_timer is None:  # the next request on a kept-alive connection
            self._start_head_timer()

    def _start_head_timer(self) -> None:
        self.head_timer = self.loop.call_later(WEB_HEAD_TIMEOUT_SECONDS, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self.head_timer = None
        self._refuse(408, f"the request line and headers did not arrive within {WEB_HEAD_TIMEOUT_SECONDS:g} s")

    def data_received(self, data: bytes) -> None:
        if self.in_head:
            if self.head_bytes > WEB_MAX_HEAD_BYTES:
                self._refuse_head()
                return
            self.head_bytes += len(data)
        super().data_received(data)
        if self.body_timer is not None or not self.in_head:
            self.watch_body()

    def on_headers_complete(self) -> None:
        self.head_timer = _cancelled(self.head_timer)
        self.in_head, self.head_bytes = False, 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.in_head = True  # what comes next on this connection is the next request's head
        super().on_message_complete()

    def _refuse_head(self) -> None:
        self._refuse(431, f"the request line and headers take more than {WEB_MAX_HEAD_BYTES // 1024} KiB")

    def _refuse(self, status: int, reason: str) -> None:
        self.head_timer = _cancelled(self.head_timer)
        message = reason.encode()
        self.transport.write(
            STATUS_LINE[status] + b"content-type: text/plain; charset=utf-8\r\ncontent-length: "
            + str(len(message)).encode() + b"\r\nconnection: close\r\n\r\n" + message
        )
        self.transport.close()
        self.in_head, self.head_bytes = False, 0  # nothing more is read


def _cancelled(timer: asyncio.TimerHandle | None) -> None:
    """Cancel `timer` if there is one; returns None, to put in its place."""
    if timer is not None:
        timer.cancel()


def serve(app: Any, sock: socket.socket, *, kill_timeout: float) -> None:
    """Serve the ASGI `app` on the listening `sock`, in this process, on uvloop, until SIGTERM
    or SIGINT; then stop taking connections, answer the requests in flight (idle keep-alive
    connections close), run the lifespan shutdown and return. Requests still in flight
    `kill_timeout` seconds after the signal are cut: the process ends at once, exit status 0,
    with one line on stderr (uvicorn's own deadline would cancel them into tracebacks)."""
    config = uvicorn.Config(
        app, http=HttpProtocol, ws="none", lifespan="on", interface="asgi3",
        log_config=None, log_level="error", access_log=False,  # Django's logging stays; our access log
        proxy_headers=False,  # X-Forwarded-* are not trusted: the app sees the connection as it is
        server_header=False, timeout_keep_alive=WEB_KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=None,  # our deadline: cut() below
    )
    server = _Server(config)

    def cut() -> None:
        print(f"web worker: requests still in flight {kill_timeout:g} s after the stop signal; "
              "closing their connections", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(0)

    def stop() -> None:
        if not server.should_exit:
            server.should_exit = True
            asyncio.get_running_loop().call_later(kill_timeout, cut)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop)
        await server.serve(sockets=[sock])

    uvloop.run(run())
    if not server.should_exit:  # it stopped without being asked to (a lifespan startup failure)
        raise SystemExit("the web server stopped unexpectedly; see above")


def with_request_limit(app: Any, most: int) -> Any:
    """`app` serving at most `most` HTTP requests at once; the others wait their turn, unread."""
    slots = asyncio.Semaphore(most)  # bound to the loop that first waits on it

    async def limited(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        async with slots:
            await app(scope, receive, send)

    return limited


def with_access_log(app: Any) -> Any:
    """`app` logging one line per request on stdout: address, method, path (no query string),
    status and time (ACCESS_LOG_FORMAT)."""
    logger = logging.getLogger("launch.access")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    async def logged(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, sending)
        finally:
            client = scope.get("client")
            logger.info(ACCESS_LOG_FORMAT, f"{client[0]}:{client[1]}" if client else "-", scope["method"],
                        scope["path"], status, (time.perf_counter() - started) * 1000)

    return logged

"""The ASGI entry point that `launch up` and the web image serve (launch_site/web_server.py).

The inference routes (endpoints.api.views.InferenceView: sync, async and streaming task
creation, and the old dialect's) are async views: a sync request waiting for its replica
holds no thread, so the number of concurrent waits is bounded by replicas, not by web
threads (BENCHMARKS.md, "Many slow sync requests at once"). Every other route is a sync view:
reads (GET, HEAD) run with their middleware in one hop on a long-lived thread
(OneHopHandler), writes through Django's own ASGI handler.

Django runs a sync middleware hook of an async request in a thread, one hop per hook (about
16 on our MIDDLEWARE list): more than the whole Redis relay of a sync request. On the
inference routes those hooks do no I/O (the body is read before the chain runs; the views
touch no session, user or message), so InferenceHandler runs the MIDDLEWARE list (less what
the task routes need not: TASK_ROUTES_LEAVE_OUT) with each hook called in the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import io
import os

from django.core.asgi import get_asgi_application

from workers.allocator import keep_freed_memory

keep_freed_memory()  # before the first request: large bodies reuse freed pages (workers.allocator)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "launch_site.settings")
django_application = get_asgi_application()  # sets Django up: imports below need it

from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core import signals  # noqa: E402
from django.core.cache import close_caches  # noqa: E402
from django.core.exceptions import ImproperlyConfigured, RequestAborted  # noqa: E402
from django.core.handlers.asgi import ASGIHandler, get_script_prefix  # noqa: E402
from django.core.handlers.base import reset_urlconf  # noqa: E402
from django.core.handlers.exception import convert_exception_to_response, response_for_exception  # noqa: E402
from django.db import close_old_connections, reset_queries  # noqa: E402
from django.http import FileResponse  # noqa: E402
from django.urls import Resolver404, ResolverMatch, resolve, set_script_prefix  # noqa: E402
from django.utils.deprecation import MiddlewareMixin  # noqa: E402
from django.utils.module_loading import import_string  # noqa: E402

from endpoints.api.views import InferenceView  # noqa: E402
from launch_site.db import with_connection_upkeep  # noqa: E402


class _HooksInLoop:
    """A run of consecutive MiddlewareMixin middlewares (outermost first) as one layer: their
    process_request hooks in order, then the inner handler, then their process_response hooks
    in reverse, all in the event loop. The same calls, in the same order, as Django's chain of
    one layer per middleware (MiddlewareMixin.__acall__ inside convert_exception_to_response),
    which is what it replaces: a hook that returns a response skips the inner ones and the
    handler, and an exception becomes a response where the layer around that middleware would
    have turned it into one. Flat because every await in a request (the Redis round trips)
    suspends and resumes the whole chain of coroutines, two frames per middleware layer:
    about a fifth of the web's CPU for a sync task."""

    def __init__(self, middlewares: list[MiddlewareMixin], handler):
        self.middlewares = middlewares
        self.handler = handler
        markcoroutinefunction(self)  # so that Django's wrappers await it

    async def __call__(self, request):
        response, entered = None, 0
        for middleware in self.middlewares:
            entered += 1
            if hasattr(middleware, "process_request"):
                try:
                    response = middleware.process_request(request)
                except Exception as exc:  # noqa: BLE001 - as the layer around this middleware would
                    response = await _response_for_exception(request, exc)
                    entered -= 1  # that layer then goes on with the outer middlewares' process_response
                if response:
                    break
        if not response:
            response = await self.handler(request)  # an exception-converting handler
        for middleware in reversed(self.middlewares[:entered]):
            if hasattr(middleware, "process_response"):
                try:
                    response = middleware.process_response(request, response)
                except Exception as exc:  # noqa: BLE001 - as above
                    response = await _response_for_exception(request, exc)
        return response


async def _response_for_exception(request, exc):
    return await sync_to_async(response_for_exception, thread_sensitive=False)(request, exc)


def _flattens(middleware_class: type) -> bool:
    """A MiddlewareMixin whose hooks are all it adds (no call of its own)."""
    return (issubclass(middleware_class, MiddlewareMixin) and middleware_class.__call__ is MiddlewareMixin.__call__
            and middleware_class.__acall__ is MiddlewareMixin.__acall__)


def _replaying(chunks: list[bytes], receive):
    """An ASGI receive that first gives what was read already, as one message."""
    pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": True}]

    async def replay():
        return pending.pop() if pending else await receive()

    return replay


def _in_loop(method):
    async def run(*args):
        return method(*args)

    return run


# Django's receivers of request_started and request_finished: they act on the calling thread's
# database connections (and their query log), caches and URLconf override, none of which the
# event loop's thread holds (the inference views' database work runs on launch_site.db's
# threads, which keep their connections up themselves; a request sets its URLconf as it
# starts). Sending the two signals to them took 10-14 % of the web worker's CPU for a sync
# task (BENCHMARKS.md, "The request path, fourth pass"), so the task routes send them only
# when some other receiver is connected (an app or a library added later): it then gets them
# as before.
# tests/test_asgi_middleware.py holds this set to what the project connects.
LOOP_THREAD_NO_OP_RECEIVERS = frozenset((reset_queries, close_old_connections, close_caches, reset_urlconf))


@functools.cache
def sends_request_signals(sender: type) -> bool:
    """Whether a receiver outside LOOP_THREAD_NO_OP_RECEIVERS listens to the request signals
    that `sender` sends. Read once, at the first task request (every app and the URLconf are
    imported by then: receivers are connected at import)."""
    return any(
        receiver not in LOOP_THREAD_NO_OP_RECEIVERS
        for signal in (signals.request_started, signals.request_finished)
        for receiver in connected_receivers(signal, sender)
    )


def connected_receivers(signal, sender: type) -> list:
    """The functions that `signal` sent by `sender` reaches, weak references resolved."""
    sync_receivers, async_receivers = signal._live_receivers(sender)  # noqa: SLF001 - Django 5.x
    return [*sync_receivers, *async_receivers]


def _close_without_request_finished(response) -> None:
    """HttpResponseBase.close() but for its request_finished signal (sends_request_signals)."""
    for closer in response._resource_closers:  # noqa: SLF001 - what close() runs
        closer()
    response._resource_closers.clear()  # noqa: SLF001
    response.closed = True


# What the task routes leave out of settings.MIDDLEWARE. Their requests carry an API key (no
# session, no CSRF: the views are csrf_exempt) and their views read no session, user, messages
# or htmx details: each of these only puts a cookie or header behind a lazy attribute that
# the task views never read, and adds nothing to an answer that did not read it. A task view
# that came to read one would fail at once (the attribute is missing), not quietly.
# tests/test_asgi_middleware.py holds the answers with and without them equal. They cost 6 %
# of the web worker's CPU for a sync task (BENCHMARKS.md, "The request path, fourth pass").
TASK_ROUTES_LEAVE_OUT = frozenset((
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
))


def task_route_middleware() -> list[str]:
    return [path for path in settings.MIDDLEWARE if path not in TASK_ROUTES_LEAVE_OUT]


class InferenceHandler(ASGIHandler):
    """Django's ASGI handler with settings.MIDDLEWARE's hooks run in the event loop (only for
    routes whose middleware hooks do no I/O: see the module's docstring), and without a
    thread per request: Django gives each request a thread of its own for its thread-sensitive
    sync code (the request signals, closing the response), about a millisecond of CPU per
    request on our machine; here nothing needs one (the views' database work runs on
    launch_site.db's threads), so that code runs in the loop. The request signals go only to
    receivers other than Django's own (sends_request_signals), and for a stream as Django
    sends them."""

    # Django sends a response body in messages of chunk_size (64 KiB), each a slice (a copy)
    # and an await on the server; an inference answer (a sync result of up to a few MB) goes
    # in one message, which the server writes out as the socket takes it.
    chunk_size = 16 * 1024**2

    async def __call__(self, scope, receive, send):
        await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        signals_sent = sends_request_signals(self.__class__)
        if signals_sent:
            signals.request_started.send(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            await self.send_response(error_response, send)
            error_response.close()
            body_file.close()
            return
        if not view_class_of(scope["path"]).watches_disconnect:
            # A sync or async task: a gone client costs its wait at most (as under WSGI); not
            # watching saves two tasks per request.
            try:
                response = await self._respond(request, send)
            except OSError:  # the client went away
                if signals_sent:
                    signals.request_finished.send(sender=self.__class__)
            else:
                if signals_sent:
                    response.close()  # sends request_finished
                else:
                    _close_without_request_finished(response)
            body_file.close()
            return
        # A stream, as Django does: a client that goes away cancels the view (the stream's
        # generator is closed, which tells the replica to stop the predict).
        responding = asyncio.create_task(self._respond(request, send))
        disconnected = asyncio.create_task(self.listen_for_disconnect(receive))
        await asyncio.wait([disconnected, responding], return_when=asyncio.FIRST_COMPLETED)
        for task in (disconnected, responding):
            if not task.done():
                task.cancel()
            try:
                await task
            except (asyncio.CancelledError, RequestAborted, OSError):
                pass
        if responding.cancelled() or responding.exception() is not None:
            signals.request_finished.send(sender=self.__class__)
        else:
            responding.result().close()  # sends request_finished, whose receivers are as above
        body_file.close()

    async def read_body(self, receive):
        """The body as Django reads it, without its copies for a body within
        DATA_UPLOAD_MAX_MEMORY_SIZE: Django writes each ASGI chunk into a SpooledTemporaryFile
        and request.body copies it out again; here the chunks are joined once into a BytesIO,
        which request.body reads without a copy. A larger body goes on into Django's spooled
        file (bounded memory), to be refused with the same 413 as before."""
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestAborted()  # early client disconnect, as Django
            chunk = message.get("body", b"")
            if chunk:
                chunks.append(chunk)
                size += len(chunk)
            if not message.get("more_body", False):
                return io.BytesIO(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            if limit is not None and size > limit:
                return await super().read_body(_replaying(chunks, receive))

    async def _respond(self, request, send):
        response = await self.run_get_response(request)
        await self.send_response(response, send)
        return response

    def resolve_request(self, request):
        # The path was resolved already, to route the request here: its match is cached.
        match = resolved(request.path_info)
        if match is None:
            return super().resolve_request(request)  # raises Resolver404 (a 404) as Django does
        request.resolver_match = match
        return match

    def load_middleware(self, is_async=False):
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        handler = convert_exception_to_response(self._get_response_async)
        run: list[MiddlewareMixin] = []  # consecutive MiddlewareMixins, innermost first

        def close_run(handler):
            if not run:
                return handler
            layer = convert_exception_to_response(_HooksInLoop(run[::-1], handler))
            run.clear()
            return layer

        for path in reversed(task_route_middleware()):
            middleware_class = import_string(path)
            flattens = _flattens(middleware_class)
            # A middleware with a call of its own is a layer around what is inside it, as in Django.
            middleware = middleware_class(handler if flattens else close_run(handler))
            if hasattr(middleware, "process_view"):
                self._view_middleware.insert(0, _in_loop(middleware.process_view))
            if hasattr(middleware, "process_template_response"):
                self._template_response_middleware.append(_in_loop(middleware.process_template_response))
            if hasattr(middleware, "process_exception"):
                # Django calls the exception stack synchronously (in a thread).
                self._exception_middleware.append(middleware.process_exception)
            if flattens:
                run.append(middleware)  # its get_response is never called: _HooksInLoop runs its hooks
            elif iscoroutinefunction(middleware):
                handler = convert_exception_to_response(middleware)
            else:
                raise ImproperlyConfigured(f"{path}: neither a MiddlewareMixin nor async-capable")
        self._middleware_chain = close_run(handler)


inference_application = InferenceHandler()


# Threads for whole requests of the other routes' reads (GET, HEAD): each keeps its database
# connection across requests (CONN_MAX_AGE), as a WSGI worker thread does. A pool of their own,
# so that a slow view (logs read from a Docker host) never holds the task routes' database
# threads; past VIEW_THREADS such requests at once, the next ones wait for a thread.
VIEW_THREADS = 8
_VIEW_THREADS = ThreadPoolExecutor(max_workers=VIEW_THREADS, thread_name_prefix="launch-view")


class OneHopHandler(ASGIHandler):
    """Django's ASGI handler with the middleware chain and the view run as under WSGI: in one
    hop, on a long-lived thread. Django's own gives each request a new thread (so a new
    database connection) and hops to it once per sync middleware hook: `/healthz` cost twice
    as much that way, a page of 10 endpoints 1.7 times (BENCHMARKS.md, "A page of
    endpoints"). No per-request thread-sensitive context: what Django runs thread-sensitively
    around the view (the request signals) is cheap and runs on asgiref's one shared thread;
    responses that stream a file do it chunk by chunk (launch_site.responses)."""

    async def __call__(self, scope, receive, send):
        await self.handle(scope, receive, send)

    def load_middleware(self, is_async=False):
        super().load_middleware(is_async=False)  # the sync chain, as the WSGI handler builds it

    async def run_get_response(self, request):
        response = await sync_to_async(
            with_connection_upkeep(self.get_response), thread_sensitive=False, executor=_VIEW_THREADS
        )(request)
        response._handler_class = self.__class__
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size  # as Django's run_get_response does
        return response


read_application = OneHopHandler()


@functools.lru_cache(maxsize=4096)
def resolved(path: str) -> ResolverMatch | None:
    """The URLconf's match of a path (None: no route). Django treats a match as read-only."""
    try:
        return resolve(path)
    except Resolver404:
        return None


def view_class_of(path: str) -> type | None:
    match = resolved(path)
    view_class = getattr(match.func, "view_class", None) if match is not None else None
    return view_class if isinstance(view_class, type) else None


def is_inference_route(path: str) -> bool:
    view_class = view_class_of(path)
    return view_class is not None and issubclass(view_class, InferenceView)


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
    elif scope["type"] == "http" and scope["method"] == "POST" and is_inference_route(scope["path"]):
        await inference_application(scope, receive, send)
    elif scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
        await read_application(scope, receive, send)
    else:
        await django_application(scope, receive, send)


async def _lifespan(receive, send) -> None:
    """Nothing to start or stop (the Redis pools open on first use)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return

"""The task routes' middleware layer (launch_site.asgi._HooksInLoop) against Django's own chain:
the same hooks called in the same order, with the same answer, whatever a hook does (answers
early, raises in process_request or process_response), and a middleware with a call of its own
stays a layer around what is inside it."""

from __future__ import annotations

import asyncio

import pytest
from django.conf import settings
from django.core import signals
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpResponse
from django.test import RequestFactory, override_settings
from django.utils.deprecation import MiddlewareMixin

from launch_site.asgi import (
    LOOP_THREAD_NO_OP_RECEIVERS,
    TASK_ROUTES_LEAVE_OUT,
    InferenceHandler,
    connected_receivers,
    sends_request_signals,
)

CALLS: list[str] = []
# What each middleware does: {name: "answer" | "raise-request" | "raise-response"}
BEHAVIOUR: dict[str, str] = {}


class _Hooks(MiddlewareMixin):
    name = ""

    def process_request(self, request):
        CALLS.append(f"{self.name}.request")
        if BEHAVIOUR.get(self.name) == "answer":
            return HttpResponse(f"answered by {self.name}", status=418)
        if BEHAVIOUR.get(self.name) == "raise-request":
            raise RuntimeError(self.name)
        return None

    def process_response(self, request, response):
        CALLS.append(f"{self.name}.response")
        if BEHAVIOUR.get(self.name) == "raise-response":
            raise RuntimeError(self.name)
        response[f"X-{self.name}"] = "seen"
        return response


class A(_Hooks):
    name = "A"


class B(_Hooks):
    name = "B"


class C(_Hooks):
    name = "C"


class OnlyResponse(MiddlewareMixin):
    def process_response(self, request, response):
        CALLS.append("OnlyResponse.response")
        return response


class OwnCall:
    """A middleware that is not a MiddlewareMixin: a layer of its own."""

    async_capable, sync_capable = True, False

    def __init__(self, get_response):
        self.get_response = get_response
        from asgiref.sync import markcoroutinefunction

        markcoroutinefunction(self)

    async def __call__(self, request):
        CALLS.append("OwnCall.before")
        response = await self.get_response(request)
        CALLS.append("OwnCall.after")
        response["X-OwnCall"] = "seen"
        return response


MIDDLEWARE = [f"{__name__}.{name}" for name in ("A", "OnlyResponse", "B", "OwnCall", "C")]


async def _inner(self, request):
    CALLS.append("view")
    return HttpResponse("from the view")


class DjangoChain(ASGIHandler):
    _get_response_async = _inner


class OurChain(InferenceHandler):
    _get_response_async = _inner


def _run(handler_class) -> tuple[list[str], int, dict]:
    CALLS.clear()
    handler = handler_class()  # builds its chain from settings.MIDDLEWARE
    request = RequestFactory().post("/v1/sync-tasks", data=b"{}", content_type="application/json")
    response = asyncio.run(handler._middleware_chain(request))
    return list(CALLS), response.status_code, {k: v for k, v in response.items() if k.startswith("X-")}


@pytest.mark.parametrize("behaviour", [
    {},
    {"A": "answer"},
    {"B": "answer"},
    {"C": "answer"},
    {"B": "raise-request"},
    {"C": "raise-request"},
    {"B": "raise-response"},
    {"A": "raise-response", "C": "raise-request"},
])
def test_the_flat_layer_calls_what_djangos_chain_calls(behaviour):
    BEHAVIOUR.clear()
    BEHAVIOUR.update(behaviour)
    with override_settings(MIDDLEWARE=MIDDLEWARE, DEBUG=False):
        expected = _run(DjangoChain)
        ours = _run(OurChain)
    assert ours == expected
    assert expected[0]  # the hooks ran at all


def test_a_middleware_with_its_own_call_stays_a_layer():
    BEHAVIOUR.clear()
    with override_settings(MIDDLEWARE=MIDDLEWARE):
        calls, status, headers = _run(OurChain)
    assert calls == ["A.request", "B.request", "OwnCall.before", "C.request", "view", "C.response", "OwnCall.after",
                     "B.response", "OnlyResponse.response", "A.response"]
    assert (status, headers) == (200, {"X-C": "seen", "X-OwnCall": "seen", "X-B": "seen", "X-A": "seen"})


# --- the request signals ---------------------------------------------------------------------

def _serve_one_task_request(handler_class) -> list[dict]:
    """One POST /v1/sync-tasks through the handler's whole ASGI call (its view replaced)."""
    sent: list[dict] = []
    scope = {"type": "http", "method": "POST", "path": "/v1/sync-tasks", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json")], "server": ("testserver", 80)}

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(handler_class()(scope, receive, send))
    return sent


def test_the_request_signals_reach_only_djangos_receivers_which_the_task_routes_skip():
    # As served: every app and the URLconf imported. Django's receivers act on the calling
    # thread's database connections, caches and URLconf override, which the event loop's thread
    # does not hold; they are all the task routes leave out. Should this fail, a receiver was
    # added: the task routes send it the signals (next test), and this set is to be looked at.
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018
    connected = {receiver for signal in (signals.request_started, signals.request_finished)
                 for receiver in connected_receivers(signal, InferenceHandler)}
    assert connected == LOOP_THREAD_NO_OP_RECEIVERS
    sends_request_signals.cache_clear()
    try:
        assert not sends_request_signals(OurChain)
        assert _serve_one_task_request(OurChain)[0]["status"] == 200
    finally:
        sends_request_signals.cache_clear()


@pytest.mark.django_db  # Django's receivers, sent here too, check this thread's database connections
def test_a_receiver_of_the_request_signals_gets_both_for_a_task_request():
    heard: list[str] = []

    def started(sender, **kwargs):
        heard.append(f"started by {sender.__name__}")

    def finished(sender, **kwargs):
        heard.append(f"finished by {sender.__name__}")

    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    sends_request_signals.cache_clear()
    try:
        sent = _serve_one_task_request(OurChain)
    finally:
        signals.request_started.disconnect(started)
        signals.request_finished.disconnect(finished)
        sends_request_signals.cache_clear()
    assert sent[0]["status"] == 200 and sent[-1]["body"] == b"from the view"
    assert heard == ["started by OurChain", "finished by OurChain"]


# --- what the task routes leave out of settings.MIDDLEWARE -------------------------------------

@pytest.mark.parametrize("cookies, headers", [
    ({}, {}),
    ({"sessionid": "not-a-session", "csrftoken": "x" * 32, "messages": "stale"}, {"HTTP_HX_REQUEST": "true"}),
    ({}, {"HTTP_AUTHORIZATION": "Bearer some-key", "HTTP_ORIGIN": "https://elsewhere.example"}),
])
def test_the_middleware_the_task_routes_leave_out_changes_nothing_in_their_answers(cookies, headers):
    # The task views read no session, user, messages or htmx details: with them left out the
    # answer (status, every header, cookies, body) is what the whole settings.MIDDLEWARE gives.
    assert TASK_ROUTES_LEAVE_OUT <= set(settings.MIDDLEWARE)  # nothing stale in the list

    def answer(handler_class):
        CALLS.clear()
        request = RequestFactory().post("/v1/sync-tasks", data=b"{}", content_type="application/json", **headers)
        request.COOKIES.update(cookies)
        response = asyncio.run(handler_class()._middleware_chain(request))
        return response.status_code, sorted(response.items()), response.cookies.output(), response.content

    assert answer(OurChain) == answer(DjangoChain)
    assert CALLS == ["view"]

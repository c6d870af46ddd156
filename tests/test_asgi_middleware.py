"""The task routes' middleware layer (launch_site.asgi._HooksInLoop) against Django's own chain:
the same hooks called in the same order, with the same answer, whatever a hook does (answers
early, raises in process_request or process_response), and a middleware with a call of its own
stays a layer around what is inside it."""

from __future__ import annotations

import asyncio

import pytest
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpResponse
from django.test import RequestFactory, override_settings
from django.utils.deprecation import MiddlewareMixin

from launch_site.asgi import InferenceHandler

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

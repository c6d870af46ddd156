"""Endpoint and task routes of the native API (launch-openapi.json)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.template.loader import render_to_string
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import APIException, MethodNotAllowed, NotAuthenticated, ParseError
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import throttling
from accounts.authentication import ApiKeyAuthentication, api_key_from_request, key_from_header
from accounts.selectors import request_team
from endpoints import callbacks, gateway, route_cache, selectors, services
from endpoints.api.serializers import EndpointCreateSerializer, EndpointUpdateSerializer
from endpoints.models import ModelEndpoint
from endpoints.openapi import endpoints_openapi
from launch_site import limits
from launch_site.db import in_db_thread
from launch_site.errors import FieldError, error_json_response, query_error
from launch_site.pagination import page_of, page_response
from launch_site.public_url import absolute_url
from launch_site.redis_client import AsyncRedis, async_redis
from launch_site.renderers import JSONRenderer, RenderedJSON
from workers import protocol
from workers.models import Replica
from workers.runtimes import get_runtime


def endpoint_representation(row: dict, queued: int) -> dict:
    """The API's endpoint object (list and retrieve alike) from an answer row as a dict
    (endpoints.selectors.answer_dict)."""
    return {
        "id": row["id"],
        "name": row["name"],
        "endpoint_type": row["endpoint_type"],
        "destination": protocol.Keys(protocol.endpoint_prefix(row["id"])).queue,
        "deployment_name": row["name"],
        "metadata": row["metadata"],
        "bundle_name": row["bundle__name"],
        "model_bundle_id": row["bundle_id"],
        "status": row["status"],
        "status_reason": row["status_reason"] or None,
        "post_inference_hooks": row["post_inference_hooks"],
        "default_callback_url": row["default_callback_url"],
        "default_callback_auth": row["default_callback_auth"],
        "labels": row["labels"],
        "aws_role": None,
        "results_s3_bucket": None,
        "created_by": row["created_by__username"] or "",  # null: the user was deleted
        "created_at": row["created_at"].isoformat(),
        "last_updated_at": row["last_updated_at"].isoformat(),
        "deployment_state": {
            "min_workers": row["min_workers"],
            "max_workers": row["max_workers"],
            "per_worker": row["per_worker"],
            "concurrent_requests_per_worker": ModelEndpoint.tasks_per_replica(
                row["concurrent_requests_per_worker"], row["per_worker"]
            ),
            "available_workers": row["available_workers"],
            "unavailable_workers": row["unavailable_workers"],
        },
        "resource_state": {
            "cpus": row["cpus"],
            "gpus": row["gpus"],
            "memory": row["memory"],
            "gpu_type": row["gpu_type"],
            "storage": row["storage"],
            "nodes_per_worker": 1,
            "optimize_costs": row["optimize_costs"],
        },
        "num_queued_items": queued,
        "public_inference": False,
        # Fields of the create body that the contract's answer lacks, returned as stored.
        "high_priority": row["high_priority"],
        "billing_tags": row["billing_tags"],
        "prewarm": row["prewarm"],
        "task_expires_seconds": row["task_expires_seconds"],
        "queue_message_timeout_seconds": row["queue_message_timeout_seconds"],
        # Our own: request batching (docs/batching.md), null while off.
        "max_batch_size": row["max_batch_size"],
        "max_batch_wait_ms": row["max_batch_wait_ms"],
    }


# Rendered endpoint answers, remembered by all that makes them: the row as read (every column
# an answer shows, the replica counts), the queue length and the dialect's representation. So
# a remembered answer is never stale (any change is another key), and a page whose endpoints
# did not change since it was last read is sent without converting, building or encoding its
# items again: about half the CPU time of a page of 100 (BENCHMARKS.md, "A page of
# endpoints"). About 2 KB an entry (the row and the answer): at most about 2 MB per web worker.
ANSWERS_REMEMBERED = 1024
_RENDERER = JSONRenderer()


@functools.lru_cache(maxsize=ANSWERS_REMEMBERED)
def _rendered_answer(represent, row: tuple, queued: int) -> RenderedJSON:
    return _RENDERER.render_unindented(represent(selectors.answer_dict(row), queued))


def rendered_answers(represent, rows: list[tuple]) -> list[RenderedJSON]:
    """`represent` (endpoint_representation, or the old dialect's) of each answer row
    (endpoints.selectors.endpoint_answer_rows), rendered, with the queue lengths of all (one
    Redis round trip)."""
    queued = selectors.queue_lengths([row[selectors.ID] for row in rows])
    return [_rendered_answer(represent, row, q) for row, q in zip(rows, queued, strict=True)]


class ModelEndpointListView(APIView):
    @extend_schema(operation_id="v1_model_endpoints_list", parameters=[OpenApiParameter("name", str, required=False), OpenApiParameter("order_by", str, required=False, enum=["newest", "oldest"])], responses=OpenApiTypes.OBJECT)
    def get(self, request):
        order_by = request.query_params.get("order_by")
        if order_by not in (None, "newest", "oldest"):
            raise query_error("order_by", "must be newest or oldest")
        rows, more = page_of(request, selectors.endpoint_answer_rows(
            team=request_team(request), name=request.query_params.get("name"), order_by=order_by
        ))
        return page_response(request, "model_endpoints", rendered_answers(endpoint_representation, rows), more)

    @extend_schema(request=EndpointCreateSerializer, responses=OpenApiTypes.OBJECT)
    def post(self, request):
        serializer = EndpointCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        endpoint = services.endpoint_create(team=request_team(request), user=request.user, **serializer.validated_data)
        # Shown once: it signs this endpoint's callback deliveries (docs/callbacks.md).
        return Response({"endpoint_creation_task_id": endpoint.id, "callback_signing_secret": endpoint.callback_secret})


class ModelEndpointDetailView(APIView):
    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, endpoint_id: str):
        row = selectors.endpoint_answer_row(team=request_team(request), endpoint_id=endpoint_id)
        return Response(rendered_answers(endpoint_representation, [row])[0])

    @extend_schema(request=EndpointUpdateSerializer, responses=OpenApiTypes.OBJECT)
    def put(self, request, endpoint_id: str):
        endpoint = selectors.endpoint_get(team=request_team(request), endpoint_id=endpoint_id)
        serializer = EndpointUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.endpoint_update(endpoint=endpoint, changes=dict(serializer.validated_data))
        return Response({"endpoint_creation_task_id": endpoint.id})

    @extend_schema(responses={200: {"type": "object", "properties": {"deleted": {"type": "boolean"}}}})
    def delete(self, request, endpoint_id: str):
        endpoint = selectors.endpoint_get(team=request_team(request), endpoint_id=endpoint_id)
        services.endpoint_delete(endpoint=endpoint)
        return Response({"deleted": True})


class ModelEndpointRestartView(APIView):
    @extend_schema(request=None, responses=OpenApiTypes.OBJECT)
    def post(self, request, endpoint_id: str):
        endpoint = selectors.endpoint_get(team=request_team(request), endpoint_id=endpoint_id)
        services.endpoint_restart(endpoint=endpoint)
        return Response({"restarted": True})


class ModelEndpointsSchemaView(APIView):
    """The OpenAPI document of the team's endpoints: how to call each of them."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request):
        endpoints = list(selectors.endpoint_list(team=request_team(request)))
        return Response(endpoints_openapi(endpoints, server=request.build_absolute_uri("/")))


class ModelEndpointsApiView(APIView):
    """The same document as a page a person reads (a browser asks for text/html), else as JSON
    (the contract's answer type)."""

    def perform_content_negotiation(self, request, force=False):
        return super().perform_content_negotiation(request, force=True)  # text/html is answered in get

    @extend_schema(responses={(200, "application/json"): OpenApiTypes.OBJECT, (200, "text/html"): OpenApiTypes.STR})
    def get(self, request):
        endpoints = list(selectors.endpoint_list(team=request_team(request)))
        document = endpoints_openapi(endpoints, server=request.build_absolute_uri("/"))
        if "text/html" in request.headers.get("Accept", ""):
            return HttpResponse(render_to_string("endpoints/api.html", {"document": document}))
        return Response(document)


def task_result_shape(request, task_id: str, record: dict) -> dict | None:
    """On SUCCESS the contract's `result` is an object with `result` (JSON text) or `result_url`.
    A sync waiter's record (gateway.task_run_sync) has the text as a JSON literal instead."""
    if record["status"] != protocol.SUCCESS:
        return None
    if record.get("result_pickled"):
        return {"result_url": absolute_url(request, f"/v1/task-results/{task_id}")}
    if record.get("result_literal") is not None:
        return {"result": json.loads(bytes(record["result_literal"]))}
    return {"result": record.get("result")}


def sync_success_response(literal: memoryview) -> HttpResponse:
    """A sync SUCCESS answer built around the replica's JSON literal of the result (a view
    into the record as Redis sent it), so a large result is neither decoded nor encoded again
    here, and copied once. Same bytes as JsonResponse would give."""
    return HttpResponse(
        b"".join((b'{"status": "SUCCESS", "result": {"result": ', literal, b'}, "traceback": null, "status_code": null}')),
        content_type="application/json",
    )


class InferenceView(APIView):
    """Task creation, the inference hot path, as an async view: its Redis work runs in the event
    loop, so that a sync request waiting for its replica holds no thread (ASGI,
    launch_site/asgi.py). Its database work (the API key, the endpoint) is read from the
    per-process route cache when it holds both under the current routing generation and the
    endpoint is READY (endpoints.route_cache: no query, no thread); otherwise it runs in a
    database thread (`prepare`), which also fills the cache. Requests are served without
    DRF's request wrapping, content negotiation and rendering (a fifth of a sync request's
    time, see BENCHMARKS.md): an API key, a JSON body and a JsonResponse, with the same
    errors as the rest of the API. It stays an APIView with a `post` so that the schema
    documents the route. Subclasses annotate the schema on an `async def post` of their own:
    @extend_schema on the class would wrap `post` in a sync method, and Django would then get
    an unawaited coroutine."""

    http_method_names = ["post", "options"]
    authentication_classes = [ApiKeyAuthentication]  # what post checks itself; the schema says it
    # Under ASGI (launch_site/asgi.py): whether a client that goes away cancels the view.
    watches_disconnect = False

    async def dispatch(self, request, *args, **kwargs):
        try:
            if request.method != "POST":
                raise MethodNotAllowed(request.method)
            return await self.post(request, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - rendered like every API error, or re-raised
            response = error_json_response(exc)
            if response is None:
                raise
            return response

    @extend_schema(request=OpenApiTypes.OBJECT, responses=OpenApiTypes.OBJECT)
    async def post(self, request, *args, **kwargs):
        async with async_redis(shared=isinstance(request, ASGIRequest)) as clients:
            route = self.cached_route(request, kwargs)
            if route is not None:
                submission = await self.submission_from_cache(request, route)
                try:
                    answer = await self.answer(request, submission, clients)
                except gateway.StaleRoute:  # a key, user or endpoint changed since: nothing was queued
                    route_cache.forget(route)
                    route = None
            if route is None:
                generation = await route_cache.current_generation(clients.client)
                submission = await in_db_thread(request, self.prepare, request, generation, **kwargs)
                answer = await self.answer(request, submission, clients)
        return answer if isinstance(answer, HttpResponseBase) else JsonResponse(answer)

    def cached_route(self, request, kwargs: dict) -> route_cache.Route | None:
        """The cached lookups of a request that will pass them; None sends it through `prepare`,
        which answers everything else (no key, a malformed one, no endpoint...) in its order."""
        header = request.META.get("HTTP_AUTHORIZATION")
        if not header:
            return None
        try:
            raw_key = key_from_header(header)
            endpoint_ref = self.endpoint_ref(request, **kwargs)
        except APIException:
            return None
        route = route_cache.cached(raw_key, endpoint_ref) if raw_key else None
        # Only a READY endpoint: the others may need a query to decide (gateway._check_can_serve).
        return route if route is not None and route.endpoint.status == ModelEndpoint.Status.READY else None

    async def submission_from_cache(self, request, route: route_cache.Route) -> gateway.Submission:
        throttling.check_address(throttling.client_address(request))  # as api_key_from_request does
        body, text = _json_body(request)
        if isinstance(body, dict) and (body.get("callback_url") is not None or body.get("callback_auth") is not None):
            # Checking a callback resolves its host or loads a certificate: not in the event loop.
            submission = await in_db_thread(
                request, self.submission, request, route.endpoint, body, text, route.api_key.prefix
            )
        else:
            submission = self.submission(request, route.endpoint, body, text, route.api_key.prefix)
        # Queued only if the lookups are still current (protocol.ADD_TASK_SCRIPT).
        return dataclasses.replace(submission, route_generation=route.generation)

    def prepare(self, request, generation: bytes, **kwargs) -> gateway.Submission:
        api_key = api_key_from_request(request)
        if api_key is None:
            raise NotAuthenticated("Send an API key: HTTP Basic with the key as username, or Bearer.")
        endpoint_ref = self.endpoint_ref(request, **kwargs)
        body, text = _json_body(request)
        endpoint = selectors.endpoint_for_tasks(team=api_key.team, **dict([endpoint_ref]))
        route_cache.remember(generation, key_from_header(request.META["HTTP_AUTHORIZATION"]), endpoint_ref, api_key,
                             endpoint)
        return self.submission(request, endpoint, body, text, api_key.prefix)

    def endpoint_ref(self, request, **kwargs) -> tuple[str, str]:
        """How the request names its endpoint: (endpoint_for_tasks's argument, value); a missing
        route parameter is refused before the body is read."""
        endpoint_id = request.GET.get("model_endpoint_id")
        if not endpoint_id:
            raise query_error("model_endpoint_id", "is required")
        return "endpoint_id", endpoint_id

    def submission(self, request, endpoint: ModelEndpoint, body, text: str, rate_key: str) -> gateway.Submission:
        raise NotImplementedError

    async def answer(self, request, submission: gateway.Submission, clients: AsyncRedis) -> dict | HttpResponseBase:
        raise NotImplementedError


def _json_body(request) -> tuple[object, bytes]:
    """The body parsed (as json.loads reads it: protocol.load_json), and the body itself: the
    gateway may pass it on to the replica as it is, so a large body is parsed once and never
    re-encoded."""
    raw = request.body or b"null"
    try:
        return protocol.load_json(raw), raw
    except ValueError as exc:  # UnicodeDecodeError is one
        raise ParseError(f"JSON parse error - {exc}") from None


def sync_timeout(body: dict) -> float | None:
    timeout = body.get("timeout_seconds")
    if timeout is not None:
        # Clamped to SYNC_TASK_TIMEOUT_SECONDS by the gateway; bounded here so nan/inf never reach it.
        timeout = limits.check_seconds(timeout, field="timeout_seconds", maximum=limits.MAX_TASK_EXPIRES_SECONDS)
    return timeout


# The task routes' bodies and answers (the contract's SyncEndpointPredictV1Request and
# friends), for the served schema: InferenceView bypasses DRF, so nothing is inferred.
_NULLABLE_STRING = {"type": "string", "nullable": True}
_TASK_REQUEST = {
    "type": "object",
    "description": "Exactly one of `args` or `url`. `cloudpickle`, `destination_path` and `num_retries` are "
                   "refused (422 naming them).",
    "properties": {
        "args": {"nullable": True, "description": "The predict's input (any JSON)."},
        "url": _NULLABLE_STRING,
        "return_pickled": {"type": "boolean", "default": False},
        "callback_url": _NULLABLE_STRING,
        "callback_auth": {"type": "object", "nullable": True, "additionalProperties": True},
        "cloudpickle": _NULLABLE_STRING,
        "destination_path": _NULLABLE_STRING,
    },
}
_SYNC_TASK_REQUEST = {**_TASK_REQUEST, "properties": {
    **_TASK_REQUEST["properties"],
    "timeout_seconds": {"type": "number", "exclusiveMinimum": True, "minimum": 0, "nullable": True},
    "num_retries": {"type": "integer", "minimum": 0, "nullable": True},
}}
_TASK_STATUS = {"type": "string", "enum": [protocol.PENDING, protocol.STARTED, protocol.SUCCESS, protocol.FAILURE]}
_SYNC_TASK_ANSWER = {"type": "object", "required": ["status"], "properties": {
    "status": _TASK_STATUS,
    "result": {"nullable": True},
    "traceback": _NULLABLE_STRING,
    "status_code": {"type": "integer", "nullable": True},
}}
# A sync task the endpoint did not finish within SYNC_TASK_TIMEOUT_SECONDS (or the body's
# timeout_seconds): the task stays readable at /v1/async-tasks/{task_id}.
SYNC_TIMEOUT_RESPONSE = OpenApiResponse(
    response={"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}},
    description="The endpoint did not answer in time; the task stays queued and readable as an async task.",
)
_ENDPOINT_PARAMETER = OpenApiParameter(
    "model_endpoint_id", OpenApiTypes.STR, OpenApiParameter.QUERY, required=True,
    description="The endpoint's id (not found or another team's: 404).",
)


class SyncTaskView(InferenceView):
    @extend_schema(
        description="Runs a task and waits for its answer (up to SYNC_TASK_TIMEOUT_SECONDS).",
        parameters=[_ENDPOINT_PARAMETER], request={"application/json": _SYNC_TASK_REQUEST},
        responses={200: _SYNC_TASK_ANSWER, 504: SYNC_TIMEOUT_RESPONSE},
    )
    async def post(self, request, *args, **kwargs):  # for the schema (see InferenceView)
        return await super().post(request, *args, **kwargs)

    def submission(self, request, endpoint, body, text, rate_key):
        payload = gateway.task_payload(body)
        callbacks.task_callback(endpoint, body, async_task=False)
        return gateway.prepare_sync(
            endpoint=endpoint, payload=payload, timeout_seconds=sync_timeout(body),
            payload_text=gateway.payload_json(payload, body, text), rate_key=rate_key,
        )

    async def answer(self, request, submission, clients):
        task_id, record = await gateway.run_sync_async(clients, submission)
        if record["status"] == protocol.SUCCESS and record["result_literal"] is not None:
            return sync_success_response(record["result_literal"])
        return {
            "status": record["status"],
            "result": task_result_shape(request, task_id, record),
            "traceback": record.get("traceback"),
            "status_code": None,
        }


class AsyncTaskCreateView(InferenceView):
    @extend_schema(
        description="Queues a task; read it at /v1/async-tasks/{task_id}.",
        parameters=[_ENDPOINT_PARAMETER], request={"application/json": _TASK_REQUEST},
        responses={200: {"type": "object", "required": ["task_id"], "properties": {"task_id": {"type": "string"}}}},
    )
    async def post(self, request, *args, **kwargs):  # for the schema (see InferenceView)
        return await super().post(request, *args, **kwargs)

    def submission(self, request, endpoint, body, text, rate_key):
        payload = gateway.task_payload(body)
        callback = callbacks.task_callback(endpoint, body, async_task=True)
        return gateway.prepare_submit(
            endpoint=endpoint, payload=payload, callback=callback, payload_text=gateway.payload_json(payload, body, text),
            rate_key=rate_key,
        )

    async def answer(self, request, submission, clients):
        return {"task_id": await gateway.submit_async(clients, submission)}


class StreamingTaskView(InferenceView):
    """Server-sent events: one `data: {status, result: {result}, traceback, status_code}` event
    per item the predict yields (the shape the current client's EndpointResponseStream reads),
    and a FAILURE event with the traceback when it fails. Errors before the stream starts are
    ordinary JSON error answers."""

    watches_disconnect = True  # the replica stops the predict when its client is gone

    @extend_schema(
        description="Runs a task on a streaming endpoint and streams what its predict yields.",
        parameters=[_ENDPOINT_PARAMETER], request={"application/json": _TASK_REQUEST},
        responses={(200, "text/event-stream"): OpenApiResponse(
            response=OpenApiTypes.STR, description="Server-sent events, one `data: {status, result, traceback, "
                                                   "status_code}` line per item the predict yields.",
        )},
    )
    async def post(self, request, *args, **kwargs):  # for the schema (see InferenceView)
        return await super().post(request, *args, **kwargs)

    def submission(self, request, endpoint, body, text, rate_key):
        payload = gateway.task_payload(body)
        callbacks.task_callback(endpoint, body, async_task=False)
        if body.get("timeout_seconds") is not None:
            raise FieldError("timeout_seconds", "a stream is bounded by the server's STREAM_TIMEOUT_SECONDS; "
                                                "leave it out")
        if endpoint.endpoint_type != ModelEndpoint.EndpointType.STREAMING:
            raise FieldError("model_endpoint_id", f"endpoint {endpoint.name!r} is {endpoint.endpoint_type}, "
                                                  "not streaming; use /v1/sync-tasks or /v1/async-tasks")
        return gateway.prepare_stream(endpoint=endpoint, payload=payload, rate_key=rate_key)

    async def answer(self, request, submission, clients):
        await gateway.submit_async(clients, submission)  # before the 200: Redis down is still a 503
        shared = isinstance(request, ASGIRequest)
        events = _server_sent_events(submission, shared=shared)
        # Under WSGI (tests) Django would read an async iterator whole before sending it.
        response = StreamingHttpResponse(events if shared else _in_own_loop(events), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # a proxy must pass each event on at once
        return response


async def _server_sent_events(submission: gateway.Submission, *, shared: bool):
    # The view's Redis pair may be gone when this runs (WSGI): the stream takes its own.
    async with async_redis(shared=shared) as clients, contextlib.aclosing(
        gateway.stream_records(clients, submission)
    ) as records:
        async for record in records:
            # A comment line keeps the connection alive while the predict is quiet; writing it
            # is also how the server notices a client that went away (which closes this
            # generator: the gateway then tells the replica to stop).
            yield b": keep-alive\n\n" if record is None else f"data: {json.dumps(record)}\n\n".encode()


def _in_own_loop(events):
    """An async iterator as a sync one, on an event loop of its own; closing it (the client went
    away) closes the async one."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(anext(events))
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(events.aclose())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class AsyncTaskDetailView(APIView):
    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, task_id: str):
        record = gateway.task_get(team=request_team(request), task_id=task_id)
        return Response({
            "task_id": task_id,
            "status": record["status"],
            "result": task_result_shape(request, task_id, record),
            "traceback": record.get("traceback"),
            "status_code": None,
            **({"callback": record["callback"]} if record.get("callback") else {}),
        })


class TaskResultView(APIView):
    """The cloudpickled output of a task run with return_pickled."""

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY})
    def get(self, request, task_id: str):
        data = gateway.task_pickled_result(team=request_team(request), task_id=task_id)
        return HttpResponse(data, content_type="application/octet-stream")


class CreationLogsView(APIView):
    """The tail of the output of an endpoint's newest replicas, to read why a load failed."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, name: str):
        endpoint = selectors.endpoint_get_by_name(team=request_team(request), name=name)
        replicas = Replica.objects.filter(owner_kind="endpoint", owner_id=endpoint.id).order_by("-created_at")[:3]
        parts = []
        for replica in reversed(replicas):
            text = get_runtime(replica.runtime).logs(replica, tail_lines=200)
            parts.append(f"--- replica {replica.id} ({replica.state}) ---\n{text}")
        if endpoint.status_reason:
            parts.append(f"--- status: {endpoint.status} ---\n{endpoint.status_reason}")
        return Response({"content": "\n".join(parts)})

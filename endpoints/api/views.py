"""Endpoint and task routes of the native API (launch-openapi.json)."""

from __future__ import annotations

import json

from django.http import HttpResponse, JsonResponse
from rest_framework.exceptions import MethodNotAllowed, NotAuthenticated, ParseError
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import api_key_from_request
from accounts.selectors import request_team
from endpoints import gateway, selectors, services
from endpoints.api.serializers import EndpointCreateSerializer, EndpointUpdateSerializer
from endpoints.models import ModelEndpoint
from launch_site import limits
from launch_site.errors import error_json_response, query_error
from launch_site.public_url import absolute_url
from launch_site.redis_client import get_redis
from workers import protocol
from workers.models import Replica
from workers.runtimes import get_runtime


def endpoint_representation(endpoint: ModelEndpoint, counts: dict, queued: int | None) -> dict:
    return {
        "id": endpoint.id,
        "name": endpoint.name,
        "endpoint_type": endpoint.endpoint_type,
        "destination": protocol.Keys(protocol.endpoint_prefix(endpoint.id)).queue,
        "deployment_name": endpoint.name,
        "metadata": endpoint.metadata,
        "bundle_name": endpoint.bundle.name,
        "model_bundle_id": endpoint.bundle_id,
        "status": endpoint.status,
        "status_reason": endpoint.status_reason or None,
        "post_inference_hooks": endpoint.post_inference_hooks,
        "default_callback_url": endpoint.default_callback_url,
        "default_callback_auth": endpoint.default_callback_auth,
        "labels": endpoint.labels,
        "aws_role": None,
        "results_s3_bucket": None,
        "created_by": endpoint.created_by.username if endpoint.created_by else "",
        "created_at": endpoint.created_at.isoformat(),
        "last_updated_at": endpoint.last_updated_at.isoformat(),
        "deployment_state": {
            "min_workers": endpoint.min_workers,
            "max_workers": endpoint.max_workers,
            "per_worker": endpoint.per_worker,
            "concurrent_requests_per_worker": endpoint.per_worker,
            "available_workers": counts["available"],
            "unavailable_workers": counts["unavailable"],
        },
        "resource_state": {
            "cpus": endpoint.cpus,
            "gpus": endpoint.gpus,
            "memory": endpoint.memory,
            "gpu_type": endpoint.gpu_type,
            "storage": endpoint.storage,
            "nodes_per_worker": 1,
            "optimize_costs": None,
        },
        "num_queued_items": queued,
        "public_inference": False,
        "task_expires_seconds": endpoint.task_expires_seconds,
        "queue_message_timeout_seconds": endpoint.queue_message_timeout_seconds,
    }


def endpoints_representation(endpoints: list[ModelEndpoint]) -> list[dict]:
    counts = selectors.replica_counts(endpoints)
    with get_redis().pipeline(transaction=False) as pipe:
        for endpoint in endpoints:
            pipe.llen(protocol.Keys(protocol.endpoint_prefix(endpoint.id)).queue)
        queued = pipe.execute()
    return [endpoint_representation(e, counts[e.id], q) for e, q in zip(endpoints, queued, strict=True)]


class ModelEndpointListView(APIView):
    def get(self, request):
        order_by = request.query_params.get("order_by")
        if order_by not in (None, "newest", "oldest"):
            raise query_error("order_by", "must be newest or oldest")
        endpoints = list(selectors.endpoint_list(
            team=request_team(request), name=request.query_params.get("name"), order_by=order_by
        ))
        return Response({"model_endpoints": endpoints_representation(endpoints)})

    def post(self, request):
        serializer = EndpointCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        endpoint = services.endpoint_create(team=request_team(request), user=request.user, **serializer.validated_data)
        return Response({"endpoint_creation_task_id": endpoint.id})


class ModelEndpointDetailView(APIView):
    def get(self, request, endpoint_id: str):
        endpoint = selectors.endpoint_get(team=request_team(request), endpoint_id=endpoint_id)
        return Response(endpoints_representation([endpoint])[0])

    def put(self, request, endpoint_id: str):
        endpoint = selectors.endpoint_get(team=request_team(request), endpoint_id=endpoint_id)
        serializer = EndpointUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.endpoint_update(endpoint=endpoint, changes=dict(serializer.validated_data))
        return Response({"endpoint_creation_task_id": endpoint.id})

    def delete(self, request, endpoint_id: str):
        endpoint = selectors.endpoint_get(team=request_team(request), endpoint_id=endpoint_id)
        services.endpoint_delete(endpoint=endpoint)
        return Response({"deleted": True})


def task_result_shape(request, task_id: str, record: dict) -> dict | None:
    """On SUCCESS the contract's `result` is an object with `result` (JSON text) or `result_url`."""
    if record["status"] != protocol.SUCCESS:
        return None
    if record.get("result_pickled"):
        return {"result_url": absolute_url(request, f"/v1/task-results/{task_id}")}
    return {"result": record.get("result")}


class InferenceView(APIView):
    """Task creation, the inference hot path. Requests are served without DRF's request
    wrapping, content negotiation and rendering (a fifth of a sync request's time, see
    BENCHMARKS.md): an API key, a JSON body and a JsonResponse, with the same errors as the
    rest of the API. It stays an APIView so that the schema documents the route."""

    http_method_names = ["post", "options"]

    def dispatch(self, request, *args, **kwargs):
        try:
            if request.method != "POST":
                raise MethodNotAllowed(request.method)
            api_key = api_key_from_request(request)
            if api_key is None:
                raise NotAuthenticated("Send an API key: HTTP Basic with the key as username, or Bearer.")
            endpoint_id = request.GET.get("model_endpoint_id")
            if not endpoint_id:
                raise query_error("model_endpoint_id", "is required")
            body = _json_body(request)
            endpoint = selectors.endpoint_for_tasks(team=api_key.team, endpoint_id=endpoint_id)
            return JsonResponse(self.serve(request, endpoint, body, api_key.prefix))
        except Exception as exc:  # noqa: BLE001 - rendered like every API error, or re-raised
            response = error_json_response(exc)
            if response is None:
                raise
            return response

    def serve(self, request, endpoint: ModelEndpoint, body, rate_key: str) -> dict:
        raise NotImplementedError


def _json_body(request):
    try:
        return json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError(f"JSON parse error - {exc}") from None


class SyncTaskView(InferenceView):
    def serve(self, request, endpoint, body, rate_key) -> dict:
        payload = gateway.task_payload(body)
        timeout = body.get("timeout_seconds")
        if timeout is not None:
            # Clamped to SYNC_TASK_TIMEOUT_SECONDS by the gateway; bounded here so nan/inf never reach it.
            timeout = limits.check_seconds(timeout, field="timeout_seconds", maximum=limits.MAX_TASK_EXPIRES_SECONDS)
        task_id, record = gateway.task_run_sync(
            endpoint=endpoint, payload=payload, timeout_seconds=timeout, rate_key=rate_key
        )
        return {
            "status": record["status"],
            "result": task_result_shape(request, task_id, record),
            "traceback": record.get("traceback"),
            "status_code": None,
        }


class AsyncTaskCreateView(InferenceView):
    def serve(self, request, endpoint, body, rate_key) -> dict:
        task_id = gateway.task_submit(endpoint=endpoint, payload=gateway.task_payload(body), rate_key=rate_key)
        return {"task_id": task_id}


class AsyncTaskDetailView(APIView):
    def get(self, request, task_id: str):
        record = gateway.task_get(team=request_team(request), task_id=task_id)
        return Response({
            "task_id": task_id,
            "status": record["status"],
            "result": task_result_shape(request, task_id, record),
            "traceback": record.get("traceback"),
            "status_code": None,
        })


class TaskResultView(APIView):
    """The cloudpickled output of a task run with return_pickled."""

    def get(self, request, task_id: str):
        data = gateway.task_pickled_result(team=request_team(request), task_id=task_id)
        return HttpResponse(data, content_type="application/octet-stream")


class CreationLogsView(APIView):
    """The tail of the output of an endpoint's newest replicas, to read why a load failed."""

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

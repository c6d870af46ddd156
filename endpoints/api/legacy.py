"""Endpoint and task routes of the older dialect under /v1/hosted_inference/, spoken by the
public scale-launch 0.3.3 client (shared/reference/legacy-dialect.md).

Same services, selectors and gateway as the native routes; only names and shapes differ:
the client addresses endpoints and bundles by name, sends `{}` as a body on GET and DELETE
(GET and DELETE views here never read the body), asks for pickled results unless told
otherwise, and knows only the task states PENDING, SUCCESS and FAILURE.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Team
from accounts.selectors import request_team
from bundles import selectors as bundle_selectors
from bundles.models import ModelBundle
from endpoints import callbacks, gateway, selectors, services
from endpoints.api.serializers import NAME_HELP, QuantityField
from endpoints.api.views import (
    SYNC_TIMEOUT_RESPONSE,
    InferenceView,
    endpoint_representation,
    rendered_answers,
    task_result_shape,
)
from endpoints.models import GPU_TYPES
from launch_site.errors import FieldError, NotFoundError
from launch_site.pagination import page_of, page_response
from workers import protocol

# The client only knows these three; STARTED is still "not finished" to it, and it raises on
# any other value.
LEGACY_TASK_STATES = {
    protocol.PENDING: "PENDING",
    protocol.STARTED: "PENDING",
    protocol.SUCCESS: "SUCCESS",
    protocol.FAILURE: "FAILURE",
}


def bundle_latest_by_name(*, team: Team, name: str, field: str = "bundle_name") -> ModelBundle:
    """The newest bundle of that name; a missing one is a bad value of `field` (422)."""
    try:
        return bundle_selectors.bundle_latest(team=team, name=name)
    except NotFoundError:
        raise FieldError(field, f"no model bundle named {name!r} in your team") from None


def legacy_endpoint(native: dict) -> dict:
    """The endpoint object the old client reads, built from the native representation so the
    two dialects cannot drift apart."""
    deployment, resources = native["deployment_state"], native["resource_state"]
    return {
        "name": native["name"],
        "id": native["id"],
        "bundle_name": native["bundle_name"],
        "status": native["status"],
        "status_reason": native["status_reason"],
        "endpoint_type": native["endpoint_type"],
        "destination": native["destination"],
        "metadata": native["metadata"],
        "resource_settings": {
            "cpus": resources["cpus"],
            "gpus": resources["gpus"],
            "memory": resources["memory"],
            "gpu_type": resources["gpu_type"],
            "storage": resources["storage"],
        },
        "worker_settings": {
            "min_workers": deployment["min_workers"],
            "max_workers": deployment["max_workers"],
            "per_worker": deployment["per_worker"],
            "available_workers": deployment["available_workers"],
            "unavailable_workers": deployment["unavailable_workers"],
        },
        "configs": {
            "labels": native["labels"],
            "post_inference_hooks": native["post_inference_hooks"],
            "task_expires_seconds": native["task_expires_seconds"],
        },
        "num_queued_items": native["num_queued_items"],
        "created_at": native["created_at"],
        "last_updated_at": native["last_updated_at"],
    }


def legacy_answer(row: dict, queued: int) -> dict:
    """The old client's endpoint object from an answer row (endpoints.api.views.rendered_answers)."""
    return legacy_endpoint(endpoint_representation(row, queued))


def _renamed_field_error(error: FieldError, renames: dict[str, str]) -> FieldError:
    """Name the legacy field (endpoint_name, bundle_name) in errors the services raise."""
    location, *path = error.errors[0]["loc"]
    if path and path[0] in renames:
        message = error.errors[0]["msg"].split(": ", 1)[-1]
        return FieldError(renames[path[0]], message, location=location)
    return error


class LegacyEndpointCreateSerializer(serializers.Serializer):
    endpoint_name = serializers.RegexField(
        r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=63, error_messages={"invalid": f"use {NAME_HELP}"}
    )
    bundle_name = serializers.CharField()
    endpoint_type = serializers.ChoiceField(choices=["sync", "async"], default="sync")
    cpus = QuantityField(default=3)
    memory = QuantityField(default="8Gi")
    storage = QuantityField(required=False, allow_null=True)
    gpus = serializers.IntegerField(min_value=0, default=0)
    gpu_type = serializers.ChoiceField(choices=GPU_TYPES, required=False, allow_null=True)
    min_workers = serializers.IntegerField(min_value=0, default=1)
    max_workers = serializers.IntegerField(min_value=0, default=1)
    per_worker = serializers.IntegerField(min_value=1, default=10)
    post_inference_hooks = serializers.ListField(child=serializers.CharField(), required=False, allow_null=True)
    labels = serializers.DictField(child=serializers.CharField(), required=False, allow_null=True)
    metadata = serializers.DictField(required=False, allow_null=True)


class LegacyEndpointUpdateSerializer(serializers.Serializer):
    bundle_name = serializers.CharField(required=False, allow_null=True)
    cpus = QuantityField(required=False, allow_null=True)
    memory = QuantityField(required=False, allow_null=True)
    storage = QuantityField(required=False, allow_null=True)
    gpus = serializers.IntegerField(min_value=0, required=False, allow_null=True)
    gpu_type = serializers.ChoiceField(choices=GPU_TYPES, required=False, allow_null=True)
    min_workers = serializers.IntegerField(min_value=0, required=False, allow_null=True)
    max_workers = serializers.IntegerField(min_value=0, required=False, allow_null=True)
    per_worker = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    post_inference_hooks = serializers.ListField(child=serializers.CharField(), required=False, allow_null=True)
    labels = serializers.DictField(child=serializers.CharField(), required=False, allow_null=True)
    metadata = serializers.DictField(required=False, allow_null=True)


class LegacyEndpointListView(APIView):
    @extend_schema(operation_id="v1_hosted_inference_endpoints_list", responses=OpenApiTypes.OBJECT)
    def get(self, request):
        rows, more = page_of(request, selectors.endpoint_answer_rows(team=request_team(request)))
        return page_response(request, "endpoints", rendered_answers(legacy_answer, rows), more)

    @extend_schema(request=LegacyEndpointCreateSerializer, responses=OpenApiTypes.OBJECT)
    def post(self, request):
        serializer = LegacyEndpointCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        team = request_team(request)
        bundle = bundle_latest_by_name(team=team, name=data.pop("bundle_name"))
        try:
            endpoint = services.endpoint_create(
                team=team, user=request.user, name=data.pop("endpoint_name"), model_bundle_id=bundle.id, **data
            )
        except FieldError as error:
            raise _renamed_field_error(error, {"name": "endpoint_name"}) from None
        return Response({"endpoint_creation_task_id": endpoint.id})


class LegacyEndpointDetailView(APIView):
    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, name: str):
        row = selectors.endpoint_answer_row(team=request_team(request), name=name)
        return Response(rendered_answers(legacy_answer, [row])[0])

    @extend_schema(request=LegacyEndpointUpdateSerializer, responses=OpenApiTypes.OBJECT)
    def put(self, request, name: str):
        team = request_team(request)
        endpoint = selectors.endpoint_get_by_name(team=team, name=name)
        serializer = LegacyEndpointUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        changes = dict(serializer.validated_data)
        bundle_name = changes.pop("bundle_name", None)
        if bundle_name is not None:
            changes["model_bundle_id"] = bundle_latest_by_name(team=team, name=bundle_name).id
        services.endpoint_update(endpoint=endpoint, changes=changes)
        return Response({"endpoint_creation_task_id": endpoint.id})

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def delete(self, request, name: str):
        endpoint = selectors.endpoint_get_by_name(team=request_team(request), name=name)
        services.endpoint_delete(endpoint=endpoint)
        return Response({"deleted": True})


def legacy_task_payload(data) -> dict:
    """The old client defaults return_pickled to true, and with both url and args it means url
    (it warns "args will be ignored")."""
    if not isinstance(data, dict):
        return gateway.task_payload(data)
    data = dict(data)
    data.setdefault("return_pickled", True)
    if data.get("url") is not None:
        data.pop("args", None)
    return gateway.task_payload(data)


def legacy_task_answer(request, task_id: str, record: dict) -> dict:
    shape = task_result_shape(request, task_id, record) or {}
    state = LEGACY_TASK_STATES.get(record["status"])
    traceback = record.get("traceback")
    if state is None:
        state, traceback = "FAILURE", traceback or f"the task ended in state {record['status']}"
    return {
        "task_id": task_id,
        "state": state,
        "result": shape.get("result"),
        "result_url": shape.get("result_url"),
        "traceback": traceback,
    }


class LegacyInferenceView(InferenceView):
    """The old dialect's task routes: the endpoint by its name in the path, with an API key
    (async views, as InferenceView)."""

    def endpoint_ref(self, request, *, endpoint_name: str) -> tuple[str, str]:
        return "name", endpoint_name


class LegacySyncTaskView(LegacyInferenceView):
    @extend_schema(request=OpenApiTypes.OBJECT, responses={200: OpenApiTypes.OBJECT, 504: SYNC_TIMEOUT_RESPONSE})
    async def post(self, request, *args, **kwargs):
        return await super().post(request, *args, **kwargs)

    def submission(self, request, endpoint, body, text, rate_key):
        payload = legacy_task_payload(body)
        callbacks.task_callback(endpoint, body, async_task=False)
        return gateway.prepare_sync(endpoint=endpoint, payload=payload, timeout_seconds=None, rate_key=rate_key)

    async def answer(self, request, submission, clients):
        task_id, record = await gateway.run_sync_async(clients, submission)
        return legacy_task_answer(request, task_id, record)


class LegacyAsyncTaskCreateView(LegacyInferenceView):
    @extend_schema(request=OpenApiTypes.OBJECT, responses=OpenApiTypes.OBJECT)
    async def post(self, request, *args, **kwargs):
        return await super().post(request, *args, **kwargs)

    def submission(self, request, endpoint, body, text, rate_key):
        payload = legacy_task_payload(body)
        callback = callbacks.task_callback(endpoint, body, async_task=True)
        return gateway.prepare_submit(endpoint=endpoint, payload=payload, callback=callback, rate_key=rate_key)

    async def answer(self, request, submission, clients):
        return {"task_id": await gateway.submit_async(clients, submission)}


class LegacyAsyncTaskDetailView(APIView):
    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, endpoint_name: str, task_id: str):
        team = request_team(request)
        endpoint = selectors.endpoint_get_by_name(team=team, name=endpoint_name)
        if protocol.endpoint_id_of_task(task_id) != endpoint.id:
            raise NotFoundError(f"no task {task_id!r} on endpoint {endpoint_name!r}")
        record = gateway.task_get(team=team, task_id=task_id)
        return Response(legacy_task_answer(request, task_id, record))


class LegacyTaskResultView(APIView):
    """`get_async_response(task_id)`: the task by its id alone (ids carry their endpoint)."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, task_id: str):
        record = gateway.task_get(team=request_team(request), task_id=task_id)
        return Response(legacy_task_answer(request, task_id, record))

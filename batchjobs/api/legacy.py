"""Batch job routes of the older dialect under /v1/hosted_inference/, spoken by the public
scale-launch 0.3.3 client (shared/reference/legacy-dialect.md): create by bundle name with
the resources as top-level fields, and read a job back by id. Same services as the native
routes."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import request_team
from batchjobs import selectors, services
from batchjobs.api.views import job_response
from endpoints.api.serializers import QuantityField
from launch_site.errors import FieldError

# The client allows these two Spark tuning options; there is no Spark here, so they are
# accepted and have no effect.
IGNORED_OPTIONS = ("pyspark_partition_size", "pyspark_max_executors")
RESOURCE_OPTIONS = ("cpus", "memory", "storage", "gpus", "gpu_type", "max_workers")


class LegacyBatchJobCreateSerializer(serializers.Serializer):
    input_path = serializers.CharField()
    serialization_format = serializers.CharField(default="json")
    labels = serializers.DictField(child=serializers.CharField(), required=False, allow_null=True)
    cpus = QuantityField(required=False, allow_null=True)
    memory = QuantityField(required=False, allow_null=True)
    storage = QuantityField(required=False, allow_null=True)
    gpus = serializers.IntegerField(min_value=0, required=False, allow_null=True)
    gpu_type = serializers.CharField(required=False, allow_null=True)
    max_workers = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    pyspark_partition_size = serializers.IntegerField(required=False, allow_null=True)
    pyspark_max_executors = serializers.IntegerField(required=False, allow_null=True)


class LegacyBatchJobView(APIView):
    """POST batch_job/<bundle_name> creates; GET batch_job/<job_id> reads (one path, two
    meanings, as the client uses it)."""

    @extend_schema(request=LegacyBatchJobCreateSerializer, responses=OpenApiTypes.OBJECT)
    def post(self, request, key: str):
        serializer = LegacyBatchJobCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        resources = {name: data.pop(name) for name in RESOURCE_OPTIONS if data.get(name) is not None}
        for name in (*IGNORED_OPTIONS, *RESOURCE_OPTIONS):
            data.pop(name, None)
        try:
            job = services.batch_job_create_for_bundle_name(
                team=request_team(request),
                user=request.user,
                bundle_name=key,
                input_path=data["input_path"],
                serialization_format=data["serialization_format"],
                labels=data.get("labels") or {},
                resource_requests=resources,
            )
        except FieldError as error:
            # The client sends resources as top-level fields: name them so.
            location, *path = error.errors[0]["loc"]
            if path and path[0].startswith("resource_requests."):
                message = error.errors[0]["msg"].split(": ", 1)[-1]
                raise FieldError(path[0].removeprefix("resource_requests."), message, location=location) from None
            raise
        return Response({"job_id": job.id})

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, key: str):
        job = selectors.batch_job_get(team=request_team(request), job_id=key)
        return Response(job_response(request, job))

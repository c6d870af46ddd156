"""Batch job routes of the native API (launch-openapi.json), plus our direct upload and the
results download."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import request_team
from batchjobs import selectors, services, storage
from batchjobs.api.serializers import CreateBatchJobSerializer, UpdateBatchJobSerializer, UploadBatchJobSerializer
from batchjobs.models import BatchJob
from launch_site.errors import NotFoundError, PayloadTooLargeError
from launch_site.public_url import absolute_url
from launch_site.responses import FileStreamResponse


def result_url(request, job: BatchJob) -> str:
    return absolute_url(request, f"/v1/batch-jobs/{job.id}/result")


def job_response(request, job: BatchJob) -> dict:
    return selectors.batch_job_status(job, result_url=result_url(request, job))


class BatchJobCreateView(APIView):
    @extend_schema(request=CreateBatchJobSerializer, responses={200: OpenApiTypes.OBJECT})
    def post(self, request):
        serializer = CreateBatchJobSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        job = services.batch_job_create(team=request_team(request), user=request.user, **serializer.validated_data)
        return Response({"job_id": job.id})


class BatchJobUploadView(APIView):
    parser_classes = [MultiPartParser]

    @extend_schema(request={"multipart/form-data": UploadBatchJobSerializer}, responses={200: OpenApiTypes.OBJECT})
    def post(self, request):
        serializer = UploadBatchJobSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        upload = data.pop("file")
        if upload.size > settings.MAX_UPLOAD_BYTES:
            raise PayloadTooLargeError(f"file: the input file is larger than {settings.MAX_UPLOAD_BYTES} bytes")
        resources = data.pop("resource_requests") or {}
        for name in ("cpus", "memory", "storage", "gpus", "gpu_type", "max_workers", "per_worker"):
            if name in data:
                resources[name] = data.pop(name)
        job = services.batch_job_create_from_upload(
            team=request_team(request),
            user=request.user,
            file=upload,
            size=upload.size,
            resource_requests=resources,
            **data,
        )
        return Response({"job_id": job.id})


class BatchJobDetailView(APIView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def get(self, request, batch_job_id: str):
        job = selectors.batch_job_get(team=request_team(request), job_id=batch_job_id)
        return Response(job_response(request, job))

    @extend_schema(request=UpdateBatchJobSerializer, responses={200: OpenApiTypes.OBJECT})
    def put(self, request, batch_job_id: str):
        job = selectors.batch_job_get(team=request_team(request), job_id=batch_job_id)
        serializer = UpdateBatchJobSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        services.batch_job_update(job=job, cancel=serializer.validated_data["cancel"])
        return Response({"success": True})


class BatchJobResultView(APIView):
    """The results file of a finished job (JSON list, or a pickle with PICKLE)."""

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY})
    def get(self, request, batch_job_id: str):
        job = selectors.batch_job_get(team=request_team(request), job_id=batch_job_id)
        if job.result is None:
            raise NotFoundError(f"batch job {job.id} has no results file (status {job.status})")
        pickled = job.serialization_format == BatchJob.SerializationFormat.PICKLE
        return FileStreamResponse(
            storage.open_stored(job.result),
            content_type="application/octet-stream" if pickled else "application/json",
            as_attachment=True,
            filename=f"{job.id}-results.{'pkl' if pickled else 'json'}",
        )

"""The contract's /v1/files routes: a team's text files, stored in the bundle store."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import request_team
from bundles import selectors, services, store
from bundles.api.views import FORM_OVERHEAD_BYTES, OBJECT
from bundles.models import File
from launch_site.errors import PayloadTooLargeError
from launch_site.pagination import PAGE_PARAMETERS, page_of, page_response


class FileUploadSerializer(serializers.Serializer):
    file = serializers.FileField(allow_empty_file=True)


def file_v1(file: File) -> dict:
    # `size` is in bytes: what is stored and counted against the quota.
    return {"id": file.id, "filename": file.filename, "size": file.size}


class FileListView(APIView):
    parser_classes = [MultiPartParser]

    @extend_schema(operation_id="v1_files_list", parameters=PAGE_PARAMETERS, responses=OBJECT)
    def get(self, request):
        files, more = page_of(request, selectors.file_list(team=request_team(request)))
        return page_response(request, "files", [file_v1(f) for f in files], more)

    @extend_schema(request={"multipart/form-data": FileUploadSerializer}, responses=OBJECT)
    def post(self, request):
        length = request.META.get("CONTENT_LENGTH") or ""
        if length.isdigit() and int(length) > settings.MAX_UPLOAD_BYTES + FORM_OVERHEAD_BYTES:
            # Refuse before Django spools the whole body to a temporary file.
            raise PayloadTooLargeError(store.too_large_message(settings.MAX_UPLOAD_BYTES))
        serializer = FileUploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = serializer.validated_data["file"]
        file = services.file_upload(team=request_team(request), filename=upload.name, stream=upload, size=upload.size)
        return Response({"id": file.id})


class FileDetailView(APIView):
    @extend_schema(responses=OBJECT)
    def get(self, request, file_id: str):
        return Response(file_v1(selectors.file_get(team=request_team(request), file_id=file_id)))

    @extend_schema(responses=OBJECT)
    def delete(self, request, file_id: str):
        services.file_delete(file=selectors.file_get(team=request_team(request), file_id=file_id))
        return Response({"deleted": True})


class FileContentView(APIView):
    @extend_schema(responses=OBJECT)
    def get(self, request, file_id: str):
        file = selectors.file_get(team=request_team(request), file_id=file_id)
        return Response({"id": file.id, "content": selectors.file_content(file)})

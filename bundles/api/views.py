"""Bundle routes: native v1 and v2 (launch-openapi.json), our multipart upload, the upload
URL routes the clients call, and the signed store URLs (no API key)."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import request_team
from bundles import selectors, services, store
from bundles.api.serializers import (
    BundleUploadSerializer,
    BundleV1CreateSerializer,
    BundleV2CreateSerializer,
    CloneSerializer,
    bundle_v1,
    bundle_v2,
)
from bundles.models import StoredObject
from launch_site.errors import ApplicationError, NotFoundError, PayloadTooLargeError, query_error
from launch_site.middleware import streams_body
from launch_site.pagination import PAGE_PARAMETERS, page_of, page_response
from launch_site.responses import FileStreamResponse

# Multipart overhead (boundaries, the small fields) allowed on top of MAX_UPLOAD_BYTES before
# we refuse a request by its Content-Length alone; the file itself is capped exactly.
FORM_OVERHEAD_BYTES = 1024 * 1024
LIST_PARAMETERS = [
    OpenApiParameter("model_name", str, required=False),
    OpenApiParameter("order_by", str, required=False, enum=["newest", "oldest"]),
    *PAGE_PARAMETERS,
]
OBJECT = {200: OpenApiTypes.OBJECT}


def list_query(request) -> dict:
    order_by = request.query_params.get("order_by")  # empty is refused, not read as absent
    if order_by not in (None, *selectors.ORDERINGS):
        raise query_error("order_by", "must be newest or oldest")
    return {"model_name": request.query_params.get("model_name") or None, "order_by": order_by}


def required_query(request, name: str) -> str:
    value = request.query_params.get(name)
    if not value:
        raise query_error(name, "This field is required.")
    return value


class BundleV1ListView(APIView):
    @extend_schema(operation_id="v1_model_bundles_list", parameters=LIST_PARAMETERS, responses=OBJECT)
    def get(self, request):
        bundles, more = page_of(request, selectors.bundle_list(team=request_team(request), **list_query(request)))
        return page_response(request, "model_bundles", [bundle_v1(b) for b in bundles], more)

    @extend_schema(request=BundleV1CreateSerializer, responses=OBJECT)
    def post(self, request):
        serializer = BundleV1CreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        bundle = services.bundle_create(
            team=request_team(request),
            user=request.user,
            name=data["name"],
            location=data["location"],
            flavor=services.flavor_for_packaging_type(data["packaging_type"]),
            requirements=data["requirements"],
            env_params=dict(data["env_params"]),
            metadata=data.get("metadata"),
            app_config=data.get("app_config"),
            schema_location=data.get("schema_location"),
        )
        return Response({"model_bundle_id": bundle.id})


class BundleV2ListView(APIView):
    @extend_schema(operation_id="v2_model_bundles_list", parameters=LIST_PARAMETERS, responses=OBJECT)
    def get(self, request):
        bundles, more = page_of(request, selectors.bundle_list(team=request_team(request), **list_query(request)))
        return page_response(request, "model_bundles", [bundle_v2(b) for b in bundles], more)

    @extend_schema(request=BundleV2CreateSerializer, responses=OBJECT)
    def post(self, request):
        serializer = BundleV2CreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        flavor = data["flavor"]
        if flavor["flavor"] in services.RUNNABLE_IMAGE_FIELDS:
            bundle = services.bundle_create_runnable_image(
                team=request_team(request),
                user=request.user,
                name=data["name"],
                flavor=flavor["flavor"],
                values=flavor,
                metadata=data.get("metadata"),
                schema_location=data.get("schema_location"),
            )
            return Response({"model_bundle_id": bundle.id})
        bundle = services.bundle_create(
            team=request_team(request),
            user=request.user,
            name=data["name"],
            location=flavor["location"],
            location_field="flavor.location",
            flavor=flavor["flavor"],
            requirements=flavor["requirements"],
            framework=dict(flavor["framework"]),
            metadata=data.get("metadata"),
            app_config=flavor.get("app_config"),
            schema_location=data.get("schema_location"),
            load_predict_fn=flavor["load_predict_fn"],
            load_model_fn=flavor["load_model_fn"],
            load_predict_fn_module_path=flavor["load_predict_fn_module_path"],
            load_model_fn_module_path=flavor["load_model_fn_module_path"],
        )
        return Response({"model_bundle_id": bundle.id})


class BundleLatestView(APIView):
    representation = staticmethod(bundle_v1)

    @extend_schema(parameters=[OpenApiParameter("model_name", str, required=True)], responses=OBJECT)
    def get(self, request):
        name = required_query(request, "model_name")
        return Response(self.representation(selectors.bundle_latest(team=request_team(request), name=name)))


class BundleDetailView(APIView):
    representation = staticmethod(bundle_v1)

    @extend_schema(responses=OBJECT)
    def get(self, request, model_bundle_id: str):
        bundle = selectors.bundle_get(team=request_team(request), bundle_id=model_bundle_id)
        return Response(self.representation(bundle))


class BundleCloneView(APIView):
    @extend_schema(request=CloneSerializer, responses=OBJECT)
    def post(self, request):
        serializer = CloneSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        original = selectors.bundle_get(team=request_team(request), bundle_id=data["original_model_bundle_id"])
        clone = services.bundle_clone_with_changes(
            bundle=original, user=request.user, app_config=data.get("new_app_config", services.UNCHANGED)
        )
        return Response({"model_bundle_id": clone.id})


class BundleUploadView(APIView):
    """`curl -F file=@bundle.pkl -F name=my-model .../v1/model-bundles/upload`: store and create
    in one request."""

    parser_classes = [MultiPartParser]

    @extend_schema(request={"multipart/form-data": BundleUploadSerializer}, responses=OBJECT)
    def post(self, request):
        length = request.META.get("CONTENT_LENGTH") or ""
        if length.isdigit() and int(length) > settings.MAX_UPLOAD_BYTES + FORM_OVERHEAD_BYTES:
            # Refuse before Django spools the whole body to a temporary file.
            raise PayloadTooLargeError(store.too_large_message(settings.MAX_UPLOAD_BYTES))
        serializer = BundleUploadSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        upload = data["file"]
        bundle = services.bundle_create_from_upload(
            team=request_team(request),
            user=request.user,
            name=data["name"],
            file=upload,
            size=upload.size,
            packaging_type=data["packaging_type"],
            requirements=data["requirements"],
            env_params=data["env_params"],
            metadata=data["metadata"],
            app_config=data["app_config"],
            python_version=data["python_version"],
            load_predict_fn_module_path=data["load_predict_fn_module_path"],
            load_model_fn_module_path=data["load_model_fn_module_path"],
        )
        return Response(bundle_v1(bundle))


class UploadUrlView(APIView):
    """`{"signedUrl", "bucket", "key"}`; the client PUTs the bytes to signedUrl and later sends
    `s3://{bucket}/{key}` as a location."""

    kind = StoredObject.Kind.BUNDLE

    @extend_schema(request=None, responses=OBJECT)
    def post(self, request):
        stored, url = services.upload_url_create(team=request_team(request), kind=self.kind, request=request)
        return Response({"signedUrl": url, "bucket": settings.BUNDLE_STORE_BUCKET, "key": stored.key})


def _error(message: str, status: int) -> JsonResponse:
    return JsonResponse({"detail": message}, status=status)


@streams_body  # bounded by MAX_UPLOAD_BYTES and the team's storage quota
@csrf_exempt
@require_http_methods(["GET", "PUT"])
def store_object(request: HttpRequest, token: str) -> HttpResponse:
    """The signed URLs: PUT takes the raw body of an upload URL (no auth header, no content
    type: what the public client sends), streamed in chunks; GET streams one object's bytes
    to whoever holds a download token (a replica fetching its bundle)."""
    purpose = "upload" if request.method == "PUT" else "download"
    salt = store.UPLOAD_SALT if request.method == "PUT" else store.DOWNLOAD_SALT
    try:
        stored = selectors.stored_object_for_token(token, salt=salt)
    except store.TokenError as error:
        if error.expired:
            return _error(f"{purpose} URL expired; ask for a new one", 403)
        return _error(f"{purpose} URL signature is invalid", 403)
    except NotFoundError as error:
        return _error(error.message, 404)

    if request.method == "GET":
        try:
            stream = store.open_object(stored)
        except (OSError, LookupError):
            return _error("nothing was uploaded to this object yet", 404)
        return FileStreamResponse(stream, content_type="application/octet-stream")

    length = request.META.get("CONTENT_LENGTH") or ""
    try:
        stored = services.stored_object_upload(
            stored=stored, stream=request, content_length=int(length) if length.isdigit() else None
        )
    except ApplicationError as error:
        return _error(error.message, error.status_code)
    return JsonResponse({"key": stored.key, "size": stored.size, "sha256": stored.sha256})

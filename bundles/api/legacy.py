"""The bundle routes of the older client (scale-launch 0.3.3) under /v1/hosted_inference/,
field by field in legacy-dialect.md, over the same services as the native routes. That
client sends a JSON body `{}` on GET and DELETE; DRF ignores a body it is not asked for."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import request_team
from bundles import selectors, services
from bundles.api.serializers import LegacyBundleCreateSerializer, LegacyCloneSerializer, bundle_legacy
from launch_site.errors import FieldError
from launch_site.pagination import PAGE_PARAMETERS, page_of, page_response

OBJECT = {200: OpenApiTypes.OBJECT}


class LegacyBundleListView(APIView):
    @extend_schema(operation_id="v1_hosted_inference_model_bundle_list", parameters=PAGE_PARAMETERS, responses=OBJECT)
    def get(self, request):
        bundles, more = page_of(request, selectors.bundle_list(team=request_team(request)))
        return page_response(request, "bundles", [bundle_legacy(b) for b in bundles], more)

    @extend_schema(request=LegacyBundleCreateSerializer, responses=OBJECT)
    def post(self, request):
        serializer = LegacyBundleCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            bundle = services.bundle_create(
                team=request_team(request),
                user=request.user,
                name=data["bundle_name"],
                location=data["location"],
                flavor=services.flavor_for_packaging_type(data["packaging_type"]),
                requirements=data["requirements"],
                env_params=data.get("env_params") or None,
                # The client puts the functions' source (cloudpickle) or their module paths (zip) here.
                metadata=data.get("bundle_metadata"),
                app_config=data.get("app_config"),
            )
        except FieldError as error:
            raise _renamed(error, {"name": "bundle_name", "metadata": "bundle_metadata"})
        return Response(bundle_legacy(bundle))


def _renamed(error: FieldError, renames: dict[str, str]) -> FieldError:
    """The service names native fields; say the legacy name the client sent."""
    field = error.errors[0]["loc"][-1]
    head, _, rest = field.partition(".")
    if head not in renames:
        return error
    message = error.message.partition(": ")[2]
    return FieldError(renames[head] + (f".{rest}" if rest else ""), message)


class LegacyBundleDetailView(APIView):
    @extend_schema(responses=OBJECT)
    def get(self, request, name: str):
        bundle = selectors.bundle_latest(team=request_team(request), name=name)
        return Response({"bundles": [bundle_legacy(bundle)]})

    @extend_schema(responses=OBJECT)
    def delete(self, request, name: str):
        services.bundle_delete_by_name(team=request_team(request), name=name)
        return Response({"deleted": True})


class LegacyBundleCloneView(APIView):
    @extend_schema(request=LegacyCloneSerializer, responses=OBJECT)
    def post(self, request):
        serializer = LegacyCloneSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        team = request_team(request)
        original = selectors.bundle_latest(team=team, name=data["existing_bundle_name"])
        try:
            clone = services.bundle_clone_with_changes(
                bundle=original,
                user=request.user,
                name=data["new_bundle_name"],
                app_config=data.get("app_config", services.UNCHANGED),
            )
        except FieldError as error:
            raise _renamed(error, {"name": "new_bundle_name"})
        return Response(bundle_legacy(clone))

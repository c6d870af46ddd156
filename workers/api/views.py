"""The admin-only hosts API: staff users' keys only."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from launch_site.errors import NotFoundError
from workers import hosts
from workers.api.serializers import HostCreateSerializer, HostSerializer, HostUpdateSerializer
from workers.models import Host


def _host_or_404(host_id: int) -> Host:
    host = Host.objects.filter(pk=host_id).first()
    if host is None:
        raise NotFoundError(f"no host with id {host_id}")
    return host


class HostListView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(operation_id="v1_hosts_list", responses=OpenApiTypes.OBJECT)
    def get(self, request):
        return Response(HostSerializer(Host.objects.order_by("name"), many=True).data)

    @extend_schema(request=OpenApiTypes.OBJECT, responses=OpenApiTypes.OBJECT)
    def post(self, request):
        data = HostCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        host = hosts.host_register(**data.validated_data)
        return Response(HostSerializer(host).data, status=201)


class HostDetailView(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, host_id: int):
        return Response(HostSerializer(_host_or_404(host_id)).data)

    @extend_schema(request=OpenApiTypes.OBJECT, responses=OpenApiTypes.OBJECT)
    def patch(self, request, host_id: int):
        host = _host_or_404(host_id)
        data = HostUpdateSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        host = hosts.host_update(host=host, **data.validated_data)
        return Response(HostSerializer(host).data)

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def delete(self, request, host_id: int):
        hosts.host_delete(host=_host_or_404(host_id))
        return Response(status=204)

from __future__ import annotations

from rest_framework import serializers

from workers.models import LIVE_STATES, Host


class HostSerializer(serializers.ModelSerializer):
    """A host as the admin API shows it. TLS material is write-only: only whether it is set."""

    gpus = serializers.SerializerMethodField()
    has_tls = serializers.SerializerMethodField()
    live_replicas = serializers.SerializerMethodField()

    class Meta:
        model = Host
        fields = [
            "id",
            "name",
            "docker_url",
            "has_tls",
            "cpus",
            "memory_bytes",
            "gpus",
            "gpu_type",
            "gpu_device_ids",
            "gpus_via_env_only",
            "labels",
            "cordoned",
            "draining",
            "healthy",
            "consecutive_failures",
            "last_probe_at",
            "last_error",
            "docker_version",
            "nvidia_runtime",
            "live_replicas",
            "created_at",
        ]

    def get_gpus(self, host: Host) -> int:
        return len(host.gpu_device_ids)

    def get_has_tls(self, host: Host) -> bool:
        return bool(host.tls_client_cert)

    def get_live_replicas(self, host: Host) -> int:
        return host.replicas.filter(state__in=LIVE_STATES).count()


class _HostInputFields(serializers.Serializer):
    docker_url = serializers.CharField(max_length=500)
    gpus = serializers.IntegerField(min_value=0, required=False, allow_null=True)
    gpu_type = serializers.CharField(max_length=40, required=False, allow_blank=True)
    gpu_device_ids = serializers.ListField(child=serializers.CharField(max_length=64), required=False)
    labels = serializers.DictField(child=serializers.CharField(max_length=200, allow_blank=True), required=False)
    tls_ca_cert = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    tls_client_cert = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    tls_client_key = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    gpus_via_env_only = serializers.BooleanField(required=False)


class HostCreateSerializer(_HostInputFields):
    name = serializers.SlugField(max_length=64)


class HostUpdateSerializer(_HostInputFields):
    docker_url = serializers.CharField(max_length=500, required=False)
    cordoned = serializers.BooleanField(required=False)
    draining = serializers.BooleanField(required=False)

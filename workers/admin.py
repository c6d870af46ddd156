from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Count, Q

from workers.hosts import host_probe, host_set_cordoned, host_set_draining
from workers.models import LIVE_STATES, Host, Replica, WorkerImage


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "docker_url",
        "healthy",
        "cordoned",
        "draining",
        "cpus",
        "memory_gib",
        "gpus",
        "live_replicas",
        "last_probe_at",
        "last_error",
    ]
    list_filter = ["healthy", "cordoned", "draining", "gpu_type"]
    search_fields = ["name", "docker_url"]
    readonly_fields = [
        "cpus",
        "memory_bytes",
        "healthy",
        "consecutive_failures",
        "last_probe_at",
        "last_error",
        "docker_version",
        "nvidia_runtime",
        "gpus_probed_at",
        "created_at",
    ]
    actions = ["cordon", "uncordon", "drain", "undrain", "probe_now", "probe_gpus_again"]

    def get_queryset(self, request):
        return (
            super().get_queryset(request).annotate(_live=Count("replicas", filter=Q(replicas__state__in=LIVE_STATES)))
        )

    @admin.display(description="memory (GiB)")
    def memory_gib(self, host: Host) -> str:
        return f"{host.memory_bytes / 1024**3:.1f}" if host.memory_bytes else "-"

    @admin.display(description="GPUs")
    def gpus(self, host: Host) -> str:
        return f"{len(host.gpu_device_ids)} x {host.gpu_type}" if host.gpu_device_ids else "-"

    @admin.display(description="live replicas", ordering="_live")
    def live_replicas(self, host: Host) -> int:
        return host._live

    @admin.action(description="Cordon: place no new replicas")
    def cordon(self, request, queryset):
        for host in queryset:
            host_set_cordoned(host=host, cordoned=True)

    @admin.action(description="Uncordon")
    def uncordon(self, request, queryset):
        for host in queryset:
            host_set_cordoned(host=host, cordoned=False)

    @admin.action(description="Drain: move replicas elsewhere")
    def drain(self, request, queryset):
        for host in queryset:
            host_set_draining(host=host, draining=True)

    @admin.action(description="Stop draining")
    def undrain(self, request, queryset):
        for host in queryset:
            host_set_draining(host=host, draining=False)

    @admin.action(description="Probe now")
    def probe_now(self, request, queryset):
        for host in queryset:
            host = host_probe(host)
            level = messages.SUCCESS if host.consecutive_failures == 0 else messages.WARNING
            self.message_user(
                request, f"{host.name}: {'answers' if level == messages.SUCCESS else host.last_error}", level
            )

    @admin.action(description="Probe GPUs again (nvidia-smi) on the next probe")
    def probe_gpus_again(self, request, queryset):
        queryset.update(gpus_probed_at=None)


@admin.register(WorkerImage)
class WorkerImageAdmin(admin.ModelAdmin):
    list_display = ["framework_type", "accelerator", "image", "python", "workdir"]


@admin.register(Replica)
class ReplicaAdmin(admin.ModelAdmin):
    list_display = ["id", "owner_kind", "owner_id", "state", "runtime", "host", "gpu_device_ids", "created_at"]
    list_filter = ["state", "runtime", "owner_kind", "host"]
    search_fields = ["id", "owner_id", "handle"]
    readonly_fields = [field.name for field in Replica._meta.fields]

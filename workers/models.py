from __future__ import annotations

from django.db import models

from launch_site.ids import new_id


def new_replica_id() -> str:
    return new_id("rep", 16)


class Host(models.Model):
    """A registered Docker host that replicas can be placed on (docker runtime)."""

    name = models.SlugField(max_length=64, unique=True)
    docker_url = models.CharField(max_length=500, help_text="unix:///var/run/docker.sock, tcp://host:2376 or ssh://user@host")
    tls_ca_cert = models.TextField(blank=True)
    tls_client_cert = models.TextField(blank=True)
    tls_client_key = models.TextField(blank=True)
    cpus = models.FloatField(null=True, blank=True, help_text="Probed from docker info.")
    memory_bytes = models.BigIntegerField(null=True, blank=True, help_text="Probed from docker info.")
    gpu_type = models.CharField(max_length=40, blank=True)
    gpu_device_ids = models.JSONField(default=list, blank=True, help_text='Device ids, e.g. ["0", "1"].')
    # Hosts without the NVIDIA runtime (and tests) expose GPUs through NVIDIA_VISIBLE_DEVICES.
    gpus_via_env_only = models.BooleanField(default=False)
    labels = models.JSONField(default=dict, blank=True)
    cordoned = models.BooleanField(default=False, help_text="No new replicas are placed here.")
    draining = models.BooleanField(default=False, help_text="Replicas here are moved elsewhere.")
    healthy = models.BooleanField(default=False)
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_probe_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    docker_version = models.CharField(max_length=64, blank=True, help_text="Probed from docker info.")
    nvidia_runtime = models.BooleanField(default=False, help_text="Probed: the host has the NVIDIA runtime.")
    # GPUs not declared at registration are probed once (nvidia-smi -L in a container).
    gpus_probed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.name

    @property
    def schedulable(self) -> bool:
        return self.healthy and not self.cordoned and not self.draining


class Replica(models.Model):
    """One worker process or container of an endpoint or a batch job (observed state)."""

    class Owner(models.TextChoices):
        ENDPOINT = "endpoint"
        BATCH_JOB = "batch_job"
        IMAGE_JOB = "image_job"  # a docker-image batch job (batchjobs.image_jobs)

    class State(models.TextChoices):
        STARTING = "starting"  # launched, loading its bundle
        READY = "ready"  # serving its queue
        DRAINING = "draining"  # asked to stop after its in-flight work
        STOPPED = "stopped"
        FAILED = "failed"

    id = models.CharField(max_length=32, primary_key=True, default=new_replica_id, editable=False)
    owner_kind = models.CharField(max_length=16, choices=Owner.choices)
    owner_id = models.CharField(max_length=32, db_index=True)
    generation = models.PositiveIntegerField(default=1)
    runtime = models.CharField(max_length=16)
    host = models.ForeignKey(Host, null=True, blank=True, on_delete=models.SET_NULL, related_name="replicas")
    handle = models.CharField(max_length=128, blank=True, help_text="pid or container id")
    gpu_device_ids = models.JSONField(default=list, blank=True)
    # What the replica asked for, recorded at placement so a host's free capacity is its
    # capacity minus what its live replicas hold (docker runtime).
    cpus = models.FloatField(null=True, blank=True)
    memory_bytes = models.BigIntegerField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.STARTING, db_index=True)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    # The cold start's phase times, unix seconds: placed, started, downloaded, loaded, ready
    # (workers.lifecycle.cold_start_phases turns them into seconds per phase).
    cold_start = models.JSONField(default=dict, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["owner_kind", "owner_id", "state"])]

    def __str__(self) -> str:
        return self.id

    @property
    def is_live(self) -> bool:
        return self.state in (self.State.STARTING, self.State.READY, self.State.DRAINING)

    @property
    def cold_start_phases(self) -> list[tuple[str, float]]:
        from workers.lifecycle import cold_start_phases

        return cold_start_phases(self.cold_start or {})

    @property
    def cold_start_seconds(self) -> float | None:
        phases = self.cold_start_phases
        return sum(seconds for _, seconds in phases) if phases else None


class WorkerImage(models.Model):
    """The worker image for a bundle framework (docker runtime): a CPU and a CUDA variant."""

    class Accelerator(models.TextChoices):
        CPU = "cpu"
        CUDA = "cuda"

    framework_type = models.CharField(
        max_length=40, help_text='pytorch, tensorflow, custom_base_image, or "*" for any framework.'
    )
    accelerator = models.CharField(max_length=8, choices=Accelerator.choices, default=Accelerator.CPU)
    image = models.CharField(
        max_length=300, blank=True, help_text="e.g. registry.example.com/launch-worker:cpu (blank for custom_base_image)"
    )
    python = models.CharField(max_length=300, default="python", help_text="The Python command inside the image.")
    workdir = models.CharField(max_length=300, default="/app", help_text="Where the image holds workers/serve.py.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["framework_type", "accelerator"], name="worker_image_framework_accelerator")
        ]

    def __str__(self) -> str:
        return f"{self.framework_type}/{self.accelerator}: {self.image or '(bundle image)'}"


# States in which a replica holds a process or container.
LIVE_STATES = (Replica.State.STARTING, Replica.State.READY, Replica.State.DRAINING)

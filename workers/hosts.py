"""Docker hosts: registration, one cached Docker client per host, health probes, cordon and
drain. The controller tick calls `hosts_probe_all()` every second."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from launch_site import limits
from launch_site.errors import ConflictError, FieldError
from workers.models import LIVE_STATES, Host, Replica

if TYPE_CHECKING:
    import docker

logger = logging.getLogger(__name__)

DOCKER_URL_SCHEMES = ("unix", "tcp", "ssh")

# --- Docker clients ----------------------------------------------------------------------

# host id -> (connection fingerprint, client). A client is reused across ticks and rebuilt
# only when the host's URL or certificates change.
_clients: dict[int, tuple[str, docker.DockerClient]] = {}
_clients_lock = threading.Lock()


def _fingerprint(host: Host) -> str:
    material = "\0".join([host.docker_url, host.tls_ca_cert, host.tls_client_cert, host.tls_client_key])
    return hashlib.sha256(material.encode()).hexdigest()


def _tls_files(host: Host, fingerprint: str) -> tuple[str, str, str]:
    """docker.tls.TLSConfig wants file paths; the PEMs live in the database."""
    directory = Path(settings.LAUNCH_HOME) / "hosts" / f"{host.pk}-{fingerprint[:12]}"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = []
    for name, text in (
        ("ca.pem", host.tls_ca_cert),
        ("cert.pem", host.tls_client_cert),
        ("key.pem", host.tls_client_key),
    ):
        path = directory / name
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(text)
        paths.append(str(path))
    return paths[0], paths[1], paths[2]


def _connect(host: Host, fingerprint: str) -> docker.DockerClient:
    # Imported here, on the first connection to a registered host: this module is loaded by
    # every process (the tick hook, the admin), and the SDK with requests under it would cost
    # each 8 MB without a single Docker host (BENCHMARKS.md, "Memory of the stack").
    import docker

    timeout = settings.DOCKER_TIMEOUT_SECONDS
    scheme = urlparse(host.docker_url).scheme
    if scheme == "ssh":
        return docker.DockerClient(base_url=host.docker_url, use_ssh_client=True, timeout=timeout)
    if scheme == "tcp" and host.tls_client_cert:
        ca, cert, key = _tls_files(host, fingerprint)
        tls = docker.tls.TLSConfig(client_cert=(cert, key), ca_cert=ca, verify=True)
        return docker.DockerClient(base_url=host.docker_url, tls=tls, timeout=timeout)
    return docker.DockerClient(base_url=host.docker_url, timeout=timeout)


def docker_client(host: Host) -> docker.DockerClient:
    """The host's Docker client (connects on first use: the SDK asks the API version)."""
    fingerprint = _fingerprint(host)
    with _clients_lock:
        cached = _clients.get(host.pk)
        if cached and cached[0] == fingerprint:
            return cached[1]
    client = _connect(host, fingerprint)
    with _clients_lock:
        old = _clients.get(host.pk)
        _clients[host.pk] = (fingerprint, client)
    if old and old[1] is not client:
        old[1].close()
    return client


def forget_client(host_id: int) -> None:
    with _clients_lock:
        cached = _clients.pop(host_id, None)
    if cached:
        cached[1].close()


# --- registration ------------------------------------------------------------------------


def validate_docker_url(docker_url: str, *, has_tls: bool) -> None:
    parsed = urlparse(docker_url)
    if parsed.scheme not in DOCKER_URL_SCHEMES:
        raise FieldError("docker_url", "must start with unix://, tcp:// or ssh://")
    if parsed.scheme == "unix" and not parsed.path.startswith("/"):
        raise FieldError("docker_url", "unix:// needs an absolute socket path, e.g. unix:///var/run/docker.sock")
    if parsed.scheme in ("tcp", "ssh") and not parsed.hostname:
        raise FieldError("docker_url", f"{parsed.scheme}:// needs a host name")
    if parsed.scheme == "tcp" and not has_tls:
        # An unauthenticated Docker TCP socket is root on that machine to anyone who reaches it.
        raise FieldError(
            "docker_url", "tcp:// needs TLS client certificates (tls_ca_cert, tls_client_cert, tls_client_key)"
        )


def _gpu_ids(gpus: int | None, gpu_device_ids: list[str] | None) -> list[str]:
    if gpu_device_ids and len(gpu_device_ids) > limits.MAX_HOST_GPUS:
        raise FieldError("gpu_device_ids", f"at most {limits.MAX_HOST_GPUS} devices")
    if gpus is not None:
        limits.check_integer(gpus, field="gpus", minimum=0, maximum=limits.MAX_HOST_GPUS)
    if gpu_device_ids:
        ids = [str(i).strip() for i in gpu_device_ids]
        if any(not i for i in ids) or len(set(ids)) != len(ids):
            raise FieldError("gpu_device_ids", "must be distinct, non-empty device ids")
        if gpus is not None and gpus != len(ids):
            raise FieldError("gpus", f"is {gpus} but {len(ids)} gpu_device_ids are given")
        return ids
    return [str(i) for i in range(gpus or 0)]


@transaction.atomic
def host_register(
    *,
    name: str,
    docker_url: str,
    gpus: int | None = None,
    gpu_type: str = "",
    gpu_device_ids: list[str] | None = None,
    labels: dict[str, str] | None = None,
    tls_ca_cert: str = "",
    tls_client_cert: str = "",
    tls_client_key: str = "",
    gpus_via_env_only: bool = False,
    update: bool = False,
) -> Host:
    """Create a host (or, with update=True, replace the settings of the one of that name).
    Declared GPUs are kept; without them the probe looks for GPUs with nvidia-smi."""
    tls = [tls_ca_cert, tls_client_cert, tls_client_key]
    if any(tls) and not all(tls):
        missing = [f for f, v in zip(("tls_ca_cert", "tls_client_cert", "tls_client_key"), tls, strict=True) if not v]
        raise FieldError(missing[0], "TLS needs the CA certificate, the client certificate and the client key")
    validate_docker_url(docker_url, has_tls=all(tls))
    ids = _gpu_ids(gpus, gpu_device_ids)
    if ids and not gpu_type:
        raise FieldError("gpu_type", "is required with GPUs (e.g. nvidia-ampere-a10)")
    host = Host.objects.select_for_update().filter(name=name).first()
    if host is not None and not update:
        raise ConflictError(f"a host named {name!r} is already registered")
    host = host or Host(name=name)
    host.docker_url = docker_url
    host.tls_ca_cert, host.tls_client_cert, host.tls_client_key = tls
    host.gpu_type = gpu_type
    host.gpu_device_ids = ids
    host.gpus_via_env_only = gpus_via_env_only
    host.labels = labels or {}
    host.full_clean()
    host.save()
    return host


@transaction.atomic
def host_update(*, host: Host, **changes) -> Host:
    """Change some settings of a host (the API's PATCH)."""
    host = Host.objects.select_for_update().get(pk=host.pk)
    tls_fields = ("tls_ca_cert", "tls_client_cert", "tls_client_key")
    if "gpus" in changes or "gpu_device_ids" in changes:
        host.gpu_device_ids = _gpu_ids(changes.pop("gpus", None), changes.pop("gpu_device_ids", None))
    for field, value in changes.items():
        setattr(host, field, value)
    if host.gpu_device_ids and not host.gpu_type:
        raise FieldError("gpu_type", "is required with GPUs (e.g. nvidia-ampere-a10)")
    tls = [getattr(host, f) for f in tls_fields]
    if any(tls) and not all(tls):
        raise FieldError(
            tls_fields[tls.index("")], "TLS needs the CA certificate, the client certificate and the client key"
        )
    validate_docker_url(host.docker_url, has_tls=all(tls))
    host.full_clean()
    host.save()
    forget_client(host.pk)
    return host


@transaction.atomic
def host_delete(*, host: Host) -> None:
    live = Replica.objects.filter(host=host, state__in=LIVE_STATES).count()
    if live:
        raise ConflictError(f"host {host.name} still runs {live} replica(s); drain it and wait until they moved")
    host.delete()
    forget_client(host.pk)


def host_set_cordoned(*, host: Host, cordoned: bool) -> Host:
    """A cordoned host keeps its replicas but gets no new ones."""
    Host.objects.filter(pk=host.pk).update(cordoned=cordoned)
    host.cordoned = cordoned
    return host


def host_set_draining(*, host: Host, draining: bool) -> Host:
    """A draining host gets no new replicas and the controller moves its replicas elsewhere
    (see `replicas_to_move`)."""
    Host.objects.filter(pk=host.pk).update(draining=draining)
    host.draining = draining
    return host


def replicas_to_move():
    """Live replicas on a draining or unhealthy host: the controller starts a replacement
    elsewhere, then stops these."""
    return Replica.objects.filter(state__in=LIVE_STATES, runtime="docker").filter(
        Q(host__draining=True) | Q(host__healthy=False)
    )


# --- probes ------------------------------------------------------------------------------

_GPU_LINE = re.compile(r"^GPU (\d+): (.+?) \(UUID")
# nvidia-smi names -> our GpuType values (endpoints.models.GPU_TYPES).
_GPU_TYPES = (
    ("T4", "nvidia-tesla-t4"),
    ("A10", "nvidia-ampere-a10"),
    ("A100", "nvidia-ampere-a100"),
    ("H100", "nvidia-hopper-h100"),
    ("H200", "nvidia-hopper-h200"),
    ("B200", "nvidia-blackwell-b200"),
    ("L4", "nvidia-ada-l4"),
    ("L40S", "nvidia-ada-l40s"),
)


def _names_model(word: str, model: str) -> bool:
    """"A10G" is an A10 and "A100-SXM4-80GB" an A100, but "A100" is no A10 nor "L40" an L4."""
    return word.startswith(model) and not word[len(model):len(model) + 1].isdigit()


def gpu_type_from_name(name: str) -> str:
    words = name.upper().replace("-", " ").split()
    for model, gpu_type in sorted(_GPU_TYPES, key=lambda item: -len(item[0])):
        if any(_names_model(word, model) for word in words):
            return gpu_type
    return "nvidia-" + re.sub(r"[^a-z0-9]+", "-", name.lower().removeprefix("nvidia ")).strip("-")


def parse_nvidia_smi(output: str) -> tuple[str, list[str]]:
    """`nvidia-smi -L` -> (gpu type, device ids); one type per host (the first GPU's)."""
    ids, names = [], []
    for line in output.splitlines():
        match = _GPU_LINE.match(line.strip())
        if match:
            ids.append(match.group(1))
            names.append(match.group(2))
    return (gpu_type_from_name(names[0]) if names else ""), ids


def _probe_gpus(client: docker.DockerClient) -> tuple[str, list[str]]:
    output = client.containers.run(
        settings.DOCKER_GPU_PROBE_IMAGE,
        ["nvidia-smi", "-L"],
        runtime="nvidia",
        environment={"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "utility"},
        remove=True,
        network_mode="none",
    )
    return parse_nvidia_smi(output.decode(errors="replace"))


def _observe(host: Host) -> dict:
    """Talk to the host (no database access: this runs in a probe thread)."""
    updates: dict = {"last_probe_at": timezone.now()}
    try:
        client = docker_client(host)
        client.ping()
        info = client.info()
        updates.update(
            healthy=True,
            consecutive_failures=0,
            last_error="",
            cpus=float(info.get("NCPU") or 0),
            memory_bytes=int(info.get("MemTotal") or 0),
            docker_version=str(info.get("ServerVersion") or "")[:64],
            nvidia_runtime="nvidia" in (info.get("Runtimes") or {}),
        )
        if updates["nvidia_runtime"] and not host.gpu_device_ids and host.gpus_probed_at is None:
            from docker.errors import DockerException  # loaded: docker_client() imported docker

            try:
                gpu_type, ids = _probe_gpus(client)
                updates.update(gpu_type=gpu_type, gpu_device_ids=ids)
            except DockerException as error:
                updates["last_error"] = f"GPU probe (nvidia-smi -L) failed: {error}"
            updates["gpus_probed_at"] = timezone.now()
    except Exception as error:  # noqa: BLE001 - any failure to talk to the host counts
        failures = host.consecutive_failures + 1
        updates.update(consecutive_failures=failures, last_error=f"{type(error).__name__}: {error}"[:2000])
        if failures >= settings.HOST_UNHEALTHY_AFTER_FAILURES:
            updates["healthy"] = False
    return updates


def _record(host: Host, updates: dict) -> Host:
    Host.objects.filter(pk=host.pk).update(**updates)
    for field, value in updates.items():
        setattr(host, field, value)
    return host


def host_probe(host: Host) -> Host:
    """Ping the host and read its CPUs, memory and runtimes. A host is unhealthy after
    HOST_UNHEALTHY_AFTER_FAILURES failures in a row, and healthy again on the first success."""
    return _record(host, _observe(host))


def hosts_probe_all() -> list[Host]:
    """Probe every host. The network part runs in parallel threads, so one host that hangs
    until its timeout does not hold up the others; the rows are written here."""
    hosts = list(Host.objects.all())
    if len(hosts) <= 1:
        return [host_probe(host) for host in hosts]
    with ThreadPoolExecutor(max_workers=min(16, len(hosts)), thread_name_prefix="probe") as pool:
        observed = list(pool.map(_observe, hosts))
    return [_record(host, updates) for host, updates in zip(hosts, observed, strict=True)]


# --- the controller's tick ----------------------------------------------------------------

ORPHAN_SWEEP_SECONDS = 30.0
_last_orphan_sweep = 0.0


def hosts_tick() -> None:
    """Registered as a controller tick hook: probe every host (a host that stops answering
    turns unhealthy, and reconcile then replaces its replicas elsewhere), and now and then
    remove replica containers that no live replica owns (left by a crash mid-start or a
    replica forgotten while its host was unreachable)."""
    global _last_orphan_sweep
    if not Host.objects.exists():
        return
    hosts_probe_all()
    if time.monotonic() - _last_orphan_sweep < ORPHAN_SWEEP_SECONDS:
        return
    _last_orphan_sweep = time.monotonic()
    from workers.runtimes.docker import DockerRuntime

    live = set(Replica.objects.filter(runtime="docker", state__in=LIVE_STATES).values_list("id", flat=True))
    DockerRuntime().reconcile_orphans(live)

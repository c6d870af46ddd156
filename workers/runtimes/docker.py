"""The docker runtime: each replica is a container of the worker image on a registered host.

The container runs `python -m workers.serve` with the replica's LAUNCH_* environment, CPU and
memory limits, GPU device requests for the device ids placement bound (or only
NVIDIA_VISIBLE_DEVICES on a host set to gpus_via_env_only), a bridge network of its owner
(replica_network), a read-only root with a tmpfs /tmp and HOME, no Docker socket, no
capabilities or privileges and no restart policy: the controller, not Docker, replaces
replicas that die. Every container is labelled `launch.replica=<id>`, which is how a restarted
controller finds its running replicas (`running_replica_ids`) and how containers nobody owns
are found and removed (`reconcile_orphans`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import ipaddress
import json
import logging
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import docker
from django.conf import settings
from docker.types import DeviceRequest, LogConfig

from launch_site.redis_client import get_redis
from workers.hosts import docker_client
from workers.models import LIVE_STATES, Host, Replica, WorkerImage
from workers.placement import place_replica
from workers.runtimes.base import BundleStartFailed, ExitInfo, Placement, ReplicaSpec, Runtime, StartDeferred

logger = logging.getLogger(__name__)

REPLICA_LABEL = "launch.replica"
# A runnable-image replica is two containers with its REPLICA_LABEL: the user's ("user") and
# our forwarder ("forwarder"), which joins the user's network namespace.
ROLE_LABEL = "launch.role"
ROLE_USER, ROLE_FORWARDER = "user", "forwarder"
# A docker-image batch job's one container: the user's too, but with no forwarder beside it
# (as ROLE_USER, is_alive took it for half a runnable-image replica and removed it).
ROLE_JOB = "job"
DERIVED_REPOSITORY = "launch-worker-derived"
# What the serve loop needs besides the standard library, for images built on a user's
# custom base image (our own worker images have them already).
SERVE_REQUIREMENTS = ("hiredis==3.5.0", "cloudpickle==3.1.2", "orjson==3.13.0")
REQUIREMENTS_FILE = "/tmp/launch-requirements.txt"  # in a derived image's build
SERVE_FILES = ("workers/__init__.py", "workers/allocator.py", "workers/protocol.py", "workers/redis_wire.py",
               "workers/serve.py", "workers/forwarder.py")


@dataclass(frozen=True)
class WorkerImageChoice:
    image: str
    python: str
    workdir: str
    # A user's own image: the serve loop and its requirements are added in a derived image.
    custom: bool = False


def worker_image_for(spec: ReplicaSpec) -> WorkerImageChoice:
    """The image for the bundle's framework: a WorkerImage row for (framework, cpu|cuda),
    else the row for "*", else the settings' defaults."""
    framework = spec.framework or {}
    framework_type = str(framework.get("framework_type") or "*")
    accelerator = WorkerImage.Accelerator.CUDA if spec.gpus else WorkerImage.Accelerator.CPU
    rows = {
        row.framework_type: row
        for row in WorkerImage.objects.filter(framework_type__in=[framework_type, "*"], accelerator=accelerator)
    }
    row = rows.get(framework_type) or rows.get("*")
    python = row.python if row else settings.DOCKER_PYTHON
    workdir = row.workdir if row else settings.DOCKER_WORKDIR
    if framework_type == "custom_base_image":
        if not framework.get("image_repository"):
            raise RuntimeError("a custom_base_image framework needs image_repository (and image_tag)")
        image = f"{framework['image_repository']}:{framework.get('image_tag') or 'latest'}"
        return WorkerImageChoice(image=image, python=python, workdir=workdir, custom=True)
    if row and row.image:
        return WorkerImageChoice(image=row.image, python=python, workdir=workdir)
    default = settings.DOCKER_WORKER_IMAGE_GPU if spec.gpus else settings.DOCKER_WORKER_IMAGE
    return WorkerImageChoice(image=default, python=python, workdir=workdir)


def derived_image_tag(choice: WorkerImageChoice, requirements: tuple[str, ...]) -> str:
    material = json.dumps([choice.image, choice.python, choice.workdir, choice.custom, sorted(requirements)])
    return f"{DERIVED_REPOSITORY}:{hashlib.sha256(material.encode()).hexdigest()[:20]}"


def _derived_context(choice: WorkerImageChoice, requirements: tuple[str, ...]) -> io.BytesIO:
    """A build context (tar): FROM the base, the serve loop for custom images, then pip."""
    pip = [choice.python, "-m", "pip", "install", "--no-cache-dir"]
    lines = [f"FROM {choice.image}"]
    files: dict[str, bytes] = {}
    if choice.custom:
        for name in SERVE_FILES:
            files[name] = (Path(settings.BASE_DIR) / name).read_bytes()
        lines += [
            f"COPY workers/ {choice.workdir}/workers/",
            f"WORKDIR {choice.workdir}",
            f"RUN {json.dumps([*pip, *SERVE_REQUIREMENTS])}",
        ]
    if requirements:
        files["requirements.txt"] = ("\n".join(requirements) + "\n").encode()
        lines += [
            f"COPY requirements.txt {REQUIREMENTS_FILE}",
            f"RUN {json.dumps([*pip, '-r', REQUIREMENTS_FILE])}",
        ]
    files["Dockerfile"] = ("\n".join(lines) + "\n").encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


# --- images ------------------------------------------------------------------------------
#
# A replica's image is built (requirements, custom base images) or pulled (a base image not
# on the host yet) by an RQ job on the control queue, never inside start(): start() runs in
# the controller's tick, and a build may take DOCKER_BUILD_TIMEOUT_SECONDS, which would stall
# healing and autoscaling of every other endpoint. start() raises StartDeferred while the
# image is being prepared, and ImageBuildFailed for a while after preparing it failed.

# How long a failed build or pull is remembered: start() reports it rather than building
# again every tick; after that the next start tries again (the user may have fixed a mirror).
IMAGE_FAILURE_TTL_SECONDS = 300


OOM_FLAG_GRACE_SECONDS = 0.5


def _record_placement(spec: ReplicaSpec, host: Host, gpu_ids) -> None:
    """Placement records these when the row exists already; make sure they are there."""
    Replica.objects.filter(id=spec.replica_id).update(
        host_id=host.pk, gpu_device_ids=gpu_ids, cpus=spec.cpus, memory_bytes=spec.memory_bytes
    )


def _killed_without_oom_flag(state: dict) -> bool:
    return state.get("Status") in ("exited", "dead") and state.get("ExitCode") == 137 and not state.get("OOMKilled")


class ImageBuildFailed(RuntimeError):
    """Preparing the replica's image on its host failed recently; the message has the
    build's (or pull's) output."""


class RequirementsBuildFailed(ImageBuildFailed, BundleStartFailed):
    """The build failed at installing the bundle's requirements: the bundle's doing, so its
    endpoint becomes UPDATE_FAILED with pip's message (as on the local runtime) instead of
    retrying the start while the failure is remembered."""


# How a remembered failure (Redis, per host and image) says it was the requirements' step.
_REQUIREMENTS_FAILURE_MARK = "requirements\n"


def image_for(choice: WorkerImageChoice, requirements: tuple[str, ...]) -> str:
    """The image a replica runs: the base image itself, or the derived image for these
    requirements (and, on a custom base image, the serve loop)."""
    if not requirements and not choice.custom:
        return choice.image
    return derived_image_tag(choice, requirements)


def image_keys(host_id: int, tag: str) -> tuple[str, str]:
    """Redis keys (pending, failed) of one image on one host."""
    digest = hashlib.sha256(f"{host_id}\0{tag}".encode()).hexdigest()[:24]
    return f"launch:image:pending:{digest}", f"launch:image:failed:{digest}"


def image_job_id(host_id: int, tag: str) -> str:
    """The id of the job preparing this image on this host (RQ ids are [A-Za-z0-9_-]+)."""
    return f"launch-image-{host_id}-{hashlib.sha256(tag.encode()).hexdigest()[:24]}"


def _image_present(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)  # an inspect, bounded by the client's DOCKER_TIMEOUT_SECONDS
        return True
    except docker.errors.ImageNotFound:
        return False


def _describe_preparation(host: Host, choice: WorkerImageChoice, requirements: tuple[str, ...], tag: str) -> str:
    if tag == choice.image:
        return f"pulling image {tag} on host {host.name}"
    what = [f"requirements: {', '.join(requirements)}"] if requirements else []
    if choice.custom:
        what.append(f"the serve loop on custom base image {choice.image}")
    return f"building image {tag} on host {host.name} ({'; '.join(what)})"


def request_image(host: Host, choice: WorkerImageChoice, requirements: tuple[str, ...]) -> bool:
    """Enqueue the job that prepares the image on the host unless one is pending; returns
    whether it enqueued one. One job per (host, image) at a time: the pending key is set only
    if absent, and outlives the longest the job may run in case its worker dies mid-way."""
    from workers.runtimes import docker_jobs

    tag = image_for(choice, requirements)
    pending_key, _ = image_keys(host.pk, tag)
    redis = get_redis()
    ttl = int(settings.DOCKER_BUILD_TIMEOUT_SECONDS) + 60
    if not redis.set(pending_key, image_job_id(host.pk, tag), nx=True, ex=ttl):
        return False
    try:
        docker_jobs.enqueue_prepare_image(
            host_id=host.pk,
            image=choice.image,
            python=choice.python,
            workdir=choice.workdir,
            custom=choice.custom,
            requirements=list(requirements),
            job_id=image_job_id(host.pk, tag),
        )
    except Exception:
        redis.delete(pending_key)
        raise
    return True


def image_ready(
    host: Host, client: docker.DockerClient, choice: WorkerImageChoice, requirements: tuple[str, ...]
) -> str:
    """The image to run, when it is on the host. Otherwise raise ImageBuildFailed if preparing
    it failed recently, or ask for it to be prepared and raise StartDeferred."""
    tag = image_for(choice, requirements)
    if _image_present(client, tag):
        return tag
    _, failed_key = image_keys(host.pk, tag)
    failure = get_redis().get(failed_key)
    if failure is not None:
        message = failure.decode(errors="replace")
        if message.startswith(_REQUIREMENTS_FAILURE_MARK):
            raise RequirementsBuildFailed(message.removeprefix(_REQUIREMENTS_FAILURE_MARK))
        raise ImageBuildFailed(message)
    request_image(host, choice, requirements)
    raise StartDeferred(_describe_preparation(host, choice, requirements, tag))


def prepare_image(*, host: Host, choice: WorkerImageChoice, requirements: tuple[str, ...]) -> str:
    """Build the derived image (or pull the base image) on the host unless it is there; runs
    in an RQ job (docker_jobs.prepare_image_job). A failure is remembered for
    IMAGE_FAILURE_TTL_SECONDS, where start() finds it; either way the next request may go."""
    tag = image_for(choice, requirements)
    pending_key, failed_key = image_keys(host.pk, tag)
    redis = get_redis()
    try:
        client = docker_client(host)
        if not _image_present(client, tag):
            if tag == choice.image:
                _pull(host, client, tag)
            else:
                _build(host, client, choice, requirements, tag)
        redis.delete(failed_key)
        return tag
    except Exception as error:  # the job's timeout included: remember why, let RQ record it
        if isinstance(error, ImageBuildFailed):
            message = str(error)
            if isinstance(error, RequirementsBuildFailed):
                message = _REQUIREMENTS_FAILURE_MARK + message[-(4000 - len(_REQUIREMENTS_FAILURE_MARK)):]
        else:
            message = (
                f"{_describe_preparation(host, choice, requirements, tag)} failed: {type(error).__name__}: {error}"
            )
        redis.set(failed_key, message[-4000:], ex=IMAGE_FAILURE_TTL_SECONDS)
        raise
    finally:
        redis.delete(pending_key)


def _build(
    host: Host, client: docker.DockerClient, choice: WorkerImageChoice, requirements: tuple[str, ...], tag: str
) -> None:
    logger.info("building %s on %s (FROM %s)", tag, host.name, choice.image)
    try:
        client.images.build(
            fileobj=_derived_context(choice, requirements),
            custom_context=True,
            tag=tag,
            rm=True,
            forcerm=True,
            network_mode="host",
            # Bounds each read of the build's output; the RQ job's timeout bounds the whole.
            timeout=settings.DOCKER_BUILD_TIMEOUT_SECONDS,
            labels={"launch.derived-from": choice.image},
        )
    except docker.errors.BuildError as error:
        output = "".join(str(chunk.get("stream") or chunk.get("error") or "") for chunk in error.build_log)
        # The requirements' step is the last RUN, the only one that reads this file.
        failed = RequirementsBuildFailed if requirements and REQUIREMENTS_FILE in str(error) else ImageBuildFailed
        raise failed(
            f"building image {tag} on host {host.name} for requirements {list(requirements)} failed:\n{output[-3000:]}"
        ) from None


def _pull(host: Host, client: docker.DockerClient, image: str) -> None:
    # docker-py's pull sets no timeout of its own (timeout=None): the RQ job's bounds it.
    logger.info("pulling %s on %s", image, host.name)
    repository, tag = docker.utils.parse_repository_tag(image)
    errors = []
    try:
        for event in client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
            if event.get("error"):
                errors.append(str(event["error"]))
    except docker.errors.APIError as error:
        errors.append(str(error.explanation or error))
    if errors or not _image_present(client, image):
        raise ImageBuildFailed(f"pulling image {image} on host {host.name} failed: {'; '.join(errors) or 'not found'}")


def _local_paths(spec: ReplicaSpec) -> dict[str, dict]:
    """On a host reached through a local socket (the machine the controller runs on), the
    embedded Redis socket and a file:// bundle are reachable by path: mount them, read-only
    (connecting to a unix socket needs no write access to its mount)."""
    volumes: dict[str, dict] = {}
    redis_url = urlparse(spec.env.get("LAUNCH_REDIS_URL", ""))
    if redis_url.scheme == "unix" and redis_url.path:
        directory = str(Path(redis_url.path).parent)
        volumes[directory] = {"bind": directory, "mode": "ro"}
    bundle_url = urlparse(spec.env.get("LAUNCH_BUNDLE_URL", ""))
    if bundle_url.scheme == "file" and bundle_url.path:
        directory = str(Path(bundle_url.path).parent)
        volumes.setdefault(directory, {"bind": directory, "mode": "ro"})
    return volumes


# A serve-loop replica's writable places when its root is read-only (DOCKER_READ_ONLY_ROOT).
REPLICA_HOME = "/home/launch"
WRITABLE_TMPFS = {"/tmp": "rw,nosuid,nodev,mode=1777", REPLICA_HOME: "rw,nosuid,nodev,mode=1777"}
NETWORK_OWNER_LABEL = "launch.network_owner"
NETWORK_FALLBACK_LABEL = "launch.network_fallback"


def owner_network_name(owner_id: str) -> str:
    return f"launch-net-{owner_id}"


def _is_loopback(hostname: str | None) -> bool:
    if not hostname:
        return False
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _loopback_needs(spec: ReplicaSpec) -> list[str]:
    """What the replica must reach on the host's loopback, which a bridge network cannot."""
    needs = []
    for name in ("LAUNCH_REDIS_URL", "LAUNCH_BUNDLE_URL"):
        url = urlparse(spec.env.get(name, ""))
        if url.scheme in ("redis", "rediss", "http", "https") and _is_loopback(url.hostname):
            needs.append(f"{name} at {url.hostname}")
    return needs


def replica_network(client: docker.DockerClient, spec: ReplicaSpec, host: Host) -> tuple[str, str]:
    """The network mode of a serve-loop replica, and why it is the host's when it had to be
    (empty otherwise). DOCKER_REPLICA_NETWORK "per-owner": a bridge network per endpoint or
    batch job, created here on first use, so user code reaches neither the host's loopback
    services (its database, its Redis, the web server's port) nor other owners' replicas.
    The replica still reaches the embedded Redis through its read-only socket mount."""
    choice = settings.DOCKER_REPLICA_NETWORK
    if choice != "per-owner":
        return choice, ""
    needs = _loopback_needs(spec)
    if needs:
        reason = f"the replica must reach {', '.join(needs)} on the host's loopback"
    else:
        name = owner_network_name(spec.owner_id)
        try:
            try:
                client.networks.get(name)
            except docker.errors.NotFound:
                try:
                    client.networks.create(name, driver="bridge", labels={NETWORK_OWNER_LABEL: spec.owner_id})
                except docker.errors.APIError as error:
                    if error.status_code != 409:  # 409: a replica of the same owner created it just now
                        raise
            return name, ""
        except docker.errors.APIError as error:
            reason = f"host {host.name} cannot create a bridge network: {error.explanation or error}"
    logger.warning("replica %s runs with host networking: %s", spec.replica_id, reason)
    return "host", reason


def read_only_root() -> dict:
    """create() arguments of a read-only root filesystem (DOCKER_READ_ONLY_ROOT)."""
    return {"read_only": True, "tmpfs": dict(WRITABLE_TMPFS)} if settings.DOCKER_READ_ONLY_ROOT else {}


def container_name(replica_id: str) -> str:
    return f"launch-{replica_id}"


def forwarder_name(replica_id: str) -> str:
    """The forwarder container of a runnable-image replica (container_name is the user's)."""
    return f"launch-{replica_id}-forwarder"


class DockerRuntime(Runtime):
    name = "docker"

    def place(self, spec: ReplicaSpec) -> Placement:
        return place_replica(spec)

    def start(self, spec: ReplicaSpec, placement: Placement) -> str:
        host = Host.objects.get(pk=placement.host_id)
        client = docker_client(host)
        if spec.runnable_image:
            return self._start_runnable_image(spec, placement, host, client)
        existing = self._container(client, spec.replica_id)
        if existing is not None:
            # A retried start (the controller died after creating it): keep a running one.
            if existing.status == "running":
                return existing.id
            existing.remove(force=True)
        choice = worker_image_for(spec)
        # Raises StartDeferred (the image is being built or pulled) or ImageBuildFailed.
        image = image_ready(host, client, choice, tuple(spec.requirements))
        gpu_ids = list(placement.gpu_device_ids)
        environment = {"PYTHONUNBUFFERED": "1", **spec.env}
        if settings.DOCKER_READ_ONLY_ROOT:
            environment["HOME"] = REPLICA_HOME
        device_requests = []
        if gpu_ids:
            environment["NVIDIA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
            if not host.gpus_via_env_only:
                device_requests = [DeviceRequest(device_ids=gpu_ids, capabilities=[["gpu"]])]
        volumes = {source: {"bind": target, "mode": mode} for source, target, mode in settings.DOCKER_EXTRA_MOUNTS}
        if urlparse(host.docker_url).scheme == "unix":
            volumes.update(_local_paths(spec))
        labels = self._labels(spec)
        network, fallback = replica_network(client, spec, host)
        if fallback:
            labels[NETWORK_FALLBACK_LABEL] = fallback[:500]
        limits = {"nano_cpus": int(spec.cpus * 1e9)} if spec.cpus else {}
        if spec.memory_bytes:
            limits["mem_limit"] = spec.memory_bytes
        try:
            # create + start, not containers.run: run() pulls a missing image, and
            # docker-py's pull has no timeout; here a vanished image defers instead.
            container = client.containers.create(
                image,
                [choice.python, "-m", "workers.serve"],
                name=container_name(spec.replica_id),
                detach=True,
                # docker-init as PID 1 forwards SIGTERM: Python as PID 1 would ignore a
                # SIGTERM that arrives before the serve loop installs its handler.
                init=True,
                environment=environment,
                labels=labels,
                working_dir=choice.workdir,
                network_mode=network,
                device_requests=device_requests,
                volumes=volumes,
                **self._locked_down(),
                **read_only_root(),
                **limits,
            )
            container.start()
        except docker.errors.ImageNotFound:
            # Removed between the check and the create (a prune): prepare it again.
            self._remove_quietly(client, container_name(spec.replica_id))
            request_image(host, choice, tuple(spec.requirements))
            raise StartDeferred(_describe_preparation(host, choice, tuple(spec.requirements), image)) from None
        except docker.errors.APIError:
            # Created but not started (e.g. no GPU driver on the host): leave nothing behind.
            self._remove_quietly(client, container_name(spec.replica_id))
            raise
        _record_placement(spec, host, gpu_ids)
        return container.id

    def _start_runnable_image(self, spec: ReplicaSpec, placement: Placement, host: Host, client) -> str:
        """The user's container (its image, command and env, the replica's CPU, memory and GPU
        limits, its own network namespace, no Redis credentials and no mounts of ours) plus the
        forwarder (our worker image, the replica's LAUNCH_* environment with its Redis user)
        in the user's network namespace, where the user's server is 127.0.0.1:5005.

        Why a second container and not an entrypoint wrapper: the user's image stays as built
        (any base, any Python or none, its own ENTRYPOINT), and the credentials live only in a
        process the user's code cannot see (another PID namespace, another environment)."""
        user_name, forwarder = container_name(spec.replica_id), forwarder_name(spec.replica_id)
        existing, existing_forwarder = self._container(client, spec.replica_id), self._named(client, forwarder)
        if existing is not None and existing_forwarder is not None:
            if existing.status == "running" and existing_forwarder.status == "running":
                return existing.id  # a retried start: both halves are up
        for name in (forwarder, user_name):
            self._remove_quietly(client, name)
        image = spec.runnable_image
        user_choice = WorkerImageChoice(image=image["image"], python="", workdir="")
        forwarder_choice = worker_image_for(dataclasses.replace(spec, gpus=0, framework={}))
        # Either raises StartDeferred (being pulled) or ImageBuildFailed.
        user_image = image_ready(host, client, user_choice, ())
        forwarder_image = image_ready(host, client, forwarder_choice, ())
        gpu_ids = list(placement.gpu_device_ids)
        environment = dict(image.get("env") or {})
        device_requests = []
        if gpu_ids:
            environment["NVIDIA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
            if not host.gpus_via_env_only:
                device_requests = [DeviceRequest(device_ids=gpu_ids, capabilities=[["gpu"]])]
        extra = {source: {"bind": target, "mode": mode} for source, target, mode in settings.DOCKER_EXTRA_MOUNTS}
        forwarder_volumes = dict(extra)
        if urlparse(host.docker_url).scheme == "unix":
            forwarder_volumes.update(_local_paths(spec))
        labels = self._labels(spec)
        limits = {"nano_cpus": int(spec.cpus * 1e9)} if spec.cpus else {}
        if spec.memory_bytes:
            limits["mem_limit"] = spec.memory_bytes
        command = image.get("command") or image.get("streaming_command") or None
        try:
            user = client.containers.create(
                user_image, command, name=user_name, detach=True, init=True, environment=environment,
                labels={**labels, ROLE_LABEL: ROLE_USER}, network_mode=settings.DOCKER_RUNNABLE_IMAGE_NETWORK,
                device_requests=device_requests, volumes=extra, **self._locked_down(), **limits,
            )
            user.start()
            forwarder_container = client.containers.create(
                forwarder_image, [forwarder_choice.python, "-m", "workers.forwarder"], name=forwarder,
                detach=True, init=True, environment={"PYTHONUNBUFFERED": "1", **spec.env},
                labels={**labels, ROLE_LABEL: ROLE_FORWARDER}, working_dir=forwarder_choice.workdir,
                network_mode=f"container:{user.id}", volumes=forwarder_volumes,
                mem_limit=settings.DOCKER_FORWARDER_MEMORY_BYTES, **self._locked_down(), **read_only_root(),
            )
            forwarder_container.start()
        except docker.errors.ImageNotFound:
            for name in (forwarder, user_name):
                self._remove_quietly(client, name)
            raise StartDeferred(f"an image of replica {spec.replica_id} vanished from host {host.name}") from None
        except docker.errors.APIError:
            for name in (forwarder, user_name):
                self._remove_quietly(client, name)
            raise
        Replica.objects.filter(id=spec.replica_id).update(
            host_id=host.pk, gpu_device_ids=gpu_ids, cpus=spec.cpus, memory_bytes=spec.memory_bytes
        )
        return user.id

    def start_job_container(
        self, spec: ReplicaSpec, placement: Placement, *, image: str, command: list[str],
        environment: dict[str, str], files: bytes | None,
    ) -> str:
        """One container of a user's image that runs `command` once (a docker-image batch job,
        batchjobs.image_jobs): the replica's limits, GPUs and labels, the user-container network,
        no credentials of ours; `files` (a tar) is copied in before it starts. Returns its id."""
        host = Host.objects.get(pk=placement.host_id)
        client = docker_client(host)
        self._remove_quietly(client, container_name(spec.replica_id))
        user_image = image_ready(host, client, WorkerImageChoice(image=image, python="", workdir=""), ())
        gpu_ids = list(placement.gpu_device_ids)
        environment = dict(environment)
        device_requests = []
        if gpu_ids:
            environment["NVIDIA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
            if not host.gpus_via_env_only:
                device_requests = [DeviceRequest(device_ids=gpu_ids, capabilities=[["gpu"]])]
        limits = {"nano_cpus": int(spec.cpus * 1e9)} if spec.cpus else {}
        if spec.memory_bytes:
            limits["mem_limit"] = spec.memory_bytes
        volumes = {source: {"bind": target, "mode": mode} for source, target, mode in settings.DOCKER_EXTRA_MOUNTS}
        try:
            container = client.containers.create(
                user_image, command, name=container_name(spec.replica_id), detach=True, init=True,
                environment=environment, labels={**self._labels(spec), ROLE_LABEL: ROLE_JOB},
                network_mode=settings.DOCKER_RUNNABLE_IMAGE_NETWORK, device_requests=device_requests,
                volumes=volumes, **self._locked_down(), **limits,
            )
            if files:
                container.put_archive("/", files)
            container.start()
        except docker.errors.APIError:
            self._remove_quietly(client, container_name(spec.replica_id))
            raise
        _record_placement(spec, host, gpu_ids)
        return container.id

    @staticmethod
    def _labels(spec: ReplicaSpec) -> dict[str, str]:
        return {
            **spec.labels,
            REPLICA_LABEL: spec.replica_id,
            "launch.owner_kind": spec.owner_kind,
            "launch.owner_id": spec.owner_id,
            "launch.team": spec.team,
        }

    @staticmethod
    def _locked_down() -> dict:
        return {
            "privileged": False,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "restart_policy": {"Name": "no"},
            "log_config": LogConfig(type="json-file", config={"max-size": "50m", "max-file": "2"}),
        }

    @staticmethod
    def _named(client, name: str):
        try:
            return client.containers.get(name)
        except docker.errors.NotFound:
            return None

    @staticmethod
    def _remove_quietly(client, name: str) -> None:
        try:
            client.api.remove_container(name, force=True)
        except docker.errors.DockerException:
            pass

    def stop(self, replica) -> None:
        """SIGTERM to the serve loop, or for a runnable image to its forwarder, which finishes
        its in-flight tasks and exits; is_alive then removes the user's container."""
        client = self._client_of(replica)
        if client is None:
            return
        for ref in (forwarder_name(replica.id), self._ref(replica)):
            try:
                client.api.kill(ref, signal="SIGTERM")
                return
            except docker.errors.NotFound:
                continue  # not a runnable image (no forwarder), or gone
            except docker.errors.APIError as error:
                if error.status_code != 409:  # 409: not running any more
                    logger.warning("SIGTERM to replica %s failed: %s", replica.id, error)
                return
            except Exception as error:  # noqa: BLE001 - host unreachable: the probe handles it
                logger.warning("SIGTERM to replica %s failed: %s", replica.id, error)
                return

    def kill(self, replica) -> None:
        client = self._client_of(replica)
        if client is None:
            return
        for ref in (self._ref(replica), forwarder_name(replica.id)):
            try:
                client.api.remove_container(ref, force=True)
            except docker.errors.NotFound:
                pass
            except Exception as error:  # noqa: BLE001 - unreachable: reconcile_orphans removes it later
                logger.warning("removing replica %s failed: %s", replica.id, error)

    def _states(self, replica) -> list[dict] | None:
        """The State of each container of the replica (the serve loop's; or the user's, then the
        forwarder's); None when its host is down or unreachable. A missing container reads as
        {"Status": "missing"}."""
        host = self._host(replica)
        if host is None or not host.healthy:  # no timeout-long wait on a host known to be down
            return None
        client = docker_client(host)
        try:
            attrs = client.api.inspect_container(self._ref(replica))
        except docker.errors.NotFound:
            return [{"Status": "missing"}]
        states = [attrs["State"]]
        if (attrs["Config"].get("Labels") or {}).get(ROLE_LABEL) == ROLE_USER:
            try:
                states.append(client.api.inspect_container(forwarder_name(replica.id))["State"])
            except docker.errors.NotFound:
                states.append({"Status": "missing"})
        return states

    def is_alive(self, replica) -> bool:
        """Every container of the replica runs. Half a runnable-image replica is no replica:
        when one of its two containers has ended, the other is removed (the ended one stays,
        for exit_info and logs, until kill() or the orphan sweep)."""
        try:
            states = self._states(replica)
        except Exception:  # noqa: BLE001
            # A blip is not a death: the probe marks the host unhealthy after a few failures.
            return True
        if states is None:
            return False
        running = [bool(state.get("Running")) for state in states]
        if all(running):
            return True
        if len(states) == 2 and any(running):
            client = self._client_of(replica)
            survivor = forwarder_name(replica.id) if running[1] else self._ref(replica)
            if client is not None:
                self._remove_quietly(client, survivor)
        return False

    def exit_info(self, replica) -> ExitInfo | None:
        """From the state of the container that ended (the user's first, for a runnable
        image): its exit status, the signal that killed it (docker-init, PID 1 in every replica
        container, exits 128+N when its child dies of signal N, as does a container killed with
        `docker kill`) and whether the kernel killed it for its memory limit. None while it
        runs, before it started, and once the container is removed (kill() removes it) or its
        host is unreachable."""
        try:
            states = self._states(replica)
            if any(_killed_without_oom_flag(state) for state in states or ()):
                # dockerd records an OOM kill from the kernel's event, which may reach it just
                # after the exit does: look once more before calling it a plain SIGKILL.
                time.sleep(OOM_FLAG_GRACE_SECONDS)
                states = self._states(replica)
        except Exception:  # noqa: BLE001 - unreachable: nothing to tell
            return None
        for state in states or ():
            if state.get("Status") not in ("exited", "dead"):
                continue
            code = state.get("ExitCode")
            code = int(code) if code is not None else None
            signal = code - 128 if code is not None and 128 < code <= 128 + 64 else None
            return ExitInfo(exit_code=code, signal=signal, oom=bool(state.get("OOMKilled")))
        return None

    def logs(self, replica, tail_lines: int = 200) -> str:
        """The container's output; for a runnable image, the user's container's then the
        forwarder's, each under a heading."""
        client = self._client_of(replica)
        if client is None:
            return ""
        parts = []
        for ref, heading in ((self._ref(replica), "container"), (forwarder_name(replica.id), "forwarder")):
            try:
                data = client.api.logs(ref, stdout=True, stderr=True, tail=tail_lines)
            except Exception:  # noqa: BLE001 - gone or unreachable: no logs to show
                continue
            parts.append((heading, data.decode(errors="replace")))
        if len(parts) == 1 and parts[0][0] == "container":
            return parts[0][1]
        return "".join(f"--- {heading} ---\n{text}" for heading, text in parts)

    # --- adoption and orphans ------------------------------------------------------------

    def running_containers(self) -> dict[str, tuple[int, str]]:
        """replica id -> (host id, container id) of every running replica container on the
        healthy hosts, so a restarted controller adopts them instead of starting duplicates."""
        found: dict[str, tuple[int, str]] = {}
        for host, client in self._healthy_clients():
            try:
                containers = client.containers.list(filters={"label": REPLICA_LABEL, "status": "running"})
            except Exception as error:  # noqa: BLE001
                logger.warning("listing containers on %s failed: %s", host.name, error)
                continue
            for container in containers:
                if container.labels.get(ROLE_LABEL) != ROLE_FORWARDER:
                    found[container.labels[REPLICA_LABEL]] = (host.pk, container.id)
        return found

    def running_replica_ids(self) -> set[str]:
        return set(self.running_containers())

    def reconcile_orphans(self, live_replica_ids: set[str]) -> list[str]:
        """Remove containers labelled `launch.replica` that no live replica owns, on every
        healthy host; returns the replica ids whose containers were removed."""
        removed: list[str] = []
        for host, client in self._healthy_clients():
            try:
                containers = client.containers.list(all=True, filters={"label": REPLICA_LABEL})
            except Exception as error:  # noqa: BLE001
                logger.warning("listing containers on %s failed: %s", host.name, error)
                continue
            candidates: dict[str, list] = {}
            for c in containers:
                if c.labels[REPLICA_LABEL] not in live_replica_ids:
                    candidates.setdefault(c.labels[REPLICA_LABEL], []).append(c)
            if not candidates:
                continue
            # Look again: a replica started since the caller's snapshot has its row saved
            # before its container exists, so it shows up here and is spared.
            still_live = set(
                Replica.objects.filter(id__in=candidates, state__in=LIVE_STATES).values_list("id", flat=True)
            )
            for replica_id, found in candidates.items():
                if replica_id in still_live:
                    continue
                for container in found:  # the forwarder and the user's container of a runnable image
                    try:
                        container.remove(force=True)
                        logger.info("removed orphan container of replica %s on %s", replica_id, host.name)
                    except docker.errors.NotFound:
                        pass
                    except Exception as error:  # noqa: BLE001
                        logger.warning("removing orphan %s on %s failed: %s", replica_id, host.name, error)
                removed.append(replica_id)
        for host, client in self._healthy_clients():
            self._remove_idle_networks(host, client)
        return removed

    @staticmethod
    def _remove_idle_networks(host: Host, client: docker.DockerClient) -> None:
        """Remove owner networks (replica_network) of owners with no live replica. The
        replica row exists before its start creates the network, so one being started keeps
        its network; a network still in use is refused by Docker and kept."""
        try:
            networks = client.networks.list(filters={"label": NETWORK_OWNER_LABEL})
        except Exception as error:  # noqa: BLE001
            logger.warning("listing networks on %s failed: %s", host.name, error)
            return
        owners = {network.attrs.get("Labels", {}).get(NETWORK_OWNER_LABEL): network for network in networks}
        live = set(Replica.objects.filter(owner_id__in=owners, state__in=LIVE_STATES).values_list("owner_id", flat=True))
        for owner_id, network in owners.items():
            if owner_id in live:
                continue
            try:
                network.remove()
                logger.info("removed the network of %s on %s", owner_id, host.name)
            except docker.errors.NotFound:
                pass
            except Exception as error:  # noqa: BLE001
                logger.warning("removing network %s on %s failed: %s", network.name, host.name, error)

    # --- helpers -------------------------------------------------------------------------

    @staticmethod
    def _ref(replica) -> str:
        return replica.handle or container_name(replica.id)

    @staticmethod
    def _host(replica) -> Host | None:
        if not replica.host_id:
            return None
        return Host.objects.filter(pk=replica.host_id).first()

    def _client_of(self, replica) -> docker.DockerClient | None:
        host = self._host(replica)
        if host is None:
            return None
        try:
            return docker_client(host)
        except Exception as error:  # noqa: BLE001 - unreachable host
            logger.warning("host %s unreachable: %s", host.name, error)
            return None

    @staticmethod
    def _container(client: docker.DockerClient, replica_id: str):
        try:
            return client.containers.get(container_name(replica_id))
        except docker.errors.NotFound:
            return None

    @staticmethod
    def _healthy_clients():
        for host in Host.objects.filter(healthy=True).order_by("pk"):
            try:
                yield host, docker_client(host)
            except Exception as error:  # noqa: BLE001
                logger.warning("host %s unreachable: %s", host.name, error)

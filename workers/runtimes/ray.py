"""The Ray runtime (LAUNCH_RUNTIME=ray): each replica is a detached Ray actor on an existing
cluster, and Ray, not our host table, places it.

The actor (`workers.ray_actor.ReplicaActor`, named by the replica id in RAY_NAMESPACE) owns one
`python -m workers.serve` child: the same serve loop, environment and SIGTERM path as the
local runtime. The files of SHIPPED_FILES travel to the cluster as the actor's runtime_env
`py_modules`, so the nodes need only Ray, hiredis and cloudpickle (see docs/ray.md); a bundle's
`requirements` become its runtime_env `pip`.

Resources: `num_cpus`, `memory`, `num_gpus` (Ray sets CUDA_VISIBLE_DEVICES) and the GPU type
through GPU_RESOURCES. An actor no node can hold yet stays PENDING_CREATION: the replica is
alive and STARTING for the controller, with `pending_reason` on the endpoint ("waiting for
capacity"), and Ray's autoscaler sees the demand and may add a node.

The replica's handle is the actor id; the actor table in Ray's GCS tells its state and how it
died (`exit_info`: ray.kill, its node died, Ray's OOM killer, a runtime_env that could not be
set up). Detached and named, actors outlive the controller: a restarted controller finds them
by the handle in the Replica rows, and a row whose handle was never saved by its name.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from workers.runtimes.base import ExitInfo, Placement, ReplicaSpec, Runtime

try:
    import ray
    from ray.core.generated import common_pb2, gcs_pb2
    from ray.exceptions import GetTimeoutError, RayActorError
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImproperlyConfigured(
        "LAUNCH_RUNTIME=ray needs Ray on this machine: pip install -r requirements-ray.txt"
    ) from error

logger = logging.getLogger(__name__)

# Our gpu_type values (endpoints.models.GPU_TYPES) -> the Ray resource a node of that type
# has. "accelerator_type:X" is what Ray sets on a node with X GPUs (detected, or declared with
# `ray start --resources`); Ray has no names for MIG slices, so those are custom resources the
# cluster's operator declares on MIG nodes.
GPU_RESOURCES = {
    "nvidia-tesla-t4": "accelerator_type:T4",
    "nvidia-ampere-a10": "accelerator_type:A10G",
    "nvidia-ampere-a100": "accelerator_type:A100",
    "nvidia-ampere-a100e": "accelerator_type:A100-80G",
    "nvidia-hopper-h100": "accelerator_type:H100",
    "nvidia-hopper-h100-1g20gb": "nvidia-hopper-h100-1g20gb",
    "nvidia-hopper-h100-3g40gb": "nvidia-hopper-h100-3g40gb",
    "nvidia-hopper-h200": "accelerator_type:H200",
    "nvidia-blackwell-b200": "accelerator_type:B200",
    "nvidia-ada-l4": "accelerator_type:L4",
    "nvidia-ada-l40s": "accelerator_type:L40S",
}
# A GPU-type resource is a marker: asking for a sliver of it only picks the node.
GPU_TYPE_RESOURCE_AMOUNT = 0.001
SHIPPED_FILES = ("workers/__init__.py", "workers/allocator.py", "workers/protocol.py", "workers/redis_wire.py",
                 "workers/serve.py", "workers/ray_actor.py")
PENDING_STATES = ("DEPENDENCIES_UNREADY", "PENDING_CREATION", "RESTARTING")
# An alive actor answers poll() in milliseconds; a slower answer is taken as alive (a hung
# serve loop is caught by its heartbeat), so a tick never waits long on one replica.
CALL_TIMEOUT_SECONDS = 3.0
LOG_TAIL_LINES = 30
_EXITS_KEPT = 1000

_connect_lock = threading.Lock()


def ray_resources(spec: ReplicaSpec) -> dict:
    """The actor's resource options for a replica spec."""
    options: dict = {"num_cpus": spec.cpus, "num_gpus": spec.gpus}
    if spec.memory_bytes:
        options["memory"] = spec.memory_bytes
    if spec.gpu_type:
        options["resources"] = {GPU_RESOURCES[spec.gpu_type]: GPU_TYPE_RESOURCE_AMOUNT}
    return options


def runtime_env_for(spec: ReplicaSpec, py_module: str) -> dict:
    """The actor's runtime_env: the serve loop's files, and the bundle's requirements."""
    runtime_env: dict = {"py_modules": [py_module]}
    if spec.requirements:
        runtime_env["pip"] = list(spec.requirements)
    return runtime_env


def exit_info_from_death(cause) -> ExitInfo:
    """An ExitInfo from an actor's death cause (common_pb2.ActorDeathCause)."""
    which = cause.WhichOneof("context")
    if which == "oom_context":
        return ExitInfo(oom=True, detail=cause.oom_context.error_message.strip()[:500])
    if which == "runtime_env_failed_context":
        # The bundle's requirements could not be installed: its own fault, like a load error.
        return ExitInfo(exit_code=1, detail="Ray could not set up its runtime_env: "
                        + cause.runtime_env_failed_context.error_message.strip()[:2000])
    if which == "creation_task_failure_context":
        return ExitInfo(exit_code=1, detail="the Ray actor could not start")
    if which == "actor_unschedulable_context":
        return ExitInfo(detail="Ray cannot schedule it: " + cause.actor_unschedulable_context.error_message[:500])
    if which == "actor_died_error_context":
        context = cause.actor_died_error_context
        reasons = common_pb2.ActorDiedErrorContext.Reason
        if context.reason == reasons.Value("NODE_DIED"):
            return ExitInfo(signal=signal.SIGKILL, detail="its Ray node died")
        if context.reason == reasons.Value("RAY_KILL"):
            return ExitInfo(signal=signal.SIGKILL, detail="killed with ray.kill")
        return ExitInfo(signal=signal.SIGKILL, detail=f"Ray: {context.error_message.strip()[:500]}")
    return ExitInfo()


class RayRuntime(Runtime):
    name = "ray"

    def __init__(self) -> None:
        self._actor_class = None
        self._handles: dict[str, object] = {}  # replica id -> ActorHandle
        # How a serve loop ended (seen by poll before its actor was killed), and its last output.
        self._exits: dict[str, ExitInfo] = {}
        self._tails: dict[str, str] = {}

    # --- connection ---------------------------------------------------------------------

    def _connect(self) -> None:
        with _connect_lock:
            if not ray.is_initialized():
                ray.init(
                    address=settings.RAY_ADDRESS or "auto",
                    namespace=settings.RAY_NAMESPACE,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
            if self._actor_class is None:
                from workers.ray_actor import ReplicaActor

                self._actor_class = ray.remote(ReplicaActor)

    # --- the interface ------------------------------------------------------------------

    def place(self, spec: ReplicaSpec) -> Placement:
        # Ray places it; a type we cannot name would never be placed: refuse it now.
        if spec.gpu_type and spec.gpu_type not in GPU_RESOURCES:
            from workers.runtimes.base import PlacementError

            raise PlacementError(f"the Ray runtime has no resource for GPU type {spec.gpu_type}")
        return Placement()

    def start(self, spec: ReplicaSpec, placement: Placement) -> str:
        self._connect()
        handle = self._actor_class.options(
            name=spec.replica_id,
            namespace=settings.RAY_NAMESPACE,
            lifetime="detached",
            max_restarts=0,  # the controller replaces a replica; Ray must not restart it
            runtime_env=runtime_env_for(spec, _shipped_package_uri()),
            **ray_resources(spec),
        ).remote(spec.replica_id, spec.env, spec.memory_bytes)
        self._handles[spec.replica_id] = handle
        return handle._actor_id.hex()

    def stop(self, replica) -> None:
        info = self._info(replica)
        if info is None or info.state == gcs_pb2.ActorTableData.DEAD:
            return
        if _state_name(info) in PENDING_STATES:
            self.kill(replica)  # nothing runs yet, nothing to finish
            return
        handle = self._handle(replica)
        if handle is not None:
            handle.terminate.remote()  # fire and forget: the tick sees it exit

    def kill(self, replica) -> None:
        handle = self._handle(replica)
        if handle is not None:
            try:
                ray.kill(handle, no_restart=True)
            except (ValueError, RayActorError):
                pass
        self._handles.pop(replica.id, None)

    def is_alive(self, replica) -> bool:
        if replica.id in self._exits:
            return False
        info = self._info(replica)
        if info is None:
            return False
        state = _state_name(info)
        if state in PENDING_STATES:
            return True
        if state != "ALIVE":
            return False
        handle = self._handle(replica)
        if handle is None:
            return False
        try:
            answer = ray.get(handle.poll.remote(LOG_TAIL_LINES), timeout=CALL_TIMEOUT_SECONDS)
        except GetTimeoutError:
            return True
        except RayActorError:
            return False
        if answer["returncode"] is None:
            return True
        # The serve loop ended: keep how, then free the actor's resources.
        returncode = answer["returncode"]
        self._exits[replica.id] = ExitInfo(
            exit_code=returncode if returncode >= 0 else None, signal=-returncode if returncode < 0 else None
        )
        self._tails[replica.id] = answer.get("tail", "")
        while len(self._exits) > _EXITS_KEPT:
            self._tails.pop(next(iter(self._exits)), None)
            self._exits.pop(next(iter(self._exits)))
        self.kill(replica)
        return False

    def exit_info(self, replica) -> ExitInfo | None:
        if replica.id in self._exits:
            return self._exits[replica.id]
        info = self._info(replica)
        if info is None or info.state != gcs_pb2.ActorTableData.DEAD:
            return None
        return exit_info_from_death(info.death_cause)

    def logs(self, replica, tail_lines: int = 200) -> str:
        if replica.id in self._tails:
            return self._tails[replica.id]
        info = self._info(replica)
        handle = self._handle(replica) if info is not None and _state_name(info) == "ALIVE" else None
        if handle is None:
            return ""  # the actor is gone: its log stays on its node (`ray logs`), if the node is
        try:
            return ray.get(handle.tail.remote(tail_lines), timeout=CALL_TIMEOUT_SECONDS)
        except (GetTimeoutError, RayActorError):
            return ""

    def pending_reason(self, replica) -> str | None:
        info = self._info(replica)
        if info is None or _state_name(info) not in PENDING_STATES:
            return None
        required = {k: v for k, v in info.required_resources.items() if v}
        wanted = ", ".join(f"{name}: {amount:g}" for name, amount in sorted(required.items()))
        nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
        if not any(all(node.get(k, 0) >= v for k, v in required.items()) for node in nodes):
            return f"no node of the Ray cluster has {{{wanted}}} (Ray's autoscaler adds one if it can)"
        return f"Ray is placing it ({{{wanted}}} busy on every node that has it, or its runtime_env being set up)"

    def started_at(self, replica) -> datetime | None:
        info = self._info(replica)
        if info is None or not info.start_time:
            return None
        return datetime.fromtimestamp(info.start_time / 1000, tz=UTC)

    # --- Ray lookups --------------------------------------------------------------------

    def _info(self, replica):
        """The actor's row in Ray's actor table (gcs_pb2.ActorTableData), or None."""
        actor_id = replica.handle
        if not actor_id:
            # Started, then the controller stopped before it saved the handle: by its name.
            handle = self._handle(replica)
            if handle is None:
                return None
            actor_id = handle._actor_id.hex()
        self._connect()
        try:
            data = ray._private.state.state.get_actor_info(ray.ActorID(bytes.fromhex(actor_id)))
        except ValueError:
            return None
        return gcs_pb2.ActorTableData.FromString(data) if data else None

    def _handle(self, replica):
        handle = self._handles.get(replica.id)
        if handle is None:
            self._connect()
            try:
                handle = ray.get_actor(replica.id, namespace=settings.RAY_NAMESPACE)
            except ValueError:  # no live actor of that name
                return None
            self._handles[replica.id] = handle
        return handle


def _state_name(info) -> str:
    return gcs_pb2.ActorTableData.ActorState.Name(info.state)


def _shipped_package_uri() -> str:
    """The gcs:// URI of the shipped package, uploaded unless the cluster has it (a package
    no actor uses is dropped by Ray after a while, so this is checked at every start)."""
    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed

    directory = _shipped_package()
    uploaded = upload_py_modules_if_needed(
        {"py_modules": [directory]}, include_gitignore=False, scratch_dir=str(Path(directory).parent),
        logger=logger,
    )
    return uploaded["py_modules"][0]


def _shipped_package() -> str:
    """A directory `workers/` holding SHIPPED_FILES (a copy per content, under LAUNCH_HOME),
    for the runtime_env's py_modules: Ray uploads it once and caches it by its hash."""
    base = Path(settings.BASE_DIR)
    contents = {name: (base / name).read_bytes() for name in SHIPPED_FILES}
    digest = hashlib.sha256(b"".join(name.encode() + data for name, data in contents.items())).hexdigest()[:16]
    target = Path(settings.LAUNCH_HOME) / "ray" / digest / "workers"
    if not target.is_dir():
        partial = target.with_name(f"workers.{threading.get_ident()}.tmp")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for name, data in contents.items():
            (partial / Path(name).name).write_bytes(data)
        try:
            partial.rename(target)
        except OSError:  # another thread made it first
            shutil.rmtree(partial, ignore_errors=True)
    return str(target)

"""The runtime interface: how a replica process comes to life and goes away.

Implementations: `local` (subprocesses on this machine), `docker` (containers on
registered hosts) and `ray` (actors on a Ray cluster, which places them itself). The controller calls these from RQ jobs and the tick; every method must
be idempotent and must not block for long (stop sends the signal and returns; the tick
checks `is_alive` later and calls `kill` once the grace period is over).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a runtime needs to start one replica of `workers.serve`."""

    replica_id: str
    owner_kind: str  # "endpoint" or "batch_job"
    owner_id: str
    team: str
    # LAUNCH_* variables read by workers.serve (see its module docstring).
    env: dict[str, str]
    cpus: float
    memory_bytes: int
    gpus: int = 0
    gpu_type: str | None = None
    framework: dict = field(default_factory=dict)
    requirements: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    # A runnable-image bundle: its image_config plus "image" (repository:tag). The replica is
    # then the user's container plus our forwarder (workers.forwarder), not workers.serve.
    runnable_image: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    """Where a replica goes (docker runtime): a host and the GPU device ids bound to it."""

    host_id: int | None = None
    gpu_device_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExitInfo:
    """How a replica's process or container ended, as far as the runtime can tell.

    `signal` is set when it was killed by a signal (SIGKILL, SIGSEGV); `oom` when the kernel
    (or Docker) killed it for exceeding its memory limit. The controller's replica state
    machine (workers.lifecycle) tells an infrastructure failure (signal, OOM) from a bundle
    failure (a load traceback, a non-zero exit while loading) with these facts."""

    exit_code: int | None = None
    signal: int | None = None
    oom: bool = False
    # What the runtime knows besides ("its Ray node died"), shown after the description.
    detail: str = ""

    def describe(self) -> str:
        text = self._describe()
        return f"{text} ({self.detail})" if self.detail else text

    def _describe(self) -> str:
        import signal as signals

        if self.oom:
            return "was killed for running out of memory"
        if self.signal is not None:
            try:
                name = signals.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"was killed by {name}"
        if self.exit_code is not None:
            return f"exited with status {self.exit_code}"
        return "is gone"


# How an owner's status_reason starts while a replica cannot be placed (the gateway answers a
# sync request 503 then, instead of letting it wait out its timeout).
WAITING_FOR_CAPACITY = "waiting for capacity"


class PlacementError(Exception):
    """No capacity now; the message says why ("no healthy host with 1 free nvidia-ampere-a10")."""


class StartDeferred(PlacementError):
    """start() cannot launch the replica yet because slow preparation (an image build or
    pull) is under way in the background; the message says what ("building image
    launch-worker-derived:abc on host d1 (requirements: torch==2.3)"). The caller drops the
    replica it was starting, shows the message as "waiting", and tries again on a later tick.
    A PlacementError, so code that waits on capacity waits on this too."""


class BundleStartFailed(Exception):
    """start() cannot launch the replica because of the bundle itself (its requirements do
    not install): the controller fails the replica for the bundle's reason, which makes the
    generation UPDATE_FAILED with this message, instead of retrying it every tick."""


class Runtime(abc.ABC):
    name: str

    @abc.abstractmethod
    def place(self, spec: ReplicaSpec) -> Placement:
        """Choose where the replica runs, or raise PlacementError."""

    @abc.abstractmethod
    def start(self, spec: ReplicaSpec, placement: Placement) -> str:
        """Launch the replica; returns its handle (pid, container id)."""

    @abc.abstractmethod
    def stop(self, replica) -> None:
        """Ask the replica to finish its in-flight work and exit (SIGTERM). Returns at once."""

    @abc.abstractmethod
    def kill(self, replica) -> None:
        """Stop it now (SIGKILL) and free what it held. Safe to call on a dead replica."""

    @abc.abstractmethod
    def is_alive(self, replica) -> bool:
        """Whether the process or container is still running."""

    @abc.abstractmethod
    def logs(self, replica, tail_lines: int = 200) -> str:
        """The tail of the replica's output (stdout and stderr)."""

    def exit_info(self, replica) -> ExitInfo | None:
        """How the replica ended, once it is not alive; None while it runs or when unknown
        (a replica started by an earlier controller process, whose exit status went to it)."""
        return None

    def pending_reason(self, replica) -> str | None:
        """Why a started replica does not run yet, while a cluster scheduler holds it (Ray:
        no node has the resources now); None once it runs. The start timeout waits for it."""
        return None

    def started_at(self, replica) -> datetime | None:
        """When the replica began to run, if the runtime knows it (Ray: the actor's creation
        on a node, after any pending time); the start timeout counts from it."""
        return None

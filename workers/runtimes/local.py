"""The local runtime: each replica is a subprocess of this machine in its own process group
(the embedded default). No GPUs: asking for one is refused at placement."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from django.conf import settings

from workers.runtimes.base import Placement, PlacementError, ReplicaSpec, Runtime


def _log_path(replica_id: str) -> Path:
    return Path(settings.LAUNCH_HOME) / "logs" / f"{replica_id}.log"


class LocalRuntime(Runtime):
    name = "local"

    def place(self, spec: ReplicaSpec) -> Placement:
        if spec.gpus:
            raise PlacementError(
                f"this server runs replicas as local processes and has no GPUs; {spec.gpus} "
                f"{spec.gpu_type or 'GPU'} asked for (register a GPU host and use LAUNCH_RUNTIME=docker)"
            )
        return Placement()

    def start(self, spec: ReplicaSpec, placement: Placement) -> str:
        log_path = _log_path(spec.replica_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(settings.BASE_DIR),
            **spec.env,
        }
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "workers.serve"],
                cwd=settings.BASE_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, apart from the controller's
            )
        _children[process.pid] = process
        return str(process.pid)

    def stop(self, replica) -> None:
        self._signal(replica, signal.SIGTERM)

    def kill(self, replica) -> None:
        self._signal(replica, signal.SIGKILL)
        self.is_alive(replica)

    def is_alive(self, replica) -> bool:
        pid = _pid(replica)
        if pid is None:
            return False
        child = _children.get(pid)
        if child is not None:
            # Our own child: poll() reaps it, so a dead one is not left a zombie.
            if child.poll() is None:
                return True
            _children.pop(pid, None)
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not _is_zombie(pid) and _is_our_replica(pid, replica.id)

    def logs(self, replica, tail_lines: int = 200) -> str:
        path = _log_path(replica.id)
        if not path.exists():
            return ""
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            data = handle.read().decode(errors="replace")
        return "\n".join(data.splitlines()[-tail_lines:])

    def _signal(self, replica, signum: int) -> None:
        pid = _pid(replica)
        if pid is None or not self.is_alive(replica):
            return
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            pass


# Popen objects of the replicas this process started (so they can be reaped).
_children: dict[int, subprocess.Popen] = {}


def _pid(replica) -> int | None:
    return int(replica.handle) if replica.handle and replica.handle.isdigit() else None


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def _is_our_replica(pid: int, replica_id: str) -> bool:
    """A restarted controller adopts replicas by pid; make sure the pid was not reused."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return f"LAUNCH_REPLICA_ID={replica_id}".encode() in environ.read().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc (macOS): trust the pid

"""The Ray actor of one replica (LAUNCH_RUNTIME=ray), shipped to the cluster with the serve loop.

It imports nothing of Django (it runs on the cluster's nodes, where only the files of
`workers.runtimes.ray.SHIPPED_FILES` are) and owns one child process, `python -m
workers.serve`, the same serve loop as the local and docker runtimes: so SIGTERM keeps its
meaning (finish the tasks in flight, exit 0), the exit status says how it ended, and the child
runs under an RLIMIT_DATA of the replica's memory, like the local runtime's fallback.

The child dies with the actor: it asks the kernel for SIGKILL when its parent dies
(PR_SET_PDEATHSIG), so a `ray.kill`, an OOM kill of the worker or a lost node never leaves a
serve loop running without its actor. Its output goes to `launch-<replica>.log` in the node's
Ray log directory, where `ray logs` finds it too.

The actor outlives its child: `poll` tells the controller how the child ended (and its last
output), then the controller kills the actor, which frees its resources.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections import deque

LOG_TAIL_READ_BYTES = 256 * 1024


class ReplicaActor:
    def __init__(self, replica_id: str, env: dict[str, str], memory_bytes: int):
        self.replica_id = replica_id
        self.log_path = os.path.join(_log_dir(), f"launch-{replica_id}.log")
        child_env = {
            **os.environ,
            # The shipped `workers` package and the runtime_env's packages, as the actor sees them.
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            "PYTHONUNBUFFERED": "1",
            "LAUNCH_MEMORY_LIMIT_BYTES": str(memory_bytes),
            **env,
        }
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "workers.ray_actor", str(os.getpid()), str(memory_bytes)],
                env=child_env, cwd=tempfile.gettempdir(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )

    def ping(self) -> bool:
        return True

    def poll(self, tail_lines: int = 30) -> dict:
        """{"returncode": None} while the serve loop runs; once it ended, its return code
        (negative: the signal) and its last output."""
        returncode = self.process.poll()
        if returncode is None:
            return {"returncode": None}
        return {"returncode": returncode, "tail": self.tail(tail_lines)}

    def terminate(self) -> None:
        """The serve loop's SIGTERM path: stop taking tasks, finish the ones in flight, exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def tail(self, lines: int = 200) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - LOG_TAIL_READ_BYTES))
                text = handle.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(deque(text.splitlines(), maxlen=lines))


def _log_dir() -> str:
    try:
        import ray

        return ray._private.worker.global_worker.node.get_logs_dir_path()
    except Exception:  # noqa: BLE001 - not in a Ray worker (or Ray moved it): a temp dir
        directory = os.path.join(tempfile.gettempdir(), "launch-ray-logs")
        os.makedirs(directory, exist_ok=True)
        return directory


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent (the actor's worker) dies (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl: nobody would tell us
        os._exit(1)


def _child_main(parent_pid: int, memory_bytes: int) -> None:
    _die_with_parent(parent_pid)
    if memory_bytes:
        import resource

        resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))
    import runpy

    runpy.run_module("workers.serve", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _child_main(int(sys.argv[1]), int(sys.argv[2]))

"""This machine's GPUs, for the local runtime: one small interface, `local_gpus()`.

It runs LOCAL_NVIDIA_SMI with `-L` (nvidia-smi's device list) and parses the lines the way
the docker runtime's host probe does (workers.hosts.parse_nvidia_smi), so one parser turns
"GPU 0: NVIDIA A10 (UUID: ...)" into a contract GPU type and device ids. CI points the
setting at a fake command printing such lines; everything after the command (parsing,
booking in workers.placement, CUDA_VISIBLE_DEVICES) is the code a real GPU machine runs.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass

from django.conf import settings

from workers.hosts import parse_nvidia_smi

# GPUs do not come and go; a short cache spares a subprocess per endpoint create and per start.
CACHE_SECONDS = 30.0
PROBE_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class LocalGpus:
    gpu_type: str  # a contract GpuType ("nvidia-ampere-a10"); "" without GPUs
    device_ids: tuple[str, ...]
    problem: str = ""  # why none were found, when the probe failed ("nvidia-smi not found")

    def describe(self) -> str:
        if not self.device_ids:
            return f"no GPUs ({self.problem})" if self.problem else "no GPUs"
        return f"{len(self.device_ids)} {self.gpu_type} (device ids {', '.join(self.device_ids)})"


_cache: dict[str, tuple[float, LocalGpus]] = {}
_cache_lock = threading.Lock()


def local_gpus() -> LocalGpus:
    """This machine's GPUs, as LOCAL_NVIDIA_SMI lists them (cached CACHE_SECONDS)."""
    command = settings.LOCAL_NVIDIA_SMI
    now = time.monotonic()
    with _cache_lock:
        cached = _cache.get(command)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
    found = _probe(command)
    with _cache_lock:
        _cache[command] = (now, found)
    return found


def forget_local_gpus() -> None:
    """Probe again on the next call (tests that change the fake's output)."""
    with _cache_lock:
        _cache.clear()


def _probe(command: str) -> LocalGpus:
    try:
        result = subprocess.run(
            [command, "-L"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_SECONDS, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        return LocalGpus("", (), f"{command} not found")
    except (OSError, subprocess.TimeoutExpired) as error:
        return LocalGpus("", (), f"{command} -L failed: {error}")
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or result.stdout.strip().splitlines() or ["no output"])[-1]
        return LocalGpus("", (), f"{command} -L exited with status {result.returncode}: {last}")
    gpu_type, ids = parse_nvidia_smi(result.stdout)
    return LocalGpus(gpu_type, tuple(ids), "" if ids else f"{command} -L listed none")


def local_gpu_refusal(gpus: int, gpu_type: str | None) -> tuple[str, str] | None:
    """(field, message) when a replica asking for `gpus` of `gpu_type` can never run on this
    machine, so an endpoint or batch job asking for it is refused at create, not left waiting."""
    if not gpus:
        return None
    found = local_gpus()
    if not found.device_ids:
        return "gpus", (
            f"this server runs replicas as local processes and this machine has {found.describe()}, and there are "
            "no GPU hosts; use gpus: 0, or register a GPU host and run with LAUNCH_RUNTIME=docker"
        )
    if gpu_type and gpu_type != found.gpu_type:
        return "gpu_type", f"this machine's GPUs are {found.gpu_type}, not {gpu_type} ({found.describe()})"
    if gpus > len(found.device_ids):
        return "gpus", f"a replica cannot have {gpus} GPUs: this machine has {found.describe()}"
    return None

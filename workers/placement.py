"""Placement for the docker runtime: which host a replica goes to and which GPUs it gets.

A host's free capacity is what it has (probed CPUs and memory, declared or probed GPU device
ids) minus what its live replicas asked for. The host rows are locked for the whole
decision and the choice is written onto the replica's row in the same transaction, so two
placements running at once never hand out the same GPU device id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import transaction

from workers.models import LIVE_STATES, Host, Replica
from workers.runtimes.base import Placement, PlacementError, ReplicaSpec

GIB = 1024**3


@dataclass
class _Free:
    host: Host
    cpus: float
    memory_bytes: int
    gpu_ids: list[str]
    owner_replicas: int = 0
    used_gpu_ids: set[str] = field(default_factory=set)


def _describe_gpus(count: int, gpu_type: str | None) -> str:
    kind = gpu_type or "GPU"
    return f"{count} free {kind}" if count == 1 or gpu_type else f"{count} free GPUs"


def host_capacity(hosts: list[Host]) -> list[_Free]:
    """What each host has free now (CPUs, memory, GPU ids), for the capacity views."""
    return _free_capacity(hosts, None)


def _free_capacity(hosts: list[Host], spec: ReplicaSpec | None) -> list[_Free]:
    free = {
        host.pk: _Free(
            host=host, cpus=host.cpus or 0.0, memory_bytes=host.memory_bytes or 0, gpu_ids=list(host.gpu_device_ids)
        )
        for host in hosts
    }
    live = Replica.objects.filter(host__in=hosts, state__in=LIVE_STATES)
    if spec is not None:
        live = live.exclude(id=spec.replica_id)
    live = live.values_list("host_id", "cpus", "memory_bytes", "gpu_device_ids", "owner_kind", "owner_id")
    for host_id, cpus, memory_bytes, gpu_ids, owner_kind, owner_id in live:
        entry = free[host_id]
        entry.cpus -= cpus or 0.0
        entry.memory_bytes -= memory_bytes or 0
        entry.used_gpu_ids.update(str(i) for i in gpu_ids or ())
        if spec is not None and owner_kind == spec.owner_kind and owner_id == spec.owner_id:
            entry.owner_replicas += 1
    for entry in free.values():
        entry.gpu_ids = [i for i in entry.gpu_ids if i not in entry.used_gpu_ids]
    return list(free.values())


def place_replica(spec: ReplicaSpec) -> Placement:
    """Choose a healthy, uncordoned, undrained host with room for the replica, spreading one
    owner's replicas over hosts, and bind GPU device ids; or raise PlacementError saying why.
    The choice is recorded on the replica's row when the row exists."""
    with transaction.atomic():
        # Locked in id order (no deadlock between two placements); on SQLite the
        # IMMEDIATE transaction already serialises writers.
        hosts = list(Host.objects.select_for_update().order_by("pk"))
        if not hosts:
            raise PlacementError("no Docker host is registered (python manage.py register_host NAME --docker-url URL)")
        usable = [h for h in hosts if h.schedulable]
        if not usable:
            states = ", ".join(
                f"{h.name} {'cordoned' if h.cordoned else 'draining' if h.draining else 'unhealthy'}" for h in hosts
            )
            raise PlacementError(f"no healthy host accepts replicas ({states})")
        entries = _free_capacity(usable, spec)
        if spec.gpus:
            entries = [
                e
                for e in entries
                if (not spec.gpu_type or e.host.gpu_type == spec.gpu_type) and len(e.gpu_ids) >= spec.gpus
            ]
            if not entries:
                raise PlacementError(f"no healthy host with {_describe_gpus(spec.gpus, spec.gpu_type)}")
        fitting = [e for e in entries if e.cpus >= spec.cpus - 1e-9 and e.memory_bytes >= spec.memory_bytes]
        if not fitting:
            roomiest = max(entries, key=lambda e: (e.cpus, e.memory_bytes))
            raise PlacementError(
                f"no healthy host with {spec.cpus:g} free CPUs and {spec.memory_bytes / GIB:.2f} GiB free memory"
                f"{' and ' + _describe_gpus(spec.gpus, spec.gpu_type) if spec.gpus else ''}"
                f" (most room: {roomiest.host.name} with {max(roomiest.cpus, 0):g} CPUs,"
                f" {max(roomiest.memory_bytes, 0) / GIB:.2f} GiB)"
            )
        # Fewest replicas of this owner first (spread); a CPU-only replica prefers hosts
        # without free GPUs so that GPUs stay available; then the roomiest host.
        chosen = min(
            fitting,
            key=lambda e: (
                e.owner_replicas,
                0 if spec.gpus else len(e.gpu_ids),
                -e.cpus,
                -e.memory_bytes,
                e.host.pk,
            ),
        )
        gpu_ids = chosen.gpu_ids[: spec.gpus] if spec.gpus else []
        Replica.objects.filter(id=spec.replica_id).update(
            host=chosen.host, gpu_device_ids=gpu_ids, cpus=spec.cpus, memory_bytes=spec.memory_bytes
        )
        return Placement(host_id=chosen.host.pk, gpu_device_ids=tuple(gpu_ids))

"""Placement: which host a replica goes to (docker runtime) and which GPUs it gets (docker
and local runtimes: the one home of GPU booking).

A host's free capacity is what it has (probed CPUs and memory, declared or probed GPU device
ids) minus what its live replicas asked for. The host rows are locked for the whole
decision and the choice is written onto the replica's row in the same transaction, so two
placements running at once never hand out the same GPU device id. The local runtime's
machine is not a Host row: its GPUs come from workers.runtimes.local_gpus, and its booked
ids are those of live local replicas (host null), locked the same way (place_local_replica).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import transaction

from workers.models import LIVE_STATES, Host, Replica
from workers.runtimes.base import Placement, PlacementError, ReplicaSpec
from workers.runtimes.local_gpus import LocalGpus

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
        entry.gpu_ids = _unbooked(entry.gpu_ids, entry.used_gpu_ids)
    return list(free.values())


def _unbooked(device_ids, used: set[str]) -> list[str]:
    return [str(i) for i in device_ids if str(i) not in used]


def _book(spec: ReplicaSpec, host: Host | None, gpu_ids: list[str]) -> None:
    Replica.objects.filter(id=spec.replica_id).update(
        host=host, gpu_device_ids=gpu_ids, cpus=spec.cpus, memory_bytes=spec.memory_bytes
    )


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
        _book(spec, chosen.host, gpu_ids)
        return Placement(host_id=chosen.host.pk, gpu_device_ids=tuple(gpu_ids))


def place_local_replica(spec: ReplicaSpec, gpus: LocalGpus) -> Placement:
    """Bind GPU device ids of this machine (`gpus`, from local_gpus()) to a local replica:
    those no live local replica holds, or raise PlacementError saying who holds them. A
    CPU-only replica books nothing. The replica rows that could hold a device are locked for
    the decision (every racing placement's own row is one of them, created and committed
    before it is placed), so two placements at once see each other's choice."""
    if not spec.gpus:
        return Placement()
    if spec.gpu_type and spec.gpu_type != gpus.gpu_type:
        raise PlacementError(f"this machine has {gpus.describe()}, no {spec.gpu_type}")
    with transaction.atomic():
        # Its own row is locked too, in the same pk order as every other placement's: a
        # placement that skipped it would update it (the booking) while holding the others,
        # and two such placements deadlock on each other's rows.
        live = list(
            Replica.objects.select_for_update()
            .filter(runtime="local", host__isnull=True, state__in=LIVE_STATES)
            .order_by("pk")
            .values_list("id", "gpu_device_ids")
        )
        holders = {str(i): replica_id for replica_id, ids in live if replica_id != spec.replica_id for i in ids or ()}
        free = _unbooked(gpus.device_ids, set(holders))
        if len(free) < spec.gpus:
            booked = ", ".join(f"{i} by replica {holders[i]}" for i in gpus.device_ids if i in holders)
            raise PlacementError(
                f"no {_describe_gpus(spec.gpus, spec.gpu_type)} on this machine: it has {gpus.describe()}"
                f"{', booked: ' + booked if booked else ''}"
            )
        gpu_ids = free[: spec.gpus]
        _book(spec, None, gpu_ids)
        return Placement(gpu_device_ids=tuple(gpu_ids))

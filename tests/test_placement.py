"""Placement of docker replicas on registered hosts (database only: no engine needed)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from workers.models import Host, Replica
from workers.placement import place_replica
from workers.runtimes.base import PlacementError, ReplicaSpec

GIB = 1024**3
A10 = "nvidia-ampere-a10"


def make_host(name: str, *, cpus: float = 8, memory_gib: int = 32, gpus: int = 0, gpu_type: str = "", **fields) -> Host:
    return Host.objects.create(
        name=name,
        docker_url=f"unix:///tmp/{name}.sock",
        cpus=cpus,
        memory_bytes=memory_gib * GIB,
        gpu_type=gpu_type,
        gpu_device_ids=[str(i) for i in range(gpus)],
        healthy=fields.pop("healthy", True),
        **fields,
    )


def place(
    owner_id: str = "end_a", *, cpus: float = 1, memory_gib: float = 1, gpus: int = 0, gpu_type: str | None = None
):
    """Like the controller: the replica row exists (STARTING) before placement."""
    replica = Replica.objects.create(owner_kind="endpoint", owner_id=owner_id, runtime="docker")
    spec = ReplicaSpec(
        replica_id=replica.id,
        owner_kind="endpoint",
        owner_id=owner_id,
        team="acme",
        env={},
        cpus=cpus,
        memory_bytes=int(memory_gib * GIB),
        gpus=gpus,
        gpu_type=gpu_type,
    )
    try:
        placement = place_replica(spec)
    except PlacementError:
        replica.delete()
        raise
    replica.refresh_from_db()
    return placement, replica


def test_gpu_replicas_get_distinct_devices_and_fill_the_second_host_then_wait(db):
    make_host("small", gpus=1, gpu_type=A10)
    make_host("big", gpus=2, gpu_type=A10)
    bound = set()
    for _ in range(3):
        placement, replica = place(gpus=1, gpu_type=A10)
        assert len(placement.gpu_device_ids) == 1
        assert replica.host_id == placement.host_id
        assert replica.gpu_device_ids == list(placement.gpu_device_ids)
        bound.add((replica.host.name, placement.gpu_device_ids[0]))
    assert bound == {("small", "0"), ("big", "0"), ("big", "1")}

    with pytest.raises(PlacementError, match="no healthy host with 1 free nvidia-ampere-a10"):
        place(gpus=1, gpu_type=A10)


def test_a_stopped_replica_frees_its_gpu_for_the_next_one(db):
    make_host("gpu", gpus=1, gpu_type=A10)
    _, first = place(gpus=1, gpu_type=A10)
    with pytest.raises(PlacementError):
        place(gpus=1, gpu_type=A10)
    Replica.objects.filter(pk=first.pk).update(state=Replica.State.STOPPED)
    placement, _ = place(gpus=1, gpu_type=A10)
    assert placement.gpu_device_ids == ("0",)


def test_gpus_of_another_type_do_not_count(db):
    make_host("t4s", gpus=4, gpu_type="nvidia-tesla-t4")
    with pytest.raises(PlacementError, match="no healthy host with 2 free nvidia-ampere-a10"):
        place(gpus=2, gpu_type=A10)


def test_replicas_of_one_endpoint_spread_over_hosts(db):
    make_host("one")
    make_host("two")
    hosts = {place("end_spread")[1].host.name for _ in range(2)}
    assert hosts == {"one", "two"}


def test_cpu_only_replicas_leave_gpu_hosts_alone_while_others_have_room(db):
    make_host("gpu", gpus=2, gpu_type=A10, cpus=16)
    make_host("cpu", cpus=4)
    _, replica = place(cpus=1)
    assert replica.host.name == "cpu"


def test_cpus_and_memory_of_live_replicas_are_taken(db):
    make_host("only", cpus=2, memory_gib=4)
    place(cpus=1.5, memory_gib=1)
    with pytest.raises(PlacementError, match=r"no healthy host with 1 free CPUs .*most room: only with 0.5 CPUs"):
        place(cpus=1, memory_gib=1)
    place(cpus=0.5, memory_gib=3)
    with pytest.raises(PlacementError, match="GiB free memory"):
        place(cpus=0, memory_gib=0.5)


def test_cordoned_draining_and_unhealthy_hosts_get_no_replicas(db):
    make_host("cordoned", cordoned=True)
    make_host("draining", draining=True)
    make_host("down", healthy=False)
    with pytest.raises(PlacementError, match="no healthy host accepts replicas .*cordoned cordoned.*down unhealthy"):
        place()
    make_host("fine")
    assert place()[1].host.name == "fine"


def test_without_hosts_the_error_says_how_to_register_one(db):
    with pytest.raises(PlacementError, match="register_host"):
        place()


def test_concurrent_placements_never_share_a_gpu(transactional_db):
    make_host("gpu", gpus=3, gpu_type=A10)
    results: list = []
    barrier = threading.Barrier(6)

    def worker():
        try:
            barrier.wait()
            results.append(place(gpus=1, gpu_type=A10)[0])
        except PlacementError as error:
            results.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    placed = [r for r in results if not isinstance(r, Exception)]
    assert len(results) == 6
    assert sorted(p.gpu_device_ids[0] for p in placed) == ["0", "1", "2"]
    assert sum(isinstance(r, PlacementError) for r in results) == 3

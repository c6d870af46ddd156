"""The Ray runtime against a real multi-node Ray cluster on this machine (tests/ray_cluster.py):
a head with no CPUs for replicas, node "a" with two fake A10G GPUs, node "b" with CPUs only.
Real controller thread, real HTTP, real Redis; replicas are detached actors.

One cluster for the module (Ray start-up is slow); the tests run in order, node loss last.
Skipped, with the reason, when Ray is not installed (pip install -r requirements-ray.txt).
"""

from __future__ import annotations

import json
import time

import pytest

from tests.ray_cluster import RayTestCluster, ray_installed
from tests.stack import api_for
from tests.test_batch_e2e import create_job, download, identity_bundle, legacy_csv, upload_input, wait_job
from tests.test_serving_e2e import echo_bundle, slow_bundle

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.xdist_group("ray"),
    pytest.mark.skipif(not ray_installed(), reason="Ray is not installed (pip install -r requirements-ray.txt)"),
]


@pytest.fixture(scope="module")
def ray_cluster():
    cluster = RayTestCluster()
    try:
        cluster.add_node("head", num_cpus=0)
        cluster.add_node("a", num_cpus=2, num_gpus=2, resources={"accelerator_type:A10G": 2})
        cluster.add_node("b", num_cpus=2)
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture
def ray_stack(ray_cluster, live_stack, settings):
    from workers.runtimes import _runtime

    settings.LAUNCH_RUNTIME = "ray"
    settings.RAY_ADDRESS = ray_cluster.address
    _runtime.cache_clear()
    yield live_stack


def env_bundle():
    """Answers with what the replica sees of its placement."""

    def load_predict_fn(model):
        def predict(x):
            import os

            return {"x": x, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}

        return predict

    return {"model": None, "load_predict_fn": load_predict_fn}


def actor_row(replica):
    from workers.runtimes import get_runtime

    return get_runtime("ray")._info(replica)


def node_of(replica) -> str:
    import ray

    node_id = actor_row(replica).address.node_id.hex()
    return next(n["NodeManagerPort"] for n in ray.nodes() if n["NodeID"] == node_id)


def our_actors(endpoint_replica_ids: set[str]) -> list[str]:
    """Alive actors in our namespace among the given replica ids."""
    import ray

    alive = []
    for replica_id in endpoint_replica_ids:
        try:
            ray.get_actor(replica_id, namespace="launch")
        except ValueError:
            continue
        alive.append(replica_id)
    return alive


def test_sync_and_async_endpoints_from_zero_serve_through_ray_actors(ray_stack, owner):
    from workers.models import Replica

    api = api_for(ray_stack, owner)
    bundle_id = api.upload_bundle(echo_bundle(), "echo")
    sync_id = api.create_endpoint(bundle_id, "ray-sync")
    async_id = api.create_endpoint(bundle_id, "ray-async", endpoint_type="async", min_workers=0, max_workers=1)
    api.wait_endpoint(sync_id, "READY", timeout=90, available_workers=1)
    body = api.post(f"/v1/sync-tasks?model_endpoint_id={sync_id}", json={"args": {"x": 21, "y": "ab"}}).json()
    assert body["result"] == {"result": '{"value":42,"y_len":2}'}
    replica = Replica.objects.get(owner_id=sync_id, state=Replica.State.READY)
    assert replica.runtime == "ray" and actor_row(replica).name == replica.id

    task_id = api.post(f"/v1/async-tasks?model_endpoint_id={async_id}", json={"args": {"x": 5}}).json()["task_id"]
    assert api.wait_task(task_id, timeout=90)["result"] == {"result": '{"value":10,"y_len":0}'}


def test_gpu_replicas_land_where_their_type_is_on_different_devices(ray_stack, owner, ray_cluster):
    from workers.models import Replica

    api = api_for(ray_stack, owner)
    endpoint_id = api.create_endpoint(
        api.upload_bundle(env_bundle(), "env"), "ray-gpu", gpus=1, gpu_type="nvidia-ampere-a10",
        min_workers=2, max_workers=2, cpus=0.5,
    )
    api.wait_endpoint(endpoint_id, "READY", timeout=90, available_workers=2)
    replicas = list(Replica.objects.filter(owner_id=endpoint_id, state=Replica.State.READY))
    node_a = ray_cluster.nodes[1]
    assert {node_of(r) for r in replicas} == {_manager_port(node_a)}
    devices = set()
    for _ in range(40):
        body = api.post(f"/v1/sync-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": 1}}).json()
        devices.add(json.loads(body["result"]["result"])["cuda"])
        if len(devices) == 2:
            break
    assert devices == {"0", "1"}


def test_a_gpu_type_no_node_has_stays_pending_with_rays_reason(ray_stack, owner, settings):
    from workers.models import Replica

    settings.REPLICA_START_TIMEOUT_SECONDS = 2  # pending time must not count against it
    api = api_for(ray_stack, owner)
    endpoint_id = api.create_endpoint(
        api.upload_bundle(echo_bundle(), "echo"), "ray-a100", gpus=1, gpu_type="nvidia-ampere-a100", cpus=0.5,
    )
    deadline = time.monotonic() + 30
    while "pending" not in (api.endpoint(endpoint_id)["status_reason"] or ""):
        assert time.monotonic() < deadline, api.endpoint(endpoint_id)
        time.sleep(0.2)
    time.sleep(4)  # past the start timeout
    endpoint = api.endpoint(endpoint_id)
    assert endpoint["status"] == "UPDATE_IN_PROGRESS"
    reason = endpoint["status_reason"]
    assert reason.startswith("waiting for capacity: replica ") and "pending: no node of the Ray cluster has" in reason
    assert "accelerator_type:A100" in reason and "GPU: 1" in reason
    assert Replica.objects.filter(owner_id=endpoint_id).count() == 1  # one actor, waiting; none failed


def test_a_second_controller_adopts_the_actors_and_starts_no_duplicates(ray_stack, owner):
    from tests.stack import ControllerThread
    from workers.models import Replica
    from workers.runtimes import _runtime

    api = api_for(ray_stack, owner)
    endpoint_id = api.create_endpoint(api.upload_bundle(echo_bundle(), "echo"), "ray-adopt", min_workers=2,
                                      max_workers=2)
    api.wait_endpoint(endpoint_id, "READY", timeout=90, available_workers=2)
    before = set(Replica.objects.filter(owner_id=endpoint_id).values_list("id", flat=True))

    _runtime.cache_clear()  # a fresh runtime, as in a new controller process: no handles cached
    second = ControllerThread().start()
    try:
        time.sleep(3)  # many ticks of two controllers
        body = api.post(f"/v1/sync-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": 2}}).json()
        assert body["result"] == {"result": '{"value":4,"y_len":0}'}
    finally:
        second.stop()
    rows = Replica.objects.filter(owner_id=endpoint_id)
    assert set(rows.values_list("id", flat=True)) == before
    assert set(rows.values_list("state", flat=True)) == {Replica.State.READY}
    assert sorted(our_actors(before)) == sorted(before)


def test_batch_job_of_10k_items_spreads_over_two_nodes_with_ordered_results(ray_stack, owner):
    from workers.models import Replica

    api = api_for(ray_stack, owner)
    bundle_id = api.upload_bundle(identity_bundle(), "identity")
    content = legacy_csv([{"i": i} for i in range(10_000)])
    job_id = create_job(api, bundle_id, upload_input(api, content), resource_requests={"max_workers": 2, "cpus": 2})
    nodes = set()
    deadline = time.monotonic() + 120
    while api.get(f"/v1/batch-jobs/{job_id}").json()["status"] in ("PENDING", "RUNNING"):
        assert time.monotonic() < deadline
        for replica in Replica.objects.filter(owner_id=job_id, state=Replica.State.READY):
            nodes.add(node_of(replica))
        time.sleep(0.1)
    job = wait_job(api, job_id)
    assert job["status"] == "SUCCESS", job
    results = json.loads(download(api, job))
    assert [r["result"] for r in results] == [{"i": i} for i in range(10_000)]
    assert len(nodes) == 2  # two CPUs each: one replica per worker node


def test_a_lost_node_moves_its_replica_and_its_task_completes(ray_stack, owner, ray_cluster):
    from workers.models import Replica

    api = api_for(ray_stack, owner)
    endpoint_id = api.create_endpoint(api.upload_bundle(slow_bundle(3), "slow"), "ray-lost", endpoint_type="async",
                                      cpus=2)
    api.wait_endpoint(endpoint_id, "READY", timeout=90, available_workers=1)
    victim = Replica.objects.get(owner_id=endpoint_id, state=Replica.State.READY)
    victim_port = node_of(victim)
    task_ids = [
        api.post(f"/v1/async-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": n}}).json()["task_id"]
        for n in range(3)
    ]
    deadline = time.monotonic() + 20
    while api.get(f"/v1/async-tasks/{task_ids[0]}").json()["status"] != "STARTED":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    lost = next(n for n in ray_cluster.nodes if _manager_port(n) == victim_port)
    ray_cluster.remove_node(lost)

    for n, task_id in enumerate(task_ids):
        task = api.wait_task(task_id, timeout=120)
        assert task["status"] == "SUCCESS", task
        assert task["result"] == {"result": str(n + 1)}
    victim.refresh_from_db()
    assert victim.state == Replica.State.FAILED
    replacement = Replica.objects.get(owner_id=endpoint_id, state=Replica.State.READY)
    assert node_of(replacement) != victim_port


def _manager_port(node) -> int:
    flag = next(part for part in node.process.args if part.startswith("--node-manager-port="))
    return int(flag.split("=", 1)[1])


def _spec(**fields):
    from workers.runtimes.base import ReplicaSpec

    return ReplicaSpec(replica_id="rep_x", owner_kind="endpoint", owner_id="end_x", team="acme", env={},
                       cpus=fields.pop("cpus", 1.5), memory_bytes=fields.pop("memory_bytes", 2 * 1024**3), **fields)


def test_every_gpu_type_maps_to_a_ray_resource_and_resources_follow_the_spec():
    from endpoints.models import GPU_TYPES
    from workers.runtimes.ray import GPU_RESOURCES, ray_resources

    assert set(GPU_RESOURCES) == set(GPU_TYPES)
    assert ray_resources(_spec()) == {"num_cpus": 1.5, "num_gpus": 0, "memory": 2 * 1024**3}
    assert ray_resources(_spec(gpus=2, gpu_type="nvidia-hopper-h100")) == {
        "num_cpus": 1.5, "num_gpus": 2, "memory": 2 * 1024**3, "resources": {"accelerator_type:H100": 0.001},
    }


def test_a_bundles_requirements_become_the_actors_pip_runtime_env():
    from workers.runtimes.ray import runtime_env_for

    assert runtime_env_for(_spec(), "gcs://pkg.zip") == {"py_modules": ["gcs://pkg.zip"]}
    assert runtime_env_for(_spec(requirements=("numpy==2.1.0", "scipy")), "gcs://pkg.zip") == {
        "py_modules": ["gcs://pkg.zip"], "pip": ["numpy==2.1.0", "scipy"],
    }

"""The docker runtime against two real engines (d1, d2) started by tests/docker_harness.py.

Replicas are real containers running the real serve loop (`python -m workers.serve`) on a
cloudpickle bundle file, with this machine's Python mounted read-only.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from pathlib import Path

import cloudpickle
import pytest
from django.conf import settings
from django.core.management import call_command

from tests.docker_harness import TEST_IMAGE
from workers import hosts, protocol
from workers.models import Replica
from workers.runtimes.base import ExitInfo, PlacementError, ReplicaSpec
from workers.runtimes.docker import DockerRuntime

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("docker")]

A10 = "nvidia-ampere-a10"
MIB = 1024**2
SERVE_LOOP = Path(settings.BASE_DIR) / "workers" / "serve.py"
needs_serve_loop = pytest.mark.skipif(
    not SERVE_LOOP.exists(), reason="workers/serve.py (the replica serve loop) is not there yet"
)


@pytest.fixture
def bundle_url() -> str:
    """A cloudpickle bundle file; file:// bundles are mounted into containers on local hosts."""

    def load_predict_fn(model):
        def predict(x):
            return x * model

        return predict

    directory = Path(settings.BUNDLE_STORE_DIR) / f"bundle-{uuid.uuid4().hex[:8]}"
    directory.mkdir(parents=True)
    path = directory / "bundle.pkl"
    path.write_bytes(cloudpickle.dumps({"model": 3, "load_predict_fn": load_predict_fn}))
    return f"file://{path}"


@pytest.fixture
def runtime() -> DockerRuntime:
    return DockerRuntime()


def make_spec(
    bundle_url: str,
    *,
    owner_id: str = "end_docker",
    cpus: float = 0.25,
    memory_mib: int = 256,
    gpus: int = 0,
    requirements=(),
    redis_url: str | None = None,
):
    """Like the controller: the replica row (STARTING) exists before placement."""
    replica = Replica.objects.create(owner_kind="endpoint", owner_id=owner_id, runtime="docker")
    env = {
        "LAUNCH_REDIS_URL": redis_url or settings.REDIS_URL,
        "LAUNCH_PREFIX": protocol.endpoint_prefix(owner_id),
        "LAUNCH_REPLICA_ID": replica.id,
        "LAUNCH_BUNDLE_URL": bundle_url,
        "LAUNCH_BUNDLE_CONFIG": json.dumps(
            {
                "packaging_type": "cloudpickle",
                "app_config": None,
                "load_predict_fn_module_path": "",
                "load_model_fn_module_path": "",
                "python_version": "",
            }
        ),
        "LAUNCH_CONCURRENCY": "1",
    }
    spec = ReplicaSpec(
        replica_id=replica.id,
        owner_kind="endpoint",
        owner_id=owner_id,
        team="acme",
        env=env,
        cpus=cpus,
        memory_bytes=memory_mib * MIB,
        gpus=gpus,
        gpu_type=A10 if gpus else None,
        requirements=tuple(requirements),
        labels={"launch.endpoint": "my-endpoint"},
    )
    return replica, spec


def socket_redis_url() -> str:
    """A Redis address a bridge network can reach (a unix socket, its directory mounted
    read-only, as the embedded Redis's is), whatever Redis this run uses: for tests that look
    at the container, not at tasks it runs."""
    directory = Path(settings.BUNDLE_STORE_DIR) / "fake-redis-run"
    directory.mkdir(parents=True, exist_ok=True)
    return f"unix://{directory}/redis.sock?db=0"


def start(runtime: DockerRuntime, bundle_url: str, **kwargs) -> Replica:
    replica, spec = make_spec(bundle_url, **kwargs)
    placement = runtime.place(spec)
    handle = runtime.start(spec, placement)
    replica.refresh_from_db()
    replica.handle = handle
    replica.save(update_fields=["handle"])
    return replica


def container_of(docker_engines, replica: Replica):
    return docker_engines.client(replica.host.name).containers.get(replica.handle)


def wait_for(predicate, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_replica_container_has_limits_labels_its_owners_network_a_read_only_root_and_no_privileges(
    docker_hosts, docker_engines, runtime, bundle_url
):
    replica = start(runtime, bundle_url, cpus=0.5, memory_mib=300, redis_url=socket_redis_url())
    attrs = container_of(docker_engines, replica).attrs
    host_config, config = attrs["HostConfig"], attrs["Config"]
    assert host_config["NanoCpus"] == 500_000_000
    assert host_config["Memory"] == 300 * MIB
    assert host_config["NetworkMode"] == "launch-net-end_docker"
    network = docker_engines.client(replica.host.name).networks.get("launch-net-end_docker")
    assert network.attrs["Driver"] == "bridge" and network.attrs["Labels"]["launch.network_owner"] == "end_docker"
    assert "launch.network_fallback" not in config["Labels"]
    assert host_config["ReadonlyRootfs"] is True
    assert set(host_config["Tmpfs"]) == {"/tmp", "/home/launch"}
    assert "HOME=/home/launch" in config["Env"]
    assert host_config["Privileged"] is False
    assert host_config["RestartPolicy"]["Name"] in ("", "no")
    assert host_config["CapDrop"] == ["ALL"]
    assert host_config["Init"] is True
    assert "no-new-privileges" in host_config["SecurityOpt"]
    assert config["Labels"]["launch.replica"] == replica.id
    assert config["Labels"]["launch.owner_kind"] == "endpoint"
    assert config["Labels"]["launch.owner_id"] == "end_docker"
    assert config["Labels"]["launch.team"] == "acme"
    assert config["Labels"]["launch.endpoint"] == "my-endpoint"
    assert config["Image"] == TEST_IMAGE
    assert f"LAUNCH_REPLICA_ID={replica.id}" in config["Env"]
    sources = [mount["Source"] for mount in attrs["Mounts"]]
    engine_dir = str(docker_engines.directory)
    assert not any(s.endswith("docker.sock") or s.startswith(engine_dir) for s in sources), sources
    assert all(mount["RW"] is False for mount in attrs["Mounts"] if mount["Source"] == str(settings.BASE_DIR))
    assert replica.cpus == 0.5 and replica.memory_bytes == 300 * MIB


def test_gpu_replicas_use_the_second_host_when_the_first_is_full_and_wait_for_capacity(
    docker_hosts, docker_engines, runtime, bundle_url
):
    hosts.host_update(host=docker_hosts["d1"], gpu_type=A10, gpus=1, gpus_via_env_only=True)
    hosts.host_update(host=docker_hosts["d2"], gpu_type=A10, gpu_device_ids=["GPU-a", "GPU-b"], gpus_via_env_only=True)
    replicas = [start(runtime, bundle_url, gpus=1) for _ in range(3)]

    seen = set()
    for replica in replicas:
        env = dict(item.split("=", 1) for item in container_of(docker_engines, replica).attrs["Config"]["Env"])
        assert env["NVIDIA_VISIBLE_DEVICES"] == replica.gpu_device_ids[0]
        seen.add((replica.host.name, env["NVIDIA_VISIBLE_DEVICES"]))
    assert seen == {("d1", "0"), ("d2", "GPU-a"), ("d2", "GPU-b")}

    with pytest.raises(PlacementError, match="no healthy host with 1 free nvidia-ampere-a10"):
        runtime.place(make_spec(bundle_url, gpus=1)[1])

    # Capacity appears when a replica goes away: the next placement takes its device.
    freed = next(r for r in replicas if r.host.name == "d2")
    runtime.kill(freed)
    Replica.objects.filter(pk=freed.pk).update(state=Replica.State.STOPPED)
    replica = start(runtime, bundle_url, gpus=1)
    assert (replica.host.name, replica.gpu_device_ids) == ("d2", freed.gpu_device_ids)


@needs_serve_loop
def test_a_killed_container_is_not_alive(docker_hosts, docker_engines, runtime, bundle_url):
    replica = start(runtime, bundle_url)
    assert runtime.is_alive(replica)
    container_of(docker_engines, replica).kill()
    assert wait_for(lambda: not runtime.is_alive(replica))
    runtime.kill(replica)
    runtime.kill(replica)  # idempotent on a container that is gone
    assert not runtime.is_alive(replica)


@needs_serve_loop
def test_stop_sends_sigterm_and_the_replica_exits(docker_hosts, runtime, bundle_url):
    replica = start(runtime, bundle_url)
    assert wait_for(lambda: runtime.is_alive(replica))
    runtime.stop(replica)
    assert wait_for(lambda: not runtime.is_alive(replica))


BUSYBOX = "/launch-test/busybox"


def busybox_replica(docker_hosts, docker_engines, command: str, **options) -> Replica:
    """A replica row whose container (on d1, docker-init as PID 1 like every replica) runs a
    busybox shell command instead of the serve loop."""
    replica = Replica.objects.create(owner_kind="endpoint", owner_id="end_exits", runtime="docker")
    container = docker_engines.client("d1").containers.run(
        TEST_IMAGE,
        [BUSYBOX, "sh", "-c", command],
        name=f"launch-{replica.id}",
        labels={"launch.replica": replica.id},
        init=True,
        detach=True,
        network_mode="none",
        **options,
    )
    Replica.objects.filter(pk=replica.pk).update(host=docker_hosts["d1"], handle=container.id)
    replica.refresh_from_db()
    return replica


def test_exit_info_tells_a_signal_from_an_exit_status_and_is_none_while_running_or_gone(
    docker_hosts, docker_engines, runtime
):
    sleeper = busybox_replica(docker_hosts, docker_engines, f"exec {BUSYBOX} sleep 60")
    assert runtime.is_alive(sleeper)
    assert runtime.exit_info(sleeper) is None  # still running
    docker_engines.client("d1").containers.get(sleeper.handle).kill(signal="SIGKILL")
    assert wait_for(lambda: not runtime.is_alive(sleeper))
    assert runtime.exit_info(sleeper) == ExitInfo(exit_code=137, signal=9, oom=False)
    assert runtime.exit_info(sleeper).describe() == "was killed by SIGKILL"

    quitter = busybox_replica(docker_hosts, docker_engines, "exit 3")
    assert wait_for(lambda: runtime.exit_info(quitter) is not None)
    assert runtime.exit_info(quitter) == ExitInfo(exit_code=3, signal=None, oom=False)
    assert runtime.exit_info(quitter).describe() == "exited with status 3"

    runtime.kill(quitter)  # removes the container: nothing left to tell
    assert runtime.exit_info(quitter) is None


def test_exit_info_says_oom_for_a_container_over_its_memory_limit(docker_hosts, docker_engines, runtime):
    info = docker_engines.client("d1").info()
    if not info.get("MemoryLimit"):
        pytest.skip(f"this engine does not enforce memory limits (cgroup driver {info.get('CgroupDriver')!r})")
    # A shell variable holding 256 MiB, in a container allowed 32 MiB and no swap.
    hog = busybox_replica(
        docker_hosts,
        docker_engines,
        f"x=$({BUSYBOX} head -c 268435456 /dev/zero | {BUSYBOX} tr '\\0' a); echo survived",
        mem_limit=32 * MIB,
        memswap_limit=32 * MIB,
    )
    assert wait_for(lambda: runtime.exit_info(hog) is not None, 60)
    exit_info = runtime.exit_info(hog)
    if not exit_info.oom and exit_info.exit_code == 0:
        pytest.skip(f"the memory limit was not enforced here (output: {runtime.logs(hog)!r})")
    assert exit_info.oom is True, (exit_info, runtime.logs(hog))
    assert exit_info.describe() == "was killed for running out of memory"


def test_a_stopped_daemon_makes_its_host_unhealthy_after_three_probes_and_placement_moves_on(
    docker_hosts, docker_engines, runtime, bundle_url
):
    hosts.host_set_cordoned(host=docker_hosts["d1"], cordoned=True)
    on_d2 = start(runtime, bundle_url)
    assert on_d2.host.name == "d2"
    hosts.host_set_cordoned(host=docker_hosts["d1"], cordoned=False)

    docker_engines.stop("d2")
    try:
        for failures in (1, 2):
            d2 = {h.name: h for h in hosts.hosts_probe_all()}["d2"]
            assert (d2.healthy, d2.consecutive_failures) == (True, failures)
            assert d2.last_error
        d2 = {h.name: h for h in hosts.hosts_probe_all()}["d2"]
        assert d2.healthy is False
        assert not runtime.is_alive(on_d2)
        assert list(hosts.replicas_to_move()) == [on_d2]
        _, spec = make_spec(bundle_url)
        assert runtime.place(spec).host_id == docker_hosts["d1"].pk
    finally:
        docker_engines.start("d2")
    d2 = {h.name: h for h in hosts.hosts_probe_all()}["d2"]
    assert (d2.healthy, d2.consecutive_failures, d2.last_error) == (True, 0, "")


def test_a_restarted_controller_finds_running_containers_and_orphans_are_removed(
    docker_hosts, docker_engines, runtime, bundle_url
):
    kept, orphan, starting = (start(runtime, bundle_url) for _ in range(3))
    if SERVE_LOOP.exists():
        assert wait_for(lambda: {kept.id, orphan.id} <= DockerRuntime().running_replica_ids())

    Replica.objects.filter(pk=orphan.pk).update(state=Replica.State.STOPPED)
    # `starting` is live in the database but missing from the caller's (older) snapshot.
    removed = DockerRuntime().reconcile_orphans({kept.id})
    assert removed == [orphan.id]
    remaining = {
        c.labels["launch.replica"]
        for name in docker_engines.names
        for c in docker_engines.client(name).containers.list(all=True, filters={"label": "launch.replica"})
    }
    assert remaining == {kept.id, starting.id}


@needs_serve_loop
def test_a_replica_container_serves_a_task_end_to_end(docker_hosts, runtime, bundle_url, redis_client):
    replica = start(runtime, bundle_url, owner_id="end_e2e")
    keys = protocol.Keys(protocol.endpoint_prefix("end_e2e"))
    task_id = protocol.task_id_for("end_e2e", uuid.uuid4().hex)
    redis_client.hset(
        keys.task(task_id),
        mapping={
            "payload": json.dumps({"args": {"x": 2}}),
            "status": protocol.PENDING,
            "attempts": 0,
            "created_at": time.time(),
        },
    )
    redis_client.lpush(keys.queue, task_id)
    answer = redis_client.blpop([keys.done(task_id)], timeout=60)
    assert answer is not None, runtime.logs(replica)
    record = protocol.read_task(redis_client, keys, task_id)  # no waiter: the result is the record's
    assert record["status"] == protocol.SUCCESS, record
    assert json.loads(record["result"]) == 6
    assert redis_client.hget(keys.task(task_id), "replica").decode() == replica.id


def _probe_bundle_url(port: int) -> str:
    """A bundle whose predict tries, from inside the container, what a hostile bundle would."""

    def load_predict_fn(model):
        def predict(x):
            import os
            import socket

            tried = {}
            for name, path in (("root", "/launch-escape"), ("tmp", "/tmp/ok"), ("home", os.path.expanduser("~/ok"))):
                try:
                    with open(path, "w") as f:
                        f.write("x")
                    tried[name] = "written"
                except OSError as error:
                    tried[name] = type(error).__name__
            try:
                socket.create_connection(("127.0.0.1", model), timeout=2).close()
                tried["host_loopback"] = "connected"
            except OSError as error:
                tried["host_loopback"] = type(error).__name__
            return tried

        return predict

    directory = Path(settings.BUNDLE_STORE_DIR) / f"probe-{uuid.uuid4().hex[:8]}"
    directory.mkdir(parents=True)
    path = directory / "bundle.pkl"
    path.write_bytes(cloudpickle.dumps({"model": port, "load_predict_fn": load_predict_fn}))
    return f"file://{path}"


def _run_task(runtime, replica, owner_id: str, redis_client) -> dict:
    keys = protocol.Keys(protocol.endpoint_prefix(owner_id))
    task_id = protocol.task_id_for(owner_id, uuid.uuid4().hex)
    redis_client.hset(keys.task(task_id), mapping={
        "payload": json.dumps({"args": 1}), "status": protocol.PENDING, "attempts": 0, "created_at": time.time(),
    })
    redis_client.lpush(keys.queue, task_id)
    answer = redis_client.blpop([keys.done(task_id)], timeout=60)
    assert answer is not None, runtime.logs(replica)
    record = protocol.read_task(redis_client, keys, task_id)  # no waiter: the result is the record's
    assert record["status"] == protocol.SUCCESS, record
    return json.loads(record["result"])


@pytest.fixture
def host_loopback_listener():
    """A service on the host's 127.0.0.1 (as the database or an external Redis would be)."""
    import socket

    server = socket.create_server(("127.0.0.1", 0))
    yield server.getsockname()[1]
    server.close()


@needs_serve_loop
def test_a_hostile_bundle_cannot_write_the_root_nor_reach_the_hosts_loopback(
    docker_hosts, docker_engines, runtime, redis_client, host_loopback_listener
):
    replica = start(runtime, _probe_bundle_url(host_loopback_listener), owner_id="end_probe")
    tried = _run_task(runtime, replica, "end_probe", redis_client)
    labels = container_of(docker_engines, replica).attrs["Config"]["Labels"]
    if settings.REDIS_URL.startswith("unix"):  # the embedded Redis: a bridge network is in force
        assert "launch.network_fallback" not in labels
        assert tried == {"root": "OSError", "tmp": "written", "home": "written",
                         "host_loopback": "ConnectionRefusedError"}
    else:
        # Redis on the host's loopback over TCP (CI): the replica needs host networking, and
        # the container says so rather than claiming an isolation it does not have.
        assert "LAUNCH_REDIS_URL at 127.0.0.1" in labels["launch.network_fallback"]
        assert tried == {"root": "OSError", "tmp": "written", "home": "written", "host_loopback": "connected"}


@needs_serve_loop
def test_host_networking_and_a_writable_root_are_what_the_settings_say(
    docker_hosts, runtime, redis_client, host_loopback_listener, settings
):
    # The probe sees the host's loopback and writes its root: the check above can fail.
    settings.DOCKER_REPLICA_NETWORK = "host"
    settings.DOCKER_READ_ONLY_ROOT = False
    replica = start(runtime, _probe_bundle_url(host_loopback_listener), owner_id="end_open")
    tried = _run_task(runtime, replica, "end_open", redis_client)
    assert (tried["root"], tried["host_loopback"]) == ("written", "connected")


def test_a_replica_that_must_reach_the_hosts_loopback_falls_back_to_host_networking_and_says_why(
    docker_hosts, docker_engines, runtime, bundle_url, caplog
):
    replica, spec = make_spec(bundle_url, owner_id="end_loop")
    spec.env["LAUNCH_REDIS_URL"] = "redis://127.0.0.1:6390/0"
    handle = runtime.start(spec, runtime.place(spec))
    replica.refresh_from_db()
    attrs = docker_engines.client(replica.host.name).containers.get(handle).attrs
    assert attrs["HostConfig"]["NetworkMode"] == "host"
    assert "LAUNCH_REDIS_URL at 127.0.0.1" in attrs["Config"]["Labels"]["launch.network_fallback"]
    assert "runs with host networking: the replica must reach LAUNCH_REDIS_URL" in caplog.text


def test_owner_networks_are_removed_once_their_owner_has_no_live_replica(
    docker_hosts, docker_engines, runtime, bundle_url
):
    replica = start(runtime, bundle_url, owner_id="end_gone", redis_url=socket_redis_url())
    client = docker_engines.client(replica.host.name)
    runtime.reconcile_orphans({replica.id})
    assert client.networks.list(names=["launch-net-end_gone"])  # its replica lives
    runtime.kill(replica)
    Replica.objects.filter(pk=replica.pk).update(state=Replica.State.STOPPED)
    runtime.reconcile_orphans(set())
    assert client.networks.list(names=["launch-net-end_gone"]) == []


def test_register_host_command_probes_a_real_engine(docker_engines, db):
    out = io.StringIO()
    call_command(
        "register_host", "engine-one", "--docker-url", docker_engines.url("d1"), "--label", "zone=test", stdout=out
    )
    assert "healthy" in out.getvalue()
    host = hosts.Host.objects.get(name="engine-one")
    assert host.healthy and host.cpus >= 1 and host.memory_bytes > 0 and host.docker_version
    assert host.labels == {"zone": "test"}
    hosts.forget_client(host.pk)


def tripler_bundle():
    def load_predict_fn(model):
        def predict(x):
            return x * model

        return predict

    return {"model": 3, "load_predict_fn": load_predict_fn}


def endpoint_containers(docker_engines, endpoint_id: str) -> dict[str, str]:
    """replica id -> engine name, of the running containers of one endpoint."""
    found = {}
    for name in docker_engines.names:
        try:
            containers = docker_engines.client(name).containers.list(
                filters={"label": f"launch.owner_id={endpoint_id}", "status": "running"}
            )
        except Exception:  # noqa: BLE001 - a daemon the test stopped
            continue
        found.update({c.labels["launch.replica"]: name for c in containers})
    return found


def test_an_endpoint_on_docker_hosts_is_served_replaced_adopted_and_moved(
    live_stack, docker_hosts, docker_engines, owner, settings
):
    """The controller with LAUNCH_RUNTIME=docker: an async endpoint answers from a container;
    a killed container is replaced; a restarted controller keeps the running container (no
    duplicate); draining a host moves the replica; a host whose daemon stops is marked
    unhealthy and the replica moves."""
    from tests.stack import ControllerThread, api_for

    settings.LAUNCH_RUNTIME = "docker"
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(tripler_bundle(), "tripler")
    endpoint_id = api.create_endpoint(
        bundle_id, "on-docker", endpoint_type="async", cpus=0.5, memory="256Mi", min_workers=1, max_workers=1
    )

    def answers(x: int) -> None:
        task = api.post(f"/v1/async-tasks?model_endpoint_id={endpoint_id}", json={"args": x}).json()
        assert api.wait_task(task["task_id"], timeout=60)["result"] == {"result": json.dumps(3 * x)}

    api.wait_endpoint(endpoint_id, "READY", timeout=60, available_workers=1)
    answers(7)
    (first, engine), *others = endpoint_containers(docker_engines, endpoint_id).items()
    assert not others

    # A container that exits is replaced by a new replica.
    docker_engines.client(engine).containers.get(f"launch-{first}").kill()
    assert wait_for(lambda: set(endpoint_containers(docker_engines, endpoint_id)) - {first}, 60)
    api.wait_endpoint(endpoint_id, "READY", timeout=60, available_workers=1)
    assert Replica.objects.get(pk=first).state == Replica.State.FAILED
    answers(8)
    [(second, engine)] = endpoint_containers(docker_engines, endpoint_id).items()

    # A second controller starting up (as after a restart) adopts the running container
    # instead of starting another.
    live_stack_controller = ControllerThread().start()
    try:
        time.sleep(2)
        assert endpoint_containers(docker_engines, endpoint_id) == {second: engine}
    finally:
        live_stack_controller.stop()

    # Draining its host starts a replacement on the other host, then stops the drained one.
    draining = hosts.Host.objects.get(name=engine)
    hosts.host_set_draining(host=draining, draining=True)
    assert wait_for(lambda: list(endpoint_containers(docker_engines, endpoint_id).values()) == [
        next(name for name in docker_engines.names if name != engine)
    ], 60)
    api.wait_endpoint(endpoint_id, "READY", timeout=60, available_workers=1)
    answers(10)
    hosts.host_set_draining(host=draining, draining=False)
    [(third, engine)] = endpoint_containers(docker_engines, endpoint_id).items()
    assert third not in (first, second)

    # The daemon holding the replica stops: after a few failed probes its host is unhealthy
    # and the replica is started on the other host.
    docker_engines.stop(engine)
    try:
        assert wait_for(lambda: any(e != engine for e in endpoint_containers(docker_engines, endpoint_id).values()), 90)
        api.wait_endpoint(endpoint_id, "READY", timeout=60, available_workers=1)
        assert hosts.Host.objects.get(name=engine).healthy is False
        answers(9)
    finally:
        docker_engines.start(engine)

"""A runnable-image bundle served on the docker runtime (two real engines from
tests/docker_harness.py): the user's container (a small HTTP server, tests/images/user_server.py,
run by this machine's Python mounted into the test image) plus our forwarder in its network
namespace, deployed by the controller and reached through the public API."""

from __future__ import annotations

import json
import socket
import time

import pytest
from django.conf import settings as django_settings

from tests.docker_harness import PYTHON, REPO, TEST_IMAGE
from workers.models import Replica

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("docker")]

USER_IMAGE = ("acme/user-server", "1")


@pytest.fixture
def user_image(docker_hosts, docker_engines, settings):
    """The user's image on both hosts (nothing can be pulled here: a local tag of the test
    image). Its network: its own namespace ("none") when Redis is the embedded unix socket,
    which only the forwarder gets mounted; the host's when Redis is reached over TCP (CI)."""
    for name in docker_engines.names:
        docker_engines.client(name).images.get(TEST_IMAGE).tag(*USER_IMAGE)
    settings.DOCKER_RUNNABLE_IMAGE_NETWORK = "none" if django_settings.REDIS_URL.startswith("unix") else "host"
    if settings.DOCKER_RUNNABLE_IMAGE_NETWORK == "host":
        # On the host's network a server of the machine may hold 5005: a port free now.
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            settings.RUNNABLE_IMAGE_PORT = sock.getsockname()[1]
    return ":".join(USER_IMAGE)


def runnable_flavor(**fields) -> dict:
    return {
        "flavor": "runnable_image", "repository": USER_IMAGE[0], "tag": USER_IMAGE[1],
        "command": [PYTHON, str(REPO / "tests" / "images" / "user_server.py"), str(django_settings.RUNNABLE_IMAGE_PORT)],
        "env": {"GREETING": "hello from the image"}, "protocol": "http", "predict_route": "/predict",
        "healthcheck_route": "/readyz", "readiness_initial_delay_seconds": 60, **fields,
    }


def containers_of(docker_engines, endpoint_id: str) -> dict[str, tuple[str, str]]:
    """container name -> (engine, role) of the running containers of one endpoint."""
    found = {}
    for name in docker_engines.names:
        for container in docker_engines.client(name).containers.list(
            filters={"label": f"launch.owner_id={endpoint_id}", "status": "running"}
        ):
            found[container.name] = (name, container.labels.get("launch.role", ""))
    return found


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_a_runnable_image_serves_sync_and_async_through_the_forwarder_and_is_healed(
    live_stack, docker_hosts, docker_engines, user_image, owner, settings
):
    from tests.stack import api_for

    settings.LAUNCH_RUNTIME = "docker"
    api = api_for(live_stack, owner)
    created = api.post("/v2/model-bundles", json={"name": "user-server", "schema_location": "",
                                                  "flavor": runnable_flavor()})
    assert created.status_code == 200, created.text
    endpoint_id = api.create_endpoint(
        created.json()["model_bundle_id"], "byoc", endpoint_type="sync", cpus=0.5, memory="256Mi",
        min_workers=1, max_workers=1, per_worker=2,
    )
    api.wait_endpoint(endpoint_id, "READY", timeout=90, available_workers=1)

    # Two containers, one replica: the user's (with the replica's limits) and the forwarder.
    running = containers_of(docker_engines, endpoint_id)
    assert sorted(role for _, role in running.values()) == ["forwarder", "user"]
    [(user_name, (engine, _))] = [(n, v) for n, v in running.items() if v[1] == "user"]
    user = docker_engines.client(engine).containers.get(user_name)
    assert user.attrs["HostConfig"]["NanoCpus"] == 500_000_000
    assert user.attrs["HostConfig"]["Memory"] == 256 * 1024**2
    forwarder = docker_engines.client(engine).containers.get(f"{user_name}-forwarder")
    assert forwarder.attrs["HostConfig"]["NetworkMode"] == f"container:{user.id}"

    # Sync: the body is the task's args; the answer is the container's JSON.
    redis_socket = django_settings.REDIS_URL.removeprefix("unix://").split("?")[0]
    response = api.post(f"/v1/sync-tasks?model_endpoint_id={endpoint_id}",
                        json={"args": {"x": 21, "probe_path": redis_socket}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "SUCCESS", body
    output = json.loads(body["result"]["result"])
    assert output["doubled"] == 42 and output["greeting"] == "hello from the image"
    # User code sees none of our variables (Redis credentials live in the forwarder only) and,
    # with the embedded Redis, not its socket either.
    assert output["launch_env"] == []
    if django_settings.REDIS_URL.startswith("unix"):
        assert output["probe_exists"] is False

    # Async, and an error status from the container is the task's FAILURE with its body.
    ok = api.post(f"/v1/async-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": 5}}).json()
    bad = api.post(f"/v1/async-tasks?model_endpoint_id={endpoint_id}", json={"args": {"fail": True}}).json()
    assert json.loads(api.wait_task(ok["task_id"], timeout=60)["result"]["result"])["doubled"] == 10
    failed = api.wait_task(bad["task_id"], timeout=60)
    assert failed["status"] == "FAILURE" and "answered 500" in failed["traceback"] and "asked to fail" in failed["traceback"]

    # Killing the user's container takes the replica down (its forwarder goes too) and the
    # controller replaces the pair.
    replica_id = user.labels["launch.replica"]
    user.kill()
    assert wait_for(lambda: Replica.objects.get(pk=replica_id).state == Replica.State.FAILED, 60)
    assert "SIGKILL" in Replica.objects.get(pk=replica_id).reason
    api.wait_endpoint(endpoint_id, "READY", timeout=90, available_workers=1)
    assert wait_for(lambda: len(containers_of(docker_engines, endpoint_id)) == 2, 30)
    assert all(replica_id not in name for name in containers_of(docker_engines, endpoint_id))
    again = api.post(f"/v1/sync-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": 1}}).json()
    assert json.loads(again["result"]["result"])["doubled"] == 2

    # Deleting the endpoint drains the forwarder, then both containers go.
    assert api.delete(f"/v1/model-endpoints/{endpoint_id}").status_code == 200
    assert wait_for(lambda: not containers_of(docker_engines, endpoint_id), 60)


def test_a_container_that_never_gets_healthy_fails_the_endpoint_with_the_reason(
    live_stack, docker_hosts, docker_engines, user_image, owner, settings
):
    from tests.stack import api_for

    settings.LAUNCH_RUNTIME = "docker"
    api = api_for(live_stack, owner)
    flavor = runnable_flavor(healthcheck_route="/never", readiness_initial_delay_seconds=2)
    created = api.post("/v2/model-bundles", json={"name": "slow", "schema_location": "", "flavor": flavor})
    endpoint_id = api.create_endpoint(created.json()["model_bundle_id"], "never-ready", cpus=0.25, memory="256Mi")
    endpoint = api.wait_endpoint(endpoint_id, "UPDATE_FAILED", timeout=90)
    assert "GET /never" in endpoint["status_reason"] and "readiness_initial_delay_seconds" in endpoint["status_reason"]


def test_a_streaming_runnable_image_streams_each_event_of_its_container_as_it_comes(
    live_stack, docker_hosts, docker_engines, user_image, owner, settings
):
    from tests.stack import api_for
    from tests.test_streaming import EndpointResponseStream, open_stream

    settings.LAUNCH_RUNTIME = "docker"
    api = api_for(live_stack, owner)
    flavor = runnable_flavor(flavor="streaming_enhanced_runnable_image", streaming_predict_route="/stream")
    flavor["streaming_command"], flavor["command"] = flavor["command"], []
    created = api.post("/v2/model-bundles", json={"name": "streamer", "schema_location": "", "flavor": flavor})
    assert created.status_code == 200, created.text
    endpoint_id = api.create_endpoint(created.json()["model_bundle_id"], "byoc-stream", endpoint_type="streaming",
                                      cpus=0.25, memory="256Mi", per_worker=2)
    api.wait_endpoint(endpoint_id, "READY", timeout=90, available_workers=1)

    # Each event reaches the client while the container is still producing the rest (the
    # client's reader holds up to 128 bytes, so an event may wait for the next one's bytes).
    response = open_stream(api, endpoint_id, {"count": 3, "pause": 1.0, "prefix": "tok"})
    events = EndpointResponseStream(response)
    first = next(events)
    received_first = time.time()
    assert first["status"] == "SUCCESS"
    assert json.loads(first["result"])["token"] == "tok0"
    rest = list(events)
    tokens = [json.loads(e["result"]) for e in rest[:2]]
    assert [(t["token"], t["index"]) for t in tokens] == [("tok1", 1), ("tok2", 2)]
    assert received_first < tokens[-1]["sent_at"]  # not held back until the stream's end
    # A two-line data field is one item; the comment and the event name are not items.
    assert [e["result"] for e in rest[2:]] == [json.dumps("two\nlines")]

    # An error status from the streaming route is one FAILURE event carrying it.
    failed = list(EndpointResponseStream(open_stream(api, endpoint_id, {"fail": True})))
    assert [e["status"] for e in failed] == ["FAILURE"]
    assert "POST /stream answered 500" in failed[0]["traceback"] and "asked to fail the stream" in failed[0]["traceback"]

    # A sync request to the same endpoint still goes to the predict route.
    def predicted() -> dict:
        answer = api.post(f"/v1/sync-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": 4}}).json()
        return json.loads(answer["result"]["result"])

    assert predicted()["doubled"] == 8 and predicted()["streams_closed_by_reader"] == 0

    # A client that goes away mid-stream: the forwarder closes its connection to the
    # container, whose server learns it from its next write (and stops generating).
    endless = open_stream(api, endpoint_id, {"count": -1, "pause": 0.05})
    endless_events = EndpointResponseStream(endless)
    assert [json.loads(next(endless_events)["result"])["index"] for _ in range(3)] == [0, 1, 2]
    endless.close()
    assert wait_for(lambda: predicted()["streams_closed_by_reader"] == 1, 30)

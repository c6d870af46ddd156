"""The local runtime's GPUs and a bundle's requirements, end to end with real replica
processes: this machine's GPUs come from nvidia-smi (here a fake command printing what
nvidia-smi -L prints, behind the same setting a real machine uses), each GPU replica gets
its own device in CUDA_VISIBLE_DEVICES, and requirements run from a virtualenv installed
from the package index by a control-queue job."""

from __future__ import annotations

import importlib.util
import shutil
import time

import django_rq
import pytest
from rq import SimpleWorker

from tests.stack import api_for
from workers.models import LIVE_STATES, Replica
from workers.runtimes import local_gpus, local_venvs

pytestmark = pytest.mark.django_db(transaction=True)

A10 = {"gpus": 1, "gpu_type": "nvidia-ampere-a10"}
# Not installed in the server's environment (asserted): importing it proves the venv is used.
SMALL_PACKAGE = "six==1.16.0"
BOGUS_REQUIREMENT = "launch-no-such-package-zz==9.9.9"


@pytest.fixture
def two_gpu_machine(settings, tmp_path):
    """This machine, as nvidia-smi would list two A10s."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        '[ "$1" = "-L" ] || exit 2\n'
        "echo 'GPU 0: NVIDIA A10 (UUID: GPU-aaaaaaaa-0000-0000-0000-000000000000)'\n"
        "echo 'GPU 1: NVIDIA A10 (UUID: GPU-bbbbbbbb-1111-1111-1111-111111111111)'\n"
    )
    fake.chmod(0o755)
    settings.LOCAL_NVIDIA_SMI = str(fake)
    local_gpus.forget_local_gpus()
    yield
    local_gpus.forget_local_gpus()


def devices_bundle():
    def load_predict_fn(model):
        def predict(x):
            import os

            return {"cuda_visible_devices": os.environ["CUDA_VISIBLE_DEVICES"]}

        return predict

    return {"model": None, "load_predict_fn": load_predict_fn}


def six_bundle():
    def load_predict_fn(model):
        def predict(x):
            import os

            import six

            return {"six": six.__version__, "file": six.__file__, "cuda_visible_devices": os.environ["CUDA_VISIBLE_DEVICES"]}

        return predict

    return {"model": None, "load_predict_fn": load_predict_fn}


def predict(api, endpoint_id: str) -> dict:
    response = api.post(f"/v1/sync-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": 1}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "SUCCESS", body
    import json

    return json.loads(body["result"]["result"])


def wait_reason(api, endpoint_id: str, words: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        endpoint = api.endpoint(endpoint_id)
        if words in (endpoint.get("status_reason") or ""):
            return endpoint
        assert time.monotonic() < deadline, f"status_reason never said {words!r}: {endpoint}"
        time.sleep(0.1)


def run_control_jobs() -> None:
    """What the controller's `rqworker control` does, here in the test's process."""
    queue = django_rq.get_queue("control")
    SimpleWorker([queue], connection=queue.connection).work(burst=True)


def test_two_gpu_replicas_get_different_devices_and_a_third_waits_for_one(live_stack, owner, two_gpu_machine):
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(devices_bundle(), "devices")
    first = api.create_endpoint(bundle_id, "gpu-first", **A10)
    second = api.create_endpoint(bundle_id, "gpu-second", **A10)
    api.wait_endpoint(first, "READY", available_workers=1, timeout=60)
    api.wait_endpoint(second, "READY", available_workers=1, timeout=60)

    # Asked of the replicas themselves: each sees one device, and not the other's.
    seen = {first: predict(api, first)["cuda_visible_devices"], second: predict(api, second)["cuda_visible_devices"]}
    assert sorted(seen.values()) == ["0", "1"]

    third = api.create_endpoint(bundle_id, "gpu-third", **A10)
    waiting = wait_reason(api, third, "waiting for capacity")
    reason = waiting["status_reason"]
    assert "no 1 free nvidia-ampere-a10 on this machine" in reason
    assert "booked: 0 by replica" in reason and "1 by replica" in reason
    assert waiting["status"] == "UPDATE_IN_PROGRESS"
    assert not Replica.objects.filter(owner_id=third, state__in=LIVE_STATES).exists()

    # The first endpoint goes: its device is free again, and the third gets that one.
    assert api.delete(f"/v1/model-endpoints/{first}").status_code == 200
    api.wait_endpoint(third, "READY", available_workers=1, timeout=60)
    assert predict(api, third)["cuda_visible_devices"] == seen[first]
    assert predict(api, second)["cuda_visible_devices"] == seen[second]
    booked = [ids for ids in Replica.objects.filter(state__in=LIVE_STATES).values_list("gpu_device_ids", flat=True)]
    assert sorted(booked) == [["0"], ["1"]]


def test_gpus_this_machine_cannot_give_are_refused_at_create_naming_the_field(owner, two_gpu_machine, settings):
    from tests.test_endpoints_api import _create, _error_for

    assert "has 2 nvidia-ampere-a10" in _error_for(_create(owner, gpus=3, gpu_type="nvidia-ampere-a10"), "gpus")
    message = _error_for(_create(owner, gpus=1, gpu_type="nvidia-tesla-t4"), "gpu_type")
    assert "this machine's GPUs are nvidia-ampere-a10, not nvidia-tesla-t4" in message
    assert _create(owner, name="fits", **A10).status_code == 200

    settings.LOCAL_NVIDIA_SMI = "/nonexistent/nvidia-smi"
    assert "no GPUs (/nonexistent/nvidia-smi not found)" in _error_for(_create(owner, name="x", **A10), "gpus")


@pytest.fixture
def fresh_venvs(redis_client):
    """The test's venvs are installed by the test (not left over from an earlier run)."""
    for requirements in ((SMALL_PACKAGE,), (BOGUS_REQUIREMENT,)):
        shutil.rmtree(local_venvs.venvs_dir() / local_venvs.venv_key(requirements), ignore_errors=True)
        redis_client.delete(*local_venvs._redis_keys(local_venvs.venv_key(requirements)))
    django_rq.get_queue("control").empty()


def test_requirements_are_installed_into_a_venv_the_replica_runs_from(live_stack, owner, fresh_venvs):
    assert importlib.util.find_spec("six") is None, "the server's environment must not have six for this test"
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(six_bundle(), "needs-six", requirements=[SMALL_PACKAGE])
    endpoint_id = api.create_endpoint(bundle_id, "six")
    # The install runs off the tick, in a control-queue job: the endpoint says it waits for it.
    waiting = wait_reason(api, endpoint_id, f"installing requirements {SMALL_PACKAGE}")
    assert waiting["status"] == "UPDATE_IN_PROGRESS"

    run_control_jobs()
    api.wait_endpoint(endpoint_id, "READY", available_workers=1, timeout=60)
    answer = predict(api, endpoint_id)
    assert answer["six"] == "1.16.0"
    assert answer["file"].startswith(str(local_venvs.venvs_dir() / local_venvs.venv_key((SMALL_PACKAGE,))))
    # A replica that asked for no GPU sees none (it cannot take a device another replica holds).
    assert answer["cuda_visible_devices"] == ""
    assert importlib.util.find_spec("six") is None  # the server's own environment is unchanged


def test_requirements_that_do_not_install_fail_the_endpoint_with_pips_message(live_stack, owner, fresh_venvs):
    api = api_for(live_stack, owner)
    bundle_id = api.upload_bundle(six_bundle(), "bogus", requirements=[BOGUS_REQUIREMENT])
    endpoint_id = api.create_endpoint(bundle_id, "bogus")
    wait_reason(api, endpoint_id, f"installing requirements {BOGUS_REQUIREMENT}")

    run_control_jobs()
    failed = api.wait_endpoint(endpoint_id, "UPDATE_FAILED", timeout=30)
    assert f"installing requirements ['{BOGUS_REQUIREMENT}'] failed" in failed["status_reason"]
    assert f"No matching distribution found for {BOGUS_REQUIREMENT}" in failed["status_reason"]
    # Reported once, not retried every tick; no half-installed venv is left under its name.
    time.sleep(1.0)
    assert len(django_rq.get_queue("control").get_jobs()) == 0 or all(
        not job.func_name.endswith("prepare_venv_job") for job in django_rq.get_queue("control").get_jobs()
    )
    assert not (local_venvs.venvs_dir() / local_venvs.venv_key((BOGUS_REQUIREMENT,))).exists()
    assert Replica.objects.filter(owner_id=endpoint_id, state__in=LIVE_STATES).count() == 0


def test_placements_racing_for_two_gpus_never_book_one_device_twice(two_gpu_machine):
    import threading

    from django.db import connection

    from workers.placement import place_local_replica
    from workers.runtimes.base import PlacementError, ReplicaSpec

    inventory = local_gpus.local_gpus()
    replicas = [Replica.objects.create(owner_kind="endpoint", owner_id=f"end_race{i}", runtime="local")
                for i in range(6)]
    barrier = threading.Barrier(len(replicas))
    outcomes: dict[str, object] = {}

    def place(replica):
        spec = ReplicaSpec(replica_id=replica.id, owner_kind="endpoint", owner_id=replica.owner_id, team="t",
                           env={}, cpus=0.1, memory_bytes=0, **A10)
        barrier.wait()
        try:
            outcomes[replica.id] = place_local_replica(spec, inventory).gpu_device_ids
        except Exception as error:  # noqa: BLE001 - a deadlock or any other error is reported below
            outcomes[replica.id] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=place, args=(replica,)) for replica in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    others = [repr(o) for o in outcomes.values() if not isinstance(o, (tuple, PlacementError))]
    assert len(outcomes) == len(replicas) and not others, others
    placed = [ids for ids in outcomes.values() if isinstance(ids, tuple)]
    assert sorted(placed) == [("0",), ("1",)]
    refused = [str(error) for error in outcomes.values() if isinstance(error, PlacementError)]
    assert len(refused) == 4 and all("booked: 0 by replica" in reason for reason in refused)
    booked = Replica.objects.exclude(gpu_device_ids=[]).values_list("gpu_device_ids", flat=True)
    assert sorted(booked) == [["0"], ["1"]]


@pytest.mark.parametrize(
    ("requirement", "words"),
    [
        ("-r /etc/shadow", "is a pip option"),
        ("--index-url=http://127.0.0.1:9/simple", "is a pip option"),
        ("six\n-r /etc/shadow", "is not a requirement"),
        ("./wheels/model-0.1-py3-none-any.whl", "is not a requirement"),
        ("six @ file:///etc/shadow", "only http(s) URLs are taken, not file:"),
    ],
)
def test_requirements_pip_would_take_as_options_or_paths_are_422_naming_requirements(owner, requirement, words):
    from bundles.models import ModelBundle
    from tests.test_bundles_api import uploaded_location, v1_body

    body = v1_body(uploaded_location(owner), requirements=["numpy==2.1.0", requirement])
    response = owner.client.post("/v1/model-bundles", body, format="json")
    assert response.status_code == 422, response.content
    [error] = response.json()["detail"]
    assert error["loc"][-1] == "requirements" and "item 1" in error["msg"] and words in error["msg"]
    assert not ModelBundle.objects.exists()


def test_an_install_runs_no_setup_py_of_an_sdist(settings, tmp_path, redis_client):
    """A requirement with only a source distribution is refused by pip (wheels only) before any
    of its code runs in the controller."""
    index = tmp_path / "index" / "evil-sdist"
    index.mkdir(parents=True)
    marker = tmp_path / "setup-py-ran"
    sdist = tmp_path / "evil_sdist-1.0.tar.gz"
    import io
    import tarfile

    setup = f"open({str(marker)!r}, 'w').write('ran')\nfrom setuptools import setup\nsetup(name='evil-sdist', version='1.0')\n"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in (("evil_sdist-1.0/setup.py", setup),
                           ("evil_sdist-1.0/PKG-INFO", "Metadata-Version: 2.1\nName: evil-sdist\nVersion: 1.0\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (index / "index.html").write_text(f'<a href="file://{sdist}">evil_sdist-1.0.tar.gz</a>')
    settings.LAUNCH_HOME = tmp_path / "home"
    import os

    os.environ["PIP_INDEX_URL"] = f"file://{tmp_path / 'index'}"
    try:
        with pytest.raises(local_venvs.RequirementsInstallFailed) as failed:
            local_venvs.prepare_venv(("evil-sdist==1.0",))
    finally:
        del os.environ["PIP_INDEX_URL"]
    assert "evil-sdist" in str(failed.value)
    assert not marker.exists()
    assert not (local_venvs.venvs_dir() / local_venvs.venv_key(("evil-sdist==1.0",))).exists()

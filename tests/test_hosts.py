"""Host registry: the register_host command and the admin-only hosts API (no engine needed:
a host that does not answer is registered all the same and stays unhealthy)."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from workers.hosts import gpu_type_from_name, parse_nvidia_smi
from workers.models import Host, Replica

NOWHERE = "unix:///tmp/launch-no-such-docker.sock"


@pytest.fixture
def staff(owner):
    owner.user.is_staff = True
    owner.user.save()
    return owner


def test_register_host_command_records_declared_gpus_and_labels(db):
    out = io.StringIO()
    call_command(
        "register_host", "gpu-box", "--docker-url", NOWHERE, "--gpus", "2", "--gpu-type", "nvidia-ampere-a10",
        "--label", "zone=eu", "--label", "rack=4", "--gpus-via-env", stdout=out,
    )  # fmt: skip
    host = Host.objects.get(name="gpu-box")
    assert host.gpu_device_ids == ["0", "1"] and host.gpu_type == "nvidia-ampere-a10"
    assert host.labels == {"zone": "eu", "rack": "4"}
    assert host.gpus_via_env_only
    assert "does not answer yet" in out.getvalue()
    assert host.healthy is False and host.last_error


def test_register_host_command_takes_gpu_ids_and_reads_tls_files(db, tmp_path):
    for name in ("ca", "cert", "key"):
        (tmp_path / f"{name}.pem").write_text(f"-----BEGIN {name}-----\n")
    call_command(
        "register_host", "remote", "--docker-url", "tcp://127.0.0.1:9", "--gpu-ids", "GPU-x,GPU-y",
        "--gpu-type", "nvidia-tesla-t4", "--tls-ca", str(tmp_path / "ca.pem"), "--tls-cert", str(tmp_path / "cert.pem"),
        "--tls-key", str(tmp_path / "key.pem"), stdout=io.StringIO(),
    )  # fmt: skip
    host = Host.objects.get(name="remote")
    assert host.gpu_device_ids == ["GPU-x", "GPU-y"]
    assert host.tls_client_key == "-----BEGIN key-----\n"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--docker-url", "http://x"], "docker_url: must start with unix://, tcp:// or ssh://"),
        (["--docker-url", "tcp://127.0.0.1:9"], "docker_url: tcp:// needs TLS client certificates"),
        (["--docker-url", NOWHERE, "--gpus", "1"], "gpu_type: is required"),
    ],
)
def test_register_host_command_names_the_bad_field(db, arguments, message):
    with pytest.raises(CommandError, match=message):
        call_command("register_host", "bad", *arguments, stdout=io.StringIO())
    assert not Host.objects.exists()


def test_register_host_twice_needs_update(db):
    call_command("register_host", "box", "--docker-url", NOWHERE, stdout=io.StringIO())
    with pytest.raises(CommandError, match="already registered"):
        call_command("register_host", "box", "--docker-url", NOWHERE, stdout=io.StringIO())
    call_command(
        "register_host",
        "box",
        "--docker-url",
        NOWHERE,
        "--gpus",
        "1",
        "--gpu-type",
        "x",
        "--update",
        stdout=io.StringIO(),
    )
    assert Host.objects.get(name="box").gpu_device_ids == ["0"]


def test_hosts_api_is_for_staff_only(owner, outsider):
    Host.objects.create(name="box", docker_url=NOWHERE)
    for persona in (owner, outsider):
        assert persona.client.get("/v1/hosts").status_code == 403
        assert persona.client.post("/v1/hosts", {"name": "x", "docker_url": NOWHERE}, format="json").status_code == 403
    assert Host.objects.count() == 1


def test_staff_registers_lists_changes_and_deletes_a_host(staff):
    response = staff.client.post(
        "/v1/hosts",
        {"name": "gpu-1", "docker_url": NOWHERE, "gpus": 2, "gpu_type": "nvidia-ampere-a10", "labels": {"zone": "eu"}},
        format="json",
    )
    assert response.status_code == 201, response.json()
    host = response.json()
    assert host["gpus"] == 2 and host["gpu_device_ids"] == ["0", "1"] and host["labels"] == {"zone": "eu"}
    assert host["healthy"] is False and host["has_tls"] is False
    assert "tls_client_key" not in host

    listed = staff.client.get("/v1/hosts").json()
    assert [h["name"] for h in listed] == ["gpu-1"]

    response = staff.client.patch(f"/v1/hosts/{host['id']}", {"cordoned": True}, format="json")
    assert response.status_code == 200 and response.json()["cordoned"] is True
    assert staff.client.get(f"/v1/hosts/{host['id']}").json()["cordoned"] is True

    assert staff.client.delete(f"/v1/hosts/{host['id']}").status_code == 204
    assert staff.client.get(f"/v1/hosts/{host['id']}").status_code == 404


def test_a_bad_docker_url_is_a_422_naming_the_field(staff):
    response = staff.client.post("/v1/hosts", {"name": "x", "docker_url": "ftp://box"}, format="json")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "docker_url"]
    assert response.json()["detail"][0]["msg"].startswith("docker_url:")
    response = staff.client.post(
        "/v1/hosts", {"name": "x", "docker_url": "tcp://box:2376", "tls_ca_cert": "pem"}, format="json"
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "tls_client_cert"]


def test_a_host_with_live_replicas_cannot_be_deleted(staff):
    host = Host.objects.create(name="busy", docker_url=NOWHERE)
    Replica.objects.create(owner_kind="endpoint", owner_id="end_x", runtime="docker", host=host)
    response = staff.client.delete(f"/v1/hosts/{host.pk}")
    assert response.status_code == 409
    assert "drain" in response.json()["detail"]


def test_probed_gpu_inventory_is_read_from_nvidia_smi():
    output = "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-1b2c)\nGPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-3d4e)\n"
    assert parse_nvidia_smi(output) == ("nvidia-ampere-a100", ["0", "1"])
    assert gpu_type_from_name("NVIDIA A10") == "nvidia-ampere-a10"
    assert gpu_type_from_name("Tesla T4") == "nvidia-tesla-t4"
    assert gpu_type_from_name("NVIDIA GeForce RTX 4090") == "nvidia-geforce-rtx-4090"
    assert gpu_type_from_name("NVIDIA A10G") == "nvidia-ampere-a10"
    assert gpu_type_from_name("NVIDIA H200") == "nvidia-hopper-h200"
    assert gpu_type_from_name("NVIDIA H100 80GB HBM3") == "nvidia-hopper-h100"
    assert gpu_type_from_name("NVIDIA L4") == "nvidia-ada-l4"
    assert gpu_type_from_name("NVIDIA L40S") == "nvidia-ada-l40s"
    assert gpu_type_from_name("NVIDIA L40") == "nvidia-l40"  # no L4: not a type we take
    assert gpu_type_from_name("NVIDIA GB200") == "nvidia-gb200"  # no B200


def test_an_h200_machine_takes_h200_endpoints(owner, settings):
    """A GPU type beyond the contract's list that teams own: accepted and read back."""
    from tests.factories import make_bundle

    settings.LAUNCH_RUNTIME = "docker"  # hosts of any GPU type may register
    body = {
        "name": "on-h200", "model_bundle_id": make_bundle(team=owner.team).id, "endpoint_type": "async", "metadata": {}, "cpus": 1,
        "gpus": 1, "gpu_type": "nvidia-hopper-h200", "memory": "1Gi", "storage": None, "min_workers": 0,
        "max_workers": 1, "per_worker": 1, "labels": {},
    }
    response = owner.client.post("/v1/model-endpoints", body, format="json")
    assert response.status_code == 200, response.content
    endpoint_id = response.json()["endpoint_creation_task_id"]
    assert owner.client.get(f"/v1/model-endpoints/{endpoint_id}").json()["resource_state"]["gpu_type"] == (
        "nvidia-hopper-h200"
    )


def test_admin_lists_hosts_with_health_and_cordons_them(db, client, django_user_model):
    admin_user = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin_user)
    host = Host.objects.create(name="box-1", docker_url=NOWHERE, last_error="ConnectionError: refused")
    page = client.get("/admin/workers/host/")
    assert page.status_code == 200
    assert b"box-1" in page.content and b"ConnectionError: refused" in page.content

    response = client.post("/admin/workers/host/", {"action": "cordon", "_selected_action": [host.pk]})
    assert response.status_code == 302
    host.refresh_from_db()
    assert host.cordoned
    client.post("/admin/workers/host/", {"action": "drain", "_selected_action": [host.pk]})
    host.refresh_from_db()
    assert host.draining

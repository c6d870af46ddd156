"""Two throwaway Docker engines (d1, d2) acting as two hosts, for the docker tests.

Started once per test session by the worker that owns the `docker` xdist group
(scripts/docker-engine.sh) and stopped at its end. Nothing can be pulled here, so the test
worker image is `docker import`ed from a tiny root filesystem, and replicas run this
machine's Python, virtualenv and checkout through read-only bind mounts
(LAUNCH_DOCKER_EXTRA_MOUNTS). Without an engine the tests skip, unless
LAUNCH_REQUIRE_DOCKER=1 (CI), where they fail.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "docker-engine.sh"
TEST_IMAGE = "launch-test-worker:latest"
ENGINE_NAMES = ("d1", "d2")
# In the test image only: what the fake interpreter records of build steps (RUN ... pip).
PIP_RECORD = "/launch-test/pip-installed.txt"
PYTHON = sys.executable  # the virtualenv's interpreter, mounted into containers

pytestmark_docker = [pytest.mark.docker, pytest.mark.xdist_group("docker")]


def docker_unavailable(reason: str) -> None:
    if os.environ.get("LAUNCH_REQUIRE_DOCKER") == "1":
        pytest.fail(f"LAUNCH_REQUIRE_DOCKER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class Engines:
    directory: Path
    names: tuple[str, ...] = ENGINE_NAMES

    def url(self, name: str) -> str:
        return f"unix://{self.directory}/{name}.sock"

    def client(self, name: str) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url(name), timeout=30)

    def start(self, *names: str) -> None:
        subprocess.run(
            ["bash", str(SCRIPT), "start", str(self.directory), *(names or self.names)],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def stop(self, *names: str) -> None:
        subprocess.run(
            ["bash", str(SCRIPT), "stop", str(self.directory), *(names or self.names)],
            check=False,
            capture_output=True,
            timeout=120,
        )

    def remove_all_containers(self) -> None:
        for name in self.names:
            try:
                client = self.client(name)
                for container in client.containers.list(all=True):
                    container.remove(force=True)
                client.close()
            except docker.errors.DockerException:
                pass  # a daemon a test stopped (it restarts it)


def replica_mounts() -> list[tuple[str, str, str]]:
    """What a container needs to run this machine's Python: /usr (and /lib* where they are
    real directories), the interpreter's installation, the virtualenv and the checkout."""
    paths = ["/usr"]
    paths += [p for p in ("/lib", "/lib32", "/lib64") if os.path.isdir(p) and not os.path.islink(p)]
    paths += [sys.base_prefix, sys.prefix, str(REPO)]
    unique: list[str] = []
    for path in sorted(paths, key=len):  # parents first: a nested path is then covered
        if not any(path == p or path.startswith(p.rstrip("/") + "/") for p in unique):
            unique.append(path)
    return [(p, p, "ro") for p in unique]


def _rootfs_tar() -> bytes:
    """A root filesystem with almost nothing in it: top-level symlinks as on this machine
    (/lib -> usr/lib on merged-/usr systems), /etc/passwd, /tmp, and for build steps a
    static busybox plus a fake interpreter at the virtualenv's path (hidden by the mount at
    run time) that records `python -m pip install ...` instead of installing."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        added: set[str] = set()

        def add_dir(name: str, mode: int = 0o755) -> None:
            # Docker refuses a tar with a path twice (the checkout may live under /tmp).
            if name in added:
                return
            added.add(name)
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        # A real /sbin: Docker mounts its init (docker-init) at /sbin/docker-init, which must
        # not resolve into /usr, where the host's /usr is mounted over it.
        for name in ("etc", "proc", "sys", "dev", "root", "usr", "sbin", "launch-test"):
            add_dir(name)
        add_dir("tmp", 0o1777)
        for name in ("bin", "lib", "lib32", "lib64"):
            if os.path.islink(f"/{name}"):
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(f"/{name}")
                tar.addfile(info)
        add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        if os.path.exists("/bin/busybox"):
            add_file("launch-test/busybox", Path("/bin/busybox").read_bytes(), 0o755)
            parts = Path(PYTHON).parts[1:]
            for depth in range(1, len(parts)):
                add_dir("/".join(parts[:depth]))
            fake = f'#!/launch-test/busybox sh\necho "$@" >> {PIP_RECORD}\n'.encode()
            add_file("/".join(parts), fake, 0o755)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def docker_engines():
    """Start d1 and d2 (once per session) with the test image on both; stop them after."""
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        docker_unavailable("dockerd is not installed (bash scripts/docker-engine.sh install)")
    if os.geteuid() != 0:
        docker_unavailable("starting dockerd needs root")
    # A short path: unix socket paths are limited to 108 bytes.
    engines = Engines(Path(tempfile.mkdtemp(prefix="ldk-", dir="/tmp")))
    try:
        try:
            engines.start()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            docker_unavailable(f"dockerd did not start: {(getattr(error, 'stderr', '') or '')[-800:]}")
        rootfs = _rootfs_tar()
        for name in engines.names:
            client = engines.client(name)
            client.api.import_image_from_data(rootfs, repository=TEST_IMAGE.split(":")[0], tag="latest")
            client.close()
        yield engines
    finally:
        engines.stop()
        shutil.rmtree(engines.directory, ignore_errors=True)


@pytest.fixture
def docker_hosts(docker_engines, db, settings):
    """d1 and d2 registered and probed as hosts; replicas run the test image."""
    from workers import hosts

    # What an earlier test's controller started while it was being torn down would otherwise
    # live on (a runnable image's server holding port 5005 on the host's network, say).
    docker_engines.remove_all_containers()
    settings.DOCKER_WORKER_IMAGE = TEST_IMAGE
    settings.DOCKER_WORKER_IMAGE_GPU = TEST_IMAGE
    settings.DOCKER_PYTHON = PYTHON
    settings.DOCKER_WORKDIR = str(REPO)
    settings.DOCKER_EXTRA_MOUNTS = replica_mounts()
    registered = {}
    for name in docker_engines.names:
        host = hosts.host_register(name=name, docker_url=docker_engines.url(name))
        registered[name] = hosts.host_probe(host)
        assert registered[name].healthy, registered[name].last_error
    yield registered
    for host in registered.values():
        hosts.forget_client(host.pk)
    docker_engines.remove_all_containers()

"""A bundle's requirements on the local runtime: a virtualenv per requirements hash, cached
under LAUNCH_HOME/venvs, which the replica's serve loop runs from.

pip installs wheels only (--only-binary=:all:): an sdist's setup.py would be a bundle
author's code running in the controller. A requirement with no wheel fails with pip's message.

The venv is made with `python -m venv --without-pip` from the server's interpreter, plus a
.pth file naming the server's own site-packages: the replica keeps what the serve loop needs
(cloudpickle, redis, ...) and pip, while the venv's site-packages come first on sys.path, so a
requirement pinned to another version than ours wins inside the replica (pip installs it
into the venv and leaves ours alone: "outside environment"). The server's environment is
never changed.

Installing takes seconds to minutes, so it runs in an RQ job on the control queue
(local_jobs.prepare_venv_job), never in start(), which runs in the controller's tick (the
docker runtime builds images the same way): start() raises StartDeferred while it runs, and
RequirementsInstallFailed, with pip's output, while a failure is remembered
(VENV_FAILURE_TTL_SECONDS) — the endpoint's generation fails with that message.

A venv is built in a temporary directory and renamed into place when pip succeeded, so a
directory under its final name is always complete. Files are world-readable (umask 022) so
that replicas under uids of their own (local.replica_isolation) can run from them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from django.conf import settings

from launch_site import limits
from launch_site.errors import FieldError
from launch_site.redis_client import get_redis
from workers.runtimes.base import BundleStartFailed, StartDeferred

VENV_FAILURE_TTL_SECONDS = 300
PIP_OUTPUT_KEPT_CHARS = 3000


class RequirementsInstallFailed(BundleStartFailed):
    """pip could not install the bundle's requirements; the message has pip's output."""


def venvs_dir() -> Path:
    return Path(settings.LAUNCH_HOME) / "venvs"


def venv_key(requirements: tuple[str, ...]) -> str:
    """The cache key: the requirements (order does not matter) and the interpreter and
    site-packages the venv layers on (another Python or server env -> another venv)."""
    material = json.dumps([sorted(requirements), os.path.realpath(sys.executable), _server_site_packages()])
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def venv_python(requirements: tuple[str, ...]) -> Path:
    return venvs_dir() / venv_key(requirements) / "bin" / "python"


def _server_site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def _redis_keys(key: str) -> tuple[str, str]:
    return f"launch:venv:pending:{key}", f"launch:venv:failed:{key}"


def describe(requirements: tuple[str, ...]) -> str:
    return f"installing requirements {', '.join(requirements)} into virtualenv {venv_key(requirements)}"


def venv_ready(requirements: tuple[str, ...]) -> Path:
    """The Python of the requirements' venv when it is installed. Otherwise raise
    RequirementsInstallFailed if installing failed recently, or ask for it to be installed
    and raise StartDeferred."""
    python = venv_python(requirements)
    if python.exists():
        return python
    pending_key, failed_key = _redis_keys(venv_key(requirements))
    failure = get_redis().get(failed_key)
    if failure is not None:
        raise RequirementsInstallFailed(failure.decode(errors="replace"))
    request_venv(requirements)
    raise StartDeferred(describe(requirements))


def request_venv(requirements: tuple[str, ...]) -> bool:
    """Enqueue the install unless one is pending (one job per venv at a time: the pending
    key is set only if absent and outlives the longest the job may run); returns whether
    it enqueued one."""
    from workers.runtimes import local_jobs

    key = venv_key(requirements)
    pending_key, _ = _redis_keys(key)
    timeout = int(settings.LOCAL_VENV_INSTALL_TIMEOUT_SECONDS)
    redis = get_redis()
    if not redis.set(pending_key, key, nx=True, ex=timeout + 60):
        return False
    try:
        local_jobs.enqueue_prepare_venv(requirements=list(requirements), job_id=f"launch-venv-{key}", timeout=timeout)
    except Exception:
        redis.delete(pending_key)
        raise
    return True


def prepare_venv(requirements: tuple[str, ...]) -> Path:
    """Install the requirements into their venv unless it is there (the RQ job's body). A
    failure is remembered for VENV_FAILURE_TTL_SECONDS, where venv_ready finds it."""
    key = venv_key(requirements)
    pending_key, failed_key = _redis_keys(key)
    redis = get_redis()
    try:
        final = venvs_dir() / key
        if not (final / "bin" / "python").exists():
            _install(requirements, final)
        redis.delete(failed_key)
        return final / "bin" / "python"
    except Exception as error:
        message = str(error) if isinstance(error, RequirementsInstallFailed) else (
            f"{describe(requirements)} failed: {type(error).__name__}: {error}"
        )
        redis.set(failed_key, message[-(PIP_OUTPUT_KEPT_CHARS + 500):], ex=VENV_FAILURE_TTL_SECONDS)
        raise
    finally:
        redis.delete(pending_key)


def _install(requirements: tuple[str, ...], final: Path) -> None:
    # Checked at bundle create; checked again because they become lines of a file pip reads.
    try:
        limits.check_requirements(list(requirements))
    except FieldError as error:
        raise RequirementsInstallFailed(f"{describe(requirements)} refused: {error}") from None
    root = venvs_dir()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o711)  # replicas under other uids pass through to their venv, list nothing
    building = root / f"{final.name}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    timeout = settings.LOCAL_VENV_INSTALL_TIMEOUT_SECONDS
    try:
        made = _run([sys.executable, "-m", "venv", "--without-pip", str(building)], timeout=timeout)
        if made.returncode != 0:
            raise RuntimeError(f"python -m venv failed: {(made.stdout + made.stderr).strip()[-1000:]}")
        site_packages = Path(
            sysconfig.get_paths(vars={"base": str(building), "platbase": str(building)})["purelib"]
        )
        # Written by this process (umask 077): opened to the replicas' uids explicitly.
        for path, text in (
            (site_packages / "launch-server-packages.pth", _server_site_packages() + "\n"),
            (building / "launch-requirements.txt", "\n".join(requirements) + "\n"),
        ):
            path.write_text(text)
            path.chmod(0o644)
        # Wheels only: building an sdist runs its setup.py, a bundle author's code, here in the
        # controller as the server's user; user code runs only inside replicas.
        result = _run(
            [str(building / "bin" / "python"), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
             "--no-warn-script-location", "--only-binary=:all:", "-r", str(building / "launch-requirements.txt")],
            timeout=timeout,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise RequirementsInstallFailed(
                f"installing requirements {list(requirements)} failed (pip exited with status "
                f"{result.returncode}):\n{output[-PIP_OUTPUT_KEPT_CHARS:]}"
            )
        building.chmod(0o755)
        try:
            building.rename(final)
        except OSError:
            if not (final / "bin" / "python").exists():
                raise
            # Another install of the same requirements finished first: theirs is as good.
    finally:
        shutil.rmtree(building, ignore_errors=True)


def _run(argv: list[str], *, timeout: float) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PIP_NO_INPUT": "1",
        **{name: value for name, value in os.environ.items() if name.startswith("PIP_") or name.endswith("_PROXY")
           or name.endswith("_proxy")},
    }
    try:
        # umask 022: the server's 077 would leave the venv unreadable to replicas of other uids.
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL, umask=0o022)
    except subprocess.TimeoutExpired:
        raise RequirementsInstallFailed(
            f"installing requirements timed out after {timeout:g} s ({' '.join(argv[-2:])})"
        ) from None

"""A virtualenv with the public scale-launch client, apart from the server's venv.

scale-launch 0.3.3 needs cloudpickle < 3 while the server (and its replicas) run cloudpickle
3, so the client lives in its own venv, built once under `.test-cache/client-venv/` (ignored
by git) and reused: the directory name carries a hash of the pins and the Python version, so
changing a pin builds a fresh one. It is built with this interpreter's Python (same minor
version as the replicas: cloudpickle ties pickled functions to it). A lock keeps parallel test
workers from building it twice, and a marker file written last means an interrupted build is
never reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CLIENT_VERSION = "0.3.3"
# Everything the client imports, pinned. setuptools: the client imports pkg_resources.
PINS = (
    f"scale-launch=={CLIENT_VERSION}",
    "cloudpickle==2.2.1",
    "dataclasses-json==0.5.14",
    "marshmallow==3.26.2",
    "typing-inspect==0.9.0",
    "deprecation==2.1.0",
    "PyYAML==6.0.3",
    "requests==2.34.2",
    "rich==12.6.0",
    "setuptools==75.8.0",
)
REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_ROOT = REPO_ROOT / ".test-cache" / "client-venv"
BUILD_TIMEOUT_SECONDS = 600


class ClientVenvError(RuntimeError):
    pass


def venv_dir() -> Path:
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    digest = hashlib.sha256("\n".join(PINS).encode()).hexdigest()[:10]
    return CACHE_ROOT / f"scale-launch-{CLIENT_VERSION}-{python}-{digest}"


def _python_in(directory: Path) -> Path:
    return directory / "bin" / "python"


@contextlib.contextmanager
def _build_lock():
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_SECONDS)
    if result.returncode != 0:
        raise ClientVenvError(f"{what} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def client_python() -> Path:
    """The interpreter of the client venv, built on first use."""
    target = venv_dir()
    if (target / ".complete").exists():
        return _python_in(target)
    with _build_lock():
        if (target / ".complete").exists():
            return _python_in(target)
        # An earlier build that was interrupted left no marker: start over.
        shutil.rmtree(target, ignore_errors=True)
        try:
            _run([sys.executable, "-m", "venv", str(target)], "creating the client venv")
            pip = [str(_python_in(target)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            _run([*pip, *PINS], f"pip install {' '.join(PINS)}")
            check = "import launch, cloudpickle; assert cloudpickle.__version__ < '3'"
            _run([str(_python_in(target)), "-c", check], "importing the client")
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        (target / ".complete").write_text("\n".join(PINS) + "\n")
    return _python_in(target)


def run_client_script(script: str, *, env: dict[str, str], timeout: float = 300) -> dict:
    """Run `script` with the client venv's Python; it prints one JSON object as its last line."""
    python = client_python()
    with tempfile.TemporaryDirectory(prefix="launch-client-") as workdir:
        path = Path(workdir) / "flow.py"
        path.write_text(script)
        result = subprocess.run(
            [str(python), str(path)],
            cwd=workdir,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": workdir, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise AssertionError(
            f"client script failed ({result.returncode}):\nstdout:\n{result.stdout[-5000:]}\n"
            f"stderr:\n{result.stderr[-8000:]}"
        )
    return json.loads(lines[-1])

"""`manage.py launch up` as a new user meets it: a URL, a login and a key; Ctrl-C stops all."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(home: Path, port: int) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")}
    env.update(LAUNCH_HOME=str(home), PORT=str(port))
    process = subprocess.Popen(
        [sys.executable, "manage.py", "launch", "up"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    output = []
    deadline = time.monotonic() + 60
    for line in process.stdout:
        output.append(line)
        if "Press Ctrl-C" in line or time.monotonic() > deadline:
            break
    return process, "".join(output)


def _stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGINT)
    rest = process.communicate(timeout=60)[0]
    return rest


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    parent_of = {int(p): int(pp) for p, pp in (line.split() for line in out.splitlines())}
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parent_of.items() if parent in frontier} - found
        found |= frontier
    return found


def _running(pid: int) -> bool:
    try:
        return ")" in (stat := Path(f"/proc/{pid}/stat").read_text()) and stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_launch_up_prints_url_login_and_a_working_key_then_stops_cleanly(tmp_path):
    port = _free_port()
    process, output = _start(tmp_path / "home", port)
    try:
        assert f"http://127.0.0.1:{port}/" in output, output
        login = re.search(r"Login:\s+(\S+) / (\S+)", output)
        key = re.search(r"API key:\s+(lk_\S+)", output)
        assert login and key, output
        api = requests.Session()
        api.auth = (key.group(1), "")
        assert api.get(f"http://127.0.0.1:{port}/v1/model-endpoints", timeout=10).json() == {"model_endpoints": []}
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10).json()["status"] == "ok"
        children = _descendants(process.pid)
        assert len(children) >= 3, children  # redis, web (granian and its workers), controller
    finally:
        rest = _stop(process)
    assert process.returncode == 0, rest
    assert "Launch stopped." in rest
    time.sleep(0.5)
    assert [pid for pid in children if _running(pid)] == []

    # A second start reuses the data: same login, the first key still works, no new key.
    process, output = _start(tmp_path / "home", port)
    try:
        assert f"Login:     {login.group(1)} / {login.group(2)}" in output
        assert "lk_" not in output
        response = requests.get(f"http://127.0.0.1:{port}/v1/model-endpoints", auth=(key.group(1), ""), timeout=10)
        assert response.status_code == 200
    finally:
        _stop(process)


@pytest.mark.parametrize("value", ["yes", "2x"])
def test_bad_setting_fails_loudly(tmp_path, value):
    env = dict(os.environ, LAUNCH_HOME=str(tmp_path), DEBUG=value if value == "yes" else "0", PORT=value)
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert ("DEBUG" if value == "yes" else "PORT") in result.stderr

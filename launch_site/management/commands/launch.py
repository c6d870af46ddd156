"""`manage.py launch up`: the embedded stack (launch_site/supervisor.py says what it does).

`up` reads the settings (so a bad setting fails here, loudly) and exec()s the supervisor in
this process's place, which is then no Django process. `prepare` and `stop-replicas` are the
supervisor's steps that need Django; it runs them as children.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from accounts.services import api_key_create, team_get_or_create_for_user
from launch_site.env import default_web_workers

ADMIN_USERNAME = "admin"


class Command(BaseCommand):
    help = "Run the embedded stack: `launch up`. (`prepare` and `stop-replicas`: steps of its supervisor.)"

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["up", "prepare", "stop-replicas"])
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        # No thread count: waits hold no thread (ASGI).
        parser.add_argument("--web-workers", type=_positive_int, default=default_web_workers(),
                            help="web server processes (default: half the CPUs, at least 1)")
        parser.add_argument("--url", help="prepare: where the supervisor serves the dashboard")

    def handle(self, *args, action: str, host: str, web_workers: int, url: str | None, **options):
        if action == "up":
            _exec_supervisor(host, web_workers)
        elif action == "prepare":
            if not url:
                raise CommandError("`launch prepare` needs --url")
            self._prepare(url)
        else:
            from workers.services import local_replicas_stop_all

            local_replicas_stop_all()

    def _prepare(self, url: str) -> None:
        """Migrate, collect the static files, make the first credentials, and write what the
        supervisor prints once the web server answers."""
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        login, password, raw_key = _first_start_credentials()
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
        self.stdout.write("\n".join(lines))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _exec_supervisor(host: str, web_workers: int) -> None:
    argv = [
        sys.executable, "-m", "launch_site.supervisor",
        "--home", str(settings.LAUNCH_HOME), "--port", str(settings.PORT), "--host", host,
        "--web-workers", str(web_workers), "--log-level", settings.LOGGING["root"]["level"],
    ]
    if settings.LAUNCH_ACCESS_LOG:
        argv.append("--access-log")
    sys.stdout.flush()
    sys.stderr.flush()
    # From the checkout's directory, where `-m` finds launch_site (the children run there too).
    os.chdir(settings.BASE_DIR)
    os.execv(sys.executable, argv)


def _first_start_credentials() -> tuple[str, str | None, str | None]:
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

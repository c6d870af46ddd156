"""The controller process: an RQ worker on the control queues plus the periodic tick."""

from __future__ import annotations

import logging
import signal
import threading

import django_rq
from django.conf import settings
from django.core.management.base import BaseCommand
from rq import SimpleWorker

from launch_site.redis_client import new_client
from workers.tick import run_tick_loop

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run the controller: RQ worker on the control queues and the tick (autoscale, heal, expire)."
    # No system checks here: they load the URLconf (every view, DRF, the admin's URLs), 21 MB
    # that stays in this process and serves no request. They run where the stack starts
    # (`launch up`; `migrate` in the web image) and in the tests.
    requires_system_checks = []

    def handle(self, *args, **options):
        from workers.redis_acl import default_user_is_open

        if default_user_is_open():
            logger.warning(
                "REDIS_URL's server accepts anyone as its `default` user (no requirepass): bundle code "
                "in any replica can leave its own ACL user and read or flush every key. Give the "
                "default user a password or turn it off (SECURITY.md)."
            )
        stop = threading.Event()
        ticker = threading.Thread(target=run_tick_loop, args=(stop,), name="tick", daemon=True)
        ticker.start()
        # Control-plane jobs are short and run our own code only, so no fork per job:
        # SimpleWorker keeps the local runtime's child processes in this process.
        # A connection of the worker's own (RQ raises its socket timeout above its blocking
        # wait), without redis-py's CLIENT SETINFO (launch_site/redis_client.py).
        connection = new_client(settings.REDIS_URL)
        queues = [django_rq.get_queue(name, connection=connection) for name in ("control", "callbacks")]
        worker = SimpleWorker(queues, connection=connection)
        try:
            worker.work(with_scheduler=False, logging_level="WARNING")
        finally:
            stop.set()
            ticker.join(timeout=10)
        # Replicas keep running: a restarted controller adopts them by their rows.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

"""The controller: an RQ worker on the control queues plus the periodic tick."""

from __future__ import annotations

from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run the controller (RQ worker on the control queues and the tick)."

    def handle(self, *args, **options):
        call_command("rqworker", "control", "batch", with_scheduler=False)

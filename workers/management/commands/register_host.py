"""python manage.py register_host NAME --docker-url URL [--gpus N --gpu-type TYPE] ..."""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from launch_site.errors import ApplicationError
from workers.hosts import host_probe, host_register


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise CommandError(f"--label {text!r}: use key=value")
    return key, value


def _read(path: str | None, option: str) -> str:
    if not path:
        return ""
    try:
        return Path(path).read_text()
    except OSError as error:
        raise CommandError(f"{option} {path}: {error.strerror}") from None


class Command(BaseCommand):
    help = "Register (or with --update, change) a Docker host that replicas can be placed on, and probe it."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument(
            "--docker-url", required=True, help="unix:///var/run/docker.sock, tcp://host:2376 or ssh://user@host"
        )
        parser.add_argument("--gpus", type=int, help="number of GPUs (device ids 0..N-1 unless --gpu-ids)")
        parser.add_argument("--gpu-type", default="", help="e.g. nvidia-ampere-a10")
        parser.add_argument("--gpu-ids", default="", help="comma-separated device ids, e.g. 0,1 or GPU UUIDs")
        parser.add_argument("--label", action="append", default=[], help="key=value, repeatable")
        parser.add_argument("--tls-ca", help="CA certificate file (tcp://)")
        parser.add_argument("--tls-cert", help="client certificate file (tcp://)")
        parser.add_argument("--tls-key", help="client key file (tcp://)")
        parser.add_argument(
            "--gpus-via-env",
            action="store_true",
            help="expose GPUs only through NVIDIA_VISIBLE_DEVICES (hosts without the NVIDIA runtime's device requests)",
        )
        parser.add_argument("--update", action="store_true", help="change the host of this name if it exists")

    def handle(self, *args, **options):
        gpu_ids = [i for i in options["gpu_ids"].split(",") if i.strip()] or None
        try:
            host = host_register(
                name=options["name"],
                docker_url=options["docker_url"],
                gpus=options["gpus"],
                gpu_type=options["gpu_type"],
                gpu_device_ids=gpu_ids,
                labels=dict(_label(text) for text in options["label"]),
                tls_ca_cert=_read(options["tls_ca"], "--tls-ca"),
                tls_client_cert=_read(options["tls_cert"], "--tls-cert"),
                tls_client_key=_read(options["tls_key"], "--tls-key"),
                gpus_via_env_only=options["gpus_via_env"],
                update=options["update"],
            )
        except ApplicationError as error:  # FieldError included: its message names the field
            raise CommandError(error.message) from None
        except ValidationError as error:  # from full_clean: name the fields
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in error.message_dict.items())) from None
        host = host_probe(host)
        gpus = f", {len(host.gpu_device_ids)} x {host.gpu_type} {host.gpu_device_ids}" if host.gpu_device_ids else ""
        if host.consecutive_failures == 0:
            memory = (host.memory_bytes or 0) / 1024**3
            self.stdout.write(
                f"registered {host.name} (id {host.pk}): {host.cpus:g} CPUs, {memory:.1f} GiB{gpus}; healthy"
            )
        else:
            self.stdout.write(
                f"registered {host.name} (id {host.pk}){gpus}, but it does not answer yet: {host.last_error}\n"
                "It becomes healthy once the controller's probe reaches it."
            )

"""The bounds every input is held to, in one place: names, and the largest number each field
takes. The services check them (so the native API, the legacy dialect and the dashboard
refuse alike, with a 4xx naming the field); serializers and forms add no rules of their own.

Why bounds at all: a number goes on to Redis TTLs, database integer columns, the kernel's
cgroup files and the autoscaler's arithmetic. 9223372036854775807 seconds made every submit
a 500 (Redis refuses the TTL) after the task was stored; `inf` CPUs overflowed int()."""

from __future__ import annotations

import math
import re
from typing import Any

from launch_site.errors import FieldError

# Endpoint and bundle names: they appear in URLs, logs, the dashboard and container labels,
# so no spaces, control characters, newlines or bidirectional overrides.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
NAME_HELP = "letters, digits, '-', '_' and '.', starting with a letter or digit"
_NAME = re.compile(NAME_PATTERN)
ENDPOINT_NAME_MAX_LENGTH = 63
BUNDLE_NAME_MAX_LENGTH = 200

MAX_WORKERS = 1000  # min_workers / max_workers of one endpoint or batch job
MAX_PER_WORKER = 10_000
MAX_GPUS = 64  # of one replica
MAX_HOST_GPUS = 256  # of one registered Docker host
MAX_CPUS_MILLIS = 1024 * 1000  # 1024 CPUs for one replica
MAX_BYTES = 2**50  # memory or storage of one replica: 1 PiB
MAX_TASK_EXPIRES_SECONDS = 30 * 24 * 3600
MAX_QUEUE_MESSAGE_TIMEOUT_SECONDS = 12 * 3600
MAX_BATCH_TIMEOUT_SECONDS = 7 * 24 * 3600
# Request batching of an endpoint (docs/batching.md): the largest batch one replica takes in
# one Redis call (their payloads come back in one reply), and the longest a replica waits for
# a batch to fill; a batch waited for longer would only add latency to every request in it.
MAX_BATCH_SIZE = 256
MAX_BATCH_WAIT_MS = 5000
DEFAULT_BATCH_WAIT_MS = 10


def check_name(value: Any, *, field: str, max_length: int) -> str:
    if not isinstance(value, str) or not value:
        raise FieldError(field, "must be a non-empty string")
    if len(value) > max_length:
        raise FieldError(field, f"must be at most {max_length} characters")
    if not _NAME.fullmatch(value):
        raise FieldError(field, f"{value!r} has characters that are not allowed: use {NAME_HELP}")
    return value


def check_integer(value: Any, *, field: str, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(field, "must be an integer")
    if not minimum <= value <= maximum:
        raise FieldError(field, f"must be between {minimum} and {maximum}")
    return value


def check_seconds(value: Any, *, field: str, maximum: float) -> float:
    """A positive, finite number of seconds up to `maximum`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(field, "must be a positive number of seconds")
    if isinstance(value, float) and not math.isfinite(value):
        raise FieldError(field, "must be a finite number of seconds")
    if not 0 < value <= maximum:
        raise FieldError(field, f"must be more than 0 and at most {maximum:g} seconds")
    return float(value)


MAX_REQUIREMENTS = 200  # pip requirements of one bundle
MAX_REQUIREMENT_LENGTH = 500


def check_requirements(value: Any, *, field: str = "requirements") -> list[str]:
    """A bundle's pip requirements: each a PEP 508 requirement ("numpy==2.1.0", "pkg[extra]>=1",
    "pkg @ https://host/pkg.whl"), parsed by `packaging`. They become the lines of a
    requirements file that pip reads on the server (local runtime) or in a build (docker), so a
    pip option ("-r /etc/shadow", "--index-url ..."), a second line, a local path or a file: URL
    is refused here rather than handed to pip."""
    from packaging.requirements import InvalidRequirement, Requirement

    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise FieldError(field, "must be a list of strings")
    if len(value) > MAX_REQUIREMENTS:
        raise FieldError(field, f"must have at most {MAX_REQUIREMENTS} items")
    for index, item in enumerate(value):
        text = item.strip()
        what = f"item {index} ({item[:80]!r})"
        if len(item) > MAX_REQUIREMENT_LENGTH:
            raise FieldError(field, f"{what} must be at most {MAX_REQUIREMENT_LENGTH} characters")
        if text.startswith("-"):
            raise FieldError(field, f"{what} is a pip option; only requirements such as 'numpy==2.1.0' are taken")
        try:
            requirement = Requirement(text)
        except InvalidRequirement as error:
            raise FieldError(field, f"{what} is not a requirement such as 'numpy==2.1.0': {error}") from None
        if requirement.url and not requirement.url.startswith(("https://", "http://")):
            raise FieldError(field, f"{what}: only http(s) URLs are taken, not {requirement.url.split(':')[0]}:")
    return value

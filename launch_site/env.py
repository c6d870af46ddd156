"""Typed readers for environment variables that fail loudly on bad values."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse


class ConfigError(RuntimeError):
    pass


def env_str(name: str, default: str | None = None) -> str | None:
    """A string, from NAME or from the file named by NAME_FILE (for secrets)."""
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        return Path(file_name).read_text().strip()
    return os.environ.get(name, default)


def external_redis_url() -> str | None:
    """The Redis the operator named (REDIS_URL or REDIS_URL_FILE); None: the embedded one,
    which `launch up` starts (launch_site.supervisor) and settings point at."""
    return env_str("REDIS_URL") or None


def default_web_workers() -> int:
    """Web server processes when nobody says: half the CPUs this process may run on, at least
    one. A sync request's path costs the web worker about as much CPU as Redis, the replica and
    the client together, so past half the cores a worker more buys nothing; on 2 cores one
    worker served as many requests/s as two, and two took 15-25 MB more (BENCHMARKS.md,
    "One copy of the app for the web and the controller")."""
    try:
        cpus = len(os.sched_getaffinity(0))  # a container's cpuset, not the host's count
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // 2)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "on"):
        return True
    if raw.lower() in ("0", "false", "off"):
        return False
    raise ConfigError(f"{name} must be one of 1/true/on or 0/false/off, not {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, not {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}")
    return value


def env_uid_range(name: str, default: tuple[int, int]) -> tuple[int, int] | None:
    """"first-last" (two uids above 1000, first <= last), or "off" for None."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw == "off":
        return None
    first, sep, last = raw.partition("-")
    if not (sep and first.isdigit() and last.isdigit() and 1000 < int(first) <= int(last) < 2**31):
        raise ConfigError(f"{name} must be a range of uids such as 200000-265535 (above 1000), or off; not {raw!r}")
    return int(first), int(last)


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name) or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def env_mounts(name: str) -> list[tuple[str, str, str]]:
    """Bind mounts "/src:/dst[:ro|rw],..." as (source, target, mode); mode defaults to ro."""
    mounts = []
    for item in (os.environ.get(name) or "").split(","):
        if not item.strip():
            continue
        parts = item.strip().split(":")
        if len(parts) == 2:
            parts.append("ro")
        if len(parts) != 3 or parts[2] not in ("ro", "rw"):
            raise ConfigError(f"{name}: {item!r} is not /source:/target[:ro|rw]")
        if not parts[0].startswith("/") or not parts[1].startswith("/"):
            raise ConfigError(f"{name}: {item!r} needs absolute paths")
        mounts.append((parts[0], parts[1], parts[2]))
    return mounts


def database_from_url(url: str) -> dict:
    """Django DATABASES entry from sqlite:///path or postgres://user:pw@host:port/name."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = unquote(parsed.path)
        if url.startswith("sqlite:////"):
            path = "/" + path.lstrip("/")
        elif path.startswith("/"):
            path = path[1:]
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": path or ":memory:",
            # WAL and a busy timeout: the web server, the controller and management
            # commands share the file in the embedded stack. IMMEDIATE transactions take the
            # write lock up front: a deferred one that reads and then writes fails at once
            # with "database is locked" when another writer got in between (no busy wait).
            "OPTIONS": {
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL;",
                "transaction_mode": "IMMEDIATE",
            },
            # Keep each thread's connection: opening one (and its PRAGMA) per request was a
            # measurable part of a sync inference request.
            "CONN_MAX_AGE": 600,
        }
    if parsed.scheme in ("postgres", "postgresql", "pgsql"):
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parsed.path.lstrip("/")),
            "USER": unquote(parsed.username or ""),
            "PASSWORD": unquote(parsed.password or ""),
            "HOST": parsed.hostname or "",
            "PORT": str(parsed.port or ""),
            "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True,
        }
    raise ConfigError(f"DATABASE_URL has an unsupported scheme {parsed.scheme!r} (use sqlite or postgres)")

from __future__ import annotations

import functools

from django.conf import settings

from workers.runtimes.base import Runtime


@functools.cache
def _runtime(name: str) -> Runtime:
    if name == "docker":
        from workers.runtimes.docker import DockerRuntime

        return DockerRuntime()
    if name == "ray":
        # Imported here only: Ray is an optional install (requirements-ray.txt).
        from workers.runtimes.ray import RayRuntime

        return RayRuntime()
    from workers.runtimes.local import LocalRuntime

    return LocalRuntime()


def get_runtime(name: str | None = None) -> Runtime:
    """The runtime by name (a replica keeps the one it was started with), default from settings."""
    return _runtime(name or settings.LAUNCH_RUNTIME)

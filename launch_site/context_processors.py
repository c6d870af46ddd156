"""Template context of every dashboard page."""

from __future__ import annotations


def runtime_warning(request) -> dict:
    """The local runtime's plain warning when it cannot contain replicas (SECURITY.md)."""
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    from workers.runtimes.local import isolation_warning

    return {"runtime_warning": isolation_warning()}

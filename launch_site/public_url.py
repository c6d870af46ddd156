"""Absolute URLs handed to clients (signed upload URLs, result URLs)."""

from __future__ import annotations

from django.conf import settings


def absolute_url(request, path: str) -> str:
    """On LAUNCH_PUBLIC_URL when set (production: a client's Host header must not decide
    where a signed URL points); otherwise on the request's own host (the embedded stack)."""
    if settings.LAUNCH_PUBLIC_URL:
        return settings.LAUNCH_PUBLIC_URL + path
    return request.build_absolute_uri(path)

"""Guessing is throttled: password logins, invalid API keys per client address, and requests
per API key on the inference routes. Counters live in Redis (fixed windows, one key per
window under `launch:throttle:`, a prefix no replica's ACL user reaches), so they hold across
web workers and processes.

The inference hot path pays no extra round trip: the per-key count rides in the submit's own
pipeline (`count_key_request`), and a key found over its limit is remembered in this process
until its window ends (`check_key_rate`). So each web worker may let one request past the
limit before its own count tells it; the limit holds to within the number of web workers.
Invalid keys work the same way (a worker learns an address is over its limit from the count
its own last failure returned); logins, which are rare, read Redis before every attempt.
"""

from __future__ import annotations

import math
import threading
import time

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied

from launch_site.errors import ApplicationError
from launch_site.redis_client import get_redis

PREFIX = "launch:throttle:"


class RateLimitedError(ApplicationError):
    status_code = 429

    def __init__(self, message: str, *, retry_after: float):
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))


def _window(seconds: float) -> tuple[int, float]:
    """The current window's number and the seconds until it ends."""
    now = time.time()
    number = int(now // seconds)
    return number, (number + 1) * seconds - now


class _LocalBlocks:
    """Keys or addresses this process knows to be over their limit, until their window ends."""

    def __init__(self):
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def block(self, name: str, seconds: float) -> None:
        with self._lock:
            if len(self._until) > 10_000:  # a flood of addresses must not grow it without end
                now = time.monotonic()
                self._until = {k: v for k, v in self._until.items() if v > now}
            self._until[name] = time.monotonic() + seconds

    def remaining(self, name: str) -> float:
        until = self._until.get(name)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            with self._lock:
                self._until.pop(name, None)
            return 0.0
        return left


_blocked = _LocalBlocks()


# Inference: requests per API key.


def _key_counter(key: str) -> tuple[str, float]:
    number, left = _window(settings.INFERENCE_RATE_WINDOW_SECONDS)
    return f"{PREFIX}key:{key}:{number}", left


def check_key_rate(key: str | None) -> None:
    """429 when this process knows the key is over its inference rate (no Redis round trip)."""
    if key is None or not settings.INFERENCE_RATE_LIMIT:
        return
    left = _blocked.remaining(f"key:{key}")
    if left:
        raise RateLimitedError(
            f"rate limit: at most {settings.INFERENCE_RATE_LIMIT} inference requests per "
            f"{settings.INFERENCE_RATE_WINDOW_SECONDS:g} s per API key; retry in {math.ceil(left)} s",
            retry_after=left,
        )


def count_key_request(pipe, key: str | None) -> bool:
    """Count one request of the key on the caller's pipeline (INCR, EXPIRE: two replies);
    False when there is nothing to count."""
    if key is None or not settings.INFERENCE_RATE_LIMIT:
        return False
    counter, left = _key_counter(key)
    pipe.incr(counter)
    pipe.expire(counter, math.ceil(left) + 1)
    return True


def record_key_count(key: str, count: int) -> None:
    """After the pipeline ran: remember the key as over its limit for the rest of the window."""
    if count >= settings.INFERENCE_RATE_LIMIT:
        _blocked.block(f"key:{key}", _window(settings.INFERENCE_RATE_WINDOW_SECONDS)[1])


# Invalid API keys per client address.


def client_address(request) -> str:
    # REMOTE_ADDR: behind a proxy, the proxy must set it (SECURITY.md); X-Forwarded-For is
    # not trusted, or every guess would name a fresh address.
    return request.META.get("REMOTE_ADDR") or "unknown"


def check_address(address: str) -> None:
    left = _blocked.remaining(f"addr:{address}")
    if left:
        raise RateLimitedError(
            f"too many invalid API keys from {address}; retry in {math.ceil(left)} s", retry_after=left
        )


def record_invalid_key(address: str) -> None:
    number, left = _window(settings.INVALID_KEY_WINDOW_SECONDS)
    counter = f"{PREFIX}badkey:{address}:{number}"
    with get_redis().pipeline(transaction=False) as pipe:
        pipe.incr(counter)
        pipe.expire(counter, math.ceil(left) + 1)
        count, _ = pipe.execute()
    if count >= settings.INVALID_KEY_LIMIT:
        _blocked.block(f"addr:{address}", left)


# Password logins (dashboard and admin).


def _login_counters(username: str, address: str) -> list[tuple[str, int]]:
    number, _ = _window(settings.LOGIN_FAILURE_WINDOW_SECONDS)
    return [
        (f"{PREFIX}login:user:{username.lower()}:{address}:{number}", settings.LOGIN_FAILURE_LIMIT),
        (f"{PREFIX}login:addr:{address}:{number}", settings.LOGIN_FAILURE_LIMIT * 5),
    ]


class ThrottledModelBackend(ModelBackend):
    """Django's ModelBackend, refusing every attempt for a username from an address (and for
    any username from an address) once too many failed in the window, the right password
    included. Django's authenticate() turns PermissionDenied into a failed login."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        address = client_address(request) if request is not None else "unknown"
        counters = _login_counters(str(username or ""), address)
        client = get_redis()
        counts = client.mget([name for name, _ in counters])
        if any(int(count or 0) >= limit for count, (_, limit) in zip(counts, counters, strict=True)):
            raise PermissionDenied("too many failed logins; try again later")
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None:
            _, left = _window(settings.LOGIN_FAILURE_WINDOW_SECONDS)
            with client.pipeline(transaction=False) as pipe:
                for name, _ in counters:
                    pipe.incr(name)
                    pipe.expire(name, math.ceil(left) + 1)
                pipe.execute()
        return user

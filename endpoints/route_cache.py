"""The inference routes' two lookups (API key -> key and team; team + endpoint id or name ->
what a task submit reads of the endpoint), kept per web process, so that a task submit to a
READY endpoint runs no database query and no hop to a database thread. Measured, that hop and
the two queries were about half of a web worker's CPU per request (BENCHMARKS.md, "Sync
latency with the ASGI inference routes").

Correct at once, not eventually: an entry carries the routing generation it was read under
(launch_site.route_generation), which every write to a key, user, membership, team or
endpoint moves; the submit's own Redis script queues the task only if that generation is
still the current one (protocol.ADD_TASK_SCRIPT), in the same round trip, and otherwise the
request looks its route up again. MAX_AGE_SECONDS bounds an entry's life whatever happens (a
move lost while Redis was unreachable) and keeps the key's last-used time fresh
(authentication refreshes it at most once a minute)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from accounts.models import ApiKey, hash_key
from endpoints.models import ModelEndpoint
from workers import protocol

MAX_AGE_SECONDS = 5.0
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Route:
    """Read-only: the same instances serve concurrent requests."""

    api_key: ApiKey
    endpoint: ModelEndpoint
    generation: bytes
    read_at: float
    cache_key: tuple[str, tuple[str, str]]


_routes: dict[tuple[str, tuple[str, str]], Route] = {}


async def current_generation(client) -> bytes:
    """The generation now (client: redis.asyncio)."""
    key = protocol.ROUTE_GENERATION_KEY
    generation = await client.get(key)
    if generation is None:
        # First use, or Redis lost its data: a random start, so that no entry read under an
        # earlier life of the counter can match again.
        start = str(secrets.randbits(62)).encode()
        generation = start if await client.set(key, start, nx=True) else await client.get(key)
    return generation


def cached(raw_key: str, endpoint_ref: tuple[str, str]) -> Route | None:
    """The entry, if it is young enough; whether its generation is current is checked where
    the task is queued."""
    route = _routes.get((hash_key(raw_key), endpoint_ref))
    if route is None or time.monotonic() - route.read_at > MAX_AGE_SECONDS:
        return None
    return route


def remember(generation: bytes, raw_key: str, endpoint_ref: tuple[str, str], api_key: ApiKey,
             endpoint: ModelEndpoint) -> None:
    """Keep lookups read from the database after `generation` was read."""
    if len(_routes) >= MAX_ENTRIES:
        _routes.clear()
    cache_key = (hash_key(raw_key), endpoint_ref)
    _routes[cache_key] = Route(api_key, endpoint, generation, time.monotonic(), cache_key)


def forget(route: Route) -> None:
    """Drop an entry found stale (the request then looks its route up again)."""
    if _routes.get(route.cache_key) is route:
        del _routes[route.cache_key]

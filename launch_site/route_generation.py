"""The routing generation: a Redis counter that moves whenever something an inference
request's authorization or routing reads is written: an API key, a user, a membership, a team,
an endpoint. The inference routes keep those lookups in a per-process cache
(endpoints.route_cache) and trust an entry only while the generation it was read under is
still the current one, so a revoked key or a deleted endpoint stops working at once.

Every write moves it: the models' post_save/post_delete receivers (connected in
EndpointsConfig.ready) and RouteChangingQuerySet.update (QuerySet.update sends no signal)."""

from __future__ import annotations

import logging

import redis
from django.db import connections, models, transaction

from launch_site.redis_client import get_redis
from workers import protocol

logger = logging.getLogger(__name__)

def bump(using: str = "default") -> None:
    """Move the generation now, and once more after the surrounding transaction commits: a
    reader between the two could have refilled its cache from the rows as they were before
    the commit. Best effort: with Redis unreachable no inference request is served either, and
    endpoints.route_cache.MAX_AGE_SECONDS bounds what a lost bump can leave stale."""
    _move()
    if connections[using].in_atomic_block:
        transaction.on_commit(_move, using=using)


def _move() -> None:
    try:
        get_redis().incr(protocol.ROUTE_GENERATION_KEY)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
        logger.warning("the routing generation could not move (%s): cached routes may lag for a few seconds", error)


def on_saved_or_deleted(sender, *, using: str = "default", update_fields=None, **kwargs) -> None:
    route_fields = getattr(sender, "ROUTE_FIELDS", None)
    if update_fields is not None and route_fields is not None and not set(update_fields) & set(route_fields):
        return
    bump(using)


class RouteChangingQuerySet(models.QuerySet):
    """update() moves the generation when it writes a field the routes read (the model's
    ROUTE_FIELDS; all fields when it has none). bulk_update goes through update(); delete()
    sends post_delete for each row (Django's collector does, since receivers are connected)."""

    def update(self, **kwargs):
        rows = super().update(**kwargs)
        route_fields = getattr(self.model, "ROUTE_FIELDS", None)
        if rows and (route_fields is None or set(kwargs) & set(route_fields)):
            bump(self.db)
        return rows

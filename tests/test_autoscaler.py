"""The autoscaler's decisions, from a real Redis queue."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from endpoints.models import ModelEndpoint
from launch_site.redis_client import get_redis
from tests.factories import make_bundle
from workers import protocol
from workers.autoscaling import desired_workers, next_desired
from workers.tick import autoscale

pytestmark = pytest.mark.django_db


def autoscale_endpoint(endpoint) -> bool:
    """What the tick does for one endpoint: read its queue, set desired_workers."""
    keys = protocol.Keys(protocol.endpoint_prefix(endpoint.id))
    queued, in_flight = protocol.queue_depth(get_redis(), keys, [])
    return autoscale(endpoint, queued=queued, in_flight=in_flight, now=timezone.now())


@pytest.mark.parametrize(
    ("queued", "in_flight", "per_worker", "low", "high", "expected"),
    [(0, 0, 10, 0, 5, 0), (1, 0, 10, 0, 5, 1), (25, 0, 10, 0, 5, 3), (15, 10, 10, 0, 5, 3), (500, 0, 10, 0, 5, 5),
     (0, 0, 10, 1, 5, 1), (3, 0, 1, 0, 4, 3)],
)
def test_desired_is_demand_over_per_worker_clamped(queued, in_flight, per_worker, low, high, expected):
    assert desired_workers(queued=queued, in_flight=in_flight, per_worker=per_worker,
                           min_workers=low, max_workers=high) == expected


def test_scale_down_waits_for_the_delay_and_scale_up_is_immediate():
    now = timezone.now()
    assert next_desired(current=1, target=4, low_demand_since=None, now=now, delay_seconds=60) == (4, None)
    desired, since = next_desired(current=4, target=1, low_demand_since=None, now=now, delay_seconds=60)
    assert (desired, since) == (4, now)
    later = now + timedelta(seconds=30)
    assert next_desired(current=4, target=1, low_demand_since=since, now=later, delay_seconds=60) == (4, since)
    much_later = now + timedelta(seconds=61)
    assert next_desired(current=4, target=1, low_demand_since=since, now=much_later, delay_seconds=60) == (1, None)
    # Demand coming back resets the clock.
    assert next_desired(current=4, target=4, low_demand_since=since, now=later, delay_seconds=60) == (4, None)


def test_async_endpoint_scales_from_zero_to_n_on_queue_depth(owner, redis_client, settings):
    settings.SCALE_DOWN_DELAY_SECONDS = 60
    endpoint = ModelEndpoint.objects.create(
        team=owner.team, name="scaler", bundle=make_bundle(owner.team), endpoint_type="async", min_workers=0,
        max_workers=4, per_worker=10, cpus="1", cpus_millis=1000, memory="1Gi", memory_bytes=2**30,
        desired_workers=0, status="READY",
    )
    keys = protocol.Keys(protocol.endpoint_prefix(endpoint.id))
    redis_client.lpush(keys.queue, *[f"t{i}" for i in range(25)])
    assert autoscale_endpoint(endpoint) is True
    endpoint.refresh_from_db()
    assert endpoint.desired_workers == 3  # 0 -> N, not 0 -> 1

    redis_client.delete(keys.queue)
    assert autoscale_endpoint(endpoint) is False
    endpoint.refresh_from_db()
    assert endpoint.desired_workers == 3 and endpoint.low_demand_since is not None

    ModelEndpoint.objects.filter(pk=endpoint.pk).update(low_demand_since=timezone.now() - timedelta(seconds=61))
    endpoint.refresh_from_db()
    assert autoscale_endpoint(endpoint) is True
    endpoint.refresh_from_db()
    assert endpoint.desired_workers == 0

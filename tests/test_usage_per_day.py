"""GPU-hours and requests per endpoint per UTC day on the usage page, with billing tags
(workers.metrics.requests_by_day / gpu_hours_by_day)."""

from __future__ import annotations

import datetime
import re
from types import SimpleNamespace

import pytest
from django.test import Client

from endpoints.models import ModelEndpoint
from endpoints.services import endpoint_create
from launch_site.redis_client import get_redis
from tests.factories import make_bundle
from workers import metrics, protocol
from workers.models import Replica

pytestmark = pytest.mark.django_db

UTC = datetime.UTC


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_gpu_hours_are_split_at_utc_midnight_and_count_each_gpu():
    days = [datetime.date(2026, 3, 2), datetime.date(2026, 3, 1)]
    replicas = [
        # 2 GPUs from 22:00 to 01:00: 2 h on the 1st, 1 h on the 2nd.
        SimpleNamespace(owner_id="e", gpu_device_ids=["0", "1"], created_at=at("2026-03-01T22:00"),
                        stopped_at=at("2026-03-02T01:00")),
        # Still running at `now`: 1 GPU for 30 minutes.
        SimpleNamespace(owner_id="e", gpu_device_ids=["2"], created_at=at("2026-03-02T11:30"), stopped_at=None),
        SimpleNamespace(owner_id="cpu", gpu_device_ids=[], created_at=at("2026-03-02T00:00"), stopped_at=None),
    ]  # fmt: skip
    hours = metrics.gpu_hours_by_day(replicas, days, now=at("2026-03-02T12:00"))
    assert hours == {"e": {days[1]: 4.0, days[0]: 2.5}}


@pytest.fixture
def endpoint(owner) -> ModelEndpoint:
    endpoint = endpoint_create(
        team=owner.team, user=owner.user, name="billed", model_bundle_id=make_bundle(owner.team).id,
        endpoint_type="async", min_workers=0, max_workers=1, per_worker=1, cpus=1, memory="1Gi",
        billing_tags={"cost_center": "ml-42"},
    )  # fmt: skip
    return endpoint


def test_sample_tick_marks_where_each_day_starts_once(endpoint, redis_client):
    keys = protocol.Keys(protocol.endpoint_prefix(endpoint.id))
    redis_client.hset(keys.stats, mapping={"completed": 5, "failed": 1})
    redis_client.delete(metrics.SAMPLE_LOCK_KEY)  # another test's tick may hold it
    metrics.sample_tick()
    today = datetime.datetime.now(UTC).date().isoformat()
    assert redis_client.hget(keys.daily, today) == b"6"
    redis_client.hset(keys.stats, mapping={"completed": 9})
    redis_client.delete(metrics.SAMPLE_LOCK_KEY)
    metrics.sample_tick()
    assert redis_client.hget(keys.daily, today) == b"6"  # the day's first mark stays


def test_usage_page_shows_requests_and_gpu_hours_per_day_with_billing_tags(endpoint, owner, redis_client):
    today = datetime.datetime.now(UTC).date()
    yesterday = today - datetime.timedelta(days=1)
    keys = protocol.Keys(protocol.endpoint_prefix(endpoint.id))
    redis_client.hset(keys.stats, mapping={"completed": 10, "failed": 2})
    redis_client.hset(keys.daily, mapping={yesterday.isoformat(): 3, today.isoformat(): 7})
    midnight = datetime.datetime.combine(today, datetime.time(), tzinfo=UTC)
    replica = Replica.objects.create(
        owner_kind=Replica.Owner.ENDPOINT, owner_id=endpoint.id, runtime="docker", gpu_device_ids=["0", "1"],
        state=Replica.State.STOPPED, stopped_at=midnight - datetime.timedelta(hours=1),
    )  # fmt: skip
    Replica.objects.filter(pk=replica.pk).update(created_at=midnight - datetime.timedelta(hours=3))

    client = Client()
    client.force_login(owner.user)
    html = client.get("/usage/").content.decode()
    table = re.search(r'<table id="usage-per-day".*?</table>', html, re.S).group(0)
    row = re.search(r"<tr><td><a[^>]*>billed</a>.*?</tr>", table, re.S).group(0)
    assert "<code>cost_center=ml-42</code>" in row
    cells = [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r'<td class="num day-cell">(.*?)</td>', row)]
    assert cells[0] == "5 · 0.00"  # today: 12 finished so far, 7 at the day's first sample
    assert cells[1] == "4 · 4.00"  # yesterday: 7 - 3 requests; 2 GPUs for 2 hours
    assert cells[2] == "– · 0.00"  # before any sample: not recorded, not zero
    assert len(cells) == 7
    get_redis().delete(keys.daily, keys.stats)

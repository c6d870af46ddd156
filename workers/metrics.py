"""Figures of what runs, read from what replicas and the gateway already write to Redis
(workers.protocol: `<prefix>stats` counters, `<prefix>latency` histograms, the queue) and
from the Replica rows: no second bookkeeping.

- `endpoint_figures`: the live counters of many endpoints in one round trip (/metrics, the
  dashboard).
- `sample_tick`: a tick hook; every METRICS_SAMPLE_SECONDS it appends one sample per endpoint
  to `<prefix>samples` (a capped list, newest first), kept METRICS_RETENTION_SECONDS.
- `chart_series`: per-interval rates and percentiles from consecutive samples (the charts).
- `requests_by_day`, `gpu_hours_by_day`: per endpoint per UTC day (the usage page), from the
  day marks `sample_tick` leaves in `<prefix>daily` and from the Replica rows' times and GPUs.
"""

from __future__ import annotations

import datetime
import json
import math
import time
from dataclasses import dataclass, field

from django.conf import settings

from launch_site.redis_client import get_redis
from workers import protocol
from workers.models import LIVE_STATES, Replica

SAMPLE_LOCK_KEY = "launch:metrics:sample-lock"


@dataclass
class Histogram:
    """One timing's histogram: cumulative counts per upper bound (the last is +Inf)."""

    buckets: list[tuple[float, int]] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def quantile(self, q: float, since: Histogram | None = None) -> float | None:
        """The q-quantile of the observations after `since` (linear within a bucket, as
        Prometheus' histogram_quantile does); None without observations."""
        counts = [c - (since.buckets[i][1] if since and i < len(since.buckets) else 0) for i, (_, c) in enumerate(self.buckets)]
        if not counts or counts[-1] <= 0:
            return None
        rank = q * counts[-1]
        lower, below = 0.0, 0
        for (upper, _), cumulative in zip(self.buckets, counts, strict=True):
            if cumulative >= rank:
                if math.isinf(upper):
                    return lower
                inside = cumulative - below
                return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = upper, cumulative
        return lower


def parse_histograms(raw: dict) -> dict[str, Histogram]:
    """The `<prefix>latency` hash (HGETALL) -> {timing: Histogram}."""
    fields = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
    histograms = {}
    for timing in protocol.LATENCY_TIMINGS:
        cumulative, buckets = 0, []
        for upper in protocol.LATENCY_BUCKETS:
            cumulative += int(fields.get(f"{timing}:{protocol.bucket_label(upper)}", 0))
            buckets.append((float(upper), cumulative))
        cumulative += int(fields.get(f"{timing}:+Inf", 0))
        buckets.append((math.inf, cumulative))
        histograms[timing] = Histogram(
            buckets=buckets, total=float(fields.get(f"{timing}:sum", 0) or 0), count=int(fields.get(f"{timing}:count", 0))
        )
    return histograms


def endpoint_figures(endpoint_ids: list[str]) -> dict[str, dict]:
    """{endpoint id: {completed, failed, queued, latency: {timing: Histogram}}}, one round trip."""
    if not endpoint_ids:
        return {}
    with get_redis().pipeline(transaction=False) as pipe:
        for endpoint_id in endpoint_ids:
            keys = protocol.Keys(protocol.endpoint_prefix(endpoint_id))
            pipe.hmget(keys.stats, ["completed", "failed"])
            pipe.hgetall(keys.latency)
            pipe.llen(keys.queue)
        answers = pipe.execute()
    figures = {}
    for index, endpoint_id in enumerate(endpoint_ids):
        (completed, failed), latency, queued = answers[3 * index : 3 * index + 3]
        figures[endpoint_id] = {
            "completed": int(completed or 0), "failed": int(failed or 0), "queued": int(queued),
            "latency": parse_histograms(latency),
        }
    return figures


def replica_states(owner_kind: str, owner_ids: list[str]) -> dict[str, dict[str, int]]:
    """{owner id: {state: live replicas in it}}."""
    states: dict[str, dict[str, int]] = {owner_id: {} for owner_id in owner_ids}
    rows = Replica.objects.filter(owner_kind=owner_kind, owner_id__in=owner_ids, state__in=LIVE_STATES)
    for owner_id, state in rows.values_list("owner_id", "state"):
        states[owner_id][state] = states[owner_id].get(state, 0) + 1
    return states


# --- samples for the charts ------------------------------------------------------------------

def sample_tick() -> None:
    """Append one sample per endpoint, at most every METRICS_SAMPLE_SECONDS over all
    controllers (a Redis lock that expires on its own)."""
    from endpoints.models import ModelEndpoint

    interval = settings.METRICS_SAMPLE_SECONDS
    redis = get_redis()
    if not redis.set(SAMPLE_LOCK_KEY, "1", nx=True, px=max(1, int(interval * 1000))):
        return
    endpoint_ids = list(ModelEndpoint.objects.values_list("id", flat=True))
    figures = endpoint_figures(endpoint_ids)
    states = replica_states(Replica.Owner.ENDPOINT, endpoint_ids)
    keep = max(2, int(settings.METRICS_RETENTION_SECONDS / interval) + 1)
    now = time.time()
    today = _day(now).isoformat()
    expired_day = (_day(now) - datetime.timedelta(days=DAILY_MARKS_KEPT)).isoformat()
    with redis.pipeline(transaction=False) as pipe:
        for endpoint_id in endpoint_ids:
            figure = figures[endpoint_id]
            sample = {
                "t": round(now, 3), "completed": figure["completed"], "failed": figure["failed"],
                "queued": figure["queued"], "ready": states[endpoint_id].get(Replica.State.READY, 0),
                "replicas": sum(states[endpoint_id].values()),
                "total": [count for _, count in figure["latency"]["total"].buckets],
            }
            keys = protocol.Keys(protocol.endpoint_prefix(endpoint_id))
            pipe.lpush(keys.samples, json.dumps(sample, separators=(",", ":")))
            pipe.ltrim(keys.samples, 0, keep - 1)
            # The day's first sample marks where its request count starts (requests_by_day).
            pipe.hsetnx(keys.daily, today, figure["completed"] + figure["failed"])
            pipe.hdel(keys.daily, expired_day)
        pipe.execute()


DAILY_MARKS_KEPT = 40


def _day(moment: float | datetime.datetime) -> datetime.date:
    if isinstance(moment, datetime.datetime):
        return moment.astimezone(datetime.UTC).date()
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).date()


def requests_by_day(endpoint_ids: list[str], days: list[datetime.date]) -> dict[str, dict[datetime.date, int | None]]:
    """{endpoint id: {day: requests finished that UTC day}}, from the day marks sample_tick
    leaves and the live counters (today: counters now minus today's mark). None for a day
    with no mark (before the endpoint existed, or before the controller sampled it)."""
    if not endpoint_ids:
        return {}
    figures = endpoint_figures(endpoint_ids)
    with get_redis().pipeline(transaction=False) as pipe:
        for endpoint_id in endpoint_ids:
            pipe.hgetall(protocol.Keys(protocol.endpoint_prefix(endpoint_id)).daily)
        answers = pipe.execute()
    today = _day(time.time())
    result = {}
    for endpoint_id, raw in zip(endpoint_ids, answers, strict=True):
        marks = {}
        for day, value in raw.items():
            try:
                marks[datetime.date.fromisoformat(day.decode())] = int(value)
            except ValueError:
                continue  # the hash sits under the replica's prefix: skip what is not ours
        now_total = figures[endpoint_id]["completed"] + figures[endpoint_id]["failed"]
        counts: dict[datetime.date, int | None] = {}
        for day in days:
            start = marks.get(day)
            if start is None:
                counts[day] = None
                continue
            later = [marks[d] for d in sorted(marks) if d > day]
            end = later[0] if later else (now_total if day <= today else start)
            counts[day] = max(0, end - start)
        result[endpoint_id] = counts
    return result


def gpu_hours_by_day(replicas, days: list[datetime.date], *, now: datetime.datetime) -> dict[str, dict]:
    """{owner id: {day: GPU-hours}}: each replica holds its GPUs (gpu_device_ids) from its
    row's creation (placement) until it stopped (or now), split at UTC midnights."""
    wanted = set(days)
    hours: dict[str, dict[datetime.date, float]] = {}
    for replica in replicas:
        gpus = len(replica.gpu_device_ids or [])
        if not gpus:
            continue
        start, end = replica.created_at, replica.stopped_at or now
        while start < end:
            midnight = datetime.datetime.combine(_day(start) + datetime.timedelta(days=1), datetime.time(),
                                                 tzinfo=datetime.UTC)
            piece_end = min(end, midnight)
            if _day(start) in wanted:
                per_day = hours.setdefault(replica.owner_id, {})
                per_day[_day(start)] = per_day.get(_day(start), 0.0) + gpus * (piece_end - start).total_seconds() / 3600
            start = piece_end
    return hours


def _histogram_of(sample: dict) -> Histogram:
    bounds = [float(b) for b in protocol.LATENCY_BUCKETS] + [math.inf]
    counts = sample.get("total") or []
    return Histogram(buckets=list(zip(bounds, counts, strict=False)))


def chart_series(endpoint_id: str, *, seconds: float, points: int = 240) -> dict[str, list[tuple[float, float]]]:
    """Series over the last `seconds` for the charts: requests/s, errors/s, latency p50 and
    p95 (created -> finished, seconds), queue depth, replicas; at most `points` per series
    (older samples are merged into wider intervals)."""
    interval = settings.METRICS_SAMPLE_SECONDS
    count = int(seconds / interval) + 2
    raw = get_redis().lrange(protocol.Keys(protocol.endpoint_prefix(endpoint_id)).samples, 0, count - 1)
    samples = []
    for item in reversed(raw):
        try:
            sample = json.loads(item)
            float(sample["t"])
        except (ValueError, KeyError, TypeError):
            continue  # a malformed sample (the list sits under the replica's prefix) is skipped
        samples.append(sample)
    step = max(1, math.ceil(len(samples) / points))
    picked = samples[::step]
    if samples and picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    series: dict[str, list[tuple[float, float]]] = {
        "requests": [], "errors": [], "p50": [], "p95": [], "queued": [], "replicas": [],
    }
    for before, after in zip(picked, picked[1:], strict=False):
        elapsed = float(after["t"]) - float(before["t"])
        if elapsed <= 0:
            continue
        t = float(after["t"])
        done = max(0, int(after.get("completed", 0)) + int(after.get("failed", 0))
                   - int(before.get("completed", 0)) - int(before.get("failed", 0)))
        series["requests"].append((t, done / elapsed))
        series["errors"].append((t, max(0, int(after.get("failed", 0)) - int(before.get("failed", 0))) / elapsed))
        histogram, previous = _histogram_of(after), _histogram_of(before)
        for name, q in (("p50", 0.5), ("p95", 0.95)):
            value = histogram.quantile(q, since=previous)
            if value is not None:
                series[name].append((t, value))
    for sample in picked:
        series["queued"].append((float(sample["t"]), float(sample.get("queued", 0))))
        series["replicas"].append((float(sample["t"]), float(sample.get("ready", 0))))
    return series


# --- Prometheus ------------------------------------------------------------------------------

class LaunchCollector:
    """Reads the figures at scrape time (Redis and the database), so every web worker process
    answers the same numbers: no prometheus multiprocess mode needed."""

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        from batchjobs.models import BatchJob
        from endpoints.models import ModelEndpoint
        from workers.models import Host
        from workers.placement import host_capacity

        endpoints = list(ModelEndpoint.objects.select_related("team").only("id", "name", "team__name"))
        ids = [endpoint.id for endpoint in endpoints]
        figures = endpoint_figures(ids)
        states = replica_states(Replica.Owner.ENDPOINT, ids)
        labels = ["endpoint_id", "endpoint", "team"]

        requests = CounterMetricFamily("launch_endpoint_requests", "Finished requests by status.", labels=[*labels, "status"])
        queued = GaugeMetricFamily("launch_endpoint_queue_depth", "Requests waiting in the queue.", labels=labels)
        replicas = GaugeMetricFamily("launch_endpoint_replicas", "Live replicas by state.", labels=[*labels, "state"])
        latency = {
            timing: HistogramMetricFamily(
                f"launch_endpoint_{timing}_seconds", description, labels=labels
            )
            for timing, description in (
                ("queue_wait", "Seconds from submit to a replica taking the request."),
                ("run", "Seconds a replica ran the request."),
                ("total", "Seconds from submit to the outcome."),
            )
        }
        for endpoint in endpoints:
            values = [endpoint.id, endpoint.name, endpoint.team.name]
            figure = figures[endpoint.id]
            requests.add_metric([*values, "success"], figure["completed"])
            requests.add_metric([*values, "failure"], figure["failed"])
            queued.add_metric(values, figure["queued"])
            for state in LIVE_STATES:
                replicas.add_metric([*values, state], states[endpoint.id].get(state, 0))
            for timing, family in latency.items():
                histogram = figure["latency"][timing]
                buckets = [("+Inf" if math.isinf(upper) else repr(float(upper)), count) for upper, count in histogram.buckets]
                family.add_metric(values, buckets, histogram.total)
        yield requests
        yield queued
        yield replicas
        yield from latency.values()

        cold = GaugeMetricFamily(
            "launch_endpoint_cold_start_seconds", "Phases of the newest ready replica's cold start.",
            labels=[*labels, "phase"],
        )
        names = {endpoint.id: endpoint for endpoint in endpoints}
        newest = (
            Replica.objects.filter(owner_kind=Replica.Owner.ENDPOINT, owner_id__in=ids, ready_at__isnull=False)
            .order_by("owner_id", "-ready_at")
            .only("owner_id", "cold_start", "ready_at")
        )
        seen = set()
        for replica in newest:
            if replica.owner_id in seen:
                continue
            seen.add(replica.owner_id)
            endpoint = names[replica.owner_id]
            values = [endpoint.id, endpoint.name, endpoint.team.name]
            for phase, seconds in replica.cold_start_phases:
                cold.add_metric([*values, phase], seconds)
            if replica.cold_start_phases:
                cold.add_metric([*values, "total"], replica.cold_start_seconds)
        yield cold

        items = CounterMetricFamily("launch_batch_items", "Batch job items by outcome.", labels=["status"])
        jobs = GaugeMetricFamily("launch_batch_jobs", "Batch jobs by status.", labels=["status"])
        from django.db.models import Count, Sum

        totals = BatchJob.objects.aggregate(done=Sum("items_completed"), failed=Sum("items_failed"))
        items.add_metric(["completed"], totals["done"] or 0)
        items.add_metric(["failed"], totals["failed"] or 0)
        for row in BatchJob.objects.values("status").annotate(n=Count("id")):
            jobs.add_metric([row["status"]], row["n"])
        yield items
        yield jobs

        from endpoints.callbacks import CALLBACK_OUTCOMES, callback_outcome_counts

        deliveries = CounterMetricFamily(
            "launch_callback_deliveries", "Callback delivery attempts by outcome (retried: failed, tried again "
            "later; gave_up: failed past CALLBACK_RETRY_FOR_SECONDS).", labels=[*labels, "outcome"],
        )
        outcomes = callback_outcome_counts()
        for endpoint in endpoints:
            values = [endpoint.id, endpoint.name, endpoint.team.name]
            for outcome in CALLBACK_OUTCOMES:
                deliveries.add_metric([*values, outcome], outcomes.get(endpoint.id, {}).get(outcome, 0))
        yield deliveries

        host_labels = ["host"]
        cpus = GaugeMetricFamily("launch_host_cpus", "CPUs of a host, total and free.", labels=[*host_labels, "kind"])
        memory = GaugeMetricFamily("launch_host_memory_bytes", "Memory of a host, total and free.", labels=[*host_labels, "kind"])
        gpus = GaugeMetricFamily("launch_host_gpus", "GPUs of a host, total and free.", labels=[*host_labels, "gpu_type", "kind"])
        healthy = GaugeMetricFamily("launch_host_healthy", "1 when the host answers its probes.", labels=host_labels)
        for free in host_capacity(list(Host.objects.all())):
            host = free.host
            cpus.add_metric([host.name, "total"], host.cpus or 0)
            cpus.add_metric([host.name, "free"], max(free.cpus, 0))
            memory.add_metric([host.name, "total"], host.memory_bytes or 0)
            memory.add_metric([host.name, "free"], max(free.memory_bytes, 0))
            gpus.add_metric([host.name, host.gpu_type, "total"], len(host.gpu_device_ids or []))
            gpus.add_metric([host.name, host.gpu_type, "free"], len(free.gpu_ids))
            healthy.add_metric([host.name], 1 if host.healthy else 0)
        yield cpus
        yield memory
        yield gpus
        yield healthy


def prometheus_text() -> bytes:
    """The exposition of LaunchCollector alone (a registry of its own per scrape: no global
    state shared between requests or processes)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(LaunchCollector())
    return generate_latest(registry)

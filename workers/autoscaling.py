"""The autoscaling policy (DESIGN §3 "Autoscaling"): pure functions from demand to replicas,
kept apart from the I/O that reads the queue and writes the endpoint (as Ray Serve keeps
its `autoscaling_policy.py`)."""

from __future__ import annotations

import math
from datetime import datetime


def desired_workers(*, queued: int, in_flight: int, per_worker: int, min_workers: int, max_workers: int) -> int:
    """clamp(ceil((queued + in_flight) / per_worker), min, max)."""
    demand = math.ceil((queued + in_flight) / max(per_worker, 1))
    return max(min_workers, min(max_workers, demand))


def next_desired(*, current: int, target: int, low_demand_since: datetime | None, now: datetime,
                 delay_seconds: float) -> tuple[int, datetime | None]:
    """Scale up at once; scale down only after `delay_seconds` of lower demand.
    Returns (desired, low_demand_since)."""
    if target >= current:
        return target, None
    if low_demand_since is None:
        return current, now
    if (now - low_demand_since).total_seconds() >= delay_seconds:
        return target, None
    return current, low_demand_since

"""The inference gateway: the request path of DESIGN §3 "Requests" (no RQ here).

Submit is one Redis round trip (task hash + queue push in one pipeline); a sync wait is
one more (BLPOP on the task's done list, which the replica fills with the final record).
"""

from __future__ import annotations

import json
import time
import uuid

from django.conf import settings

from accounts import throttling
from accounts.models import Team
from endpoints.models import ModelEndpoint
from launch_site.errors import ApplicationError, FieldError, NotFoundError, UnavailableError
from launch_site.redis_client import get_redis, get_waiting_redis
from workers import protocol
from workers.models import Replica
from workers.runtimes.base import WAITING_FOR_CAPACITY

SERVING_STATES = (Replica.State.STARTING, Replica.State.READY)

TASK_FIELDS = ("args", "url", "return_pickled")


class SyncTimeoutError(ApplicationError):
    status_code = 504


def task_payload(data: dict) -> dict:
    """Validate a predict request body; returns what the replica gets."""
    if not isinstance(data, dict):
        raise FieldError("body", "must be a JSON object with args or url")
    if data.get("cloudpickle") is not None:
        raise FieldError("cloudpickle", "pickled inputs are not accepted; send args (JSON) or url")
    if data.get("callback_url") is not None or data.get("callback_auth") is not None:
        raise FieldError("callback_url", "callbacks are not supported by this server; poll the task instead")
    has_args, has_url = data.get("args") is not None, data.get("url") is not None
    if has_args == has_url:
        raise FieldError("args", "send exactly one of args or url")
    if has_url and not isinstance(data["url"], str):
        raise FieldError("url", "must be a string")
    return_pickled = data.get("return_pickled", False)
    if not isinstance(return_pickled, bool):
        raise FieldError("return_pickled", "must be true or false")
    payload = {"return_pickled": return_pickled}
    payload["args" if has_args else "url"] = data["args"] if has_args else data["url"]
    return payload


def task_submit(*, endpoint: ModelEndpoint, payload: dict, rate_key: str | None = None) -> str:
    """Queue a task; returns its id. With `rate_key` (the API key's prefix), the key's inference rate limit
    applies (429, accounts.throttling)."""
    throttling.check_key_rate(rate_key)
    task_id, _ = _submit(endpoint, payload, wait_seconds=None, rate_key=rate_key)
    return task_id


def task_run_sync(
    *, endpoint: ModelEndpoint, payload: dict, timeout_seconds: float | None, rate_key: str | None = None
) -> tuple[str, dict]:
    """Queue a task and wait for its final record: up to SYNC_TASK_TIMEOUT_SECONDS, or less
    when the request asks. An endpoint that cannot serve answers at once (503)."""
    throttling.check_key_rate(rate_key)
    _check_can_serve(endpoint)
    limit = settings.SYNC_TASK_TIMEOUT_SECONDS
    timeout = min(timeout_seconds or limit, limit)
    task_id, answer = _submit(endpoint, payload, wait_seconds=timeout, rate_key=rate_key)
    if answer is None:
        raise SyncTimeoutError(
            f"endpoint {endpoint.name!r} did not answer within {timeout:g} s; the task {task_id} stays queued "
            f"and can be read with GET /v1/async-tasks/{task_id}"
        )
    return task_id, json.loads(answer[1])


def _check_can_serve(endpoint: ModelEndpoint) -> None:
    """A sync request must not wait out its timeout on an endpoint that cannot answer: one
    whose bundle failed to load, or that has no replica and cannot place one. A READY
    endpoint (the hot path) costs no query here."""
    Status = ModelEndpoint.Status
    if endpoint.status == Status.READY:
        return
    if endpoint.status == Status.DELETE_IN_PROGRESS:
        raise UnavailableError(f"endpoint {endpoint.name!r} is being deleted")
    states = set(
        Replica.objects.filter(owner_kind=Replica.Owner.ENDPOINT, owner_id=endpoint.id, state__in=SERVING_STATES)
        .values_list("state", flat=True)
    )
    if Replica.State.READY in states:
        return
    if endpoint.status == Status.UPDATE_FAILED:
        raise UnavailableError(f"endpoint {endpoint.name!r} cannot serve: {endpoint.status_reason or 'its update failed'}")
    if not states and endpoint.status_reason.startswith(WAITING_FOR_CAPACITY):
        # No replica and none starting, because none can be placed now.
        raise UnavailableError(f"endpoint {endpoint.name!r} has no replica: {endpoint.status_reason}")


def _submit(
    endpoint: ModelEndpoint, payload: dict, *, wait_seconds: float | None, rate_key: str | None = None
) -> tuple[str, list | None]:
    """Write the task, queue it and, with `wait_seconds`, wait for its final record, all in
    one round trip: Redis runs a pipeline's commands in order, so the BLPOP at its end
    blocks until the replica pushes the record (or the timeout). A waiting pipeline goes
    through the pool whose socket timeout outlasts the wait."""
    keys = protocol.Keys(protocol.endpoint_prefix(endpoint.id))
    task_id = protocol.task_id_for(endpoint.id, uuid.uuid4().hex)
    ttl = endpoint.task_expires_seconds or settings.TASK_EXPIRES_SECONDS
    client = get_redis() if wait_seconds is None else get_waiting_redis()
    with client.pipeline(transaction=False) as pipe:
        # First, so its reply is replies[0]: the rate count rides in this round trip.
        counted = throttling.count_key_request(pipe, rate_key)
        protocol.add_task(pipe, keys, task_id, json.dumps(payload), ttl_seconds=ttl, now=time.time())
        if endpoint.desired_workers == 0:
            # Scale from zero without waiting for the next tick.
            pipe.lpush(protocol.WAKE_KEY, "1")
        if wait_seconds is not None:
            protocol.wait_final(pipe, keys, task_id, timeout_seconds=wait_seconds)
        replies = pipe.execute()
    if counted:
        throttling.record_key_count(rate_key, replies[0])
    return task_id, replies[-1] if wait_seconds is not None else None


def _task_keys(team: Team, task_id: str) -> protocol.Keys:
    """The keys of a task of this team's (another team's task is not found)."""
    endpoint_id = protocol.endpoint_id_of_task(task_id)
    if endpoint_id is None or not ModelEndpoint.objects.filter(pk=endpoint_id, team=team).exists():
        raise NotFoundError(f"no task {task_id!r}")
    return protocol.Keys(protocol.endpoint_prefix(endpoint_id))


def task_get(*, team: Team, task_id: str) -> dict:
    """The task record (owner-scoped: another team's task is not found)."""
    record = protocol.read_task(get_redis(), _task_keys(team, task_id), task_id)
    if record is None:
        raise NotFoundError(f"no task {task_id!r} (it may have expired)")
    return record


def task_pickled_result(*, team: Team, task_id: str) -> bytes:
    data = get_redis().hget(_task_keys(team, task_id).task(task_id), "result_pickled")
    if data is None:
        raise NotFoundError(f"task {task_id!r} has no pickled result")
    return data

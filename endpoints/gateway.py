"""The inference gateway: the request path of DESIGN §3 "Requests" (no RQ here).

Submit is one Redis round trip (task hash + queue push in one pipeline); a sync wait is
one more (BLPOP on the task's done list, which the replica fills with the final record).
"""

from __future__ import annotations

import json
import time
import uuid

from django.conf import settings

from accounts.models import Team
from endpoints.models import ModelEndpoint
from launch_site.errors import ApplicationError, FieldError, NotFoundError
from launch_site.redis_client import get_redis
from workers import protocol
from workers.controller import WAKE_KEY

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


def task_submit(*, endpoint: ModelEndpoint, payload: dict) -> str:
    """Queue a task; returns its id."""
    task_id, _ = _submit(endpoint, payload, wait_seconds=None)
    return task_id


def task_run_sync(*, endpoint: ModelEndpoint, payload: dict, timeout_seconds: float | None) -> tuple[str, dict]:
    """Queue a task and wait for its final record."""
    timeout = min(timeout_seconds or settings.SYNC_TASK_TIMEOUT_SECONDS, settings.SYNC_TASK_TIMEOUT_SECONDS)
    task_id, answer = _submit(endpoint, payload, wait_seconds=timeout)
    if answer is None:
        raise SyncTimeoutError(
            f"endpoint {endpoint.name!r} did not answer within {timeout:g} s; the task {task_id} stays queued "
            f"and can be read with GET /v1/async-tasks/{task_id}"
        )
    return task_id, json.loads(answer[1])


def _submit(endpoint: ModelEndpoint, payload: dict, *, wait_seconds: float | None) -> tuple[str, list | None]:
    """Write the task, queue it and, with `wait_seconds`, wait for its final record, all in
    one round trip: Redis runs a pipeline's commands in order, so the BLPOP at its end
    blocks until the replica pushes the record (or the timeout)."""
    keys = protocol.Keys(protocol.endpoint_prefix(endpoint.id))
    task_id = protocol.task_id_for(endpoint.id, uuid.uuid4().hex)
    task_key = keys.task(task_id)
    ttl = endpoint.task_expires_seconds or settings.TASK_EXPIRES_SECONDS
    payload_json, now = json.dumps(payload), time.time()
    with get_redis().pipeline(transaction=False) as pipe:
        pipe.hset(task_key, mapping={
            "payload": payload_json, "status": protocol.PENDING, "attempts": 0, "created_at": now,
        })
        pipe.expire(task_key, ttl)
        pipe.lpush(keys.queue, protocol.queue_entry(task_id, expires_at=now + ttl, payload=payload_json))
        if endpoint.desired_workers == 0:
            # Scale from zero without waiting for the next tick.
            pipe.lpush(WAKE_KEY, "1")
        if wait_seconds is not None:
            pipe.blpop([keys.done(task_id)], timeout=wait_seconds)
        replies = pipe.execute()
    return task_id, replies[-1] if wait_seconds is not None else None


def task_get(*, team: Team, task_id: str) -> dict:
    """The task record (owner-scoped: another team's task is not found)."""
    endpoint_id = protocol.endpoint_id_of_task(task_id)
    if endpoint_id is None or not ModelEndpoint.objects.filter(pk=endpoint_id, team=team).exists():
        raise NotFoundError(f"no task {task_id!r}")
    keys = protocol.Keys(protocol.endpoint_prefix(endpoint_id))
    with get_redis().pipeline(transaction=False) as pipe:
        pipe.hmget(keys.task(task_id), ["status", "result", "traceback"])
        pipe.hexists(keys.task(task_id), "result_pickled")
        (status, result, traceback), pickled = pipe.execute()
    if status is None:
        raise NotFoundError(f"no task {task_id!r} (it may have expired)")
    return {
        "status": status.decode(),
        "result": result.decode() if result is not None else None,
        "traceback": traceback.decode() if traceback is not None else None,
        "result_pickled": bool(pickled),
    }


def task_pickled_result(*, team: Team, task_id: str) -> bytes:
    endpoint_id = protocol.endpoint_id_of_task(task_id)
    if endpoint_id is None or not ModelEndpoint.objects.filter(pk=endpoint_id, team=team).exists():
        raise NotFoundError(f"no task {task_id!r}")
    keys = protocol.Keys(protocol.endpoint_prefix(endpoint_id))
    data = get_redis().hget(keys.task(task_id), "result_pickled")
    if data is None:
        raise NotFoundError(f"task {task_id!r} has no pickled result")
    return data

"""The inference gateway: the request path of DESIGN §3 "Requests" (no RQ here).

Submit is one Redis round trip (task hash + queue push in one pipeline); a sync wait is
one more (BLPOP on the task's done list, which the replica fills with the final record).
A streaming task goes through the same queue; the gateway then pops its items one by one
(workers.protocol.stream_answer) until the final record. The API views run the Redis
side in the event loop (launch_site.redis_client.AsyncRedis; the waits hold no thread) and the
database side (prepare_*) in a thread, or not at all when the route cache has it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from django.conf import settings

from accounts import throttling
from accounts.models import Team
from endpoints import callbacks
from endpoints.models import ModelEndpoint
from launch_site.errors import ApplicationError, ConflictError, FieldError, NotFoundError, UnavailableError
from launch_site.redis_client import WAIT_MARGIN_SECONDS, AsyncRedis, get_redis
from workers import protocol
from workers.models import Replica
from workers.runtimes.base import WAITING_FOR_CAPACITY

SERVING_STATES = (Replica.State.STARTING, Replica.State.READY)

TASK_FIELDS = ("args", "url", "return_pickled")
# Fields of a request body that may be passed to the replica as it came (see payload_json).
BODY_FIELDS_AS_IS = frozenset(("args", "url", "return_pickled", "timeout_seconds"))


class SyncTimeoutError(ApplicationError):
    status_code = 504


def task_payload(data: dict) -> dict:
    """Validate a predict request body; returns what the replica gets."""
    if not isinstance(data, dict):
        raise FieldError("body", "must be a JSON object with args or url")
    if data.get("cloudpickle") is not None:
        raise FieldError("cloudpickle", "pickled inputs are not accepted; send args (JSON) or url")
    if data.get("destination_path") is not None:
        raise FieldError("destination_path", "results are kept with the task here; leave it out and read "
                                             "result or result_url")
    if data.get("num_retries") is not None:
        raise FieldError("num_retries", "not supported: a task is retried only when its replica dies "
                                        "(up to TASK_MAX_ATTEMPTS times); leave it out")
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


def payload_json(payload: dict, body: dict, body_text: bytes | None) -> str | bytes:
    """The payload as the replica reads it. A request body that holds nothing but the fields
    of a task goes as it came, as bytes (no second encoding of a large `args`, no decoding):
    the replica reads args/url/return_pickled from it just the same."""
    if body_text is not None and isinstance(body, dict) and body.keys() <= BODY_FIELDS_AS_IS:
        return body_text
    return json.dumps(payload)


def task_submit(*, endpoint: ModelEndpoint, payload: dict, callback: tuple[str, dict | None] | None = None,
                payload_text: str | None = None, rate_key: str | None = None) -> str:
    """Queue a task and return its id, from sync code (the dashboard); the API's views await
    submit_async. With `callback` (url, auth: endpoints.callbacks), its outcome is posted
    there when it ends. `payload_text`: the payload's JSON when the caller has it
    (payload_json). With `rate_key` (the API key's prefix), the key's inference rate limit
    applies (429, accounts.throttling)."""
    submission = prepare_submit(endpoint=endpoint, payload=payload, callback=callback, payload_text=payload_text,
                                rate_key=rate_key)
    with get_redis().pipeline(transaction=False) as pipe:
        added = _queue(pipe, submission)
        replies = pipe.execute()
    added(replies)  # no route_generation: always added (an error in its transaction is raised)
    _count(submission, replies)
    return submission.task_id


@dataclass(frozen=True)
class Submission:
    """A task ready to be queued: everything the Redis side needs, decided (with any database
    reads and 4xx) before it, so that the views can do this part in a thread and the Redis
    part, waits included, in the event loop."""

    endpoint_id: str
    endpoint_name: str
    task_id: str
    payload: str | bytes  # JSON text; bytes when it is the request body as it came (payload_json)
    kind: str
    ttl_seconds: int
    wake: bool
    wait_seconds: float | None = None
    callback: tuple[str, dict | None] | None = None
    rate_key: str | None = None
    # Set when the endpoint and key came from the web's route cache: the routing generation
    # they were read under (protocol.ADD_TASK_SCRIPT writes nothing if it moved: StaleRoute).
    route_generation: bytes | None = None

    @property
    def keys(self) -> protocol.Keys:
        return protocol.Keys(protocol.endpoint_prefix(self.endpoint_id))


def _submission(endpoint: ModelEndpoint, payload: str | bytes, *, kind: str, wait_seconds: float | None = None,
                callback: tuple[str, dict | None] | None = None, rate_key: str | None = None) -> Submission:
    return Submission(
        endpoint_id=endpoint.id, endpoint_name=endpoint.name, task_id=protocol.task_id_for(endpoint.id, uuid.uuid4().hex),
        payload=payload, kind=kind, ttl_seconds=_ttl(endpoint), wake=endpoint.desired_workers == 0,
        wait_seconds=wait_seconds, callback=callback, rate_key=rate_key,
    )


def prepare_submit(*, endpoint: ModelEndpoint, payload: dict, callback: tuple[str, dict | None] | None = None,
                   payload_text: str | bytes | None = None, rate_key: str | None = None) -> Submission:
    """An async task (submit_async queues it)."""
    throttling.check_key_rate(rate_key)
    _check_not_deleting(endpoint)
    return _submission(endpoint, payload_text or json.dumps(payload), kind="async", callback=callback,
                       rate_key=rate_key)


def prepare_sync(*, endpoint: ModelEndpoint, payload: dict, timeout_seconds: float | None,
                 payload_text: str | bytes | None = None, rate_key: str | None = None) -> Submission:
    """A sync task (run_sync_async queues it and waits): up to SYNC_TASK_TIMEOUT_SECONDS, or
    less when the request asks. An endpoint that cannot serve answers at once (503)."""
    throttling.check_key_rate(rate_key)
    _check_can_serve(endpoint)
    limit = settings.SYNC_TASK_TIMEOUT_SECONDS
    return _submission(endpoint, payload_text or json.dumps(payload), kind="sync",
                       wait_seconds=min(timeout_seconds or limit, limit), rate_key=rate_key)


def prepare_stream(*, endpoint: ModelEndpoint, payload: dict, rate_key: str | None = None) -> Submission:
    """A streaming task (stream_records queues it and reads what it yields)."""
    throttling.check_key_rate(rate_key)
    _check_can_serve(endpoint)
    if payload.get("return_pickled"):
        raise FieldError("return_pickled", "a stream sends JSON items; return_pickled is not offered")
    return _submission(endpoint, json.dumps({**payload, "stream": True}), kind="stream", rate_key=rate_key)


class StaleRoute(Exception):
    """A submission made from cached lookups whose routing generation has moved: nothing was
    queued; look the key and endpoint up again and submit anew."""


async def submit_async(clients: AsyncRedis, submission: Submission) -> str:
    """Queue the task in one round trip; returns its id."""
    pipe = clients.pipelines.pipeline()
    added = _queue(pipe, submission)
    replies = await clients.pipelines.execute(pipe)
    _check_added(added(replies))
    _count(submission, replies)
    return submission.task_id


async def run_sync_async(clients: AsyncRedis, submission: Submission) -> tuple[str, dict]:
    """Queue the task and wait for its final record in one round trip (bounded by the wait
    plus WAIT_MARGIN_SECONDS, so that the wait's own timeout runs out first). The record is
    protocol.parse_final_record's: the result comes as a JSON string literal (bytes). Past the
    wait: 504 naming the task, which stays readable for its TTL."""
    pipe = clients.pipelines.pipeline()
    added = _queue(pipe, submission)
    # Redis runs a pipeline's commands in order: the BLPOP at its end blocks until the
    # replica pushes the final record (or the timeout; at once when nothing was added).
    protocol.wait_final(pipe, submission.keys, submission.task_id, timeout_seconds=submission.wait_seconds)
    replies = await clients.pipelines.execute(pipe, timeout=submission.wait_seconds + WAIT_MARGIN_SECONDS)
    _check_added(added(replies))
    _count(submission, replies)
    task_id, answer = submission.task_id, replies[-1]
    if answer is None:
        # Answered later, the task must stay readable for its TTL (the error says where); if
        # it finished in the meantime, its record is the answer after all.
        async with clients.client.pipeline(transaction=True) as transaction:
            protocol.keep_task(transaction, submission.keys, task_id, ttl_seconds=submission.ttl_seconds)
            late = (await transaction.execute())[-1]
        if late is not None:
            return task_id, protocol.parse_final_record(late)
        raise SyncTimeoutError(
            f"endpoint {submission.endpoint_name!r} did not answer within {submission.wait_seconds:g} s; the task "
            f"{task_id} stays queued and can be read with GET /v1/async-tasks/{task_id}"
        )
    return task_id, protocol.parse_final_record(answer[1])


async def stream_records(clients: AsyncRedis, submission: Submission) -> AsyncIterator[dict | None]:
    """Yield what a queued streaming task (submit_async) produces: each item as a SUCCESS record, and
    at the end a FAILURE record when it failed (its traceback). Yields None when nothing came
    for STREAM_KEEPALIVE_SECONDS (the caller sends a keep-alive, which notices a gone client).
    When the caller stops early (its client went away) or the stream ran past
    STREAM_TIMEOUT_SECONDS, the replica is told to stop the predict."""
    keys, task_id = submission.keys, submission.task_id
    deadline = time.monotonic() + settings.STREAM_TIMEOUT_SECONDS
    next_index = 0
    finished = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                yield _failure(f"the stream ran past STREAM_TIMEOUT_SECONDS ({settings.STREAM_TIMEOUT_SECONDS:g} s)")
                return
            timeout = max(1, int(min(settings.STREAM_KEEPALIVE_SECONDS, left)))
            answer = protocol.stream_answer(keys, task_id, await clients.waiting_client.blpop(
                protocol.stream_keys(keys, task_id), timeout=timeout))
            if answer is None:
                yield None
                continue
            kind, record = answer
            if kind == "item":
                # A task run again after its replica died streams from its start: skip what
                # this client already has.
                if record["i"] == next_index:
                    next_index += 1
                    yield {"status": protocol.SUCCESS, "result": {"result": record["result"]}, "traceback": None,
                           "status_code": 200}
                continue
            finished = True
            if record["status"] != protocol.SUCCESS:
                yield _failure(record.get("traceback") or "the task failed")
            return
    finally:
        if not finished:
            async with clients.client.pipeline(transaction=False) as pipe:
                protocol.cancel_stream(pipe, keys, task_id, ttl_seconds=protocol.DONE_LIST_TTL_SECONDS)
                await pipe.execute()


def _failure(traceback: str) -> dict:
    return {"status": protocol.FAILURE, "result": None, "traceback": traceback, "status_code": 500}


def _check_can_serve(endpoint: ModelEndpoint) -> None:
    """A sync request must not wait out its timeout on an endpoint that cannot answer: one
    whose bundle failed to load, or that has no replica and cannot place one. A READY
    endpoint (the hot path) costs no query here."""
    Status = ModelEndpoint.Status
    if endpoint.status == Status.READY:
        return
    _check_not_deleting(endpoint)
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


def _check_not_deleting(endpoint: ModelEndpoint) -> None:
    """A task for an endpoint being deleted would never run: refused, whatever its kind. The
    client's own doing, and final: 409 as edits and restarts answer, not a 503 that clients
    retry."""
    if endpoint.status == ModelEndpoint.Status.DELETE_IN_PROGRESS:
        raise ConflictError(f"endpoint {endpoint.name!r} is being deleted")


def _keys(endpoint: ModelEndpoint) -> protocol.Keys:
    return protocol.Keys(protocol.endpoint_prefix(endpoint.id))


def _ttl(endpoint: ModelEndpoint) -> int:
    return endpoint.task_expires_seconds or settings.TASK_EXPIRES_SECONDS


def _queue(pipe, submission: Submission) -> Callable[[list], int]:
    """Put the task's writes on a pipeline (redis-py's, or launch_site.redis_pipelines'
    Commands: both record commands the same way); returns what reads protocol.add_task's answer
    from the replies. The rate count goes first, so that its reply is replies[0] (_count)."""
    throttling.count_key_request(pipe, submission.rate_key)
    keys, task_id, ttl = submission.keys, submission.task_id, submission.ttl_seconds
    extra = {"kind": submission.kind}
    if submission.wait_seconds is not None:
        extra["sync"] = "1"  # answered, its record shrinks (protocol.SYNC_ANSWERED_TTL_SECONDS)
    if submission.callback is not None:
        extra["callback"] = "1"
        callbacks.add_task_callback(
            pipe, endpoint_id=submission.endpoint_id, task_id=task_id, url=submission.callback[0],
            auth=submission.callback[1], ttl_seconds=ttl,
        )
    added = protocol.add_task(
        pipe, keys, task_id, submission.payload, ttl_seconds=ttl, now=time.time(), extra=extra,
        history_length=settings.REQUEST_HISTORY_LENGTH, route_generation=submission.route_generation,
        waiter=submission.wait_seconds is not None,
    )
    if submission.wake:
        # Scale from zero without waiting for the next tick.
        pipe.lpush(protocol.WAKE_KEY, "1")
    return added


def _check_added(reply) -> None:
    if not reply:
        raise StaleRoute()


def _count(submission: Submission, replies: list) -> None:
    if submission.rate_key is not None and settings.INFERENCE_RATE_LIMIT:
        throttling.record_key_count(submission.rate_key, replies[0])


def _task_keys(team: Team, task_id: str) -> protocol.Keys:
    """The keys of a task of this team's (another team's task is not found)."""
    endpoint_id = protocol.endpoint_id_of_task(task_id)
    if endpoint_id is None or not ModelEndpoint.objects.filter(pk=endpoint_id, team=team).exists():
        raise NotFoundError(f"no task {task_id!r}")
    return protocol.Keys(protocol.endpoint_prefix(endpoint_id))


def task_get(*, team: Team, task_id: str) -> dict:
    """The task record (owner-scoped: another team's task is not found), with its callback's
    outcome under `callback` when it has one."""
    client = get_redis()
    record = protocol.read_task(client, _task_keys(team, task_id), task_id)
    if record is None:
        raise NotFoundError(f"no task {task_id!r} (it may have expired)")
    record["callback"] = callbacks.callback_state(client, task_id)
    return record


def task_pickled_result(*, team: Team, task_id: str) -> bytes:
    data = get_redis().hget(_task_keys(team, task_id).task(task_id), "result_pickled")
    if data is None:
        raise NotFoundError(f"task {task_id!r} has no pickled result")
    return data

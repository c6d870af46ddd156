"""The request path's Redis protocol, shared by the gateway (web), the controller and the
replica serve loop. Plain Python: replicas import this without Django.

Every key of one endpoint (or batch job) lives under its prefix, `launch:ep:<id>:` or
`launch:job:<id>:`, so a replica can be given a Redis ACL user limited to `<prefix>*`.

  <p>queue                 list of entries (see queue_entry): a task id, or for the gateway's
                           tasks the id, its expiry and its payload, so a replica runs it
                           without reading the hash first. The gateway LPUSHes; a replica
                           BLMOVEs RIGHT->LEFT into its in-flight list (oldest first);
                           a batching replica takes several at once (TAKE_BATCH_SCRIPT).
  <p>inflight:<replica>    list of the entries a replica is running. The controller puts the
                           entries of a replica whose heartbeat stopped back on the queue.
  <p>task:<task_id>        hash, expires after task_expires_seconds:
                             payload_preview  the start of an inline payload (dashboard)
                             payload      JSON request, only for tasks whose queue entry is a
                                          bare id (batch chunks: {"items": [{"id", "args"|"url"}
                                          ...]}); the gateway's entries carry it, stored once
                             sync         "1" while a sync waiter waits for it: answered, the
                                          hash never gets the result (the waiter does, through
                                          the done list) and expires after
                                          SYNC_ANSWERED_TTL_SECONDS
                             status       PENDING | STARTED | SUCCESS | FAILURE
                             attempts     times a replica started it
                             result       JSON text of the output (not pickled)
                             result_pickled  cloudpickle bytes (return_pickled)
                             traceback    the error text on FAILURE
                             created_at, started_at, finished_at   unix seconds
                             replica      the replica that last ran it
                             kind         sync | async (the gateway's tasks)
                             callback     "1" when the control plane posts the outcome to a
                                          callback URL (its URL and credentials live in the
                                          control plane's own keys, never here)
  <p>done:<task_id>        list; the final record is LPUSHed here for a sync waiter blocked
                           on BLPOP (with the result only when a waiter waited on the
                           task: finish_arguments). Expires quickly. See final_record.
  <p>running               sorted set: task id -> started_at, of the tasks a replica runs now;
                           the controller fails the ones older than the endpoint's task
                           timeout (and kills their replica).
  <p>hb:<replica>          heartbeat, a key with a short TTL refreshed by the replica.
  <p>replica:<replica>     hash: state (loading|ready|failed|stopping), error (load
                           traceback), python_version, pid, updated_at, and the cold start's
                           phase times (unix seconds): t_started (the process runs),
                           t_downloaded (bundle fetched), t_loaded (predict function built),
                           t_ready (serving).
  <p>stats                 hash of counters: completed, failed.
  <p>latency               hash: a histogram per timing of finished tasks, written by the
                           FINISH script: `<timing>:<bucket>` counts (not cumulative; bucket
                           is an upper bound of LATENCY_BUCKETS or +Inf), `<timing>:sum`,
                           `<timing>:count`; timings: queue_wait (created -> started), run
                           (started -> finished), total (created -> finished).
  <p>history               list: the ids of the endpoint's newest tasks (newest first),
                           capped at the gateway's history length (LPUSH + LTRIM in the
                           submit pipeline).
  <p>samples               list: JSON samples of the counters every few seconds, newest first
                           (workers.metrics, for the dashboard's charts).
  <p>daily                 hash: UTC day (YYYY-MM-DD) -> completed + failed at the first sample
                           of that day (workers.metrics: requests per day on the usage page).
  <p>stream:<task_id>      list; a streaming task's items, each `{"i": n, "result": JSON text}`,
                           RPUSHed by the replica as the predict yields them. The gateway pops
                           them (BLPOP on this list, then the done list), so the final record
                           comes after the last item. Expires with the done list.
  <p>cancel:<task_id>      set by the gateway when a streaming client went away (or its stream
                           timed out); the replica checks it between items and stops the predict.
  <p>callbacks             list of ids of tasks that ended and carry the `callback` flag,
                           LPUSHed by the scripts that finish a task; the controller's tick
                           drains it into delivery jobs (endpoints.callbacks).

This module is the one owner of the task record: the gateway, the batch runner, the
controller and the serve loop write, read, requeue and fail tasks only through the functions
and scripts here, so a task's status moves by one set of rules:

  PENDING --(a replica takes it: attempts += 1)--> STARTED --> SUCCESS | FAILURE
  STARTED --(its replica died)--> PENDING again, or FAILURE once attempts reach the maximum
  STARTED --(ran past the task timeout)--> FAILURE "timed out after N s"

The first final outcome wins: a task already SUCCESS or FAILURE is never rewritten (a replica
that was given up on and finishes later changes nothing).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

import orjson

PENDING = "PENDING"
STARTED = "STARTED"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"

REPLICA_LOADING = "loading"
REPLICA_READY = "ready"
REPLICA_FAILED = "failed"
REPLICA_STOPPING = "stopping"

DONE_LIST_TTL_SECONDS = 120
# An answered sync task had its result delivered through the done list: its hash keeps only
# its small fields (status, timings, replica, error; a pickled result, which its result_url
# serves), for the dashboard's request list, and only this long, instead of payload and result for the task TTL (a 1 MB sync request would
# otherwise hold its megabytes for a day). A waiter that timed out (504) turns its task into
# an ordinary one first (keep_task), see endpoints.gateway.
SYNC_ANSWERED_TTL_SECONDS = 600
# What the hash keeps of an inline payload (the queue entry carries the whole of it).
PAYLOAD_PREVIEW_CHARS = 2000
TERMINAL = (SUCCESS, FAILURE)

# Asks the controller's tick loop to run now (a task arrived for an endpoint at zero replicas).
WAKE_KEY = "launch:controller:wake"
# Moves whenever what the web's route cache holds is written (launch_site.route_generation).
ROUTE_GENERATION_KEY = "launch:route-generation"

# A replica's exit status after a task raised MemoryError under a resource limit (rlimit): the
# task is already FAILURE "out of memory"; the controller replaces the replica.
EXIT_OUT_OF_MEMORY = 3


def endpoint_prefix(endpoint_id: str) -> str:
    return f"launch:ep:{endpoint_id}:"


def job_prefix(job_id: str) -> str:
    return f"launch:job:{job_id}:"


def owner_prefix(owner_kind: str, owner_id: str) -> str:
    """The prefix of a replica's owner: an endpoint, or a batch job."""
    return endpoint_prefix(owner_id) if owner_kind == "endpoint" else job_prefix(owner_id)


class Keys:
    """Key names under one prefix."""

    __slots__ = ("daily", "history", "latency", "prefix", "queue", "samples", "stats")

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.queue = prefix + "queue"
        self.stats = prefix + "stats"
        self.latency = prefix + "latency"
        self.history = prefix + "history"
        self.samples = prefix + "samples"
        self.daily = prefix + "daily"

    def inflight(self, replica_id: str) -> str:
        return f"{self.prefix}inflight:{replica_id}"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}task:{task_id}"

    def done(self, task_id: str) -> str:
        return f"{self.prefix}done:{task_id}"

    def heartbeat(self, replica_id: str) -> str:
        return f"{self.prefix}hb:{replica_id}"

    def replica(self, replica_id: str) -> str:
        return f"{self.prefix}replica:{replica_id}"

    @property
    def inflight_pattern(self) -> str:
        return f"{self.prefix}inflight:*"

    @property
    def running(self) -> str:
        return self.prefix + "running"

    @property
    def callbacks(self) -> str:
        return self.prefix + "callbacks"

    def stream(self, task_id: str) -> str:
        return f"{self.prefix}stream:{task_id}"

    def cancel(self, task_id: str) -> str:
        return f"{self.prefix}cancel:{task_id}"


def queue_entry(task_id: str, *, expires_at: float | None = None, payload: str | bytes | None = None) -> str | bytes:
    """`<task_id>` alone (the replica reads the payload from the task hash), or
    `<task_id> <expires_at> <payload JSON>`. Task ids hold no spaces. A payload given as bytes
    (the request body as it came) gives bytes: the body is copied once, into the entry."""
    if payload is None:
        return task_id
    if isinstance(payload, bytes):
        return b"%b %.3f %b" % (task_id.encode(), expires_at, payload)
    return f"{task_id} {expires_at:.3f} {payload}"


def parse_entry(entry: bytes | str) -> tuple[str, float | None, memoryview | str | None]:
    """(task id, expires_at, payload) of a queue entry; the last two are None for a bare id.
    The payload of an entry read from Redis (bytes) is a view into it, not a copy (load_json
    reads it as it is)."""
    if isinstance(entry, str):
        task_id, _, rest = entry.partition(" ")
        if not rest:
            return task_id, None, None
        expires_at, _, payload = rest.partition(" ")
        return task_id, float(expires_at), payload
    id_end = entry.find(b" ")
    if id_end < 0:
        return entry.decode(), None, None
    expiry_end = entry.index(b" ", id_end + 1)
    return entry[:id_end].decode(), float(entry[id_end + 1:expiry_end]), memoryview(entry)[expiry_end + 1:]


# orjson reads an integer outside [-2**63, 2**64) as a float, without an error; any such float
# has a magnitude of at least this (a genuine float that large is read again too: same value).
_ORJSON_EXACT_BELOW = 2.0**63
# Items _floats_past_exact looks at one by one before it gives up for the text's digits.
_WALK_BUDGET = 1000
# The digits of such an integer: at least 19 in a row (-9223372036854775809 is the shortest).
_DIGITS_ONLY = bytes(ord("1") if chr(byte).isdigit() and byte < 128 else ord("0") for byte in range(256))
_LONG_DIGIT_RUN = b"1" * 19


def load_json(data: bytes | memoryview | str):
    """What json.loads reads from a request body or a task's payload (UTF-8 JSON), at
    orjson's speed (2x on a 1 MB string, 5x on a list of floats: bench/payload_reading.py).
    json.loads reads it again wherever orjson would read it differently or refuses it, so a
    value is read as it always was and a bad one fails as it did, with json's message: an
    integer orjson would turn into a float (see _ORJSON_EXACT_BELOW), and what orjson refuses
    and json.loads takes (NaN, Infinity, 1e400, lone surrogates, nesting past 1,024) or
    refuses too. Raises ValueError (json.JSONDecodeError, UnicodeDecodeError)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data if isinstance(data, str) else bytes(data).decode())
    found = _floats_past_exact(value)
    if found is None:  # too many items to look at one by one: the text tells (a 1 MB in ~0.7 ms)
        text = data.encode() if isinstance(data, str) else bytes(data)
        found = _LONG_DIGIT_RUN in text.translate(_DIGITS_ONLY)
    if found:
        return json.loads(data if isinstance(data, str) else bytes(data).decode())
    return value


def _floats_past_exact(value) -> bool | None:
    """Whether a value orjson read holds a float of magnitude _ORJSON_EXACT_BELOW or more (see
    _holds_float; a list of numbers by its min and max: 100,000 floats in ~1 ms)."""
    limit = _ORJSON_EXACT_BELOW
    return _holds_float(value, lambda number: not -limit < number < limit,
                        lambda numbers: not (-limit < min(numbers) and max(numbers) < limit))


def _holds_float(value, bad: Callable[[float], bool], bad_numbers: Callable[[list | tuple], bool]) -> bool | None:
    """Whether `value`, made of what JSON is read into or written from (dict, list, tuple, str,
    int, float, bool, None), holds a float that is `bad`; None past _WALK_BUDGET items (a Python
    loop costs ~100 ns an item, more than json.loads saves on many small objects) or at a value
    of any other type. A list or tuple of numbers is checked at once, at C speed, by
    `bad_numbers` (which raises TypeError or OverflowError when they are not all numbers, to be
    looked at one by one) and counts as one item."""
    budget = _WALK_BUDGET
    pending = [value]
    while pending:
        container = pending.pop()
        kind = type(container)
        if kind is float:
            if bad(container):
                return True
            continue
        if kind in _PLAIN_LEAVES:
            continue
        if kind is list or kind is tuple:
            if container and type(container[0]) in (float, int):
                try:
                    if bad_numbers(container):
                        return True
                    continue
                except (TypeError, OverflowError):  # not numbers only: item by item below
                    pass
        elif kind is dict:
            container = container.values()
        else:
            return None
        budget -= len(container)
        if budget < 0:
            return None
        pending.extend(container)
    return False


# The types _holds_float passes over: JSON's own, which orjson writes as json.dumps does.
_PLAIN_LEAVES = frozenset((str, int, bool, type(None)))


def task_id_for(endpoint_id: str, unique: str) -> str:
    """Task ids carry their endpoint id so a lookup needs no index: `<endpoint>-<hex>`."""
    return f"{endpoint_id}-{unique}"


def endpoint_id_of_task(task_id: str) -> str | None:
    endpoint_id, sep, unique = task_id.rpartition("-")
    if not sep or not endpoint_id or not unique:
        return None
    return endpoint_id


def wake_controller(client) -> None:
    client.lpush(WAKE_KEY, "1")
    client.ltrim(WAKE_KEY, 0, 0)


def final_record(status: str, *, result: str | None = None, traceback: str | None = None,
                 result_pickled: bool = False) -> bytes:
    """What a sync waiter pops from the done list: a JSON header (status, traceback,
    result_pickled) and, after a newline, the result text as a JSON string literal. The
    literal is made here, in the replica, so that the web process puts it into the response
    as it is (the contract's `{"result": "<json text>"}`), never decoding and re-encoding a
    large result. Neither part holds a raw newline (JSON without indent escapes them).
    `result`: result_json's text."""
    return b"".join(final_record_parts(status, result=result, traceback=traceback, result_pickled=result_pickled))


def final_record_parts(status: str, *, result: str | None = None, traceback: str | None = None,
                       result_pickled: bool = False) -> tuple[bytes, ...]:
    """final_record in pieces (the header and its newline; the literal), for a replica, which
    sends them as one value without joining them (workers.redis_wire: a tuple argument), so a
    large literal is not copied again."""
    header = json.dumps({"status": status, "traceback": traceback, "result_pickled": result_pickled}).encode()
    return (header,) if result is None else (header + b"\n", orjson.dumps(result))


def result_json(output) -> str:
    """The JSON text of a task's output: what its `result` holds, and what the client's
    json.loads reads back as the output. Written by orjson, 10-30x faster than json.dumps on
    a large output (a 1 MB string, a list of 100,000 floats: BENCHMARKS.md, "Fourth pass"),
    compact and in UTF-8. Whatever orjson would write differently from json.dumps, or refuses,
    goes through json.dumps (compact too), so that an output reads back as it did and fails
    where it did: orjson writes NaN and infinities as null (json.dumps as NaN, Infinity),
    refuses integers past 64 bits, keys that are not strings, strings with lone surrogates and
    nesting past 254 levels, and would write datetimes and dataclasses that json.dumps
    refuses (passed through to `default`, which refuses them). Left to orjson: an Enum member
    is written as its value and a UUID as its text, which json.dumps refuses."""
    try:
        text = orjson.dumps(output, default=_not_plain_json, option=_PASS_TO_DEFAULT)
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(output, separators=(",", ":"))
    # orjson writes a NaN or an infinity as null, json.dumps as NaN or Infinity. A large text is
    # told by looking at the output (the search for null costs 0.5 ms a megabyte: a third of a
    # replica's CPU for a 1 MB result); a small one, or an output too large or too unusual to
    # look through, by the text, whose every null (a None too) then sends it to json.dumps.
    nonfinite = _nonfinite_floats(output) if len(text) >= _LOOK_AT_OUTPUT_FROM_BYTES else None
    if nonfinite or (nonfinite is None and b"null" in text):
        return json.dumps(output, separators=(",", ":"))
    return text.decode()


# From this size of a result's text, looking at the output costs less than searching the text.
_LOOK_AT_OUTPUT_FROM_BYTES = 16 * 1024


def _nonfinite_floats(value) -> bool | None:
    """Whether an output holds a NaN or an infinity (see _holds_float; a list of numbers by its
    sum, which NaN and the infinities carry through). A sum that overflows says True: json.dumps
    then writes the output, which reads back the same."""
    return _holds_float(value, lambda number: not math.isfinite(number),
                        lambda numbers: not math.isfinite(sum(numbers)))


_PASS_TO_DEFAULT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _not_plain_json(value):
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def parse_final_record(raw: bytes) -> dict:
    """The done-list record as {status, traceback, result_pickled, result_literal}: the last
    is the result's JSON string literal as a view into `raw` (json.loads of its bytes gives
    the result text), or None. Records the controller writes (failures) have no literal."""
    end = raw.find(b"\n")
    record = json.loads(raw if end < 0 else raw[:end])
    record.pop("result", None)
    record["result_literal"] = memoryview(raw)[end + 1:] if 0 <= end < len(raw) - 1 else None
    return record


def final_record_with_text(raw: bytes) -> dict:
    """parse_final_record, with the result text decoded into `result` (None without one)."""
    record = parse_final_record(raw)
    literal = record.pop("result_literal")
    record["result"] = json.loads(bytes(literal)) if literal is not None else None
    return record


# --- writing a task (gateway, batch runner) --------------------------------------------------

# A task's writes as one script: on the inference hot path, one command to send and one reply
# to read instead of five. A submit made from the web's route cache (endpoints.route_cache)
# also passes the routing generation its lookups were read under: when it is no longer the
# current one, nothing is written and the script answers 0 (and, for a sync waiter, pushes
# STALE_ROUTE onto the task's done list, so that its BLPOP in the same round trip returns at
# once); the caller looks the route up again and submits anew.
# KEYS: task, queue, history, generation, done. ARGV: expected generation ('' for none),
# ttl_seconds, queue entry ('' when it was pushed just before, in the same transaction: see
# add_task), task_id, history_length, signal the waiter ('1' or ''), then the hash's fields
# and values.
ADD_TASK_SCRIPT = """
local pushed = ARGV[3] == ''
if ARGV[1] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[1] then
  if pushed then
    redis.call('LTRIM', KEYS[2], 1, -1)  -- the entry pushed just before: taken back unread
  end
  if ARGV[6] == '1' then
    redis.call('RPUSH', KEYS[5], 'stale-route')
    redis.call('EXPIRE', KEYS[5], 60)
  end
  return 0
end
local written = redis.pcall('HSET', KEYS[1], unpack(ARGV, 7))
if type(written) == 'table' and written.err then
  if pushed then
    redis.call('LTRIM', KEYS[2], 1, -1)  -- refused whole: no entry without its hash
  end
  return written
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
if ARGV[3] ~= '' then
  redis.call('LPUSH', KEYS[2], ARGV[3])
end
local history_length = tonumber(ARGV[5])
if history_length > 0 then
  redis.call('LPUSH', KEYS[3], ARGV[4])
  redis.call('LTRIM', KEYS[3], 0, history_length - 1)
end
return 1
"""
STALE_ROUTE = b"stale-route"
# A queue entry this long is pushed by a plain LPUSH ahead of the script, in one transaction
# with it (MULTI/EXEC: no replica takes it before the script has run; the script takes it back
# when it writes nothing: a stale route, a hash it cannot write), not passed through the
# script: Lua copies an argument in and back out, and interns it (comparing it with an equal
# string still alive, byte by byte): 1.3 ms of Redis's CPU per 1 MB task (BENCHMARKS.md,
# "Fifth pass: payloads read by orjson").
PUSHED_APART_BYTES = 64 * 1024


def add_task(pipe, keys: Keys, task_id: str, payload_json: str | bytes, *, ttl_seconds: int, now: float,
             inline: bool = True, extra: dict | None = None, history_length: int = 0,
             route_generation: bytes | None = None, waiter: bool = False) -> Callable[[list], int]:
    """Queue a new task on a pipeline: the hash (with its TTL) and the queue entry. Returns what
    reads its answer from the pipeline's replies: 1, or 0 when `route_generation` is given and
    no longer current (nothing written; with `waiter`, STALE_ROUTE is pushed for the sync
    waiter, see ADD_TASK_SCRIPT). `inline` puts the payload in the entry instead of the hash,
    so it is stored once and a replica runs the task without reading the hash (a requeue
    moves the entry, payload and all); the hash keeps only its first PAYLOAD_PREVIEW_CHARS for
    the dashboard. `history_length` > 0 also records the id in the owner's capped list of
    recent tasks."""
    fields = {"status": PENDING, "attempts": 0, "created_at": now, **(extra or {})}
    if inline:
        fields["payload_preview"] = _preview(payload_json)
    else:
        fields["payload"] = payload_json
    entry = queue_entry(task_id, expires_at=now + ttl_seconds, payload=payload_json) if inline else task_id
    start, apart = len(pipe), len(entry) >= PUSHED_APART_BYTES
    if apart:
        pipe.execute_command("MULTI")
        pipe.lpush(keys.queue, entry)
    pipe.eval(
        ADD_TASK_SCRIPT, 5, keys.task(task_id), keys.queue, keys.history, ROUTE_GENERATION_KEY, keys.done(task_id),
        route_generation or "", ttl_seconds, "" if apart else entry, task_id, history_length, "1" if waiter else "",
        *[part for pair in fields.items() for part in pair],
    )
    if not apart:
        return lambda replies: _answer(replies[start])
    pipe.execute_command("EXEC")
    return lambda replies: _answer(replies[start + 3][1])


def _answer(reply):
    """A script's reply; an error reply is raised (one in EXEC's replies, or from a pipeline
    that does not raise them itself)."""
    if isinstance(reply, Exception):
        raise reply
    return reply


def _preview(payload_json: str | bytes) -> str:
    """The first PAYLOAD_PREVIEW_CHARS characters and one more (which says it was cut); of a
    body given as bytes (UTF-8, at most 4 bytes a character), only its start is decoded, and
    a character cut at that end is left out."""
    if isinstance(payload_json, bytes):
        payload_json = payload_json[: 4 * (PAYLOAD_PREVIEW_CHARS + 1)].decode(errors="ignore")
    return payload_json[: PAYLOAD_PREVIEW_CHARS + 1]


# Redis turns a blocking timeout into whole milliseconds, truncating, and 0 blocks forever:
# 0.001 s already does (0.001 * 1000 is 0.999... in floating point). 10 ms leaves a margin.
MIN_BLOCKING_SECONDS = 0.01


def blocking_timeout(seconds: float) -> float:
    """A BLPOP timeout that waits about `seconds` (a sub-millisecond wait is never "forever")."""
    return max(seconds, MIN_BLOCKING_SECONDS)


def wait_final(pipe, keys: Keys, task_id: str, *, timeout_seconds: float) -> None:
    """On a pipeline: block until the task's final record is pushed (BLPOP). The connection's
    socket timeout must exceed the wait (launch_site.redis_client.get_waiting_redis)."""
    pipe.blpop([keys.done(task_id)], timeout=blocking_timeout(timeout_seconds))


def stream_item(index: int, result_json: str) -> str:
    """One item of a streaming task, as the replica pushes it."""
    return json.dumps({"i": index, "result": result_json})


def stream_keys(keys: Keys, task_id: str) -> list[str]:
    """What a stream's reader BLPOPs: its items, then its final record. BLPOP takes its keys
    in order, so the final record is read only once every item before it has been."""
    return [keys.stream(task_id), keys.done(task_id)]


def stream_answer(keys: Keys, task_id: str, popped: tuple[bytes, bytes] | None) -> tuple[str, dict] | None:
    """What the BLPOP on stream_keys gave: ("item", {"i", "result"}) or ("final", final
    record), or None when nothing came within its timeout."""
    if popped is None:
        return None
    key, value = popped
    kind = "item" if key.decode() == keys.stream(task_id) else "final"
    return kind, json.loads(value) if kind == "item" else final_record_with_text(value)


def cancel_stream(pipe, keys: Keys, task_id: str, *, ttl_seconds: int) -> None:
    """On a pipeline: ask the replica running a streaming task to stop it (its client went away)."""
    pipe.set(keys.cancel(task_id), "1", ex=max(1, ttl_seconds))
    pipe.delete(keys.stream(task_id))


def keep_task(pipe, keys: Keys, task_id: str, *, ttl_seconds: int) -> None:
    """On a transaction pipeline: a sync task whose waiter gave up becomes an ordinary task
    (readable with GET /v1/async-tasks for its TTL), in one transaction with taking its final
    record, if it has one (the last reply): when it finished in between, its result went to
    the done list only, and the caller answers with it instead."""
    pipe.hdel(keys.task(task_id), "sync")
    pipe.expire(keys.task(task_id), ttl_seconds)
    pipe.lpop(keys.done(task_id))


def read_task(client, keys: Keys, task_id: str) -> dict | None:
    """The record as the API shows it, or None when there is no such task (or it expired)."""
    with client.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.task(task_id), ["status", "result", "traceback"])
        pipe.hexists(keys.task(task_id), "result_pickled")
        (status, result, traceback), pickled = pipe.execute()
    if status is None:
        return None
    return {
        "status": status.decode(),
        "result": result.decode() if result is not None else None,
        "traceback": traceback.decode() if traceback is not None else None,
        "result_pickled": bool(pickled),
    }


HISTORY_FIELDS = ("status", "created_at", "started_at", "finished_at", "replica", "attempts", "kind")


def _text(value: bytes | None) -> str | None:
    return value.decode(errors="replace") if value is not None else None


def _number(value: bytes | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _timings(record: dict) -> dict:
    """Queue wait and run time (seconds) from the record's timestamps, where known."""
    created, started, finished = record["created_at"], record["started_at"], record["finished_at"]
    return {
        "queue_wait": started - created if started is not None and created is not None else None,
        "run": finished - started if finished is not None and started is not None else None,
        "total": finished - created if finished is not None and created is not None else None,
    }


def recent_tasks(client, keys: Keys, *, limit: int) -> list[dict]:
    """The owner's newest tasks (newest first) with status, timings, replica and the last line
    of the error; tasks that expired are left out. Two round trips."""
    task_ids = [_text(raw) for raw in client.lrange(keys.history, 0, max(limit, 1) - 1)]
    if not task_ids:
        return []
    with client.pipeline(transaction=False) as pipe:
        for task_id in task_ids:
            pipe.hmget(keys.task(task_id), [*HISTORY_FIELDS, "traceback"])
        answers = pipe.execute()
    tasks = []
    for task_id, values in zip(task_ids, answers, strict=True):
        if values[0] is None:
            continue
        status, created, started, finished, replica, attempts, kind, error = values
        record = {
            "task_id": task_id, "status": _text(status), "created_at": _number(created),
            "started_at": _number(started), "finished_at": _number(finished), "replica": _text(replica) or "",
            "attempts": int(_number(attempts) or 0), "kind": _text(kind) or "",
        }
        lines = (_text(error) or "").strip().splitlines()
        record["error_line"] = lines[-1] if lines else ""
        record.update(_timings(record))
        tasks.append(record)
    return tasks


def read_task_detail(client, keys: Keys, task_id: str) -> dict | None:
    """Everything the task page shows (payload, timings, replica, traceback); None if gone."""
    values = client.hmget(keys.task(task_id), [*HISTORY_FIELDS, "payload_preview", "payload", "traceback"])
    if values[0] is None:
        return None
    status, created, started, finished, replica, attempts, kind, preview, payload, error = values
    payload = preview if preview is not None else payload
    record = {
        "status": _text(status), "created_at": _number(created), "started_at": _number(started),
        "finished_at": _number(finished), "replica": _text(replica) or "", "attempts": int(_number(attempts) or 0),
        "kind": _text(kind) or "", "payload": _text(payload) or "", "traceback": _text(error),
    }
    record.update(_timings(record))
    return record


def read_fields(client, keys: Keys, task_ids: list[str], fields: list[str]) -> list[list[bytes | None]]:
    """Fields of many tasks in one round trip (the batch runner reads its window this way)."""
    with client.pipeline(transaction=False) as pipe:
        for task_id in task_ids:
            pipe.hmget(keys.task(task_id), fields)
        return pipe.execute()


def tasks_exist(client, keys: Keys, task_ids: list[str]) -> list[bool]:
    with client.pipeline(transaction=False) as pipe:
        for task_id in task_ids:
            pipe.exists(keys.task(task_id))
        return [bool(found) for found in pipe.execute()]


def delete_tasks(client, keys: Keys, task_ids: list[str]) -> None:
    """Forget tasks whose outcome has been kept elsewhere (a batch job's results file)."""
    with client.pipeline(transaction=False) as pipe:
        for task_id in task_ids:
            pipe.delete(keys.task(task_id), keys.done(task_id))
        pipe.execute()


# --- running a task (serve loop) ---------------------------------------------------------------

# MARK_STARTED_SCRIPT's answers: the task expired or ended already (not marked); marked;
# marked, and a sync waiter waits for its result (the `sync` flag): see finish_arguments.
NOT_MARKED, MARKED, MARKED_WAITED_ON = 0, 1, 2

# For an entry that carries its payload: sent without waiting for the reply, so the task runs
# at once and the STARTED mark still lands in Redis before the outcome does; the replica reads
# the reply once the predict returned (it came long before), to know where the result goes.
# KEYS: task, running. ARGV: replica_id, now, task_id.
MARK_STARTED_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'SUCCESS' or status == 'FAILURE' then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'STARTED', 'started_at', ARGV[2], 'replica', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
if redis.call('HGET', KEYS[1], 'sync') == '1' then
  return 2
end
return 1
"""

# For a bare task id (batch chunks). KEYS: task, inflight, running. ARGV: entry, replica_id,
# now, task_id. Returns the payload, or nothing when the task expired or already ended
# (dropped from in-flight).
START_SCRIPT = """
local payload = redis.call('HGET', KEYS[1], 'payload')
local status = redis.call('HGET', KEYS[1], 'status')
if (not payload) or status == 'SUCCESS' or status == 'FAILURE' then
  redis.call('LREM', KEYS[2], 0, ARGV[1])
  return false
end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'STARTED', 'started_at', ARGV[3], 'replica', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return payload
"""

# Request batching (docs/batching.md): up to ARGV[1] more entries, oldest first, moved from the
# queue into the replica's in-flight list in one atomic step, so a replica killed while it
# waits for its batch to fill (or runs it) leaves every entry where the controller requeues
# it (REQUEUE_SCRIPT). Sent right after a BLMOVE in the same round trip: the BLMOVE blocks
# for the first entry, then this takes the ones waiting behind it.
# KEYS: queue, inflight. ARGV: how many at most. Returns the entries taken.
TAKE_BATCH_SCRIPT = """
local taken = {}
for _ = 1, tonumber(ARGV[1]) do
  local entry = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not entry then break end
  taken[#taken + 1] = entry
end
return taken
"""


def take_batch(connection, keys: Keys, inflight: str, *, first_timeout: float, most: int) -> list[bytes]:
    """One round trip on a connection of the caller's own: block up to `first_timeout` seconds
    for one entry (BLMOVE), then take up to `most` - 1 more that wait behind it. The entries
    taken, oldest first; each sits in `inflight` until FINISH_SCRIPT (or a requeue) takes it out."""
    connection.send_command("BLMOVE", keys.queue, inflight, "RIGHT", "LEFT", first_timeout)
    connection.send_command("EVAL", TAKE_BATCH_SCRIPT, 2, keys.queue, inflight, max(0, most - 1))
    first, rest = connection.read_response(), connection.read_response()
    return ([first] if first is not None else []) + list(rest or [])


# Upper bounds (seconds) of the latency histograms' buckets (the `latency` hash), and the
# Lua that counts one observation into them: part of the FINISH script, so timing a task costs
# no round trip of its own.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
LATENCY_TIMINGS = ("queue_wait", "run", "total")


def bucket_label(upper: float) -> str:
    """The hash field's bound as Lua's tostring writes it (1 -> "1", 0.5 -> "0.5")."""
    return str(int(upper)) if upper == int(upper) else repr(upper)


_OBSERVE_FUNCTION = "local buckets = {" + ", ".join(bucket_label(b) for b in LATENCY_BUCKETS) + "}" + """
local function observe(key, timing, seconds)
  if seconds < 0 then seconds = 0 end
  local bound = '+Inf'
  for _, upper in ipairs(buckets) do
    if seconds <= upper then bound = tostring(upper) break end
  end
  redis.call('HINCRBY', key, timing .. ':' .. bound, 1)
  redis.call('HINCRBY', key, timing .. ':count', 1)
  redis.call('HINCRBYFLOAT', key, timing .. ':sum', seconds)
end
"""


# Takes one entry of a task out of an in-flight list, found by the task's id, so that the entry
# itself (for the gateway's tasks: the whole payload) is not sent back by the replica nor written
# to the append-only file again: a script's writes are propagated as the commands it runs, and
# `LREM <list> 0 <entry>` would carry the entry. The entry found is overwritten with the bare id
# (LSET), which LREM then removes: both carry only the id. Searched from the oldest end, where a
# replica's next finished task sits (a batch finishes in the order it was taken). Each take of an
# entry (BLMOVE, TAKE_BATCH_SCRIPT) is matched by one removal. Returns whether it found one.
_DROP_INFLIGHT_FUNCTION = """
local function drop_inflight(key, task_id)
  local prefix = task_id .. ' '
  for i = -1, -redis.call('LLEN', key), -1 do
    local entry = redis.call('LINDEX', key, i)
    if entry == task_id or string.sub(entry, 1, #prefix) == prefix then
      if entry ~= task_id then
        redis.call('LSET', key, i, task_id)
      end
      redis.call('LREM', key, -1, task_id)
      return true
    end
  end
  return false
end
"""


# KEYS: task, inflight, done, stats, running, callbacks. ARGV: status, result (or ''),
# traceback, pickled (or ''), now, done_record, done_ttl, counter, task_id, sync_answered_ttl,
# literal_at (or ''), sole ('1' when the in-flight list can hold nothing but this task's entry:
# a replica that takes one task at a time; the list is then deleted instead of searched, which
# would copy the entry, payload and all, into Lua). See finish_arguments for where the result
# travels.
# The task hash is only written while it exists (an expired task must not come back without
# a TTL) and is not final yet (the first outcome wins). The done list is filled either way
# so a sync waiter is answered. The latency hash sits next to stats (same prefix). An
# answered sync task keeps only its small fields, for SYNC_ANSWERED_TTL_SECONDS: its waiter
# gets the result from the done list, and the hash never holds it. A result that came only
# inside the done record while the hash needs it (its waiter gave up during the run, see
# keep_task) is decoded from the record's JSON literal here.
# The record pushed for a waiter (the task's `sync` flag) is kept out of the append-only file
# and Redis's replicas (set_repl): the waiter's BLPOP takes it the moment this script ends, and a
# Redis restart ends the waiter's connection anyway, so a replay has no one to give it to (the
# record holds the result: a 1 MB result wrote a megabyte to the file for nothing). The pop
# and the EXPIRE are propagated and replay on a key that is not there: nothing (the EXPIRE
# stays in, so that a list that held anything else never outlives its TTL after a replay).
# What that gives up: a waiter that timed out in the instant before the replica finished
# reads the record with keep_task's LPOP, and a redis-server killed between the two (a
# millisecond) loses that result. (Effects
# replication is the default since Redis 5 and the only mode of 7; replicate_commands makes it
# sure on a 6.2 configured otherwise, before the first write as it must be.)
FINISH_SCRIPT = _OBSERVE_FUNCTION + _DROP_INFLIGHT_FUNCTION + """
redis.replicate_commands()
if ARGV[12] == '1' then
  redis.call('DEL', KEYS[2])
else
  drop_inflight(KEYS[2], ARGV[9])
end
redis.call('ZREM', KEYS[5], ARGV[9])
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'SUCCESS' or status == 'FAILURE' then
  return 0
end
local waited_on = false
if status then
  redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', ARGV[5])
  waited_on = redis.call('HGET', KEYS[1], 'sync') == '1'
  if ARGV[1] == 'SUCCESS' then
    if ARGV[4] ~= '' then
      redis.call('HSET', KEYS[1], 'result_pickled', ARGV[4])  -- kept for a waiter too: its result_url
    elseif not waited_on then
      local result = ARGV[2]
      if ARGV[11] ~= '' then
        result = cjson.decode(string.sub(ARGV[6], tonumber(ARGV[11])))
      end
      redis.call('HSET', KEYS[1], 'result', result)
    end
  else
    redis.call('HSET', KEYS[1], 'traceback', ARGV[3])
  end
  if redis.call('HEXISTS', KEYS[1], 'callback') == 1 then
    redis.call('LPUSH', KEYS[6], ARGV[9])
  end
  if waited_on then
    redis.call('EXPIRE', KEYS[1], ARGV[10])
  end
end
if waited_on then
  redis.set_repl(redis.REPL_NONE)
end
redis.call('LPUSH', KEYS[3], ARGV[6])
redis.set_repl(redis.REPL_ALL)
redis.call('EXPIRE', KEYS[3], ARGV[7])
redis.call('HINCRBY', KEYS[4], ARGV[8], 1)
-- Timings last: the outcome above is recorded whatever happens here.
if status then
  local times = redis.call('HMGET', KEYS[1], 'created_at', 'started_at')
  local now, created, started = tonumber(ARGV[5]), tonumber(times[1]), tonumber(times[2])
  local latency = string.sub(KEYS[4], 1, -6) .. 'latency'
  if created and started then observe(latency, 'queue_wait', started - created) end
  if started then observe(latency, 'run', now - started) end
  if created then observe(latency, 'total', now - created) end
end
return 1
"""


# A result this long or longer crosses to Redis once (finish_arguments); for that the replica
# reads MARK_STARTED_SCRIPT's answer before it sends FINISH_SCRIPT, which costs a small task
# up to a round trip (its predict returns before the answer comes): a shorter result is sent
# both ways at once instead.
ONE_COPY_MIN_CHARS = 64 * 1024


def finish_arguments(status: str, result: str, traceback: str, pickled: bytes, *,
                     mark: int | None) -> tuple[str, tuple[bytes, ...], str]:
    """(result, done record in pieces (final_record_parts), literal_at) of FINISH_SCRIPT. `mark` is MARK_STARTED_SCRIPT's
    answer, None when the replica did not wait for it (a result under ONE_COPY_MIN_CHARS):
    then the result goes both ways, as text for the hash and inside the done record, and the
    script keeps what the task needs. Otherwise it crosses to Redis once. A task a sync waiter
    waited on when it started (or whose hash is gone: a waiter may still be there) sends it
    only as the done record's JSON literal (final_record), which the waiter puts into its
    answer as it is; literal_at is the literal's position in the record (1-based, as Lua
    counts) for the rare case that the waiter gave up meanwhile and the hash needs the result
    after all. Any other task (async, streaming, a batch chunk) sends the text for the hash
    and a done record without it (no waiter reads it: a stream's reader needs only its
    status)."""
    text_result = result if status == SUCCESS and not pickled else None
    header_only = final_record_parts(status, traceback=traceback or None, result_pickled=bool(pickled))
    if text_result is None or mark == MARKED:
        return text_result or "", header_only, ""
    record = final_record_parts(status, result=text_result, traceback=traceback or None, result_pickled=bool(pickled))
    if mark is None:
        return text_result, record, ""
    return "", record, str(len(header_only[0]) + 2)


# --- taking tasks back (controller) ----------------------------------------------------------

# Fails one task unless it is final already, and takes it out of its replica's in-flight list.
# Shared by the two scripts below.
_FAIL_FUNCTION = """
local function fail(prefix, task_id, reason, now, done_ttl)
  local task_key = prefix .. 'task:' .. task_id
  local status = redis.call('HGET', task_key, 'status')
  redis.call('ZREM', prefix .. 'running', task_id)
  if status == 'SUCCESS' or status == 'FAILURE' then
    return 0
  end
  if status then
    redis.call('HSET', task_key, 'status', 'FAILURE', 'traceback', reason, 'finished_at', now)
    if redis.call('HEXISTS', task_key, 'callback') == 1 then
      redis.call('LPUSH', prefix .. 'callbacks', task_id)
    end
  end
  local done = prefix .. 'done:' .. task_id
  redis.call('LPUSH', done, cjson.encode({status='FAILURE', result=cjson.null, traceback=reason,
                                          result_pickled=false}))
  redis.call('EXPIRE', done, done_ttl)
  redis.call('HINCRBY', prefix .. 'stats', 'failed', 1)
  return 1
end
"""

# Everything in a dead replica's in-flight list goes back on the queue (at the right end: it
# runs next), or fails when it has had its attempts, or at once with `fail_reason` (an
# out-of-memory death: running it again would kill the next replica the same way).
# KEYS: inflight. ARGV: prefix, max_attempts, reason, now, done_ttl, fail_reason ('' = retry).
# Returns {requeued, failed}.
REQUEUE_SCRIPT = _FAIL_FUNCTION + """
local prefix = ARGV[1]
local max_attempts = tonumber(ARGV[2])
local requeued, failed = 0, 0
for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local space = string.find(entry, ' ', 1, true)
  local task_id = space and string.sub(entry, 1, space - 1) or entry
  local task_key = prefix .. 'task:' .. task_id
  local status = redis.call('HGET', task_key, 'status')
  if status and status ~= 'SUCCESS' and status ~= 'FAILURE' then
    local attempts = tonumber(redis.call('HGET', task_key, 'attempts') or '0')
    if ARGV[6] ~= '' then
      failed = failed + fail(prefix, task_id, ARGV[6], ARGV[4], ARGV[5])
    elseif attempts >= max_attempts then
      failed = failed + fail(prefix, task_id, ARGV[3] .. '; gave up after ' .. attempts .. ' attempts', ARGV[4], ARGV[5])
    else
      redis.call('HSET', task_key, 'status', 'PENDING')
      redis.call('ZREM', prefix .. 'running', task_id)
      redis.call('RPUSH', prefix .. 'queue', entry)
      requeued = requeued + 1
    end
  else
    redis.call('ZREM', prefix .. 'running', task_id)
  end
end
redis.call('DEL', KEYS[1])
return {requeued, failed}
"""

# One task that ran past its timeout: FAILURE with the reason, out of its replica's list.
# KEYS: inflight. ARGV: prefix, task_id, reason, now, done_ttl. Returns 1 when it failed it.
TIME_OUT_SCRIPT = _FAIL_FUNCTION + _DROP_INFLIGHT_FUNCTION + """
local prefix, task_id = ARGV[1], ARGV[2]
while drop_inflight(KEYS[1], task_id) do end
return fail(prefix, task_id, ARGV[3], ARGV[4], ARGV[5])
"""


def requeue_inflight(client, keys: Keys, replica_id: str, *, reason: str, max_attempts: int,
                     fail_reason: str = "") -> tuple[int, int]:
    """Atomically put back (or fail) what a dead replica was running; (requeued, failed)."""
    requeued, failed = client.eval(
        REQUEUE_SCRIPT, 1, keys.inflight(replica_id),
        keys.prefix, max_attempts, reason, time.time(), DONE_LIST_TTL_SECONDS, fail_reason,
    )
    return int(requeued), int(failed)


def overdue_tasks(pipe, keys: Keys, *, started_before: float) -> None:
    """On a pipeline: the ids of running tasks started before `started_before`, with scores."""
    pipe.zrangebyscore(keys.running, "-inf", started_before, withscores=True)


def time_out_task(client, keys: Keys, task_id: str, replica_id: str, *, reason: str) -> bool:
    return bool(client.eval(
        TIME_OUT_SCRIPT, 1, keys.inflight(replica_id), keys.prefix, task_id, reason, time.time(),
        DONE_LIST_TTL_SECONDS,
    ))


def queue_depth(client, keys: Keys, replica_ids: list[str]) -> tuple[int, int]:
    """(queued, in flight) of one queue: the autoscaler's signal."""
    with client.pipeline(transaction=False) as pipe:
        pipe.llen(keys.queue)
        for replica_id in replica_ids:
            pipe.llen(keys.inflight(replica_id))
        answers = pipe.execute()
    return answers[0], sum(answers[1:])

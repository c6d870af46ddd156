"""The request path's Redis protocol, shared by the gateway (web), the controller and the
replica serve loop. Plain Python: replicas import this without Django.

Every key of one endpoint (or batch job) lives under its prefix, `launch:ep:<id>:` or
`launch:job:<id>:`, so a replica can be given a Redis ACL user limited to `<prefix>*`.

  <p>queue                 list of entries (see queue_entry): a task id, or for the gateway's
                           tasks the id, its expiry and its payload, so a replica runs it
                           without reading the hash first. The gateway LPUSHes; a replica
                           BLMOVEs RIGHT->LEFT into its in-flight list (oldest first).
  <p>inflight:<replica>    list of the entries a replica is running. The controller puts the
                           entries of a replica whose heartbeat stopped back on the queue.
  <p>task:<task_id>        hash, expires after task_expires_seconds:
                             payload      JSON request {args|url, return_pickled, ...}
                                          (batch chunks: {"items": [{"id", "args"|"url"}...]})
                             status       PENDING | STARTED | SUCCESS | FAILURE
                             attempts     times a replica started it
                             result       JSON text of the output (not pickled)
                             result_pickled  cloudpickle bytes (return_pickled)
                             traceback    the error text on FAILURE
                             created_at, started_at, finished_at   unix seconds
                             replica      the replica that last ran it
  <p>done:<task_id>        list; the replica LPUSHes the final record (JSON) for a sync
                           waiter blocked on BLPOP. Expires quickly.
  <p>hb:<replica>          heartbeat, a key with a short TTL refreshed by the replica.
  <p>replica:<replica>     hash: state (loading|ready|failed|stopping), error (load
                           traceback), python_version, pid, updated_at.
  <p>stats                 hash of counters: completed, failed.
"""

from __future__ import annotations

PENDING = "PENDING"
STARTED = "STARTED"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"

REPLICA_LOADING = "loading"
REPLICA_READY = "ready"
REPLICA_FAILED = "failed"
REPLICA_STOPPING = "stopping"

DONE_LIST_TTL_SECONDS = 120


def endpoint_prefix(endpoint_id: str) -> str:
    return f"launch:ep:{endpoint_id}:"


def job_prefix(job_id: str) -> str:
    return f"launch:job:{job_id}:"


class Keys:
    """Key names under one prefix."""

    __slots__ = ("prefix", "queue", "stats")

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.queue = prefix + "queue"
        self.stats = prefix + "stats"

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


def queue_entry(task_id: str, *, expires_at: float | None = None, payload: str | None = None) -> str:
    """`<task_id>` alone (the replica reads the payload from the task hash), or
    `<task_id> <expires_at> <payload JSON>`. Task ids hold no spaces."""
    if payload is None:
        return task_id
    return f"{task_id} {expires_at:.3f} {payload}"


def parse_entry(entry: bytes | str) -> tuple[str, float | None, str | None]:
    """(task id, expires_at, payload) of a queue entry; the last two are None for a bare id."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    task_id, _, rest = text.partition(" ")
    if not rest:
        return task_id, None, None
    expires_at, _, payload = rest.partition(" ")
    return task_id, float(expires_at), payload


def task_id_for(endpoint_id: str, unique: str) -> str:
    """Task ids carry their endpoint id so a lookup needs no index: `<endpoint>-<hex>`."""
    return f"{endpoint_id}-{unique}"


def endpoint_id_of_task(task_id: str) -> str | None:
    endpoint_id, sep, unique = task_id.rpartition("-")
    if not sep or not endpoint_id or not unique:
        return None
    return endpoint_id

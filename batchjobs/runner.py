"""Running a batch job: the loop that feeds its queue, collects its chunks in input order and
writes the results file (DESIGN §3 "Batch jobs").

One loop per active job, in a thread of the controller process, started by the tick hook
(`batch_tick`). A Redis lease keeps a job's loop in one place: a loop renews it every
iteration, so when a controller dies its jobs are taken up by the next tick of a controller
once the lease has lapsed (LEASE_SECONDS). Everything the loop does is keyed by the cursor
on the job row (see BatchJob), so a new loop carries on where the dead one stopped:

  1. prepare (once): count the inputs, choose the chunk size, write the file's header;
  2. feed: stream the input from the cursor, push chunks until WINDOW chunks are out;
  3. collect: the finished chunks at the head of the window, in order; append their entries
     to the results file, then record the file length and the cursor in one UPDATE, then
     delete their tasks from Redis;
  4. size replicas from the chunks left (0..max_workers), like an async endpoint;
  5. end: footer, results into the store, SUCCESS; or TIMEOUT / CANCELLED / FAILURE.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections, connections
from django.utils import timezone
from redis.exceptions import LockError

from batchjobs import storage
from batchjobs.inputs import InputError, count_items, iter_items
from batchjobs.models import (
    ACTIVE_STATUSES,
    ENDED_EARLY_STATUSES,
    FAILED_ITEM_ERROR_CHARS,
    FAILED_ITEMS_KEPT,
    BatchJob,
)
from batchjobs.results import ResultsFile
from launch_site.redis_client import get_redis
from workers import autoscaling, controller, protocol
from workers.models import LIVE_STATES, Replica

logger = logging.getLogger(__name__)

LEASE_SECONDS = 10
TARGET_CHUNKS = 200  # 100,000 inputs -> 200 chunks of 500
MAX_CHUNK_ITEMS = 1000
MAX_CHUNK_BYTES = 2 * 1024 * 1024  # no Redis value above this, whatever the items hold
MIN_WINDOW = 64
POLL_SECONDS = 0.1
# At most this many loop iterations per second: each costs a few queries, and on a small
# machine a loop spinning once per finished chunk took a fifth of a core from the replicas.
MIN_ITERATION_SECONDS = 0.25


def chunk_size_for(total: int) -> int:
    return max(1, min(MAX_CHUNK_ITEMS, math.ceil(total / TARGET_CHUNKS)))


def window_for(job: BatchJob) -> int:
    """Chunks out at once: enough to keep every replica busy, few enough to stay small."""
    return max(MIN_WINDOW, 32 * job.max_workers * job.per_worker)


def results_path(job_id: str) -> Path:
    return Path(settings.LAUNCH_HOME) / "batch" / f"{job_id}.results"


def _error_tail(error: str) -> str:
    """The end of an error: a traceback's last lines are the ones that name the problem."""
    if len(error) <= FAILED_ITEM_ERROR_CHARS:
        return error
    return "…" + error[-(FAILED_ITEM_ERROR_CHARS - 1) :]


def chunk_task_id(job_id: str, index: int) -> str:
    return protocol.task_id_for(job_id, f"c{index}")


class JobEnded(Exception):
    """The job left RUNNING under us (cancelled, failed to load, timed out)."""


# --- the tick hook ------------------------------------------------------------------------

_loops: dict[str, threading.Thread] = {}
_loops_lock = threading.Lock()


def batch_tick() -> None:
    """Registered as a controller tick hook: a loop for every active job, and replicas
    reconciled for every job that still has some (finished jobs: torn down)."""
    for job_id in BatchJob.objects.filter(status__in=ACTIVE_STATUSES).values_list("id", flat=True):
        ensure_loop(job_id)
        _reconcile(job_id)
    for job_id in (
        BatchJob.objects.exclude(status__in=ACTIVE_STATUSES).filter(released=False).values_list("id", flat=True)
    ):
        # Before the release: a job that ended early and whose loop is gone (the load error
        # failed it, or its controller died) still gets its finished items saved.
        _keep_partial_results_under_lease(job_id)
        _reconcile(job_id)
    # Replicas whose job row is gone (its team was deleted): reconcile kills them.
    owners = set(
        Replica.objects.filter(owner_kind="batch_job", state__in=LIVE_STATES).values_list("owner_id", flat=True)
    )
    for job_id in owners - set(BatchJob.objects.filter(pk__in=owners).values_list("id", flat=True)):
        _reconcile(job_id)


def _reconcile(job_id: str) -> None:
    try:
        controller.reconcile("batch_job", job_id)
    except Exception:  # noqa: BLE001 - one job must not stop the others
        logger.exception("reconcile of batch job %s failed", job_id)


def ensure_loop(job_id: str) -> bool:
    """Start this process's loop for a job unless one runs (here, or elsewhere: the lease)."""
    with _loops_lock:
        thread = _loops.get(job_id)
        if thread is not None and thread.is_alive():
            return False
        lease = get_redis().lock(_lease_key(job_id), timeout=LEASE_SECONDS, blocking=False, thread_local=False)
        if not lease.acquire():
            return False
        thread = threading.Thread(target=_run_loop, args=(job_id, lease), name=f"batch-{job_id}", daemon=True)
        _loops[job_id] = thread
        thread.start()
        return True


def _keep_partial_results_under_lease(job_id: str) -> None:
    if not BatchJob.objects.filter(pk=job_id, status__in=ENDED_EARLY_STATUSES, result__isnull=True).exists():
        return
    if not results_path(job_id).exists():
        return
    # The lease keeps this from sealing a file that a live loop is still appending to.
    lease = get_redis().lock(_lease_key(job_id), timeout=LEASE_SECONDS, blocking=False, thread_local=False)
    if not lease.acquire():
        return
    try:
        batch_job_keep_partial_results(job_id)
    except Exception:  # noqa: BLE001 - one job must not stop the others
        logger.exception("batch job %s: saving its partial results failed", job_id)
    finally:
        with contextlib.suppress(Exception):
            lease.release()


def batch_job_keep_partial_results(job_id: str) -> None:
    """A job that ended before its last item (CANCELLED, FAILURE, TIMEOUT): the items
    collected so far, in input order, become its results file, closed like a finished one,
    so the user can download what was done. Nothing when no item finished.

    Runs under the job's lease (its loop, or the tick), so the file is not being appended
    to; bytes past `results_bytes` (a chunk written but not counted) are cut off."""
    job = BatchJob.objects.filter(pk=job_id, status__in=ENDED_EARLY_STATUSES, result__isnull=True).first()
    if job is None:
        return
    results = ResultsFile(results_path(job.id), job.serialization_format)
    if not job.results_bytes or not results.exists_with(job.results_bytes):
        return
    if job.items_completed + job.items_failed == 0:
        results.path.unlink(missing_ok=True)
        return
    length = results.append(results.footer(), expected_length=job.results_bytes)
    stored = storage.save_results(job, results.path, length)
    if job.keep_partial_results(result=stored):
        results.path.unlink(missing_ok=True)
    else:
        storage.delete_stored(stored)


def _lease_key(job_id: str) -> str:
    return f"launch:batch:lease:{job_id}"


def _run_loop(job_id: str, lease) -> None:
    try:
        JobLoop(job_id, lease).run()
    except Exception:  # noqa: BLE001 - logged; the next tick starts a new loop
        logger.exception("batch job %s loop failed", job_id)
    finally:
        try:
            lease.release()
        except Exception:  # noqa: BLE001 - lapsed lease: nothing to release
            pass
        connections.close_all()


# --- preparing ----------------------------------------------------------------------------


def batch_job_prepare(job_id: str) -> None:
    """Count the inputs, fix the chunk size, start the results file, mark RUNNING.

    Idempotent (only a PENDING job without a chunk size is prepared); runs in the job's loop,
    under its lease, so it never truncates a results file that another loop is appending to."""
    job = BatchJob.objects.filter(pk=job_id, status=BatchJob.Status.PENDING, chunk_size=0).first()
    if job is None:
        return
    try:
        with storage.open_input(job.input) as stream:
            total = count_items(stream)
    except InputError as error:
        job.fail(f"input_path: {error}")
        return
    except storage.StoreError as error:
        job.fail(f"input_path: cannot read the input file: {error}")
        return
    results = ResultsFile(results_path(job.id), job.serialization_format)
    length = results.start()
    job.start(total_items=total, chunk_size=chunk_size_for(total), results_bytes=length)


# --- the loop -----------------------------------------------------------------------------


class JobLoop:
    def __init__(self, job_id: str, lease):
        self.job_id = job_id
        self.lease = lease
        self.redis = get_redis()
        self.keys = protocol.Keys(protocol.job_prefix(job_id))
        self.items: Iterator[dict] | None = None
        self.open_files = contextlib.ExitStack()
        self.pending_item: dict | None = None

    def run(self) -> None:
        batch_job_prepare(self.job_id)
        job = self._job()
        if job is None or job.status != BatchJob.Status.RUNNING:
            return
        self.results = ResultsFile(results_path(job.id), job.serialization_format)
        if not self.results.exists_with(job.results_bytes):
            job.fail(f"the results file {self.results.path} was lost; the job cannot resume")
            return
        self._check_window(job)
        try:
            while True:
                started = time.monotonic()
                close_old_connections()
                if not self._renew_lease():
                    return  # the lease lapsed: another loop may own the job now
                job = self._job()
                if job is None:
                    return
                if job.status != BatchJob.Status.RUNNING:
                    self._end_early()
                    return
                if self._timed_out(job):
                    self._end_early()
                    return
                self._feed(job)
                collected = self._collect(job)
                job = self._job()
                if job is None or job.status != BatchJob.Status.RUNNING:
                    continue
                self._size(job)
                if job.input_exhausted and job.chunks_collected == job.chunks_enqueued:
                    self._finish(job)
                    return
                if not collected:
                    # The replica pushes each finished chunk's record on its done list.
                    self.redis.blpop([self.keys.done(chunk_task_id(job.id, job.chunks_collected))], POLL_SECONDS)
                else:
                    time.sleep(max(0.0, MIN_ITERATION_SECONDS - (time.monotonic() - started)))
        except JobEnded:
            self._end_early()
        finally:
            self.open_files.close()

    def _renew_lease(self) -> bool:
        try:
            return bool(self.lease.reacquire())
        except LockError:
            return False

    def _job(self) -> BatchJob | None:
        return BatchJob.objects.filter(pk=self.job_id).first()

    def _timed_out(self, job: BatchJob) -> bool:
        if timezone.now() - job.created_at <= timedelta(seconds=job.timeout_seconds):
            return False
        if job.fail(
            f"the job ran longer than timeout_seconds ({job.timeout_seconds:g} s)", status=BatchJob.Status.TIMEOUT
        ):
            self._drop_queue()
            _reconcile(job.id)
        return True

    def _end_early(self) -> None:
        self._drop_queue()
        batch_job_keep_partial_results(self.job_id)

    def _drop_queue(self) -> None:
        # Replicas finish the chunk in hand; nothing new is taken. The keys go when the
        # controller has stopped the replicas (reconcile of a finished job).
        self.redis.delete(self.keys.queue)

    # feeding

    def _check_window(self, job: BatchJob) -> None:
        """After a restart: if Redis lost chunks in the window (it restarted without
        persistence), feed again from the first uncollected chunk."""
        indexes = range(job.chunks_collected, job.chunks_enqueued)
        if not indexes:
            return
        present = protocol.tasks_exist(self.redis, self.keys, [chunk_task_id(job.id, index) for index in indexes])
        if all(present):
            return
        logger.warning(
            "batch job %s: chunks lost from Redis, feeding again from chunk %s", job.id, job.chunks_collected
        )
        BatchJob.objects.filter(pk=job.id, status=BatchJob.Status.RUNNING).update(
            chunks_enqueued=job.chunks_collected,
            items_enqueued=job.items_completed + job.items_failed,
            input_exhausted=False,
        )

    def _open_items(self, skip: int) -> Iterator[dict]:
        job = self._job()
        items = iter_items(self.open_files.enter_context(storage.open_input(job.input)))
        for _ in range(skip):
            next(items)
        return items

    def _feed(self, job: BatchJob) -> None:
        window = window_for(job)
        if job.input_exhausted or job.chunks_enqueued - job.chunks_collected >= window:
            return
        if self.items is None:
            try:
                self.items = self._open_items(job.items_enqueued)
            except InputError as error:
                self._input_failed(job, error)
            except StopIteration:
                self.items = iter(())
        enqueued, items_enqueued = job.chunks_enqueued, job.items_enqueued
        exhausted = False
        ttl = int(job.timeout_seconds) + 3600
        with self.redis.pipeline(transaction=False) as pipe:
            while enqueued - job.chunks_collected < window:
                try:
                    chunk = self._next_chunk(job.chunk_size)
                except InputError as error:
                    self._input_failed(job, error)
                if not chunk:
                    exhausted = True
                    break
                payload = json.dumps({"items": chunk, "serialization_format": job.serialization_format})
                task_id = chunk_task_id(job.id, enqueued)
                protocol.add_task(
                    pipe, self.keys, task_id, payload, ttl_seconds=ttl, now=time.time(), inline=False,
                    extra={"item_count": len(chunk)},
                )
                enqueued += 1
                items_enqueued += len(chunk)
            pipe.execute()
        changes = {"chunks_enqueued": enqueued, "items_enqueued": items_enqueued}
        if exhausted:
            changes.update(input_exhausted=True, total_items=items_enqueued)
        updated = BatchJob.objects.filter(
            pk=job.id, status=BatchJob.Status.RUNNING, chunks_enqueued=job.chunks_enqueued
        ).update(**changes)
        if not updated:
            raise JobEnded
        for name, value in changes.items():
            setattr(job, name, value)

    def _next_chunk(self, size: int) -> list[dict]:
        chunk: list[dict] = []
        chunk_bytes = 0
        while len(chunk) < size:
            item = self.pending_item
            self.pending_item = None
            if item is None:
                item = next(self.items, None)
                if item is None:
                    break
            item_bytes = len(json.dumps(item)) if len(chunk) else 0
            if chunk and chunk_bytes + item_bytes > MAX_CHUNK_BYTES:
                self.pending_item = item  # starts the next chunk
                break
            chunk.append(item)
            chunk_bytes += item_bytes
        return chunk

    def _input_failed(self, job: BatchJob, error: InputError):
        job.fail(f"input_path: {error}")
        raise JobEnded

    # collecting

    def _collect(self, job: BatchJob) -> bool:
        """Append the finished chunks at the head of the window; returns whether any."""
        start, end = job.chunks_collected, job.chunks_enqueued
        if start == end:
            return False
        task_ids = [chunk_task_id(job.id, index) for index in range(start, end)]
        statuses = protocol.read_fields(self.redis, self.keys, task_ids, ["status"])
        ready = []
        for task_id, (status,) in zip(task_ids, statuses, strict=True):
            if status not in (protocol.SUCCESS.encode(), protocol.FAILURE.encode()):
                break
            ready.append(task_id)
        if not ready:
            return False
        records = protocol.read_fields(self.redis, self.keys, ready, ["status", "result", "traceback", "item_count"])
        data = []
        completed = failed = 0
        failed_items = list(job.failed_items)
        first = job.items_completed + job.items_failed == 0
        for task_id, (status, result, traceback, item_count) in zip(ready, records, strict=True):
            entries = self._entries(task_id, status, result, traceback, int(item_count or 0))
            for entry in entries:
                if "error" in entry:
                    failed += 1
                    if len(failed_items) < FAILED_ITEMS_KEPT:
                        failed_items.append({"id": entry["id"], "error": _error_tail(str(entry["error"]))})
                else:
                    completed += 1
            encoded = self.results.encode(entries, first=first)
            first = first and not entries
            data.append(encoded)
        length = self.results.append(b"".join(data), expected_length=job.results_bytes)
        updated = BatchJob.objects.filter(pk=job.id, status=BatchJob.Status.RUNNING, chunks_collected=start).update(
            chunks_collected=start + len(ready),
            results_bytes=length,
            items_completed=job.items_completed + completed,
            items_failed=job.items_failed + failed,
            failed_items=failed_items,
        )
        if not updated:
            raise JobEnded
        # Only now: a crash before this line collects these chunks again from Redis.
        protocol.delete_tasks(self.redis, self.keys, ready)
        return True

    def _entries(
        self, task_id: str, status: bytes, result: bytes | None, traceback: bytes | None, item_count: int
    ) -> list[dict]:
        if status == protocol.SUCCESS.encode() and result is not None:
            try:
                entries = json.loads(result)
            except json.JSONDecodeError:
                entries = None
            if (
                isinstance(entries, list)
                and (not item_count or len(entries) == item_count)
                and all(isinstance(e, dict) and "id" in e for e in entries)
            ):
                return entries
            reason = f"the replica returned a malformed result for chunk {task_id}"
        else:
            reason = (traceback or b"").decode(errors="replace") or f"chunk {task_id} failed"
        # The whole chunk failed (e.g. its replica died three times): every item gets the reason.
        (payload,) = protocol.read_fields(self.redis, self.keys, [task_id], ["payload"])[0]
        items = json.loads(payload)["items"] if payload else []
        return [{"id": item["id"], "error": reason} for item in items]

    # sizing and ending

    def _size(self, job: BatchJob) -> None:
        left = job.chunks_enqueued - job.chunks_collected
        if not job.input_exhausted and job.total_items is not None:
            not_fed = max(job.total_items - job.items_enqueued, 0)
            left += math.ceil(not_fed / max(job.chunk_size, 1))
        replica_ids = list(
            Replica.objects.filter(owner_kind="batch_job", owner_id=job.id, state__in=LIVE_STATES).values_list(
                "id", flat=True
            )
        )
        queued, in_flight = protocol.queue_depth(self.redis, self.keys, replica_ids)
        # Chunks not yet fed count as queued: scale for the whole remaining job at once.
        target = autoscaling.desired_workers(
            queued=max(left - in_flight, queued),
            in_flight=in_flight,
            per_worker=job.per_worker,
            min_workers=0,
            max_workers=job.max_workers,
        )
        if target != job.desired_workers:
            BatchJob.objects.filter(pk=job.id, status=BatchJob.Status.RUNNING).update(desired_workers=target)
            job.desired_workers = target
            _reconcile(job.id)

    def _finish(self, job: BatchJob) -> None:
        length = self.results.append(self.results.footer(), expected_length=job.results_bytes)
        stored = storage.save_results(job, self.results.path, length)
        if job.finish(result=stored, results_bytes=length):
            self.results.path.unlink(missing_ok=True)
        _reconcile(job.id)

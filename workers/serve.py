"""The replica serve loop: `python -m workers.serve`, in a local process or a container.

It runs user code, so it never imports Django and knows only what its environment says:

  LAUNCH_REDIS_URL          the Redis of the request path
  LAUNCH_PREFIX             its endpoint's (or batch job's) key prefix, see workers.protocol
  LAUNCH_REPLICA_ID         its own id
  LAUNCH_BUNDLE_URL         where to GET the bundle (a scoped, expiring URL; or file://)
  LAUNCH_BUNDLE_CONFIG      JSON: packaging_type, app_config, module paths, python_version
  LAUNCH_CONCURRENCY        tasks run at once (threads), default 1
  LAUNCH_HEARTBEAT_TTL_SECONDS  the heartbeat key's TTL; refreshed five times per TTL
  LAUNCH_MAX_BATCH_SIZE     request batching (docs/batching.md): take up to this many tasks at
                            once and call the bundle's batch predict with their inputs; unset: off
  LAUNCH_MAX_BATCH_WAIT_MS  how long a batch waits to fill after its first task, at most

Lifecycle: replica hash `loading` -> `ready` (or `failed` with the traceback, exit 1). Each
worker thread moves a task id from the queue to this replica's in-flight list (BLMOVE, so a
crash leaves it where the controller finds it), marks it STARTED, runs it and records the
outcome in one script. SIGTERM: stop taking tasks, finish the ones in flight, exit 0.

A predict that returns an iterator (a generator) is run to the end and its items collected
into a list for sync and async requests; for a streaming request (payload `stream: true`)
each item is pushed to the task's stream list as it is produced, and the predict is closed
when the gateway says its client went away (the cancel key, checked between items).
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from importlib import import_module
from urllib.parse import urlsplit

from workers import allocator, protocol, redis_wire


class BundleLoadError(Exception):
    pass


# --- loading the bundle -------------------------------------------------------------------


def fetch_bundle(url: str) -> bytes | bytearray:
    if url.startswith("file://"):
        with open(url[len("file://"):], "rb") as f:
            return f.read()
    last_error: Exception | None = None
    for attempt in range(5):  # the web server may be restarting; a cold start must not fail on a blip
        try:
            data = _plain_http_get(url)
            return data if data is not None else _urlopen_read(url)
        except OSError as exc:
            last_error = exc
            time.sleep(0.2 * 2**attempt)
    raise BundleLoadError(f"could not download the bundle: {last_error}")


def _urlopen_read(url: str) -> bytes:
    # Imported here: urllib.request brings http.client, email and ssl, about 2 MB of a
    # replica's memory, for what _plain_http_get usually does (BENCHMARKS.md, "Fifth pass: what a replica loads").
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def _plain_http_get(url: str) -> bytearray | None:
    """The body of a GET of an http:// URL when the answer is a plain 200 with a Content-Length
    (what the web server's bundle download gives), over a socket of our own; None for anything
    else (https, credentials in the URL, a proxy in the environment, another status, a
    redirect, a chunked or cut-short body, a connection that fails or times out, a port that
    is not a number): urllib then makes the request again, so every other case and every error
    stays urllib's (a server that times out is waited for twice)."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if (parts.scheme != "http" or not parts.hostname or "@" in parts.netloc or not url.isascii()
            or any(name.lower().endswith("_proxy") for name in os.environ)):
        return None
    try:
        address = (parts.hostname, parts.port or 80)
    except ValueError:
        return None
    # urllib.request's own request line and headers: the server sees no difference.
    request = (f"GET {target} HTTP/1.1\r\nAccept-Encoding: identity\r\nHost: {parts.netloc}\r\n"
               f"User-Agent: Python-urllib/{sys.version_info.major}.{sys.version_info.minor}\r\n"
               "Connection: close\r\n\r\n").encode()
    try:
        with socket.create_connection(address, timeout=60) as sock:
            sock.sendall(request)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(65536)
                if not chunk or len(head) > 65536:
                    return None
                head += chunk
            head, _, body = head.partition(b"\r\n\r\n")
            status, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = headers.get("content-length", "")
            if status.split(" ", 2)[1:2] != ["200"] or "transfer-encoding" in headers or not length.isdigit():
                return None
            data = bytearray(int(length))  # filled in place: no second copy of a large bundle
            view = memoryview(data)
            received = min(len(body), len(data))
            view[:received] = body[:received]
            while received < len(data):
                count = sock.recv_into(view[received:])
                if not count:
                    return None
                received += count
            return data
    except OSError:
        return None


def _import_path(path: str):
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise BundleLoadError(f"module path {path!r} must be module.function")
    return getattr(import_module(module_name), attribute)


def predict_fn_from_object(bundle, app_config) -> Callable:
    """DESIGN §3: a dict {model | load_model_fn, load_predict_fn}, or a callable (a class is
    instantiated, with app_config when there is one)."""
    if isinstance(bundle, dict):
        if "load_predict_fn" not in bundle:
            raise BundleLoadError("a dict bundle needs load_predict_fn")
        load_predict_fn = bundle["load_predict_fn"]
        if "model" in bundle:
            model = bundle["model"]
        elif "load_model_fn" in bundle:
            model = bundle["load_model_fn"]() if app_config is None else bundle["load_model_fn"](app_config)
        else:
            raise BundleLoadError("a dict bundle needs model or load_model_fn")
        return load_predict_fn(model) if app_config is None else load_predict_fn(app_config, model)
    if isinstance(bundle, type):
        return bundle() if app_config is None else bundle(app_config)
    if callable(bundle):
        return bundle
    raise BundleLoadError(f"a bundle must be a dict or a callable, not {type(bundle).__name__}")


def predict_fn_from_zip(data: bytes, config: dict) -> Callable:
    """The client's zip of directories: extracted, put on sys.path, the module paths imported."""
    import tempfile  # here: a pickled bundle needs neither (with what they import, 1 MB of a replica)
    import zipfile

    workdir = tempfile.mkdtemp(prefix="launch-bundle-")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(workdir)
    sys.path.insert(0, workdir)
    if not config.get("load_predict_fn_module_path"):
        raise BundleLoadError("a zip bundle needs load_predict_fn_module_path")
    load_predict_fn = _import_path(config["load_predict_fn_module_path"])
    app_config = config.get("app_config")
    model = None
    if config.get("load_model_fn_module_path"):
        load_model_fn = _import_path(config["load_model_fn_module_path"])
        model = load_model_fn() if app_config is None else load_model_fn(app_config)
    return load_predict_fn(model) if app_config is None else load_predict_fn(app_config, model)


def load_predict_fn(config: dict, data: bytes) -> Callable:
    if config.get("packaging_type") == "zip":
        return predict_fn_from_zip(data, config)
    import pickle

    import cloudpickle  # noqa: F401 - the bundle's pickle refers to cloudpickle's helpers

    try:
        bundle = pickle.loads(data)
    except Exception as exc:
        wanted = config.get("python_version") or ""
        here = f"{sys.version_info.major}.{sys.version_info.minor}"
        if wanted and not here.startswith(wanted) and not wanted.startswith(here):
            raise BundleLoadError(
                f"the bundle was pickled with Python {wanted} and this replica runs {here}: {exc!r}"
            ) from exc
        raise
    return predict_fn_from_object(bundle, config.get("app_config"))


def is_batch_predict(predict: Callable) -> bool:
    """A batch predict declares itself with the attribute `batch = True` (docs/batching.md): it
    takes a list of inputs and returns a list of outputs, one per input, in order. Any other
    value than True or False is refused rather than guessed at (`batch = 32` is not a size);
    a method named `batch` is not a declaration."""
    declared = getattr(predict, "batch", False)
    if declared is True:
        return True
    if declared is False or declared is None or callable(declared):
        return False
    raise BundleLoadError(
        f"the predict function's `batch` attribute is {declared!r}: set it to True to declare a batch predict "
        "(it takes a list of inputs and returns a list of outputs), or leave it out"
    )


class BatchSizeMismatch(Exception):
    """The batch predict did not return one output per input."""


def batch_outputs(batch_predict: Callable, values: list) -> list:
    """Call a batch predict with a list of inputs; its outputs as a list of the same length."""
    output = batch_predict(values)
    if isinstance(output, Iterator):
        output = list(output)
    if isinstance(output, (str, bytes, dict)) or not hasattr(output, "__len__"):
        raise BatchSizeMismatch(
            f"the batch predict returned {type(output).__name__}, not a list: it must return one output per input, "
            f"in order ({len(values)} inputs)"
        )
    if len(output) != len(values):
        raise BatchSizeMismatch(
            f"the batch predict returned {len(output)} outputs for {len(values)} inputs: it must return one output "
            "per input, in order"
        )
    return list(output)


def one_at_a_time(batch_predict: Callable) -> Callable:
    """A batch predict called the way a single predict is (`call`): with a list of one. For a
    request that is not batched (a streaming one, a batch job's item, an endpoint without
    batching)."""

    def predict(*args, **kwargs):
        value = args[0] if args else kwargs  # call() passes one argument, or an object's keys
        return batch_outputs(batch_predict, [value])[0]

    return predict


# --- running one request ------------------------------------------------------------------


def _input(request: dict):
    if request.get("url") is not None:
        return _urlopen_read(request["url"])
    return request.get("args")


def call(predict: Callable, value):
    # args that are an object are keyword arguments (DESIGN §3); anything else is one argument.
    return predict(**value) if isinstance(value, dict) else predict(value)


# (status, result JSON text, traceback, pickled result) of one task.
Outcome = tuple[str, str, str, bytes]


class StreamCancelled(Exception):
    """The streaming client went away (or its stream timed out): stop the predict."""


Emit = Callable[[int, object], None]


def collect(output, emit: Emit | None) -> object:
    """An iterator's items as a list, each passed to `emit` as it comes (streaming); any other
    output as it is (a streaming request then gets it as its only item)."""
    if not isinstance(output, Iterator):
        if emit is not None:
            emit(0, output)
        return output
    items = []
    try:
        for item in output:
            if emit is not None:
                emit(len(items), item)
            items.append(item)
    finally:
        close = getattr(output, "close", None)
        if close is not None:
            close()  # a generator stopped early runs its finally blocks now
    return items


class OutOfMemory(Exception):
    """A task hit the replica's memory limit (a resource limit turns an allocation past it into
    MemoryError); the replica ends after recording it, and the controller replaces it."""


def run_single(predict: Callable, request: dict, memory_limit: str = "",
               emit: Emit | None = None) -> Outcome:
    """-> (status, result JSON text, traceback, pickled result)."""
    try:
        output = collect(call(predict, _input(request)), emit)
    except StreamCancelled:
        return protocol.FAILURE, "", "cancelled: the streaming client went away", b""
    except BaseException as error:  # noqa: BLE001 - the user's error is the task's outcome
        return failure(error, memory_limit)
    return encode_output(output, request, memory_limit)


def failure(error: BaseException, memory_limit: str) -> Outcome:
    """The outcome of a task whose predict (or the encoding of its output) raised `error`,
    the exception being handled."""
    if isinstance(error, MemoryError):
        limit = f" (limit {memory_limit})" if memory_limit else ""
        return protocol.FAILURE, "", f"out of memory{limit}\n{traceback.format_exc()}", b""
    if not isinstance(error, Exception):
        raise error  # KeyboardInterrupt, SystemExit: not the task's outcome
    return protocol.FAILURE, "", traceback.format_exc(), b""


def encode_output(output, request: dict, memory_limit: str = "") -> Outcome:
    """A task's output as its outcome: JSON text, or cloudpickled with return_pickled. An output
    that does not encode fails its own task only."""
    try:
        if request.get("return_pickled"):
            import cloudpickle

            return protocol.SUCCESS, "", "", cloudpickle.dumps(output)
        return protocol.SUCCESS, protocol.result_json(output), "", b""
    except BaseException as error:  # noqa: BLE001
        return failure(error, memory_limit)


def run_batch(batch_predict: Callable, requests: list[dict], memory_limit: str = "") -> list[Outcome]:
    """The outcomes of a batch of requests, one per request, in order. An input that cannot be
    read (its url) fails its own request. When the batch predict raises, each request runs again
    alone, so one request's bad input does not fail the others; a MemoryError is not retried
    (what is left of the process cannot be trusted: every request fails "out of memory"), nor is
    a wrong number of outputs (a fault of the bundle, not of an input)."""
    outcomes: list[Outcome | None] = [None] * len(requests)
    values, positions = [], []
    for position, request in enumerate(requests):
        try:
            values.append(_input(request))
            positions.append(position)
        except Exception:  # noqa: BLE001
            outcomes[position] = (protocol.FAILURE, "", traceback.format_exc(), b"")
    if values:
        try:
            outputs = batch_outputs(batch_predict, values)
            for position, output in zip(positions, outputs, strict=True):
                outcomes[position] = encode_output(output, requests[position], memory_limit)
        except MemoryError as error:
            outcome = failure(error, memory_limit)
            for position in positions:
                outcomes[position] = outcome
        except BatchSizeMismatch as mismatch:
            for position in positions:
                outcomes[position] = (protocol.FAILURE, "", str(mismatch), b"")
        except Exception:  # noqa: BLE001 - retried one by one below
            single = one_at_a_time(batch_predict)
            for position in positions:
                outcomes[position] = run_single(single, requests[position], memory_limit)
    return outcomes  # type: ignore[return-value]


def format_bytes(count: int) -> str:
    """1073741824 -> "1Gi", as endpoints write memory."""
    for unit, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if count >= size and count % size == 0:
            return f"{count // size}{unit}"
    return str(count)


def run_chunk(predict: Callable, request: dict) -> str:
    """A batch chunk: every item on its own, so one failure does not sink the others."""
    pickled = request.get("serialization_format") == "PICKLE"
    entries = []
    for item in request["items"]:
        entry: dict = {"id": item["id"]}
        try:
            output = call(predict, _input(item))
            if pickled:
                import cloudpickle

                entry["result_pickled"] = base64.b64encode(cloudpickle.dumps(output)).decode()
            else:
                json.dumps(output)  # not JSON-serializable -> this item's error, not the chunk's
                entry["result"] = output
        except Exception:  # noqa: BLE001
            entry["error"] = traceback.format_exc()
        entries.append(entry)
    return json.dumps(entries)


# --- the replica --------------------------------------------------------------------------


class Replica:
    def __init__(self, env: dict[str, str]):
        self.concurrency = max(1, int(env.get("LAUNCH_CONCURRENCY") or 1))
        # Each task thread holds a connection of its own (work_loop) and uses pooled ones (the
        # heartbeat thread too): workers.redis_wire, not redis-py, whose import was 9 of a
        # replica's 33 MB (BENCHMARKS.md, "A replica without redis-py").
        self.redis = redis_wire.Client(env["LAUNCH_REDIS_URL"], connect_timeout=5)
        self.keys = protocol.Keys(env["LAUNCH_PREFIX"])
        self.replica_id = env["LAUNCH_REPLICA_ID"]
        self.bundle_url = env.get("LAUNCH_BUNDLE_URL", "")
        self.config = json.loads(env.get("LAUNCH_BUNDLE_CONFIG") or "{}")
        self.heartbeat_ttl = float(env.get("LAUNCH_HEARTBEAT_TTL_SECONDS") or 10)
        memory_bytes = int(env.get("LAUNCH_MEMORY_LIMIT_BYTES") or 0)
        self.memory_limit = format_bytes(memory_bytes) if memory_bytes else ""
        self.inflight = self.keys.inflight(self.replica_id)
        self.stopping = threading.Event()
        self.exit_code = 0
        self.start_task = self.redis.script(protocol.START_SCRIPT)
        self.predict: Callable | None = None
        # Request batching (docs/batching.md): 0 is off.
        self.max_batch_size = int(env.get("LAUNCH_MAX_BATCH_SIZE") or 0)
        self.max_batch_wait = int(env.get("LAUNCH_MAX_BATCH_WAIT_MS") or 0) / 1000
        self.batch_predict: Callable | None = None

    def set_state(self, state: str, **fields) -> None:
        mapping = {
            "state": state, "pid": os.getpid(), "updated_at": time.time(),
            "python_version": sys.version.split()[0], **fields,
        }
        self.redis.execute("HSET", self.keys.replica(self.replica_id), *(x for pair in mapping.items() for x in pair))

    def heartbeat_loop(self) -> None:
        ttl_ms = max(1000, int(self.heartbeat_ttl * 1000))
        while not self.stopping.is_set():
            try:
                self.redis.execute("SET", self.keys.heartbeat(self.replica_id), "1", "PX", ttl_ms)
            except redis_wire.RedisError as exc:
                print(f"heartbeat failed: {exc!r}", file=sys.stderr, flush=True)
            self.stopping.wait(self.heartbeat_ttl / 5)

    def load(self) -> None:
        # The cold start's phases (workers.protocol, replica hash): the controller copies them
        # onto the Replica row when it sees the replica ready.
        self.set_state(protocol.REPLICA_LOADING, t_started=time.time())
        started = time.monotonic()
        try:
            data = fetch_bundle(self.bundle_url)
            self.redis.execute("HSET", self.keys.replica(self.replica_id), "t_downloaded", time.time())
            self.predict = load_predict_fn(self.config, data)
            if is_batch_predict(self.predict):
                # Requests that are not batched (streams, batch job items) call it with a list of one.
                self.batch_predict, self.predict = self.predict, one_at_a_time(self.predict)
            if self.max_batch_size and self.batch_predict is None:
                raise BundleLoadError(
                    f"this endpoint batches requests (max_batch_size {self.max_batch_size}), but the bundle's predict "
                    "function is not a batch predict: declare one with `predict.batch = True` (it then takes a list "
                    "of inputs and returns a list of outputs, docs/batching.md), or set max_batch_size to 0"
                )
            self.redis.execute("HSET", self.keys.replica(self.replica_id), "t_loaded", time.time())
        except BaseException:  # noqa: BLE001 - SystemExit from user code is a load failure too
            error = traceback.format_exc()
            print(error, file=sys.stderr, flush=True)
            self.set_state(protocol.REPLICA_FAILED, error=error)
            raise SystemExit(1) from None
        print(f"replica {self.replica_id} loaded its bundle in {time.monotonic() - started:.2f} s", flush=True)

    def work_loop(self) -> None:
        # A connection of this thread's own for the task scripts: a script is sent before the
        # task runs and its reply read after, which a pooled connection cannot do. Nothing is
        # sent on it between (no health-check PING, which would read the STARTED mark's reply
        # as its answer). No read timeout: every blocking command sent here carries its own,
        # and a reply given up on after a BLMOVE moved tasks into the in-flight list would
        # strand them there while this replica lives. A Redis that stops answering is the
        # heartbeat's to notice.
        connection = self.redis.connection(timeout=None)
        # Replies of the last task's scripts not read yet: the next take (BLMOVE) is sent first,
        # so that one round trip carries a task's end and the next one's start (a replica that
        # waited for each in turn spent most of a fast task waiting: BENCHMARKS.md, "The
        # replica's round trips").
        owed = 0
        try:
            while not self.stopping.is_set():
                try:
                    if self.max_batch_size:
                        entries = self.take_batch(connection)
                        if entries:
                            self.run_tasks(connection, entries)
                        continue
                    # On this thread's connection (no socket timeout, see above), never the pool's.
                    connection.send_command("BLMOVE", self.keys.queue, self.inflight, "RIGHT", "LEFT", 1)
                    self.read_owed(connection, owed)
                    owed = 0
                    entry = connection.read_response()
                    if entry is not None:
                        owed = self.run_task(connection, entry, sole=self.concurrency == 1)
                except redis_wire.RedisError as exc:
                    owed = 0  # the connection goes, and what it owed with it
                    connection.close()
                    print(f"redis error, retrying: {exc!r}", file=sys.stderr, flush=True)
                    time.sleep(0.5)
            self.read_owed(connection, owed)  # the last task's, before the connection closes
        finally:
            connection.close()

    def read_owed(self, connection, count: int) -> None:
        """Read the replies of a finished task's scripts. An error reply leaves the connection in
        step: the take sent after them must still be read, or the task it moved into the
        in-flight list would wait there while this replica lives."""
        for _ in range(count):
            try:
                connection.read_response()
            except redis_wire.ResponseError as error:
                print(f"a task script failed: {error!r}", file=sys.stderr, flush=True)

    def run_task(self, connection, entry: bytes, *, sole: bool = False) -> int:
        """Run one task taken from the queue and send its outcome; returns how many replies of
        its scripts are still to be read (work_loop reads them after sending the next take).
        `sole`: the in-flight list holds this task's entry alone (one work_loop, which takes one
        task at a time), so FINISH_SCRIPT empties it instead of searching it."""
        task_id, expires_at, payload = protocol.parse_entry(entry)
        task_key = self.keys.task(task_id)
        if payload is None:
            payload = self.start_task(
                keys=[task_key, self.inflight, self.keys.running], args=[entry, self.replica_id, time.time(), task_id]
            )
            if payload is None:
                return 0
            marking = False  # a batch chunk: marked by START_SCRIPT, never waited on
        elif time.time() > expires_at:
            self.redis.execute("LREM", self.inflight, 0, entry)  # expired while queued: not run
            return 0
        else:
            connection.send_command(
                "EVAL", protocol.MARK_STARTED_SCRIPT, 2, task_key, self.keys.running, self.replica_id, time.time(),
                task_id,
            )
            marking = True
        request = protocol.load_json(payload)
        if "items" in request:
            status, result, error, pickled = protocol.SUCCESS, run_chunk(self.predict, request), "", b""
        else:
            emit = self.stream_emitter(task_id) if request.get("stream") else None
            status, result, error, pickled = run_single(self.predict_for(request), request, self.memory_limit, emit)
        if not marking:
            mark = protocol.MARKED
        elif len(result) >= protocol.ONE_COPY_MIN_CHARS:
            mark, marking = connection.read_response(), False  # read now: the result goes once
        else:
            mark = None  # read after: a small result goes both ways (protocol.finish_arguments)
        self.send_finish(connection, task_id, (status, result, error, pickled), mark, sole=sole)
        return 2 if marking else 1

    def send_finish(self, connection, task_id: str, outcome: Outcome, mark: int | None, *, sole: bool = False) -> None:
        """Send (not read) the script that records a task's outcome, takes its entry out of the
        in-flight list (by its id: the entry, payload and all, is not sent back) and answers its
        waiter; `mark`: MARK_STARTED_SCRIPT's answer (protocol.finish_arguments)."""
        status, result, error, pickled = outcome
        if status == protocol.FAILURE and error.startswith("out of memory"):
            # What is left of this process after a MemoryError cannot be trusted: end it
            # with the status that tells the controller why (workers.lifecycle).
            self.exit_code = protocol.EXIT_OUT_OF_MEMORY
            self.stopping.set()
        result_for_hash, record, literal_at = protocol.finish_arguments(status, result, error, pickled, mark=mark)
        counter = "completed" if status == protocol.SUCCESS else "failed"
        connection.send_command(
            "EVAL", protocol.FINISH_SCRIPT, 6, self.keys.task(task_id), self.inflight, self.keys.done(task_id),
            self.keys.stats, self.keys.running, self.keys.callbacks, status, result_for_hash, error, pickled,
            time.time(), record, protocol.DONE_LIST_TTL_SECONDS, counter, task_id,
            protocol.SYNC_ANSWERED_TTL_SECONDS, literal_at, "1" if sole else "",
        )

    def take_batch(self, connection) -> list[bytes]:
        """Up to max_batch_size entries, moved into the in-flight list as they are taken: block
        (up to a second) for the first, then wait at most max_batch_wait for the rest. Each
        take is one round trip that also takes everything already waiting, so a busy queue
        fills the batch at once and a lone request waits only max_batch_wait."""
        entries = protocol.take_batch(connection, self.keys, self.inflight, first_timeout=1,
                                      most=self.max_batch_size)
        deadline = time.monotonic() + self.max_batch_wait
        while entries and len(entries) < self.max_batch_size and not self.stopping.is_set():
            left = deadline - time.monotonic()
            # Redis truncates a blocking timeout to whole milliseconds and 0 blocks forever: a
            # wait shorter than protocol.MIN_BLOCKING_SECONDS is not worth the risk (a BLMOVE of
            # 0.001 s blocked until the next task came, which, with every client waiting on this
            # batch, was never).
            if left < protocol.MIN_BLOCKING_SECONDS:
                break
            entries += protocol.take_batch(connection, self.keys, self.inflight, first_timeout=round(left, 3),
                                           most=self.max_batch_size - len(entries))
        return entries

    def run_tasks(self, connection, entries: list[bytes]) -> None:
        """A batch: each task is marked STARTED (and put in the `running` set) before the batch
        predict runs, and finished on its own with its own outcome, so timeouts, requeues,
        latency histograms and sync waiters see each task as if it had run alone. The marks
        and outcomes of the whole batch travel in two pipelined round trips."""
        batch, alone = [], []
        now = time.time()
        for entry in entries:
            task_id, expires_at, payload = protocol.parse_entry(entry)
            request = protocol.load_json(payload) if payload is not None else None
            if request is None or "items" in request or request.get("stream"):
                alone.append(entry)  # not what an endpoint's gateway queues for batching: as before
            elif now > expires_at:
                self.redis.execute("LREM", self.inflight, 0, entry)  # expired while queued: not run
            else:
                batch.append((task_id, request))
        for task_id, _ in batch:
            connection.send_command(
                "EVAL", protocol.MARK_STARTED_SCRIPT, 2, self.keys.task(task_id), self.keys.running,
                self.replica_id, now, task_id,
            )
        if batch:
            outcomes = run_batch(self.batch_predict, [request for _, request in batch], self.memory_limit)
            # The marks' answers first when a result is large (protocol.ONE_COPY_MIN_CHARS).
            marks_first = any(len(result) >= protocol.ONE_COPY_MIN_CHARS for _, result, _, _ in outcomes)
            marks = [connection.read_response() for _ in batch] if marks_first else [None] * len(batch)
            for (task_id, _), outcome, mark in zip(batch, outcomes, marks, strict=True):
                self.send_finish(connection, task_id, outcome, mark)
            for _ in range(len(batch) if marks_first else 2 * len(batch)):
                connection.read_response()
        for entry in alone:
            self.read_owed(connection, self.run_task(connection, entry))

    def predict_for(self, request: dict) -> Callable:
        """The predict that serves this request (a forwarder relays a streaming request to
        another route of its container)."""
        return self.predict

    def stream_emitter(self, task_id: str) -> Emit:
        """Pushes one item of a streaming task and, in the same round trip, asks whether its
        client went away."""
        stream_key, cancel_key = self.keys.stream(task_id), self.keys.cancel(task_id)

        def emit(index: int, item: object) -> None:
            cancelled = self.redis.pipeline(
                ("RPUSH", stream_key, protocol.stream_item(index, json.dumps(item))),
                ("EXPIRE", stream_key, protocol.DONE_LIST_TTL_SECONDS),
                ("EXISTS", cancel_key),
            )[-1]
            if cancelled:
                raise StreamCancelled

        return emit

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        heartbeat = threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True)
        heartbeat.start()
        self.load()
        if self.stopping.is_set():
            return self.stop()
        # Ready before the first task is taken: a replica that dies from here on is known to
        # have loaded, so the controller never takes its death for a broken bundle.
        self.set_state(protocol.REPLICA_READY, t_ready=time.time())
        print(f"replica {self.replica_id} ready ({self.concurrency} at a time)", flush=True)
        workers = [
            threading.Thread(target=self.work_loop, name=f"worker-{n}", daemon=True) for n in range(self.concurrency)
        ]
        for worker in workers:
            worker.start()
        while any(worker.is_alive() for worker in workers):
            # join with a timeout: a bare join would keep the main thread from seeing SIGTERM
            for worker in workers:
                worker.join(timeout=0.5)
        return self.stop()

    def stop(self) -> int:
        self.stopping.set()
        try:
            self.set_state(protocol.REPLICA_STOPPING)
            self.redis.execute("DEL", self.keys.heartbeat(self.replica_id))
        except redis_wire.RedisError:
            pass
        print(f"replica {self.replica_id} stopped", flush=True)
        return self.exit_code


def main() -> int:
    allocator.keep_freed_memory()  # before the first large payload (workers.allocator)
    return Replica(dict(os.environ)).run()


if __name__ == "__main__":
    sys.exit(main())

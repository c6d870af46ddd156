"""Launch side by side with BentoML and Ray Serve: the same identity and 1 ms CPU models, one
replica each, sync, measured in one run with the servers alternating (issue 14).

    .venv/bin/python bench/peers.py            # 3 reps, writes the table into BENCHMARKS.md
    .venv/bin/python bench/peers.py --quick    # 1 short rep, prints only (a sanity run)

The peers are installed on first use, each into its own virtualenv under `.bench-venvs/`
(ignored by git, reused by later runs): BentoML 1.4.40 (its requirements first, then itself
with --no-deps, as it pins a certifi newer than some indexes hold) and Ray Serve 2.60.0.

What runs:
- ours: `manage.py launch up` (bench/_stack.py), two sync endpoints (identity, cpu 1 ms) with
  one replica each, requests through `POST /v1/sync-tasks` with an API key.
- BentoML: one service with the two APIs, `bentoml serve` with one worker.
- Ray Serve: `ray start --head --block` on 127.0.0.1 with every port given (never 6379), no
  dashboard; two applications (one replica each, max_ongoing_requests=100) and a third, the
  identity model with Ray's default max_ongoing_requests, deployed after memory is read.

The client is one asyncio process speaking raw HTTP/1.1 keep-alive (no client library: its
cost would count against every server alike, but would hide their differences). Each rep runs
every measure on every server in turn, the order rotating per rep; the table shows the median
over reps. `nice` does not isolate a benchmark on these machines (autogroup scheduling), and
other work may share the cores, so only ratios within one run mean much.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_block  # noqa: E402
from _stack import ROOT, Stack, free_port, identity_bundle, machine  # noqa: E402

sys.path.insert(0, str(ROOT))
from workers.protocol import endpoint_prefix  # noqa: E402

VENVS = ROOT / ".bench-venvs"
BENTOML_VERSION = "1.4.40"
RAY_VERSION = "2.60.0"


# --- the models ---------------------------------------------------------------------------

def busy(ms: float) -> None:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


def cpu_bundle():
    def load_predict_fn(model):
        def predict(**kwargs):
            end = time.perf_counter() + 0.001
            while time.perf_counter() < end:
                pass
            return kwargs

        return predict

    return {"model": None, "load_predict_fn": load_predict_fn}


BENTO_SERVICE = '''
import time
import bentoml


def busy(ms):
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


@bentoml.service(workers=1, traffic={"timeout": 60})
class Models:
    @bentoml.api
    def identity(self, args: dict) -> dict:
        return args

    @bentoml.api
    def cpu(self, args: dict) -> dict:
        busy(1)
        return args
'''

RAY_DRIVER = '''
import sys, time
import ray
from ray import serve
from starlette.requests import Request

address, http_port = sys.argv[1], int(sys.argv[2])
ray.init(address=address, logging_level="ERROR")
serve.start(http_options={"host": "127.0.0.1", "port": http_port})


def busy(ms):
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


def app(name, cpu_ms, max_ongoing):
    options = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0}}
    if max_ongoing:
        options["max_ongoing_requests"] = max_ongoing

    @serve.deployment(name=name, **options)
    class Model:
        async def __call__(self, request: Request):
            body = await request.json()
            if cpu_ms:
                busy(cpu_ms)
            return body["args"]

    return Model.bind()


which = sys.argv[3]
if which == "main":
    serve.run(app("identity", 0, 100), name="identity", route_prefix="/identity")
    serve.run(app("cpu", 1, 100), name="cpu", route_prefix="/cpu")
else:
    serve.run(app("identity_default", 0, None), name="identity_default", route_prefix="/identity_default")
print("deployed", flush=True)
'''


# --- installing the peers ---------------------------------------------------------------------

def pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *args], check=True)


def ensure_venv(name: str) -> Path:
    """The peer's virtualenv, created and installed once (a `.ready` file marks it done)."""
    venv = VENVS / name
    if (venv / ".ready").exists():
        return venv
    print(f"installing {name} into {venv} (once)", file=sys.stderr)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip(venv, "--upgrade", "pip")
    if name == "bentoml":
        pip(venv, "--no-deps", f"bentoml=={BENTOML_VERSION}")
        requires = subprocess.run(
            [str(venv / "bin" / "python"), "-c",
             "import importlib.metadata as m; print('\\n'.join(m.requires('bentoml')))"],
            check=True, capture_output=True, text=True,
        ).stdout.splitlines()
        # Its own requirements, less extras and with certifi unpinned (see the module doc).
        wanted = ["certifi" if r.startswith("certifi") else r for r in requires if "extra ==" not in r]
        pip(venv, *wanted)
    else:
        pip(venv, f"ray[serve]=={RAY_VERSION}")
    (venv / ".ready").write_text("ok\n")
    return venv


# --- processes and memory ---------------------------------------------------------------------

def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def memory(pids: list[int]) -> tuple[float, float, list[tuple[str, float]]]:
    """(RSS MB, PSS MB, [(process, RSS MB)]) of the processes, from /proc/<pid>/smaps_rollup."""
    rss = pss = 0.0
    parts = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                text = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", text, re.M))
        if "Rss" not in fields:
            continue
        rss += int(fields["Rss"]) / 1024
        pss += int(fields.get("Pss", 0)) / 1024
        parts.append((process_label(cmd), int(fields["Rss"]) / 1024))
    return rss, pss, parts


def process_label(cmd: str) -> str:
    """`launch web:`, `manage.py controller`, `ray::ProxyActor`: short enough for a table."""
    words = [w.rsplit("/", 1)[-1] for w in cmd.split() if not w.startswith("-")]
    words = [w for w in words if not re.fullmatch(r"python[\d.]*", w)]
    return " ".join(words[:2])[:48]


def wait_http(url: str, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{url} did not answer:\n{tail}")


def stop_group(process: subprocess.Popen, timeout: float = 30) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class Server:
    """One server under test: a name, how to post to each model, its processes."""

    name: str
    port: int
    headers: str = ""

    def path(self, model: str) -> str:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def request(self, model: str, body: bytes) -> bytes:
        return (
            f"POST {self.path(model)} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n{self.headers}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body


class Ours(Server):
    name = "ours"

    def __enter__(self) -> Ours:
        self.stack = Stack().__enter__()
        self.port = self.stack.port
        self.headers = "Authorization: Basic " + base64.b64encode(f"{self.stack.key}:".encode()).decode() + "\r\n"
        self.endpoints = {
            "identity": self.stack.endpoint(self.stack.bundle(identity_bundle(), "identity"), "identity"),
            "cpu": self.stack.endpoint(self.stack.bundle(cpu_bundle(), "cpu"), "cpu"),
        }
        return self

    def __exit__(self, *exc) -> None:
        self.stack.__exit__(*exc)

    def path(self, model: str) -> str:
        return f"/v1/sync-tasks?model_endpoint_id={self.endpoints[model]}"

    def pids(self) -> list[int]:
        # Replicas run in process groups of their own, still children of the controller.
        return descendants(self.stack.process.pid)

    def pids_serving(self, model: str) -> list[int]:
        """The stack's processes less the replicas of the other endpoints: what serves `model`
        alone (issue 14's memory target: the stack serving one endpoint)."""
        mine = self.endpoints[model]
        return [pid for pid in self.pids() if _replica_endpoint_prefix(pid) in (None, endpoint_prefix(mine))]


ONE_ENDPOINT = "ours, one endpoint"


def _replica_endpoint_prefix(pid: int) -> str | None:
    """A replica's LAUNCH_PREFIX (its endpoint's keys); None for a process that is no replica."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
    except OSError:
        return None
    for entry in environ:
        if entry.startswith(b"LAUNCH_PREFIX="):
            return entry.partition(b"=")[2].decode()
    return None

class BentoML(Server):
    name = "BentoML"

    def __enter__(self) -> BentoML:
        venv = ensure_venv("bentoml")
        self.dir = Path(tempfile.mkdtemp(prefix="bench-bento-"))
        (self.dir / "service.py").write_text(BENTO_SERVICE)
        self.port = free_port()
        self.log = self.dir / "serve.log"
        env = dict(os.environ, BENTOML_HOME=str(self.dir / "home"), BENTOML_DO_NOT_TRACK="true")
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [str(venv / "bin" / "bentoml"), "serve", "service:Models", "--host", "127.0.0.1",
                 "--port", str(self.port)],
                cwd=self.dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        wait_http(f"http://127.0.0.1:{self.port}/readyz", 120, self.process, self.log)
        return self

    def __exit__(self, *exc) -> None:
        stop_group(self.process)
        shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, model: str) -> str:
        return f"/{model}"

    def pids(self) -> list[int]:
        return descendants(self.process.pid)


class RayServe(Server):
    name = "Ray Serve"

    def __init__(self, default_max_ongoing: bool = False):
        self.default_max_ongoing = default_max_ongoing

    def __enter__(self) -> RayServe:
        self.venv = ensure_venv("ray")
        # Short: Ray's unix sockets live under it (108-byte limit).
        self.dir = Path(tempfile.mkdtemp(prefix="bray", dir="/tmp"))
        ports = [free_port() for _ in range(8)]
        self.gcs_port, self.port = ports[0], ports[1]
        self.log = self.dir / "ray.log"
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_DEDUP_LOGS="0")
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [str(self.venv / "bin" / "ray"), "start", "--head", "--block", "--disable-usage-stats",
                 "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}", "--include-dashboard=false",
                 f"--node-manager-port={ports[2]}", f"--object-manager-port={ports[3]}",
                 f"--ray-client-server-port={ports[4]}", f"--dashboard-agent-listen-port={ports[5]}",
                 f"--dashboard-agent-grpc-port={ports[6]}", f"--metrics-export-port={ports[7]}",
                 f"--runtime-env-agent-port={free_port()}",
                 "--min-worker-port=0", "--max-worker-port=0", "--num-cpus=2",
                 f"--temp-dir={self.dir}"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.deploy("main")
        return self

    def deploy(self, which: str) -> None:
        driver = self.dir / "driver.py"
        driver.write_text(RAY_DRIVER)
        deadline = time.monotonic() + 180
        while True:
            result = subprocess.run(
                [str(self.venv / "bin" / "python"), str(driver), f"127.0.0.1:{self.gcs_port}", str(self.port), which],
                env=self.env, capture_output=True, text=True, timeout=300,
            )
            if result.returncode == 0:
                return
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"Ray Serve did not deploy:\n{result.stderr[-3000:]}\n{self.log.read_text()[-2000:]}")
            time.sleep(2)  # the head node may still be starting

    def __exit__(self, *exc) -> None:
        stop_group(self.process, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, model: str) -> str:
        return f"/{model}"

    def pids(self) -> list[int]:
        return descendants(self.process.pid)


class RayDefault(Server):
    """The identity app of the same Ray cluster with Ray's default max_ongoing_requests."""

    name = "Ray Serve (default max_ongoing)"

    def __init__(self, ray: RayServe):
        self.ray, self.port = ray, ray.port

    def path(self, model: str) -> str:
        return "/identity_default"


# --- the client -----------------------------------------------------------------------------

async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    match = re.search(rb"content-length:\s*(\d+)", lower)
    if match:
        await reader.readexactly(int(match.group(1)))
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _connection(port: int, request: bytes, timings: list[float], errors: list[int], stop: float | None,
                      count: int | None) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**24)
    try:
        done = 0
        while (count is None or done < count) and (stop is None or time.perf_counter() < stop):
            start = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            timings.append((time.perf_counter() - start) * 1000)
            if status != 200:
                errors.append(status)
            done += 1
    finally:
        writer.close()


def load(port: int, request: bytes, *, connections: int, seconds: float | None = None,
         count: int | None = None) -> dict:
    """Closed loop: `connections` keep-alive connections, each sending the next request when the
    last is answered, for `seconds` or `count` requests each. -> rps, p50, p99 (ms), errors."""
    async def run() -> tuple[list[float], list[int], float]:
        timings: list[float] = []
        errors: list[int] = []
        start = time.perf_counter()
        stop = start + seconds if seconds else None
        await asyncio.gather(*(
            _connection(port, request, timings, errors, stop, count) for _ in range(connections)
        ))
        return timings, errors, time.perf_counter() - start

    timings, errors, elapsed = asyncio.run(run())
    ordered = sorted(timings)
    return {
        "rps": len(timings) / elapsed,
        "p50": ordered[len(ordered) // 2],
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "errors": len(errors),
    }


def body_of(size: int) -> bytes:
    """A request `{"args": {"data": "xxx..."}}` of about `size` bytes."""
    if size <= 64:
        return b'{"args": {"x": 1}}'
    return json.dumps({"args": {"data": "x" * (size - 22)}}).encode()


# --- the run --------------------------------------------------------------------------------

def measures(quick: bool) -> list[tuple[str, str, dict]]:
    """(label, model, how) of each figure, in the order they run."""
    seq = 200 if quick else 1000
    secs = 1.5 if quick else 4.0
    out: list[tuple[str, str, dict]] = []
    for model in ("identity", "cpu"):
        out.append((f"sequential, {model}", model, {"connections": 1, "count": seq, "size": 0}))
        for c in (1, 8, 32):
            out.append((f"{c} conn, {model}", model, {"connections": c, "seconds": secs, "size": 0}))
    for size, label in ((1024, "1 KB"), (100 * 1024, "100 KB"), (1024 * 1024, "1 MB")):
        n = (20 if quick else 100) if size >= 1024 * 1024 else (50 if quick else 300)
        out.append((f"body {label}, identity", "identity", {"connections": 1, "count": n, "size": size}))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one short rep, printed, not written")
    parser.add_argument("--write", default=str(ROOT / "BENCHMARKS.md"), help="'' to only print")
    args = parser.parse_args()
    reps = 1 if args.quick else args.reps
    plan = measures(args.quick)
    results: dict[tuple[str, str], list[dict]] = {}
    memories: dict[str, tuple[float, float, list]] = {}
    with Ours() as ours, BentoML() as bento, RayServe() as ray:
        servers: list[Server] = [ours, bento, ray]
        time.sleep(3)  # let start-up work settle before reading memory
        for server in servers:
            memories[server.name] = memory(server.pids())
        memories[ONE_ENDPOINT] = memory(ours.pids_serving("identity"))
        ray.deploy("default")
        ray_default = RayDefault(ray)
        for server in servers:  # warm-up: connections, caches, lazy imports
            for model in ("identity", "cpu"):
                load(server.port, server.request(model, body_of(0)), connections=8, count=50)
        load(ray.port, ray_default.request("identity", body_of(0)), connections=8, count=50)
        for rep in range(reps):
            order = servers[rep % 3:] + servers[:rep % 3]
            for label, model, how in plan:
                body = body_of(how["size"])
                runners = list(order)
                if model == "identity" and "conn" in label:
                    runners.append(ray_default)
                for server in runners:
                    figure = load(server.port, server.request(model, body), connections=how["connections"],
                                  seconds=how.get("seconds"), count=how.get("count"))
                    results.setdefault((label, server.name), []).append(figure)
                    print(f"rep {rep + 1} {label:24} {server.name:32} {figure['rps']:8.0f}/s "
                          f"p50 {figure['p50']:7.2f} p99 {figure['p99']:7.2f} ms errors {figure['errors']}",
                          file=sys.stderr)
    table = render(plan, results, memories, reps, args.quick)
    print(table)
    if args.write and not args.quick:
        write_section(Path(args.write), table)


def med(figures: list[dict], key: str) -> float:
    return statistics.median(f[key] for f in figures)


def render(plan, results, memories, reps: int, quick: bool) -> str:
    names = ["ours", "BentoML", "Ray Serve"]
    lines = [
        f"Machine: {machine()}; shared with other work while it ran. {reps} rep(s), median shown; "
        f"servers alternate within each rep. Ray Serve with max_ongoing_requests=100 (its default in "
        "brackets where measured). Ratios: ours / peer (below 1 is better for ours, except requests/s).",
        "",
        "| figure | ours | BentoML | Ray Serve | ours/BentoML | ours/Ray |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def row(label: str, values: list[float | None], unit: str, extra: str = "") -> None:
        cells = [f"{v:.2f}{unit}" if v is not None else "-" for v in values]
        if extra:
            cells[2] += f" ({extra})"
        ratios = [f"{values[0] / v:.2f}" if v else "-" for v in values[1:]]
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")

    for label, _model, _how in plan:
        per = [results.get((label, n)) for n in names]
        default = results.get((label, "Ray Serve (default max_ongoing)"))
        if "conn" in label:
            for key, what, unit in (("rps", "requests/s", ""), ("p50", "p50", " ms"), ("p99", "p99", " ms")):
                extra = f"{med(default, key):.2f}" if default else ""
                row(f"{label}: {what}", [med(p, key) for p in per], unit, extra)
        elif label.startswith("sequential"):
            row(f"{label}: p50", [med(p, "p50") for p in per], " ms")
            row(f"{label}: p99", [med(p, "p99") for p in per], " ms")
        else:
            row(f"{label}: p50", [med(p, "p50") for p in per], " ms")
    errors = {n: sum(f["errors"] for (_, name), figs in results.items() if name == n for f in figs)
              for n in names + ["Ray Serve (default max_ongoing)"]}
    row("memory of the serving processes, RSS", [memories[n][0] for n in names], " MB")
    row("memory of the serving processes, PSS", [memories[n][1] for n in names], " MB")
    for index, kind in ((0, "RSS"), (1, "PSS")):
        row(f"memory, ours serving one endpoint (less the cpu endpoint's replica), {kind}",
            [memories[ONE_ENDPOINT][index], *(memories[n][index] for n in names[1:])], " MB")
    lines.append("")
    lines.append("Non-200 answers: " + ", ".join(f"{n} {e}" for n, e in errors.items()) + ".")
    lines.append("")
    lines.append("Processes counted (RSS MB), read once after start-up with both models deployed:")
    lines.append("")
    for name in names:
        parts = ", ".join(f"`{label}` {mb:.0f}" for label, mb in sorted(memories[name][2], key=lambda p: -p[1]))
        lines.append(f"- {name}: {parts}")
    if quick:
        lines.insert(0, "QUICK RUN (1 short rep): a sanity check, not a measurement.")
    return "\n".join(lines)


def write_section(path: Path, table: str) -> None:
    write_block(path, "peers.py", textwrap.dedent(f"""\
        ## Against the peers (`bench/peers.py`)

            make bench        # = .venv/bin/python bench/peers.py --reps 3, then bench/figures.py

        Written by the script on {time.strftime('%Y-%m-%d')}; identity and 1 ms CPU models, one
        replica, sync, through each server's HTTP API (ours: `POST /v1/sync-tasks` with a key).

        """) + table)


if __name__ == "__main__":
    main()

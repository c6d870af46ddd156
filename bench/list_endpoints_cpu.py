"""CPU time of GET one page of endpoints, in-process (issue 14, item 3), and a byte-for-byte
check of the endpoint answers between two checkouts.

bench/list_endpoints.py measures wall time over HTTP, which a shared machine's load moves a
lot; this measures the CPU time one request takes in the process that serves it (all of its
threads), which that load moves less. One database is made once (this checkout's migrations;
the endpoints created through the API as bench/list_endpoints.py creates them, plus a few
varied ones: GPUs, labels, hooks, callback auth, batching, every status, a deleted creator,
replicas and a queue) and copied for each checkout; one embedded Redis serves both. Each
checkout runs in a process of its own, and the two take turns, figure by figure, rep by rep.

Each request goes through the ASGI application that `launch up` serves (launch_site.asgi;
a GET: its middleware chain and view in one hop on a thread of their own), called in the
process's own event loop without a socket, so what is left out is only the HTTP server
(uvicorn) and the client.

Usage: .venv/bin/python bench/list_endpoints_cpu.py [--endpoints 1000] [--reps 5] [--requests 100]
       [--compare-root PATH] [--check] [--profile FILE]

--compare-root: measure another checkout too (e.g. main before a change), on a copy of the
same database, and give the ratio. --check: compare the answers (status, headers, body) of
both checkouts on every endpoint route that reads endpoints, and stop. --profile:
write a cProfile of this checkout's default page (pstats format) to FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FIGURES = {
    "retrieve 404": "/v1/model-endpoints/end_missing",
    "limit=10": "/v1/model-endpoints?limit=10",
    "default page (100)": "/v1/model-endpoints",
    # As above, with no rendered answer remembered (endpoints.api.views.rendered_answers): every
    # item changed since the last read. The same as the one above in a checkout without them.
    "default page (100), every item changed": "/v1/model-endpoints cold",
    "legacy list, default page (100)": "/v1/hosted_inference/endpoints",
    "limit=1000": "/v1/model-endpoints?limit=1000",
}


# ---- the child: one checkout's Django, driven over stdin/stdout ----

def _child() -> None:
    root = Path.cwd()
    sys.path.insert(0, str(root))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "launch_site.settings")
    import asyncio
    import time

    import django

    django.setup()
    command = sys.argv[2]
    if command == "populate":
        _populate(int(sys.argv[3]))
        return
    from endpoints.api import views
    from launch_site.asgi import application

    key = os.environ["BENCH_KEY"]
    loop = asyncio.new_event_loop()
    remembered = getattr(views, "_rendered_answer", None)
    forget = remembered.cache_clear if remembered is not None else lambda: None

    def get(path: str) -> tuple[int, dict, bytes]:
        path, indent, accept = path.partition(" indent")  # "PATH indent=2": ask for one in Accept
        path, _, query = path.partition("?")
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
            "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {key}".encode())]
            + ([(b"accept", f"application/json; indent{accept}".encode())] if indent else []),
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80),
        }
        sent, bodies = [], [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive():
            if bodies:
                return bodies.pop()
            await asyncio.Event().wait()  # the client never goes away (Django cancels this wait)

        async def send(message):
            sent.append(message)

        loop.run_until_complete(application(scope, receive, send))
        start = sent[0]
        headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
        return start["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])

    for line in sys.stdin:
        request = json.loads(line)
        if request["do"] == "measure":
            path, cold, _ = request["path"].partition(" cold")
            for _ in range(5):  # warm up
                get(path)
            cpu = []
            for _ in range(request["requests"]):
                if cold:
                    forget()
                started = time.process_time()
                get(path)
                cpu.append((time.process_time() - started) * 1000)
            answer = statistics.median(cpu)
        elif request["do"] == "answers":
            answer = []
            for path in request["paths"]:
                status, headers, body = get(path)
                answer.append([path, status, sorted(headers.items()), body.decode()])
        elif request["do"] == "paths":  # every route that shows endpoints, for --check
            answer = _check_paths(get)
        elif request["do"] == "profile":
            # Through Django's test client: the same middleware and view, in this thread (which
            # is all that cProfile sees), without the ASGI handler around them.
            import cProfile

            from django.test import Client

            client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
            for _ in range(5):
                client.get(request["path"])
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(request["requests"]):
                client.get(request["path"])
            profiler.disable()
            profiler.dump_stats(request["file"])
            answer = None
        print(json.dumps(answer), flush=True)


def _check_paths(get) -> list[str]:
    paths = [
        "/v1/model-endpoints", "/v1/model-endpoints?limit=1000", "/v1/model-endpoints?order_by=oldest&limit=1000",
        "/v1/model-endpoints?limit=7&offset=3", "/v1/model-endpoints?offset=5000", "/v1/model-endpoints?name=rich",
        "/v1/model-endpoints?name=nobody", "/v1/model-endpoints?limit=0", "/v1/model-endpoints?order_by=sideways",
        "/v1/hosted_inference/endpoints", "/v1/hosted_inference/endpoints?limit=1000",
        "/v1/hosted_inference/endpoints?limit=3&offset=2", "/v1/model-endpoints/end_missing",
        "/v1/hosted_inference/endpoints/nobody",
        "/v1/model-endpoints?limit=20 indent=2",
        "/v1/hosted_inference/endpoints?limit=20 indent=4",
        "/v1/hosted_inference/endpoints/rich indent=1",
    ]
    _, _, body = get("/v1/model-endpoints?limit=1000")
    for item in json.loads(body)["model_endpoints"]:
        paths += [f"/v1/model-endpoints/{item['id']}", f"/v1/hosted_inference/endpoints/{item['name']}"]
    paths += [f"/v1/model-endpoints/{item['id']} indent=2" for item in json.loads(body)["model_endpoints"][:20]]
    return paths


def _populate(count: int) -> None:
    """The database both checkouts read: `count` endpoints as bench/list_endpoints.py makes
    them, and varied ones among them. Prints the API key."""
    import datetime

    from rest_framework.test import APIClient

    from accounts.services import api_key_create, team_get_or_create_for_user
    from endpoints.models import ModelEndpoint
    from launch_site.redis_client import get_redis
    from tests.factories import make_bundle
    from workers import protocol
    from workers.models import Replica

    user, team = team_get_or_create_for_user(username="bench", team_name="bench")
    _, key = api_key_create(user=user, team=team)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    bundle = make_bundle(team, name="identity")
    base = {"model_bundle_id": bundle.id, "metadata": {}, "cpus": 1, "gpus": 0, "memory": "1Gi", "storage": None,
            "max_workers": 1, "per_worker": 1, "labels": {}}
    for i in range(count):
        body = {**base, "name": f"ep-{i:04d}", "endpoint_type": "async", "min_workers": 0}
        response = client.post("/v1/model-endpoints", body, format="json")
        assert response.status_code == 200, response.content
    # The varied ones, in the default page (newest).
    common = dict(team=team, bundle=bundle, min_workers=0, max_workers=2, per_worker=3, cpus="500m",
                  cpus_millis=500, memory="2Gi", memory_bytes=2 * 2**30)
    orphan_user, _ = team_get_or_create_for_user(username="gone", team_name="bench")
    ModelEndpoint.objects.create(name="plain", endpoint_type="sync", created_by=user, **common)
    rich = ModelEndpoint.objects.create(
        name="rich", endpoint_type="async", created_by=user, gpus=2, gpu_type="nvidia-ampere-a10",
        storage="4Gi", storage_bytes=4 * 2**30, labels={"owner": "ml", "tier": "gold", "line\u2028sep": "x"},
        metadata={"nested": {"list": [1, 2.5, None, "é", 1e16, -0.0, True]}, "emoji": "\U0001f680"},
        post_inference_hooks=["callback"], default_callback_url="http://127.0.0.1:9/hook",
        default_callback_auth={"kind": "basic", "username": "hook", "password": "s3cret"},
        billing_tags={"cost_center": "42", "project": {"id": 7}}, high_priority=True, prewarm=True,
        optimize_costs=False, concurrent_requests_per_worker=5, task_expires_seconds=3600,
        queue_message_timeout_seconds=120, max_batch_size=8, max_batch_wait_ms=20,
        status=ModelEndpoint.Status.READY, **common,
    )
    ModelEndpoint.objects.create(
        name="mtls", endpoint_type="sync", created_by=user, default_callback_url="https://example.com/cb",
        default_callback_auth={"kind": "mtls", "cert": "-----BEGIN CERT-----\nabc\n", "key": "k"},
        optimize_costs=True, high_priority=False, prewarm=False, billing_tags={}, post_inference_hooks=[],
        status=ModelEndpoint.Status.UPDATE_PENDING, **common,
    )
    ModelEndpoint.objects.create(
        name="orphan", endpoint_type="streaming", created_by=orphan_user, status=ModelEndpoint.Status.UPDATE_FAILED,
        status_reason="the bundle failed to load", **common,
    )
    orphan_user.delete()
    for status in ModelEndpoint.Status:
        ModelEndpoint.objects.create(name=f"status-{status.lower()}", endpoint_type="sync", status=status,
                                     created_by=user, **common)
    same_moment = ModelEndpoint.objects.filter(name__in=["plain", "rich", "mtls"])
    same_moment.update(created_at=datetime.datetime(2027, 1, 1, 12, 0, 0, 123456, tzinfo=datetime.UTC))
    for state in Replica.State:
        Replica.objects.create(owner_kind=Replica.Owner.ENDPOINT, owner_id=rich.id, runtime="local", state=state)
    Replica.objects.create(owner_kind=Replica.Owner.BATCH_JOB, owner_id=rich.id, runtime="local",
                           state=Replica.State.READY)
    get_redis().rpush(protocol.Keys(protocol.endpoint_prefix(rich.id)).queue, "task-1", "task-2")
    print(key)


# ---- the parent ----

class Checkout:
    def __init__(self, root: Path, home: Path, redis_url: str, key: str):
        env = {**os.environ, "LAUNCH_HOME": str(home), "REDIS_URL": redis_url, "BENCH_KEY": key}
        env.pop("DATABASE_URL", None)
        self.root = root
        self.log = home / "child.log"  # Django's request log (a 404 is a warning), and errors
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [str(ROOT / ".venv/bin/python"), str(Path(__file__).resolve()), "--child", "serve"],
                cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
            )

    def ask(self, **request):
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.root}: the child ended:\n{self.log.read_text()[-3000:]}")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        _child()
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--compare-root", type=Path)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--profile", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from launch_site.embedded_redis import start_embedded_redis, stop_process

    scratch = Path(tempfile.mkdtemp(prefix="list-cpu-", dir=ROOT / "tmp" if (ROOT / "tmp").is_dir() else None))
    redis_process, redis_url = start_embedded_redis(scratch / "redis", persist=False)
    checkouts = []
    try:
        made = scratch / "made"
        env = {**os.environ, "LAUNCH_HOME": str(made), "REDIS_URL": redis_url}
        env.pop("DATABASE_URL", None)
        subprocess.run([str(ROOT / ".venv/bin/python"), "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env,
                       check=True)
        key = subprocess.run(
            [str(ROOT / ".venv/bin/python"), str(Path(__file__).resolve()), "--child", "populate", str(args.endpoints)],
            cwd=ROOT, env=env, check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
        roots = [ROOT] + ([args.compare_root.resolve()] if args.compare_root else [])
        for n, root in enumerate(roots):
            home = scratch / f"home-{n}"
            shutil.copytree(made, home)
            checkouts.append(Checkout(root, home, redis_url, key))
        if args.check:
            _check(checkouts)
            return
        if args.profile:
            checkouts[0].ask(do="profile", path="/v1/model-endpoints", requests=args.requests,
                             file=str(args.profile.resolve()))
        cpu = {figure: [[] for _ in checkouts] for figure in FIGURES}
        for rep in range(args.reps):
            for figure, path in FIGURES.items():
                requests = args.requests if figure != "limit=1000" else max(10, args.requests // 7)
                order = checkouts if rep % 2 == 0 else list(reversed(checkouts))
                for checkout in order:
                    cpu[figure][checkouts.index(checkout)].append(checkout.ask(do="measure", path=path,
                                                                               requests=requests))
            print(f"rep {rep + 1}: " + "; ".join(
                f"{figure} " + " / ".join(f"{each[-1]:.2f}" for each in cpu[figure]) for figure in FIGURES
            ), file=sys.stderr)
        _table(args, cpu, roots)
    finally:
        for checkout in checkouts:
            checkout.close()
        stop_process(redis_process)
        shutil.rmtree(scratch, ignore_errors=True)


def _check(checkouts: list[Checkout]) -> None:
    paths = checkouts[0].ask(do="paths")
    answers = [checkout.ask(do="answers", paths=paths) for checkout in checkouts]
    differ = [pair for pair in zip(*answers, strict=True) if pair[0] != pair[1]]
    for ours, theirs in differ[:5]:
        print(f"DIFFERENT {ours[0]}:\n  this:     {ours[1:]}\n  compared: {theirs[1:]}"[:3000])
    kinds = {answer[1] for answer in answers[0]}
    print(f"{len(paths)} answers compared (statuses {sorted(kinds)}): {len(differ)} differ")
    if differ:
        sys.exit(1)


def _table(args, cpu: dict, roots: list[Path]) -> None:
    print(f"CPU per request, ms: median of {args.reps} reps, each the median of {args.requests} requests "
          f"({max(10, args.requests // 7)} for limit=1000); {args.endpoints} endpoints")
    header = "| GET | this checkout |"
    if len(roots) > 1:
        header += f" compared ({roots[1]}) | this / compared |"
    print(header)
    print("| --- | --- |" + (" --- | --- |" if len(roots) > 1 else ""))
    for figure, each in cpu.items():
        ours = statistics.median(each[0])
        row = f"| {figure} | {ours:.2f} ms |"
        if len(roots) > 1:
            theirs = statistics.median(each[1])
            row += f" {theirs:.2f} ms | {ours / theirs:.2f} |"
        print(row)


if __name__ == "__main__":
    main()

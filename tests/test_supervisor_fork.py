"""The supervisor's forked children (launch_site.supervisor._fork): set up as subprocess.Popen
sets up a child of ours, ended as an interpreter ends, and never back in the caller's frames."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch_site.supervisor import ForkedProcess, _fork

ROOT = Path(__file__).resolve().parent.parent


def _wait(process: ForkedProcess) -> int:
    return process.wait(timeout=20)


@pytest.mark.parametrize(("body", "status"), [
    (lambda: None, 0),
    (lambda: 7, 7),
    (lambda: sys.exit(3), 3),
    (lambda: sys.exit("a reason"), 1),
    (lambda: 1 / 0, 1),
])
def test_a_forked_child_exits_with_the_status_of_what_it_ran(body, status):
    assert _wait(_fork("launch test: status", body)) == status


def test_an_exception_in_the_child_is_printed_and_nothing_after_the_fork_runs_twice(tmp_path):
    # In an interpreter of its own: under pytest, sys.stderr is a capture file past fd 2,
    # which the child closes (as the supervisor's children close everything past stderr).
    marker = tmp_path / "after-fork"
    program = f"""
import os
from launch_site.supervisor import _fork

def fail():
    raise RuntimeError("boom in the child")

process = _fork("launch test: failing", fail)
# Only the parent comes back here: a child that returned into these frames would write too
# (in the supervisor it would run the supervisor's shutdown).
with open({str(marker)!r}, "a") as f:
    f.write(f"{{os.getpid()}}\\n")
print(process.wait(timeout=20), os.getpid())
"""
    ran = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60)
    status, parent = ran.stdout.split()
    assert status == "1", ran
    assert marker.read_text().split() == [parent]
    assert "RuntimeError: boom in the child" in ran.stderr, ran.stderr


def test_a_forked_child_keeps_no_descriptor_of_the_parent_and_has_its_own_session_title_and_stdin(tmp_path):
    held = open(tmp_path / "held", "w")  # noqa: SIM115 - stands for the lock on LAUNCH_HOME
    report = tmp_path / "report"

    def look():
        fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
        report.write_text(repr({
            "fds": fds,
            "held": held.fileno(),
            "session leader": os.getsid(0) == os.getpid(),
            "stdin": os.readlink("/proc/self/fd/0"),
            "cmdline": Path("/proc/self/cmdline").read_bytes().split(b"\0")[0].decode(),
            "sigterm default": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
        }))

    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        assert _wait(_fork("launch test: look around", look)) == 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        held.close()
    seen = eval(report.read_text())  # noqa: S307 - our own repr
    assert seen["held"] not in seen["fds"], seen
    assert [fd for fd in seen["fds"] if fd > 3] == [], seen  # 0-2, and the directory listing's own
    assert seen["session leader"] and seen["sigterm default"], seen
    assert seen["stdin"] == "/dev/null", seen
    assert seen["cmdline"] == "launch test: look around", seen


def test_forked_process_answers_as_popen_does():
    process = _fork("launch test: sleeper", lambda: time.sleep(60))
    assert process.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=0.2)
    process.send_signal(signal.SIGKILL)
    assert _wait(process) == -signal.SIGKILL
    # Reaped: no signal to a pid the kernel may have given to another process.
    process.send_signal(signal.SIGKILL)
    assert process.poll() == -signal.SIGKILL

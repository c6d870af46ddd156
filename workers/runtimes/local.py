"""The local runtime: each replica is a subprocess of this machine in its own process group
(the embedded default).

GPUs: this machine's, as nvidia-smi lists them (workers.runtimes.local_gpus). Placement books
device ids the way it does for docker hosts (workers.placement.place_local_replica: never
two live replicas on one device), and the replica starts with CUDA_VISIBLE_DEVICES set to
its own ids; a replica without GPUs gets it empty, so it cannot take a device another holds.

Requirements: a bundle's requirements are installed into a cached virtualenv per
requirements hash by a control-queue job (workers.runtimes.local_venvs); the replica runs
from it.

Memory and CPU limits are enforced by the kernel, by the first mechanism this process can use
(`memory_limit_mechanism()`, logged when the first replica starts):

  cgroup v2   a cgroup per replica under this process's own cgroup, when the memory controller
              is (or can be) enabled in its subtree: memory.max, memory.swap.max=0, cpu.max.
  cgroup v1   a cgroup per replica in the memory hierarchy (memory.limit_in_bytes, memsw) and,
              if mounted and writable, the cpu hierarchy (cfs quota).
  rlimit      RLIMIT_DATA: the process cannot allocate past it (MemoryError in Python); no CPU
              limit.

The child joins its cgroups (or sets its rlimit) in a tiny `sh` wrapper that then execs the
replica, so it never runs a line of user code outside them, and no Python runs between fork and
exec in this threaded process (preexec_fn is not safe with threads). A replica's cgroups are
removed once it has been reaped or killed, after their OOM-kill counter has been read for
`exit_info`.

Isolation (`replica_isolation()`): when this process runs as root and setpriv(1) is installed
(util-linux), each replica runs under a uid and gid of its own from LOCAL_REPLICA_UIDS, with
no supplementary groups, no capabilities and no_new_privs, and a private HOME and TMPDIR
(`LAUNCH_HOME/replica-homes/<replica>`, mode 0700, its own). So it cannot read LAUNCH_HOME
(secret key, Redis password, database, store, logs: private to the server user, see
launch_site.home), nor another replica's /proc/<pid>/environ (another uid). It still reads the
code it runs (the checkout and the virtualenv are world-readable), reaches Redis by the
socket's path with its own ACL user, and fetches its bundle over HTTP. Without root or setpriv
replicas run as the server's own user and every bundle author is trusted: `launch up` and the
dashboard say so (`isolation_warning()`).

Replica logs (`LAUNCH_HOME/logs/<replica>.log`, the child's stdout and stderr, opened O_APPEND)
are kept near REPLICA_LOG_MAX_BYTES by `rotate_replica_logs`, a controller tick hook: the tail
is copied to `<replica>.log.1` and the live file truncated, and the child keeps writing.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings

from workers.placement import place_local_replica
from workers.runtimes import local_venvs
from workers.runtimes.base import ExitInfo, Placement, PlacementError, ReplicaSpec, Runtime
from workers.runtimes.local_gpus import LocalGpus, local_gpus

logger = logging.getLogger(__name__)

CGROUP_NAME_PREFIX = "launch-"
CPU_PERIOD_MICROSECONDS = 100_000
# A cgroup this young with no process may be waiting for its replica to join: not swept.
CGROUP_SWEEP_MIN_AGE_SECONDS = 60.0
KILL_WAIT_SECONDS = 1.0
# The most of a log file `logs()` reads, so a huge log costs no more than its tail.
LOG_TAIL_READ_BYTES = 256 * 1024


def _log_path(replica_id: str) -> Path:
    return Path(settings.LAUNCH_HOME) / "logs" / f"{replica_id}.log"


class LocalRuntime(Runtime):
    name = "local"

    def place(self, spec: ReplicaSpec) -> Placement:
        if spec.runnable_image:
            # The endpoint services refuse these at create; this holds for a server whose
            # runtime setting changed under an existing endpoint.
            raise PlacementError(
                f"image {spec.runnable_image['image']} is a runnable image: it needs the docker runtime "
                "(LAUNCH_RUNTIME=docker), not local processes"
            )
        return place_local_replica(spec, local_gpus() if spec.gpus else LocalGpus("", ()))

    def start(self, spec: ReplicaSpec, placement: Placement) -> str:
        python = sys.executable
        if spec.requirements:
            # Raises StartDeferred (being installed) or RequirementsInstallFailed.
            python = str(local_venvs.venv_ready(tuple(spec.requirements)))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(settings.BASE_DIR),
            # So the serve loop can name the limit when an allocation fails (rlimit).
            "LAUNCH_MEMORY_LIMIT_BYTES": str(spec.memory_bytes),
            **spec.env,
            # Its own devices only; none at all ("") for a replica that asked for none.
            "CUDA_VISIBLE_DEVICES": ",".join(placement.gpu_device_ids),
        }
        pid = launch_replica_process(
            spec.replica_id,
            [python, "-m", "workers.serve"],
            env=env,
            memory_bytes=spec.memory_bytes,
            cpus=spec.cpus,
            isolate=True,
        )
        return str(pid)

    def stop(self, replica) -> None:
        self._signal(replica, signal.SIGTERM)

    def kill(self, replica) -> None:
        self._signal(replica, signal.SIGKILL)
        # Processes of the replica that left its process group are still in its cgroup.
        for directory in _replica_cgroup_dirs(replica.id):
            _kill_cgroup_processes(directory)
        child = _children.get(_pid(replica) or -1)
        if child is not None:
            # SIGKILL takes milliseconds: reaped now, its cgroups go now, not on a later tick
            # that may never come (this process exiting).
            try:
                child.process.wait(timeout=KILL_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                pass
        self.is_alive(replica)
        if _pid(replica) not in _children:
            # Not our child (ours are cleaned up when reaped): its cgroup goes once empty.
            _cgroups_to_remove.update(_replica_cgroup_dirs(replica.id))

    def is_alive(self, replica) -> bool:
        pid = _pid(replica)
        if pid is None:
            return False
        child = _children.get(pid)
        if child is not None:
            # Our own child: poll() reaps it, so a dead one is not left a zombie.
            if child.process.poll() is None:
                return True
            _reaped(child)
            return False
        try:
            os.kill(pid, 0)
            alive = not _is_zombie(pid) and _is_our_replica(pid, replica.id)
        except ProcessLookupError:
            alive = False
        except PermissionError:
            return True
        if not alive:
            # Started by an earlier controller process: its cgroup goes once it is empty.
            _cgroups_to_remove.update(_replica_cgroup_dirs(replica.id))
        return alive

    def exit_info(self, replica) -> ExitInfo | None:
        pid = _pid(replica)
        if pid is None:
            return None
        if pid in _children and self.is_alive(replica):
            return None
        return _exits.get(replica.id)

    def logs(self, replica, tail_lines: int = 200) -> str:
        path = _log_path(replica.id)
        lines = _tail_lines(path, tail_lines)
        if len(lines) < tail_lines:
            # Rotated not long ago: the lines before the live file's are in .log.1.
            lines = _tail_lines(_rotated_path(path), tail_lines - len(lines)) + lines
        return "\n".join(lines)

    def _signal(self, replica, signum: int) -> None:
        pid = _pid(replica)
        if pid is None or not self.is_alive(replica):
            return
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            pass


@dataclass(frozen=True)
class _Child:
    replica_id: str
    process: subprocess.Popen
    limits: ResourceLimits
    home: Path | None = None


# The replicas this process started, by pid (so they can be reaped), and how the reaped ones
# ended, by replica id (a pid is reused; the latest _EXITS_KEPT are kept).
_children: dict[int, _Child] = {}
_exits: dict[str, ExitInfo] = {}
_EXITS_KEPT = 1000
# Two threads (the tick, a job) may see a child die at once: one records it.
_reap_lock = threading.Lock()
# cgroup directories to rmdir once their last process is gone (retried from the tick).
_cgroups_to_remove: set[Path] = set()
_mechanism_logged = False


def launch_replica_process(
    replica_id: str, argv: list[str], *, env: dict[str, str], memory_bytes: int, cpus: float, isolate: bool = False
) -> int:
    """Start `argv` as replica `replica_id` under its memory and CPU limits, output appended to
    its log, in a new session; remembered as our child. With `isolate` (and when this server
    can: replica_isolation()), under a uid of its own with a private HOME and TMPDIR. Returns
    its pid."""
    global _mechanism_logged
    if not _mechanism_logged:
        _mechanism_logged = True
        parents = ", ".join(str(parent) for parent in _cgroup_parents())
        logger.info(
            "local runtime: replica memory limits are enforced by %s%s",
            memory_limit_mechanism(),
            f" (cgroups launch-<replica id> under {parents})" if parents else "",
        )
        remove_leftover_cgroups()
    log_path = _log_path(replica_id)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    home = None
    if isolate and replica_isolation():
        with _uid_lock:
            uid = _allocate_uid(replica_id)
            home = _private_home(replica_id, uid)
            _uids[replica_id] = uid
        env = {**env, "HOME": str(home), "TMPDIR": str(home)}
        argv = [
            shutil.which("setpriv") or "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--", *argv,
        ]
    limits = resource_limits_create(replica_id, memory_bytes=memory_bytes, cpus=cpus)
    try:
        # O_APPEND: after rotate_replica_logs truncates the file, writes continue at its start.
        with open(log_path, "ab") as log:
            process = popen_with_limits(
                argv,
                limits,
                cwd=settings.BASE_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, apart from the controller's
            )
    except BaseException:
        resource_limits_remove(limits)
        _release_home(replica_id, home)
        raise
    _children[process.pid] = _Child(replica_id, process, limits, home)
    return process.pid


# --- isolation ----------------------------------------------------------------------------

# Replica id -> the uid it was given, while its process lives (this controller's children).
_uids: dict[str, int] = {}
_uid_lock = threading.Lock()


def replica_isolation() -> str | None:
    """"uid" when replicas run as uids of their own; None when they run as this user."""
    return "uid" if _isolation_check()[0] else None


@functools.cache
def _isolation_check() -> tuple[bool, str]:
    """Whether replicas can run as other uids, and why not: this process must be root, setpriv
    installed, LOCAL_REPLICA_UIDS not "off", and the serve loop must start as another uid (the
    interpreter and the virtualenv readable by others: checked once, by running it)."""
    if settings.LOCAL_REPLICA_UIDS is None:
        return False, "LOCAL_REPLICA_UIDS is off"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False, "the server is not root"
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return False, "setpriv (util-linux) is not installed"
    uid = settings.LOCAL_REPLICA_UIDS[1]
    # What a replica must reach by path: LAUNCH_HOME (its private home is made there) and the
    # directory of a unix Redis socket; every directory above them must let others through.
    reachable = [str(settings.LAUNCH_HOME)]
    redis_url = urlsplit(settings.LAUNCH_REPLICA_REDIS_URL or settings.REDIS_URL)
    if redis_url.scheme == "unix":
        reachable.append(str(Path(redis_url.path).parent))
    probe = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", "--",
             sys.executable, "-c", "import os, sys, workers.serve; [os.stat(path) for path in sys.argv[1:]]",
             *reachable]
    try:
        result = subprocess.run(
            probe, cwd=settings.BASE_DIR, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                               "PYTHONPATH": str(settings.BASE_DIR), "HOME": "/"},
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, f"the serve loop does not start as another uid ({error})"
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return False, (
            f"the serve loop cannot run as another uid: {last} (the interpreter {sys.executable}, the "
            f"virtualenv and the directories above {', '.join(reachable)} must be readable by others)"
        )
    return True, ""


def isolation_warning() -> str | None:
    """What `launch up` and the dashboard say when the local runtime cannot contain replicas."""
    if settings.LAUNCH_RUNTIME != "local" or replica_isolation():
        return None
    why = _isolation_check()[1]
    return (
        f"The local runtime runs every replica as the server's own user ({why}): bundle code can read "
        "LAUNCH_HOME (secret key, database, Redis password) and other replicas' environments. It trusts "
        "every bundle author; use the docker runtime, or run as root with setpriv, for untrusted code."
    )


def _uids_of_live_processes() -> set[int]:
    uids = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("Uid:"):
                    uids.add(int(line.split()[1]))
                    break
        except (OSError, ValueError, IndexError):
            continue
    return uids


def _allocate_uid(replica_id: str) -> int:
    """A uid of LOCAL_REPLICA_UIDS no live process and no child of ours has: two replicas
    never share one (they could read each other's /proc otherwise)."""
    first, last = settings.LOCAL_REPLICA_UIDS
    size = last - first + 1
    busy = _uids_of_live_processes() | set(_uids.values())
    start = int(hashlib.sha256(replica_id.encode()).hexdigest(), 16) % size
    for step in range(size):
        uid = first + (start + step) % size
        if uid not in busy:
            return uid
    raise PlacementError(f"every uid of LOCAL_REPLICA_UIDS ({first}-{last}) is in use")


def _private_home(replica_id: str, uid: int) -> Path:
    parent = Path(settings.LAUNCH_HOME) / "replica-homes"
    parent.mkdir(exist_ok=True)
    parent.chmod(0o711)  # traversable to one's own home, not listable
    home = parent / replica_id
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(mode=0o700)
    os.chown(home, uid, uid)
    return home


def _release_home(replica_id: str, home: Path | None) -> None:
    _uids.pop(replica_id, None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


def _reaped(child: _Child) -> None:
    """Record how a reaped child ended (reading its cgroup first), then free its cgroups."""
    with _reap_lock:
        if _children.get(child.process.pid) is not child:
            return
        _exits[child.replica_id] = exit_info_from(child.process.returncode, child.limits)
        while len(_exits) > _EXITS_KEPT:
            _exits.pop(next(iter(_exits)))
        resource_limits_remove(child.limits)
        _release_home(child.replica_id, child.home)
        del _children[child.process.pid]


# --- limits -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceLimits:
    """What one process runs under: its cgroup directories (one for v2; memory, and maybe cpu,
    for v1) or an RLIMIT_DATA, and its cgroup's OOM-kill count when it was created."""

    mechanism: str
    cgroup_dirs: tuple[Path, ...] = ()
    rlimit_data_bytes: int | None = None
    memory_bytes: int = 0
    oom_kills_at_start: int = 0


@functools.cache
def memory_limit_mechanism() -> str:
    """How replicas' memory is limited here: "cgroup v2", "cgroup v1", "rlimit" or "none"."""
    if _cgroup_v2_parent() is not None:
        return "cgroup v2"
    if _cgroup_v1_parents().get("memory") is not None:
        return "cgroup v1"
    try:
        import resource

        resource.getrlimit(resource.RLIMIT_DATA)
    except (ImportError, AttributeError, OSError):
        return "none"
    return "rlimit"


def resource_limits_create(
    name: str, *, memory_bytes: int, cpus: float, mechanism: str | None = None
) -> ResourceLimits:
    """Create the cgroup(s) of process `name` with its limits, by `mechanism` (default: the one
    in force). A cgroup that cannot be created falls back to the rlimit, with a warning."""
    mechanism = mechanism or memory_limit_mechanism()
    memory_bytes = max(0, int(memory_bytes))
    try:
        if mechanism == "cgroup v2":
            return _create_v2(name, memory_bytes, cpus)
        if mechanism == "cgroup v1":
            return _create_v1(name, memory_bytes, cpus)
    except OSError as error:
        logger.warning("could not create the cgroup of %s (%s); limiting it by rlimit", name, error)
        mechanism = "rlimit"
    if mechanism == "rlimit" and memory_bytes:
        return ResourceLimits("rlimit", rlimit_data_bytes=memory_bytes, memory_bytes=memory_bytes)
    return ResourceLimits("none")


# Joins the cgroups named before "--", sets RLIMIT_DATA (in KiB) if given, then execs the rest.
_WRAPPER_SCRIPT = """
data_kib=$1; shift
while [ "$1" != "--" ]; do echo $$ > "$1" || exit 125; shift; done
shift
if [ -n "$data_kib" ]; then ulimit -d "$data_kib" || exit 125; fi
exec "$@"
"""


def popen_with_limits(argv: list[str], limits: ResourceLimits, **popen_kwargs) -> subprocess.Popen:
    """subprocess.Popen(argv), the process inside `limits` before it runs argv."""
    if limits.mechanism == "none":
        return subprocess.Popen(argv, **popen_kwargs)
    procs_files = [str(directory / "cgroup.procs") for directory in limits.cgroup_dirs]
    data_kib = str(limits.rlimit_data_bytes // 1024) if limits.rlimit_data_bytes else ""
    wrapped = ["/bin/sh", "-c", _WRAPPER_SCRIPT, "launch-limits", data_kib, *procs_files, "--", *argv]
    return subprocess.Popen(wrapped, **popen_kwargs)


def exit_info_from(returncode: int | None, limits: ResourceLimits | None) -> ExitInfo:
    """How a process ended, from its return code (negative: the signal) and its cgroup."""
    killed_by = -returncode if returncode is not None and returncode < 0 else None
    exit_code = returncode if returncode is not None and returncode >= 0 else None
    oom = False
    if limits is not None and limits.cgroup_dirs:
        oom_kills = _oom_kills(limits)
        if oom_kills is not None:
            oom = oom_kills > limits.oom_kills_at_start
        elif killed_by == signal.SIGKILL and limits.memory_bytes:
            # An old v1 kernel without the oom_kill counter: killed while at its limit.
            peak = _read_int(limits.cgroup_dirs[0] / "memory.max_usage_in_bytes")
            oom = peak is not None and peak >= limits.memory_bytes
    return ExitInfo(exit_code=exit_code, signal=killed_by, oom=oom)


def resource_limits_remove(limits: ResourceLimits) -> None:
    """Remove the cgroups, killing what is left in them; one still busy is retried later."""
    for directory in limits.cgroup_dirs:
        _kill_cgroup_processes(directory)
        _cgroups_to_remove.add(directory)
    _remove_empty_cgroups(wait_seconds=0.5)


def remove_leftover_cgroups() -> None:
    """Tick hook: remove the cgroups of gone replicas: ours whose last process had not exited
    when they were reaped, and any other empty replica cgroup older than a minute (a replica
    that ended while no controller process watched it). rmdir refuses a cgroup with a process
    in it, so a running replica's cgroup is never removed."""
    _remove_empty_cgroups(wait_seconds=0)
    now = time.time()
    for parent in _cgroup_parents():
        try:
            directories = list(parent.glob(CGROUP_NAME_PREFIX + "*"))
        except OSError:
            continue
        for directory in directories:
            try:
                young = now - directory.stat().st_mtime < CGROUP_SWEEP_MIN_AGE_SECONDS
            except OSError:
                continue
            if not young and directory.is_dir():
                _rmdir_quietly(directory)


def _remove_empty_cgroups(wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    while _cgroups_to_remove:
        for directory in list(_cgroups_to_remove):
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                continue  # EBUSY: a killed process has not exited yet
            _cgroups_to_remove.discard(directory)
        if not _cgroups_to_remove or time.monotonic() >= deadline:
            return
        time.sleep(0.01)


def _kill_cgroup_processes(directory: Path) -> None:
    try:
        pids = (directory / "cgroup.procs").read_text().split()
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError, ValueError):
            pass


def _cgroup_parents() -> list[Path]:
    """The directories replica cgroups are created in, under the mechanism in force."""
    mechanism = memory_limit_mechanism()
    if mechanism == "cgroup v2":
        parent = _cgroup_v2_parent()
        return [parent] if parent is not None else []
    if mechanism == "cgroup v1":
        return list(_cgroup_v1_parents().values())
    return []


def _replica_cgroup_dirs(replica_id: str) -> list[Path]:
    """The cgroups of `replica_id` that exist."""
    name = CGROUP_NAME_PREFIX + replica_id
    return [parent / name for parent in _cgroup_parents() if (parent / name).is_dir()]


def _create_v2(name: str, memory_bytes: int, cpus: float) -> ResourceLimits:
    parent = _cgroup_v2_parent()
    assert parent is not None
    directory = parent / (CGROUP_NAME_PREFIX + name)
    directory.mkdir(exist_ok=True)
    try:
        if memory_bytes:
            _write(directory / "memory.max", str(memory_bytes))
            if (directory / "memory.swap.max").exists():
                _write(directory / "memory.swap.max", "0")
        if cpus > 0 and (directory / "cpu.max").exists():
            _write(directory / "cpu.max", f"{_cpu_quota(cpus)} {CPU_PERIOD_MICROSECONDS}")
    except OSError:
        _rmdir_quietly(directory)
        raise
    limits = ResourceLimits("cgroup v2", (directory,), memory_bytes=memory_bytes)
    return _with_oom_baseline(limits)


def _create_v1(name: str, memory_bytes: int, cpus: float) -> ResourceLimits:
    parents = _cgroup_v1_parents()
    directories: list[Path] = []
    try:
        memory_dir = parents["memory"] / (CGROUP_NAME_PREFIX + name)
        memory_dir.mkdir(exist_ok=True)
        directories.append(memory_dir)
        if memory_bytes:
            _write(memory_dir / "memory.limit_in_bytes", str(memory_bytes))
            try:
                # Memory plus swap: no swapping past the limit (absent without swap accounting).
                _write(memory_dir / "memory.memsw.limit_in_bytes", str(memory_bytes))
            except OSError:
                pass
        if cpus > 0 and parents.get("cpu") is not None:
            cpu_dir = parents["cpu"] / (CGROUP_NAME_PREFIX + name)
            cpu_dir.mkdir(exist_ok=True)
            directories.append(cpu_dir)
            _write(cpu_dir / "cpu.cfs_period_us", str(CPU_PERIOD_MICROSECONDS))
            _write(cpu_dir / "cpu.cfs_quota_us", str(_cpu_quota(cpus)))
    except OSError:
        for directory in directories:
            _rmdir_quietly(directory)
        raise
    limits = ResourceLimits("cgroup v1", tuple(directories), memory_bytes=memory_bytes)
    return _with_oom_baseline(limits)


def _with_oom_baseline(limits: ResourceLimits) -> ResourceLimits:
    # A cgroup left by an earlier process of the same name keeps its counter.
    return replace(limits, oom_kills_at_start=_oom_kills(limits) or 0)


def _oom_kills(limits: ResourceLimits) -> int | None:
    """The memory cgroup's OOM-kill counter, or None when the kernel has none."""
    if not limits.cgroup_dirs:
        return None
    name = "memory.events" if limits.mechanism == "cgroup v2" else "memory.oom_control"
    try:
        text = (limits.cgroup_dirs[0] / name).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return None


def _cpu_quota(cpus: float) -> int:
    return max(1000, int(cpus * CPU_PERIOD_MICROSECONDS))


@functools.cache
def _cgroup_v2_parent() -> Path | None:
    """This process's own v2 cgroup, if the memory controller can be used for its children."""
    mounts = _cgroup_mounts()
    own = _own_cgroups()
    if "cgroup2" not in mounts or "" not in own:
        return None
    parent = _cgroup_path(mounts["cgroup2"], own[""])
    try:
        if "memory" not in (parent / "cgroup.controllers").read_text().split():
            return None
        enabled = (parent / "cgroup.subtree_control").read_text().split()
        for controller in ("memory", "cpu"):
            if controller not in enabled:
                try:
                    # Refused (EBUSY) while this cgroup has processes, unless it is the root.
                    _write(parent / "cgroup.subtree_control", f"+{controller}")
                except OSError:
                    if controller == "memory":
                        return None
    except OSError:
        return None
    return parent if _can_create_cgroup(parent, "memory.max") else None


@functools.cache
def _cgroup_v1_parents() -> dict[str, Path]:
    """This process's own v1 memory (and cpu) cgroups where a child cgroup can be created."""
    mounts = _cgroup_mounts()
    own = _own_cgroups()
    parents: dict[str, Path] = {}
    for controller, probe_file in (("memory", "memory.limit_in_bytes"), ("cpu", "cpu.cfs_quota_us")):
        if controller not in mounts or controller not in own:
            continue
        parent = _cgroup_path(mounts[controller], own[controller])
        if _can_create_cgroup(parent, probe_file):
            parents[controller] = parent
    return parents if "memory" in parents else {}


def _cgroup_mounts() -> dict[str, tuple[str, str]]:
    """Controller ("memory", "cpu"; "cgroup2" for the unified hierarchy) -> (root, mount point)."""
    mounts: dict[str, tuple[str, str]] = {}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return mounts
    for line in lines:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point = _unescape(fields[3]), _unescape(fields[4])
        if tail[0] == "cgroup2":
            mounts.setdefault("cgroup2", (root, mount_point))
        elif tail[0] == "cgroup":
            for option in tail[2].split(","):
                if option in ("memory", "cpu"):
                    mounts.setdefault(option, (root, mount_point))
    return mounts


def _own_cgroups() -> dict[str, str]:
    """Controller -> this process's cgroup path ("" is the unified hierarchy's)."""
    own: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return own
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            own[controller] = parts[2]
    return own


def _cgroup_path(mount: tuple[str, str], own: str) -> Path:
    """Our cgroup's directory: the mount point plus our path below the mount's root (a
    container sees only its own subtree, mounted at the mount point)."""
    root, mount_point = mount
    relative = os.path.relpath(own, root) if own.startswith(root) else "."
    path = Path(mount_point) / relative
    return path if not relative.startswith("..") and path.is_dir() else Path(mount_point)


def _can_create_cgroup(parent: Path, probe_file: str) -> bool:
    probe = parent / f"{CGROUP_NAME_PREFIX}probe-{os.getpid()}"
    try:
        probe.mkdir(exist_ok=True)
    except OSError:
        return False
    try:
        return (probe / probe_file).exists()
    finally:
        _rmdir_quietly(probe)


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _write(path: Path, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _rmdir_quietly(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


# --- logs ---------------------------------------------------------------------------------


def rotate_replica_logs() -> None:
    """Tick hook: keep each replica log near REPLICA_LOG_MAX_BYTES ("copytruncate").

    A live log past half the bound has its last half-bound copied to `<replica>.log.1` and is
    truncated; the replica keeps writing to its O_APPEND descriptor, from the start. Between
    the read and the truncate (microseconds) a write can be lost: the price of not owning the
    replica's output pipe, which would tie the replica's life to this process."""
    keep = max(1, settings.REPLICA_LOG_MAX_BYTES // 2)
    directory = Path(settings.LAUNCH_HOME) / "logs"
    if not directory.is_dir():
        return
    for path in directory.glob("*.log"):
        try:
            if path.stat().st_size > keep:
                _rotate(path, keep)
        except OSError:
            logger.exception("could not rotate %s", path)


def _rotate(path: Path, keep: int) -> None:
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - keep))
        tail = handle.read(keep)
        handle.truncate(0)
    if size > keep:
        # Start .log.1 at a whole line.
        newline = tail.find(b"\n")
        tail = tail[newline + 1 :] if newline != -1 else tail
    rotated = _rotated_path(path)
    partial = rotated.with_name(rotated.name + ".tmp")
    partial.write_bytes(tail)
    os.replace(partial, rotated)


def _rotated_path(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def _tail_lines(path: Path, count: int) -> list[str]:
    if count <= 0:
        return []
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - LOG_TAIL_READ_BYTES))
            data = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    return data.splitlines()[-count:]


# --- pids ---------------------------------------------------------------------------------


def _pid(replica) -> int | None:
    return int(replica.handle) if replica.handle and replica.handle.isdigit() else None


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def _is_our_replica(pid: int, replica_id: str) -> bool:
    """A restarted controller adopts replicas by pid; make sure the pid was not reused."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return f"LAUNCH_REPLICA_ID={replica_id}".encode() in environ.read().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc (macOS): trust the pid

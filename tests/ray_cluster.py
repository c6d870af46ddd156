"""A multi-node Ray cluster on this machine for the Ray runtime's tests.

Each node is `ray start --block` as our own child, with every port given explicitly (never
Ray's default 6379, which the machine's Redis uses), its own temp dir under /tmp (short:
Ray's socket paths must fit in 107 bytes) and a small object store. Nodes bind to the address
Ray picks for this machine's own interface (Ray refuses a multi-node cluster on 127.0.0.1; a
single node may use it, as bench/ray_vs_local.py does).
A node is "lost" by SIGKILLing its process tree: no graceful drain, like a machine that dies.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
WORKER_PORTS = 40


def ray_installed() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _free_ports(count: int, taken: set[int] | frozenset = frozenset()) -> list[int]:
    sockets, ports = [], []
    while len(ports) < count:
        s = socket.socket()
        s.bind(("", 0))
        sockets.append(s)
        if s.getsockname()[1] not in taken:
            ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def _free_port_range(count: int, taken: set[int]) -> int:
    """The first port of `count` consecutive free ports, none of them in `taken`."""
    for _ in range(200):
        base = _free_ports(1)[0]
        if base + count > 65000 or taken.intersection(range(base, base + count)):
            continue
        held = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                s.bind(("", port))
                held.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no run of free ports for Ray's workers")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class RayNode:
    name: str
    process: subprocess.Popen
    temp_dir: str
    resources: dict = field(default_factory=dict)

    def kill(self) -> None:
        """SIGKILL the node's whole process tree (ours: started by this test process)."""
        tree = [self.process.pid, *_descendants(self.process.pid)]
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=10)


class RayTestCluster:
    def __init__(self, ip: str | None = None):
        """`ip`: the nodes' address; default, this machine's own interface (needed for more
        than one node). A single-node cluster may use 127.0.0.1."""
        import ray._private.services

        self.ip = ip or ray._private.services.get_node_ip_address()
        self.nodes: list[RayNode] = []
        self.removed: list[RayNode] = []
        self.gcs_port = _free_ports(1)[0]
        # Every port given to a node so far (a worker port is bound only when a worker starts).
        self.taken: set[int] = {self.gcs_port}
        self.env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            # A lost node is noticed in seconds, not Ray's default of about 30.
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
            # Replicas in tests run our checkout's code; the nodes find nothing else of it.
            "PYTHONPATH": "",
        }

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.gcs_port}"

    def add_node(self, name: str, *, num_cpus: int = 2, num_gpus: int = 0, resources: dict | None = None) -> RayNode:
        head = not self.nodes
        worker_base = _free_port_range(WORKER_PORTS, self.taken)
        self.taken.update(range(worker_base, worker_base + WORKER_PORTS))
        ports = _free_ports(6, self.taken)
        self.taken.update(ports)
        temp_dir = tempfile.mkdtemp(prefix=f"lr{name}-", dir="/tmp")
        argv = [
            RAY, "start", "--block", f"--node-ip-address={self.ip}",
            f"--node-manager-port={ports[0]}", f"--object-manager-port={ports[1]}",
            f"--min-worker-port={worker_base}", f"--max-worker-port={worker_base + WORKER_PORTS - 1}",
            f"--dashboard-agent-listen-port={ports[2]}", f"--dashboard-agent-grpc-port={ports[3]}",
            f"--metrics-export-port={ports[4]}", f"--runtime-env-agent-port={ports[5]}",
            f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}", f"--resources={json.dumps(resources or {})}",
            f"--object-store-memory={80 * 1024**2}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
            "--log-style=record",
        ]
        if head:
            argv += ["--head", f"--port={self.gcs_port}", "--include-dashboard=false"]
        else:
            argv += [f"--address={self.address}"]
        log = open(Path(temp_dir) / "ray-start.log", "wb")
        process = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=temp_dir,
                                   start_new_session=True)
        node = RayNode(name, process, temp_dir, resources or {})
        self.nodes.append(node)
        self._wait_for_nodes()
        return node

    def _wait_for_nodes(self, timeout: float = 60) -> None:
        import ray

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process.poll() is not None:
                    raise RuntimeError(f"ray start of {node.name} exited: "
                                       + (Path(node.temp_dir) / "ray-start.log").read_text()[-3000:])
            if ray.is_initialized():
                alive = [n for n in ray.nodes() if n.get("Alive")]
                if len(alive) >= len(self.nodes):
                    return
            else:
                try:
                    ray.init(address=self.address, namespace="launch", log_to_driver=False,
                             logging_level="WARNING")
                except Exception:  # noqa: BLE001 - the head is still starting
                    pass
            time.sleep(0.3)
        raise RuntimeError("the Ray test cluster did not come up")

    def remove_node(self, node: RayNode) -> None:
        node.kill()
        self.nodes.remove(node)
        self.removed.append(node)

    def shutdown(self) -> None:
        import shutil

        import ray

        ray.shutdown()
        for node in reversed(self.nodes):
            node.kill()
        for node in self.nodes + self.removed:
            shutil.rmtree(node.temp_dir, ignore_errors=True)
        self.nodes, self.removed = [], []

from __future__ import annotations

import time

from workers import lifecycle, protocol
from workers.models import LIVE_STATES, Replica
from workers.runtimes import get_runtime


def local_replicas_stop_all(*, grace_seconds: float = 15) -> int:
    """Stop every local replica (the embedded stack shutting down): SIGTERM, wait for
    in-flight work up to `grace_seconds`, then SIGKILL. The next start brings up fresh ones."""
    runtime = get_runtime("local")
    replicas = list(Replica.objects.filter(runtime="local", state__in=LIVE_STATES))
    for replica in replicas:
        runtime.stop(replica)
    deadline = time.monotonic() + grace_seconds
    while any(runtime.is_alive(r) for r in replicas) and time.monotonic() < deadline:
        time.sleep(0.1)
    for replica in replicas:
        runtime.kill(replica)
        # What a killed replica was running goes back on its queue for the next start.
        lifecycle.apply(replica, lifecycle.Transition(Replica.State.STOPPED, "the stack was stopped"),
                        runtime=runtime, prefix=protocol.owner_prefix(replica.owner_kind, replica.owner_id))
    return len(replicas)

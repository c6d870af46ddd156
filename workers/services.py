from __future__ import annotations

import time

from django.utils import timezone

from workers import redis_acl
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
        redis_acl.revoke(replica.id)
    Replica.objects.filter(pk__in=[r.pk for r in replicas]).update(
        state=Replica.State.STOPPED, stopped_at=timezone.now(), reason="the stack was stopped"
    )
    return len(replicas)

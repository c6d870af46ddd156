"""LAUNCH_HOME holds the server's secrets (secret_key, redis_password), its SQLite database,
the bundle store and replica logs: nothing in it is for replicas, which on the local runtime
run on this machine (as other uids when the server can drop privileges: SECURITY.md).

`secure_launch_home` runs in every server process (from settings): files this process creates
are private to the server user (umask 077), and LAUNCH_HOME itself can be traversed but not
listed (0711), so that the one thing a replica needs there, the embedded Redis socket in
`run/` (guarded by its password), is reachable by its path and nothing else is.
"""

from __future__ import annotations

import os
from pathlib import Path

# Only the socket's directory is open for traversal; the socket is 0777 (Redis's password,
# not the file mode, guards it: a replica under another uid must be able to connect).
# replica-homes/ holds each local replica's private HOME (0700, owned by the replica's uid);
# venvs/ the virtualenvs of bundles' requirements, which replicas run from (each 0755).
TRAVERSABLE = {"run", "replica-homes", "venvs"}


def secure_launch_home(home: Path) -> None:
    os.umask(0o077)
    try:
        home.chmod(0o711)
        for entry in home.iterdir():
            if entry.is_symlink():
                continue
            if entry.name in TRAVERSABLE:
                entry.chmod(0o711)
            else:
                # Files of earlier versions (created under a wider umask) close too.
                entry.chmod(entry.stat().st_mode & 0o700)
    except OSError:
        pass  # not ours to change (a shared, read-only or foreign-owned home): left as it is

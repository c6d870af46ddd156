"""glibc malloc settings for the processes a large payload goes through (the web workers, a
replica, the embedded redis-server). Plain Python: replicas import this without Django.

By default glibc gives each allocation over 128 KiB pages of its own (mmap) and hands them back
when it is freed, and it trims more than 2 MiB of free memory at the heap's top back to the
system too. A 1 MB request is copied a few times in each process (the socket reads, the
parse, the answer), each copy a fresh megabyte: every request then pays a page fault per
4 KiB page, about 250 a copy, several microseconds each on a virtual machine. Measured
(BENCHMARKS.md, "Large payloads"): a redis-py GET of 1 MB took 5 ms with ~960 minor faults,
0.7 ms with these settings and none. Keeping freed memory in the heap, up to
TRIM_THRESHOLD_BYTES at its top, makes the next request reuse those pages; allocations past
MMAP_THRESHOLD_BYTES (larger than any request body we accept) still get pages of their own
and go back when freed.
"""

from __future__ import annotations

import os

MMAP_THRESHOLD_BYTES = 32 * 1024**2  # glibc's own ceiling for its dynamic threshold
TRIM_THRESHOLD_BYTES = 64 * 1024**2

# mallopt's parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Apply the settings to this process's malloc; False where it is not glibc's (nothing
    changed). Call it early: it concerns allocations from then on."""
    import ctypes  # here: the supervisor imports this module for child_environment only

    try:
        # The symbols already loaded (libc's among them): ctypes.util.find_library would import
        # subprocess and friends and run `ldconfig -p` in every process that calls this.
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return (bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
            and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)))


def child_environment() -> dict[str, str]:
    """The same settings for a child process that is not Python (the embedded redis-server,
    built with glibc's malloc): glibc reads them from its environment at start."""
    return {
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES),
        "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD_BYTES),
    }


def environment_with_settings(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with child_environment's settings, where not set already."""
    merged = dict(os.environ if env is None else env)
    for name, value in child_environment().items():
        merged.setdefault(name, value)
    return merged

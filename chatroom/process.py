"""What belongs to the whole server process rather than to one server: CPU, files, the GIL.

Applied by ``server.main`` before any thread starts (threads inherit all three).
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("chatroom.server")

#: Seconds a thread waiting for the GIL waits before it makes the holder drop
#: it (CPython's default: 0.005).  Every thread here gives the GIL up within
#: microseconds, in its next system call; with thousands of them waiting (a
#: join notice wakes every listener) the default's timed wake-ups and forced
#: drops were most of the server's context switches.  See docs/BENCHMARKS.md.
SWITCH_INTERVAL = 0.05

#: The open-file limit taken when the hard limit is "unlimited".
UNLIMITED_FILES = 1 << 20

#: The CPUs the process may use besides the one :func:`pin_to_cpu` chose (empty: not pinned).
_spare_cpus: set[int] = set()


def raise_open_file_limit() -> None:
    """Every chat user costs a socket and two Redis connections: take all the host allows."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = UNLIMITED_FILES
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            logger.info("open-file limit raised from %d to %d", soft, hard)
    except (ImportError, ValueError, OSError) as exc:
        logger.warning("could not raise the open-file limit: %s", exc)


def pin_to_cpu(spec: str, port: int) -> int | None:
    """Run this process on one CPU (``spec``: "auto", "none" or a CPU number); the CPU, or None.

    One thread at a time runs Python anyway (the GIL); on one CPU a hand-off
    is a cheap switch on the same core instead of waking a thread on another
    one, and Redis and the clients keep the other cores.  "auto" picks one of
    the CPUs allowed by the port, so that servers on neighbouring ports take
    different CPUs.  Must run before any thread starts: threads inherit it.
    """
    if spec == "none" or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if spec == "auto":
        if len(allowed) < 2:
            return None
        cpu = allowed[port % len(allowed)]
    else:
        cpu = int(spec)
        if cpu not in allowed:
            raise SystemExit(f"--cpu {cpu}: not one of the CPUs this process may use ({allowed})")
    os.sched_setaffinity(0, {cpu})
    _spare_cpus.clear()
    _spare_cpus.update(set(allowed) - {cpu})
    return cpu


def spare_cpus() -> set[int] | None:
    """The CPUs the process may use beside the chat's own one, or None if it was not pinned.

    For threads whose work is CPU-bound and outside the GIL (hashing
    passwords): on another CPU they leave the chat's to the chat.
    """
    return set(_spare_cpus) or None

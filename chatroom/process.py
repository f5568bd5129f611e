"""What belongs to the whole server process rather than to one server: CPU, files, the GIL.

Applied by ``server.main`` before any thread starts (threads inherit all three).
"""

from __future__ import annotations

import logging
import os
import platform
import select
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("chatroom.server")

#: Seconds a thread waiting for the GIL waits before it makes the holder drop
#: it (CPython's default: 0.005).  Every thread here gives the GIL up within
#: microseconds, in its next system call; with thousands of them waiting (a
#: join notice wakes every listener) the default's timed wake-ups and forced
#: drops were most of the server's context switches.  See docs/BENCHMARKS.md.
SWITCH_INTERVAL = 0.05

#: The stack each new thread reserves (CPython's default: the system's 8 MiB).
#: Three threads per user: at thousands of users the default's reservations
#: and guard pages count against the host's limits on memory maps, while
#: these threads never run deep C recursion (their Python frames live on the
#: heap in CPython 3.11).  0: the default.
THREAD_STACK_SIZE = 512 * 1024

#: Linux (6.16 and later) gives a threaded process a futex hash table of its
#: own, of 4 buckets per CPU and at least 16: 16 on a 2-core machine, for
#: thousands of threads.  Every thread blocked on a lock (the GIL's above
#: all) waits in one bucket's list, and every wake-up walks its bucket's list
#: to find whom to wake.  At 16 buckets a login storm turned into a livelock:
#: the more threads waited for the GIL, the longer each hand-off took, until
#: the server spent its whole core in ``futex_wake`` and no login completed
#: (docs/BENCHMARKS.md).  So the table gets this many buckets per thread the
#: server may run (3 per client, see THREADS_PER_CLIENT); 64 bytes of kernel
#: memory each.  0: the kernel's default (the A/B of docs/BENCHMARKS.md).
FUTEX_BUCKETS_PER_THREAD = 4
#: A chat client's threads: its reader and its two listeners.
THREADS_PER_CLIENT = 3
#: The most buckets asked for (8 MiB of kernel memory), for 10,000 users.
MAX_FUTEX_BUCKETS = 1 << 17
#: prctl(2) operations (linux/prctl.h).
_PR_FUTEX_HASH = 78
_PR_FUTEX_HASH_SET_SLOTS = 1

#: The open-file limit taken when the hard limit is "unlimited".
UNLIMITED_FILES = 1 << 20

#: The CPUs the process may use besides the one :func:`pin_to_cpu` chose (empty: not pinned).
_spare_cpus: set[int] = set()


#: glibc's per-thread malloc cache (tcache) keeps freed blocks in each thread
#: for that thread's next malloc.  With three threads per user it held about
#: 9 KB per user of memory (docs/BENCHMARKS.md), for no speed the benchmark
#: could measure: off.  Tunables are read when a process starts, hence the
#: re-execution in :func:`lean_malloc`.
MALLOC_TUNABLES = "glibc.malloc.tcache_count=0"
#: Set in the environment of the re-executed process, so that it goes on.
_TUNED = "CHATROOM_MALLOC_TUNED"


def lean_malloc() -> None:
    """Run this process again, at once, with :data:`MALLOC_TUNABLES` (Linux with glibc only).

    Call it first thing, when the process runs the server for its own
    command line: it replaces the process (same pid, same arguments).
    Nothing happens where the tunables are set already (by an operator, or
    by this function), or off glibc.
    """
    if os.environ.get(_TUNED) or "tcache" in os.environ.get("GLIBC_TUNABLES", ""):
        return
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return
    tunables = ":".join(filter(None, (os.environ.get("GLIBC_TUNABLES"), MALLOC_TUNABLES)))
    env = {**os.environ, "GLIBC_TUNABLES": tunables, _TUNED: "1"}
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError as exc:  # go on as we are: only memory is at stake
        logger.warning("could not restart with %s: %s", MALLOC_TUNABLES, exc)


def set_thread_stack_size(size: int | None = None) -> None:
    """Give every thread started from now on a stack of ``size`` bytes (0: the system's default).

    None: :data:`THREAD_STACK_SIZE`, read now (bench/variant.py changes it for its A/B runs).
    """
    if size is None:
        size = THREAD_STACK_SIZE
    try:
        threading.stack_size(size)
    except (ValueError, RuntimeError) as exc:  # a platform that refuses it: keep its default
        logger.warning("could not set the threads' stack size: %s", exc)


def futex_buckets(threads: int) -> int:
    """The buckets of the futex hash table for a process of up to ``threads`` threads: a power of two."""
    wanted = max(16, min(MAX_FUTEX_BUCKETS, threads * FUTEX_BUCKETS_PER_THREAD))
    return 1 << (wanted - 1).bit_length()


def widen_futex_hash(threads: int) -> int | None:
    """Give the process a futex hash table sized for ``threads`` threads; its buckets, or None.

    None where the kernel has no such table (before Linux 6.16, or not
    Linux): there all processes share one, of 256 buckets per CPU.
    """
    if not sys.platform.startswith("linux") or FUTEX_BUCKETS_PER_THREAD <= 0:
        return None
    import ctypes

    buckets = futex_buckets(threads)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_FUTEX_HASH, _PR_FUTEX_HASH_SET_SLOTS, buckets, 0, 0) != 0:
            errno = ctypes.get_errno()
            logger.debug("no futex hash table of our own: %s", os.strerror(errno))
            return None
    except (OSError, AttributeError) as exc:
        logger.debug("no futex hash table of our own: %s", exc)
        return None
    return buckets


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


#: The signals that stop the server.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: What the watchdog writes to the server on the first one: when it came.
_WHEN = struct.Struct("d")


def start_watchdog(grace: float) -> int:
    """Fork the stop watchdog; returns the pipe on which it says "stop" (see :func:`on_stop`).

    Call it before any thread starts.  Why a process: Python runs a signal
    handler in the main thread only, once that thread holds the GIL again
    and its system call (accept) has returned, and with thousands of threads
    woken at once neither may come in time.  The C-level handler, though,
    writes the signal's number to a file descriptor at once, in whatever
    thread the kernel picked (``signal.set_wakeup_fd``).  The watchdog reads
    that pipe in a process of its own, so nothing it does waits for our GIL:

    * the first SIGTERM or SIGINT: it tells the server's ``signals`` thread
      to stop (no main thread needed), and gives it ``grace`` seconds;
    * a second one, or the grace over with the server still running: it
      kills the server at once (SIGKILL).  What that leaves in Redis is
      cleaned up as after a crash.

    It ends when the server does (the pipe closes).
    """
    signals_read, signals_write = os.pipe()
    stop_read, stop_write = os.pipe()
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        os.close(signals_write)
        os.close(stop_read)
        _watch(signals_read, stop_write, parent, grace)  # never returns
    os.close(signals_read)
    os.close(stop_write)
    os.set_blocking(signals_write, False)
    signal.set_wakeup_fd(signals_write, warn_on_full_buffer=False)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _noted)
    return stop_read


def _noted(signum, frame) -> None:
    """The Python-level handler: the watchdog has the signal already (the wakeup fd)."""


def _watch(signals: int, stop: int, parent: int, grace: float) -> None:
    # The forked child: no threads, only system calls.  Signals sent to the
    # whole group (a terminal's Ctrl-C, systemd's stop) must not end it.
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    stops = 0
    deadline = None
    try:
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([signals], [], [], timeout)
            if not ready:  # the grace is over and the server is still there
                os.kill(parent, signal.SIGKILL)
                break
            data = os.read(signals, 64)
            if not data:  # the server has exited
                break
            for signum in data:
                if signum not in STOP_SIGNALS:
                    continue
                stops += 1
                if stops == 1:
                    now = time.monotonic()  # CLOCK_MONOTONIC: the same clock in both processes
                    deadline = now + grace
                    os.write(stop, _WHEN.pack(now))
                else:
                    os.kill(parent, signal.SIGKILL)
                    os._exit(0)
    except OSError:
        pass
    os._exit(0)


def on_stop(stop_pipe: int, stop: Callable[[float], None]) -> threading.Thread:
    """Call ``stop`` in a thread of its own when the watchdog says so (the first SIGTERM or SIGINT).

    ``stop`` is given when the signal came (``time.monotonic()``): how long
    this thread waited for the GIL is then part of what a slow stop logs.
    """

    def wait_and_stop() -> None:
        try:
            said = os.read(stop_pipe, _WHEN.size)
        except OSError:
            return
        if len(said) == _WHEN.size:
            (signalled_at,) = _WHEN.unpack(said)
            logger.info("stop signal received %.1f s ago: stopping", time.monotonic() - signalled_at)
            stop(signalled_at)

    thread = threading.Thread(target=wait_and_stop, name="signals", daemon=True)
    thread.start()
    return thread

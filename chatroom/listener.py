"""The pub/sub listener engine behind the Go ``broadCast`` and ``personalMessage``.

Each chat connection has two listener threads, one per subscription, each on
a pooled Redis connection of its own.  :meth:`ListenerEngine.forward` is what
those threads run: it drains the subscription into the client's socket until
the client leaves, and survives Redis restarts by subscribing again.

Why it reads the connection itself: ``PubSub.listen()`` would silently
reconnect and resubscribe after Redis dropped the connection, losing the
messages in between.  Redis drops a subscriber whose output buffer passes
``client-output-buffer-limit pubsub``; the user is told and disconnected
instead of being left with gaps.  Redis's run id tells that case (same run
id: only this subscriber was dropped) from a restart or an outage (a new run
id, or none: keep the client, subscribe again once Redis is back).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis

from chatroom import redisdb
from chatroom.connection import Connection, State

if TYPE_CHECKING:
    from chatroom.cluster import RedisHealth
    from chatroom.config import Config

logger = logging.getLogger("chatroom.server")

#: Bytes a busy (lingering) listener reads at once: a buffer of its own while
#: busy, given back when idle.  Idle, it reads into its connection's small
#: buffer (redisdb.PUBSUB_READ_SIZE), so idle users cost little memory.
#: hiredis keeps a buffer of the biggest read it was fed (up to twice that,
#: until it is fed again): since join notices come in batches, 16 KiB reads
#: cost 3,000 users 130 KB each, 8 KiB 110 KB, 4 KiB 98 KB but fan-out a third
#: of its rate at N = 200 (make bench capacity and fanout, docs/BENCHMARKS.md).
BUSY_READ_SIZE = 8192
#: Most pub/sub messages a listener takes from its buffer per wake-up.
DRAIN_LIMIT = 256
#: The longest a busy listener lingers, however big the room: a delay people hardly notice.
MAX_LINGER = 0.5
#: A wake-up within this many lingers of the last one finds the room busy, and
#: the listener lingers.  1 may be better: with messages (or batches of join
#: notices) more than one linger apart, a linger ends before the next one
#: comes and only adds a wake-up that reads nothing (at 3,000 users the
#: batches come 0.6 s apart and the linger is at most 0.5 s).  Not measured
#: yet: bench/variant.py's chatroom.listener.BUSY_WITHIN_LINGERS=1.
BUSY_WITHIN_LINGERS = 2
#: A linger that gathered fewer messages than LINGER_WORTH saved no wake-up:
#: the messages come one at a time, as when a user's next message waits for
#: the echo of the last.  After WASTED_LINGERS such lingers in a row the
#: listener blocks again, and lingers next only once a read finds
#: LINGER_WORTH messages waiting by themselves, or after a quiet spell.  A
#: message's round trip to its own echo: 0.5 ms instead of a 10 ms linger
#: with 10 users, 11 instead of 81 ms with 1,000 (make bench rtt); one wasted
#: linger was too eager (fan-out and rooms lost throughput), three in a row
#: is within the runs' noise.  0: off.
LINGER_WORTH = 2
WASTED_LINGERS = 3
#: Linger in the kernel (Linux): one ``recv`` that returns once BUSY_READ_SIZE
#: bytes have come or the linger is over (SO_RCVLOWAT, SO_RCVTIMEO), instead
#: of a ``sleep`` and then a ``recv``.  Every call that releases the GIL costs
#: a busy process a hand-off to get it back: a wake-up of sleep, recv and send
#: paid three, now two.  Fan-out to 1,000: context switches a delivery 0.04-0.05
#: -> 0.02-0.03, server CPU a message 1.5-2.4 -> 1.5-2.0 ms; rooms of 10 0.10-0.19
#: -> 0.09-0.13 ms (five interleaved pairs, docs/BENCHMARKS.md).  False: sleep, then recv.
LINGER_IN_KERNEL = sys.platform.startswith("linux")
#: How often the linger looks at the process's CPU use, in seconds ...
HEADROOM_WINDOW = 0.25
#: ... and the share of one core under which it shrinks (the CPU is to spare)
#: and over which it grows back (the CPU is short), by this step.
CPU_TO_SPARE = 0.55
CPU_SHORT = 0.8
SHRINK_STEP = 1.25
#: Resubscribing while Redis is away: the first wait, doubled after each failed try up to the last.
RESUBSCRIBE_FIRST_DELAY = 0.05
RESUBSCRIBE_MAX_DELAY = 1.0


_TIMEVAL = struct.Struct("@ll")


def _receive_timeout_setter() -> Callable[[socket.socket, bytes], None]:
    """How :func:`wait_in_kernel` sets SO_RCVTIMEO: libc's setsockopt, called with the GIL held.

    For a bytes value, ``socket.setsockopt`` first tries two other forms of
    its arguments and formats an exception for each: that takes the thread
    a page deeper into its stack, a page it keeps (3,000 users: 5 KB more
    RSS each, make bench capacity).  Where ctypes cannot reach libc:
    ``socket.setsockopt`` after all.
    """
    def portable(sock: socket.socket, timeval: bytes) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)

    if not sys.platform.startswith("linux"):
        return portable
    import ctypes

    try:
        libc_setsockopt = ctypes.PyDLL(None, use_errno=True).setsockopt  # PyDLL: the GIL stays held
    except (OSError, AttributeError):
        return portable
    libc_setsockopt.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    level, option = socket.SOL_SOCKET, socket.SO_RCVTIMEO

    def from_libc(sock: socket.socket, timeval: bytes) -> None:
        if libc_setsockopt(sock.fileno(), level, option, timeval, len(timeval)) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))

    return from_libc


_set_receive_timeout = _receive_timeout_setter()


def wait_in_kernel(sock: socket.socket, seconds: float, at_least: int) -> float:
    """Make a blocking ``recv`` on ``sock`` wait for ``at_least`` bytes, but at most ``seconds``; returns ``seconds``.

    Once the time is up, ``recv`` returns what came meanwhile, or raises
    BlockingIOError if nothing did.  ``seconds`` 0 and ``at_least`` 1: an
    ordinary blocking ``recv`` again.
    """
    micros = round(seconds * 1_000_000)
    if seconds > 0:
        micros = max(micros, 1)  # a timeval of 0 would mean no time limit
    _set_receive_timeout(sock, _TIMEVAL.pack(*divmod(micros, 1_000_000)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, at_least)
    return seconds


def subscribe(rdb: redis.Redis, channel: str, timeout: float) -> redis.client.PubSub:
    """Subscribe on a pooled connection of its own and wait for Redis to confirm.

    Waiting makes sure that whatever is published after this returns (the
    user's own join notice, replies) reaches the user.  Without a
    confirmation the pub/sub is closed (its connection back in the pool) and
    ConnectionError raised.
    """
    sub = rdb.pubsub()
    try:
        sub.subscribe(channel)
        reply = sub.get_message(timeout=timeout)
    except BaseException:
        sub.close()
        raise
    if reply is None or reply["type"] != "subscribe":
        sub.close()
        raise redis.ConnectionError(f"no confirmation for SUBSCRIBE {channel}: {reply!r}")
    return sub


class ListenerEngine:
    """Forwards subscriptions to sockets; one instance serves every listener of a server.

    It is handed what it needs: the settings, the Redis health (run ids, the
    outage bookkeeping), how many users are connected (the linger grows with
    it) and the server's stop event.
    """

    def __init__(
        self,
        config: Config,
        health: RedisHealth,
        users_connected: Callable[[], int],
        stopping,
        cpu_seconds: Callable[[], float] = lambda: sum(os.times()[:2]),
    ) -> None:
        self.config = config
        self.health = health
        self.users_connected = users_connected
        self.stopping = stopping
        self.cpu_seconds = cpu_seconds
        #: The share of the budget's linger that busy listeners keep now (see linger_seconds).
        self.shrink = 1.0
        self._window = (time.monotonic(), cpu_seconds())

    def change_subscription(
        self, conn: Connection, sub: redis.client.PubSub, command: str, channel: str, confirmations=()
    ) -> bool:
        """SUBSCRIBE or UNSUBSCRIBE ``channel`` on a listener's connection, from the reader; True once confirmed.

        The hand-over: the reader sends the command (under ``conn.sub_lock``,
        which also keeps redis-py's record of the channels, used to subscribe
        again after an outage, consistent) and waits on an event in
        ``conn.awaited``.  Redis's confirmation arrives on the pub/sub
        connection, which only the listener reads: the listener first sends
        the client every message it read before the confirmation, then the
        ``confirmations`` payloads (join1: so that it comes before the first
        message of the room, which may follow at once), then sets the event
        (:meth:`_confirmed`).  So once this returns True after an UNSUBSCRIBE,
        nothing of that channel can reach the client any more; after a
        SUBSCRIBE, everything published from then on will.  False: no
        confirmation within ``close_timeout``, and ``confirmations`` will not
        be sent (the listener sends them only while the reader still waits).
        """
        event = threading.Event()
        name = channel.encode()
        with conn.sub_lock:
            conn.awaited[name] = (event, list(confirmations))
            try:
                if command == "subscribe":
                    sub.subscribe(channel)
                else:
                    sub.unsubscribe(channel)
            except (redis.RedisError, OSError) as exc:
                logger.error("%r: %s %s failed: %s", conn, command, channel, exc)
                del conn.awaited[name]
                return False
        confirmed = event.wait(self.config.close_timeout)
        with conn.sub_lock:
            conn.awaited.pop(name, None)
        return confirmed

    @staticmethod
    def _confirmed(conn: Connection, sub: redis.client.PubSub, response) -> None:
        """Record a (un)subscribe confirmation and wake the reader awaiting it (see :meth:`change_subscription`)."""
        with conn.sub_lock:
            sub.handle_message(response)
            awaited = conn.awaited.pop(response[1], None) if len(response) > 1 else None
            if awaited is not None:
                event, confirmations = awaited
                if confirmations:
                    conn.send_payloads(confirmations)
                event.set()

    def forward(self, conn: Connection, sub: redis.client.PubSub, kind: str) -> None:
        """Drain one subscription into the socket until unsubscribed or the client leaves."""
        health = self.health
        personal = kind == "personal"
        index = 1 if personal else 0
        subscribed_under = conn.subscribed_under[index] = health.run_id
        wakeups = conn.wakeups[index]
        while conn.alive:
            try:
                self._drain(conn, sub, wakeups, personal)
                break
            except (redis.RedisError, OSError) as exc:
                if not conn.alive or self.stopping.is_set():
                    break
                run_id = health.current_run_id()
                if run_id is not None and run_id == subscribed_under:
                    # Redis is up and unchanged: it dropped this subscriber alone.
                    logger.error("%r: %s subscription dropped by Redis (%s); dropping the client", conn, kind, exc)
                    conn.reply_text("bus_lost")
                    conn.shutdown_socket()
                    break
                # Redis is down or restarted: keep the client, subscribe again once it is back.
                logger.warning("%r: %s subscription lost (%s); resubscribing", conn, kind, exc)
                conn.subscribed_under[index] = None  # follow() must not cut the one being made
                with health.resubscribing():
                    if not self.resubscribe(conn, sub):
                        break
                    subscribed_under = conn.subscribed_under[index] = health.current_run_id()
                health.metrics.resubscribed()
        logger.debug("%r: %s listener ended", conn, kind)

    def _drain(self, conn: Connection, sub: redis.client.PubSub, wakeups: list[int], personal: bool) -> None:
        """Forward messages until unsubscribed; raises when the pub/sub connection breaks.

        With hiredis the listener reads its socket itself (:meth:`_drain_raw`);
        otherwise (fakeredis, redis-py's pure-Python parser, internals that
        moved) it drains through redis-py's public reads, below.

        Once woken, the listener takes every message already buffered on its
        pub/sub connection (``can_read(0)`` only says whether a reply has
        started; the blocking read that follows waits for the rest of it, so
        a partial reply is never mistaken for an error) and sends them
        together: one wake-up and one send for many deliveries.  ``wakeups``
        counts the wake-ups by payloads carried (see :mod:`chatroom.metrics`).
        During a stop, see :meth:`ends_with_the_stop`.
        """
        redis_conn = sub.connection
        raw = redisdb.raw_pubsub_socket(redis_conn)
        if raw is not None:
            self._drain_raw(conn, sub, raw, wakeups, personal)
            return
        stopping = self.stopping
        while sub.subscribed:
            payloads = []
            response = redis_conn.read_response(timeout=None, disconnect_on_error=False, push_request=True)
            while True:
                if response[0] == b"message":
                    payloads.append(response[2])
                else:  # a confirmation: what came before it goes first
                    if payloads and not conn.send_payloads(payloads):
                        return
                    payloads = []
                    self._confirmed(conn, sub, response)
                if len(payloads) >= DRAIN_LIMIT or not redis_conn.can_read(timeout=0):
                    break
                response = redis_conn.read_response(timeout=None, disconnect_on_error=False, push_request=True)
            if payloads:
                if stopping.is_set() and self.ends_with_the_stop(conn, payloads, personal):
                    return
                wakeups[len(payloads).bit_length()] += 1
                wakeups[0] += len(payloads)
                if not conn.send_payloads(payloads):
                    return

    def _drain_raw(
        self,
        conn: Connection,
        sub: redis.client.PubSub,
        raw: redisdb.RawPubSubSocket,
        wakeups: list[int],
        personal: bool,
    ) -> None:
        """The fast drain: this thread alone reads the pub/sub socket, through hiredis.

        One blocking ``recv`` per wake-up takes every byte Redis has written
        so far, and the C parser yields every whole reply in it: each wake-up
        (one GIL hand-off) serves any number of messages, where redis-py's
        reads cost a system call or two per message.  A reply cut short stays
        in the same parser, the one redis-py used for the subscription (so
        nothing it had buffered is lost either), until the next ``recv``
        completes it.  The socket is made blocking: an idle room must not end
        a listener (redis-py's default socket timeout is 5 s), and a blocking
        ``recv`` is one system call where a timed one is two (poll, recv).

        Fewer wake-ups: when two wake-ups come less than two lingers apart
        (:meth:`linger_seconds`, :data:`BUSY_WITHIN_LINGERS`), the room is busy, and the listener lingers:
        it lets messages gather in the socket for one linger, then takes them
        all with one ``recv`` (the kernel does the waiting: :data:`LINGER_IN_KERNEL`).  One wake-up then
        carries every message of a linger instead of one each, and the
        listeners of a room wake spread over the linger rather than all at
        once per message.  A linger that gathered nothing makes the listener
        block in ``recv`` again: an idle listener never wakes, sparse messages
        (a quiet room) go out at once, and only a busy room pays up to one
        linger of latency.  Lingers that gather one message at a time stop
        too (:data:`LINGER_WORTH`): they saved nothing, and cost a user who
        waits for each message's echo a linger a message.
        """
        sock = raw.sock
        sock.settimeout(None)
        idle_buffer = buffer = raw.buffer
        recv_into = sock.recv_into
        gets = raw.gets
        feed = raw.feed
        not_enough_data = raw.not_enough_data
        buffer_size = len(buffer)
        linger_seconds = self.linger_seconds
        busy_within = BUSY_WITHIN_LINGERS  # read once: the loop is the hot path
        linger_worth = LINGER_WORTH
        lingered = False  # the last read was a lingering one
        gathered = 0  # whole messages the last read brought
        wasted_lingers = WASTED_LINGERS
        wasted = 0  # lingers in a row that gathered fewer than linger_worth messages
        proven = True  # a fast wake-up may start a linger (False: lingers were being wasted)
        lingering = 0.0  # seconds to gather messages before the next read; 0: block until one comes
        in_kernel = LINGER_IN_KERNEL
        waits_for = None  # the seconds a recv waits at most (wait_in_kernel); None: until any byte comes
        sleep = time.sleep
        monotonic = time.monotonic
        stopping = self.stopping
        last_wake = 0.0
        received = 0
        while sub.subscribed:
            payloads = []
            while len(payloads) < DRAIN_LIMIT:
                response = gets()
                if response is not_enough_data:
                    break
                if isinstance(response, Exception):  # an error reply
                    raise response
                if response[0] == b"message":
                    payloads.append(response[2])
                else:  # a confirmation (the last unsubscribe ends the loop): what came before it goes first
                    if payloads and not conn.send_payloads(payloads):
                        return
                    payloads = []
                    self._confirmed(conn, sub, response)
            if payloads:
                if stopping.is_set() and self.ends_with_the_stop(conn, payloads, personal):
                    return
                count = len(payloads)
                wakeups[count.bit_length()] += 1
                wakeups[0] += count
                if not conn.send_payloads(payloads):
                    return
                gathered += count
                if count >= DRAIN_LIMIT:
                    continue  # more whole replies may be parsed already
            if gathered:  # (a read that only began a reply says nothing)
                if lingered and gathered < linger_worth:
                    wasted += 1
                    if wasted >= wasted_lingers:
                        lingering, proven, wasted = 0.0, False, 0  # blocks in recv again; see LINGER_WORTH
                        buffer, buffer_size = idle_buffer, len(idle_buffer)
                elif linger_worth and gathered >= linger_worth:
                    proven, wasted = True, 0
                gathered = 0
            if not sub.subscribed:
                return
            if lingering:
                # Busy: let messages gather for one linger (unless the last read
                # left more behind, or a buffer's worth comes sooner), then take
                # them; nothing came meanwhile: idle again.
                try:
                    if in_kernel:
                        if waits_for != lingering:
                            waits_for = wait_in_kernel(sock, lingering, buffer_size)
                        received = recv_into(buffer)
                    else:
                        if received < buffer_size:
                            sleep(lingering)
                        received = recv_into(buffer, 0, socket.MSG_DONTWAIT)
                    lingered = True
                except BlockingIOError:
                    lingering, wasted = 0.0, 0
                    buffer, buffer_size = idle_buffer, len(idle_buffer)  # the busy one goes back
                    continue
            else:
                if waits_for is not None:
                    wait_in_kernel(sock, 0.0, 1)
                    waits_for = None
                received = recv_into(buffer)
                lingered = False
            if not received:
                raise redis.ConnectionError("Redis closed the pub/sub connection")
            feed(buffer, 0, received)
            now = monotonic()
            seconds = linger_seconds()  # the room's size sets it
            # A lingering read comes a linger or more after the last by design: not a quiet spell.
            quiet = not lingering and now - last_wake >= busy_within * seconds
            if quiet:
                proven, wasted = True, 0  # the next burst may linger again
            if lingering or (proven and not quiet):  # faster than the linger: busy
                if not lingering and buffer is idle_buffer:
                    buffer = bytearray(BUSY_READ_SIZE)  # a linger gathers more than an idle read
                    buffer_size = BUSY_READ_SIZE
                lingering = seconds
            last_wake = now

    def follow(self, run_id: str, connections: list[Connection]) -> int:
        """Move every subscription made on another Redis than ``run_id`` to this one; how many.

        After a Sentinel failover the demoted master still serves the
        subscriptions made on it (and PUBLISH, which replicas accept), but
        what is published on the new master reaches them only while it is
        replicated there: each is cut, and its listener subscribes again,
        which finds the new master, as after a Redis restart.
        """
        moved = 0
        for conn in connections:
            for index, sub in enumerate((conn.broadcast_sub, conn.personal_sub)):
                under = conn.subscribed_under[index]
                if sub is not None and under is not None and under != run_id:
                    redisdb.end_subscription(sub)
                    moved += 1
        return moved

    def ends_with_the_stop(self, conn: Connection, payloads: list[bytes], personal: bool) -> bool:
        """During a graceful stop: whether this wake-up is the listener's last.

        The stop tells every user through its own personal channel (one
        round trip for the stopping thread, whatever the crowd), so the
        telling and the leaving run in the users' own threads.  A personal
        listener forwards up to its user's farewell, then ends the whole
        connection: both subscriptions cut (no leave notice of ours wakes it
        again), the socket shut (its reader then removes the user).  A
        broadcast listener ends at its first wake-up: what the room says
        now would only reach a user about to be told goodbye.
        """
        if not personal:
            return True
        farewell = conn.farewell
        if farewell is None or farewell not in payloads:
            return False
        conn.send_payloads(payloads[: payloads.index(farewell) + 1])
        conn.note_leaving("shutdown")
        conn.advance(State.LEAVING)
        conn.gone.set()
        for sub in conn.subscriptions:
            redisdb.end_subscription(sub)
        conn.shutdown_socket()
        return True

    def linger_seconds(self) -> float:
        """How long a busy listener lingers now (0: never).

        In a room of N users a message wakes N listeners: past
        ``wakeup_budget`` wake-ups a second the process spends its time
        switching threads.  So the linger grows with the users connected
        (N / budget), and one wake-up carries the messages of a longer stretch.

        That is a cost worth avoiding only once the CPU is short: while the
        process uses less than CPU_TO_SPARE of a core, the linger shrinks,
        step by step, down to ``linger_shrink`` of it (a busy room of 200 at
        100 messages a second: 10 ms instead of 40), and grows back once the
        CPU is short.  Under a full load (a crowd logging in, a room at its
        maximum throughput) it is the budget's.  In 5 ms steps, so that a
        listener seldom has to set it again.
        """
        config = self.config
        if config.listener_linger <= 0:
            return 0.0
        if config.wakeup_budget <= 0:
            return config.listener_linger
        budgets = min(MAX_LINGER, max(config.listener_linger, self.users_connected() / config.wakeup_budget))
        return max(config.listener_linger, round(budgets * self._shrink() * 200) / 200)

    def _shrink(self) -> float:
        """The share of the budget's linger kept now: every HEADROOM_WINDOW, down with spare CPU, up without.

        Called from many listeners at once: a lost update costs one window.
        """
        started, cpu_then = self._window
        now = time.monotonic()
        if now - started >= HEADROOM_WINDOW:
            cpu_now = self.cpu_seconds()
            used = (cpu_now - cpu_then) / (now - started)
            if used < CPU_TO_SPARE:
                self.shrink = max(self.config.linger_shrink, self.shrink / SHRINK_STEP)
            elif used > CPU_SHORT:
                self.shrink = min(1.0, self.shrink * SHRINK_STEP)
            self._window = (now, cpu_now)
        return self.shrink

    def resubscribe(self, conn: Connection, sub: redis.client.PubSub) -> bool:
        """Reconnect a subscription, with backoff, while its client stays; False if it left."""
        delay = RESUBSCRIBE_FIRST_DELAY
        while conn.alive and not self.stopping.is_set():
            try:
                with conn.sub_lock:  # the channels it subscribes to again must not change meanwhile
                    sub.connection.disconnect()
                    sub.connection.connect()  # redis-py's on_connect callback subscribes again
                # One confirmation per channel; the rest are read by the drain.
                confirmation = sub.connection.read_response(timeout=self.config.close_timeout, push_request=True)
                self._confirmed(conn, sub, confirmation)
                return True
            except (redis.RedisError, OSError) as exc:
                logger.debug("%r: Redis still unreachable: %s", conn, exc)
                conn.gone.wait(delay)
                delay = min(delay * 2, RESUBSCRIBE_MAX_DELAY)
        return False

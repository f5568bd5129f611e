"""redis-chatroom server: the Go + Redis chat room, ported to threads.

This file reads like the Go original: after the socketserver-shaped
lifecycle (:meth:`ChatServer.bind`, :meth:`~ChatServer.serve_forever`,
:meth:`~ChatServer.admit`, :meth:`~ChatServer.refuse`,
:meth:`~ChatServer.shutdown`) come the Go functions, in the Go file's order
and under their Go names (``handleConnection`` -> :meth:`ChatServer.handle_connection`,
``userAdd`` -> :meth:`ChatServer.user_add`, ...), each with its order of
events.  The machinery the Go server never had lives in the ``chatroom``
package (see its docstring).  The threads of one connection::

    serve_forever (accept loop)
      └─ handle_connection   thread "conn-<id>": user_add, subscribe, then
           │                 read_client -> write_to_redis -> message_processing
           │                 until the user leaves; then user_remove
           ├─ broadcast        thread "conn-<id>-broadcast": <prefix>channel1 -> socket
           └─ personal_message thread "conn-<id>-personal":  <prefix>user:<id> -> socket

All three share the command client (``rdb``), the subscriptions' client
(``bus``: each pub/sub holds one connection of its pool) and one send lock,
so frames never interleave.  Go's
``<-quit`` wait is simply ``read_client`` returning.

Redis state (every key and channel starts with ``--key-prefix``)::

    usersName        hash    user id -> display name
    usersByName      hash    name_key(name) -> user id   (chosen names; O(1) lookup, atomic claim)
    usersOnline      hash    user id -> "online"         (counted with HLEN)
    activityRanking  zset    user id -> chat and private messages sent
    nextUserId       string  INCR counter: ids unique across server processes
    history          list    newest first: "<unix time>:<name>:<text>" of public chat
    servers          set     ids of the server processes sharing this Redis
    server:<sid>     string  heartbeat of one process, expires after --dead-after
    serverUsers:<sid> set    user ids connected to that process
    cleanup:<sid>    string  lease of the survivor cleaning up after a dead process
    channel1         channel broadcast
    user:<id>        channel one user's personal messages
    account:<key>    hash    a registered name: name, hash (argon2id), oper, created (chatroom/accounts.py)
    accounts         set     the name_keys of every account
    loginFailures:…  string  failed logins of a name or an address, for 10 minutes
    bans, mutes      hash    target -> the ban or mute, with its expiry (chatroom/moderation.py)
    moderationLog    list    newest first, capped: every operator's action
    control          channel actions aimed at the users of every process (chatroom/control.py)
    probe:<sid>      channel the /readyz pub/sub probe of one process

Where this differs from the original, a comment says what the original did.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time

try:
    import redis
except ImportError as exc:  # python server.py with a bare Python
    sys.exit(
        f"redis-chatroom's packages are not installed in this Python ({exc.name} is missing): "
        "run `make run`, or `pip install .` first"
    )

import protocol as p
from chatroom import process, redisdb
from chatroom.accounts import Accounts, PasswordHasher
from chatroom.announcer import Announcer
from chatroom.cluster import CLEANUP_CHUNK, Membership, RedisHealth
from chatroom.config import Config, parse_args
from chatroom.connection import (
    Connection,
    State,
    TokenBucket,
    set_keepalive,
    set_send_timeout,
    system_payload,
)
from chatroom.control import ControlChannel
from chatroom.history import History
from chatroom.listener import ListenerEngine, subscribe
from chatroom.metrics import NO_METRICS, Monitoring, frame_kind
from chatroom.moderation import Moderation, Sanctions
from chatroom.redisdb import Batch, Departure, Keys
from chatroom.rooms import Rooms
from chatroom.tls import HandshakeFailed, TlsListener, server_context
from chatroom.websocket import WebSocketListener
from framing import FrameError, FrameReader, FrameTimeout, InvalidUtf8, encode_bytes

__all__ = ["ChatServer", "Config", "main", "parse_args"]

logger = logging.getLogger("chatroom.server")

#: Most queued Redis commands a reader sends in one round trip (about 16 chat messages).
BATCH_LIMIT = 64
#: Seconds a refused connection gets to take its one refusal frame.
REFUSAL_SEND_TIMEOUT = 1.0
#: Seconds the accept loop waits when it has no descriptor left even to refuse a connection.
OUT_OF_FILES_PAUSE = 0.1
#: The listening socket's backlog: logins that arrive together wait there, not refused.
LISTEN_BACKLOG = 1024
#: Times a leaving user's removal waits again for a command connection
#: (redisdb.POOL_WAIT each) before it counts as failed: when thousands leave
#: at once, the removals queue for the pool; a failed one is retried only by
#: the next heartbeat's reconcile, its leave notice late.
REMOVAL_BUSY_RETRIES = 3

#: message_processing's answer when the user asked to leave (the ``quit`` mark).
USER_QUITS = object()
#: Seconds past --shutdown-grace after which the watchdog ends a stop that is stuck.
ALARM_MARGIN = 2
#: Seconds a send of the shutdown notice may block: a client that stopped
#: reading must not hold up the stop (its usual --send-timeout is 10 s).
SHUTDOWN_SEND_TIMEOUT = 0.2


class Rename(enum.IntEnum):
    """What ``change_name`` returns: the Go function's codes."""

    FAILED = 0  # Redis could not be updated (answered changeNameFirst2)
    OK = 1
    REFUSED = 2  # taken or not allowed (answered changeNameFirst0)


class ChatServer:
    """The chat room: accept loop, per-connection threads, Redis state.

    ``start()`` binds (port 0 picks a free port, see :attr:`port`) and runs the
    accept loop in a thread; ``serve_forever()`` runs it in the caller's
    thread.  ``shutdown()`` is idempotent and used by signals and tests alike.
    """

    def __init__(self, config: Config, rdb: redis.Redis | None = None, *, ws_ssl_context=None) -> None:
        self.config = config
        self.rdb = rdb if rdb is not None else redisdb.connect_redis(config)
        # Subscriptions on a pool of their own: see redisdb.pubsub_client.
        self.bus = redisdb.pubsub_client(self.rdb, config.max_clients)
        redisdb.check_internals(self.bus)
        self.keys = Keys(config.key_prefix)
        self.lang = config.lang
        self.connections: set[Connection] = set()
        self._connections_lock = threading.Condition()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._shutting_down = threading.Event()
        #: The connections a stop removes from Redis itself (the rest remove themselves).
        self._removed_by_the_stop: frozenset[Connection] = frozenset()
        self._stopped = threading.Event()
        self._per_ip: dict[str, int] = {}
        #: Connections admitted and since released, ever (tests await it).
        self.released = 0
        #: Prometheus metrics (chatroom.metrics), real once bind() knows the server id and --metrics-port is set.
        self.metrics = NO_METRICS
        #: --metrics-port's endpoint (chatroom.metrics.Monitoring), once bound.
        self.monitoring: Monitoring | None = None
        self._accepting = False
        #: When a stop must be over (monotonic); what is left then is cleaned up as after a crash.
        self._stop_deadline = float("inf")
        self.health = RedisHealth(self.rdb, self._local_connections, self.metrics)
        self.membership = Membership(
            redisdb.heartbeat_client(self.rdb), self.keys, config, self.health, self._local_connections, self._shutting_down
        )
        self.listeners = ListenerEngine(config, self.health, lambda: len(self.connections), self._shutting_down)
        self.history = History(self.rdb, config.history)
        self.announcer = Announcer(self.rdb, lambda: len(self.connections), config.wakeup_budget, self.health.report)
        self.rooms = Rooms(self.rdb, self.keys, config, self.listeners, self.history)
        self.control = ControlChannel(self.rdb, self.keys.control, self._shutting_down, config.close_timeout)
        self.sanctions = Sanctions(self.rdb, self.keys)
        self.accounts = Accounts(
            self.rdb, self.keys, config, self.control, self._local_connections, self.sanctions,
            lambda: self.tls_port, PasswordHasher(spare_cpus=process.spare_cpus()),
        )
        self.moderation = Moderation(
            self.rdb, self.keys, self.control, self.accounts, self.sanctions, self._local_connections,
            self.get_users_channel,
        )
        #: The certificate and the handshakes of the TLS port, if there is one.
        self.tls = (
            TlsListener(config.tls_cert, config.tls_key, config.tls_handshake_timeout)
            if config.tls_port is not None else None
        )
        self._tls_listener: socket.socket | None = None
        self._wake_accept: tuple[socket.socket, socket.socket] | None = None
        self.health.on_new_redis = lambda run_id: self.listeners.follow(run_id, self._local_connections())
        # Kept open so that, out of file descriptors, one can be freed to
        # accept a connection and refuse it politely instead of spinning.
        self._spare_fd: int | None = None
        #: The browsers' front door (--ws-port): https:// and wss:// with the TLS port's
        #: certificate (--tls-cert, --tls-key), or with ``ws_ssl_context``.
        self._web_follows_tls = ws_ssl_context is None and self.tls is not None
        if self._web_follows_tls:
            ws_ssl_context = server_context(config.tls_cert, config.tls_key)
        self.websocket = (
            WebSocketListener(config, self.register, self.handle_connection, ssl_context=ws_ssl_context)
            if config.ws_port is not None
            else None
        )

    @property
    def server_id(self) -> str:
        """This process's name among the servers sharing the Redis."""
        return self.membership.server_id

    def _local_connections(self) -> list[Connection]:
        with self._connections_lock:
            return list(self.connections)

    # --- lifecycle (socketserver's shape; Go: the loop in main) ---------------

    def bind(self) -> None:
        """Open the listening sockets (plaintext, TLS), register with Redis, start the heartbeat."""
        config = self.config
        try:
            if config.plaintext:
                self._listener = socket.create_server((config.host, config.port), backlog=LISTEN_BACKLOG)
            if self.tls is not None:
                self._tls_listener = socket.create_server((config.host, config.tls_port), backlog=LISTEN_BACKLOG)
            if not self.membership.server_id:
                self.membership.server_id = f"{socket.gethostname()}-{self.port}"
            if self.websocket is not None:
                self.websocket.bind()
            self.init()
            self.sanctions.load()
            self.control.start()
        except BaseException:
            for listener in self._listening_sockets():
                listener.close()
            self._listener = self._tls_listener = None
            if self.websocket is not None:
                self.websocket.stop()
            raise
        self._wake_accept = socket.socketpair()
        self.accounts.start()
        self.membership.start()
        self.health.start_notifier()
        self._accepting = True  # connections queue in the backlog until serve_forever takes them
        if self.config.metrics_port:  # not in the Go server
            self.monitoring = Monitoring(
                self.config, self.server_id, self.rdb, self.bus, self.keys.health_probe(self.server_id), subscribe,
                redis_up=lambda: not self.health.down, accepting=lambda: self._accepting,
                stopping=self._shutting_down,
            )
            self.metrics = self.health.metrics = self.monitoring.metrics
            self.monitoring.start()
        if self.websocket is not None:
            self.websocket.start()
        logger.info("server %s listening on %s:%d", self.server_id, *self.address)
        if self._tls_listener is not None:
            logger.info("TLS on %s:%d", *self._tls_listener.getsockname()[:2])

    def _listening_sockets(self) -> list[socket.socket]:
        return [s for s in (self._listener, self._tls_listener) if s is not None]

    def _tell_through_redis(self, connections: list[Connection]) -> set[Connection]:
        """Publish each user's farewell on its personal channel, all in one round trip; to whom (see shutdown)."""
        notice = self.text("server_shutdown")
        told = set()
        pipe = self.rdb.pipeline(transaction=False)
        for conn in connections:
            # A client that stopped reading must not hold up the stop (no GIL
            # hand-off here: setsockopt never blocks).
            with contextlib.suppress(OSError):  # a socket closed meanwhile
                set_send_timeout(conn.sock, SHUTDOWN_SEND_TIMEOUT)
            if conn.personal_thread is not None and conn.alive:
                conn.farewell = system_payload(p.INDIVIDUAL, conn.name, notice)
                pipe.publish(self.keys.personal(conn.id), conn.farewell)
                told.add(conn)
        if len(pipe):
            try:
                pipe.execute()
            except redis.RedisError as exc:  # then shutdown tells them straight to their sockets
                self.health.report(exc, "telling the users the server stops")
                return set()
        return told

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the server listens on (in clear text; with --no-plaintext, the TLS one)."""
        listener = self._listener or self._tls_listener
        assert listener is not None, "call bind() or start() first"
        return listener.getsockname()[:2]

    @property
    def port(self) -> int:
        """The port the server listens on (useful with port 0)."""
        return self.address[1]

    @property
    def tls_port(self) -> int | None:
        """The TLS port, or None without one."""
        return self._tls_listener.getsockname()[1] if self._tls_listener is not None else None

    def start(self) -> None:
        """Bind, then accept connections in a background thread."""
        self.bind()
        self._accept_thread = threading.Thread(target=self.serve_forever, name="accept", daemon=True)
        self._accept_thread.start()

    def serve_forever(self) -> None:
        """Accept connections until :meth:`shutdown` (Go: the loop in ``main``).

        One loop for both ports (plaintext and TLS); it only accepts: a TLS
        handshake happens in the connection's own thread (:meth:`handle_connection`).
        """
        if self._wake_accept is None:
            self.bind()
        self._spare_fd = os.open(os.devnull, os.O_RDONLY)
        wake = self._wake_accept[0]
        with selectors.DefaultSelector() as selector:
            try:
                for listener in self._listening_sockets():
                    listener.setblocking(False)  # a connection reset before accept() must not block it
                    selector.register(listener, selectors.EVENT_READ)
                selector.register(wake, selectors.EVENT_READ)
            except (OSError, ValueError):  # shut down already
                self._shutting_down.set()
            while not self._shutting_down.is_set():
                for key, _ in selector.select():
                    if key.fileobj is not wake:
                        self._accept(key.fileobj)
        if self._spare_fd is not None:
            os.close(self._spare_fd)
        for end in self._wake_accept:
            end.close()
        self._stopped.wait()

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, address = listener.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            if self._shutting_down.is_set():
                return
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self._refuse_out_of_files(listener)
            else:
                logger.warning("accept failed: %s", exc)
            return
        sock.setblocking(True)
        try:
            self.admit(sock, address, tls=listener is self._tls_listener)
        except Exception:
            # One connection's surprise must not end the accept loop for everyone.
            logger.exception("could not admit %s:%d; closing it", address[0], address[1])
            sock.close()

    def admit(self, sock: socket.socket, address: tuple, tls: bool = False) -> None:
        """Start serving an accepted socket, or refuse it with a reason (a banned address: before any thread)."""
        config = self.config
        bucket = TokenBucket(config.rate_limit, config.rate_burst)
        stream = self.tls.stream(sock) if tls else sock  # no I/O: the handshake is the thread's
        conn = Connection(stream, address, bucket, max_frame=config.max_frame, lang=config.lang)
        conn.tls = tls
        # Named again once the user has an id.
        conn.reader_thread = threading.Thread(target=self.handle_connection, args=(conn,), name="conn-?", daemon=True)
        refusal = self.register(conn)
        if refusal is not None:
            reason, values = refusal
            self.refuse(sock, reason, **values)
            return
        try:
            conn.reader_thread.start()
        except RuntimeError as exc:  # out of threads
            logger.error("cannot start a thread for %s:%d: %s", *address[:2], exc)
            self._forget(conn)
            self.refuse(sock, "server_busy")

    def register(self, conn: Connection) -> tuple[str, dict] | None:
        """Count a new connection in, or return why it may not come in: (its text key, the text's values).

        The rules of every listener (TCP, TLS, WebSocket).  A connection is
        counted before its reader runs, so a shutdown racing with its accept
        still sees, and waits for, it.
        """
        config = self.config
        ip = conn.address[0]
        banned = self.moderation.address_refusal(ip, self.lang)  # in memory: no round trip here
        with self._connections_lock:
            if self._shutting_down.is_set():  # accepted just before the listener closed
                refusal = "server_shutdown"
            elif banned is not None:
                refusal = "banned_you"
            elif len(self.connections) >= config.max_clients:
                refusal = "server_full"
            elif config.max_per_ip and self._per_ip.get(ip, 0) >= config.max_per_ip:
                refusal = "too_many_from_ip"
            else:
                conn.accepted_at = time.monotonic()
                self.metrics.track(conn)
                self.connections.add(conn)
                self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
                return None
        logger.warning("refusing %s:%d: %s", ip, conn.address[1], refusal)
        self.metrics.login(ok=False)
        self.metrics.disconnected("shutdown" if refusal == "server_shutdown" else "limit")
        return refusal, banned or {}

    def refuse(self, sock: socket.socket, reason: str, /, **values: object) -> None:
        """Send one system message to a connection we will not serve, and close it.

        In clear text, on the TLS port too: no handshake is made for a refusal.
        """
        try:
            sock.settimeout(REFUSAL_SEND_TIMEOUT)
            sock.sendall(encode_bytes(system_payload(p.INDIVIDUAL, "", self.text(reason, **values)) + b"\n"))
        except OSError:
            pass
        finally:
            sock.close()

    def _refuse_out_of_files(self, listener: socket.socket) -> None:
        """Out of file descriptors: refuse the waiting connection through the spare one, then take it back.

        Another thread may take the freed descriptor first (a listener
        opening its pub/sub connection): then no connection can be accepted,
        not even to be refused, and the loop pauses a moment rather than spin
        on a listener it cannot serve, until one is free again.
        """
        logger.error("out of file descriptors: refusing a connection")
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
            try:
                sock, _ = listener.accept()
                self.refuse(sock, "server_busy")
            except OSError:
                pass
        try:
            self._spare_fd = os.open(os.devnull, os.O_RDONLY)
        except OSError:
            self._shutting_down.wait(OUT_OF_FILES_PAUSE)

    def _forget(self, conn: Connection) -> None:
        with self._connections_lock:
            if conn in self.connections:
                self.connections.discard(conn)
                ip = conn.address[0]
                self._per_ip[ip] -= 1
                if not self._per_ip[ip]:
                    del self._per_ip[ip]
                self.released += 1
                self.metrics.retire(conn)
            self._connections_lock.notify_all()

    def wait_for_connections(self, count: int, timeout: float) -> bool:
        """Wait until at most ``count`` connections remain; False on timeout."""
        with self._connections_lock:
            return self._connections_lock.wait_for(lambda: len(self.connections) <= count, timeout)

    def wait_for_released(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` connections in all have been released; False on timeout."""
        with self._connections_lock:
            return self._connections_lock.wait_for(lambda: self.released >= count, timeout)

    def shutdown(self, signalled_at: float | None = None) -> None:
        """Stop accepting, tell every user, remove them, wait for their threads; within --shutdown-grace.

        ``signalled_at``: when the signal that asked for it came (the log
        then says how long the stop waited to begin).

        Every user is told the server is going down; each is removed from
        Redis by the one atomic removal (redisdb.queue_removals), so the other
        processes see each leave once.  Whatever is not done by the grace's
        end (a Redis that does not answer) is left to the survivors, as after
        a crash: our heartbeat goes, our id stays in ``servers``.
        """
        if self._shutting_down.is_set():
            self._stopped.wait()
            return
        began = time.monotonic()
        started = min(began, signalled_at) if signalled_at is not None else began
        self._stop_deadline = started + self.config.shutdown_grace
        self._shutting_down.set()
        logger.info("shutting down")
        if self._wake_accept is not None:
            with contextlib.suppress(OSError):
                self._wake_accept[1].send(b"x")
        for listener in self._listening_sockets():
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        connections = self._local_connections()
        self._removed_by_the_stop = frozenset(connections)
        phases = [("stop began", began)]  # (what, when it was done): where a slow stop spent its time
        # Every user is told through its own personal channel, in one round
        # trip: its personal listener forwards the farewell and ends the
        # connection (ListenerEngine.ends_with_the_stop), cutting both its
        # subscriptions, so no leave notice below wakes it.  The telling and
        # the closing so run in the users' own threads; this thread, which
        # under a storm of wake-ups waits for the GIL at every system call,
        # makes a handful.  (It told 3,000 users one by one in 7.8 s, behind
        # a storm of leaves.)  Then it removes them all, 200 a round trip,
        # and waits for their connections to close.
        told = self._tell_through_redis(connections)
        phases.append(("users told", time.monotonic()))
        # Out of Redis at once, while this thread still gets the GIL at all:
        # the leave notices wake each of our broadcast listeners once more at
        # most (it then ends, see ends_with_the_stop).
        self.users_remove(connections, deadline=self._stop_deadline)
        phases.append(("users removed from Redis", time.monotonic()))
        reserve = min(2.0, self.config.shutdown_grace / 4)  # for the stragglers, the removals, the threads
        with self._connections_lock:
            self._connections_lock.wait_for(
                lambda: self.connections.isdisjoint(told), max(0.0, self._stop_deadline - reserve - time.monotonic())
            )
        phases.append(("connections closed", time.monotonic()))
        # Whoever is left (mid-login, deaf, a Redis that did not answer): told
        # and cut from here.  Subscriptions first, so that no leave notice of
        # ours wakes a listener of ours.
        stragglers = [conn for conn in connections if conn.alive]
        notice = self.text("server_shutdown")
        for conn in stragglers:
            conn.send_payload(system_payload(p.INDIVIDUAL, conn.name, notice))
        for conn in connections:
            conn.note_leaving("shutdown")
            conn.advance(State.LEAVING)
            conn.gone.set()
        for conn in stragglers:
            for sub in conn.subscriptions:
                redisdb.end_subscription(sub)
        left = self.users_remove(connections, deadline=self._stop_deadline)  # what a failure left
        for conn in stragglers:
            conn.shutdown_socket()
        # One deadline for all of them: waiting close_timeout for each thread
        # in turn could add up to minutes with thousands of users.
        deadline = min(time.monotonic() + self.config.close_timeout, self._stop_deadline)
        self.membership.stop(max(0.0, deadline - time.monotonic()))
        for conn in connections:
            thread = conn.reader_thread
            if thread is not None and thread.ident is not None:  # admit() may not have started it yet
                thread.join(max(0.0, deadline - time.monotonic()))
        phases.append(("threads ended", time.monotonic()))
        self.health.stop_notifier(max(0.0, deadline - time.monotonic()))
        self.control.stop(max(0.0, deadline - time.monotonic()))
        self.accounts.stop(max(0.0, deadline - time.monotonic()))
        if self.monitoring is not None:
            self.monitoring.stop(max(0.0, deadline - time.monotonic()))
        self.membership.unregister()
        if self.websocket is not None:  # what is left: page requests, handshakes refused as shutting down
            self.websocket.stop()
        self._stopped.set()
        if self._accept_thread is not None:
            self._accept_thread.join(self.config.close_timeout)
        steps = ", ".join(f"{what} at {when - started:.1f} s" for what, when in phases)
        took = time.monotonic() - started
        if left:
            logger.warning("shut down in %.1f s (%s); %d users left in Redis for the other servers to remove",
                           took, steps, left)
        else:
            # A stop that used a quarter of its grace is worth a look before one runs out of it.
            logger.log(logging.WARNING if took > self.config.shutdown_grace / 4 else logging.INFO,
                       "shut down in %.1f s (%s)", took, steps)

    # --- the Go functions, in the Go file's order --------------------------------

    def init(self) -> None:
        """Join the servers on this Redis, after cleaning up our own previous run.

        Original: deleted every user, name and score at start, which is right
        for one process and wipes the users of every other process sharing the
        Redis.  Here only the users a previous run of this same server id left
        behind are removed (and announced as gone); those of a dead process of
        another id are removed by the survivors' heartbeats.
        """
        self.membership.join()

    def handle_connection(self, conn: Connection) -> None:
        """Serve one client from connect to leave, then release all it holds."""
        try:
            if conn.tls and not self._tls_handshake(conn):
                return
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            set_keepalive(conn.sock)
            set_send_timeout(conn.sock, self.config.send_timeout)
            self.user_add(conn)
            conn.broadcast_sub = subscribe(self.bus, self.keys.broadcast, self.config.close_timeout)
            conn.personal_sub = subscribe(self.bus, self.keys.personal(conn.id), self.config.close_timeout)
            # Out of threads: RuntimeError, the client is told below.
            conn.broadcast_thread = self._start_thread(f"conn-{conn.id}-broadcast", self.broadcast, conn)
            conn.personal_thread = self._start_thread(f"conn-{conn.id}-personal", self.personal_message, conn)
            self.metrics.login(ok=True, seconds=time.monotonic() - conn.accepted_at)
            self.read_client(conn)
        except redis.RedisError as exc:
            # Registering failed (readers answer their own Redis errors): at
            # maxclients, out of memory, read-only, unreachable.
            self.health.report(exc, f"{conn!r}: registering a new connection")
            self.metrics.login(ok=False)
            conn.note_leaving("error")
            conn.reply_text("login_refused")
        except RuntimeError as exc:
            logger.error("%r: %s; closing the connection", conn, exc)
            self.metrics.login(ok=False)
            conn.note_leaving("limit")
            conn.reply_text("server_busy")
        except Exception:
            logger.exception("%r: unexpected error", conn)
        finally:
            self.close_connection(conn)

    def reload_tls(self) -> None:
        """SIGHUP: the certificate and key again, for the TLS and web connections that come next."""
        if self.tls.reload() and self.websocket is not None and self._web_follows_tls:
            self.websocket.reload_certificate(self.tls.cert_file, self.tls.key_file)

    def _tls_handshake(self, conn: Connection) -> bool:
        """The TLS handshake, within --tls-handshake-timeout; False (logged) if it failed."""
        notice = encode_bytes(system_payload(p.INDIVIDUAL, "", self.text("tls_only_port")) + b"\n")
        try:
            version = self.tls.handshake(conn.sock, notice)
        except HandshakeFailed as exc:
            logger.info("%r: %s", conn, exc)
            return False
        logger.debug("%r: %s", conn, version)
        return True

    @staticmethod
    def _start_thread(name: str, target, conn: Connection) -> threading.Thread:
        thread = threading.Thread(target=target, args=(conn,), name=name, daemon=True)
        thread.start()
        return thread

    def close_connection(self, conn: Connection) -> None:
        """Free both pub/subs, remove the user, close the socket, end both listeners (Go: the defers).

        The subscriptions go first, and without a round trip: at Redis's
        maxclients the removal may need their connections freed.  The user
        leaves Redis before its socket closes, as in the original (userRemove,
        then the deferred Close): a user who quits and comes straight back
        finds its name free.
        """
        # Not under the send lock: a listener may hold it in a blocked send,
        # which the socket shutdown below wakes.
        conn.advance(State.LEAVING)
        conn.gone.set()
        # Original: the two subscriptions were never closed, leaking two Redis
        # connections and a goroutine per disconnect.
        for sub in conn.subscriptions:
            redisdb.end_subscription(sub)
        # During a stop, shutdown removes the users it listed, a chunk per
        # round trip: thousands of round trips from thousands of threads would
        # each wait for the GIL.  A user who left before the list was made
        # removes itself (it once skipped that as soon as the stop began, and
        # was on nobody's list: make bench's stop found 4 of 150 such users
        # left in Redis).
        if conn.in_redis and conn not in self._removed_by_the_stop:
            self.await_own_join(conn)  # its leave notice after its join notice
            try:
                self.user_remove(conn)
            except redis.RedisError as exc:
                # Its records stay listed under this server: the next reconcile removes them.
                self.health.report(exc, f"{conn!r}: removing the user")
                self.health.reconcile_needed.set()
        conn.shutdown_socket()
        for thread in conn.listener_threads:
            thread.join(self.config.close_timeout)
        for sub in conn.subscriptions:
            sub.close()
        conn.close()
        self.metrics.disconnected(conn.leave_reason or "reset")
        self._forget(conn)
        logger.debug("%r: released", conn)

    def user_add(self, conn: Connection) -> None:
        """Register a new, still unnamed user: presence, name, ranking.

        Original: the id and initial name were the remote address, which
        contains ':' and breaks the 4-field split in every client.  Here the id
        comes from a Redis counter (unique across server processes) and the
        initial name is ``guest-<id>``, a form no user may claim; so guest
        names need no entry in usersByName (the id is in the name), and the
        first rename has no name to release.
        """
        conn.registering = True  # its id may be in Redis before it is known here (see Membership.reconcile)
        try:
            conn.id = redisdb.add_user(self.rdb, self.keys, self.server_id)  # one round trip
        finally:
            conn.registering = False
        conn.name = p.guest_name(conn.id)
        conn.name_key = p.name_key(conn.name)
        conn.advance(State.GUEST)
        threading.current_thread().name = f"conn-{conn.id}"
        logger.info("%r: connected", conn)

    def change_name(self, conn: Connection, new_name: str) -> tuple[Rename, str]:
        """Claim ``new_name`` atomically; (Rename.OK, "") on success.

        Returns (REFUSED, reason) when the name is taken or not allowed,
        (FAILED, reason) when Redis could not be updated.  Original: read every
        name, then set (two clients could take one name), and never released
        the old name.
        """
        problem = p.name_problem(new_name) or self.moderation.name_problem(new_name)
        if problem is not None:
            return Rename.REFUSED, problem
        with conn.state_lock:
            try:
                claim = redisdb.claim_name(
                    self.rdb, self.keys, conn.id, new_name,
                    release=conn.name_key, account=self.accounts.guarded_account(conn, new_name),
                )
            except redis.RedisError as exc:
                self.health.report(exc, f"{conn!r}: renaming to {new_name!r}")
                if redisdb.outcome_unknown(exc):
                    # It may still run: the user keeps its name, and the claim
                    # is undone by the next reconcile, or when the user leaves.
                    conn.uncertain_names.add(p.name_key(new_name))
                    return Rename.FAILED, "rename_timeout"
                return Rename.FAILED, "rename_failed"
            if claim is redisdb.Claim.REGISTERED:
                return Rename.REFUSED, "name_registered"
            if claim is redisdb.Claim.TAKEN:
                return Rename.REFUSED, "name_taken"
            conn.name, conn.name_key = new_name, p.name_key(new_name)
        logger.info("%r: renamed to %r", conn, new_name)
        return Rename.OK, ""

    def personal_message(self, conn: Connection) -> None:
        """Forward every message of the user's personal channel to its socket, until it leaves."""
        self.listeners.forward(conn, conn.personal_sub, "personal")

    def broadcast(self, conn: Connection) -> None:
        """Forward every message of the broadcast channel to the user's socket, until it leaves."""
        self.listeners.forward(conn, conn.broadcast_sub, "broadcast")

    def read_client(self, conn: Connection) -> None:
        """Read frames and handle each in order until the client leaves."""
        config = self.config
        reader = conn.frame_reader(  # frames over TCP; a browser's WebSocket messages
            config.max_frame,
            first_frame_timeout=config.login_timeout,
            frame_timeout=config.frame_timeout,
            idle_timeout=config.idle_timeout,
        )
        batch = Batch(self.rdb)
        conn.reader = reader  # its byte count is a metric
        try:
            self._read_frames(conn, reader, batch)
        finally:
            self.flush(conn, batch)

    def _read_frames(self, conn: Connection, reader: FrameReader, batch: Batch) -> None:
        """``reader``: a FrameReader, or anything that reads as one (a browser's MessageReader)."""
        while True:
            if conn.joined and reader.idle_timeout:
                # A named user who only reads is a user, not an idle socket:
                # TCP keepalive finds the ones whose host went away.
                reader.idle_timeout = 0
            # The writes of every message already waiting go in one round
            # trip: a sender with many frames in flight costs Redis, and every
            # listener, one burst instead of one wake-up per message.  Before
            # a read that may block, whatever is queued goes out.
            if len(batch) >= BATCH_LIMIT or (len(batch) and not reader.has_frame()):
                self.flush(conn, batch)
            try:
                msg = reader.read()
            except InvalidUtf8 as exc:
                logger.info("%r: %s", conn, exc)
                conn.frames_by_kind[-1] += 1  # "bad"
                if not conn.bucket.take():
                    if self.refuse_flood(conn):
                        continue
                    conn.note_leaving("flood")
                    return
                conn.reply_text(exc.answer)  # or a WebSocket's binary message
                continue
            except FrameTimeout as exc:
                logger.info("%r: %s; closing the connection", conn, exc)
                conn.note_leaving("timeout")
                conn.reply_text(f"timeout_{exc.kind}", seconds=f"{exc.seconds:g}")
                return
            except FrameError as exc:
                # Original: a negative length panicked the whole server process.
                logger.warning("%r: %s; closing the connection", conn, exc)
                conn.note_leaving("bad_frame")
                conn.reply_text("frame_error", reason=exc)
                return
            except OSError:
                conn.note_leaving("reset")
                return
            if msg is None:
                conn.note_leaving("reset")  # closed without ./quit
                return
            if not msg:
                continue
            if self._shutting_down.is_set():  # its user is being told goodbye, and removed
                # Its personal listener forwards the farewell, then ends the
                # connection (or shutdown ends it, at the grace's end): leaving
                # first would shut the socket before the farewell went out
                # (a page that sent something as the stop began lost it).
                conn.gone.wait(max(0.0, min(self._stop_deadline - time.monotonic(), self.config.shutdown_grace)))
                conn.note_leaving("shutdown")
                return
            logger.debug("%r: received %r", conn, p.redacted(msg))
            conn.frames_by_kind[frame_kind(msg)] += 1
            if not conn.bucket.take():
                if self.refuse_flood(conn):
                    continue
                conn.note_leaving("flood")
                return
            conn.refused_in_a_row = 0
            if self.write_to_redis(conn, msg, batch) is USER_QUITS:
                conn.note_leaving("quit")
                return

    def flush(self, conn: Connection, batch: Batch) -> None:
        """Execute the writes queued for this client's messages (one round trip).

        Each message gets one answer about its fate at most: its echo (or
        confirmation) when delivered; "not sent" when Redis refused or could
        not be reached (then nobody got it, see :class:`~chatroom.redisdb.Batch`);
        "may or may not have been delivered" when Redis took the writes and
        did not answer in time, since they may still run.
        """
        if not len(batch):
            return
        started = time.monotonic()
        try:
            batch.pipe.execute()
            if batch.messages:
                self.metrics.message_round_trip(time.monotonic() - started)
        except redis.RedisError as exc:
            # Original: log.Fatalf, stopping the whole server.
            self.health.report(exc, f"{conn!r}: handling its messages")
            if not batch.messages:
                pass  # only bookkeeping was lost (a join notice): nobody waits for an answer
            elif redisdb.outcome_unknown(exc):
                conn.reply_text("outcome_unknown")
            elif batch.messages == 1:
                conn.reply_text("not_sent")
            else:
                conn.reply_text("not_sent_many", count=batch.messages)
        else:
            for payload in batch.confirmations:
                conn.reply(payload)
        finally:
            batch.reset()

    def refuse_flood(self, conn: Connection) -> bool:
        """Refuse a message over the rate limit; False: disconnect the flooder."""
        conn.refused_in_a_row += 1
        if conn.refused_in_a_row >= 2 * conn.bucket.burst:
            logger.warning("%r: still flooding after %d refusals; disconnecting", conn, conn.refused_in_a_row)
            conn.reply_text("flood_disconnect")
            return False
        if conn.refused_in_a_row == 1:
            logger.info("%r: over the rate limit", conn)
            conn.reply_text("flood_warning", rate=f"{conn.bucket.rate:g}")
        return True

    def write_to_redis(self, conn: Connection, msg: str, batch: Batch) -> object:
        """Hand one message to :meth:`message_processing` as its own sender's; answer a Redis failure.

        It no longer writes to Redis itself.  Original: RPUSH to one
        ``messageQueue`` list shared by all connections, then LPOP by whichever
        connection came next, so under concurrency one user's message was
        handled as another's.  The list bought nothing (the same goroutine
        popped at once), so the message goes straight on; what this function
        keeps is the Go one's place between reading and processing, and the
        answer when Redis fails.
        """
        self.await_own_join(conn)
        try:
            return self.message_processing(conn, msg, batch)
        except redis.RedisError as exc:
            # Original: log.Fatalf, stopping the whole server.  Nothing of this
            # message was queued yet (handlers read before they queue): one answer.
            self.health.report(exc, f"{conn!r}: handling {p.redacted(msg)!r}")
            conn.reply_text("server_error")
            return None

    def await_own_join(self, conn: Connection) -> None:
        """Wait until the user's join notice is out, if it is still queued: nothing it does may overtake it."""
        announced = conn.announced
        if announced is not None:
            announced.wait(self.config.close_timeout)
            conn.announced = None

    def message_processing(self, conn: Connection, msg: str, batch: Batch) -> object:
        """Parse one payload and dispatch it.

        Writes (publishes, history, the ranking) are queued on ``batch``, which
        the reader executes once no further whole message is waiting: at most
        one round trip per message.  Original: slept one second per message,
        and counted every payload for the ranking (the quit too, after the user
        was removed, leaving a ghost entry); here only what a user says (chat
        and private messages) counts as activity.
        """
        parts = p.split_message(msg)
        if parts is None:
            logger.info("%r: not four fields: %r", conn, p.redacted(msg))
            conn.reply_text("bad_format")
            return None
        if self.moderation.refuses(conn, parts):  # muted
            return None
        if parts.target_type == p.INDIVIDUAL:
            return self.handle_individual_commands(conn, parts.target, parts.mark, parts.text, batch)
        if parts.target_type == p.CHANNEL:
            return self.handle_channel_commands(conn, parts.target, parts.mark, parts.text, batch)
        logger.info("%r: unknown target type %r", conn, parts.target_type)
        conn.reply_text("bad_format")
        return None

    def get_users_channel(self, name: str) -> str | None:
        """The id (personal channel) of the user called ``name``, or None."""
        user_id = p.guest_id(name)
        if user_id is not None:
            # Guest names are not in usersByName: the id is in the name, if
            # that user still goes by it.
            current = self.rdb.hget(self.keys.users_name, user_id)
            return user_id if current is not None and p.name_key(current.decode()) == p.name_key(name) else None
        user_id = self.rdb.hget(self.keys.users_by_name, p.name_key(name))
        return user_id.decode() if user_id is not None else None

    def get_users_name(self, conn: Connection) -> str:
        """The user's current name, for the payloads that carry it.

        Original: a scan of every user in Redis, per call.  The connection's
        own reader is the only thread that renames it (reconcile holds its
        lock), so the name kept on the connection is always the current one.
        """
        return conn.name

    def handle_individual_commands(self, conn, target: str, mark: str, message: str, batch: Batch) -> object:
        """Renames, the menu, private messages, who; accounts and moderation."""
        keys = self.keys
        if mark == p.LOGIN:
            # The right password makes it a first nickname: answered as one.
            name = self.accounts.handle(conn, mark, message)
            if name is None:
                return None
            mark, message = p.CHANGE_NAME_FIRST, name
        if mark in (p.CHANGE_NAME_FIRST, p.CHANGE_NAME):
            result, reason = self.change_name(conn, message)
            if result == Rename.OK:
                ok_mark = p.CHANGE_NAME_FIRST_OK if mark == p.CHANGE_NAME_FIRST else p.CHANGE_NAME_OK
                conn.reply(p.join_message(p.INDIVIDUAL, self.get_users_name(conn), ok_mark, message))
                # Original: every changeNameFirst announced a join again; a
                # repeated one is a plain rename here, or it would let one user
                # make the room re-send joins and history at will.  A guest
                # whose first name comes by changeName (./cd2, after a refused
                # first nickname) is announced too: its leaving will be.
                if conn.advance(State.JOINED):
                    if mark == p.CHANGE_NAME_FIRST:
                        # History first.  A guest who chatted before ./cd2
                        # has seen the room live: no history.
                        self.history.send(conn, keys.history)
                    # What it said as a guest goes out before its join does.
                    self.flush(conn, batch)
                    joined = self.text("joined", name=self.get_users_name(conn))
                    # Batched with the joins of others arriving now (chatroom/announcer.py).
                    conn.announced = self.announcer.announce(
                        keys.broadcast, system_payload(p.CHANNEL, p.BROADCAST, joined)
                    )
            elif result == Rename.REFUSED:
                # The original answers a taken name with changeNameFirst0 for
                # both marks; kept, since clients key on it.
                conn.reply(p.join_message(p.INDIVIDUAL, self.get_users_name(conn), p.NAME_REFUSED, self.text(reason)))
            else:
                conn.reply(p.join_message(p.INDIVIDUAL, self.get_users_name(conn), p.RENAME_FAILED, self.text(reason)))
        elif mark == p.MENU:
            # Original: published to the channel of the user named `target`;
            # an unknown (or empty) target lost it.  The asker gets it.
            conn.reply_text("menu")
        elif mark == p.PRIVATE:
            problem = p.text_problem(message)
            target_id = None if problem else self.get_users_channel(target)
            if problem:
                conn.reply_text(problem)
            elif target_id is None:
                # Original: published to channel "" and lost.
                conn.reply_text("no_such_user", name=p.printable(target))
            else:
                # Original: delivered as a system message without the sender's
                # name in the Go client's rendering, and not echoed.
                payload = p.join_message(p.INDIVIDUAL, self.get_users_name(conn), p.PRIVATE_IN, message)
                echo = p.join_message(p.INDIVIDUAL, target, p.PRIVATE_SENT, message)
                if conn.fits(payload) and conn.fits(echo):
                    batch.pipe.publish(keys.personal(target_id), payload)
                    self.update_activity(conn, batch)
                    batch.message(confirmation=echo)  # the echo only once it is delivered
                else:
                    conn.reply_too_long(message, payload, echo)
        elif mark == p.WHO:
            conn.reply_system(self.who_text())
        elif mark == p.ROOMS:
            conn.reply_system(self.rooms.list_text(self.get_online_users()))
        elif mark in p.ACCOUNT_MARKS:
            self.accounts.handle(conn, mark, message)
        elif mark in p.MODERATION_MARKS:
            self.moderation.handle(conn, mark, message)
        else:
            logger.info("%r: unknown individual mark %r", conn, mark)
            conn.reply_text("bad_format")
        return None

    def handle_channel_commands(self, conn, target: str, mark: str, message: str, batch: Batch) -> object:
        """Chat, the online count, the ranking, quit; and in rooms beside the lobby: join, part, who."""
        # The lobby is channel1 (or no target at all); any other target is a room.
        lobby = target == "" or p.name_key(target) == p.BROADCAST
        if mark == p.ONLINE_LIST and lobby:
            # Original: broadcast to everyone; the asker alone asked.
            online = self.text("online_count", count=self.get_online_users())
            conn.reply(p.join_message(p.CHANNEL, p.BROADCAST, self.get_users_name(conn), online))
        elif mark == p.ONLINE_LIST:
            room, count = self.rooms.count(target)
            conn.reply(p.join_message(p.CHANNEL, room, conn.name, self.text("room_count", room=room, count=count)))
        elif mark == p.JOIN:
            self.rooms.join(conn, target)
        elif mark == p.PART:
            self.rooms.part(conn, target)
        elif mark == p.WHO:
            conn.reply_system(self.who_text() if lobby else self.rooms.who_text(target))
        elif mark == p.QUIT:
            logger.info("%r: quits", conn)
            return USER_QUITS
        elif mark == p.ACTIVITY:
            activity = message + self.text("activity_title")
            for rank, (name, count) in enumerate(self.top_active_users(), start=1):
                activity += self.text("activity_line", rank=rank, name=name, count=count)
            conn.reply_system(activity, target_type=p.CHANNEL, target=p.BROADCAST)
        elif mark != "":
            # Original: any other mark was chat; the Go client sends none.
            logger.info("%r: unknown channel mark %r", conn, mark)
            conn.reply_text("bad_format")
        else:
            payload = p.join_message(p.CHANNEL, p.BROADCAST, self.get_users_name(conn), message)
            problem = p.text_problem(message)
            if problem:
                # Original: forwarded anything, so "ok\n[21:13] < bob > ..."
                # printed a line that looked like bob speaking.
                conn.reply_text(problem)
            elif not lobby:
                if self.rooms.chat(conn, target, message, batch):
                    self.update_activity(conn, batch)
                    batch.message()
            elif conn.fits(payload):
                batch.pipe.publish(self.keys.broadcast, payload)
                self.history.add(conn, message, batch, self.keys.history)
                self.update_activity(conn, batch)
                batch.message()  # its echo is the broadcast itself
            else:
                conn.reply_too_long(message, payload)
        return None

    def user_remove(self, conn: Connection) -> None:
        """Forget the user everywhere and announce that it left."""
        self.users_remove([conn])

    def users_remove(self, connections: list[Connection], deadline: float = float("inf")) -> int:
        """:meth:`user_remove` for many users, a chunk per round trip; how many are left in Redis.

        Each user's removal is one atomic script (redisdb.queue_removals):
        a chunk that timed out may have run, and is simply sent again, since
        a user already removed is neither removed nor announced twice.
        Stops at ``deadline`` (shutdown's grace) or at a Redis failure (then
        raises when nothing was removed, so a single leaving user's failure is
        seen).
        """
        leaving = [conn for conn in connections if conn.in_redis]
        for start in range(0, len(leaving), CLEANUP_CHUNK):
            chunk = leaving[start : start + CLEANUP_CHUNK]
            with contextlib.ExitStack() as stack:
                for conn in chunk:
                    stack.enter_context(conn.state_lock)
                chunk = [conn for conn in chunk if conn.in_redis]
                departures = [
                    Departure(
                        conn.id, conn.name,
                        system_payload(p.CHANNEL, p.BROADCAST, self.text("left", name=conn.name)),
                        tuple(conn.uncertain_names),
                        self.text("room_left", name=conn.name) if conn.rooms else "",
                    )
                    for conn in chunk
                ]
                retried_unknown, busy = False, 0
                while True:
                    pipe = self.rdb.pipeline(transaction=False)
                    redisdb.queue_removals(
                        pipe, self.keys, self.server_id, departures, room_history_ttl=self.config.room_history_ttl
                    )
                    try:
                        pipe.execute()
                        break
                    except redis.RedisError as exc:
                        # A crowd leaving at once waits for the pool in turn: not a failure yet.
                        if redisdb.pool_busy(exc) and busy < REMOVAL_BUSY_RETRIES and time.monotonic() < deadline:
                            busy += 1
                            logger.debug("removing %d users: waiting for a Redis connection", len(chunk))
                            continue
                        self.health.report(exc, f"removing {len(chunk)} users")
                        if redisdb.outcome_unknown(exc) and not retried_unknown and time.monotonic() < deadline:
                            retried_unknown = True  # it may have run: running it again is harmless
                            continue
                        if len(connections) == 1:
                            raise
                        return sum(1 for conn in leaving if conn.in_redis)
                for conn in chunk:
                    conn.mark_removed()
                    logger.info("%r: left", conn)
            if time.monotonic() >= deadline:
                break
        return sum(1 for conn in leaving if conn.in_redis)

    def get_online_users(self) -> int:
        """How many users are online (original: HGETALL and count)."""
        return self.rdb.hlen(self.keys.users_online)

    def top_active_users(self) -> list[tuple[str, int]]:
        """(name, count) of the five most active users (original: fetched the whole ranking)."""
        ranking = self.rdb.zrevrange(self.keys.activity_ranking, 0, 4, withscores=True)
        if not ranking:
            return []
        names = self.rdb.hmget(self.keys.users_name, [user_id for user_id, _ in ranking])
        return [
            (name.decode() if name is not None else "", int(score))
            for name, (_, score) in zip(names, ranking)
        ]

    def update_activity(self, conn: Connection, batch: Batch) -> None:
        """Count one chat or private message for the user (queued on ``batch``)."""
        conn.activity += 1  # kept here too, to re-register the user if Redis loses its data
        batch.pipe.zincrby(self.keys.activity_ranking, 1, conn.id)

    def who_text(self) -> str:
        """The names online, sorted, as many as fit in one frame (``who``: not in the Go server)."""
        names = sorted((name.decode() for name in self.rdb.hvals(self.keys.users_name)), key=p.name_key)
        return p.fit_listing(
            names, lambda listing, count: self.text("who", count=count, names=listing), self.config.max_frame
        )

    def text(self, key: str, **values: object) -> str:
        """A human-readable text in the server's language."""
        return p.text(self.lang, key, **values)


def say_listening(server: ChatServer) -> None:
    """Print where the server listens; a standard output that cannot be written must not stop it."""
    try:
        if server.config.plaintext:
            print(f"chatroom server listening on {server.address[0]}:{server.port}", flush=True)
        if server.tls_port is not None:
            print(f"chatroom server listening for TLS on {server.address[0]}:{server.tls_port}", flush=True)
        if server.websocket is not None:
            print(f"chatroom web page at {server.websocket.url}", flush=True)
    except OSError as exc:  # e.g. > /dev/full
        logger.warning("cannot write to standard output (%s); going on without it", exc)
        # What is left in its buffer would fail again at exit, with status 120.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """Run a server until SIGINT or SIGTERM (Go: ``main``); a clean stop ends the process with status 0."""
    if argv is None:  # this process's own command line: the process is ours to tune
        process.lean_malloc()
    config = parse_args(argv)
    # Before any thread starts: it forks.
    stop_pipe = process.start_watchdog(config.shutdown_grace + ALARM_MARGIN)
    process.raise_open_file_limit()
    # Before any thread starts: threads inherit these.
    sys.setswitchinterval(process.SWITCH_INTERVAL)
    process.set_thread_stack_size()
    buckets = process.widen_futex_hash(process.THREADS_PER_CLIENT * config.max_clients)
    if buckets is not None:
        logger.info("futex hash table: %d buckets", buckets)
    pinned = process.pin_to_cpu(config.cpu, config.port)
    if pinned is not None:
        logger.info("running on CPU %d", pinned)
    server = ChatServer(config)  # SystemExit with one line when Redis is unreachable
    try:
        server.bind()
    except OSError as exc:
        ports = [str(config.port)] if config.plaintext else []
        ports += [f"{config.tls_port} (TLS)"] if config.tls_port is not None else []
        print(f"cannot listen on {config.host}:{' and '.join(ports)}: {exc}", file=sys.stderr)
        return 1
    except redis.RedisError as exc:  # a read-only replica, out of memory, ...
        problem = redisdb.describe_redis_error(exc)
        print(f"cannot use Redis at {redisdb.mask_url(config.redis_url)}: {problem}", file=sys.stderr)
        return 1
    say_listening(server)

    # In a thread of its own, which needs neither the main thread nor its
    # accept() to return; a second signal, or a stop stuck past its grace,
    # ends the process from outside it (see process.start_watchdog).
    process.on_stop(stop_pipe, server.shutdown)
    if server.tls is not None:
        # For the connections that come next; those open keep their session.
        signal.signal(signal.SIGHUP, lambda signum, frame: server.reload_tls())
    server.serve_forever()
    # Stopped, Redis cleaned up: the interpreter's own teardown of thousands
    # of threads and sockets would only add seconds to the stop.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())

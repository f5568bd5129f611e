"""redis-chatroom server: the Go + Redis chat room, ported to threads.

Each method keeps the name of its Go counterpart (``handleConnection`` ->
:meth:`ChatServer.handle_connection`, ``userAdd`` -> :meth:`ChatServer.user_add`,
...) and its order of events.  The threads of one connection::

    serve_forever (accept loop)
      └─ handle_connection   thread "conn-<id>": user_add, subscribe, then
           │                 read_client -> write_to_redis -> message_processing
           │                 until the user leaves; then user_remove
           ├─ broadcast        thread: pub/sub on <prefix>channel1   -> socket
           └─ personal_message thread: pub/sub on <prefix>user:<id>  -> socket

All three share one ``redis.Redis`` client (each pub/sub holds one pooled
connection of it) and one send lock, so frames never interleave.  Go's
``<-quit`` wait is simply ``read_client`` returning.

Redis state (every key and channel starts with ``--key-prefix``)::

    usersName        hash    user id -> display name
    usersByName      hash    name_key(name) -> user id   (chosen names; O(1) lookup, atomic claim)
    usersOnline      hash    user id -> "online"         (counted with HLEN)
    activityRanking  zset    user id -> messages handled
    nextUserId       string  INCR counter: ids unique across server processes
    history          list    newest first: "<unix time>:<name>:<text>" of public chat
    servers          set     ids of the server processes sharing this Redis
    server:<sid>     string  heartbeat of one process, expires after --dead-after
    serverUsers:<sid> set    user ids connected to that process
    channel1         channel broadcast
    user:<id>        channel one user's personal messages

Where this differs from the original, a comment says what the original did.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import math
import os
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field, fields

#: What to say when the project's packages are not installed in this Python.
MISSING_PACKAGES = (
    "redis-chatroom's packages are not installed in this Python ({name} is missing): "
    "run `make run`, or `pip install .` first"
)
try:
    import redis
except ImportError as exc:  # python server.py with a bare Python
    sys.exit(MISSING_PACKAGES.format(name=exc.name))

import protocol as p
from framing import MAX_FRAME, FrameError, FrameReader, FrameTimeout, InvalidUtf8, encode_bytes, timeval

logger = logging.getLogger("chatroom.server")


# --- settings: one home for each (Config), flags and checks generated from it --


def _number(kind, minimum=None, maximum=None, *, off_at_zero=False):
    """A converter from text that also checks the range; None bounds are open.

    ``off_at_zero``: 0 is allowed whatever the minimum, and means "no limit".
    """

    def convert(value):
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"not {'a whole number' if kind is int else 'a number'}: {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"not a finite number: {value!r}")
        if off_at_zero and number == 0:
            return number
        if minimum is not None and number < minimum:
            lowest = f"0 (off) or at least {minimum:g}" if off_at_zero and minimum > 0 else f"at least {minimum:g}"
            raise ValueError(f"must be {lowest}, not {value}")
        if maximum is not None and number > maximum:
            raise ValueError(f"must be at most {maximum:g}, not {value}")
        return number

    return convert


def _choice(*choices):
    def convert(value):
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    return convert


def _cpu_spec(value):
    if value in ("auto", "none") or (isinstance(value, str) and value.isascii() and value.isdigit()):
        return value
    raise ValueError(f"not auto, none or a CPU number: {value!r}")


def _redis_url(value):
    if value in (None, ""):
        return None
    scheme = value.partition("://")[0] if "://" in value else ""
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"not a Redis URL (redis://host:port/db, rediss://..., unix://...): {mask_url(value)!r}")
    try:
        redis.ConnectionPool.from_url(value)
    except ValueError as exc:
        raise ValueError(f"not a valid Redis URL ({exc}): {mask_url(value)!r}") from None
    return value


def _server_id(value):
    if value in (None, ""):
        return None
    if len(value) > 64 or not value.isprintable() or any(c.isspace() for c in value):
        raise ValueError(f"must be 1-64 printable characters without spaces: {value!r}")
    return value


def _text(value):
    return value


def setting(default, help, *, flag=True, env=None, convert=_text, metavar=None, group=None):
    """A :class:`Config` field and everything its flag needs: one place for its default.

    ``convert`` turns text (a flag, an environment variable) into the value
    and raises ValueError, with a reason, for a value out of range; it checks
    values given directly to Config as well.  ``flag=False``: no command-line
    flag (tests and embedders set it).
    """
    metadata = {"help": help, "flag": flag, "env": env, "convert": convert, "metavar": metavar, "group": group}
    return field(default=default, metadata=metadata)


LIMITS = "limits"

#: Largest --max-frame: beyond it a single frame is a memory attack of its own.
FRAME_CEILING = 1 << 24
#: Smallest --max-frame: the server's own longest reply (the menu to a 32-character name) must fit.
FRAME_FLOOR = 512


@dataclass(kw_only=True)
class Config:
    """Everything a server instance needs; tests build many in one process.

    Each field is a :func:`setting`: its default, help text, flag, environment
    variable and range are written once here; :func:`parse_args` builds the
    command line from them and every value is checked when a Config is made.
    """

    host: str = setting("127.0.0.1", "listen address", env="CHATROOM_HOST")
    port: int = setting(
        9527, "listen port (0: any free port, printed at start)", env="CHATROOM_PORT", convert=_number(int, 0, 65535)
    )
    redis_url: str | None = setting(
        None, "e.g. redis://localhost:6379/0; none: an embedded fakeredis", env="REDIS_URL", convert=_redis_url
    )
    key_prefix: str = setting("chatroom:", "prefix of every Redis key and channel", env="CHATROOM_KEY_PREFIX")
    lang: str = setting("en", "language of the texts: en, or zh (the original's)", env="CHATROOM_LANG",
                        convert=_choice(*p.LANGUAGES))
    #: Largest frame payload accepted or sent (the Go programs decode <= 4092).
    max_frame: int = setting(
        MAX_FRAME,
        f"largest frame payload in bytes ({FRAME_FLOOR}..{FRAME_CEILING}; above {MAX_FRAME} the original Go "
        "client cannot decode every frame)",
        convert=_number(int, FRAME_FLOOR, FRAME_CEILING),
        group=LIMITS,
    )
    #: Concurrent chat connections; sizes the Redis connection pool.
    max_clients: int = setting(
        4000, "concurrent connections, at least 1 (sizes the Redis pool)", convert=_number(int, 1, 1_000_000),
        group=LIMITS,
    )
    #: A send blocked this long (a client that stopped reading) drops the client.
    send_timeout: float = setting(
        10.0, "seconds a send may block before the client is dropped (0: off)", convert=_number(float, 0),
        group=LIMITS,
    )
    #: How long shutdown waits for the connections' threads, in all.
    close_timeout: float = setting(5.0, "seconds shutdown waits for threads", flag=False,
                                   convert=_number(float, 0))
    #: Public messages kept for newcomers (0 = no history).
    history: int = setting(
        50, "public messages kept for newcomers (0: none)", convert=_number(int, 0, 10_000)
    )
    #: Seconds from connecting to the first whole frame (0 = no limit).  Long
    #: enough for a person to type a name: both clients connect first.
    login_timeout: float = setting(
        300.0, "seconds from connecting to the first whole frame (0: off)", convert=_number(float, 0),
        group=LIMITS,
    )
    #: Seconds from a frame's first byte to its last (0 = no limit).
    frame_timeout: float = setting(
        10.0, "seconds to finish a begun frame (0: off)", convert=_number(float, 0), group=LIMITS
    )
    #: Seconds of silence before a client that never took a name is dropped
    #: (0 = never).  Named users are never dropped for silence: a reader is
    #: a user too; TCP keepalive finds the ones whose host vanished.
    idle_timeout: float = setting(
        600.0, "seconds of silence before a connection without a nickname is dropped (0: off)",
        convert=_number(float, 0), group=LIMITS,
    )
    #: Messages per second a client may send on average (0 = no limit) ...
    rate_limit: float = setting(
        10.0, "messages a second on average (0: off)", convert=_number(float, 0), metavar="MSGS_PER_S",
        group=LIMITS,
    )
    #: ... and in one burst.  Past it messages are refused; a client that keeps
    #: flooding (2 x burst refusals in a row) is disconnected.
    rate_burst: int = setting(
        20, "messages in one burst, at least 1", convert=_number(int, 1, 1_000_000), metavar="N", group=LIMITS
    )
    #: Concurrent connections from one IP address (0 = no limit).
    max_per_ip: int = setting(
        64, "concurrent connections from one address (0: off)", convert=_number(int, 0, 1_000_000),
        group=LIMITS,
    )
    #: This process's name among the servers sharing one Redis; default "<host>-<port>",
    #: so that a process restarted in the same place cleans up after its previous run.
    server_id: str | None = setting(
        None, "this process among several (default host-port)", env="CHATROOM_SERVER_ID", convert=_server_id
    )
    #: A server whose heartbeat is older than this is dead: a survivor removes its users.
    dead_after: float = setting(
        15.0, "seconds without a heartbeat after which a server is dead (at least 0.3)",
        convert=_number(float, 0.3, 86400),
    )
    #: Seconds a busy pub/sub listener waits for more messages before it wakes (0 = never):
    #: fewer thread wake-ups per delivery, for at most this much latency ...
    listener_linger: float = setting(0.01, "seconds a busy listener lingers", flag=False,
                                     convert=_number(float, 0, 1))
    #: ... or longer in a big room: busy listeners together wake about this often a
    #: second at most (the linger grows with the users connected), up to
    #: MAX_LINGER.  0 = the fixed linger above.
    wakeup_budget: float = setting(
        5000.0,
        "busy listeners wake about this often a second at most; they linger longer in bigger rooms "
        "(0: a fixed 10 ms linger)",
        convert=_number(float, 0),
        metavar="PER_S",
    )
    #: The CPU the process runs on: "auto", "none" or a number (see :func:`pin_to_cpu`).
    #: Applied by :func:`main` only: it is the whole process's, not one server's.
    cpu: str = setting(
        "auto", "run on this one CPU: auto (one chosen by the port), none (any) or a CPU number", env="CHATROOM_CPU",
        convert=_cpu_spec,
    )

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None and item.default is None:
                continue
            try:
                setattr(self, item.name, item.metadata["convert"](value))
            except ValueError as exc:
                raise ValueError(f"{item.name}: {exc}") from None


class Keys:
    """Redis key and channel names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.users_name = prefix + "usersName"
        self.users_by_name = prefix + "usersByName"
        self.users_online = prefix + "usersOnline"
        self.activity_ranking = prefix + "activityRanking"
        self.next_user_id = prefix + "nextUserId"
        self.history = prefix + "history"
        self.servers = prefix + "servers"
        self.broadcast = prefix + p.BROADCAST
        self._personal = prefix + "user:"
        self._prefix = prefix

    def server_alive(self, server_id: str) -> str:
        """The heartbeat key of one server process (it expires when the process dies)."""
        return f"{self._prefix}server:{server_id}"

    def server_users(self, server_id: str) -> str:
        """The set of user ids served by one server process."""
        return f"{self._prefix}serverUsers:{server_id}"

    def personal(self, user_id: str) -> str:
        """The personal channel of one user."""
        return self._personal + user_id


QUIT = object()  # message_processing's answer when the user asked to leave

#: Largest single socket write: whole frames only, within the Go client's 4096-byte read buffer.
WRITE_LIMIT = 4096
#: Most queued Redis commands a reader sends in one round trip (about 16 chat messages).
BATCH_LIMIT = 64
#: Most pub/sub messages a listener takes from its buffer per wake-up.
DRAIN_LIMIT = 256


class TokenBucket:
    """Flood control: ``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self.tokens = float(self.burst)
        self.clock = clock
        self.updated = clock()

    def take(self) -> bool:
        """Spend one token if there is one; False means: over the limit."""
        if self.rate <= 0:
            return True
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Batch:
    """The Redis writes of the messages a reader has handled, sent in one round trip.

    One MULTI/EXEC: all of them take effect or none does.  Redis refuses the
    whole transaction when it refuses any command in it (out of memory, a
    read-only replica), so a sender told that a message was not sent knows
    that nobody got it, and a message that reached anyone is never reported
    as failed.  Replies that confirm a delivery (a private message's echo)
    wait in :attr:`confirmations` until the round trip succeeded.
    """

    def __init__(self, rdb: redis.Redis) -> None:
        self.pipe = rdb.pipeline(transaction=True)
        #: Chat and private messages whose fate is this round trip's.
        self.messages = 0
        #: Payloads to send the sender once the writes are done.
        self.confirmations: list[str] = []

    def __len__(self) -> int:
        return len(self.pipe)

    def message(self, confirmation: str | None = None) -> None:
        """Count one queued message; ``confirmation`` is sent to its sender once it is delivered."""
        self.messages += 1
        if confirmation is not None:
            self.confirmations.append(confirmation)

    def reset(self) -> None:
        """Forget everything queued.  redis-py resets its pipeline itself only
        once it has a connection: a failure to connect left the commands
        queued, to be sent with the next message."""
        self.pipe.reset()
        self.messages = 0
        self.confirmations.clear()


def outcome_unknown(exc: redis.RedisError) -> bool:
    """True when a command may have run although it failed: sent, then no answer in time.

    A timeout while connecting is a plain failure: nothing was sent.
    """
    return isinstance(exc, redis.TimeoutError) and not str(exc).startswith("Timeout connecting")


class Connection:
    """One chat client: its socket, its identity and its send lock."""

    def __init__(self, sock: socket.socket, address: tuple, bucket: TokenBucket | None = None) -> None:
        self.sock = sock
        self.address = address
        self.bucket = bucket or TokenBucket(0, 1)
        self.refused_in_a_row = 0
        #: Messages handled, kept here too, to re-register the user if Redis loses its data.
        self.activity = 0
        #: Set when the client is gone; wakes a listener waiting for Redis to come back.
        self.gone = threading.Event()
        #: True once the first nickname was accepted and the join announced.
        self.joined = False
        #: Held while this user's Redis records change (its reader, reconcile).
        self.state_lock = threading.Lock()
        self.id = ""
        self.name = ""
        self.name_key = ""
        self.added = False
        self.alive = True
        self.send_lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.subscriptions: list[redis.client.PubSub] = []

    def __repr__(self) -> str:
        return f"<Connection {self.id or '?'} {self.name!r} {self.address[0]}:{self.address[1]}>"

    def send_payload(self, payload: bytes) -> bool:
        """Send one server payload as one frame; False once the client is gone."""
        return self.send_payloads((payload,))

    def send_payloads(self, payloads) -> bool:
        """Send server payloads, each as one frame; False once the client is gone.

        Every server payload ends with "\\n", as the original's do.  Frames
        are joined into writes of at most WRITE_LIMIT bytes, each made of whole
        frames: the Go client can only decode a frame that lies inside one
        4096-byte read.  A failed or timed-out send (a client that stopped
        reading) closes the socket, which wakes the reader thread so that the
        whole connection is cleaned up.
        """
        writes, chunk, size = [], [], 0
        for payload in payloads:
            frame = encode_bytes(payload + b"\n")
            if chunk and size + len(frame) > WRITE_LIMIT:
                writes.append(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(frame)
            size += len(frame)
        if chunk:
            writes.append(b"".join(chunk))
        with self.send_lock:
            if not self.alive:
                return False
            try:
                for data in writes:
                    self.sock.sendall(data)
                return True
            except OSError as exc:
                logger.info("%r: send failed (%s); dropping the client", self, exc)
                self.alive = False
        self.shutdown_socket()
        return False

    def shutdown_socket(self) -> None:
        """Wake every thread blocked on this socket; they then wind down."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class ChatServer:
    """The chat room: accept loop, per-connection threads, Redis state.

    ``start()`` binds (port 0 picks a free port, see :attr:`port`) and runs the
    accept loop in a thread; ``serve_forever()`` runs it in the caller's
    thread.  ``shutdown()`` is idempotent and used by signals and tests alike.
    """

    def __init__(self, config: Config, rdb: redis.Redis | None = None) -> None:
        self.config = config
        self.rdb = rdb if rdb is not None else connect_redis(config)
        self.keys = Keys(config.key_prefix)
        self.lang = config.lang
        self.connections: set[Connection] = set()
        self._connections_lock = threading.Condition()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._shutting_down = threading.Event()
        self._stopped = threading.Event()
        self._per_ip: dict[str, int] = {}
        #: Connections admitted and since released, ever (tests await it).
        self.released = 0
        self.server_id = config.server_id or ""
        self.redis_run_id: str | None = None
        self._redis_down = False
        self._redis_down_since = 0.0
        #: When Redis began refusing writes (out of memory, read-only), or None.
        self._redis_refusing: float | None = None
        self._resubscribing = 0  # listeners waiting for Redis to come back
        self._redis_state_lock = threading.Lock()
        self._reconcile_needed = threading.Event()
        self._wake_heartbeat = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        # Notices to every user go through one thread of their own, in order:
        # a user whose socket is full must not hold up the heartbeat.
        self._notices: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._notifier_thread: threading.Thread | None = None
        # Kept open so that, out of file descriptors, one can be freed to
        # accept a connection and refuse it politely instead of spinning.
        self._spare_fd: int | None = None

    # --- lifecycle (Go: init, main) -----------------------------------------

    def init(self) -> None:
        """Join the servers on this Redis, after cleaning up our own previous run.

        Original: deleted every user, name and score at start, which is right
        for one process and wipes the users of every other process sharing the
        Redis.  Here only the users a previous run of this same server id left
        behind are removed (and announced as gone); those of a dead process of
        another id are removed by the survivors' heartbeats.
        """
        self.redis_run_id = self.current_run_id()
        # Claimed like a dead server's, so a survivor reaping it meanwhile and
        # this process never both announce the same users.
        if self.rdb.srem(self.keys.servers, self.server_id):
            self.cleanup_server(self.server_id)
        self.heartbeat()

    def bind(self) -> None:
        """Open the listening socket, register with Redis, start the heartbeat."""
        listener = socket.create_server((self.config.host, self.config.port), backlog=1024)
        self._listener = listener
        if not self.server_id:
            self.server_id = f"{socket.gethostname()}-{self.port}"
        try:
            self.init()
        except BaseException:
            listener.close()
            self._listener = None
            raise
        self._heartbeat_thread = threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True)
        self._heartbeat_thread.start()
        self._notifier_thread = threading.Thread(target=self.notifier_loop, name="notifier", daemon=True)
        self._notifier_thread.start()
        logger.info("server %s listening on %s:%d", self.server_id, *self.address)

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the server listens on."""
        assert self._listener is not None, "call bind() or start() first"
        return self._listener.getsockname()[:2]

    @property
    def port(self) -> int:
        """The port the server listens on (useful with port 0)."""
        return self.address[1]

    def wait_for_connections(self, count: int, timeout: float) -> bool:
        """Wait until at most ``count`` connections remain; False on timeout."""
        with self._connections_lock:
            return self._connections_lock.wait_for(lambda: len(self.connections) <= count, timeout)

    def wait_for_released(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` connections in all have been released; False on timeout."""
        with self._connections_lock:
            return self._connections_lock.wait_for(lambda: self.released >= count, timeout)

    def start(self) -> None:
        """Bind, then accept connections in a background thread."""
        self.bind()
        self._accept_thread = threading.Thread(target=self.serve_forever, name="accept", daemon=True)
        self._accept_thread.start()

    def serve_forever(self) -> None:
        """Accept connections until :meth:`shutdown` (Go: the loop in ``main``)."""
        if self._listener is None:
            self.bind()
        listener = self._listener
        self._spare_fd = os.open(os.devnull, os.O_RDONLY)
        while not self._shutting_down.is_set():
            try:
                sock, address = listener.accept()
            except OSError as exc:
                if self._shutting_down.is_set():
                    break
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._refuse_out_of_files(listener)
                else:
                    logger.warning("accept failed: %s", exc)
                continue
            self.admit(sock, address)
        os.close(self._spare_fd)
        self._stopped.wait()

    def admit(self, sock: socket.socket, address: tuple) -> None:
        """Start serving an accepted socket, or refuse it with a reason."""
        config = self.config
        ip = address[0]
        with self._connections_lock:
            if self._shutting_down.is_set():  # accepted just before the listener closed
                refusal = "server_shutdown"
            elif len(self.connections) >= config.max_clients:
                refusal = "server_full"
            elif config.max_per_ip and self._per_ip.get(ip, 0) >= config.max_per_ip:
                refusal = "too_many_from_ip"
            else:
                refusal = None
                conn = Connection(sock, address, TokenBucket(config.rate_limit, config.rate_burst))
                thread = threading.Thread(target=self.handle_connection, args=(conn,), daemon=True)
                # Registered before start(), so a shutdown racing with this
                # accept still sees, and waits for, the new connection.
                conn.threads.append(thread)
                self.connections.add(conn)
                self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        if refusal is not None:
            logger.warning("refusing %s:%d: %s", ip, address[1], refusal)
            self.refuse(sock, refusal)
            return
        try:
            thread.start()
        except RuntimeError as exc:  # out of threads
            logger.error("cannot start a thread for %s:%d: %s", ip, address[1], exc)
            self._forget(conn)
            self.refuse(sock, "server_busy")

    def refuse(self, sock: socket.socket, reason: str) -> None:
        """Send one system message to a connection we will not serve, and close it."""
        try:
            sock.settimeout(1.0)
            sock.sendall(encode_bytes(self.system_payload(p.INDIVIDUAL, "", self.text(reason)) + b"\n"))
        except OSError:
            pass
        finally:
            sock.close()

    def _refuse_out_of_files(self, listener: socket.socket) -> None:
        logger.error("out of file descriptors: refusing a connection")
        os.close(self._spare_fd)
        try:
            sock, _ = listener.accept()
            self.refuse(sock, "server_busy")
        except OSError:
            pass
        finally:
            self._spare_fd = os.open(os.devnull, os.O_RDONLY)

    def _forget(self, conn: Connection) -> None:
        with self._connections_lock:
            if conn in self.connections:
                self.connections.discard(conn)
                ip = conn.address[0]
                self._per_ip[ip] -= 1
                if not self._per_ip[ip]:
                    del self._per_ip[ip]
                self.released += 1
            self._connections_lock.notify_all()

    def shutdown(self) -> None:
        """Stop accepting, tell every user, remove them, wait for their threads."""
        if self._shutting_down.is_set():
            self._stopped.wait()
            return
        self._shutting_down.set()
        logger.info("shutting down")
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        with self._connections_lock:
            connections = list(self.connections)
        # In three passes: once the first client's socket is shut, its reader
        # announces its leaving to everyone, and every system call of this
        # thread then waits for the GIL behind all the listeners it woke.
        # So every user is told first, then no listener sends any more (they
        # end at their next message instead of writing to a closing socket),
        # all users are removed from Redis at once, and only then are the
        # sockets shut.
        notice = self.text("server_shutdown")
        for conn in connections:
            conn.send_payload(self.system_payload(p.INDIVIDUAL, conn.name, notice))
        for conn in connections:
            conn.alive = False
        try:
            self.users_remove(connections)
        except redis.RedisError as exc:
            logger.error("could not remove the users from Redis: %s", exc)
        for conn in connections:
            conn.shutdown_socket()
        # One deadline for all of them: waiting close_timeout for each thread
        # in turn could add up to minutes with thousands of users.
        deadline = time.monotonic() + self.config.close_timeout
        self._wake_heartbeat.set()
        self._notices.put(None)
        for conn in connections:
            for thread in conn.threads[:1]:
                if thread.ident is not None:  # admit() may not have started it yet
                    thread.join(max(0.0, deadline - time.monotonic()))
        for thread in (self._heartbeat_thread, self._notifier_thread):
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        self.unregister()
        self._stopped.set()
        if self._accept_thread is not None:
            self._accept_thread.join(self.config.close_timeout)
        logger.info("shut down")

    # --- one connection (Go: handleConnection, userAdd, userRemove) ----------

    def handle_connection(self, conn: Connection) -> None:
        """Serve one client from connect to leave, then release all it holds."""
        try:
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            set_keepalive(conn.sock)
            set_send_timeout(conn.sock, self.config.send_timeout)
            self.user_add(conn)
            broadcast_sub = self.subscribe(self.keys.broadcast, conn)
            personal_sub = self.subscribe(self.keys.personal(conn.id), conn)
            for target, sub in ((self.broadcast, broadcast_sub), (self.personal_message, personal_sub)):
                thread = threading.Thread(target=target, args=(conn, sub), daemon=True)
                thread.start()  # out of threads: RuntimeError, the client is told below
                conn.threads.append(thread)
            self.read_client(conn)
        except redis.RedisError as exc:
            logger.error("%r: Redis failed (%s); closing the connection", conn, exc)
            conn.send_payload(self.system_payload(p.INDIVIDUAL, conn.name, self.text("server_error")))
        except RuntimeError as exc:
            logger.error("%r: %s; closing the connection", conn, exc)
            conn.send_payload(self.system_payload(p.INDIVIDUAL, conn.name, self.text("server_busy")))
        except Exception:
            logger.exception("%r: unexpected error", conn)
        finally:
            self.close_connection(conn)

    def close_connection(self, conn: Connection) -> None:
        """Remove the user, close the socket, end both listeners, free both pub/subs."""
        # Not under the send lock: a listener may hold it in a blocked send,
        # which the socket shutdown below wakes.
        conn.alive = False
        conn.gone.set()
        conn.shutdown_socket()
        if conn.added:
            try:
                self.user_remove(conn)
            except redis.RedisError as exc:
                logger.error("%r: could not remove the user from Redis: %s", conn, exc)
        # Original: the two subscriptions were never closed, leaking two Redis
        # connections and a goroutine per disconnect.
        for sub in conn.subscriptions:
            try:
                sub.unsubscribe()
            except (redis.RedisError, OSError):
                pass
        for thread in conn.threads[1:]:
            thread.join(self.config.close_timeout)
        for sub in conn.subscriptions:
            sub.close()
        conn.sock.close()
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
        keys = self.keys
        # One round trip (_ADD_USER): the id is claimed, not assumed: if Redis
        # lost the counter, a live user may hold an id until its server has
        # registered it again, so the script takes the next free one.
        user_id = self.rdb.eval(
            _ADD_USER,
            5,
            keys.next_user_id,
            keys.users_online,
            keys.users_name,
            keys.activity_ranking,
            keys.server_users(self.server_id),
            p.GUEST_PREFIX,
        )
        conn.id = str(user_id)
        conn.name = p.guest_name(conn.id)
        conn.name_key = p.name_key(conn.name)
        conn.added = True
        logger.info("%r: connected", conn)

    def user_remove(self, conn: Connection) -> None:
        """Forget the user everywhere and announce that it left."""
        self.users_remove([conn])

    def users_remove(self, connections: list[Connection]) -> None:
        """:meth:`user_remove` for many users in one round trip (shutdown: for all at once)."""
        keys = self.keys
        with contextlib.ExitStack() as stack:
            for conn in connections:
                stack.enter_context(conn.state_lock)
            leaving = [conn for conn in connections if conn.added]
            if not leaving:
                return
            pipe = self.rdb.pipeline()
            self.release_names({conn.name_key: conn.id for conn in leaving}, pipe)
            ids = [conn.id for conn in leaving]
            pipe.hdel(keys.users_name, *ids)
            pipe.hdel(keys.users_online, *ids)
            pipe.zrem(keys.activity_ranking, *ids)
            pipe.srem(keys.server_users(self.server_id), *ids)
            for conn in leaving:
                left = self.text("left", name=conn.name)
                pipe.publish(keys.broadcast, self.system_payload(p.CHANNEL, p.BROADCAST, left))
            pipe.execute()
            for conn in leaving:
                conn.added = False
                logger.info("%r: left", conn)

    def subscribe(self, channel: str, conn: Connection) -> redis.client.PubSub:
        """Subscribe on a pooled connection of its own and wait for Redis to confirm.

        Waiting makes sure that whatever is published after this returns (the
        user's own join notice, replies) reaches the user.
        """
        sub = self.rdb.pubsub()
        conn.subscriptions.append(sub)
        sub.subscribe(channel)
        reply = sub.get_message(timeout=self.config.close_timeout)
        if reply is None or reply["type"] != "subscribe":
            raise redis.ConnectionError(f"no confirmation for SUBSCRIBE {channel}: {reply!r}")
        return sub

    # --- listeners (Go: broadCast, personalMessage) --------------------------

    def broadcast(self, conn: Connection, sub: redis.client.PubSub) -> None:
        """Forward every broadcast message to the client until it leaves."""
        self._forward(conn, sub, "broadcast")

    def personal_message(self, conn: Connection, sub: redis.client.PubSub) -> None:
        """Forward every personal message to the client until it leaves."""
        self._forward(conn, sub, "personal")

    def _forward(self, conn: Connection, sub: redis.client.PubSub, kind: str) -> None:
        """Drain one subscription into the socket until unsubscribed or broken.

        Once woken, the listener takes every message already buffered on its
        pub/sub connection (``can_read(0)`` only says whether a reply has
        started; the blocking read that follows waits for the rest of it, so
        a partial reply is never mistaken for an error) and sends them
        together: one wake-up and one send for many deliveries.

        The replies are read from the connection directly rather than through
        ``PubSub.listen()``, whose retry would silently reconnect and
        resubscribe after Redis dropped the connection, losing messages in
        between.  Redis drops a subscriber whose output buffer passes
        ``client-output-buffer-limit pubsub``; the user is told and
        disconnected instead of being left with gaps.
        """
        subscribed_under = self.redis_run_id
        while conn.alive:
            try:
                self._drain(conn, sub)
                break
            except (redis.RedisError, OSError) as exc:
                if not conn.alive:
                    break
                run_id = self.current_run_id()
                if run_id is not None and run_id == subscribed_under:
                    # Redis is up and unchanged: it dropped this subscriber alone.
                    logger.error("%r: %s subscription dropped by Redis (%s); dropping the client", conn, kind, exc)
                    conn.send_payload(self.system_payload(p.INDIVIDUAL, conn.name, self.text("bus_lost")))
                    conn.shutdown_socket()
                    break
                # Redis is down or restarted: keep the client, subscribe again once it is back.
                logger.warning("%r: %s subscription lost (%s); resubscribing", conn, kind, exc)
                with self._redis_state_lock:
                    self._resubscribing += 1
                self.note_redis_down()
                try:
                    if not self.resubscribe(conn, sub):
                        break
                    subscribed_under = self.current_run_id()
                finally:
                    with self._redis_state_lock:
                        self._resubscribing -= 1
                    self._wake_heartbeat.set()
        logger.debug("%r: %s listener ended", conn, kind)

    def _drain(self, conn: Connection, sub: redis.client.PubSub) -> None:
        """Forward messages until unsubscribed; raises when the pub/sub connection breaks.

        With hiredis the listener reads its socket itself (:meth:`_drain_hiredis`);
        otherwise (fakeredis, redis-py's pure-Python parser) it drains through
        redis-py's reads, below.
        """
        redis_conn = sub.connection
        reader = self._hiredis_reader(redis_conn)
        if reader is not None:
            self._drain_hiredis(conn, sub, redis_conn, reader)
            return
        while sub.subscribed:
            payloads = []
            response = redis_conn.read_response(timeout=None, disconnect_on_error=False, push_request=True)
            while True:
                if response[0] == b"message":
                    payloads.append(response[2])
                else:  # (un)subscribe confirmations keep sub.subscribed true
                    sub.handle_message(response)
                if len(payloads) >= DRAIN_LIMIT or not redis_conn.can_read(timeout=0):
                    break
                response = redis_conn.read_response(timeout=None, disconnect_on_error=False, push_request=True)
            if payloads and not conn.send_payloads(payloads):
                return

    @staticmethod
    def _hiredis_reader(redis_conn):
        """The hiredis reader of a real socket connection, or None (then: the generic drain)."""
        parser = getattr(redis_conn, "_parser", None)
        reader = getattr(parser, "_reader", None)
        if type(parser).__name__ != "_HiredisParser" or reader is None:
            return None
        if not isinstance(getattr(redis_conn, "_sock", None), socket.socket):
            return None
        return reader

    def _drain_hiredis(self, conn: Connection, sub: redis.client.PubSub, redis_conn, reader) -> None:
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
        (:meth:`linger_seconds`), the room is busy, and the listener lingers:
        it sleeps one linger, letting messages gather in the socket, then
        takes them all with one non-blocking ``recv``.  One wake-up then
        carries every message of a linger instead of one each, and the
        listeners of a room wake spread over the linger rather than all at
        once per message.  A linger that gathered nothing makes the listener
        block in ``recv`` again: an idle listener never wakes, sparse messages
        (a quiet room) go out at once, and only a busy room pays up to one
        linger of latency.
        """
        from redis._parsers.hiredis import NOT_ENOUGH_DATA

        sock = redis_conn._sock
        sock.settimeout(None)
        buffer = redis_conn._parser._buffer  # redis-py's own read buffer for this connection
        recv_into = sock.recv_into
        gets = reader.gets
        feed = reader.feed
        buffer_size = len(buffer)
        linger_seconds = self.linger_seconds
        lingering = 0.0  # seconds to gather messages before the next read; 0: block until one comes
        sleep = time.sleep
        monotonic = time.monotonic
        last_wake = 0.0
        received = 0
        while sub.subscribed:
            payloads = []
            while len(payloads) < DRAIN_LIMIT:
                response = gets()
                if response is NOT_ENOUGH_DATA:
                    break
                if isinstance(response, Exception):  # an error reply
                    raise response
                if response[0] == b"message":
                    payloads.append(response[2])
                else:  # (un)subscribe confirmations: the last unsubscribe ends the loop
                    sub.handle_message(response)
            if payloads:
                if not conn.send_payloads(payloads):
                    return
                if len(payloads) >= DRAIN_LIMIT:
                    continue  # more whole replies may be parsed already
            if not sub.subscribed:
                return
            if lingering:
                # Busy: let messages gather for one linger (unless the last read
                # left more behind), then take them without blocking; nothing
                # came meanwhile: idle again.
                if received < buffer_size:
                    sleep(lingering)
                try:
                    received = recv_into(buffer, 0, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    lingering = 0.0
                    continue
            else:
                received = recv_into(buffer)
            if not received:
                raise redis.ConnectionError("Redis closed the pub/sub connection")
            feed(buffer, 0, received)
            now = monotonic()
            seconds = linger_seconds()  # the room's size sets it
            if lingering or now - last_wake < 2 * seconds:  # messages come faster than the linger: busy
                lingering = seconds
            last_wake = now

    def linger_seconds(self) -> float:
        """How long a busy listener lingers now (0: never).

        In a room of N users a message wakes N listeners: past
        ``wakeup_budget`` wake-ups a second the process spends its time
        switching threads.  So the linger grows with the users connected
        (N / budget, in 10 ms steps, so that a listener seldom has to set it
        again), and one wake-up carries the messages of a longer stretch.
        """
        config = self.config
        if config.listener_linger <= 0:
            return 0.0
        if config.wakeup_budget <= 0:
            return config.listener_linger
        grown = round(len(self.connections) / config.wakeup_budget, 2)
        return min(MAX_LINGER, max(config.listener_linger, grown))

    def resubscribe(self, conn: Connection, sub: redis.client.PubSub) -> bool:
        """Reconnect a subscription, with backoff, while its client stays; False if it left."""
        delay = 0.05
        while conn.alive and not self._shutting_down.is_set():
            try:
                sub.connection.disconnect()
                sub.connection.connect()  # redis-py's on_connect callback subscribes again
                confirmation = sub.connection.read_response(timeout=self.config.close_timeout, push_request=True)
                sub.handle_message(confirmation)
                return True
            except (redis.RedisError, OSError) as exc:
                logger.debug("%r: Redis still unreachable: %s", conn, exc)
                conn.gone.wait(delay)
                delay = min(delay * 2, 1.0)
        return False

    # --- several processes on one Redis ----------------------------------------

    def current_run_id(self) -> str | None:
        """Redis's run id (it changes when Redis restarts), or None if unreachable."""
        try:
            return str(self.rdb.info("server").get("run_id", ""))
        except (redis.RedisError, OSError):
            return None

    def heartbeat_loop(self) -> None:
        """Every dead_after / 3 seconds: heartbeat, reconcile after trouble, reap the dead."""
        interval = self.config.dead_after / 3
        while not self._shutting_down.is_set():
            # While Redis is down, retry often: the users are told it is back from here.
            self._wake_heartbeat.wait(0.2 if self._redis_down else interval)
            self._wake_heartbeat.clear()
            if self._shutting_down.is_set():
                break
            try:
                self.heartbeat()
                self.reap_dead_servers()
            except redis.ResponseError as exc:
                # Redis answers, but refuses (out of memory, read-only): the
                # connection is not lost, and users who send are told per message.
                self.note_redis_refusing(exc)
            except (redis.RedisError, OSError) as exc:
                # Said once by note_redis_down; every retry after that is detail.
                logger.debug("heartbeat failed: %s", exc)
                self.note_redis_down()
            else:
                self.note_redis_accepting()

    def heartbeat(self) -> None:
        """Say this process is alive; re-register its users if Redis lost them."""
        keys = self.keys
        pipe = self.rdb.pipeline()
        pipe.set(keys.server_alive(self.server_id), "alive", px=int(self.config.dead_after * 1000))
        pipe.sadd(keys.servers, self.server_id)
        try:
            _, added = pipe.execute()
        except redis.ResponseError:
            # Out of memory refuses SET and SADD, not PEXPIRE: keep the
            # heartbeat alive, or the other processes would reap our users.
            self.rdb.pexpire(keys.server_alive(self.server_id), int(self.config.dead_after * 1000))
            raise
        # A missing registration (Redis restarted without its data, or we were
        # taken for dead) or a past outage: make Redis agree with our sockets.
        if (added and self.redis_run_id is not None) or self._reconcile_needed.is_set():
            self.reconcile()
            self._reconcile_needed.clear()  # only now: a failed reconcile is tried again
        self.redis_run_id = self.current_run_id()
        with self._redis_state_lock:
            listeners_back = self._resubscribing == 0
        if listeners_back:
            self.note_redis_up()

    def reconcile(self) -> None:
        """Register every local user Redis does not know, remove every one it wrongly keeps."""
        keys = self.keys
        registered = {uid.decode() for uid in self.rdb.smembers(keys.server_users(self.server_id))}
        with self._connections_lock:
            local = {conn.id: conn for conn in self.connections if conn.added}
        for user_id in registered - local.keys():
            self.remove_user_record(user_id, self.server_id)
        top = int(self.rdb.get(keys.next_user_id) or 0)
        highest = max((int(uid) for uid in local), default=0)
        if top < highest:  # Redis lost the counter: never hand out a live id again
            self.rdb.incrby(keys.next_user_id, highest - top)
        for conn in local.values():
            with conn.state_lock:
                if conn.added:
                    self._register_again(conn, conn.id in registered)
        logger.info("reconciled %d local users with Redis", len(local))

    def _register_again(self, conn: Connection, still_registered: bool) -> None:
        """Put one local user back into Redis after Redis lost or doubted it."""
        keys = self.keys
        if not self.rdb.hsetnx(keys.users_online, conn.id, "online") and not still_registered:
            # Redis lost its data and another process gave this id to a newcomer
            # before we registered ours again: ours must go, quietly.
            logger.error("%r: id taken by another user while Redis forgot it; disconnecting", conn)
            conn.added = False
            conn.send_payload(self.system_payload(p.INDIVIDUAL, conn.name, self.text("bus_lost")))
            conn.shutdown_socket()
            return
        if p.guest_id(conn.name) is None and not self.claim_name(conn.id, conn.name):
            # Someone took the name while Redis forgot ours: back to a guest
            # name, which the client learns as after a rename.
            conn.name = p.guest_name(conn.id)
            conn.name_key = p.name_key(conn.name)
            self.reply(conn, p.join_message(p.INDIVIDUAL, conn.name, p.CHANGE_NAME_OK, conn.name))
        pipe = self.rdb.pipeline()
        pipe.hset(keys.users_name, conn.id, conn.name)
        pipe.zadd(keys.activity_ranking, {conn.id: conn.activity}, gt=True)
        pipe.sadd(keys.server_users(self.server_id), conn.id)
        pipe.execute()

    def reap_dead_servers(self) -> None:
        """Remove the users of every server process whose heartbeat expired.

        SREM decides which survivor does it, so each user is announced once.
        """
        keys = self.keys
        others = [sid.decode() for sid in self.rdb.smembers(keys.servers) if sid.decode() != self.server_id]
        if not others:
            return
        pipe = self.rdb.pipeline(transaction=False)
        for server_id in others:
            pipe.exists(keys.server_alive(server_id))
        for server_id, alive in zip(others, pipe.execute()):
            if not alive and self._claim_dead_server(server_id):
                logger.warning("server %s is dead: removing its users", server_id)
                self.cleanup_server(server_id)

    def _claim_dead_server(self, server_id: str) -> bool:
        """Take a dead server off the list, unless it came back meanwhile; True: ours to clean."""
        keys = self.keys
        with self.rdb.pipeline() as pipe:
            try:
                pipe.watch(keys.server_alive(server_id))
                if pipe.exists(keys.server_alive(server_id)):
                    return False
                pipe.multi()
                pipe.srem(keys.servers, server_id)
                (removed,) = pipe.execute()
                return bool(removed)
            except redis.WatchError:
                return False  # its heartbeat came back

    def cleanup_server(self, server_id: str) -> None:
        """Remove and announce every user a (dead or previous) process left behind."""
        for user_id in self.rdb.smembers(self.keys.server_users(server_id)):
            self.remove_user_record(user_id.decode(), server_id)
        self.rdb.delete(self.keys.server_users(server_id))

    def remove_user_record(self, user_id: str, server_id: str) -> None:
        """Forget a user that is not connected here, and announce that it left."""
        keys = self.keys
        name = self.rdb.hget(keys.users_name, user_id)
        pipe = self.rdb.pipeline()
        pipe.hdel(keys.users_name, user_id)
        pipe.hdel(keys.users_online, user_id)
        pipe.zrem(keys.activity_ranking, user_id)
        pipe.srem(keys.server_users(server_id), user_id)
        if name is not None:
            name = name.decode()
            self.release_names({p.name_key(name): user_id}, pipe)
            pipe.publish(keys.broadcast, self.system_payload(p.CHANNEL, p.BROADCAST, self.text("left", name=name)))
        pipe.execute()
        logger.info("removed user %s (%s) of server %s", user_id, name, server_id)

    def unregister(self) -> None:
        """Leave the servers on this Redis (graceful shutdown)."""
        keys = self.keys
        try:
            pipe = self.rdb.pipeline()
            pipe.srem(keys.servers, self.server_id)
            pipe.delete(keys.server_alive(self.server_id), keys.server_users(self.server_id))
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            logger.warning("could not unregister from Redis: %s", exc)

    def note_redis_down(self) -> None:
        """Tell every local user, once, that Redis is unreachable."""
        self._reconcile_needed.set()  # even if already down: a reconcile may have been cut short
        with self._redis_state_lock:
            if self._redis_down:
                return
            self._redis_down = True
            self._redis_down_since = time.monotonic()
        logger.error("lost the connection to Redis")
        self._notices.put("redis_lost")
        self._wake_heartbeat.set()

    def note_redis_up(self) -> None:
        """Tell every local user, once, that Redis is back (registered, listeners subscribed)."""
        with self._redis_state_lock:
            if not self._redis_down:
                return
            self._redis_down = False
            outage = time.monotonic() - self._redis_down_since
        logger.warning("Redis is reachable again, after %.1f s", outage)
        self._notices.put("redis_back")

    def note_redis_refusing(self, exc: redis.ResponseError) -> None:
        """Log once that Redis refuses writes (out of memory, read-only), until it accepts them again."""
        if self._redis_refusing is None:
            logger.error("Redis refuses writes: %s", exc)
            self._redis_refusing = time.monotonic()

    def note_redis_accepting(self) -> None:
        """Log once that Redis accepts writes again after refusing them."""
        if self._redis_refusing is not None:
            logger.warning("Redis accepts writes again, after %.1f s", time.monotonic() - self._redis_refusing)
            self._redis_refusing = None

    def notifier_loop(self) -> None:
        """Send queued notices to every local user until shutdown."""
        while (key := self._notices.get()) is not None:
            with self._connections_lock:
                connections = list(self.connections)
            for conn in connections:
                conn.send_payload(self.system_payload(p.INDIVIDUAL, conn.name, self.text(key)))

    # --- reading and dispatch (Go: readClient, writeToRedis, messageProcessing)

    def read_client(self, conn: Connection) -> None:
        """Read frames and handle each in order until the client leaves."""
        config = self.config
        reader = FrameReader(
            conn.sock,
            config.max_frame,
            first_frame_timeout=config.login_timeout,
            frame_timeout=config.frame_timeout,
            idle_timeout=config.idle_timeout,
        )
        batch = Batch(self.rdb)
        try:
            self._read_frames(conn, reader, batch)
        finally:
            self.flush(conn, batch)

    def _read_frames(self, conn: Connection, reader: FrameReader, batch: Batch) -> None:
        while True:
            if conn.joined and reader.idle_timeout:
                # A named user who only reads is a user, not an idle socket:
                # TCP keepalive finds the ones whose host went away.
                reader.idle_timeout = 0
            # The writes of every message already waiting go in one round
            # trip: a sender with many frames in flight costs Redis, and every
            # listener, one burst instead of one wake-up per message.  Before
            # a read that may block, whatever is queued goes out.
            if len(batch) >= BATCH_LIMIT or (len(batch) and not reader.decoder.has_frame()):
                self.flush(conn, batch)
            try:
                msg = reader.read()
            except InvalidUtf8 as exc:
                logger.info("%r: %s", conn, exc)
                if not conn.bucket.take():
                    if self.refuse_flood(conn):
                        continue
                    return
                self.reply_system(conn, self.text("bad_utf8"))
                continue
            except FrameTimeout as exc:
                logger.info("%r: %s; closing the connection", conn, exc)
                self.reply_system(conn, self.text(f"timeout_{exc.kind}", seconds=f"{exc.seconds:g}"))
                return
            except FrameError as exc:
                # Original: a negative length panicked the whole server process.
                logger.warning("%r: %s; closing the connection", conn, exc)
                self.reply_system(conn, self.text("frame_error", reason=exc))
                return
            except OSError:
                return
            if msg is None:
                return
            if not msg:
                continue
            logger.debug("%r: received %r", conn, msg)
            if not conn.bucket.take():
                if self.refuse_flood(conn):
                    continue
                return
            conn.refused_in_a_row = 0
            if self.write_to_redis(conn, msg, batch) is QUIT:
                return

    def flush(self, conn: Connection, batch: Batch) -> None:
        """Execute the writes queued for this client's messages (one round trip).

        Each message gets one answer about its fate at most: its echo (or
        confirmation) when delivered; "not sent" when Redis refused or could
        not be reached (then nobody got it, see :class:`Batch`); "may or may
        not have been delivered" when Redis took the writes and did not answer
        in time, since they may still run.
        """
        if not len(batch):
            return
        try:
            batch.pipe.execute()
        except redis.RedisError as exc:
            # Original: log.Fatalf, stopping the whole server.
            logger.error("%r: Redis error while handling its messages: %s", conn, exc)
            if not batch.messages:
                pass  # only bookkeeping was lost (a join notice): nobody waits for an answer
            elif outcome_unknown(exc):
                self.reply_system(conn, self.text("outcome_unknown"))
            elif batch.messages == 1:
                self.reply_system(conn, self.text("not_sent"))
            else:
                self.reply_system(conn, self.text("not_sent_many", count=batch.messages))
        else:
            for payload in batch.confirmations:
                self.reply(conn, payload)
        finally:
            batch.reset()

    def refuse_flood(self, conn: Connection) -> bool:
        """Refuse a message over the rate limit; False: disconnect the flooder."""
        conn.refused_in_a_row += 1
        if conn.refused_in_a_row >= 2 * conn.bucket.burst:
            logger.warning("%r: still flooding after %d refusals; disconnecting", conn, conn.refused_in_a_row)
            self.reply_system(conn, self.text("flood_disconnect"))
            return False
        if conn.refused_in_a_row == 1:
            logger.info("%r: over the rate limit", conn)
            self.reply_system(conn, self.text("flood_warning", rate=f"{conn.bucket.rate:g}"))
        return True

    def write_to_redis(self, conn: Connection, msg: str, batch: Batch) -> object:
        """Handle one message as its own sender's.

        Original: RPUSH to one ``messageQueue`` list shared by all connections,
        then LPOP by whichever connection came next, so under concurrency one
        user's message was handled as another's.  The list bought nothing (the
        same goroutine popped at once), so the message goes straight on.
        """
        try:
            return self.message_processing(conn, msg, batch)
        except redis.RedisError as exc:
            # Original: log.Fatalf, stopping the whole server.
            logger.error("%r: Redis error while handling %r: %s", conn, msg, exc)
            self.reply_system(conn, self.text("server_error"))
            return None

    def message_processing(self, conn: Connection, msg: str, batch: Batch) -> object:
        """Parse one payload and dispatch it.

        Writes (publishes, history, the ranking) are queued on ``batch``, which
        the reader executes once no further whole message is waiting: at most
        one round trip per message.  Original: slept one second per message,
        and counted every payload for the ranking; here only what a user says
        (chat and private messages) counts as activity.
        """
        parts = p.split_message(msg)
        if parts is None:
            logger.info("%r: not four fields: %r", conn, msg)
            self.reply_system(conn, self.text("bad_format"))
            return None
        if parts.target_type == p.INDIVIDUAL:
            result = self.handle_individual_commands(conn, parts.target, parts.mark, parts.text, batch)
        elif parts.target_type == p.CHANNEL:
            result = self.handle_channel_commands(conn, parts.target, parts.mark, parts.text, batch)
        else:
            logger.info("%r: unknown target type %r", conn, parts.target_type)
            self.reply_system(conn, self.text("bad_format"))
            result = None
        # Original: also counted the quit, after the user was removed, leaving
        # a ghost entry in the ranking.
        return result

    # --- commands (Go: handleIndividualCommands, handleChannelCommands) -------

    def handle_individual_commands(self, conn, target: str, mark: str, message: str, batch: Batch) -> object:
        """Renames, the menu, private messages."""
        keys = self.keys
        if mark in (p.CHANGE_NAME_FIRST, p.CHANGE_NAME):
            result, reason = self.change_name(conn, message)
            if result == 1:
                ok_mark = p.CHANGE_NAME_FIRST_OK if mark == p.CHANGE_NAME_FIRST else p.CHANGE_NAME_OK
                self.reply(conn, p.join_message(p.INDIVIDUAL, conn.name, ok_mark, message))
                # Original: every changeNameFirst announced a join again; a
                # repeated one is a plain rename here, or it would let one user
                # make the room re-send joins and history at will.  A guest
                # whose first name comes by changeName (./cd2, after a refused
                # first nickname) is announced too: its leaving will be.
                if not conn.joined:
                    conn.joined = True
                    if mark == p.CHANGE_NAME_FIRST:
                        # History first: the join goes out with this message's
                        # other writes, in one round trip.  A guest who chatted
                        # before ./cd2 has seen the room live: no history.
                        self.send_history(conn)
                    joined = self.text("joined", name=conn.name)
                    batch.pipe.publish(keys.broadcast, self.system_payload(p.CHANNEL, p.BROADCAST, joined))
            elif result == 2:
                # The original answers a taken name with changeNameFirst0 for
                # both marks; kept, since clients key on it.
                self.reply(conn, p.join_message(p.INDIVIDUAL, conn.name, p.NAME_REFUSED, self.text(reason)))
            else:
                self.reply(conn, p.join_message(p.INDIVIDUAL, conn.name, p.RENAME_FAILED, self.text(reason)))
        elif mark == p.MENU:
            # Original: published to the channel of the user named `target`;
            # an unknown (or empty) target lost it.  The asker gets it.
            self.reply_system(conn, self.text("menu"))
        elif mark == p.PRIVATE:
            problem = p.text_problem(message)
            target_id = None if problem else self.get_users_channel(target)
            if problem:
                self.reply_system(conn, self.text(problem))
            elif target_id is None:
                # Original: published to channel "" and lost.
                self.reply_system(conn, self.text("no_such_user", name=target))
            else:
                # Original: delivered as a system message without the sender's
                # name in the Go client's rendering, and not echoed.
                payload = p.join_message(p.INDIVIDUAL, conn.name, p.PRIVATE_IN, message)
                echo = p.join_message(p.INDIVIDUAL, target, p.PRIVATE_SENT, message)
                if self.fits(payload) and self.fits(echo):
                    batch.pipe.publish(keys.personal(target_id), payload)
                    self.update_activity(conn, batch)
                    batch.message(confirmation=echo)  # the echo only once it is delivered
                else:
                    self.reply_too_long(conn)
        elif mark == p.WHO:
            self.reply_system(conn, self.who_text())
        else:
            logger.info("%r: unknown individual mark %r", conn, mark)
            self.reply_system(conn, self.text("bad_format"))
        return None

    def handle_channel_commands(self, conn, target: str, mark: str, message: str, batch: Batch) -> object:
        """Chat, the online count, the ranking, quit."""
        if mark == p.ONLINE_LIST:
            # Original: broadcast to everyone; the asker alone asked.
            online = self.text("online_count", count=self.get_online_users())
            self.reply(conn, p.join_message(p.CHANNEL, p.BROADCAST, conn.name, online))
        elif mark == p.QUIT:
            logger.info("%r: quits", conn)
            return QUIT
        elif mark == p.ACTIVITY:
            activity = message + self.text("activity_title")
            for rank, (name, count) in enumerate(self.top_active_users(), start=1):
                activity += self.text("activity_line", rank=rank, name=name, count=count)
            self.reply_system(conn, activity, target_type=p.CHANNEL, target=p.BROADCAST)
        elif mark != "":
            # Original: any other mark was chat; the Go client sends none.
            logger.info("%r: unknown channel mark %r", conn, mark)
            self.reply_system(conn, self.text("bad_format"))
        else:
            payload = p.join_message(p.CHANNEL, p.BROADCAST, conn.name, message)
            problem = p.text_problem(message)
            if problem:
                # Original: forwarded anything, so "ok\n[21:13] < bob > ..."
                # printed a line that looked like bob speaking.
                self.reply_system(conn, self.text(problem))
            elif self.fits(payload):
                batch.pipe.publish(self.keys.broadcast, payload)
                self.add_history(conn, message, batch)
                self.update_activity(conn, batch)
                batch.message()  # its echo is the broadcast itself
            else:
                self.reply_too_long(conn)
        return None

    # --- users (Go: changeName, getUsersChannel, getUsersName, ...) -----------

    def change_name(self, conn: Connection, new_name: str) -> tuple[int, str]:
        """Claim ``new_name`` atomically; (1, "") on success, as the original's codes.

        Returns (2, reason) when the name is taken or not allowed, (0, reason)
        when Redis could not be updated.  Original: read every name, then set
        (two clients could take one name), and never released the old name.
        """
        problem = p.name_problem(new_name)
        if problem is not None:
            return 2, problem
        key = p.name_key(new_name)
        with conn.state_lock:
            try:
                renamed = self.claim_name(conn.id, new_name, release=conn.name_key)
            except redis.RedisError as exc:
                logger.error("%r: rename to %r failed: %s", conn, new_name, exc)
                return 0, "rename_failed"
            if not renamed:
                return 2, "name_taken"
            conn.name, conn.name_key = new_name, key
        logger.info("%r: renamed to %r", conn, new_name)
        return 1, ""

    def claim_name(self, user_id: str, name: str, release: str = "") -> bool:
        """Take ``name`` for ``user_id`` and record it, unless another user holds it; True: taken.

        One atomic round trip (_RENAME), which also frees the name with the
        ``name_key`` ``release`` if this user still holds it.  Guest names are
        never claimed (see :meth:`user_add`): there is nothing to release.
        """
        keys = self.keys
        if p.guest_id(release) is not None:
            release = ""
        return bool(self.rdb.eval(_RENAME, 2, keys.users_by_name, keys.users_name, p.name_key(name), user_id, name, release))

    def release_names(self, holders: dict[str, str], pipe) -> None:
        """Queue on ``pipe`` the freeing of each name (``name_key`` -> user id) that user still holds.

        Compare and delete: an unconditional delete could free a name another
        process gave to someone else meanwhile, e.g. after this process was
        taken for dead.  A script, so that the comparison and the delete are
        one atomic step inside the caller's round trip.  (WATCH + MULTI took
        three, and when a thousand users left at once every delete aborted
        every other transaction, which then started over.)  Guest names are
        never claimed (see :meth:`user_add`): nothing to free.
        """
        args = [value for key, user_id in holders.items() if p.guest_id(key) is None for value in (key, user_id)]
        if args:
            pipe.eval(_RELEASE_NAMES, 1, self.keys.users_by_name, *args)

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
        """The user's current name: kept on the connection, which alone changes it."""
        return conn.name

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

    def who_text(self) -> str:
        """The names online, sorted, as many as fit in one frame."""
        names = sorted((name.decode() for name in self.rdb.hvals(self.keys.users_name)), key=p.name_key)
        shown = list(names)
        while True:
            listing = ", ".join(shown) + (", …" if len(shown) < len(names) else "")
            message = self.text("who", count=len(names), names=listing)
            # The longest name prefix the reply can carry: individual:<name>:系统消息:
            if self.fits(f"individual:{'x' * 128}:系统消息:{message}") or not shown:
                return message
            shown = shown[: len(shown) * 3 // 4]

    def add_history(self, conn: Connection, message: str, batch: Batch) -> None:
        """Keep a public message for newcomers (queued on ``batch``)."""
        if self.config.history > 0:
            entry = f"{int(time.time())}:{conn.name}:{message}"
            if not self.fits(f"{p.HISTORY}:{entry}"):
                return  # a few bytes longer than the live broadcast
            batch.pipe.lpush(self.keys.history, entry)
            batch.pipe.ltrim(self.keys.history, 0, self.config.history - 1)

    def send_history(self, conn: Connection) -> None:
        """Send the kept public messages, oldest first, as ``history:`` payloads.

        Only the newest that fit in one write of WRITE_LIMIT bytes: more frames
        back to back could end the Go client's 4096-byte read buffer inside a
        frame, which makes it spin forever.
        """
        if self.config.history <= 0:
            return
        try:
            entries = self.rdb.lrange(self.keys.history, 0, self.config.history - 1)
        except redis.RedisError as exc:
            # The name was accepted and so answered: a missing history is no reason for a second answer.
            logger.error("%r: could not read the history: %s", conn, exc)
            return
        payloads, size = [], 0
        for entry in entries:
            payload = f"{p.HISTORY}:".encode() + entry
            size += len(payload) + 1 + 4  # "\n" and the frame header
            if size > WRITE_LIMIT:
                break
            payloads.append(payload)
        if payloads:
            conn.send_payloads(reversed(payloads))

    def update_activity(self, conn: Connection, batch: Batch) -> None:
        """Count one chat or private message for the user (queued on ``batch``)."""
        conn.activity += 1  # kept here too, to re-register the user if Redis loses its data
        batch.pipe.zincrby(self.keys.activity_ranking, 1, conn.id)

    # --- replies -------------------------------------------------------------

    def text(self, key: str, **values: object) -> str:
        """A human-readable text in the server's language."""
        return p.text(self.lang, key, **values)

    def fits(self, payload: str) -> bool:
        """Whether the payload, with its "\\n", fits in one frame the clients decode."""
        return len(payload.encode("utf-8")) + 1 <= self.config.max_frame

    def system_payload(self, target_type: str, target: str, message: str) -> bytes:
        """A ``<type>:<target>:系统消息:<message>`` payload, as bytes."""
        return p.join_message(target_type, target, p.SYSTEM, message).encode("utf-8")

    def reply(self, conn: Connection, payload: str) -> None:
        """Send a payload to this client only, straight to its socket.

        Original: published on the personal channel; a direct send saves a
        Redis round trip and puts a reply before the broadcasts it causes.
        """
        if not self.fits(payload):
            self.reply_too_long(conn)
            return
        conn.send_payload(payload.encode("utf-8"))

    def reply_system(self, conn: Connection, message: str, *, target_type=p.INDIVIDUAL, target=None) -> None:
        """Send a system message to this client only."""
        self.reply(conn, p.join_message(target_type, conn.name if target is None else target, p.SYSTEM, message))

    def reply_too_long(self, conn: Connection) -> None:
        """Tell the client its message would not fit in one frame."""
        limit = self.config.max_frame
        conn.send_payload(self.system_payload(p.INDIVIDUAL, conn.name, self.text("too_long", limit=limit)))


def raise_open_file_limit() -> None:
    """Every chat user costs a socket and two Redis connections: take all the host allows."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = 1 << 20
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            logger.info("open-file limit raised from %d to %d", soft, hard)
    except (ImportError, ValueError, OSError) as exc:
        logger.warning("could not raise the open-file limit: %s", exc)


#: TCP keepalive of chat sockets: probes after this many idle seconds, this
#: many seconds apart, this many unanswered: a peer whose host vanished is
#: found within about two minutes, while a user who only reads stays.
CLIENT_KEEPALIVE = (60, 10, 6)


def set_keepalive(sock: socket.socket) -> None:
    """Turn TCP keepalive on, with :data:`CLIENT_KEEPALIVE` where the platform lets us set it."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle, interval, count = CLIENT_KEEPALIVE
    for option, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def set_send_timeout(sock: socket.socket, seconds: float) -> None:
    """Bound blocking sends only (SO_SNDTIMEO), leaving reads to block freely."""
    if seconds and seconds > 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval(seconds))


#: A new user: KEYS nextUserId, usersOnline, usersName, activityRanking,
#: serverUsers:<sid>; ARGV the guest prefix.  Takes the next id no live user
#: holds, registers it as a guest; returns the id.
_ADD_USER = """
local id
repeat
  id = redis.call('INCR', KEYS[1])
until redis.call('HSETNX', KEYS[2], id, 'online') == 1
redis.call('HSET', KEYS[3], id, ARGV[1] .. id)
redis.call('ZADD', KEYS[4], 0, id)
redis.call('SADD', KEYS[5], id)
return id
"""

#: A rename: KEYS usersByName, usersName; ARGV new name_key, user id, new name,
#: old name_key ("" for none).  Claims the new name unless another user holds
#: it (then returns 0), records it, frees the old one if this user still holds it.
_RENAME = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 and redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if ARGV[4] ~= '' and ARGV[4] ~= ARGV[1] and redis.call('HGET', KEYS[1], ARGV[4]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[4])
end
return 1
"""

#: Compare and delete, for each (name_key, user id) pair in ARGV: the name is
#: freed only if that user still holds it.
_RELEASE_NAMES = """
local freed = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    freed = freed + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return freed
"""

#: Bytes a Redis connection reads at once (redis-py's parser buffer; a listener's recv).
PUBSUB_READ_SIZE = 16384
#: The longest a busy listener lingers, however big the room: a delay people hardly notice.
MAX_LINGER = 0.5


def _no_driver_info() -> dict:
    """Keyword arguments that turn CLIENT SETINFO off (redis-py >= 8 spells it ``driver_info``)."""
    import inspect

    connection = getattr(redis.connection, "AbstractConnection", redis.Connection)
    if "driver_info" in inspect.signature(connection.__init__).parameters:
        return {"driver_info": None}
    return {"lib_name": None, "lib_version": None}


class _PooledConnection(redis.Connection):
    """A Redis connection whose pool check costs no system call.

    redis-py's pool asks ``can_read(0)`` of every connection it hands out, to
    catch one returned with a reply unread: a ``poll()``, which releases the
    GIL and, in a busy room, waits to take it back behind every woken
    listener, on each command.  Our connections are only ever returned with
    their replies read (redis-py disconnects one whose read failed), so with
    hiredis the check looks at the parser's buffer only.
    """

    def can_read(self, timeout: float = 0) -> bool:
        reader = getattr(self._parser, "_reader", None)
        if timeout == 0 and reader is not None:
            return bool(reader.has_data())
        return super().can_read(timeout)


def mask_url(url: str | None) -> str:
    """``url`` with its password replaced by ``***``: for every log line and error."""
    if not url:
        return str(url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    credentials, at, location = rest.rpartition("@")
    if not at:
        return url
    user, colon, _password = credentials.partition(":")
    # "user:password@" keeps the user; a lone "x@" may be a password (AUTH with one argument).
    return f"{scheme}://{user + ':***' if colon else '***'}@{location}"


def connect_redis(config: Config) -> redis.Redis:
    """The shared Redis client: ``config.redis_url``, or an embedded fakeredis.

    Every chat user holds two pub/sub connections and its reader may run a
    command, so the pool is sized for that rather than redis-py's default.
    """
    pool_size = 3 * config.max_clients + 16
    if not config.redis_url:
        try:
            import fakeredis
        except ImportError:
            raise SystemExit(MISSING_PACKAGES.format(name="fakeredis")) from None

        logger.warning("no Redis URL given: using an embedded in-process fakeredis (one process only)")
        pool = redis.ConnectionPool(
            connection_class=fakeredis.FakeRedisConnection, server=fakeredis.FakeServer(), max_connections=pool_size
        )
        return redis.Redis(connection_pool=pool)
    client = redis.Redis.from_url(
        config.redis_url,
        max_connections=pool_size,
        socket_connect_timeout=5,
        connection_class=_PooledConnection,
        # RESP2: redis-py 8 speaks RESP3 by default, which costs every new
        # connection (two per login) a HELLO round trip; nothing here needs RESP3.
        protocol=2,
        # Listeners block on their sockets without a timeout: keepalive makes a
        # Redis that vanished without a FIN (a partition, a dead host) an error
        # within about a minute, so they resubscribe instead of staying deaf.
        socket_keepalive=True,
        socket_keepalive_options={socket.TCP_KEEPIDLE: 30, socket.TCP_KEEPINTVL: 10, socket.TCP_KEEPCNT: 3},
        # Each connection's read buffer, allocated (and touched) up front:
        # redis-py's 64 KiB made two pub/sub connections 128 KiB of every
        # user's memory.  16 KiB still holds ~200 chat messages per read.
        socket_read_size=PUBSUB_READ_SIZE,
        # No CLIENT SETINFO: it costs every new connection (two per login)
        # two round trips, and redis-py looks its own version up on disk for
        # each connection while holding the pool's lock.
        **_no_driver_info(),
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        raise SystemExit(f"cannot reach Redis at {mask_url(config.redis_url)}: {exc}") from None
    logger.info("using Redis at %s", mask_url(config.redis_url))
    return client


def _flag_type(name: str, convert):
    """An argparse ``type`` from a setting's converter: its ValueError becomes a usage error."""

    def flag_type(value: str):
        try:
            return convert(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    flag_type.__name__ = name
    return flag_type


def build_parser(environ=None) -> argparse.ArgumentParser:
    """The command line, generated from :class:`Config`: a flag per setting.

    A setting's environment variable, when set, replaces its default; it is
    checked as the flag would be, and a bad one is a usage error naming it.
    """
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="chatroom-server", description="redis-chatroom server")
    limits = parser.add_argument_group("limits (the help of each says what 0 means)")
    bad_environment = []
    for item in fields(Config):
        meta = item.metadata
        if not meta["flag"]:
            continue
        default = item.default
        env = meta["env"]
        help_text = meta["help"]
        if item.default is not None:
            help_text += f" [default: {item.default}]"
        if env:
            help_text += f" (env {env})"
            if environ.get(env):
                # Not shown in the help: REDIS_URL may hold a password.
                try:
                    default = meta["convert"](environ[env])
                except ValueError as exc:  # each reason quotes the value (a URL masked)
                    bad_environment.append(f"{env}: {exc}")
        target = limits if meta["group"] == LIMITS else parser
        target.add_argument(
            "--" + item.name.replace("_", "-"),
            dest=item.name,
            default=default,
            type=_flag_type(item.name.replace("_", "-"), meta["convert"]),
            metavar=meta["metavar"],
            help=help_text,
        )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v: info, -vv: debug")
    if bad_environment:
        parser.error("; ".join(bad_environment))
    return parser


def parse_args(argv: list[str] | None = None, environ=None) -> Config:
    """Command-line flags (and environment variables) -> a checked :class:`Config`; usage errors exit 2."""
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    values = {item.name: getattr(args, item.name) for item in fields(Config) if item.metadata["flag"]}
    try:
        config = Config(**values)
    except ValueError as exc:  # only a bad default could get here: the flags are checked already
        parser.error(str(exc))
    if config.max_frame > MAX_FRAME:
        logger.warning(
            "--max-frame %d: the original Go client cannot decode frames over %d bytes", config.max_frame, MAX_FRAME
        )
    return config


#: Seconds a thread waiting for the GIL waits before it makes the holder drop
#: it (CPython's default: 0.005).  Every thread here gives the GIL up within
#: microseconds, in its next system call; with thousands of them waiting (a
#: join notice wakes every listener) the default's timed wake-ups and forced
#: drops were most of the server's context switches.  See docs/BENCHMARKS.md.
SWITCH_INTERVAL = 0.05


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
    return cpu


def describe_redis_error(exc: redis.RedisError) -> str:
    """One line for an operator: what Redis refused, and what to do about it."""
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return f"it is a read only replica; give the master's address ({exc})"
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return f"it is out of memory (maxmemory, with a policy that evicts nothing); free some or raise it ({exc})"
    return str(exc)


def say_listening(server: ChatServer) -> None:
    """Print where the server listens; a standard output that cannot be written must not stop it."""
    try:
        print(f"chatroom server listening on {server.address[0]}:{server.port}", flush=True)
    except OSError as exc:  # e.g. > /dev/full
        logger.warning("cannot write to standard output (%s); going on without it", exc)
        # What is left in its buffer would fail again at exit, with status 120.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """Run a server until SIGINT or SIGTERM (Go: ``main``)."""
    config = parse_args(argv)
    raise_open_file_limit()
    # Before any thread starts: threads inherit both.
    sys.setswitchinterval(SWITCH_INTERVAL)
    pinned = pin_to_cpu(config.cpu, config.port)
    if pinned is not None:
        logger.info("running on CPU %d", pinned)
    server = ChatServer(config)  # SystemExit with one line when Redis is unreachable
    try:
        server.bind()
    except OSError as exc:
        print(f"cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    except redis.RedisError as exc:  # a read-only replica, out of memory, ...
        print(f"cannot use Redis at {mask_url(config.redis_url)}: {describe_redis_error(exc)}", file=sys.stderr)
        return 1
    say_listening(server)

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, name="shutdown").start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())

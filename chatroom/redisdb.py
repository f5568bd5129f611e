"""The Redis adapter: connecting, key names, the Lua scripts and the functions that call them.

It is the only module that touches redis-py's internals (the pub/sub
connection's socket, its read buffer and its hiredis reader, read by
:func:`raw_pubsub_socket` for the listeners' fast drain, and the pool's
``can_read`` check).  :func:`check_internals` verifies at start that they are
where this code expects them; when they are not, the listeners use redis-py's
public read path, with one warning, instead of failing.  The redis-py range
this was written and tested for is pinned in setup.cfg.
"""

from __future__ import annotations

import enum
import inspect
import logging
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

import protocol as p

if TYPE_CHECKING:
    from chatroom.config import Config

logger = logging.getLogger("chatroom.server")

#: What to say when the project's packages are not installed in this Python.
MISSING_PACKAGES = (
    "redis-chatroom's packages are not installed in this Python ({name} is missing): "
    "run `make run`, or `pip install .` first"
)

#: Bytes a Redis connection reads at once (redis-py's parser buffer; a listener's recv).
#: redis-py's 64 KiB made two pub/sub connections 128 KiB of every user's
#: memory.  An idle or quiet listener reads little at a time (a message is
#: ~100 bytes), and a busy one reads into a bigger buffer of its own while
#: busy (listener.BUSY_READ_SIZE); a long command reply takes a few reads.
PUBSUB_READ_SIZE = 1024
#: Redis connections per chat user in the pub/sub pool (broadcast, personal) ...
PUBSUB_PER_CLIENT = 2
#: ... plus these for the health probe and spares.
POOL_SPARE = 16
#: The command connections, all opened at start and kept: a reader waits for
#: one of them (at most POOL_WAIT seconds) rather than opening another, so
#: that at Redis's maxclients the users already connected still chat (Redis
#: runs one command at a time anyway: more would only queue there).
COMMAND_CONNECTIONS = 32
POOL_WAIT = 5.0
#: The heartbeat's own connections (see heartbeat_client): its thread's, the
#: reaper's, and one for the stop's unregistering while a beat is under way.
HEARTBEAT_CONNECTIONS = 3
#: The URL scheme of a Redis found through Sentinel.
SENTINEL_SCHEME = "redis+sentinel"
#: Seconds to wait for Redis to accept a new connection.
CONNECT_TIMEOUT = 5
#: TCP keepalive of Redis connections (idle, interval, count): a listener
#: blocked without a timeout learns within about a minute that Redis vanished
#: without a FIN (a partition, a dead host), and resubscribes.
REDIS_KEEPALIVE = (30, 10, 3)


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
        self.rooms = prefix + "rooms"
        self._personal = prefix + "user:"
        self.prefix = prefix
        # Accounts and moderation (chatroom/accounts.py, chatroom/moderation.py).
        self.accounts = prefix + "accounts"
        self.bans = prefix + "bans"
        self.mutes = prefix + "mutes"
        self.moderation_log = prefix + "moderationLog"
        self.control = prefix + "control"

    def account(self, name_key: str) -> str:
        """The hash of one registered account: name, hash, oper, created."""
        return f"{self.prefix}account:{name_key}"

    def login_failures(self, kind: str, who: str) -> str:
        """The failed-login counter of one name (``kind`` "name") or source address ("address")."""
        return f"{self.prefix}loginFailures:{kind}:{who}"

    def server_alive(self, server_id: str) -> str:
        """The heartbeat key of one server process (it expires when the process dies)."""
        return f"{self.prefix}server:{server_id}"

    def server_users(self, server_id: str) -> str:
        """The set of user ids served by one server process."""
        return f"{self.prefix}serverUsers:{server_id}"

    def server_cleanup(self, server_id: str) -> str:
        """The lease of the survivor cleaning up after a dead server process (its value: that survivor's id)."""
        return f"{self.prefix}cleanup:{server_id}"

    def health_probe(self, server_id: str) -> str:
        """The channel one server process publishes to itself to see that pub/sub works."""
        return f"{self.prefix}probe:{server_id}"

    def personal(self, user_id: str) -> str:
        """The personal channel of one user."""
        return self._personal + user_id

    # Rooms: the room scripts build these same names from the prefix (see chatroom/rooms.py).

    def room_channel(self, room_key: str) -> str:
        """The pub/sub channel of one room (``room_key``: its folded name)."""
        return f"{self.prefix}room:{room_key}"

    def room_members(self, room_key: str) -> str:
        """The set of user ids in one room."""
        return f"{self.prefix}roomMembers:{room_key}"

    def room_history(self, room_key: str) -> str:
        """The public messages kept for one room, newest first."""
        return f"{self.prefix}roomHistory:{room_key}"

    def user_rooms(self, user_id: str) -> str:
        """The set of rooms (folded names) one user is in, the lobby aside."""
        return f"{self.prefix}userRooms:{user_id}"


# --- connecting ------------------------------------------------------------------


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


class SentinelTarget(NamedTuple):
    """What a ``redis+sentinel://`` URL names: the Sentinels, the master's name, the database."""

    sentinels: list[tuple[str, int]]
    master: str
    db: int
    username: str | None
    password: str | None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """``redis+sentinel://[[user]:password@]host:port[,host:port...]/<master-name>[/db]``; ValueError if not.

    The password, if any, is the master's (Redis's ``requirepass``); the
    Sentinels themselves are asked without one.
    """
    scheme, _, rest = url.partition("://")
    if scheme != SENTINEL_SCHEME:
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL")
    credentials, at, location = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        username, password = (user or None, secret) if colon else (None, user)
    hosts, slash, path = location.partition("/")
    parts = [part for part in path.split("/") if part] if slash else []
    if not hosts or not parts or len(parts) > 2:
        raise ValueError("it must name the Sentinels and the master: host:port[,host:port...]/<master-name>[/db]")
    sentinels = []
    for address in hosts.split(","):
        host, colon, port = address.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"a Sentinel address must be host:port, not {address!r}")
        sentinels.append((host.strip("[]"), int(port)))
    if len(parts) == 2 and not parts[1].isdigit():
        raise ValueError(f"the database must be a number, not {parts[1]!r}")
    return SentinelTarget(sentinels, parts[0], int(parts[1]) if len(parts) == 2 else 0, username, password)


def check_redis_url(url: str) -> None:
    """Raise ValueError, with the URL masked, unless redis-py can use ``url``."""
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme == SENTINEL_SCHEME:
        try:
            parse_sentinel_url(url)
        except ValueError as exc:
            raise ValueError(f"not a valid Sentinel URL ({exc}): {mask_url(url)!r}") from None
        return
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            "not a Redis URL (redis://host:port/db, rediss://..., unix://..., "
            f"{SENTINEL_SCHEME}://host:port[,host:port]/master[/db]): {mask_url(url)!r}"
        )
    try:
        redis.ConnectionPool.from_url(url)
    except ValueError as exc:
        raise ValueError(f"not a valid Redis URL ({exc}): {mask_url(url)!r}") from None


def describe_redis_error(exc: redis.RedisError) -> str:
    """One line for an operator: what Redis refused, and what to do about it."""
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return f"it is a read only replica; give the master's address ({exc})"
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return f"it is out of memory (maxmemory, with a policy that evicts nothing); free some or raise it ({exc})"
    if is_max_clients(exc):
        return f"it has reached its maxclients; raise maxclients in redis.conf ({exc})"
    return str(exc)


def is_max_clients(exc: BaseException) -> bool:
    """True when Redis refused a new connection because it has ``maxclients`` already."""
    return "max number of clients reached" in str(exc)


def error_kind(exc: BaseException) -> str:
    """A short, stable name for what went wrong (a metric label, a log line's key)."""
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return "read_only"
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return "out_of_memory"
    if is_max_clients(exc):
        return "max_clients"
    if isinstance(exc, redis.TimeoutError):
        return "timeout"
    if isinstance(exc, (redis.ConnectionError, OSError)):
        return "connection"
    return "other"


def outcome_unknown(exc: redis.RedisError) -> bool:
    """True when a command may have run although it failed: sent, then no answer in time.

    A timeout while connecting is a plain failure: nothing was sent.
    """
    return isinstance(exc, redis.TimeoutError) and not str(exc).startswith("Timeout connecting")


def pool_busy(exc: redis.RedisError) -> bool:
    """True when a command never left: every command connection stayed taken for :data:`POOL_WAIT`.

    Redis may be fine, only slow to get through a crowd of commands (thousands
    of users leaving at once); nothing was sent, so trying again is safe.
    """
    return isinstance(exc, redis.ConnectionError) and str(exc) == "No connection available."


def _no_driver_info() -> dict:
    """Keyword arguments that turn CLIENT SETINFO off (redis-py >= 8 spells it ``driver_info``)."""
    connection = getattr(redis.connection, "AbstractConnection", redis.Connection)
    if "driver_info" in inspect.signature(connection.__init__).parameters:
        return {"driver_info": None}
    return {"lib_name": None, "lib_version": None}


class _CheapPoolCheck:
    """A Redis connection whose pool check costs no system call.

    redis-py's pool asks ``can_read(0)`` of every connection it hands out, to
    catch one returned with a reply unread: a ``poll()``, which releases the
    GIL and, in a busy room, waits to take it back behind every woken
    listener, on each command.  Our connections are only ever returned with
    their replies read (redis-py disconnects one whose read failed), so with
    hiredis the check looks at the parser's buffer only.
    """

    def can_read(self, timeout: float = 0) -> bool:
        reader = getattr(self._parser, "_reader", None) if _fast_paths else None
        if timeout == 0 and reader is not None:
            return bool(reader.has_data())
        return super().can_read(timeout)


class _PooledConnection(_CheapPoolCheck, redis.Connection):
    """A plain TCP connection with the cheap pool check."""


class _SentinelPooledConnection(_CheapPoolCheck, SentinelManagedConnection):
    """A connection to whichever server the Sentinels call master, with the cheap pool check."""


def connect_redis(config: Config) -> redis.Redis:
    """The shared Redis client for commands: ``config.redis_url``, or an embedded fakeredis.

    Its pool holds command connections only (see :func:`pubsub_client` for
    the subscriptions' own pool): :data:`COMMAND_CONNECTIONS`, all opened at
    once, and a command waits for a free one.  (With Sentinel the pool is
    redis-py's Sentinel pool, which opens more as needed.)  Raises SystemExit
    with one line when Redis cannot be reached.
    """
    pool_size = COMMAND_CONNECTIONS
    if not config.redis_url:
        try:
            import fakeredis
        except ImportError:
            raise SystemExit(MISSING_PACKAGES.format(name="fakeredis")) from None

        logger.warning("no Redis URL given: using an embedded in-process fakeredis (one process only)")
        # Blocking, as for a real Redis: more readers than connections wait
        # for one instead of failing with "Too many connections".
        pool = redis.BlockingConnectionPool(
            connection_class=fakeredis.FakeRedisConnection, server=fakeredis.FakeServer(),
            max_connections=pool_size, timeout=POOL_WAIT,
        )
        return redis.Redis(connection_pool=pool)
    idle, interval, count = REDIS_KEEPALIVE
    options = dict(
        max_connections=pool_size,
        socket_connect_timeout=CONNECT_TIMEOUT,
        # RESP2: redis-py 8 speaks RESP3 by default, which costs every new
        # connection (two per login) a HELLO round trip; nothing here needs RESP3.
        protocol=2,
        socket_keepalive=True,
        socket_keepalive_options={socket.TCP_KEEPIDLE: idle, socket.TCP_KEEPINTVL: interval, socket.TCP_KEEPCNT: count},
        # Each connection's read buffer is allocated (and touched) up front.
        socket_read_size=PUBSUB_READ_SIZE,
        # No CLIENT SETINFO: it costs every new connection (two per login)
        # two round trips, and redis-py looks its own version up on disk for
        # each connection while holding the pool's lock.
        **_no_driver_info(),
    )
    if config.redis_url.startswith(SENTINEL_SCHEME + "://"):
        target = parse_sentinel_url(config.redis_url)
        sentinel = Sentinel(
            target.sentinels, socket_timeout=CONNECT_TIMEOUT, socket_connect_timeout=CONNECT_TIMEOUT, protocol=2
        )
        client = sentinel.master_for(
            target.master,
            connection_class=_SentinelPooledConnection,
            db=target.db,
            username=target.username,
            password=target.password,
            **options,
        )
    else:
        pool = redis.BlockingConnectionPool.from_url(
            config.redis_url, connection_class=_PooledConnection, timeout=POOL_WAIT, **options
        )
        client = redis.Redis(connection_pool=pool)
    try:
        client.ping()
        warm_up(client, COMMAND_CONNECTIONS)
    except redis.RedisError as exc:
        if is_max_clients(exc):  # it answers, and refuses
            raise SystemExit(f"cannot use Redis at {mask_url(config.redis_url)}: {describe_redis_error(exc)}") from None
        raise SystemExit(f"cannot reach Redis at {mask_url(config.redis_url)}: {exc}") from None
    logger.info("using Redis at %s", mask_url(config.redis_url))
    return client


def warm_up(rdb: redis.Redis, count: int) -> None:
    """Open ``count`` connections of ``rdb``'s pool now and keep them there."""
    pool = rdb.connection_pool
    connections = []
    try:
        for _ in range(count):
            connections.append(pool.get_connection())
    finally:
        for connection in connections:
            pool.release(connection)


def pubsub_client(rdb: redis.Redis, max_clients: int) -> redis.Redis:
    """A client like ``rdb`` (same server, same settings) with a pool of its own, for subscriptions.

    Apart, so that a subscription's connection, which goes back to its pool
    disconnected, is never the next one handed to a command: at Redis's
    ``maxclients`` that command would have to open a connection Redis
    refuses, and users already connected could not chat.
    """
    return _twin_client(rdb, PUBSUB_PER_CLIENT * max_clients + POOL_SPARE, blocking=False)


def heartbeat_client(rdb: redis.Redis) -> redis.Redis:
    """A client like ``rdb`` with :data:`HEARTBEAT_CONNECTIONS` of its own, opened now, for the heartbeat.

    When thousands of users leave at once, each reader waits for one of the
    :data:`COMMAND_CONNECTIONS` to remove its user; a heartbeat in that queue
    waited past :data:`POOL_WAIT` and took Redis for lost (every user was told
    so, and told again it was back), and a heartbeat late past
    ``--dead-after`` would have the other processes reap this one's users.
    Opened at start, like the command connections, so that Redis's
    ``maxclients`` cannot refuse them later.
    """
    client = _twin_client(rdb, HEARTBEAT_CONNECTIONS, blocking=True)
    try:
        warm_up(client, HEARTBEAT_CONNECTIONS)
    except redis.RedisError as exc:  # opened on demand instead: the heartbeat reports what it meets
        logger.debug("heartbeat connections not opened at start: %s", exc)
    return client


def _twin_client(rdb: redis.Redis, size: int, *, blocking: bool) -> redis.Redis:
    """A client like ``rdb`` (same server, same settings) with a pool of ``size`` connections of its own.

    ``blocking``: a command waits up to :data:`POOL_WAIT` for a free
    connection rather than failing (not with Sentinel, whose pool opens more).
    """
    pool = rdb.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k != "maint_notifications_pool_handler"}
    if isinstance(pool, SentinelConnectionPool):
        kwargs.pop("connection_pool", None)
        twin = SentinelConnectionPool(
            pool.service_name, pool.sentinel_manager, connection_class=pool.connection_class,
            max_connections=size, **kwargs
        )
    elif blocking:
        twin = redis.BlockingConnectionPool(
            connection_class=pool.connection_class, max_connections=size, timeout=POOL_WAIT, **kwargs
        )
    else:
        twin = redis.ConnectionPool(connection_class=pool.connection_class, max_connections=size, **kwargs)
    return redis.Redis(connection_pool=twin)


def follow_master(rdb: redis.Redis) -> None:
    """With Sentinel: ask the Sentinels where the master is now; if it moved, close the idle connections.

    redis-py asks only when it opens a connection, and after a forced
    failover the demoted master keeps its clients (and accepts writes) until
    the Sentinels reconfigure it, which can take them tens of seconds.
    """
    pool = rdb.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        pool.get_master_address()


def forget_connections(rdb: redis.Redis) -> None:
    """Close every idle connection of ``rdb``'s pool: the next command opens one to wherever Redis is now.

    After a Sentinel failover, a connection to the demoted master would
    still take PUBLISH (replicas do), reaching only its own subscribers.
    """
    rdb.connection_pool.disconnect(inuse_connections=False)


def close_connections(rdb: redis.Redis) -> None:
    """Close every connection of ``rdb``'s pool, in use or not: the end of a client of our own."""
    rdb.connection_pool.disconnect()


def end_subscription(sub: redis.client.PubSub) -> None:
    """Wake the listener reading ``sub`` without needing any new connection to Redis.

    A real socket is shut down (the listener reads its end and stops; Redis
    frees the connection at once); fakeredis's is told to unsubscribe.
    An UNSUBSCRIBE on a broken connection would make redis-py reconnect,
    which a Redis at ``maxclients`` refuses.
    """
    connection = sub.connection
    if connection is None:
        return
    sock = getattr(connection, "_sock", None)
    if isinstance(sock, socket.socket):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return
    if sock is None or getattr(sub, "_chatroom_ended", False):
        return  # never connected, already closed, or already told
    sub._chatroom_ended = True  # a second UNSUBSCRIBE would race the listener's read in fakeredis
    try:
        sub.unsubscribe()
    except (redis.RedisError, OSError):
        pass


def current_run_id(rdb: redis.Redis) -> str | None:
    """Redis's run id (it changes when Redis restarts), or None if unreachable."""
    try:
        return str(rdb.info("server").get("run_id", ""))
    except (redis.RedisError, OSError):
        return None


# --- redis-py's internals: the listeners' fast drain ------------------------------


class RawPubSubSocket(NamedTuple):
    """What the listeners' fast drain reads a pub/sub connection with."""

    sock: socket.socket
    #: redis-py's own read buffer for the connection: nothing it had read is lost.
    buffer: bytearray
    #: The connection's hiredis reader: ``feed(buffer, 0, n)``, then ``gets()`` per reply.
    feed: Callable
    gets: Callable
    #: What ``gets()`` returns while a reply is incomplete.
    not_enough_data: object


#: False once :func:`check_internals` found redis-py's internals elsewhere than expected.
_fast_paths = True

#: The attributes of a connected redis-py connection that the fast paths read.
REQUIRED_INTERNALS = ("_sock", "_parser", "_parser._reader", "_parser._buffer")


def raw_pubsub_socket(redis_conn) -> RawPubSubSocket | None:
    """The socket, buffer and hiredis reader of a connected pub/sub connection, or None.

    None (then: redis-py's public read path) for fakeredis, redis-py's pure
    Python parser, or internals that :func:`check_internals` did not find.
    """
    if not _fast_paths:
        return None
    parser = getattr(redis_conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if type(parser).__name__ != "_HiredisParser" or reader is None:
        return None
    sock = getattr(redis_conn, "_sock", None)
    buffer = getattr(parser, "_buffer", None)
    # TLS (rediss://) decrypts in Python: recv_into with flags is not allowed on it.
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket) or not isinstance(buffer, bytearray):
        return None
    from redis._parsers.hiredis import NOT_ENOUGH_DATA

    return RawPubSubSocket(sock, buffer, reader.feed, reader.gets, NOT_ENOUGH_DATA)


def _has_path(obj, dotted: str) -> bool:
    for name in dotted.split("."):
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def check_internals(rdb: redis.Redis) -> bool:
    """Check, on one real connection, that redis-py keeps what the fast paths read.

    Where it does not (another redis-py than the pinned one), turn the fast
    paths off for the whole process, with one warning: the listeners then
    read through redis-py's public API, slower but correct.  Returns whether
    the fast paths are on.  fakeredis and the pure-Python parser need no check.
    """
    global _fast_paths
    pool = rdb.connection_pool
    if not issubclass(pool.connection_class, redis.Connection):
        return _fast_paths  # fakeredis, a unix socket, TLS: their own classes
    try:
        connection = pool.get_connection()
    except (redis.RedisError, OSError):
        return _fast_paths  # unreachable: the caller reports that
    try:
        if type(getattr(connection, "_parser", None)).__name__ != "_HiredisParser":
            return _fast_paths  # no hiredis: the generic path anyway
        missing = [path for path in REQUIRED_INTERNALS if not _has_path(connection, path)]
        try:
            from redis._parsers.hiredis import NOT_ENOUGH_DATA  # noqa: F401
        except ImportError:
            missing.append("redis._parsers.hiredis.NOT_ENOUGH_DATA")
    finally:
        pool.release(connection)
    if missing and _fast_paths:
        logger.warning(
            "redis-py %s keeps its internals elsewhere than this server expects (%s missing): "
            "pub/sub listeners use redis-py's public read path, which is slower",
            redis.__version__,
            ", ".join(missing),
        )
        _fast_paths = False
    return _fast_paths


# --- users and names: the Lua scripts beside their callers -------------------------

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


def add_user(rdb: redis.Redis, keys: Keys, server_id: str) -> str:
    """Register a new guest in one round trip; returns its id.

    The id is claimed, not assumed: if Redis lost the counter, a live user may
    hold an id until its server has registered it again, so the script takes
    the next free one.
    """
    user_id = rdb.eval(
        _ADD_USER,
        5,
        keys.next_user_id,
        keys.users_online,
        keys.users_name,
        keys.activity_ranking,
        keys.server_users(server_id),
        p.GUEST_PREFIX,
    )
    return str(user_id)


#: A rename: KEYS usersByName, usersName, the account that forbids the name
#: ("" for none); ARGV new name_key, user id, new name, old name_key ("" for
#: none).  Refuses the name if that account exists (returns -1), claims it
#: unless another user holds it (then returns 0), records it, frees the old
#: one if this user still holds it (returns 1): see Claim.
_RENAME = """
if KEYS[3] ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then
  return -1
end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 and redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if ARGV[4] ~= '' and ARGV[4] ~= ARGV[1] and redis.call('HGET', KEYS[1], ARGV[4]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[4])
end
return 1
"""


class Claim(enum.IntEnum):
    """What :func:`claim_name` found: the script's answer."""

    REGISTERED = -1  # the name is an account the user does not hold
    TAKEN = 0  # another user holds it
    CLAIMED = 1


def claim_name(rdb: redis.Redis, keys: Keys, user_id: str, name: str, release: str = "", account: str = "") -> Claim:
    """Take ``name`` for ``user_id`` and record it, unless another user holds it.

    One atomic round trip, which also frees the name with the ``name_key``
    ``release`` if this user still holds it.  ``account``: a name_key whose
    account, if it exists, refuses the claim in the same step (so a name
    registered meanwhile cannot be taken by a guest).  Guest names are never
    claimed (the id is in the name): there is nothing to release.
    """
    if p.guest_id(release) is not None:
        release = ""
    guard = keys.account(account) if account else ""
    return Claim(
        rdb.eval(_RENAME, 3, keys.users_by_name, keys.users_name, guard, p.name_key(name), user_id, name, release)
    )


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


def release_names(pipe, keys: Keys, holders: dict[str, str]) -> None:
    """Queue on ``pipe`` the freeing of each name (``name_key`` -> user id) that user still holds.

    Compare and delete: an unconditional delete could free a name another
    process gave to someone else meanwhile.  A script, so that the
    comparison and the delete are one atomic step inside the caller's round trip.
    """
    args = [value for key, user_id in holders.items() if p.guest_id(key) is None for value in (key, user_id)]
    if args:
        pipe.eval(_RELEASE_NAMES, 1, keys.users_by_name, *args)


class Departure(NamedTuple):
    """A user to remove from Redis: who, under which name, and the notices of its leaving."""

    user_id: str
    name: str
    notice: bytes | None  # published on the broadcast channel; None: leave quietly
    #: Other names (``name_key`` form) this user may hold: claims whose outcome is unknown.
    also_held: tuple[str, ...] = ()
    #: The text told to the remaining members of each of its rooms ("" for none).
    room_text: str = ""


#: Leaving rooms, as a Lua function both scripts that do it define (this
#: removal, and a part in chatroom/rooms.py).  For each room of ``user_rooms``
#: (only ``only`` when given): out of its members; a room left empty leaves
#: the ``rooms`` hash and its history expires after ``ttl`` seconds (0:
#: deleted); otherwise its remaining members are told ``text`` (unless "").
#: A room that no longer lists the user is not told again.  Key names are built
#: from ``prefix``, as Keys builds them.  Returns how many rooms it left.
LEAVE_ROOMS_LUA = """
local function leave_rooms(prefix, rooms_key, user_rooms, user_id, ttl, text, mark, only)
  local rooms = redis.call('SMEMBERS', user_rooms)
  if only then
    rooms = {}
    if redis.call('SISMEMBER', user_rooms, only) == 1 then rooms = {only} end
  end
  for _, room in ipairs(rooms) do
    local members = prefix .. 'roomMembers:' .. room
    local was_in = redis.call('SREM', members, user_id)
    redis.call('SREM', user_rooms, room)
    local display = redis.call('HGET', rooms_key, room) or room
    if redis.call('SCARD', members) == 0 then
      redis.call('HDEL', rooms_key, room)
      local history = prefix .. 'roomHistory:' .. room
      if tonumber(ttl) > 0 then redis.call('EXPIRE', history, ttl) else redis.call('DEL', history) end
    elseif was_in == 1 and text ~= '' then
      redis.call('PUBLISH', prefix .. 'room:' .. room, 'channel:' .. display .. ':' .. mark .. ':' .. text)
    end
  end
  return #rooms
end
"""

#: The removal of one user, atomically: KEYS usersOnline, usersName,
#: usersByName, activityRanking, serverUsers:<sid>, server:<sid>, rooms,
#: userRooms:<id>; ARGV user id, broadcast channel, notice ('' for none),
#: 'reap' or 'own', the key prefix, an empty room's history lifetime, the
#: rooms' notice text ('' for none), the system mark, then the name_keys to
#: free if this user still holds them.  A reaper ('reap') removes only a user
#: that the dead server's set still lists, and nothing while that server's
#: heartbeat lives (it came back: -1).  Whoever takes the user off usersOnline
#: publishes its notice, and a room that still lists it tells its members: so
#: each leave is announced once, whoever else (another survivor, a retry after
#: a timeout) runs this for the same user.  Returns 1 if this call removed the
#: user, else 0.
_REMOVE_USER = LEAVE_ROOMS_LUA + """
if ARGV[4] == 'reap' and redis.call('EXISTS', KEYS[6]) == 1 then
  return -1
end
local owned = redis.call('SREM', KEYS[5], ARGV[1])
if ARGV[4] == 'reap' and owned == 0 then
  return 0
end
local online = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
for i = 9, #ARGV do
  if redis.call('HGET', KEYS[3], ARGV[i]) == ARGV[1] then
    redis.call('HDEL', KEYS[3], ARGV[i])
  end
end
if online == 1 and ARGV[3] ~= '' then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
leave_rooms(ARGV[5], KEYS[7], KEYS[8], ARGV[1], ARGV[6], ARGV[7], ARGV[8], nil)
return online
"""


def queue_removals(
    pipe, keys: Keys, server_id: str, departures: Iterable[Departure], *, reaping: bool = False,
    room_history_ttl: float = 0,
) -> int:
    """Queue on ``pipe`` the atomic removal of each user (presence, names, ranking, rooms, its server's set).

    The one way users leave Redis: a local user leaving, shutdown, a dead or
    previous process's users.  Each removal is one script run (see
    ``_REMOVE_USER``), so a caller that dies or times out midway can simply
    be followed by another: nobody is announced twice, nobody is forgotten.
    ``reaping``: the users belong to another (dead) process, and only those
    its set still lists are removed.  ``room_history_ttl``: how long the
    history of a room this leaves empty is kept.  Returns how many were queued.
    """
    queued = 0
    mode = "reap" if reaping else "own"
    for departure in departures:
        names = {key for key in (p.name_key(departure.name), *departure.also_held) if key and p.guest_id(key) is None}
        pipe.eval(
            _REMOVE_USER,
            8,
            keys.users_online,
            keys.users_name,
            keys.users_by_name,
            keys.activity_ranking,
            keys.server_users(server_id),
            keys.server_alive(server_id),
            keys.rooms,
            keys.user_rooms(departure.user_id),
            departure.user_id,
            keys.broadcast,
            departure.notice or b"",
            mode,
            keys.prefix,
            int(room_history_ttl),
            departure.room_text,
            p.SYSTEM,
            *sorted(names),
        )
        queued += 1
    return queued


# --- the reader's writes -------------------------------------------------------------


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
        """Forget everything queued.

        redis-py resets its pipeline itself only once it has a connection: a
        failure to connect left the commands queued, to be sent with the next
        message.
        """
        self.pipe.reset()
        self.messages = 0
        self.confirmations.clear()

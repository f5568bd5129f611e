"""Several server processes on one Redis: membership, reaping the dead, and Redis health.

Per process, Redis holds ``servers`` (the set of process ids), ``server:<id>``
(a heartbeat that expires after ``--dead-after``) and ``serverUsers:<id>`` (the
users connected to it).  :class:`Membership` keeps this process's entries
alive, removes the users of processes whose heartbeat expired (exactly one
survivor does it: the SREM that takes a dead process off ``servers`` decides
which), and makes Redis agree with this process's sockets after Redis lost
or doubted them.  :class:`RedisHealth` is the one place that knows whether
Redis is reachable: it tells users once that it was lost and once that it is
back, and logs an outage once instead of once per retry.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable

import redis

import protocol as p
from chatroom import redisdb, rooms
from chatroom.connection import Connection, State, system_payload
from chatroom.redisdb import Departure, Keys

logger = logging.getLogger("chatroom.server")

#: Seconds between heartbeats while Redis is away: users are told it is back from there.
OUTAGE_RETRY = 0.2


class RedisHealth:
    """Whether Redis is reachable, and the notices that say so to every local user.

    Notices go through one thread of their own, in order: a user whose
    socket is full must not hold up the heartbeat.  ``local_connections``
    gives the connections to tell.
    """

    def __init__(self, rdb: redis.Redis, local_connections: Callable[[], list[Connection]]) -> None:
        self.rdb = rdb
        self.local_connections = local_connections
        #: The run id Redis had at the last heartbeat (the listeners' reference).
        self.run_id: str | None = None
        self.down = False
        self._down_since = 0.0
        #: When Redis began refusing writes (out of memory, read-only), or None.
        self._refusing_since: float | None = None
        self._resubscribing = 0  # listeners waiting for Redis to come back
        self._lock = threading.Lock()
        #: Set after any trouble: the next heartbeat makes Redis agree with our sockets.
        self.reconcile_needed = threading.Event()
        #: Wakes the heartbeat early (an outage, a listener back, shutdown).
        self.wake = threading.Event()
        self._notices: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._notifier: threading.Thread | None = None

    def current_run_id(self) -> str | None:
        """Redis's run id now (it changes when Redis restarts), or None if unreachable."""
        return redisdb.current_run_id(self.rdb)

    @contextlib.contextmanager
    def resubscribing(self):
        """Held by a listener while it waits for Redis to come back; "back" is said after the last one."""
        with self._lock:
            self._resubscribing += 1
        self.note_down()
        try:
            yield
        finally:
            with self._lock:
                self._resubscribing -= 1
            self.wake.set()

    @property
    def listeners_back(self) -> bool:
        """True when no listener is still waiting to subscribe again."""
        with self._lock:
            return self._resubscribing == 0

    def note_down(self) -> None:
        """Tell every local user, once, that Redis is unreachable."""
        self.reconcile_needed.set()  # even if already down: a reconcile may have been cut short
        with self._lock:
            if self.down:
                return
            self.down = True
            self._down_since = time.monotonic()
        logger.error("lost the connection to Redis")
        self._notices.put("redis_lost")
        self.wake.set()

    def note_up(self) -> None:
        """Tell every local user, once, that Redis is back (registered, listeners subscribed)."""
        with self._lock:
            if not self.down:
                return
            self.down = False
            outage = time.monotonic() - self._down_since
        logger.warning("Redis is reachable again, after %.1f s", outage)
        self._notices.put("redis_back")

    def note_refusing(self, exc: redis.ResponseError) -> None:
        """Log once that Redis refuses writes (out of memory, read-only), until it accepts them again.

        Users are not told the connection is lost, since it is not: each one
        whose message Redis refuses is told so.
        """
        if self._refusing_since is None:
            logger.error("Redis refuses writes: %s", exc)
            self._refusing_since = time.monotonic()

    def note_accepting(self) -> None:
        """Log once that Redis accepts writes again after refusing them."""
        if self._refusing_since is not None:
            logger.warning("Redis accepts writes again, after %.1f s", time.monotonic() - self._refusing_since)
            self._refusing_since = None

    def start_notifier(self) -> None:
        """Start the thread that sends the notices."""
        self._notifier = threading.Thread(target=self._notify_loop, name="notifier", daemon=True)
        self._notifier.start()

    def stop_notifier(self, timeout: float) -> None:
        """Stop the notifier thread after the notices already queued."""
        self._notices.put(None)
        if self._notifier is not None:
            self._notifier.join(timeout)

    def _notify_loop(self) -> None:
        while (key := self._notices.get()) is not None:
            for conn in self.local_connections():
                conn.send_payload(system_payload(p.INDIVIDUAL, conn.name, conn.text(key)))


class Membership:
    """This process among the servers sharing one Redis.

    Handed what it needs: the client, key names, settings, the Redis health,
    the local users and the server's stop event.  ``server_id`` is set by the
    server once it knows its port.
    """

    def __init__(
        self,
        rdb: redis.Redis,
        keys: Keys,
        config,
        health: RedisHealth,
        local_users: Callable[[], list[Connection]],
        stopping: threading.Event,
    ) -> None:
        self.rdb = rdb
        self.keys = keys
        self.config = config
        self.health = health
        self.local_users = local_users
        self.stopping = stopping
        self.server_id = config.server_id or ""
        self._thread: threading.Thread | None = None

    def left_notice(self, name: str) -> bytes:
        """The broadcast payload that says ``name`` left, in the server's language."""
        return system_payload(p.CHANNEL, p.BROADCAST, p.text(self.config.lang, "left", name=name))

    def join(self) -> None:
        """Join the servers on this Redis, after cleaning up our own previous run (Go: ``init``)."""
        self.health.run_id = self.health.current_run_id()
        # Claimed like a dead server's, so a survivor reaping it meanwhile and
        # this process never both announce the same users.
        if self.rdb.srem(self.keys.servers, self.server_id):
            self.cleanup_server(self.server_id)
        self.heartbeat()

    def start(self) -> None:
        """Start the heartbeat thread."""
        self._thread = threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Wake the heartbeat thread (the stop event is set) and wait for it."""
        self.health.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def heartbeat_loop(self) -> None:
        """Every dead_after / 3 seconds: heartbeat, reconcile after trouble, reap the dead."""
        interval = self.config.dead_after / 3
        health = self.health
        while not self.stopping.is_set():
            # While Redis is down, retry often: the users are told it is back from here.
            health.wake.wait(OUTAGE_RETRY if health.down else interval)
            health.wake.clear()
            if self.stopping.is_set():
                break
            try:
                self.heartbeat()
                self.reap_dead_servers()
            except redis.ResponseError as exc:
                # Redis answers, but refuses (out of memory, read-only): the
                # connection is not lost, and users who send are told per message.
                health.note_refusing(exc)
            except (redis.RedisError, OSError) as exc:
                # Said once by note_down; every retry after that is detail.
                logger.debug("heartbeat failed: %s", exc)
                health.note_down()
            else:
                health.note_accepting()

    def heartbeat(self) -> None:
        """Say this process is alive; re-register its users if Redis lost them."""
        keys = self.keys
        health = self.health
        expiry = int(self.config.dead_after * 1000)
        pipe = self.rdb.pipeline()
        pipe.set(keys.server_alive(self.server_id), "alive", px=expiry)
        pipe.sadd(keys.servers, self.server_id)
        try:
            _, added = pipe.execute()
        except redis.ResponseError:
            # Out of memory refuses SET and SADD, not PEXPIRE: keep the
            # heartbeat alive, or the other processes would reap our users.
            self.rdb.pexpire(keys.server_alive(self.server_id), expiry)
            raise
        # A missing registration (Redis restarted without its data, or we were
        # taken for dead) or a past outage: make Redis agree with our sockets.
        if (added and health.run_id is not None) or health.reconcile_needed.is_set():
            self.reconcile()
            health.reconcile_needed.clear()  # only now: a failed reconcile is tried again
        health.run_id = health.current_run_id()
        if health.listeners_back:
            health.note_up()

    def reconcile(self) -> None:
        """Register every local user Redis does not know, remove every one it wrongly keeps."""
        keys = self.keys
        registered = {uid.decode() for uid in self.rdb.smembers(keys.server_users(self.server_id))}
        local = {conn.id: conn for conn in self.local_users() if conn.in_redis}
        for user_id in registered - local.keys():
            self.remove_user_record(user_id, self.server_id)
        top = int(self.rdb.get(keys.next_user_id) or 0)
        highest = max((int(uid) for uid in local), default=0)
        if top < highest:  # Redis lost the counter: never hand out a live id again
            self.rdb.incrby(keys.next_user_id, highest - top)
        for conn in local.values():
            with conn.state_lock:
                if conn.in_redis:
                    self._register_again(conn, conn.id in registered)
        logger.info("reconciled %d local users with Redis", len(local))

    def _register_again(self, conn: Connection, still_registered: bool) -> None:
        """Put one local user back into Redis after Redis lost or doubted it."""
        keys = self.keys
        if not self.rdb.hsetnx(keys.users_online, conn.id, "online") and not still_registered:
            # Redis lost its data and another process gave this id to a newcomer
            # before we registered ours again: ours must go, quietly.
            logger.error("%r: id taken by another user while Redis forgot it; disconnecting", conn)
            conn.advance(State.GONE)
            conn.send_payload(system_payload(p.INDIVIDUAL, conn.name, conn.text("bus_lost")))
            conn.shutdown_socket()
            return
        if p.guest_id(conn.name) is None and not redisdb.claim_name(self.rdb, keys, conn.id, conn.name):
            # Someone took the name while Redis forgot ours: back to a guest
            # name, which the client learns as after a rename.
            conn.name = p.guest_name(conn.id)
            conn.name_key = p.name_key(conn.name)
            conn.reply(p.join_message(p.INDIVIDUAL, conn.name, p.CHANGE_NAME_OK, conn.name))
        pipe = self.rdb.pipeline()
        pipe.hset(keys.users_name, conn.id, conn.name)
        pipe.zadd(keys.activity_ranking, {conn.id: conn.activity}, gt=True)
        pipe.sadd(keys.server_users(self.server_id), conn.id)
        rooms.queue_register_again(pipe, keys, conn)
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
        name = self.rdb.hget(self.keys.users_name, user_id)
        name = name.decode() if name is not None else None
        pipe = self.rdb.pipeline()
        departure = Departure(user_id, name or "", self.left_notice(name) if name is not None else None)
        redisdb.queue_removal(pipe, self.keys, server_id, [departure])
        config = self.config
        rooms.queue_leave_all(pipe, self.keys, user_id, name or user_id, config.lang, int(config.room_history_ttl))
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

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
#: The same kind of Redis failure is logged at most once in this many seconds
#: (with how many were left out), however many users meet it.
ERROR_LOG_INTERVAL = 60.0


class RedisHealth:
    """Whether Redis is reachable, and the notices that say so to every local user.

    Notices go through one thread of their own, in order: a user whose
    socket is full must not hold up the heartbeat.  ``local_connections``
    gives the connections to tell.
    """

    def __init__(self, rdb: redis.Redis, local_connections: Callable[[], list[Connection]], metrics=None) -> None:
        self.rdb = rdb
        self.local_connections = local_connections
        #: Where failures are counted (chatroom.metrics; its NO_METRICS when off).
        self.metrics = metrics
        self._logged: dict[str, tuple[float, int]] = {}  # kind -> (when last logged, left out since)
        #: Called with the new run id when the heartbeat finds another Redis
        #: (a failover, a restart): the server moves its subscriptions there.
        self.on_new_redis: Callable[[str], None] | None = None
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

    def report(self, exc: BaseException, context: str) -> None:
        """A Redis command failed for one user (``context`` says whose and what): count it, log it once.

        The affected user is answered by the caller.  A refusal (out of
        memory, read-only) is said once until Redis accepts writes again; an
        outage is said by the heartbeat; any other kind at most once per
        :data:`ERROR_LOG_INTERVAL`.  A timeout leaves Redis's state unknown
        (the command may still run), so the next heartbeat reconciles.
        """
        kind = redisdb.error_kind(exc)
        if self.metrics is not None:
            self.metrics.redis_error(kind)
        if kind == "timeout":
            self.reconcile_needed.set()
        if kind in ("read_only", "out_of_memory") and isinstance(exc, redis.ResponseError):
            self.note_refusing(exc)
            return
        if kind in ("connection", "timeout") and self.down:
            logger.debug("%s: %s", context, exc)
            return
        now = time.monotonic()
        with self._lock:
            last, left_out = self._logged.get(kind, (None, 0))
            if last is not None and now - last < ERROR_LOG_INTERVAL:
                self._logged[kind] = (last, left_out + 1)
                return
            self._logged[kind] = (now, 0)
        more = f" ({left_out} more like it in the last {now - last:.0f} s)" if left_out else ""
        logger.error("%s: Redis error: %s%s", context, exc, more)

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
        """True when no listener is waiting to subscribe again, nor still subscribed on a Redis we left.

        After a failover :meth:`~chatroom.listener.ListenerEngine.follow` cuts
        every subscription made on the old master, and each listener notices
        its cut in its own time: one that has not yet is not back either, or
        "back" would be said between a user's two listeners, and "lost"
        again after it (test_sentinel, under load).
        """
        with self._lock:
            if self._resubscribing:
                return False
        run_id = self.run_id
        return not any(
            under is not None and under != run_id
            for conn in self.local_connections()
            if conn.alive
            for under in conn.subscribed_under
        )

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


#: The lease on a dead server's cleanup: taken with SET NX, renewed while the
#: work goes on, released when done.  A survivor that dies while cleaning
#: stops renewing it, and once it expires another survivor takes the work over.
_FINISH_CLEANUP = """
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('SCARD', KEYS[3]) > 0 then
  return 0
end
redis.call('SREM', KEYS[1], ARGV[1])
if redis.call('GET', KEYS[4]) == ARGV[2] then
  redis.call('DEL', KEYS[4])
end
return 1
"""

#: Users removed per round trip while cleaning up after a process (our own
#: previous run, or shutdown without a rate).
CLEANUP_CHUNK = 200


class Membership:
    """This process among the servers sharing one Redis.

    Handed what it needs: the client (with connections of its own, see
    :func:`~chatroom.redisdb.heartbeat_client`), key names, settings, the Redis health,
    the local users and the server's stop event.  ``server_id`` is set by the
    server once it knows its port.

    A dead process stays in ``servers`` until its last user is removed: its
    id is the work list.  A survivor holds a lease (``cleanup:<id>``, expiring
    after ``--dead-after``) while it removes the users one atomic script each
    (:func:`~chatroom.redisdb.queue_removals`); if it dies midway, another
    survivor takes the lease over once it expires and finishes the job, and
    no user is announced twice.
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
        self._reaper: threading.Thread | None = None
        self._next_beat = 0.0

    def left_notice(self, name: str) -> bytes:
        """The broadcast payload that says ``name`` left, in the server's language."""
        return system_payload(p.CHANNEL, p.BROADCAST, p.text(self.config.lang, "left", name=name))

    def join(self) -> None:
        """Join the servers on this Redis, after cleaning up our own previous run (Go: ``init``)."""
        self.health.run_id = self.health.current_run_id()
        # Before the first heartbeat: a survivor reaping our previous run
        # meanwhile removes only users our set lists while no heartbeat of
        # ours lives, and the removal script announces each user once.
        self.cleanup_server(self.server_id, reaping=False)
        self.heartbeat()

    def start(self) -> None:
        """Start the heartbeat thread."""
        self._thread = threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Wake the heartbeat thread (the stop event is set) and wait for it and the reaper."""
        self.health.wake.set()
        deadline = time.monotonic() + timeout
        for thread in (self._thread, self._reaper):
            if thread is not None and thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))

    def heartbeat_loop(self) -> None:
        """Every dead_after / 3 seconds: heartbeat, reconcile after trouble, reap the dead.

        On a fixed rhythm (each beat is due one interval after the last one
        was due, however long it took), so a slow Redis does not stretch it.
        """
        interval = self.config.dead_after / 3
        health = self.health
        self._next_beat = time.monotonic() + interval
        while not self.stopping.is_set():
            # While Redis is down, retry often: the users are told it is back from here.
            period = OUTAGE_RETRY if health.down else interval
            health.wake.wait(max(0.0, min(self._next_beat, time.monotonic() + period) - time.monotonic()))
            health.wake.clear()
            if self.stopping.is_set():
                break
            now = time.monotonic()
            self._next_beat = max(self._next_beat + period, now) if now >= self._next_beat else self._next_beat
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
        """Say this process is alive; re-register its users if Redis lost or doubted them."""
        keys = self.keys
        health = self.health
        expiry = int(self.config.dead_after * 1000)
        for client in (self.rdb, health.rdb):  # its own connections, and the users'
            redisdb.follow_master(client)
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
        run_id = redisdb.current_run_id(self.rdb)  # not behind the users' commands
        # A missing registration (Redis restarted without its data, or we were
        # taken for dead), another Redis (a Sentinel failover, a restart), or
        # a past outage or timeout: make Redis agree with our sockets.
        changed = run_id is not None and health.run_id is not None and run_id != health.run_id
        if changed:
            logger.warning("Redis changed (run id %s, was %s): following it", run_id, health.run_id)
            for client in (self.rdb, health.rdb):  # none of them may still talk to the old one
                redisdb.forget_connections(client)
            if health.on_new_redis is not None:
                health.on_new_redis(run_id)
        if (added and health.run_id is not None) or changed or health.reconcile_needed.is_set():
            health.reconcile_needed.clear()  # before: trouble during the reconcile asks for another
            try:
                self.reconcile()
            except BaseException:
                health.reconcile_needed.set()
                raise
        if run_id is not None:
            health.run_id = run_id
        if health.down and health.listeners_back:
            health.note_up()

    def reconcile(self) -> None:
        """Register every local user Redis does not know, remove every one it wrongly keeps."""
        keys = self.keys
        # The local users before Redis's list, and again after: a user who
        # registered in between is in the list without being a ghost (nor
        # must it be taken for an id given to someone else).
        local = {conn.id: conn for conn in self.local_users() if conn.in_redis}
        registered = {uid.decode() for uid in self.rdb.smembers(keys.server_users(self.server_id))}
        # A newcomer's id can be in Redis before its answer is read here: taken
        # for a ghost, it was removed while it logged in (under load:
        # test_faults' frozen Redis, once).  Asked before the ids are listed,
        # since a user stops registering only once its id is set.
        registering = any(conn.registering for conn in self.local_users())
        ghosts = registered - local.keys() - {conn.id for conn in self.local_users() if conn.id}
        if ghosts and registering:  # the next reconcile decides
            ghosts = set()
            self.health.reconcile_needed.set()
        if ghosts:
            self._remove_records(sorted(ghosts), self.server_id, reaping=False)  # announced, as they left
        top = int(self.rdb.get(keys.next_user_id) or 0)
        highest = max((int(uid) for uid in local), default=0)
        if top < highest:  # Redis lost the counter: never hand out a live id again
            self.rdb.incrby(keys.next_user_id, highest - top)
        for conn in local.values():
            with conn.state_lock:
                if conn.in_redis:
                    self._register_again(conn, conn.id in registered)
        logger.info("reconciled %d local users with Redis (%d stale records removed)", len(local), len(ghosts))

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
        if p.guest_id(conn.name) is None and redisdb.claim_name(self.rdb, keys, conn.id, conn.name) is not redisdb.Claim.CLAIMED:
            # Someone took the name while Redis forgot ours: back to a guest
            # name, which the client learns as after a rename.
            conn.name = p.guest_name(conn.id)
            conn.name_key = p.name_key(conn.name)
            conn.reply(p.join_message(p.INDIVIDUAL, conn.name, p.CHANGE_NAME_OK, conn.name))
        # Claims whose answer never came (a timeout) may have been made: free
        # each one this user holds and does not go by.
        stray = {key: conn.id for key in conn.uncertain_names if key != conn.name_key}
        pipe = self.rdb.pipeline()
        pipe.hset(keys.users_name, conn.id, conn.name)
        pipe.zadd(keys.activity_ranking, {conn.id: conn.activity}, gt=True)
        pipe.sadd(keys.server_users(self.server_id), conn.id)
        rooms.queue_register_again(pipe, keys, conn)
        if stray:
            redisdb.release_names(pipe, keys, stray)
        pipe.execute()
        conn.uncertain_names.clear()

    def reap_dead_servers(self) -> None:
        """Start removing the users of every server process whose heartbeat expired.

        In a thread of its own, so that our heartbeat keeps its rhythm
        however long the cleanup takes; one cleanup at a time.
        """
        if self._reaper is not None and self._reaper.is_alive():
            return
        keys = self.keys
        others = [sid.decode() for sid in self.rdb.smembers(keys.servers) if sid.decode() != self.server_id]
        if not others:
            return
        pipe = self.rdb.pipeline(transaction=False)
        for server_id in others:
            pipe.exists(keys.server_alive(server_id))
            pipe.exists(keys.server_cleanup(server_id))
        answers = pipe.execute()
        dead = [sid for sid, alive, leased in zip(others, answers[::2], answers[1::2]) if not alive and not leased]
        if dead:
            self._reaper = threading.Thread(target=self._reap, args=(dead,), name="reaper", daemon=True)
            self._reaper.start()

    def _reap(self, dead: list[str]) -> None:
        for server_id in dead:
            if self.stopping.is_set():
                return
            try:
                if self._take_lease(server_id):
                    logger.warning("server %s is dead: removing its users", server_id)
                    self.cleanup_server(server_id, reaping=True)
            except (redis.RedisError, OSError) as exc:
                # The lease expires and the next heartbeat (ours or another
                # survivor's) takes the work up where it stopped.
                logger.warning("cleanup of server %s interrupted: %s", server_id, exc)
                return

    def _take_lease(self, server_id: str) -> bool:
        """Take the cleanup of a dead server unless another survivor holds it; True: ours."""
        keys = self.keys
        expiry = int(self.config.dead_after * 1000)
        if not self.rdb.set(keys.server_cleanup(server_id), self.server_id, nx=True, px=expiry):
            return False
        if self.rdb.exists(keys.server_alive(server_id)):  # it came back meanwhile
            self.rdb.delete(keys.server_cleanup(server_id))
            return False
        return True

    def cleanup_server(self, server_id: str, *, reaping: bool) -> None:
        """Remove and announce every user a (dead or previous) process left behind.

        ``reaping``: another process's users, under our lease, at
        ``--reap-rate`` users a second; the work ends by taking its id off
        ``servers``.  Otherwise our own previous run's, at once.
        """
        keys = self.keys
        rate = self.config.reap_rate if reaping else 0
        chunk = max(1, int(rate / 10)) if rate else CLEANUP_CHUNK
        expiry = int(self.config.dead_after * 1000)
        removed = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            ids = [uid.decode() for uid in self.rdb.srandmember(keys.server_users(server_id), chunk)]
            if not ids:
                break
            results = self._remove_records(ids, server_id, reaping=reaping)
            removed += results.count(1)
            if -1 in results:
                logger.warning("server %s is alive again: its cleanup stops", server_id)
                return
            if reaping:
                self.rdb.set(keys.server_cleanup(server_id), self.server_id, xx=True, px=expiry)
            if rate:
                time.sleep(max(0.0, len(ids) / rate - (time.monotonic() - started)))
        if self.stopping.is_set():
            return  # the rest is the next survivor's (its lease expires)
        if reaping:
            self.rdb.eval(
                _FINISH_CLEANUP, 4, keys.servers, keys.server_alive(server_id), keys.server_users(server_id),
                keys.server_cleanup(server_id), server_id, self.server_id,
            )
        if removed:
            logger.info("removed %d users of server %s", removed, server_id)

    def _remove_records(self, user_ids: list[str], server_id: str, *, reaping: bool) -> list[int]:
        """Forget users that are not connected here, announcing each that was still online.

        One answer per user: 1 removed (and announced) by this call, 0 gone
        already, -1 refused (its server is alive again).
        """
        names = [name.decode() if name else None for name in self.rdb.hmget(self.keys.users_name, user_ids)]
        lang = self.config.lang
        departures = [
            Departure(
                uid, name or "", self.left_notice(name) if name else None, (),
                p.text(lang, "room_left", name=name or p.guest_name(uid)),
            )
            for uid, name in zip(user_ids, names)
        ]
        pipe = self.rdb.pipeline(transaction=False)
        redisdb.queue_removals(
            pipe, self.keys, server_id, departures, reaping=reaping, room_history_ttl=self.config.room_history_ttl
        )
        return [int(result) for result in pipe.execute()]

    def unregister(self) -> None:
        """Leave the servers on this Redis (graceful shutdown).

        The heartbeat goes at once; the id leaves ``servers`` only if none of
        our users is left in Redis.  Otherwise (a stop cut short) the
        survivors clean up the rest as after a crash, starting with their
        next heartbeat.
        """
        keys = self.keys
        try:
            self.rdb.delete(keys.server_alive(self.server_id))
            self.rdb.eval(
                _FINISH_CLEANUP, 4, keys.servers, keys.server_alive(self.server_id),
                keys.server_users(self.server_id), keys.server_cleanup(self.server_id), self.server_id, self.server_id,
            )
        except (redis.RedisError, OSError) as exc:
            logger.warning("could not unregister from Redis: %s", exc)
        finally:
            redisdb.close_connections(self.rdb)  # its own (heartbeat_client): nothing uses them after

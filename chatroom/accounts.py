"""Registered nicknames: accounts, their argon2id passwords, throttled logins, taking a name back.

An account is a name with a password.  Once registered, the name is taken
only by logging in: a first nickname or a rename to it is refused (see
:meth:`Accounts.guarded_account`).  The commands, answered ``<mark>1`` or
``<mark>0:<reason>`` (:mod:`protocol`)::

    individual:<me>:register:<password>       registers the name held now   -> register1:<me>
    individual::login:<name>:<password>        -> changeNameFirst1:<name>, as a first nickname
    individual:<me>:password:<old>:<new>       -> password1:<account>
    individual:<me>:unregister:<password>      -> unregister1:<account>

A connection that registered or logged in holds that account until it
leaves, whatever it is called meanwhile: it may take the name back without
a password, and an operator stays one (:attr:`Connection.account`).

Redis (under the key prefix, shared by every process)::

    account:<name_key>   hash   name (as registered), hash (argon2id, encoded), oper ("1"), created
    accounts             set    the name_keys of every account (the admin command line lists them)
    loginFailures:name:<name_key>, loginFailures:address:<ip>
                         string failed logins, expiring FAILED_LOGIN_WINDOW after the first

Passwords are hashed by :class:`PasswordHasher` on a few worker threads, and
are never stored, logged or shown: :func:`protocol.redacted` hides them in
every log line, and :class:`protocol.Message` in its repr.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import queue
import threading
import time
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING

import argon2
import redis

import protocol as p
from chatroom.connection import Connection
from chatroom.redisdb import Keys

if TYPE_CHECKING:
    from chatroom.config import Config
    from chatroom.control import ControlChannel
    from chatroom.moderation import Sanctions

logger = logging.getLogger("chatroom.server")

# argon2id parameters: OWASP's recommended minimum (Password Storage Cheat
# Sheet): 19 MiB of memory, 2 passes, 1 lane.  Memory-hard enough that a GPU
# farm gains little over a CPU; measured here at about 21 ms of one core per
# hash, so 20 logins a second cost 0.4 of a core, off the chat's CPU (see
# PasswordHasher).  RFC 9106's first choice (2 GiB) or argon2-cffi's default
# (64 MiB, 3 passes, 4 lanes: 150 ms here) would make a login storm a denial
# of service on a two-core host.  Hashes record their parameters: raising
# these later rehashes each account at its next login.
HASH_TIME_COST = 2
HASH_MEMORY_KIB = 19 * 1024
HASH_PARALLELISM = 1

#: Hashes computed at once.  Each holds HASH_MEMORY_KIB while it runs, so
#: this bounds the memory (and CPU) a flood of logins can take.
HASH_WORKERS = 2
#: Hashes waiting for a worker; past this a login is refused (try again),
#: rather than queued for seconds.
HASH_QUEUE_LIMIT = 64

#: Failed logins allowed per name and per source address within the window;
#: past that a login is refused without computing any hash.
FAILED_LOGINS_ALLOWED = 5
FAILED_LOGIN_WINDOW = 600


class HashingBusy(Exception):
    """More logins are waiting for a hash than :data:`HASH_QUEUE_LIMIT`."""


class PasswordHasher:
    """argon2id (argon2-cffi) on :data:`HASH_WORKERS` threads of their own.

    argon2-cffi's C code releases the GIL, so a hash never holds up the
    chat's threads; the pool bounds how many run at once.  Each worker moves
    itself off the CPU the chat process is pinned to (``spare_cpus``), so
    hashing competes with Redis and the clients, not with the room.  The
    caller (a connection's reader) waits for its own result.
    """

    def __init__(self, workers: int = HASH_WORKERS, queue_limit: int = HASH_QUEUE_LIMIT,
                 spare_cpus: set[int] | None = None) -> None:
        self._argon2 = argon2.PasswordHasher(
            time_cost=HASH_TIME_COST, memory_cost=HASH_MEMORY_KIB, parallelism=HASH_PARALLELISM,
            type=argon2.Type.ID,
        )
        self._jobs: queue.Queue = queue.Queue(maxsize=queue_limit)
        self._workers = workers
        self._spare_cpus = spare_cpus
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start the worker threads."""
        for number in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"password-hasher-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float) -> None:
        """Let the workers finish what they have, then end them."""
        for _ in self._threads:
            self._jobs.put(None)  # past any limit: a blocking put
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    def _work(self) -> None:
        if self._spare_cpus:
            try:
                os.sched_setaffinity(0, self._spare_cpus)  # 0: this thread only, on Linux
            except (AttributeError, OSError) as exc:
                logger.debug("password hasher stays on the chat's CPU: %s", exc)
        while (job := self._jobs.get()) is not None:
            function, args, done, result = job
            try:
                result.append(function(*args))
            except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
                result.append(exc)
            done.set()

    def _run(self, function, *args):
        done, result = threading.Event(), []
        try:
            self._jobs.put_nowait((function, args, done, result))
        except queue.Full:
            raise HashingBusy from None
        done.wait()
        if isinstance(result[0], Exception):
            raise result[0]
        return result[0]

    def hash(self, password: str) -> str:
        """The encoded argon2id hash of ``password``, with a new salt; raises :class:`HashingBusy`."""
        return self._run(self._argon2.hash, password)

    def verify(self, encoded: str, password: str) -> bool:
        """Whether ``password`` matches ``encoded``; raises :class:`HashingBusy`."""
        return self._run(self._verify, encoded, password)

    def _verify(self, encoded: str, password: str) -> bool:
        try:
            return self._argon2.verify(encoded, password)
        except argon2.exceptions.VerifyMismatchError:
            return False
        except argon2.exceptions.InvalidHashError:
            logger.error("an account's stored hash is not an argon2 hash")
            return False

    def needs_rehash(self, encoded: str) -> bool:
        """Whether ``encoded`` was made with other parameters than today's."""
        try:
            return self._argon2.check_needs_rehash(encoded)
        except argon2.exceptions.InvalidHashError:
            return True


def normal_password(password: str) -> str:
    """The form a password is hashed in: NFC (RFC 8265), so one typed on another keyboard still matches."""
    return unicodedata.normalize("NFC", password)


def is_loopback(address: str) -> bool:
    """Whether a peer address is this host (127.0.0.0/8, ::1, or either mapped into IPv6)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def minutes_left(milliseconds: int) -> int:
    """Whole minutes, rounded up, for "try again in N min" (at least 1)."""
    return max(1, math.ceil(milliseconds / 60000))


# --- Redis: the scripts beside their callers -----------------------------------------

#: KEYS account:<key>, accounts, usersByName; ARGV name, hash, created, name_key, user id.
#: 0: registered already; -1: the user no longer holds the name; 1: registered.
_REGISTER = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('HGET', KEYS[3], ARGV[4]) ~= ARGV[5] then return -1 end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'hash', ARGV[2], 'created', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[4])
return 1
"""

#: KEYS account:<key>; ARGV the hash verified, the new hash.  Compare and set:
#: a change made meanwhile (on another process) is not overwritten.
_SET_HASH = """
if redis.call('HGET', KEYS[1], 'hash') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'hash', ARGV[2])
return 1
"""

#: KEYS usersByName; ARGV name_key, user id.  Gives the name to this user;
#: returns the id of the user who held it, if another did.
_TAKE_OVER = """
local holder = redis.call('HGET', KEYS[1], ARGV[1])
if holder and holder ~= ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return holder
end
return false
"""

#: KEYS the counters to count a failure on; ARGV the window in seconds.
_COUNT_FAILURE = """
for _, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then redis.call('EXPIRE', key, ARGV[1]) end
end
return 1
"""


def account_record(rdb: redis.Redis, keys: Keys, name_key: str) -> dict[str, str] | None:
    """An account's fields (name, hash, oper, created), or None if there is none."""
    fields = rdb.hgetall(keys.account(name_key))
    return {k.decode(): v.decode() for k, v in fields.items()} if fields else None


def list_accounts(rdb: redis.Redis, keys: Keys) -> list[dict[str, str]]:
    """Every account, sorted by name, without its hash."""
    found = []
    for name_key in sorted(key.decode() for key in rdb.smembers(keys.accounts)):
        record = account_record(rdb, keys, name_key)
        if record is None:
            rdb.srem(keys.accounts, name_key)  # removed by hand: tidy the index
            continue
        record.pop("hash", None)
        found.append(record)
    return found


def set_operator(rdb: redis.Redis, keys: Keys, name: str, operator: bool) -> bool:
    """Grant (or revoke) the operator flag of the account ``name``; False if there is no such account."""
    account = keys.account(p.name_key(name))
    if not rdb.exists(account):
        return False
    if operator:
        rdb.hset(account, "oper", "1")
    else:
        rdb.hdel(account, "oper")
    return True


def remove_account(rdb: redis.Redis, keys: Keys, name: str) -> bool:
    """Delete the account ``name``; False if there was none.  Its holders keep their names, unregistered."""
    name_key = p.name_key(name)
    pipe = rdb.pipeline()
    pipe.delete(keys.account(name_key))
    pipe.srem(keys.accounts, name_key)
    removed, _ = pipe.execute()
    return bool(removed)


# --- the commands -----------------------------------------------------------------------


class Accounts:
    """The account commands of chat users, and the name rules accounts add.

    Handed what it needs: the Redis client and key names, the settings, the
    control channel (to rename a user another process holds), the local
    connections, the bans (a banned name cannot be logged into) and a
    callable giving the TLS port (named in the clear-text refusal).
    """

    def __init__(
        self,
        rdb: redis.Redis,
        keys: Keys,
        config: Config,
        control: ControlChannel,
        local_connections: Callable[[], list[Connection]],
        sanctions: Sanctions,
        tls_port: Callable[[], int | None],
        hasher: PasswordHasher | None = None,
    ) -> None:
        self.rdb = rdb
        self.keys = keys
        self.config = config
        self.control = control
        self.local_connections = local_connections
        self.sanctions = sanctions
        self.tls_port = tls_port
        self.hasher = hasher or PasswordHasher()
        control.on("displace", self._displaced)

    def start(self) -> None:
        """Start the password hasher."""
        self.hasher.start()

    def stop(self, timeout: float) -> None:
        """Stop the password hasher."""
        self.hasher.stop(timeout)

    # --- what other code asks ---------------------------------------------------

    def guarded_account(self, conn: Connection, name: str) -> str:
        """The account (name_key) that forbids ``conn`` to take ``name`` if it exists; "" when none can.

        The claim itself checks it (:func:`~chatroom.redisdb.claim_name`),
        in the same atomic step.
        """
        name_key = p.name_key(name)
        if name_key == conn.account or p.guest_id(name) is not None:
            return ""
        return name_key

    def is_operator(self, conn: Connection) -> bool:
        """Whether ``conn`` holds an account with the operator flag, now (a revocation counts at once)."""
        return bool(conn.account) and self.rdb.hget(self.keys.account(conn.account), "oper") == b"1"

    # --- the commands ---------------------------------------------------------------

    def handle(self, conn: Connection, mark: str, text: str) -> str | None:
        """Run the account command ``mark``; for a successful login, the name to take (the caller claims it).

        Every other outcome is answered here, ``<mark>1`` or ``<mark>0``.
        """
        refusal = self._clear_text_refusal(conn)
        if refusal is not None:
            self._refuse(conn, mark, *refusal)
            return None
        try:
            if mark == p.LOGIN:
                return self.login(conn, text)
            if mark == p.REGISTER:
                self.register(conn, text)
            elif mark == p.PASSWORD:
                self.change_password(conn, text)
            elif mark == p.UNREGISTER:
                self.unregister(conn, text)
        except HashingBusy:
            logger.warning("%r: %s refused: %d hashes already waiting", conn, mark, HASH_QUEUE_LIMIT)
            self._refuse(conn, mark, "hashing_busy")
        return None

    def register(self, conn: Connection, password: str) -> None:
        """Register the name ``conn`` holds, with ``password``."""
        mark = p.REGISTER
        password = normal_password(password)
        name, name_key = conn.name, conn.name_key
        if p.guest_id(name) is not None:
            return self._refuse(conn, mark, "register_guest")
        problem = p.password_problem(password)
        if problem is not None:
            return self._refuse(conn, mark, problem)
        if self.rdb.exists(self.keys.account(name_key)):  # before paying for a hash
            return self._refuse(conn, mark, "register_taken", name=name)
        encoded = self.hasher.hash(password)
        keys = self.keys
        with conn.state_lock:  # the name cannot be taken over meanwhile
            result = self.rdb.eval(
                _REGISTER, 3, keys.account(name_key), keys.accounts, keys.users_by_name,
                name, encoded, int(time.time()), name_key, conn.id,
            )
            if result == 1:
                conn.account = name_key
        if result == 0:
            return self._refuse(conn, mark, "register_taken", name=name)
        if result != 1:
            return self._refuse(conn, mark, "name_taken")
        logger.info("%r: registered %r", conn, name)
        conn.reply(p.join_message(p.INDIVIDUAL, conn.name, p.done_mark(mark), name))
        return None

    def login(self, conn: Connection, text: str) -> str | None:
        """Check ``<name>:<password>``; the account's name if it is right (``conn`` then holds it).

        A name some other user holds is taken from them: their process
        renames them to their guest name (see :meth:`_displaced`).
        """
        mark = p.LOGIN
        parsed = p.split_login(text)
        if parsed is None:
            return self._refuse(conn, mark, "login_usage")
        name, password = parsed
        password = normal_password(password)
        name_key = p.name_key(name)
        ban = self.sanctions.name_ban(name_key)
        if ban is not None:
            return self._refuse(conn, mark, "login_banned", name=name, until=ban.until_text(conn.lang))
        if self._refuse_throttled(conn, mark, name_key, name):
            return None
        record = account_record(self.rdb, self.keys, name_key)
        if record is None:
            self._count_failure(conn, name_key)
            return self._refuse(conn, mark, "no_account", name=name)
        if not self.hasher.verify(record["hash"], password):
            self._count_failure(conn, name_key)
            logger.warning("%r: failed login to %r", conn, record["name"])
            return self._refuse(conn, mark, "wrong_password")
        if self.hasher.needs_rehash(record["hash"]):
            self.rdb.eval(_SET_HASH, 1, self.keys.account(name_key), record["hash"], self.hasher.hash(password))
        conn.account = name_key
        holder = self.rdb.eval(_TAKE_OVER, 1, self.keys.users_by_name, name_key, conn.id)
        if holder:
            holder = holder.decode()
            logger.info("%r: logged in to %r, held by user %s: taking it over", conn, record["name"], holder)
            self.control.publish("displace", user=holder, name_key=name_key)
        logger.info("%r: logged in as %r", conn, record["name"])
        return record["name"]

    def change_password(self, conn: Connection, text: str) -> None:
        """``<old>:<new>``: change the password of the account ``conn`` holds."""
        mark = p.PASSWORD
        record = self._held_account(conn, mark)
        if record is None:
            return None
        parsed = p.split_password_change(text)
        if parsed is None:
            return self._refuse(conn, mark, "password_usage")
        old, new = normal_password(parsed[0]), normal_password(parsed[1])
        problem = p.password_problem(new)
        if problem is not None:
            return self._refuse(conn, mark, problem)
        if not self._password_right(conn, mark, record, old):
            return None
        changed = self.rdb.eval(_SET_HASH, 1, self.keys.account(conn.account), record["hash"], self.hasher.hash(new))
        if not changed:  # changed or removed meanwhile, from another connection
            return self._refuse(conn, mark, "wrong_password")
        logger.info("%r: changed the password of %r", conn, record["name"])
        conn.reply(p.join_message(p.INDIVIDUAL, conn.name, p.done_mark(mark), record["name"]))
        return None

    def unregister(self, conn: Connection, password: str) -> None:
        """Remove the account ``conn`` holds; ``password`` is its password."""
        mark = p.UNREGISTER
        record = self._held_account(conn, mark)
        if record is None or not self._password_right(conn, mark, record, normal_password(password)):
            return
        remove_account(self.rdb, self.keys, record["name"])
        conn.account = None
        logger.info("%r: unregistered %r", conn, record["name"])
        conn.reply(p.join_message(p.INDIVIDUAL, conn.name, p.done_mark(mark), record["name"]))
        return

    # --- the parts ---------------------------------------------------------------------

    def _held_account(self, conn: Connection, mark: str) -> dict[str, str] | None:
        record = account_record(self.rdb, self.keys, conn.account) if conn.account else None
        if record is None:
            conn.account = None  # removed meanwhile (unregistered elsewhere, the admin command line)
            self._refuse(conn, mark, "not_logged_in")
        return record

    def _password_right(self, conn: Connection, mark: str, record: dict[str, str], password: str) -> bool:
        """Check the password of an account the user holds, throttled and counted as a login is."""
        if self._refuse_throttled(conn, mark, conn.account, record["name"]):
            return False
        if self.hasher.verify(record["hash"], password):
            return True
        self._count_failure(conn, conn.account)
        logger.warning("%r: wrong password for %r (%s)", conn, record["name"], mark)
        self._refuse(conn, mark, "wrong_password")
        return False

    def _clear_text_refusal(self, conn: Connection) -> tuple | None:
        """Why a password may not come over this connection in clear text, or None if it may."""
        if conn.encrypted or self.config.allow_plaintext_passwords or is_loopback(conn.address[0]):
            return None
        port = self.tls_port()
        return ("plaintext_password", {"port": port}) if port else ("plaintext_password_no_tls", {})

    def _refuse_throttled(self, conn: Connection, mark: str, name_key: str, name: str) -> bool:
        """Refuse, without hashing, a login to a name, or from an address, that failed too often."""
        keys = self.keys
        counters = [keys.login_failures("name", name_key), keys.login_failures("address", conn.address[0])]
        pipe = self.rdb.pipeline(transaction=False)
        for counter in counters:
            pipe.get(counter)
            pipe.pttl(counter)
        name_count, name_ttl, address_count, address_ttl = pipe.execute()
        if int(name_count or 0) >= FAILED_LOGINS_ALLOWED:
            logger.warning("%r: %s to %r refused: too many failed logins for the name", conn, mark, name)
            self._refuse(conn, mark, "login_throttled_name", name=name, minutes=minutes_left(name_ttl))
            return True
        if int(address_count or 0) >= FAILED_LOGINS_ALLOWED:
            logger.warning("%r: %s refused: too many failed logins from its address", conn, mark)
            self._refuse(conn, mark, "login_throttled_address", minutes=minutes_left(address_ttl))
            return True
        return False

    def _count_failure(self, conn: Connection, name_key: str) -> None:
        keys = self.keys
        counters = [keys.login_failures("name", name_key), keys.login_failures("address", conn.address[0])]
        self.rdb.eval(_COUNT_FAILURE, len(counters), *counters, FAILED_LOGIN_WINDOW)

    def _refuse(self, conn: Connection, mark: str, key: str, values: dict | None = None, **more: object) -> None:
        """Answer ``<mark>0:<reason>`` to ``conn``."""
        reason = conn.text(key, **{**(values or {}), **more})
        conn.reply(p.join_message(p.INDIVIDUAL, conn.name, p.refused_mark(mark), reason))

    # --- control messages ---------------------------------------------------------------

    def _displaced(self, message: dict) -> None:
        """Another user logged in to the name one of ours holds: ours becomes its guest name."""
        user_id, name_key = message["user"], message["name_key"]
        for conn in self.local_connections():
            if conn.id != user_id:
                continue
            with conn.state_lock:
                if conn.name_key != name_key or not conn.in_redis:
                    return  # renamed or gone meanwhile
                old, guest = conn.name, p.guest_name(conn.id)
                # Not usersByName: the name is the new holder's already.
                self.rdb.hset(self.keys.users_name, conn.id, guest)
                conn.name, conn.name_key = guest, p.name_key(guest)
            logger.info("%r: lost the name %r to its account's owner", conn, old)
            conn.reply_text("taken_over", name=old, guest=guest)
            conn.reply(p.join_message(p.INDIVIDUAL, guest, p.CHANGE_NAME_OK, guest))
            return

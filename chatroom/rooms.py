"""Rooms beside the lobby: join, part, chat, who and the list, shared by every server process.

The lobby is the original's ``channel1``: every user is in it from login and
nobody leaves it, which is what the original Go client assumes.  Any other
room lives in Redis while it has members (every key under the prefix)::

    rooms                hash    folded name -> the name the room was created with
    roomMembers:<room>   set     user ids in the room
    userRooms:<id>       set     folded names of the rooms one user is in
    roomHistory:<room>   list    newest first, as the lobby's history; it
                                 outlives the room by --room-history-ttl
    room:<room>          channel the room's messages

A room's name follows the nickname rules; two spellings that fold the same
under NFKC + case folding are one room, shown under the name it was created
with.  Joining, parting and leaving are Lua scripts, so the limits (rooms per
user, rooms in all) hold across processes and a room empties exactly once.

Thread shape: no thread or connection per room.  A user's broadcast listener
subscribes to each of its rooms on its one pub/sub connection; the reader
changes those subscriptions and waits for Redis to confirm them
(:meth:`chatroom.listener.ListenerEngine.change_subscription` says how the
two threads hand the confirmations over), so a join takes effect before
``join1`` and a part before ``part1``.
"""

from __future__ import annotations

import logging

import redis

import protocol as p
from chatroom.connection import Connection
from chatroom.history import History, room_prefix
from chatroom.listener import ListenerEngine
from chatroom.redisdb import LEAVE_ROOMS_LUA, Batch, Keys

logger = logging.getLogger("chatroom.server")

#: Join: KEYS rooms, roomMembers:<room>, userRooms:<id>, roomHistory:<room>;
#: ARGV folded name, name to create it under, user id, rooms per user, rooms in
#: all, the room's channel, the joined text, the system mark.  Returns
#: {1, name} joined (and announced to the members), {2, name} already in,
#: {0, ""} over the per-user limit, {-1, ""} over the total.
_JOIN = """
local display = redis.call('HGET', KEYS[1], ARGV[1])
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 and display then
  return {2, display}
end
if redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[4]) then
  return {0, ''}
end
if not display then
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then
    return {-1, ''}
  end
  display = ARGV[2]
  redis.call('HSET', KEYS[1], ARGV[1], display)
end
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('PERSIST', KEYS[4])
redis.call('PUBLISH', ARGV[6], 'channel:' .. display .. ':' .. ARGV[8] .. ':' .. ARGV[7])
return {1, display}
"""

#: Part: KEYS rooms, userRooms:<id>; ARGV the key prefix, user id, the
#: history's lifetime once the room is empty (seconds; 0: deleted), the left
#: text, the system mark, the folded name of the room.  A room that empties
#: leaves the list; otherwise its remaining members are told.  (Leaving every
#: room, when the user leaves the chat, is part of redisdb's one removal.)
_PART = LEAVE_ROOMS_LUA + """
return leave_rooms(ARGV[1], KEYS[1], KEYS[2], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
"""


class Rooms:
    """The rooms of one server process's users; the state itself is in Redis.

    Handed what it needs: the Redis client, key names, settings, the listener
    engine (for the subscriptions) and the history.
    """

    def __init__(self, rdb: redis.Redis, keys: Keys, config, listeners: ListenerEngine, history: History) -> None:
        self.rdb = rdb
        self.keys = keys
        self.config = config
        self.listeners = listeners
        self.history = history

    def text(self, key: str, **values: object) -> str:
        """A text in the server's language."""
        return p.text(self.config.lang, key, **values)

    # --- join and part ---------------------------------------------------------------

    def join(self, conn: Connection, name: str) -> None:
        """``channel:<room>:join:``: join1 (then the notice and the history), or join0 with the reason.

        The order: membership in Redis and the notice to the members already
        there (one script), then the subscription, confirmed; only then
        ``join1``, so that whatever is published to the room afterwards
        reaches the joiner.  The joiner's own notice is sent to it directly,
        after join1; then the room's history (which may repeat a message that
        arrived live in the instant of joining: clients drop those, as after
        a reconnect).
        """
        problem = p.room_problem(name)
        if problem is not None:
            conn.reply(p.join_message(p.INDIVIDUAL, conn.name, p.JOIN_REFUSED, self.text(problem)))
            return
        key = p.name_key(name)
        if key == p.BROADCAST:  # everyone is in the lobby already
            conn.reply(p.join_message(p.INDIVIDUAL, conn.name, p.JOIN_OK, p.BROADCAST))
            return
        if key in conn.rooms:
            conn.reply(p.join_message(p.INDIVIDUAL, conn.name, p.JOIN_OK, conn.rooms[key]))
            return
        keys = self.keys
        status, display = self.rdb.eval(
            _JOIN,
            4,
            keys.rooms,
            keys.room_members(key),
            keys.user_rooms(conn.id),
            keys.room_history(key),
            key,
            name,
            conn.id,
            self.config.max_rooms_per_user,
            self.config.max_rooms,
            keys.room_channel(key),
            self.text("room_joined", name=conn.name),
            p.SYSTEM,
        )
        display = display.decode() if isinstance(display, bytes) else display
        if status == 0:
            reason = self.text("room_limit_user", limit=self.config.max_rooms_per_user)
        elif status == -1:
            reason = self.text("room_limit_total", limit=self.config.max_rooms)
        else:
            reason = None
        if reason is not None:
            conn.reply(p.join_message(p.INDIVIDUAL, conn.name, p.JOIN_REFUSED, reason))
            return
        # join1 and the joiner's notice are sent by the listener, at the
        # confirmation, before any message of the room that follows it.
        confirmations = [p.join_message(p.INDIVIDUAL, conn.name, p.JOIN_OK, display).encode()]
        if status == 1:
            notice = self.text("room_joined", name=conn.name)
            confirmations.append(p.join_message(p.CHANNEL, display, p.SYSTEM, notice).encode())
        channel = keys.room_channel(key)
        if not self.listeners.change_subscription(conn, conn.broadcast_sub, "subscribe", channel, confirmations):
            logger.error("%r: no confirmation of the subscription to room %r", conn, display)
            self._leave_quietly(conn, key)
            conn.reply(p.join_message(p.INDIVIDUAL, conn.name, p.JOIN_REFUSED, self.text("server_error")))
            return
        conn.rooms[key] = display
        logger.info("%r: joined room %r", conn, display)
        self.history.send(conn, keys.room_history(key), room_prefix(display))

    def part(self, conn: Connection, name: str) -> None:
        """``channel:<room>:part:``: part1 once nothing of the room can arrive any more, or part0.

        The subscription goes first, confirmed, so that nothing of the room
        arrives after ``part1``; then the membership, and the notice to the
        remaining members.
        """
        key = p.name_key(name)
        if key == p.BROADCAST:
            conn.reply(p.join_message(p.INDIVIDUAL, conn.name, p.PART_REFUSED, self.text("room_lobby_part")))
            return
        display = conn.rooms.get(key)
        if display is None:
            reason = self.text("room_not_member", room=p.printable(name))
            conn.reply(p.join_message(p.INDIVIDUAL, conn.name, p.PART_REFUSED, reason))
            return
        if not self.listeners.change_subscription(conn, conn.broadcast_sub, "unsubscribe", self.keys.room_channel(key)):
            logger.error("%r: no confirmation of leaving the channel of room %r", conn, display)
            conn.reply(p.join_message(p.INDIVIDUAL, conn.name, p.PART_REFUSED, self.text("server_error")))
            return
        del conn.rooms[key]
        pipe = self.rdb.pipeline(transaction=False)
        self._queue_leave(pipe, conn, key)
        pipe.execute()
        logger.info("%r: parted room %r", conn, display)
        conn.reply(p.join_message(p.INDIVIDUAL, conn.name, p.PART_OK, display))

    def _queue_leave(self, pipe, conn: Connection, key: str) -> None:
        left = self.text("room_left", name=conn.name)
        keys = self.keys
        ttl = int(self.config.room_history_ttl)
        pipe.eval(_PART, 2, keys.rooms, keys.user_rooms(conn.id), keys.prefix, conn.id, ttl, left, p.SYSTEM, key)

    def _leave_quietly(self, conn: Connection, key: str) -> None:
        try:
            pipe = self.rdb.pipeline(transaction=False)
            self._queue_leave(pipe, conn, key)
            pipe.execute()
        except redis.RedisError as exc:
            logger.error("%r: could not undo joining %r: %s", conn, key, exc)

    # --- chat and listings -----------------------------------------------------------

    def chat(self, conn: Connection, name: str, message: str, batch: Batch) -> bool:
        """Queue a message to a room the user is in; False (and a reply) if it is not a member."""
        key = p.name_key(name)
        display = conn.rooms.get(key)
        if display is None:
            conn.reply_system(self.text("room_chat_not_member", room=p.printable(name)))
            return False
        payload = p.join_message(p.CHANNEL, display, conn.name, message)
        if not conn.fits(payload):
            conn.reply_too_long(message, payload)
            return False
        batch.pipe.publish(self.keys.room_channel(key), payload)
        self.history.add(conn, message, batch, self.keys.room_history(key), room_prefix(display))
        return True

    def who_text(self, name: str) -> str:
        """The members of a room, sorted, with their count; cut to fit one frame."""
        key = p.name_key(name)
        display = self.rdb.hget(self.keys.rooms, key)
        if display is None:
            return self.text("no_such_room", room=p.printable(name))
        ids = list(self.rdb.smembers(self.keys.room_members(key)))
        names = [n.decode() for n in self.rdb.hmget(self.keys.users_name, ids) if n is not None] if ids else []
        names.sort(key=p.name_key)
        room = display.decode()
        return p.fit_listing(
            names, lambda listing, count: self.text("room_who", room=room, count=count, names=listing),
            self.config.max_frame,
        )

    def count(self, name: str) -> tuple[str, int]:
        """(the room's name as shown, its member count); an unknown room counts 0."""
        key = p.name_key(name)
        display = self.rdb.hget(self.keys.rooms, key)
        if display is None:
            return p.printable(name), 0
        return display.decode(), self.rdb.scard(self.keys.room_members(key))

    def list_text(self, lobby_count: int) -> str:
        """Every room with its member count, the lobby first, then by name; cut to fit one frame."""
        rooms = sorted(((k.decode(), v.decode()) for k, v in self.rdb.hgetall(self.keys.rooms).items()))
        pipe = self.rdb.pipeline(transaction=False)
        for key, _ in rooms:
            pipe.scard(self.keys.room_members(key))
        counts = pipe.execute() if rooms else []
        entries = [f"{p.BROADCAST} ({lobby_count})"] + [f"{display} ({n})" for (_, display), n in zip(rooms, counts)]
        return p.fit_listing(
            entries, lambda listing, count: self.text("rooms_list", count=count, rooms=listing), self.config.max_frame
        )



def queue_register_again(pipe, keys: Keys, conn: Connection) -> None:
    """Queue putting a local user's rooms back into Redis (the reconcile after Redis lost or doubted them)."""
    for key, display in conn.rooms.items():
        pipe.hsetnx(keys.rooms, key, display)
        pipe.sadd(keys.room_members(key), conn.id)
        pipe.sadd(keys.user_rooms(conn.id), key)
        pipe.persist(keys.room_history(key))

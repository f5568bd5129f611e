"""The control channel: how one server process acts on users connected to another.

A kick, a ban, a mute or a login that takes a name over concerns a user who
may be connected to any process sharing the Redis.  Each process subscribes
to one channel, ``<prefix>control``, with one thread; an action is one JSON
message there (``{"op": "kick", "user": "7", ...}``), which every process
receives at once and acts on for the users it holds.  No process polls.

Why one channel for all rather than one per process, or a control payload on
the user's personal channel: moderation is rare, and most of it concerns
every process anyway (a ban closes the matching connections wherever they
are and every process must learn of it to refuse newcomers); routing to one
process would need a user -> process index that Redis does not keep (only
the reverse, ``serverUsers:<id>``); and a control payload on a personal
channel would add a test to the hot fan-out path of every message, and be
forwarded as garbage to the user by a server of an older layout during an
upgrade.

Handlers are registered per ``op`` (:meth:`ControlChannel.on`).  A message
missed while Redis was away cannot be replayed: after the channel is
subscribed again, the ``on_resubscribed`` callbacks run (moderation reloads
its bans and mutes from Redis).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

import redis

from chatroom.listener import subscribe

logger = logging.getLogger("chatroom.server")

#: Resubscribing while Redis is away: the first wait, doubled up to the last.
RETRY_FIRST_DELAY = 0.05
RETRY_MAX_DELAY = 1.0


class ControlChannel:
    """This process's end of ``<prefix>control``: publish actions, run the handlers of those received."""

    def __init__(self, rdb: redis.Redis, channel: str, stopping: threading.Event, timeout: float) -> None:
        self.rdb = rdb
        self.channel = channel
        self.stopping = stopping
        self.timeout = timeout
        self._handlers: dict[str, Callable[[dict], None]] = {}
        self._resubscribed: list[Callable[[], None]] = []
        self._sub: redis.client.PubSub | None = None
        self._thread: threading.Thread | None = None

    def on(self, op: str, handler: Callable[[dict], None]) -> None:
        """Run ``handler(message)`` for every control message whose ``op`` is ``op``."""
        self._handlers[op] = handler

    def on_resubscribed(self, callback: Callable[[], None]) -> None:
        """Run ``callback()`` after the channel was lost and subscribed again (messages may be missed)."""
        self._resubscribed.append(callback)

    def publish(self, op: str, **fields: object) -> None:
        """Send an action to every process (this one included); raises RedisError."""
        self.rdb.publish(self.channel, json.dumps({"op": op, **fields}))

    def start(self) -> None:
        """Subscribe (confirmed: nothing published after this returns is missed), start the thread."""
        self._sub = subscribe(self.rdb, self.channel, self.timeout)
        self._thread = threading.Thread(target=self._listen, name="control", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """End the thread (the server's stop event is set) and release its Redis connection."""
        sub = self._sub
        if sub is None:
            return
        try:
            sub.unsubscribe()  # wakes the thread's blocking read
        except (redis.RedisError, OSError):
            pass
        if self._thread is not None:
            self._thread.join(timeout)
        sub.close()
        self._sub = None

    def _listen(self) -> None:
        sub = self._sub
        delay = RETRY_FIRST_DELAY
        while not self.stopping.is_set():
            try:
                message = sub.get_message(timeout=None)
            except (redis.RedisError, OSError, ValueError) as exc:
                if self.stopping.is_set():
                    break
                logger.debug("control channel lost: %s", exc)
                self.stopping.wait(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)
                continue
            delay = RETRY_FIRST_DELAY
            if message is None:
                continue
            kind = message.get("type")
            if kind == "subscribe":
                # redis-py subscribes again by itself after reconnecting: we
                # learn of the gap here, and what was missed is read again.
                self._run_resubscribed()
            elif kind == "message":
                self._dispatch(message["data"])
            if not sub.subscribed:
                break
        logger.debug("control listener ended")

    def _run_resubscribed(self) -> None:
        logger.warning("control channel subscribed again after losing Redis: reloading bans and mutes")
        for callback in self._resubscribed:
            try:
                callback()
            except Exception:
                logger.exception("reloading after resubscribing failed")

    def _dispatch(self, data: bytes) -> None:
        try:
            message = json.loads(data)
            handler = self._handlers.get(message.get("op"))
        except (ValueError, AttributeError):
            logger.error("malformed control message %r", data[:200])
            return
        if handler is None:
            logger.info("control message of an unknown kind: %r", data[:200])
            return
        try:
            handler(message)
        except redis.RedisError as exc:
            logger.error("control message %r failed: %s", message.get("op"), exc)
        except Exception:
            logger.exception("control message %r failed", message.get("op"))

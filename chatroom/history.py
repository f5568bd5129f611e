"""The public messages kept for newcomers: a capped Redis list per room, newest first.

Each entry is ``<unix time>:<name>:<text>``.  A newcomer gets them oldest
first: the lobby's as ``history:<unix time>:<name>:<text>`` payloads, which
the original Go client ignores (an unknown target type); a room's as
``roomHistory:<room>:<unix time>:<name>:<text>``.
"""

from __future__ import annotations

import logging
import time

import redis

import protocol as p
from chatroom.connection import WRITE_LIMIT, Connection
from chatroom.redisdb import Batch

logger = logging.getLogger("chatroom.server")

#: How the lobby's entries are shown to a newcomer.
LOBBY = f"{p.HISTORY}:"


def room_prefix(room: str) -> str:
    """How a room's entries are shown to a joiner: ``roomHistory:<room>:``."""
    return f"{p.ROOM_HISTORY}:{room}:"


class History:
    """The last ``size`` public messages of each room (0: none kept)."""

    def __init__(self, rdb: redis.Redis, size: int) -> None:
        self.rdb = rdb
        self.size = size

    def add(self, conn: Connection, message: str, batch: Batch, key: str, shown_as: str = LOBBY) -> None:
        """Keep a public message of ``conn`` under ``key`` (queued on ``batch``, with the broadcast itself)."""
        if self.size > 0:
            entry = f"{int(time.time())}:{conn.name}:{message}"
            if not conn.fits(shown_as + entry):
                return  # a few bytes longer than the live broadcast
            batch.pipe.lpush(key, entry)
            batch.pipe.ltrim(key, 0, self.size - 1)

    def send(self, conn: Connection, key: str, shown_as: str = LOBBY) -> None:
        """Send the messages kept under ``key``, oldest first, each as ``shown_as`` + the entry.

        Only the newest that fit in one write of WRITE_LIMIT bytes: more frames
        back to back could end the Go client's 4096-byte read buffer inside a
        frame, which makes it spin forever.
        """
        if self.size <= 0:
            return
        try:
            entries = self.rdb.lrange(key, 0, self.size - 1)
        except redis.RedisError as exc:
            # The join was accepted and so answered: a missing history is no reason for a second answer.
            logger.error("%r: could not read the history: %s", conn, exc)
            return
        prefix = shown_as.encode()
        payloads, size = [], 0
        for entry in entries:
            payload = prefix + entry
            size += len(payload) + 1 + 4  # "\n" and the frame header
            if size > WRITE_LIMIT:
                break
            payloads.append(payload)
        if payloads:
            conn.send_payloads(reversed(payloads))

"""The public messages kept for newcomers: a capped Redis list, newest first.

Each entry is ``<unix time>:<name>:<text>``; a newcomer gets them oldest
first as ``history:<unix time>:<name>:<text>`` payloads, which the original
Go client ignores (an unknown target type).
"""

from __future__ import annotations

import logging
import time

import redis

import protocol as p
from chatroom.connection import WRITE_LIMIT, Connection
from chatroom.redisdb import Batch

logger = logging.getLogger("chatroom.server")


class History:
    """The last ``size`` public messages (0: none kept) under the Redis key ``key``."""

    def __init__(self, rdb: redis.Redis, key: str, size: int) -> None:
        self.rdb = rdb
        self.key = key
        self.size = size

    def add(self, conn: Connection, message: str, batch: Batch) -> None:
        """Keep a public message of ``conn`` (queued on ``batch``, with the broadcast itself)."""
        if self.size > 0:
            entry = f"{int(time.time())}:{conn.name}:{message}"
            if not conn.fits(f"{p.HISTORY}:{entry}"):
                return  # a few bytes longer than the live broadcast
            batch.pipe.lpush(self.key, entry)
            batch.pipe.ltrim(self.key, 0, self.size - 1)

    def send(self, conn: Connection) -> None:
        """Send the kept public messages, oldest first, as ``history:`` payloads.

        Only the newest that fit in one write of WRITE_LIMIT bytes: more frames
        back to back could end the Go client's 4096-byte read buffer inside a
        frame, which makes it spin forever.
        """
        if self.size <= 0:
            return
        try:
            entries = self.rdb.lrange(self.key, 0, self.size - 1)
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

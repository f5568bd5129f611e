"""Join notices, published in batches while users arrive close together.

Every join notice wakes every broadcast listener of the room.  When 200 users
arrive together, 200 notices one by one cost the process 20,000 deliveries in
thousands of wake-ups: 40 % of its CPU during such a burst, time the logins
themselves then wait for (make bench's ``logins`` scenario, docs/BENCHMARKS.md).
Published together, in one pipeline, the notices of a stretch reach each
listener as one burst, one wake-up for all of them.

There is no thread of its own and no fixed delay.  The first login to announce
while nobody else is about to becomes the *leader*: if the last batch went out
at least one window ago (:meth:`Announcer.window`) it publishes at once, so in
a quiet room a join is announced as it happens; otherwise it waits out the rest
of that window, in its own reader thread, after its own reply, and then
publishes whatever the logins arriving meanwhile queued (a group commit).
The window grows with the users connected, as the listeners' linger does
(``--wakeup-budget``): however many arrive, their notices cost at most about
that many wake-ups a second.

A user's notice must not be overtaken by what that user does next: each
announcement returns a :class:`threading.Event`, set once the notice is
published (or its publishing failed); the reader waits for it before handling
the user's next message, and before removing a user who leaves at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

logger = logging.getLogger("chatroom.server")

#: While joins come faster than this, they go out together once per this at
#: least (more in big rooms, see Announcer.window).  200 users arriving
#: together: 0.01 s saved 7 % of the server's CPU, 0.05 s 15 %, 0.1 s 22 %
#: (p50 of their logins 230 -> 175 ms), no notices at all 35 %.  0: no
#: batches, every notice published at once (the A/B of docs/BENCHMARKS.md).
BATCH_WINDOW = 0.1


class Announcer:
    """Batches the join notices of a server's users (see the module's docstring)."""

    def __init__(
        self,
        rdb: redis.Redis,
        users_connected: Callable[[], int],
        wakeup_budget: float,
        report: Callable[[Exception, str], None],
    ) -> None:
        self.rdb = rdb
        self.users_connected = users_connected
        #: --wakeup-budget: wake-ups a second the notices may cost at most (0: no growth).
        self.wakeup_budget = wakeup_budget
        #: How a Redis failure is reported (RedisHealth.report): a lost notice needs no answer to anyone.
        self.report = report
        self._lock = threading.Lock()
        #: (channel, payload, its event), waiting for the leader.
        self._queue: list[tuple[str, bytes, threading.Event]] = []
        self._leader = False
        #: When the last batch went out (monotonic).
        self._last = float("-inf")

    def window(self) -> float:
        """The least time between two batches now.

        A batch wakes every listener of the lobby once: with N users, one
        batch each N / budget seconds keeps the notices within the budget's
        wake-ups a second (1,000 users: 0.2 s; 10,000: 2 s).
        """
        if BATCH_WINDOW <= 0 or self.wakeup_budget <= 0:
            return max(BATCH_WINDOW, 0.0)
        return max(BATCH_WINDOW, self.users_connected() / self.wakeup_budget)

    def announce(self, channel: str, payload: bytes) -> threading.Event:
        """Publish ``payload`` on ``channel``, now or with the next batch; the event is set once it is out."""
        published = threading.Event()
        with self._lock:
            self._queue.append((channel, payload, published))
            if self._leader:
                return published  # the leader publishes it with its batch
            self._leader = True
        try:
            wait = self._last + self.window() - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # users are arriving fast: gather theirs too
        finally:
            with self._lock:
                batch, self._queue = self._queue, []
                self._leader = False
                # The next leader waits a window from this batch, not from the last one's answer.
                self._last = time.monotonic()
            self._publish(batch)
        return published

    def _publish(self, batch: list[tuple[str, bytes, threading.Event]]) -> None:
        pipe = self.rdb.pipeline(transaction=False)
        for channel, payload, _ in batch:
            pipe.publish(channel, payload)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            # Only notices were lost: nobody waits for an answer about them.
            self.report(exc, f"announcing {len(batch)} join(s)")
        finally:  # execute() resets the pipeline itself
            for *_, published in batch:
                published.set()

"""One chat client: its socket, its place in the lifecycle, its send lock and send path.

The three threads of a connection (the reader and two pub/sub listeners)
share one :class:`Connection` and its one send lock, so frames never
interleave.  Replies that go straight to the client's socket (answers to its
own commands, errors) are sent from here too.
"""

from __future__ import annotations

import enum
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

import protocol as p
from framing import GO_READ_BUFFER, HEADER_SIZE, FrameReader, timeval
from framing import HEADER as FRAME_HEADER

if TYPE_CHECKING:
    import redis

logger = logging.getLogger("chatroom.server")

#: How many kinds of frame chatroom.metrics counts, and the slots of a
#: listener's wake-up histogram (kept in step with chatroom.metrics, which checks).
FRAME_KIND_COUNT = 14
WAKEUP_SLOTS = 11

NEWLINE = b"\n"

#: Largest single socket write: whole frames only, within the Go client's
#: read buffer (it decodes only a frame that lies inside one read).
WRITE_LIMIT = GO_READ_BUFFER

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


def system_payload(target_type: str, target: str, message: str) -> bytes:
    """A ``<type>:<target>:系统消息:<message>`` payload, as bytes."""
    return p.join_message(target_type, target, p.SYSTEM, message).encode("utf-8")


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


class State(enum.IntEnum):
    """Where a connection is in its life; it only ever moves forward."""

    #: Accepted; not in Redis yet.
    ACCEPTED = 0
    #: In Redis as ``guest-<id>``.
    GUEST = 1
    #: Took a name and was announced as joined.
    JOINED = 2
    #: Going away: nothing more is sent to it; it may still be in Redis.
    LEAVING = 3
    #: Removed from Redis (or never added, or its id went to another user); threads winding down.
    GONE = 4


class Connection:
    """One chat client: its socket, identity, state and send lock.

    ``max_frame`` and ``lang`` are the server's: the replies sent from here
    are cut and worded as the server's own.
    """

    def __init__(
        self,
        sock: socket.socket,
        address: tuple,
        bucket: TokenBucket | None = None,
        *,
        max_frame: int = GO_READ_BUFFER - 4,
        lang: str = "en",
    ) -> None:
        self.sock = sock
        self.address = address
        self.bucket = bucket or TokenBucket(0, 1)
        self.max_frame = max_frame
        self.lang = lang
        self.refused_in_a_row = 0
        #: Messages handled, kept here too, to re-register the user if Redis loses its data.
        self.activity = 0
        #: Set when the client is gone; wakes a listener waiting for Redis to come back.
        self.gone = threading.Event()
        #: Held while this user's Redis records change (its reader, reconcile).
        self.state_lock = threading.Lock()
        self._state = State.ACCEPTED
        self._state_guard = threading.Lock()
        #: Its records left Redis (see mark_removed).
        self.removed = False
        self.id = ""
        #: True while its registration (redisdb.add_user) is on its way: Redis may know its id before we do.
        self.registering = False
        self.name = ""
        self.name_key = ""
        #: True for a client of the TLS port (its ``sock`` is a :class:`~chatroom.tls.TlsStream`).
        self.tls = False
        #: The name_key of the account this connection registered or logged in to, until it
        #: leaves, whatever it is called meanwhile (chatroom/accounts.py).
        self.account: str | None = None
        #: (name_key, unix time or inf) of a mute aimed at this user (chatroom/moderation.py).
        self.muted: tuple[str, float] | None = None
        self.send_lock = threading.Lock()
        self.reader_thread: threading.Thread | None = None
        self.broadcast_thread: threading.Thread | None = None
        self.personal_thread: threading.Thread | None = None
        self.broadcast_sub: redis.client.PubSub | None = None
        self.personal_sub: redis.client.PubSub | None = None
        #: The rooms the user is in beside the lobby: folded name -> name as shown.
        #: Only its reader changes it (join, part), so it needs no lock.
        self.rooms: dict[str, str] = {}
        #: Held while the subscriptions of the broadcast pub/sub change: by the
        #: reader (a join, a part) and by the listener (a confirmation, a resubscribe).
        self.sub_lock = threading.Lock()
        #: Channels whose (un)subscription the reader awaits -> set by the listener on Redis's confirmation.
        self.awaited: dict[bytes, threading.Event] = {}
        #: Names (``name_key`` form) this user may hold in Redis besides its own:
        #: claims whose answer never came.  Freed when it leaves or at a reconcile.
        self.uncertain_names: set[str] = set()
        #: The Redis run id each subscription (broadcast, personal) was made under.
        self.subscribed_under: list[str | None] = [None, None]
        #: The payload that tells this user the server is stopping, once a stop began:
        #: its personal listener ends the connection after forwarding it.
        self.farewell: bytes | None = None
        #: Set once the user's join notice is published (chatroom/announcer.py); None once awaited.
        self.announced: threading.Event | None = None
        #: Why the connection ended, once known (a ``chatroom.metrics`` reason).
        self.leave_reason: str | None = None
        # What chatroom.metrics adds up at scrape time; plain integers, each
        # written by the threads that own it (the reader; whoever holds the send lock).
        self.frames_by_kind = [0] * FRAME_KIND_COUNT
        self.payloads_sent = 0
        self.bytes_sent = 0
        #: The reader of the client's payloads, once reading (its byte count is a metric).
        self.reader = None
        #: Per listener (broadcast, personal): wake-ups by payloads carried (see chatroom.metrics).
        self.wakeups = ([0] * WAKEUP_SLOTS, [0] * WAKEUP_SLOTS)

    @property
    def bytes_received(self) -> int:
        """Bytes received from the client so far."""
        return getattr(self.reader, "bytes_read", 0)

    def note_leaving(self, reason: str) -> None:
        """Record why the connection ends; the first reason given stands."""
        if self.leave_reason is None:
            self.leave_reason = reason

    def __repr__(self) -> str:
        return f"<Connection {self.id or '?'} {self.name!r} {self.address[0]}:{self.address[1]}>"

    # --- the lifecycle ---------------------------------------------------------

    @property
    def state(self) -> State:
        """Where the connection is in its life (see :class:`State`)."""
        return self._state

    def advance(self, state: State) -> bool:
        """Move forward to ``state``; never back (a JOINED after LEAVING stays LEAVING).

        Returns whether the state changed.  Several threads may call it at
        once (the reader, a listener whose send failed, shutdown).
        """
        with self._state_guard:
            if state <= self._state:
                return False
            self._state = state
            return True

    @property
    def alive(self) -> bool:
        """True until the connection starts going away: sends are still made."""
        return self._state < State.LEAVING

    @property
    def joined(self) -> bool:
        """True once the user took a name and was announced (until it leaves)."""
        return self._state == State.JOINED

    @property
    def in_redis(self) -> bool:
        """True while Redis holds this user's records and they are ours to remove."""
        return bool(self.id) and self._state < State.GONE and not self.removed

    def mark_removed(self) -> None:
        """Its records left Redis; a connection still alive (a stop telling it goodbye) stays so."""
        self.removed = True
        if not self.alive:
            self.advance(State.GONE)

    @property
    def listener_threads(self) -> list[threading.Thread]:
        """The listener threads started so far."""
        return [t for t in (self.broadcast_thread, self.personal_thread) if t is not None]

    @property
    def subscriptions(self) -> list[redis.client.PubSub]:
        """The pub/sub objects made so far."""
        return [s for s in (self.broadcast_sub, self.personal_sub) if s is not None]

    # --- the send path -----------------------------------------------------------

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
        # Header, payload and "\n" go into one join: no frame object per payload.
        pack = FRAME_HEADER.pack
        writes, chunk, size, count = [], [], 0, 0
        for payload in payloads:
            count += 1
            length = len(payload) + 1
            if chunk and size + length + HEADER_SIZE > WRITE_LIMIT:
                writes.append(b"".join(chunk))
                chunk, size = [], 0
            chunk += (pack(length), payload, NEWLINE)
            size += length + HEADER_SIZE
        if chunk:
            writes.append(b"".join(chunk))
        with self.send_lock:
            if self._state >= State.LEAVING:
                return False
            try:
                for data in writes:
                    self.sock.sendall(data)
                    self.bytes_sent += len(data)
                self.payloads_sent += count
                return True
            except OSError as exc:
                logger.info("%r: send failed (%s); dropping the client", self, exc)
                # SO_SNDTIMEO ran out: a client that stopped reading.
                self.note_leaving("slow_reader" if isinstance(exc, (TimeoutError, BlockingIOError)) else "reset")
                self.advance(State.LEAVING)
        self.shutdown_socket()
        return False

    def shutdown_socket(self) -> None:
        """Wake every thread blocked on this socket; they then wind down."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    @property
    def encrypted(self) -> bool:
        """Whether what the client sends is encrypted on the way (a password may come over it)."""
        return self.tls

    def close(self) -> None:
        """Close the socket, once every thread of the connection is done with it."""
        self.sock.close()

    # --- the read side ---------------------------------------------------------------

    def frame_reader(self, max_frame: int, **deadlines: float) -> FrameReader:
        """The reader of this client's payloads, under the server's limits (see :class:`~framing.FrameReader`)."""
        return FrameReader(self.sock, max_frame, **deadlines)

    # --- replies straight to this client --------------------------------------------

    def text(self, key: str, **values: object) -> str:
        """A human-readable text in the server's language."""
        return p.text(self.lang, key, **values)

    def fits(self, payload: str) -> bool:
        """Whether the payload, with its "\\n", fits in one frame the clients decode."""
        return p.fits(payload, self.max_frame)

    def reply(self, payload: str) -> None:
        """Send a payload to this client only, straight to its socket.

        Original: published on the personal channel; a direct send saves a
        Redis round trip and puts a reply before the broadcasts it causes.
        """
        if not self.fits(payload):
            self.reply_too_long()
            return
        self.send_payload(payload.encode("utf-8"))

    def reply_system(self, message: str, *, target_type: str = p.INDIVIDUAL, target: str | None = None) -> None:
        """Send a system message to this client only."""
        self.reply(p.join_message(target_type, self.name if target is None else target, p.SYSTEM, message))

    def reply_text(self, key: str, **values: object) -> None:
        """Send the system text ``key`` (in the server's language) to this client only."""
        self.reply_system(self.text(key, **values))

    def reply_too_long(self, text: str | None = None, *payloads: str) -> None:
        """Tell the client its message would not fit in one frame.

        With the user's ``text`` and the ``payloads`` that would carry it, the
        reply says how long the text may be there: the frame limit less the
        names and fields around it (the client says it the same way).
        """
        if text is None:
            message = self.text("too_long", limit=self.max_frame)
        else:
            length = len(text.encode("utf-8"))
            overhead = max(len(payload.encode("utf-8")) - length for payload in payloads) + 1  # and the "\n"
            message = self.text("text_too_long", length=length, limit=self.max_frame - overhead, frame=self.max_frame)
        self.send_payload(system_payload(p.INDIVIDUAL, self.name, message))

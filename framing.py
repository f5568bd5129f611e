"""Length-prefixed frames, as the original's ``module`` package puts them on the wire.

A frame is a signed 32-bit little-endian length followed by that many bytes of
UTF-8 text; the length counts payload bytes and excludes the 4-byte header::

    +----------------------+-------------------------------+
    | int32 little-endian  | payload: the string's bytes   |
    +----------------------+-------------------------------+

The core is :class:`FrameDecoder`, which does no I/O at all: feed it bytes,
ask it for frames (h11's shape).  :class:`FrameReader` wraps it for a blocking
socket.  Frames are always produced whole by :func:`encode`, so that a caller
sends each one with a single ``sendall``: the original Go decoder only decodes
a frame that sits entirely inside one read of its 4096-byte buffer.
"""

from __future__ import annotations

import socket
import struct
import time

HEADER = struct.Struct("<i")
HEADER_SIZE = HEADER.size

#: The size of the original Go programs' ``bufio.Reader``: their ``Decode``
#: only decodes a frame that lies whole inside one such buffer.
GO_READ_BUFFER = 4096

#: The largest payload the original Go programs can decode: one buffer, header included.
MAX_FRAME = GO_READ_BUFFER - HEADER_SIZE

#: Bytes a reader asks the socket for at once.  Small, since a blocked
#: ``recv`` holds a buffer of this size for as long as the peer is silent (a
#: server has one per user); a frame larger than it takes several reads.
RECV_SIZE = 1024


class FrameError(Exception):
    """The peer sent bytes that are not a valid frame stream.

    Only :class:`InvalidUtf8` leaves the stream in step (the bad frame was
    consumed whole): callers catch it by class to answer and go on.
    """


class TruncatedFrame(FrameError):
    """The stream ended inside a frame."""


class NegativeLength(FrameError):
    """The length prefix is negative (it crashes the original Go server)."""


class FrameTooLarge(FrameError):
    """The length prefix exceeds the configured limit."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the limit of {limit}")
        self.length = length
        self.limit = limit


class FrameTimeout(FrameError):
    """The peer was too slow: ``kind`` says which deadline passed.

    "first": no complete frame since connecting; "frame": a frame was begun
    but not finished in time; "idle": nothing at all for too long.
    """

    def __init__(self, kind: str, seconds: float) -> None:
        super().__init__(f"{kind} timeout after {seconds:g} s")
        self.kind = kind
        self.seconds = seconds


class InvalidUtf8(FrameError):
    """A whole frame arrived, but its payload is not UTF-8; the stream is still in step."""

    #: The key of the server's answer in protocol.TEXTS (a subclass may have its own).
    answer = "bad_utf8"


def encode(text: str) -> bytes:
    """Return the frame for ``text``: header and payload as one bytes object."""
    return encode_bytes(text.encode("utf-8"))


def encode_bytes(payload: bytes) -> bytes:
    """Return the frame for a payload that is already UTF-8 bytes."""
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Incremental decoder: :meth:`feed` bytes, then call :meth:`next_frame`.

    The length header is checked before any of the payload is buffered, so a
    hostile length costs nothing; at most one ``feed`` beyond the current
    frame is ever held.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer."""
        self._buffer += data

    @property
    def in_frame(self) -> bool:
        """True while part of a frame is buffered but not yet complete."""
        return bool(self._buffer)

    def next_frame(self) -> str | None:
        """Return the next whole frame's text, or None if more bytes are needed.

        Raises a :class:`FrameError` subclass for a negative or oversized
        length (the stream cannot be trusted after that) or for a payload that
        is not UTF-8 (:class:`InvalidUtf8`: that frame has been consumed, the stream is in step).
        """
        buffer = self._buffer
        if len(buffer) < HEADER_SIZE:
            return None
        (length,) = HEADER.unpack_from(buffer)
        if length < 0:
            raise NegativeLength(f"negative frame length {length}")
        if length > self.max_frame:
            raise FrameTooLarge(length, self.max_frame)
        end = HEADER_SIZE + length
        if len(buffer) < end:
            return None
        payload = bytes(buffer[HEADER_SIZE:end])
        # Deleting a bytearray's prefix is O(1) amortised in CPython.
        del buffer[:end]
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidUtf8(f"payload is not UTF-8: {exc.reason} at byte {exc.start}") from None

    def has_frame(self) -> bool:
        """True when :meth:`next_frame` would not ask for more bytes (a frame, or an error)."""
        buffer = self._buffer
        if len(buffer) < HEADER_SIZE:
            return False
        (length,) = HEADER.unpack_from(buffer)
        return length < 0 or length > self.max_frame or len(buffer) >= HEADER_SIZE + length

    def end_of_stream(self) -> None:
        """Signal EOF from the peer; raises :class:`TruncatedFrame` mid-frame."""
        if self._buffer:
            raise TruncatedFrame(f"stream ended {len(self._buffer)} bytes into a frame")


def timeval(seconds: float) -> bytes:
    """A ``struct timeval`` for SO_RCVTIMEO / SO_SNDTIMEO; 0 means no timeout.

    A positive timeout shorter than a microsecond is rounded up, never to 0.
    """
    whole = int(seconds)
    micro = max(int((seconds - whole) * 1_000_000), 1 if seconds > 0 else 0)
    return struct.pack("ll", whole, micro)


class FrameReader:
    """Blocking frame reader over a socket (or anything with ``recv``).

    The optional deadlines (seconds; None or 0 = none) bound how long a peer
    may hold the reading thread: ``first_frame_timeout`` from construction
    until the first whole frame, ``frame_timeout`` from a frame's first byte
    to its last, ``idle_timeout`` between frames.  They are enforced with the
    kernel's receive timeout (SO_RCVTIMEO) so that another thread may keep
    sending on the same socket under its own send timeout.
    """

    def __init__(
        self,
        sock,
        max_frame: int = MAX_FRAME,
        *,
        first_frame_timeout: float | None = None,
        frame_timeout: float | None = None,
        idle_timeout: float | None = None,
        clock=time.monotonic,
    ) -> None:
        self.sock = sock
        self.decoder = FrameDecoder(max_frame)
        self.frames_read = 0
        #: Bytes received so far (what an operator's "bytes in" counts).
        self.bytes_read = 0
        self._clock = clock
        self._first_frame_timeout = first_frame_timeout or 0
        self._frame_timeout = frame_timeout or 0
        self._idle_timeout = idle_timeout or 0
        self._timed = bool(self._first_frame_timeout or self._frame_timeout or self._idle_timeout)
        self._started = self._last_recv = clock()
        self._frame_started: float | None = None
        self._armed = 0.0

    @property
    def idle_timeout(self) -> float:
        """Seconds allowed between frames (0: no limit); it may change between reads."""
        return self._idle_timeout

    @idle_timeout.setter
    def idle_timeout(self, seconds: float | None) -> None:
        self._idle_timeout = seconds or 0
        self._timed = bool(self._first_frame_timeout or self._frame_timeout or self._idle_timeout)
        if not self._timed:
            self._arm(0)  # an untimed recv must not inherit the last deadline

    def has_frame(self) -> bool:
        """True when :meth:`read` would not wait for the peer (a whole frame, or an error, is buffered)."""
        return self.decoder.has_frame()

    def read(self) -> str | None:
        """Return the next frame's text, or None at a clean end of stream.

        Loops over short reads, so a frame split over many TCP segments and
        many frames in one segment both decode; raises :class:`FrameError`
        (:class:`FrameTimeout` when a deadline passes).
        """
        decoder = self.decoder
        while True:
            frame = decoder.next_frame()
            if frame is not None:
                self.frames_read += 1
                self._frame_started = None
                return frame
            if not self._timed:
                data = self.sock.recv(RECV_SIZE)
            else:
                kind, limit, remaining = self._deadline()
                if remaining <= 0:
                    raise FrameTimeout(kind, limit)
                self._arm(remaining if limit else 0)
                try:
                    data = self.sock.recv(RECV_SIZE)
                except (BlockingIOError, TimeoutError):
                    raise FrameTimeout(kind, limit) from None
            if not data:
                decoder.end_of_stream()
                return None
            self.bytes_read += len(data)
            if self._timed:
                self._last_recv = self._clock()
            decoder.feed(data)

    def _deadline(self) -> tuple[str, float, float]:
        """(which deadline applies, its length, seconds left) for the next recv."""
        now = self._clock()
        if self.decoder.in_frame and self._frame_timeout:
            if self._frame_started is None:
                # Everything before it was whole frames: this one began with the last recv.
                self._frame_started = self._last_recv
            limit = self._frame_timeout
            remaining = min(limit - (now - self._frame_started), self._first_left(now))
            return ("frame", limit, remaining)
        if self.frames_read == 0 and self._first_frame_timeout:
            return ("first", self._first_frame_timeout, self._first_left(now))
        return ("idle", self._idle_timeout, self._idle_timeout or float("inf"))

    def _first_left(self, now: float) -> float:
        if self.frames_read or not self._first_frame_timeout:
            return float("inf")
        return self._first_frame_timeout - (now - self._started)

    def _arm(self, seconds: float) -> None:
        if seconds == self._armed:
            return
        self._armed = seconds
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(seconds))

"""TLS for the chat: the server's listener side, the client's side, and a socket several threads can share.

Three threads use one chat socket (a reader and two listeners that send),
and an OpenSSL connection must never be used by two threads at once, nor be
left blocked inside OpenSSL.  So a TLS connection is a :class:`TlsStream`:
its SSL object is non-blocking and every OpenSSL call is made under the
stream's lock; waiting for the socket (``poll``) happens outside the lock,
so a reader waiting for data never holds up a sender.  The stream has the
socket methods the chat code uses (``recv``, ``sendall``, ``setsockopt``,
``shutdown``, ``close``), and it honours ``SO_RCVTIMEO``/``SO_SNDTIMEO`` as a
plain socket does, so the frame reader's deadlines and the send timeout
work unchanged.

:class:`TlsListener` holds the server's certificate and key (read again by
:meth:`TlsListener.reload`, on SIGHUP) and performs the handshake in the
connection's own thread, within ``--tls-handshake-timeout``: a client that
connects and sends nothing holds only its own thread, never the accept
loop.  A plaintext client on the TLS port (the original Go client, whose
first frame starts with a little-endian length, not a TLS record) gets one
readable frame saying so.  Nothing here knows about chat users: a later
WebSocket listener (``wss://``) can take its contexts from
:func:`server_context` and :class:`TlsListener` as they are.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import ssl
import struct
import threading
import time

logger = logging.getLogger("chatroom.server")

#: The first byte of a TLS record carrying a handshake message (a ClientHello).
TLS_HANDSHAKE_RECORD = 0x16
#: Seconds a plaintext client on the TLS port gets to take its one frame.
NOTICE_SEND_TIMEOUT = 1.0


class HandshakeFailed(Exception):
    """The TLS handshake did not complete; ``str()`` says why, for the log."""


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context for TLS 1.2 or later with this certificate chain and key.

    Raises ValueError with a one-line reason when they cannot be used
    (unreadable, not PEM, a key that does not match the certificate).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise ValueError(f"cannot use the certificate {cert_file!r} with the key {key_file!r}: {reason}") from None
    return context


def client_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client context that verifies the server: against the system's CAs, or ``ca_file``'s.

    TLS 1.2 or later, the host name checked.  Raises ValueError when
    ``ca_file`` cannot be read as PEM certificates.
    """
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise ValueError(f"cannot read CA certificates from {ca_file!r}: {reason}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def describe_tls_error(exc: BaseException) -> str:
    """One line for a user about a failed TLS connection (verification first: it is the common case)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the server's certificate was refused: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "TLS failed: the server did not finish the handshake in time"
    return f"TLS failed: {getattr(exc, 'strerror', None) or exc}"


def looks_like_tls(first_byte: bytes) -> bool:
    """Whether a connection's first byte starts a TLS handshake (False: a plaintext client)."""
    return first_byte[:1] == bytes([TLS_HANDSHAKE_RECORD])


def _seconds(timeval: bytes) -> float:
    seconds, micro = struct.unpack("ll", timeval)
    return seconds + micro / 1_000_000


class TlsStream:
    """One TLS connection that a reader and senders in other threads share safely.

    Made around an accepted plain socket (the handshake comes later, in
    :meth:`handshake`), or around a client's SSL socket that has finished
    its handshake (:meth:`connected`).  ``recv`` and ``sendall`` block like a
    socket's; each OpenSSL call is made under one lock, the waits outside it.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._raw: socket.socket | None = sock
        self._ssl: ssl.SSLSocket | None = None
        self._lock = threading.Lock()
        self._fileno = sock.fileno()
        self._recv_timeout = 0.0
        self._send_timeout = 0.0

    @classmethod
    def connected(cls, ssl_sock: ssl.SSLSocket) -> TlsStream:
        """A stream around a client's SSL socket whose handshake is done."""
        stream = cls.__new__(cls)
        ssl_sock.setblocking(False)
        stream._raw = None
        stream._ssl = ssl_sock
        stream._lock = threading.Lock()
        stream._fileno = ssl_sock.fileno()
        stream._recv_timeout = 0.0
        stream._send_timeout = 0.0
        return stream

    # --- the handshake (server side) ----------------------------------------------

    def handshake(self, context: ssl.SSLContext, timeout: float, plaintext_notice: bytes) -> str:
        """Complete the server side of the handshake within ``timeout`` seconds; returns the TLS version.

        A client whose first byte is not a TLS record, or that sends nothing
        in time, gets ``plaintext_notice`` (a whole frame) in clear.  Raises
        :class:`HandshakeFailed` (an OSError is turned into it too).
        """
        deadline = time.monotonic() + timeout
        try:
            first = self._peek_first_byte(deadline)
            if not looks_like_tls(first):
                self._send_notice(plaintext_notice)
                raise HandshakeFailed("a plaintext client on the TLS port" if first else "closed before a handshake")
            with self._lock:
                if self._raw is None:  # shut down meanwhile
                    raise HandshakeFailed("closed during the handshake")
                self._ssl = context.wrap_socket(self._raw, server_side=True, do_handshake_on_connect=False)
                self._raw = None
            while True:
                with self._lock:
                    try:
                        self._ssl.do_handshake()
                        return self._ssl.version() or "TLS"
                    except ssl.SSLWantReadError:
                        events = select.POLLIN
                    except ssl.SSLWantWriteError:
                        events = select.POLLOUT
                if not self._wait(events, deadline - time.monotonic()):
                    raise HandshakeFailed(f"no handshake within {timeout:g} s")
        except ssl.SSLError as exc:
            raise HandshakeFailed(f"TLS handshake failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise HandshakeFailed(f"TLS handshake failed: {exc.strerror or exc}") from None

    def _peek_first_byte(self, deadline: float) -> bytes:
        """The connection's first byte, left in place for OpenSSL; b"" if none came in time or it closed."""
        raw = self._raw
        while True:
            try:
                return raw.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                pass
            if not self._wait(select.POLLIN, deadline - time.monotonic()):
                # Silent: the original Go client, say, waiting for its user to type a name.
                return b""

    def _send_notice(self, frame: bytes) -> None:
        raw = self._raw
        if raw is None:
            return
        try:
            raw.setblocking(True)
            raw.settimeout(NOTICE_SEND_TIMEOUT)
            raw.sendall(frame)
        except OSError:
            pass

    # --- the socket methods the chat code uses ---------------------------------------

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes of plaintext; b"" at the end; TimeoutError after SO_RCVTIMEO."""
        deadline = time.monotonic() + self._recv_timeout if self._recv_timeout else None
        while True:
            with self._lock:
                if self._ssl is None:
                    raise OSError(errno.ENOTCONN, "no TLS session")
                try:
                    return self._ssl.recv(size)
                except ssl.SSLWantReadError:
                    events = select.POLLIN
                except ssl.SSLWantWriteError:
                    events = select.POLLOUT
            if not self._wait(events, None if deadline is None else deadline - time.monotonic()):
                raise TimeoutError("TLS receive timed out")

    def sendall(self, data: bytes) -> None:
        """Send all of ``data``; TimeoutError when the peer takes none of it for SO_SNDTIMEO."""
        view = memoryview(data)
        deadline = time.monotonic() + self._send_timeout if self._send_timeout else None
        while view:
            with self._lock:
                if self._ssl is None:
                    raise OSError(errno.ENOTCONN, "no TLS session yet")
                try:
                    # Retried with the same bytes after a "want": OpenSSL requires it.
                    view = view[self._ssl.send(view) :]
                    continue
                except ssl.SSLWantWriteError:
                    events = select.POLLOUT
                except ssl.SSLWantReadError:
                    events = select.POLLIN
            if not self._wait(events, None if deadline is None else deadline - time.monotonic()):
                raise TimeoutError("TLS send timed out")

    def _wait(self, events: int, timeout: float | None) -> bool:
        """Wait until the socket is ready for ``events``, or closed; False when ``timeout`` passed."""
        if timeout is not None and timeout <= 0:
            return False
        poller = select.poll()
        poller.register(self._fileno, events)
        try:
            return bool(poller.poll(None if timeout is None else max(1, int(timeout * 1000))))
        except InterruptedError:
            return True  # the caller retries the operation

    def setsockopt(self, level: int, option: int, value) -> None:
        """As a socket's; the receive and send timeouts are kept here (the socket is non-blocking)."""
        if level == socket.SOL_SOCKET and option == socket.SO_RCVTIMEO:
            self._recv_timeout = _seconds(value)
        elif level == socket.SOL_SOCKET and option == socket.SO_SNDTIMEO:
            self._send_timeout = _seconds(value)
        else:
            self._socket().setsockopt(level, option, value)

    def _socket(self) -> socket.socket:
        return self._ssl if self._ssl is not None else self._raw

    def shutdown(self, how: int) -> None:
        """Shut the connection down, waking every thread waiting on it.

        Original ``SSLSocket.shutdown`` drops the SSL object first, so a
        sender in another thread would then write in clear; the plain
        socket's is called instead, and the SSL object stays until close.
        """
        with self._lock:
            sock = self._socket()
            if sock is not None:
                socket.socket.shutdown(sock, how)

    def close(self) -> None:
        """Close the socket (no close_notify: the chat's frames say when a conversation ends)."""
        with self._lock:
            sock = self._socket()
            if sock is not None:
                sock.close()

    def fileno(self) -> int:
        """The socket's file descriptor."""
        return self._fileno

    def version(self) -> str | None:
        """The TLS version agreed, or None before the handshake."""
        return self._ssl.version() if self._ssl is not None else None


class TlsListener:
    """The server's certificate, read again on :meth:`reload`, and the handshake of each new connection."""

    def __init__(self, cert_file: str, key_file: str, handshake_timeout: float) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.handshake_timeout = handshake_timeout
        self.context = server_context(cert_file, key_file)

    def reload(self) -> bool:
        """Read the certificate and key again, for the connections that come next; False if unusable.

        An unusable pair (a renewal half written, a wrong key) is logged and
        the previous one kept: a bad file must not stop new users from
        connecting.
        """
        try:
            self.context = server_context(self.cert_file, self.key_file)
        except ValueError as exc:
            logger.error("TLS certificate not reloaded, keeping the previous one: %s", exc)
            return False
        logger.warning("TLS certificate reloaded from %s", self.cert_file)
        return True

    def stream(self, sock: socket.socket) -> TlsStream:
        """Wrap an accepted socket; no I/O (the handshake happens in the connection's thread)."""
        return TlsStream(sock)

    def handshake(self, stream: TlsStream, plaintext_notice: bytes) -> str:
        """Complete the handshake with the current certificate; returns the TLS version.

        Raises :class:`HandshakeFailed`.
        """
        return stream.handshake(self.context, self.handshake_timeout, plaintext_notice)

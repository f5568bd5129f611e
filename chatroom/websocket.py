"""The browsers' front door: the web page at ``/`` and the chat at ``/ws``, on websockets' threaded server.

One WebSocket text message carries one payload, in exactly the
``targetType:target:specialMark:message`` form a TCP frame carries, both
ways; so the server parses, limits and answers a browser as it does a
terminal.  The thread shape is the TCP one: websockets' handler thread is
the connection's reader (it runs ``handle_connection``, so ``read_client``,
``write_to_redis`` and ``message_processing``), and the same two pub/sub
listener threads forward the same Redis channels.  websockets adds one
thread per connection, the one that reads the socket into its protocol.
Its own keepalive thread is off: the reader sends the pings itself while it
waits for a message.

What is the same as over TCP: admission (``register``: max clients, the
per-address limit on the socket's address or on the one ``--trust-proxy``
names), the login and idle deadlines, the flood bucket, slow readers
(SO_SNDTIMEO on the socket under the TLS or WebSocket layer), invalid UTF-8
(answered, the connection stays), a message over ``--max-frame`` (answered
``Bad frame, closing: ...``, as a TCP frame is).  What only a WebSocket has:

* a binary message is answered (``ws_binary``) and the connection stays;
* pings every ``--ws-ping-interval`` keep an idle tab and the proxies on the
  way connected; a tab that has not answered the last one when the next is
  due is gone.  Pongs are not chat: no flood token, no activity, and they do
  not keep a nameless connection from its idle deadline;
* the Origin header must be the page's own origin (or one of
  ``--ws-origins``): no other site's page can open a chat in a visitor's
  name (cross-site WebSocket hijacking).  A client without an Origin is not
  a browser, and there is no page to hijack it from;
* compression is off: every frame would pay for it on this CPU-bound server;
* the page is served with a Content-Security-Policy that allows no inline
  script and no other origin.

websockets' internals (the protocol lock, ``process_event``, the server's
per-socket handler and its thread set) are used here and nowhere else, for
the websockets range pinned in setup.cfg; without the lock the send path
falls back to websockets' public ``send``.
"""

from __future__ import annotations

import collections
import email.utils
import ipaddress
import json
import logging
import math
import socket
import struct
import threading
import time
from importlib import resources

from websockets.datastructures import Headers, MultipleValuesError
from websockets.exceptions import ConnectionClosed
from websockets.frames import BINARY, CONT, DATA_OPCODES, TEXT, Frame
from websockets.http11 import Response
from websockets.protocol import OPEN
from websockets.sync.server import ServerConnection, serve

import protocol as p
from chatroom.connection import Connection, State, TokenBucket, system_payload
from framing import FrameTimeout, FrameTooLarge, InvalidUtf8

logger = logging.getLogger("chatroom.server")

#: Where the chat is; everything else is the page.
CHAT_PATH = "/ws"
#: A message up to this many times --max-frame is read and answered like an
#: over-long TCP frame; a longer one websockets refuses from its header alone
#: (close code 1009), before buffering it.
OVERSIZE_FACTOR = 4
#: Seconds for the opening handshake (a page request included), and for a
#: closing handshake the server starts.
OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 1.0
#: Close codes of a refusal: full or out of resources (try again later), or shutting down.
REFUSAL_CODES = {"server_shutdown": 1001}
TRY_AGAIN_LATER = 1013
LISTEN_BACKLOG = 1024
#: Sockets open on the web port beyond the chat's own limits (--max-clients, --max-per-ip):
#: the page's requests and handshakes in progress.  Past them a new socket is closed at
#: once, so that idle connections cannot pile up threads for the open timeout each.
SOCKETS_BEYOND_CLIENTS = 256
SOCKETS_BEYOND_PER_IP = 8

#: No inline script or style, nothing from another origin, no framing: a
#: string that reached the page as HTML could still not run.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: The files of the page (chatroom/static), by path, with their content types.
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/chat.css": ("chat.css", "text/css; charset=utf-8"),
    "/chat.js": ("chat.js", "text/javascript; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
#: The server's language, frame limit and texts, for the page.
PAGE_SETTINGS = "/page.json"

_SHORT_HEADER = struct.Struct("!BB")
_MEDIUM_HEADER = struct.Struct("!BBH")
_LONG_HEADER = struct.Struct("!BBQ")
_FIN_TEXT = 0x81


def text_frame(payload: bytes) -> bytes:
    """One WebSocket text frame, unfragmented and unmasked, as a server sends it (RFC 6455, 5.2)."""
    length = len(payload)
    if length < 126:
        return _SHORT_HEADER.pack(_FIN_TEXT, length) + payload
    if length < 1 << 16:
        return _MEDIUM_HEADER.pack(_FIN_TEXT, 126, length) + payload
    return _LONG_HEADER.pack(_FIN_TEXT, 127, length) + payload


class NotText(InvalidUtf8):
    """A binary message: whole (the stream is in step), but not the text a payload is."""

    answer = "ws_binary"


# --- pure rules ----------------------------------------------------------------------


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...] | None) -> bool:
    """Whether a page of ``origin`` may open the chat.

    ``allowed`` None: only the page's own origin, the one whose host (and
    port) the request was sent to (``host``, the Host header): what the
    browser shows in its address bar when it loaded the page from here.  The
    scheme is not compared, so that a proxy may add TLS in front.  No Origin
    at all: not a browser (a browser always sends one to a WebSocket).
    """
    if origin is None:
        return True
    origin = origin.lower()
    if allowed is not None:
        return origin in allowed
    scheme, separator, rest = origin.partition("://")
    return bool(separator) and scheme in ("http", "https") and host is not None and rest == host.lower()


def client_address(headers: Headers, header: str | None, peer: tuple) -> tuple[str, int]:
    """The client's (address, port): the socket's, or the last entry of the proxy's ``header``.

    The last entry is the one the trusted proxy added; entries before it are
    whatever the client sent.  A value that is not an address is ignored
    (logged), and the socket's address counts.
    """
    if header:
        values = headers.get_all(header)
        if values:
            last = values[-1].rsplit(",", 1)[-1].strip()
            try:
                return str(ipaddress.ip_address(last)), peer[1]
            except ValueError:
                logger.warning("%s: %r is not an address; counting the socket's, %s", header, last[:80], peer[0])
    return peer[0], peer[1]


# --- one browser --------------------------------------------------------------------


class ChatSocket(ServerConnection):
    """websockets' server connection, noting the kind (text or binary) of each whole message.

    websockets hands a message over as bytes or text, but text only after
    decoding it, failing the whole connection on invalid UTF-8; the chat
    answers that, as over TCP, and goes on.  So messages are taken as bytes,
    and their kinds noted here as their last frames arrive.
    """

    def __init__(self, *args, **kwargs) -> None:
        #: The opcode (TEXT, BINARY) of every whole message not yet read, oldest first.
        self.completed: collections.deque = collections.deque()
        self._opening = TEXT
        super().__init__(*args, **kwargs)  # starts the thread that calls process_event

    def process_event(self, event) -> None:
        """Note a message's kind before websockets queues its last frame for :meth:`recv`."""
        if self.request is not None and isinstance(event, Frame) and event.opcode in DATA_OPCODES:
            if event.opcode is not CONT:  # the first frame says the kind
                self._opening = event.opcode
            if event.fin:
                self.completed.append(self._opening)
        super().process_event(event)


class MessageReader:
    """A browser's payloads, one per text message, under the TCP reader's deadlines.

    The same interface as :class:`framing.FrameReader` (``read``,
    ``has_frame``, a settable ``idle_timeout``), the same exceptions.  The
    frame deadline does not apply: websockets buffers a message until it is
    whole, at most ``OVERSIZE_FACTOR`` x the frame limit; one that never
    finishes costs what an idle named user costs.  While it waits, the reader
    pings every ``ping_interval`` seconds; a peer that has not answered the
    last ping when the next is due is gone (ConnectionError, as a reset).
    """

    def __init__(
        self,
        websocket: ChatSocket,
        max_frame: int,
        *,
        first_frame_timeout: float | None = None,
        frame_timeout: float | None = None,  # unused: see the class docstring
        idle_timeout: float | None = None,
        ping_interval: float = 0.0,
        clock=time.monotonic,
    ) -> None:
        self.websocket = websocket
        self.max_frame = max_frame
        self.frames_read = 0
        self.idle_timeout = idle_timeout
        self._first_frame_timeout = first_frame_timeout or 0
        self._ping_interval = ping_interval or 0
        self._clock = clock
        self._started = self._last_message = clock()
        self._next_ping = self._started + self._ping_interval
        self._pong: threading.Event | None = None

    @property
    def idle_timeout(self) -> float:
        """Seconds allowed between messages (0: no limit); it may change between reads."""
        return self._idle_timeout

    @idle_timeout.setter
    def idle_timeout(self, seconds: float | None) -> None:
        self._idle_timeout = seconds or 0

    def has_frame(self) -> bool:
        """True when a whole message is waiting: :meth:`read` would not wait for the peer."""
        return bool(self.websocket.completed)

    def read(self) -> str | None:
        """Return the next message's text, or None once the WebSocket is closed.

        Raises :class:`~framing.FrameTimeout` when a deadline passes,
        :class:`NotText` for a binary message, :class:`~framing.InvalidUtf8`,
        :class:`~framing.FrameTooLarge` for a message over the frame limit,
        ConnectionError for a peer that stopped answering pings.
        """
        websocket = self.websocket
        while True:
            now = self._clock()
            kind, limit, remaining = self._deadline(now)
            if remaining <= 0:
                raise FrameTimeout(kind, limit)
            if self._ping_interval:
                if now >= self._next_ping:
                    try:
                        self._ping(now)
                    except ConnectionClosed:
                        return None
                    continue
                remaining = min(remaining, self._next_ping - now)
            try:
                data = websocket.recv(None if math.isinf(remaining) else remaining, decode=False)
            except TimeoutError:
                continue
            except ConnectionClosed:
                return None
            opcode = websocket.completed.popleft()
            self.frames_read += 1
            self._last_message = self._clock()
            if opcode is BINARY:
                raise NotText(f"binary message of {len(data)} bytes")
            if len(data) > self.max_frame:
                raise FrameTooLarge(len(data), self.max_frame)
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidUtf8(f"payload is not UTF-8: {exc.reason} at byte {exc.start}") from None

    def _deadline(self, now: float) -> tuple[str, float, float]:
        """(which deadline applies, its length, seconds left) for the next wait."""
        if self.frames_read == 0 and self._first_frame_timeout:
            return "first", self._first_frame_timeout, self._first_frame_timeout - (now - self._started)
        if self._idle_timeout:
            return "idle", self._idle_timeout, self._idle_timeout - (now - self._last_message)
        return "idle", 0, math.inf

    def _ping(self, now: float) -> None:
        if self._pong is not None and not self._pong.is_set():
            logger.info("no pong within %g s from %s", self._ping_interval, self.websocket.remote_address)
            raise ConnectionError(f"no pong within {self._ping_interval:g} s")
        self._pong = self.websocket.ping()
        self._next_ping = now + self._ping_interval


class WebSocketConnection(Connection):
    """A chat client in a browser: every payload is one text message, both ways.

    ``sock`` is the socket under the WebSocket (and TLS) layers, where the
    server sets its options (the send timeout that drops slow readers,
    keepalive); what is sent and read goes through ``websocket``.
    """

    def __init__(self, websocket: ChatSocket, address: tuple, bucket: TokenBucket, *, max_frame: int, lang: str,
                 ping_interval: float, secure: bool = False) -> None:
        super().__init__(websocket.socket, address, bucket, max_frame=max_frame, lang=lang)
        self.websocket = websocket
        self.ping_interval = ping_interval
        #: Over wss://: what the browser sends is encrypted on the way.
        self.secure = secure
        # websockets' lock around its protocol and socket; without it (another
        # websockets), the public send, one call per message.
        self._protocol_lock = getattr(websocket, "protocol_mutex", None)

    def __repr__(self) -> str:
        return f"<Connection {self.id or '?'} {self.name!r} {self.address[0]}:{self.address[1]} websocket>"

    def send_payloads(self, payloads) -> bool:
        """Send server payloads, each as one text message; False once the client is gone.

        All of them in one write, under websockets' own lock, so that they
        never interleave with its pongs and close frames.  A failed or
        timed-out send drops the client, as over TCP.
        """
        messages = [payload + b"\n" for payload in payloads]
        websocket = self.websocket
        with self.send_lock:
            if self.state >= State.LEAVING:
                return False
            try:
                if self._protocol_lock is None:
                    for message in messages:
                        websocket.send(message, text=True)
                    return True
                data = b"".join([text_frame(message) for message in messages])
                with self._protocol_lock:
                    if websocket.protocol.state is not OPEN:
                        raise ConnectionError("the WebSocket is closing")
                    websocket.socket.sendall(data)
                return True
            except (OSError, ConnectionClosed) as exc:
                logger.info("%r: send failed (%s); dropping the client", self, exc)
                self.advance(State.LEAVING)
        self.shutdown_socket()
        return False

    def shutdown_socket(self) -> None:
        """Wake every thread blocked on this connection: websockets' reading thread ends, and with it the reader."""
        try:
            # socket.socket's own shutdown: an SSLSocket's would drop its TLS
            # state under the threads still using it.
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass

    @property
    def encrypted(self) -> bool:
        """A wss:// connection is (``tls`` stays False: there is no TLS port handshake left to make)."""
        return self.secure

    def close(self) -> None:
        """Nothing to do: websockets closes the socket when the handler (this connection's reader) returns."""

    def frame_reader(self, max_frame: int, **deadlines: float) -> MessageReader:
        """The reader of this client's messages, under the server's limits."""
        return MessageReader(self.websocket, max_frame, ping_interval=self.ping_interval, **deadlines)


# --- the listener ---------------------------------------------------------------------


class WebSocketListener:
    """The page and the chat on ``--ws-port``, on websockets' threaded server.

    Handed what it needs from the server: the settings, ``register`` (the
    admission rules every listener shares; it returns None, or a refusal's
    text key and values) and ``handle_connection`` (run in websockets'
    handler thread, which so becomes the connection's reader).
    ``ssl_context``: serve ``https://`` and ``wss://``.
    """

    def __init__(self, config, register, handle_connection, *, ssl_context=None) -> None:
        self.config = config
        self.register = register
        self.handle_connection = handle_connection
        self.ssl_context = ssl_context
        self._server = None
        self._address: tuple[str, int] | None = None
        self._thread: threading.Thread | None = None
        self._pages: dict[str, tuple[bytes, str]] = {}
        self._sockets_lock = threading.Lock()
        self._sockets = 0
        self._sockets_per_ip: dict[str, int] = {}

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the listener is bound to (still known once it is closed)."""
        assert self._address is not None, "call bind() first"
        return self._address

    @property
    def port(self) -> int:
        """The port of the page and the chat (useful with --ws-port 0)."""
        return self.address[1]

    @property
    def url(self) -> str:
        """Where a browser finds the page."""
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.ssl_context is not None else 'http'}://{host}:{port}/"

    def bind(self) -> None:
        """Load the page and open the listening socket; OSError names the web address."""
        config = self.config
        self._pages = self.load_pages()
        host = config.ws_host or config.host
        try:
            self._server = serve(
                self._serve,
                host,
                config.ws_port,
                ssl=self.ssl_context,
                compression=None,
                process_request=self._route,
                server_header=None,
                open_timeout=OPEN_TIMEOUT,
                ping_interval=None,  # the reader pings (MessageReader): no keepalive thread per connection
                close_timeout=CLOSE_TIMEOUT,
                max_size=config.max_frame * OVERSIZE_FACTOR,
                logger=logging.getLogger("chatroom.server.websocket"),
                create_connection=ChatSocket,
                backlog=LISTEN_BACKLOG,
            )
        except OSError as exc:
            raise OSError(exc.errno, f"the web port {host}:{config.ws_port}: {exc.strerror}") from None
        self._address = self._server.socket.getsockname()[:2]
        self._server.handler = self._bounded(self._server.handler)

    def load_pages(self) -> dict[str, tuple[bytes, str]]:
        """The page's files and settings, by path: read once, served from memory."""
        static = resources.files("chatroom") / "static"
        pages = {path: ((static / name).read_bytes(), kind) for path, (name, kind) in STATIC_FILES.items()}
        settings = {"lang": self.config.lang, "maxFrame": self.config.max_frame, "texts": p.TEXTS}
        pages[PAGE_SETTINGS] = (json.dumps(settings, ensure_ascii=False).encode(), "application/json")
        return pages

    def reload_certificate(self, cert_file: str, key_file: str) -> None:
        """Serve the connections that come next with this certificate and key (SIGHUP).

        Loaded into the context the listening socket already wraps every
        accepted socket with; the caller has checked that the pair loads.
        """
        self.ssl_context.load_cert_chain(cert_file, key_file)

    def start(self) -> None:
        """Accept in a thread of its own."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="websocket-accept", daemon=True)
        self._thread.start()
        logger.info("web page at %s, chat at %s", self.url, CHAT_PATH)

    def stop(self) -> None:
        """Stop accepting and wait for the handlers left (chat connections are ended by the server first)."""
        if self._server is None:
            return
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join(CLOSE_TIMEOUT)

    # --- one request ----------------------------------------------------------------

    def _bounded(self, handle_socket):
        """websockets' per-socket handler, run only within the bounds on open sockets.

        Behind a trusted proxy every socket comes from the proxy: then only the
        total is bounded, and the chat's per-address limit, on the header's
        address, does the rest.
        """
        config = self.config
        server = self._server
        total = config.max_clients + SOCKETS_BEYOND_CLIENTS
        per_ip = config.max_per_ip + SOCKETS_BEYOND_PER_IP if config.max_per_ip and not config.trust_proxy else 0

        def bounded(sock: socket.socket, address) -> None:
            ip = address[0]
            with self._sockets_lock:
                admitted = self._sockets < total and not (per_ip and self._sockets_per_ip.get(ip, 0) >= per_ip)
                if admitted:
                    self._sockets += 1
                    self._sockets_per_ip[ip] = self._sockets_per_ip.get(ip, 0) + 1
            if not admitted:
                logger.warning("refusing a socket on the web port from %s:%d: too many open", ip, address[1])
                sock.close()
                # What websockets' handler does last, so that its shutdown does not wait for this thread.
                with server.lock:
                    server.handler_threads.discard(threading.current_thread())
                return
            try:
                handle_socket(sock, address)
            finally:
                with self._sockets_lock:
                    self._sockets -= 1
                    self._sockets_per_ip[ip] -= 1
                    if not self._sockets_per_ip[ip]:
                        del self._sockets_per_ip[ip]

        return bounded

    def _route(self, connection: ServerConnection, request) -> Response | None:
        """The page's files by path; at /ws, the origin check, then the WebSocket handshake."""
        path = request.path.partition("?")[0]
        if path == CHAT_PATH:
            try:
                origin, host = request.headers.get("Origin"), request.headers.get("Host")
            except MultipleValuesError:
                return connection.respond(400, "One Origin and one Host header, please\n")
            if not origin_allowed(origin, host, self.config.ws_origins):
                logger.warning("refusing a WebSocket from a page of %r (not this page's origin)", origin[:200])
                return connection.respond(403, "A page of this origin may not open the chat\n")
            return None
        page = self._pages.get(path)
        if page is None:
            return connection.respond(404, "Not found\n")
        return page_response(*page)

    def _serve(self, websocket: ChatSocket) -> None:
        """websockets' handler: admit the browser, then be its reader until it leaves."""
        config = self.config
        try:
            peer = websocket.remote_address
        except OSError:  # gone already
            return
        address = client_address(websocket.request.headers, config.trust_proxy, peer)
        bucket = TokenBucket(config.rate_limit, config.rate_burst)
        conn = WebSocketConnection(
            websocket, address, bucket, max_frame=config.max_frame, lang=config.lang,
            ping_interval=config.ws_ping_interval, secure=self.ssl_context is not None,
        )
        conn.reader_thread = threading.current_thread()
        refusal = self.register(conn)
        if refusal is not None:
            reason, values = refusal
            self._refuse(websocket, reason, values)
            return
        self.handle_connection(conn)

    def _refuse(self, websocket: ChatSocket, reason: str, values: dict) -> None:
        """The TCP refusal's one system message, then a close frame."""
        payload = system_payload(p.INDIVIDUAL, "", p.text(self.config.lang, reason, **values))
        try:
            websocket.send(payload + b"\n", text=True)
            websocket.close(REFUSAL_CODES.get(reason, TRY_AGAIN_LATER))
        except ConnectionClosed:
            pass


def page_response(body: bytes, content_type: str) -> Response:
    """A 200 response with one of the page's files, under the page's security headers."""
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            ("Cache-Control", "no-cache"),
        ]
    )
    return Response(200, "OK", headers, body)

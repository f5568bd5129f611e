"""The benchmark's load generator: one worker process holding many chat clients.

A worker owns a share of the clients and serves them all from one ``epoll``
loop with non-blocking sockets, so a few worker processes carry thousands of
clients without a thread each.  The orchestrator (``bench/run.py``) drives it
over a pipe, one command at a time, and every command answers with one reply:

    ("login", first, count, window, timeout)   connect and name clients
    ("join", room_size, timeout)               client i joins room i // room_size
    ("chat", spec)                             send numbered messages, check deliveries
    ("quiet", seconds, timeout)                wait until nothing has arrived for a while
    ("reset", count[, everyone])               reset (RST, no goodbye) the first ``count`` logged-in
                                               clients (everyone: open ones, logged in or not)
    ("stats",)                                 frames seen, shutdown notices, clients still open
    ("close",)                                 close every client and exit

Every client reads all the time, whatever the phase, so the server never
blocks on a full socket buffer of ours.

With ``transport="ws"`` the clients speak WebSocket to the server's
``/ws`` instead (the ``websocket`` scenario): the same payloads, one text
message each, masked with a zero key (legal, and free), and the server's
pings answered.

Chat messages carry their own evidence::

    channel:<room>:<name>:m<sid> <seq> <t_send_ns>\\n

(``<room>`` is ``channel1``, the lobby, unless the clients joined rooms: then
each sender writes to its own room, and a receiver expects the senders of its
room only; a message of another room is *foreign*.)

``sid`` is the sender's index (so a delivery whose name does not match the
sender's is *misattributed*), ``seq`` counts that sender's messages from 0
and ``t_send_ns`` is ``time.monotonic_ns()`` when the sender wrote it, one
clock for every process of this machine, so a receiver computes the
end-to-end latency on its own.  Each receiver checks each sender's sequence:
lost, duplicated and reordered deliveries are counted, not guessed.
"""

from __future__ import annotations

import os
import re
import select
import socket
import struct
import time
from array import array

HEADER = struct.Struct("<i")
unpack_header = HEADER.unpack_from
RECV_SIZE = 262144

CHAT = re.compile(rb"channel:([^:]*):([^:]*):m(\d+) (\d+) (\d+)\n\Z", re.DOTALL)
LOBBY = b"channel1"


def room_of(index: int, room_size: int) -> bytes:
    """The room client ``index`` joins when the clients go in rooms of ``room_size`` (fixed width)."""
    return f"r{index // room_size:04d}".encode()


def frame(text: str) -> bytes:
    data = text.encode("utf-8")
    return HEADER.pack(len(data)) + data


def tcp_frame(data: bytes) -> bytes:
    return HEADER.pack(len(data)) + data


# --- WebSocket ---------------------------------------------------------------------

WS_HANDSHAKE = (
    "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: YmVuY2gtbG9hZGdlbmtleQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
WS_TEXT, WS_CLOSE, WS_PING, WS_PONG = 0x1, 0x8, 0x9, 0xA
_WS_SHORT = struct.Struct("!BB4x")  # the zero mask key follows the length
_WS_MEDIUM = struct.Struct("!BBH4x")


def ws_frame(data: bytes, opcode: int = WS_TEXT) -> bytes:
    """A client's frame: final, masked (clients must mask) with the key 0, which leaves the payload as it is."""
    length = len(data)
    if length < 126:
        return _WS_SHORT.pack(0x80 | opcode, 0x80 | length) + data
    return _WS_MEDIUM.pack(0x80 | opcode, 0x80 | 126, length) + data


def ws_open(sock: socket.socket, port: int) -> None:
    """The opening handshake, blocking; the server sends nothing after it until spoken to."""
    sock.sendall(WS_HANDSHAKE.format(port=port).encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            raise OSError("closed during the WebSocket handshake")
        response += chunk
    if not response.startswith(b"HTTP/1.1 101"):
        status = response.split(b"\r\n", 1)[0]
        raise OSError(f"WebSocket handshake refused: {status!r}")


def name_of(index: int) -> str:
    """Client ``index``'s nickname (fixed width keeps every chat frame one size)."""
    return f"u{index:05d}"


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class Client:
    __slots__ = (
        "acked",
        "closed",
        "encode",
        "fd",
        "index",
        "join_reply",
        "logged_in",
        "login_reply",
        "login_sent_at",
        "name",
        "next_seq",
        "rest",
        "room",
        "seen",
        "sent",
        "sid",
        "sock",
    )

    def __init__(self, index: int, sock: socket.socket, encode=tcp_frame) -> None:
        self.index = index
        self.sock = sock
        self.encode = encode  # a payload's bytes -> what goes on the wire
        self.fd = sock.fileno()
        self.rest = b""
        self.name = name_of(index)
        self.login_reply = f"individual:{self.name}:changeNameFirst1:{self.name}\n".encode()
        self.logged_in = False
        self.login_sent_at = 0
        self.room = LOBBY  # where it chats and is a member (beside the lobby)
        self.join_reply: bytes | None = None  # awaited while joining a room
        self.next_seq: list[int] = []  # per sender: the sequence number expected next
        self.seen: list[bytearray | None] = []  # per sender: which seqs arrived, once out of order
        self.sid = -1  # this client's sender index, if it sends
        self.sent = 0
        self.acked = 0
        self.closed = False


class ChatRun:
    """The state of one ``chat`` command: who sends, what every receiver expects."""

    def __init__(self, spec: dict, clients: dict[int, Client]) -> None:
        self.count = spec["count"]  # messages per sender
        self.window = spec.get("window")  # closed loop: unacknowledged messages at most
        self.rate = spec.get("rate")  # open loop: messages per second per sender
        self.t0 = spec["t0"]  # monotonic_ns at which sending starts (same in every worker)
        self.deadline = spec["deadline"]
        self.sender_names = [name.encode() for name in spec["sender_names"]]
        nsenders = len(self.sender_names)
        room_size = spec.get("room_size")
        #: The room each sender writes to: the lobby, or its own room.
        self.sender_rooms = [room_of(i, room_size) if room_size else LOBBY for i in spec["sender_indexes"]]
        self.receivers = [c for c in clients.values() if c.logged_in and not c.closed]
        self.expected_total = 0
        for c in self.receivers:
            c.next_seq = [0] * nsenders
            c.seen = [None] * nsenders
            c.sid = -1
            self.expected_total += self.count * self.sender_rooms.count(c.room)
        # Senders of this worker: sid -> client.
        self.senders = {}
        for sid, index in enumerate(spec["sender_indexes"]):
            c = clients.get(index)
            if c is not None:
                c.sid, c.sent, c.acked = sid, 0, 0
                self.senders[sid] = c
        self.delivered = 0
        self.duplicated = 0
        self.reordered = 0
        self.misattributed = 0
        self.foreign = 0  # chat frames of no run (should not happen)
        self.latencies = array("q")  # microseconds, one per delivery
        self.first_recv = 0
        self.last_recv = 0
        self.started = False

    def start(self) -> None:
        self.started = True
        if self.window:
            for c in self.senders.values():
                for _ in range(min(self.window, self.count)):
                    self.send(c)

    def send(self, c: Client) -> None:
        seq = c.sent
        c.sent += 1
        data = b"channel:" + c.room + f"::m{c.sid:03d} {seq:06d} {time.monotonic_ns()}".encode()
        c.sock.sendall(c.encode(data))

    def due_sends(self, now: int) -> int | None:
        """Open loop: send what is due; return the next due time (ns) or None."""
        if not self.rate:
            return None
        period = 1_000_000_000 / self.rate
        nxt = None
        for sid, c in self.senders.items():
            # Senders are spread evenly over one period, so the load is smooth.
            offset = self.t0 + int(period * sid / max(1, len(self.sender_names)))
            while c.sent < self.count and offset + int(c.sent * period) <= now:
                self.send(c)
            if c.sent < self.count:
                due = offset + int(c.sent * period)
                nxt = due if nxt is None else min(nxt, due)
        return nxt

    def done(self) -> bool:
        return self.delivered + self.duplicated >= self.expected_total and all(
            c.sent >= self.count for c in self.senders.values()
        )

    def result(self) -> dict:
        lost = 0
        for c in self.receivers:
            for sid, nxt in enumerate(c.next_seq):
                if self.sender_rooms[sid] != c.room:
                    continue  # not one of its rooms: nothing expected
                seen = c.seen[sid]
                got = nxt if seen is None else sum(seen)
                lost += self.count - got
        return {
            "delivered": self.delivered,
            "expected": self.expected_total,
            "lost": lost,
            "duplicated": self.duplicated,
            "reordered": self.reordered,
            "misattributed": self.misattributed,
            "foreign": self.foreign,
            "first_recv": self.first_recv,
            "last_recv": self.last_recv,
            "latencies": self.latencies.tobytes(),
            "sent": sum(c.sent for c in self.senders.values()),
        }


class Worker:
    def __init__(self, port: int, conn, transport: str = "tcp") -> None:
        self.port = port
        self.conn = conn  # multiprocessing pipe end
        self.websocket = transport == "ws"
        self.read_client = self.on_readable_ws if self.websocket else self.on_readable
        self.epoll = select.epoll()
        self.clients: dict[int, Client] = {}
        self.by_fd: dict[int, Client] = {}
        self.run: ChatRun | None = None
        self.frames = 0
        self.shutdown_notices = 0
        self.last_frame_at = time.monotonic()
        self.errors: list[str] = []

    # --- the loop -------------------------------------------------------------

    def poll(self, timeout: float) -> None:
        """Serve every readable client once; ``timeout`` bounds the wait."""
        for fd, _ in self.epoll.poll(timeout):
            c = self.by_fd.get(fd)
            if c is not None:
                self.read_client(c)

    def on_readable(self, c: Client) -> None:
        try:
            data = c.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.drop(c, f"recv: {exc}")
            return
        if not data:
            self.drop(c, "closed by the server")
            return
        now = time.monotonic_ns()
        if c.rest:
            data = c.rest + data
        end = len(data)
        pos = 0
        run = self.run
        frames = 0
        while end - pos >= 4:
            (length,) = unpack_header(data, pos)
            stop = pos + 4 + length
            if length < 0 or stop > end:
                break
            payload = data[pos + 4 : stop]
            pos = stop
            frames += 1
            if payload[:8] == b"channel:" and payload[-8:-1].isdigit():
                m = CHAT.match(payload)
                if m is not None:
                    if run is None:
                        self.foreign_chat(c)
                    else:
                        self.on_chat(run, c, m, now)
                    continue
            if not c.logged_in and payload == c.login_reply:
                c.logged_in = True
            elif c.join_reply is not None and payload == c.join_reply:
                c.join_reply = None  # joined
            elif payload.endswith(b":The server is shutting down\n"):
                self.shutdown_notices += 1
        c.rest = data[pos:] if pos < end else b""
        self.frames += frames
        self.last_frame_at = time.monotonic()

    def on_readable_ws(self, c: Client) -> None:
        """:meth:`on_readable` for WebSocket frames (kept apart: the TCP loop is the hot path of the others)."""
        try:
            data = c.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.drop(c, f"recv: {exc}")
            return
        if not data:
            self.drop(c, "closed by the server")
            return
        now = time.monotonic_ns()
        if c.rest:
            data = c.rest + data
        end = len(data)
        pos = 0
        run = self.run
        frames = 0
        while end - pos >= 2:
            first, length = data[pos], data[pos + 1] & 0x7F
            header = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                header = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                header = 10
            stop = pos + header + length
            if stop > end:
                break
            payload = data[pos + header : stop]
            pos = stop
            opcode = first & 0x0F
            if opcode != WS_TEXT:
                if opcode == WS_PING:
                    c.sock.sendall(ws_frame(payload, WS_PONG))
                elif opcode == WS_CLOSE:
                    self.drop(c, f"close frame {payload[:2].hex()} from the server")
                    return
                continue
            frames += 1
            if payload[:8] == b"channel:" and payload[-8:-1].isdigit():
                m = CHAT.match(payload)
                if m is not None:
                    if run is None:
                        self.foreign_chat(c)
                    else:
                        self.on_chat(run, c, m, now)
                    continue
            if not c.logged_in and payload == c.login_reply:
                c.logged_in = True
            elif c.join_reply is not None and payload == c.join_reply:
                c.join_reply = None  # joined
            elif payload.endswith(b":The server is shutting down\n"):
                self.shutdown_notices += 1
        c.rest = data[pos:] if pos < end else b""
        self.frames += frames
        self.last_frame_at = time.monotonic()

    def foreign_chat(self, c: Client) -> None:
        self.errors.append(f"{c.name}: chat frame outside a run")

    def on_chat(self, run: ChatRun, c: Client, m, now: int) -> None:
        room, name, sid, seq, ts = m.groups()
        sid = int(sid)
        seq = int(seq)
        if sid >= len(run.sender_names) or not c.next_seq or room != run.sender_rooms[sid] or room != c.room:
            run.foreign += 1
            return
        if name != run.sender_names[sid]:
            run.misattributed += 1
        expected = c.next_seq[sid]
        seen = c.seen[sid]
        if seq == expected and seen is None:
            c.next_seq[sid] = expected + 1
            run.delivered += 1
        else:
            if seen is None:
                seen = c.seen[sid] = bytearray(run.count)
                seen[:expected] = b"\x01" * expected
            if seq >= run.count or seen[seq]:
                run.duplicated += 1
                return
            seen[seq] = 1
            run.delivered += 1
            if seq < c.next_seq[sid]:
                run.reordered += 1
            else:
                c.next_seq[sid] = seq + 1
        run.latencies.append((now - int(ts)) // 1000)
        if not run.first_recv:
            run.first_recv = now
        run.last_recv = now
        if c.sid == sid:
            c.acked += 1
            if run.window and c.sent < run.count:
                run.send(c)

    def drop(self, c: Client, why: str) -> None:
        if c.closed:
            return
        c.closed = True
        if len(self.errors) < 20:
            self.errors.append(f"{c.name}: {why}")
        try:
            self.epoll.unregister(c.fd)
        except (OSError, ValueError):
            pass
        self.by_fd.pop(c.fd, None)
        c.sock.close()

    # --- commands --------------------------------------------------------------

    def login(self, first: int, count: int, window: int, timeout: float) -> dict:
        """Connect and name clients first..first+count-1, ``window`` logins at a time."""
        t_start = time.monotonic()
        deadline = t_start + timeout
        pending: list[Client] = []
        todo = list(range(first, first + count))
        todo.reverse()
        login_times = array("q")
        failed = 0
        while (todo or pending) and time.monotonic() < deadline:
            while todo and len(pending) < window:
                index = todo.pop()
                try:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                    if self.websocket:
                        ws_open(sock, self.port)
                except OSError as exc:
                    self.errors.append(f"connect {index}: {exc}")
                    failed += 1 + len(todo)
                    todo.clear()
                    break
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                c = Client(index, sock, ws_frame if self.websocket else tcp_frame)
                self.clients[index] = c
                self.by_fd[c.fd] = c
                sock.sendall(c.encode(f"individual::changeNameFirst:{c.name}".encode()))
                sock.setblocking(False)
                self.epoll.register(c.fd, select.EPOLLIN)
                c.login_sent_at = time.monotonic_ns()
                pending.append(c)
            self.poll(0.05)
            still = []
            now = time.monotonic_ns()
            for c in pending:
                if c.logged_in:
                    login_times.append((now - c.login_sent_at) // 1000)
                elif c.closed:
                    failed += 1
                else:
                    still.append(c)
            pending = still
        failed += len(pending) + len(todo)
        return {
            "logged_in": sum(1 for c in self.clients.values() if c.logged_in and not c.closed),
            "failed": failed,
            "seconds": time.monotonic() - t_start,
            "login_us": login_times.tobytes(),
            "errors": self.errors[-5:],
        }

    def join(self, room_size: int, timeout: float) -> dict:
        """Every client joins room ``index // room_size``; the reply once every join1 is in."""
        t_start = time.monotonic()
        joining = [c for c in self.clients.values() if c.logged_in and not c.closed]
        for c in joining:
            c.room = room_of(c.index, room_size)
            c.join_reply = b"individual:" + c.name.encode() + b":join1:" + c.room + b"\n"
            c.sock.setblocking(True)
            c.sock.sendall(c.encode(b"channel:" + c.room + b":join:"))
            c.sock.setblocking(False)
        deadline = t_start + timeout
        while time.monotonic() < deadline and any(c.join_reply is not None and not c.closed for c in joining):
            self.poll(0.05)
        return {
            "joined": sum(1 for c in joining if c.join_reply is None and not c.closed),
            "seconds": time.monotonic() - t_start,
            "errors": self.errors[-5:],
        }

    def reset(self, count: int, everyone: bool = False) -> dict:
        """Close ``count`` logged-in clients (``everyone``: open ones, logged in or not) with a reset
        (SO_LINGER 0), as a crashed client would."""
        done = 0
        for c in list(self.clients.values()):
            if done >= count:
                break
            if (c.logged_in or everyone) and not c.closed:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.drop(c, "reset by the benchmark")
                done += 1
        return {"reset": done}

    def chat(self, spec: dict) -> dict:
        run = self.run = ChatRun(spec, self.clients)
        cpu0 = cpu_seconds()
        while time.monotonic_ns() < run.t0:
            self.poll(max(0.0, min(0.05, (run.t0 - time.monotonic_ns()) / 1e9)))
        cpu_start = cpu_seconds()
        run.start()
        while not run.done() and time.monotonic_ns() < run.deadline:
            nxt = run.due_sends(time.monotonic_ns())
            wait = 0.05 if nxt is None else max(0.0, min(0.05, (nxt - time.monotonic_ns()) / 1e9))
            self.poll(wait)
        cpu_end = cpu_seconds()
        self.run = None
        result = run.result()
        result["cpu"] = cpu_end - cpu_start
        result["cpu_idle_wait"] = cpu_start - cpu0
        result["timed_out"] = not run.done()
        result["errors"] = self.errors[-5:]
        return result

    def quiet(self, seconds: float, timeout: float) -> dict:
        """Read until no frame has arrived for ``seconds`` (or ``timeout``)."""
        t_end = time.monotonic() + timeout
        self.last_frame_at = time.monotonic()
        while time.monotonic() < t_end:
            self.poll(0.05)
            if time.monotonic() - self.last_frame_at >= seconds:
                return {"quiet": True}
        return {"quiet": False}

    def serve(self) -> None:
        conn = self.conn
        self.epoll.register(conn.fileno(), select.EPOLLIN)
        while True:
            # Idle: keep reading the clients while waiting for the next command.
            while not conn.poll():
                self.poll(0.05)
            command, *args = conn.recv()
            if command == "close":
                for c in list(self.clients.values()):
                    self.drop(c, "closing")
                conn.send({"closed": True})
                return
            if command == "login":
                conn.send(self.login(*args))
            elif command == "join":
                conn.send(self.join(*args))
            elif command == "chat":
                conn.send(self.chat(*args))
            elif command == "quiet":
                conn.send(self.quiet(*args))
            elif command == "ping":
                conn.send({"cpu": cpu_seconds(), "frames": self.frames})
            elif command == "reset":
                conn.send(self.reset(*args))
            elif command == "stats":
                self.poll(0.2)
                conn.send({
                    "frames": self.frames,
                    "shutdown_notices": self.shutdown_notices,
                    "open": sum(1 for c in self.clients.values() if not c.closed),
                })
            else:
                conn.send({"error": f"unknown command {command!r}"})


def worker_main(port: int, conn, transport: str = "tcp") -> None:
    """Entry point of a worker process; ``transport``: "tcp" (frames) or "ws" (WebSocket messages)."""
    try:
        Worker(port, conn, transport).serve()
    except KeyboardInterrupt:
        pass

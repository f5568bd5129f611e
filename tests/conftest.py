"""Fixtures: a Redis (fakeredis, and a real redis-server when one is installed),
servers started in-process on free ports, and a raw protocol client."""

from __future__ import annotations

import itertools
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import fakeredis
import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis_process import REDIS_SERVER, RedisProcess, free_port  # noqa: F401 - tests import them from here

from chatroom.config import Config
from framing import FrameReader, encode
from server import ChatServer

_prefixes = itertools.count()

#: One factor for the short timing bounds of the tests (deadlines, pacing, "at most so long"):
#: CHATROOM_TEST_TIMING=3 gives a loaded machine three times as long.
TIMING = float(os.environ.get("CHATROOM_TEST_TIMING", "1"))


def scaled(seconds: float) -> float:
    """``seconds`` times the suite's timing factor (see :data:`TIMING`)."""
    return seconds * TIMING


def threads_back_to(baseline: set[threading.Thread], timeout: float = 10.0) -> list[threading.Thread]:
    """Join every thread started since ``baseline``; return those still alive.

    A connection's last thread says it is done just before it returns, so
    counting threads right after the server reports no connections can still
    see it: join instead.
    """
    deadline = time.monotonic() + timeout
    for thread in set(threading.enumerate()) - baseline:
        try:
            thread.join(max(0.0, deadline - time.monotonic()))
        except RuntimeError:  # not started yet: reported as alive below
            pass
    return [t for t in set(threading.enumerate()) - baseline if t.is_alive()]


def redis_connections_held(redis_kind, redis_client):
    """Pooled connections checked out, and (on real Redis) subscribed connections."""
    in_use = len(redis_client.connection_pool._in_use_connections)
    if redis_kind == "real":
        return in_use, sum(1 for c in redis_client.client_list() if int(c["sub"]) > 0)
    return in_use, None


@pytest.fixture(scope="session")
def real_redis():
    """A real redis-server for the whole session, or a skip (never in CI)."""
    if REDIS_SERVER is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed, and CI must run the real-Redis tests")
        pytest.skip("redis-server is not installed")
    process = RedisProcess()
    process.start()
    yield process
    process.stop()


@pytest.fixture
def redis_proc(request, tmp_path):
    """A redis-server of this test's own; ``indirect`` parameters add server options."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    process = RedisProcess(*getattr(request, "param", ()), "--dir", str(tmp_path))
    process.start()
    yield process
    process.stop()


def make_redis_client(kind: str, request) -> redis.Redis:
    if kind == "fake":
        pool = redis.ConnectionPool(
            connection_class=fakeredis.FakeRedisConnection, server=fakeredis.FakeServer(), max_connections=2000
        )
        return redis.Redis(connection_pool=pool)
    process = request.getfixturevalue("real_redis")
    return redis.Redis.from_url(process.url, max_connections=2000)


@pytest.fixture(params=["fake", "real"])
def redis_kind(request) -> str:
    """Which Redis a test runs on: every server test runs on both."""
    return request.param


@pytest.fixture
def redis_client(redis_kind, request):
    client = make_redis_client(redis_kind, request)
    yield client
    client.connection_pool.disconnect()


@pytest.fixture
def make_server(redis_client):
    """Start servers on free ports; each has its own key prefix. All shut down after the test."""
    servers = []

    def start(**overrides) -> ChatServer:
        # Tests send faster than a person: flood control is on only where a test turns it on.
        options = {"port": 0, "key_prefix": f"test{next(_prefixes)}:", "close_timeout": 5.0, "rate_limit": 0}
        options.update(overrides)
        server = ChatServer(Config(**options), redis_client)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture
def chat_server(make_server) -> ChatServer:
    """One running server on a free port (English texts)."""
    return make_server()


class RawClient:
    """Speaks the wire protocol directly: payloads in, payloads out."""

    def __init__(self, port: int, timeout: float = 10.0, *, host: str = "127.0.0.1", source: str | None = None,
                 tls: ssl.SSLContext | None = None, server_hostname: str = "localhost") -> None:
        """``source``: the local address to connect from; ``tls``: speak TLS, verified by this context."""
        sock = socket.create_connection((host, port), timeout=timeout, source_address=(source, 0) if source else None)
        self.sock = tls.wrap_socket(sock, server_hostname=server_hostname) if tls is not None else sock
        self.reader = FrameReader(self.sock)
        self.seen: list[str] = []

    def send(self, payload: str) -> None:
        self.sock.sendall(encode(payload))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> str | None:
        """The next payload (None at end of stream); a timeout fails the test."""
        frame = self.reader.read()
        if frame is not None:
            self.seen.append(frame)
        return frame

    def expect(self, wanted) -> str:
        """Read until a payload equals ``wanted`` (a str) or satisfies it (a callable)."""
        match = wanted if callable(wanted) else (lambda frame: frame == wanted)
        while True:
            frame = self.recv()
            if frame is None:
                raise AssertionError(f"connection closed while waiting for {wanted!r}; saw {self.seen!r}")
            if match(frame):
                return frame

    def expect_closed(self) -> list[str]:
        """Read until the server closes the connection; returns what came before."""
        frames = []
        while True:
            try:
                frame = self.recv()
            except ConnectionResetError:
                return frames
            if frame is None:
                return frames
            frames.append(frame)

    def login(self, name: str) -> None:
        """Send the first nickname and wait for it to be accepted."""
        self.send(f"individual::changeNameFirst:{name}")
        self.expect(f"individual:{name}:changeNameFirst1:{name}\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def connect(chat_server):
    """Open raw clients to ``chat_server`` (or to a server passed in); closed after the test."""
    clients = []

    def open_client(server: ChatServer | None = None) -> RawClient:
        client = RawClient((server or chat_server).port)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


# --- server processes on a real Redis of the test's own ----------------------------


class ServerProcess:
    """``python server.py`` on a free port against one Redis (``script``: another server.py)."""

    def __init__(self, redis_url: str, *args: str, script=ROOT / "server.py") -> None:
        self.args = [sys.executable, str(script), "--port", "0", "--redis-url", redis_url, *args]
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.log.seek(0)
            raise AssertionError(f"server did not start: {line}{self.log.read()}")
        self.port = int(line.rsplit(":", 1)[1])

    def client(self) -> RawClient:
        return RawClient(self.port)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def read_log(self) -> str:
        """What the process logged (to stderr) so far."""
        self.log.seek(0)
        return self.log.read()


def server_processes(url: str, *defaults: str):
    """Yield a function that starts server processes on ``url`` (``defaults`` first); all stopped at the end."""
    started = []

    def start(*args: str) -> ServerProcess:
        server = ServerProcess(url, "--rate-limit", "0", *defaults, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
        server.log.close()


@pytest.fixture
def cluster(redis_proc):
    """Start server processes on ``redis_proc``; all stopped after the test."""
    yield from server_processes(redis_proc.url)

"""Prometheus metrics and the health endpoints: what an operator scrapes and probes.

``--metrics-port`` (off by default) serves, on ``--metrics-host`` (127.0.0.1
by default, off the public network):

    /metrics   this process's series, each with a ``server_id`` label
    /healthz   200 while the accept loop runs
    /readyz    200 while Redis answers, a pub/sub probe comes back within
               2 s and the server is not stopping; else 503 and the reason

Every process exports its own series (no multiprocess mode: the processes are
independent, and Prometheus adds them up).

The hot path stays cheap: what happens per delivery or per frame (payloads
and bytes sent, bytes and frames received, listener wake-ups) is counted in
plain integers on the :class:`~chatroom.connection.Connection`, by the threads
that own them, under locks they hold anyway; the collector adds them up when
Prometheus scrapes.  prometheus_client's own counters and histograms (each
takes a lock) count only what happens once per login, leave, Redis error or
reader round trip.
"""

from __future__ import annotations

import http.server
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector

import protocol as p
from chatroom import redisdb
from chatroom.connection import FRAME_KIND_COUNT, WAKEUP_SLOTS

if TYPE_CHECKING:
    from chatroom.connection import Connection

logger = logging.getLogger("chatroom.server")

#: How long /readyz waits for its pub/sub probe to come back.
PROBE_TIMEOUT = 2.0

#: The kinds of frame a client sends, as the ``kind`` label counts them.
FRAME_KINDS = (
    "chat", "private", "nickname", "menu", "who", "online", "activity", "quit",
    "join", "part", "rooms", "account", "moderation", "bad",
)
_KIND_INDEX = {kind: index for index, kind in enumerate(FRAME_KINDS)}
_INDIVIDUAL_KINDS = {
    p.CHANGE_NAME_FIRST: "nickname", p.CHANGE_NAME: "nickname", p.MENU: "menu", p.PRIVATE: "private", p.WHO: "who",
    p.ROOMS: "rooms", **dict.fromkeys(p.ACCOUNT_MARKS, "account"), **dict.fromkeys(p.MODERATION_MARKS, "moderation"),
}
_CHANNEL_KINDS = {
    "": "chat", p.ONLINE_LIST: "online", p.ACTIVITY: "activity", p.QUIT: "quit", p.JOIN: "join", p.PART: "part",
    p.WHO: "who",
}

#: Why a connection ended, as the ``reason`` label counts it.
DISCONNECT_REASONS = (
    "quit", "reset", "timeout", "flood", "bad_frame", "slow_reader", "limit", "shutdown", "kicked", "error"
)

assert len(FRAME_KINDS) == FRAME_KIND_COUNT, "the connections count one slot per kind"

#: Listener wake-ups are counted per power of two of the payloads they carried:
#: index ``n.bit_length()`` of a list whose item 0 holds the sum.  These are the
#: buckets' upper bounds (1, 3, 7, ... 255; DRAIN_LIMIT is 256).
_WAKEUP_BOUNDS = [str((1 << bits) - 1) for bits in range(1, WAKEUP_SLOTS - 1)]


def frame_kind(msg: str) -> int:
    """The index in :data:`FRAME_KINDS` of what a client's payload asks for (pure)."""
    parts = p.split_message(msg)
    if parts is None:
        return _KIND_INDEX["bad"]
    table = _INDIVIDUAL_KINDS if parts.target_type == p.INDIVIDUAL else (
        _CHANNEL_KINDS if parts.target_type == p.CHANNEL else {}
    )
    return _KIND_INDEX[table.get(parts.mark, "bad")]


class Metrics:
    """One server's series, in a registry of its own (tests run many servers in one process).

    ``live_connections`` gives the connections now served; ``redis_up`` and
    ``threads`` are read when Prometheus scrapes.
    """

    def __init__(self, server_id: str, redis_up: Callable[[], bool]) -> None:
        self.server_id = server_id
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._live: set[Connection] = set()
        #: What connections that have left had counted (so that counters never go down).
        self._retired_frames = [0] * len(FRAME_KINDS)
        self._retired_sent = [0, 0, 0]  # payloads, bytes out, bytes in
        self._retired_wakeups = [[0] * WAKEUP_SLOTS, [0] * WAKEUP_SLOTS]
        self._redis_up = redis_up
        labels = {"server_id": server_id}
        reg = self.registry
        self._logins = Counter("chatroom_logins", "Connections registered (ok) or turned away (refused)",
                               ["server_id", "result"], registry=reg)
        self._disconnects = Counter("chatroom_disconnects", "Connections ended, by reason",
                                    ["server_id", "reason"], registry=reg)
        self._redis_errors = Counter("chatroom_redis_errors", "Redis commands that failed, by kind",
                                     ["server_id", "kind"], registry=reg)
        self._resubscriptions = Counter("chatroom_resubscriptions", "Pub/sub listeners subscribed again",
                                        ["server_id"], registry=reg).labels(**labels)
        self._message_rtt = Histogram(
            "chatroom_message_redis_seconds", "Redis round trip of a reader's chat message pipeline",
            ["server_id"], registry=reg,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        ).labels(**labels)
        self._login_time = Histogram(
            "chatroom_login_seconds", "From accepting a connection to its user being registered and subscribed",
            ["server_id"], registry=reg,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        ).labels(**labels)
        self._logins_ok = self._logins.labels(result="ok", **labels)
        self._logins_refused = self._logins.labels(result="refused", **labels)
        for reason in DISCONNECT_REASONS:
            self._disconnects.labels(reason=reason, **labels)
        reg.register(_LiveCollector(self))
        reg.register(_LabelledProcessCollector(server_id))

    # --- what happens once per login, leave, error or round trip ------------------

    def track(self, conn: Connection) -> None:
        """Count a connection's tallies from now on (at admission)."""
        with self._lock:
            self._live.add(conn)

    def retire(self, conn: Connection) -> None:
        """Fold a released connection's tallies into the totals."""
        with self._lock:
            if conn not in self._live:
                return
            self._live.discard(conn)
            for index, count in enumerate(conn.frames_by_kind):
                self._retired_frames[index] += count
            self._retired_sent[0] += conn.payloads_sent
            self._retired_sent[1] += conn.bytes_sent
            self._retired_sent[2] += conn.bytes_received
            for totals, counts in zip(self._retired_wakeups, conn.wakeups):
                for index, count in enumerate(counts):
                    totals[index] += count

    def login(self, ok: bool, seconds: float | None = None) -> None:
        """A connection was registered (``ok``, after ``seconds``) or turned away."""
        if ok:
            self._logins_ok.inc()
            if seconds is not None:
                self._login_time.observe(seconds)
        else:
            self._logins_refused.inc()

    def disconnected(self, reason: str) -> None:
        """A connection ended, for one of :data:`DISCONNECT_REASONS`."""
        self._disconnects.labels(server_id=self.server_id, reason=reason).inc()

    def redis_error(self, kind: str) -> None:
        """A Redis command failed (``kind``: see :func:`chatroom.redisdb.error_kind`)."""
        self._redis_errors.labels(server_id=self.server_id, kind=kind).inc()

    def resubscribed(self) -> None:
        """A listener subscribed again after Redis came back."""
        self._resubscriptions.inc()

    def message_round_trip(self, seconds: float) -> None:
        """How long a reader's MULTI/EXEC of chat messages took."""
        self._message_rtt.observe(seconds)

    def render(self) -> bytes:
        """The exposition text, as /metrics serves it."""
        return generate_latest(self.registry)

    def _snapshot(self):
        with self._lock:
            live = list(self._live)
            frames = list(self._retired_frames)
            sent = list(self._retired_sent)
            wakeups = [list(counts) for counts in self._retired_wakeups]
        named = 0
        rooms: set[str] = set()
        for conn in live:
            rooms.update(conn.rooms)
            for index, count in enumerate(conn.frames_by_kind):
                frames[index] += count
            sent[0] += conn.payloads_sent
            sent[1] += conn.bytes_sent
            sent[2] += conn.bytes_received
            for totals, counts in zip(wakeups, conn.wakeups):
                for index, count in enumerate(counts):
                    totals[index] += count
            named += conn.joined
        return live, named, len(rooms), frames, sent, wakeups


class _NoMetrics:
    """What the server calls when metrics are off: nothing is counted beyond the connections' own integers."""

    registry = None

    def track(self, conn) -> None: ...
    def retire(self, conn) -> None: ...
    def login(self, ok, seconds=None) -> None: ...
    def disconnected(self, reason) -> None: ...
    def redis_error(self, kind) -> None: ...
    def resubscribed(self) -> None: ...
    def message_round_trip(self, seconds) -> None: ...


#: The metrics of a server started without ``--metrics-port``.
NO_METRICS = _NoMetrics()


class _LiveCollector:
    """The series read at scrape time: gauges, and the counters kept on the connections."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        metrics = self.metrics
        sid = metrics.server_id
        live, named, rooms, frames, sent, wakeups = metrics._snapshot()
        for name, doc, value in (
            ("chatroom_connections", "Chat connections served now", len(live)),
            ("chatroom_named_users", "Connected users who took a nickname", named),
            ("chatroom_rooms", "Rooms (beside the lobby) that users of this server are in", rooms),
            ("chatroom_threads", "Threads of the process", threading.active_count()),
            ("chatroom_redis_up", "1 while Redis is reachable", int(bool(metrics._redis_up()))),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["server_id"])
            gauge.add_metric([sid], value)
            yield gauge
        received = CounterMetricFamily("chatroom_frames_received", "Frames received from clients, by kind",
                                       labels=["server_id", "kind"])
        for kind, count in zip(FRAME_KINDS, frames):
            received.add_metric([sid, kind], count)
        yield received
        for name, doc, value in (
            ("chatroom_payloads_sent", "Payloads sent to clients", sent[0]),
            ("chatroom_bytes_sent", "Bytes sent to clients, frame headers included", sent[1]),
            ("chatroom_bytes_received", "Bytes received from clients", sent[2]),
        ):
            counter = CounterMetricFamily(name, doc, labels=["server_id"])
            counter.add_metric([sid], value)
            yield counter
        histogram = HistogramMetricFamily(
            "chatroom_listener_wakeup_payloads", "Payloads a pub/sub listener forwarded per wake-up",
            labels=["server_id", "listener"],
        )
        for listener, counts in zip(("broadcast", "personal"), wakeups):
            cumulative, buckets = 0, []
            for bound, count in zip(_WAKEUP_BOUNDS, counts[1:]):
                cumulative += count
                buckets.append((bound, cumulative))
            buckets.append(("+Inf", cumulative + sum(counts[len(_WAKEUP_BOUNDS) + 1:])))
            histogram.add_metric([sid, listener], buckets, sum_value=counts[0])
        yield histogram


class _LabelledProcessCollector:
    """prometheus_client's process collector (CPU, RSS, file descriptors), with the ``server_id`` label."""

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        self._inner = ProcessCollector(registry=None)

    def describe(self):
        return []

    def collect(self):
        for family in self._inner.collect():
            family.samples = [
                sample._replace(labels={**sample.labels, "server_id": self.server_id}) for sample in family.samples
            ]
            yield family


class PubSubProbe:
    """Publishes to a channel this process subscribes to, and waits for it to come back.

    ``bus`` is the pub/sub client, ``rdb`` the command client.  Its own thread
    holds the subscription (and subscribes again after an outage).
    """

    def __init__(self, rdb: redis.Redis, bus: redis.Redis, channel: str, subscribe: Callable) -> None:
        self.rdb = rdb
        self.bus = bus
        self.channel = channel
        self._subscribe = subscribe
        self._stop = threading.Event()
        self._waiting: dict[bytes, threading.Event] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._listen, name="health-probe", daemon=True)
        self._sub = None

    def start(self) -> None:
        """Subscribe in the probe's thread."""
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """End the probe's thread."""
        self._stop.set()
        sub = self._sub
        if sub is not None:
            redisdb.end_subscription(sub)
        self._thread.join(timeout)

    def check(self, timeout: float = PROBE_TIMEOUT) -> bool:
        """Publish a token and wait for it to come back through pub/sub; False after ``timeout``."""
        token = f"{os.getpid()}-{time.monotonic_ns()}-{threading.get_ident()}".encode()
        arrived = threading.Event()
        with self._lock:
            self._waiting[token] = arrived
        try:
            self.rdb.publish(self.channel, token)
            return arrived.wait(timeout)
        finally:
            with self._lock:
                self._waiting.pop(token, None)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                if self._sub is None:
                    self._sub = self._subscribe(self.bus, self.channel, PROBE_TIMEOUT)
                message = self._sub.get_message(timeout=1.0)
            except (redis.RedisError, OSError) as exc:
                logger.debug("health probe: %s", exc)
                self._close()
                self._stop.wait(0.5)
                continue
            if message is not None and message.get("type") == "message":
                with self._lock:
                    arrived = self._waiting.get(message["data"])
                if arrived is not None:
                    arrived.set()
        self._close()

    def _close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                sub.close()
            except (redis.RedisError, OSError):
                pass


class HealthServer:
    """The HTTP endpoint: /metrics, /healthz, /readyz.

    ``accepting()`` says whether the accept loop runs; ``not_ready()`` gives
    the reason the server is not ready, or None.
    """

    def __init__(self, host: str, port: int, metrics: Metrics, accepting: Callable[[], bool],
                 not_ready: Callable[[], str | None]) -> None:
        health = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    health._answer(self, 200, metrics.render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = accepting()
                    health._answer(self, 200 if ok else 503, b"ok\n" if ok else b"not accepting connections\n")
                elif path == "/readyz":
                    reason = not_ready()
                    health._answer(self, 503 if reason else 200, f"{reason or 'ready'}\n".encode())
                else:
                    health._answer(self, 404, b"not found: /metrics, /healthz, /readyz\n")

            def log_message(self, format, *args):
                logger.debug("metrics endpoint: " + format, *args)

        self._httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)

    @staticmethod
    def _answer(handler, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    @property
    def address(self) -> tuple[str, int]:
        """Where the endpoint listens (port 0 at construction picks a free one)."""
        return self._httpd.server_address[:2]

    def start(self) -> None:
        """Serve in a thread of its own."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()


class Monitoring:
    """What ``--metrics-port`` starts for one server: its metrics, the pub/sub probe, the HTTP endpoint.

    Handed what it needs: the settings, the server's id, the command and
    pub/sub clients, the probe's channel and the function that subscribes,
    and callables for whether Redis is up and the accept loop runs, and the
    server's stop event.
    """

    def __init__(self, config, server_id: str, rdb: redis.Redis, bus: redis.Redis, probe_channel: str,
                 subscribe: Callable, *, redis_up: Callable[[], bool], accepting: Callable[[], bool],
                 stopping: threading.Event) -> None:
        self.rdb = rdb
        self.stopping = stopping
        self.metrics = Metrics(server_id, redis_up)
        self.probe = PubSubProbe(rdb, bus, probe_channel, subscribe)
        self.endpoint = HealthServer(config.metrics_host, config.metrics_port, self.metrics, accepting, self.not_ready)

    def start(self) -> None:
        """Subscribe the probe and serve the endpoint."""
        self.probe.start()
        self.endpoint.start()
        logger.info("metrics on http://%s:%d/metrics", *self.endpoint.address)

    def stop(self, timeout: float) -> None:
        """End the probe's thread (within ``timeout``) and the endpoint."""
        self.probe.stop(timeout)
        self.endpoint.stop()

    def not_ready(self) -> str | None:
        """Why the server should get no new users now (/readyz), or None when it is ready."""
        if self.stopping.is_set():
            return "shutting down"
        try:
            self.rdb.ping()
        except redis.RedisError as exc:
            return f"Redis does not answer: {redisdb.error_kind(exc)}: {exc}"
        if not self.probe.check():
            return "the pub/sub probe did not come back within 2 s"
        return None

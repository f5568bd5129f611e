"""make bench: fan-out throughput, latency and capacity of the chat server.

The server runs as its own process (``server.py --port P [--redis-url U]``),
on a redis-server this script starts on a free port (never 6379) or on the
embedded fakeredis.  The clients live in worker processes (``loadgen.py``),
each serving its share from one epoll loop, so that the load generator is not
the bottleneck; its CPU use is reported beside the server's and Redis's.
Every figure is the median of ``--runs`` runs, each on a fresh server process.

Scenarios (``--scenarios``, comma-separated):

  fanout    N = 50, 200, 1000 clients; 10 send 200 numbered messages each, at
            most 16 unacknowledged (a sender's own echo acknowledges).
  fixed     N = 200; 10 senders at 10 messages/s for 20 s (20,000 deliveries/s).
  rtt       ./online and ./activity round trips, and a message's to its own echo,
            with 10 and 1000 users online.
  logins    login round trips (connect, nickname, changeNameFirst1): 200 users
            arriving together on a fresh server, then 50 one at a time.
  capacity  connect and name up to 3,000 clients, then one broadcast to all;
            then all leave at once, and the server must be back to its threads
            and Redis to its subscriptions of before.
  websocket N = 200 clients on the web listener (--ws-port), speaking WebSocket:
            the fan-out runs of ``fanout``, and the server's RSS and threads
            per WebSocket client.
  rooms     N = 1000 clients in rooms of 10 (100 rooms), one sender per room,
            every room busy at once (200 messages each, window 16); reported
            beside the lobby's fan-out, with the server's CPU per message sent.
  logins-under-load
            N = 200 and the fixed load above, once alone and once while
            20 logins a second (--login-rate) arrive, each hashing a
            password (argon2id): the chat's latency both ways, the logins'
            own latency, and the cost of one hash.
  fanout-metrics  fanout with --metrics-port on, scraped every second: the cost of metrics.
  stop      N = 3,000 logged in, 150 of them reset just before SIGTERM: how long the
            graceful stop takes, whether everyone was told, what is left in Redis.

Only loopback traffic; every wait is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))

import redis
from loadgen import name_of, worker_main
from redis_process import RedisProcess, free_port

from framing import FrameReader, encode

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- /proc readings ------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used, all threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return {"rss_kb": int(out["VmRSS"].split()[0]), "threads": int(out["Threads"])}


def proc_ctxsw(pid: int) -> int:
    """Context switches (voluntary + not) summed over the live threads."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if "ctxt_switches" in line:
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


class Probe:
    """CPU and context switches of the server, Redis and the workers over an interval."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench

    def snap(self) -> dict:
        b = self.bench
        snap = {
            "t": time.monotonic(),
            "server_cpu": proc_cpu(b.server.pid),
            "ctxsw": proc_ctxsw(b.server.pid),
        }
        if b.redis is not None:
            snap["redis_cpu"] = proc_cpu(b.redis.proc.pid)
        snap["loadgen_cpu"] = sum(proc_cpu(w.pid) for w in b.workers)
        return snap

    @staticmethod
    def diff(a: dict, b: dict) -> dict:
        dt = b["t"] - a["t"]
        out = {"seconds": dt, "ctxsw": b["ctxsw"] - a["ctxsw"]}
        for key in ("server_cpu", "redis_cpu", "loadgen_cpu"):
            if key in a:
                out[key] = (b[key] - a[key]) / dt if dt > 0 else 0.0
        return out


# --- one server under test -------------------------------------------------------


class Bench:
    """A server process (and its redis-server), plus the worker processes."""

    def __init__(self, args, backend: str) -> None:
        self.args = args
        self.backend = backend
        self.redis: RedisProcess | None = None
        self.redis_url: str | None = None
        self.server: subprocess.Popen | None = None
        self.port = 0
        #: The web listener's port, when the server has one (the websocket scenario).
        self.ws_port = 0
        self.workers: list[multiprocessing.Process] = []
        self.pipes = []
        self._limits_off: list[str] | None = None
        #: Arguments of the scenario at hand (fanout-metrics: --metrics-port).
        self.scenario_args: list[str] = []
        self.metrics_port = 0
        self.log = open(args.log_dir / f"server-{backend}.log", "ab")  # noqa: SIM115 - closed by close()

    # Redis lives as long as the backend; the server is new for every run.
    def start_redis(self) -> None:
        if self.backend != "real":
            return
        # Redis caps maxclients at its open-file limit (less 32): say so where it did.
        self.redis = RedisProcess("--maxclients", str(self.args.redis_maxclients), "--loglevel", "warning")
        self.redis.start()
        self.redis_url = self.redis.url

    def stop_redis(self) -> None:
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def pythonpath(self) -> str:
        """The server's PYTHONPATH; with --no-hiredis, a stub that makes ``import hiredis`` fail first."""
        if not self.args.no_hiredis:
            return str(ROOT)
        stub = self.args.log_dir / "no-hiredis"
        stub.mkdir(parents=True, exist_ok=True)
        (stub / "hiredis.py").write_text('raise ImportError("hiredis hidden by bench --no-hiredis")\n')
        return f"{stub}{os.pathsep}{ROOT}"

    def limits_off(self) -> list[str]:
        """Arguments that switch off the server's flood and per-address limits, if it has them."""
        if self._limits_off is None:
            help_text = subprocess.run(
                [sys.executable, str(self.args.server), "--help"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                timeout=60,
            ).stdout
            self._limits_off = [
                arg
                for flag in ("--rate-limit", "--max-per-ip", "--idle-timeout")
                if flag in help_text
                for arg in (flag, "0")
            ]
        return self._limits_off

    def start_server(self, websocket: bool = False) -> None:
        """A fresh server; ``websocket``: with its web listener, and workers that speak WebSocket to it."""
        self.port = free_port()
        self.ws_port = free_port() if websocket else 0
        if self.redis_url:
            # Every server starts on an empty Redis: one killed while stopping
            # (after the 30 s below) must not leave names that the next room's
            # clients then find taken.
            with redis.Redis.from_url(self.redis_url) as client:
                client.flushall()
        cmd = [
            *self.args.server_prefix.split(),
            sys.executable,
            str(self.args.server),
            "--port",
            str(self.port),
            "--max-clients",
            "4000",
        ]
        if self.redis_url:
            cmd += ["--redis-url", self.redis_url]
        if websocket:
            cmd += ["--ws-port", str(self.ws_port)]
        cmd += self.limits_off() + self.scenario_args + self.args.server_arg
        # PYTHONPATH: a server script copied elsewhere (an older variant) still imports ours.
        env = {**os.environ, "PYTHONPATH": self.pythonpath()}
        self.server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self.log)
        # "chatroom server listening on ...", after whatever a --server-prefix prints
        for line in iter(self.server.stdout.readline, b""):
            if b"listening" in line:
                break
        if b"listening" not in line:
            raise RuntimeError(f"server did not start: {line!r}; see {self.log.name}")
        self.server.stdout.close()
        # Workers: forked now, so each run starts with fresh processes.
        ctx = multiprocessing.get_context("fork")
        for _ in range(self.args.workers):
            parent, child = ctx.Pipe()
            target = (self.ws_port, child, "ws") if websocket else (self.port, child)
            proc = ctx.Process(target=worker_main, args=target, daemon=True)
            proc.start()
            self.workers.append(proc)
            self.pipes.append(parent)

    def stop_server(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("close",))
            except OSError:
                pass
        for pipe in self.pipes:
            if pipe.poll(30):
                try:
                    pipe.recv()
                except EOFError:
                    pass
        for proc in self.workers:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        self.workers, self.pipes = [], []
        if self.server is not None:
            self.server.terminate()
            t_stop = time.monotonic()
            try:
                self.server.wait(30)
                if time.monotonic() - t_stop > 5:
                    print(f"  (the server took {time.monotonic() - t_stop:.1f} s to stop after SIGTERM)", flush=True)
            except subprocess.TimeoutExpired:
                print("  (the server did not stop within 30 s of SIGTERM: killed)", flush=True)
                self.server.kill()
                self.server.wait(10)
            self.server = None

    # --- commands to every worker ------------------------------------------------

    def all(self, commands: list[tuple], timeout: float) -> list[dict]:
        for pipe, command in zip(self.pipes, commands):
            pipe.send(command)
        replies = []
        deadline = time.monotonic() + timeout
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"a worker did not answer {commands[0][0]!r} within {timeout} s")
            replies.append(pipe.recv())
        return replies

    def login(self, count: int, window: int, timeout: float, first: int = 0) -> dict:
        """Log in clients first..first+count-1, split evenly over the workers."""
        nw = len(self.pipes)
        commands = []
        start = first
        for w in range(nw):
            share = count // nw + (1 if w < count % nw else 0)
            commands.append(("login", start, share, window, timeout))
            start += share
        t0 = time.monotonic()
        replies = self.all(commands, timeout + 30)
        elapsed = time.monotonic() - t0
        login_us = array("q")
        for r in replies:
            login_us.frombytes(r["login_us"])
        return {
            "logged_in": sum(r["logged_in"] for r in replies),
            "failed": sum(r["failed"] for r in replies),
            "seconds": elapsed,
            "login_us": login_us,
            "errors": [e for r in replies for e in r["errors"]],
        }

    def join(self, room_size: int, timeout: float) -> dict:
        """Every logged-in client joins room index // room_size."""
        replies = self.all([("join", room_size, timeout)] * len(self.pipes), timeout + 30)
        return {"joined": sum(r["joined"] for r in replies), "errors": [e for r in replies for e in r["errors"]]}
    def reset(self, count: int, everyone: bool = False) -> int:
        """Reset ``count`` logged-in clients (``everyone``: open ones, logged in or not), split over the workers."""
        nw = len(self.pipes)
        shares = [count // nw + (1 if w < count % nw else 0) for w in range(nw)]
        return sum(r["reset"] for r in self.all([("reset", share, everyone) for share in shares], 30))

    def stats(self) -> dict:
        replies = self.all([("stats",)] * len(self.pipes), 30)
        return {key: sum(r[key] for r in replies) for key in ("frames", "shutdown_notices", "open")}

    def quiet(self, seconds: float, timeout: float) -> bool:
        replies = self.all([("quiet", seconds, timeout)] * len(self.pipes), timeout + 30)
        return all(r["quiet"] for r in replies)

    def chat(
        self, sender_indexes: list[int], count: int, *, window=None, rate=None, timeout: float, room_size=None
    ) -> dict:
        t0 = time.monotonic_ns() + 300_000_000
        spec = {
            "count": count,
            "window": window,
            "rate": rate,
            "room_size": room_size,
            "t0": t0,
            "deadline": t0 + int(timeout * 1e9),
            "sender_indexes": sender_indexes,
            "sender_names": [name_of(i) for i in sender_indexes],
        }
        for pipe in self.pipes:
            pipe.send(("chat", spec))
        while time.monotonic_ns() < t0:
            time.sleep(0.01)
        before = Probe(self).snap()
        replies = []
        for pipe in self.pipes:
            if not pipe.poll(timeout + 30):
                raise RuntimeError("a worker did not finish its chat run")
            replies.append(pipe.recv())
        after = Probe(self).snap()
        usage = Probe.diff(before, after)
        lat = array("q")
        for r in replies:
            lat.frombytes(r["latencies"])
        last = max(r["last_recv"] for r in replies)
        out = {
            key: sum(r[key] for r in replies)
            for key in (
                "delivered",
                "expected",
                "lost",
                "duplicated",
                "reordered",
                "misattributed",
                "foreign",
                "sent",
            )
        }
        span = (last - t0) / 1e9 if last else float("nan")
        out["span"] = span
        out["rate"] = out["delivered"] / span if last else 0.0
        out["timed_out"] = any(r["timed_out"] for r in replies)
        if out["timed_out"]:
            # Not lost: still on their way when the run's time was up.
            out["undelivered"] = out.pop("lost")
            out["lost"] = None
        out["loadgen_cpu"] = sum(r["cpu"] for r in replies) / span if last else 0.0
        out["server_cpu"] = usage.get("server_cpu")
        out["redis_cpu"] = usage.get("redis_cpu")
        out["ctxsw_per_delivery"] = usage["ctxsw"] / out["delivered"] if out["delivered"] else None
        # The server's cost of one message sent, whatever the room's size: CPU seconds / messages.
        server_seconds = (usage.get("server_cpu") or 0.0) * usage["seconds"]
        out["server_cpu_ms_per_message"] = server_seconds / out["sent"] * 1000 if out["sent"] else None
        out.update(percentiles(lat))
        out["errors"] = [e for r in replies for e in r["errors"]]
        return out

    def close(self) -> None:
        self.stop_server()
        self.stop_redis()
        self.log.close()


def percentiles(values: array) -> dict:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    s = sorted(values)
    n = len(s)
    return {
        "p50_ms": s[n // 2] / 1000,
        "p99_ms": s[min(n - 1, (n * 99) // 100)] / 1000,
        "max_ms": s[-1] / 1000,
    }


def senders_for(n: int, k: int) -> list[int]:
    """k sender indexes spread evenly over n clients (so every worker has some)."""
    return [i * n // k for i in range(k)]


# --- scenarios ------------------------------------------------------------------


def log_in_room(bench: Bench, n: int, args) -> None:
    login = bench.login(n, args.login_window, timeout=args.login_timeout)
    if login["logged_in"] < n:
        raise RuntimeError(f"only {login['logged_in']}/{n} logged in: {login['errors'][:3]}")
    bench.quiet(0.3, 60)


def settle_after(bench: Bench, result: dict) -> bool:
    """Let the room go quiet before the next run; False if it stays busy (a run that timed out
    leaves deliveries in flight, which the next run would count as its own)."""
    return bench.quiet(0.5, 60 if result.get("timed_out") else 30)


def run_fanout(bench: Bench, n: int, args):
    """N clients log in once; then ``runs`` fan-out runs in that room."""
    log_in_room(bench, n, args)
    for _ in range(args.runs):
        result = bench.chat(senders_for(n, 10), args.messages, window=16, timeout=args.chat_timeout)
        yield result
        if not settle_after(bench, result):
            return


def run_fixed(bench: Bench, n: int, args):
    log_in_room(bench, n, args)
    count = int(args.fixed_rate * args.fixed_seconds)
    for _ in range(args.runs):
        result = bench.chat(senders_for(n, 10), count, rate=args.fixed_rate, timeout=args.fixed_seconds + 30)
        yield result
        if not settle_after(bench, result):
            return


def rtt_client(port: int, name: str) -> tuple[socket.socket, FrameReader]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = FrameReader(sock)
    sock.sendall(encode(f"individual::changeNameFirst:{name}"))
    wanted = f"individual:{name}:changeNameFirst1:{name}\n"
    while reader.read() != wanted:
        pass
    return sock, reader


def run_login_rtt(bench: Bench, n: int, args):
    """Login round trips (connect, nickname, changeNameFirst1): N users arriving together, and alone.

    Each run is on a fresh server: the N arrive at once (all connect, each
    sends its nickname at once), then 50 more log in one at a time on the
    idle server, each waiting for the one before.
    """
    for run in range(args.runs):
        if run:
            bench.stop_server()
            bench.start_server()
        time.sleep(0.3)
        together = bench.login(n, n, timeout=args.login_timeout)
        bench.quiet(0.3, 60)
        alone = array("q")
        for i in range(50):
            alone.extend(bench.login(1, 1, timeout=30, first=n + i)["login_us"])
        crowd = percentiles(together["login_us"])
        idle = percentiles(alone)
        yield {
            "logged_in": together["logged_in"],
            "p50_ms": crowd["p50_ms"],
            "p99_ms": crowd["p99_ms"],
            "max_ms": crowd["max_ms"],
            "idle_p50_ms": idle["p50_ms"],
            "idle_p99_ms": idle["p99_ms"],
            "errors": together["errors"][:3],
        }


def run_rtt(bench: Bench, n: int, args):
    """N - 1 idle users plus one probe that asks, waits for the answer, asks again."""
    if n > 1:
        log_in_room(bench, n - 1, args)
    name = "rtt-probe"
    sock, reader = rtt_client(bench.port, name)
    try:
        for _ in range(args.runs):
            out = {}
            for label, payload, prefix in (
                ("online", "channel:channel1:onlineList:", f"channel:channel1:{name}:"),
                ("activity", "channel:channel1:activity:", "channel:channel1:系统消息:"),
                # A message to the room, back as its echo: through Redis and the probe's own
                # listener, which lingers in a busy room (everyone else gets it too).
                ("echo", "channel:channel1::ping", f"channel:channel1:{name}:ping"),
            ):
                frame = encode(payload)
                times = array("q")
                for i in range(args.rtt_count + 20):
                    t = time.perf_counter_ns()
                    sock.sendall(frame)
                    while True:
                        reply = reader.read()
                        if reply is None:
                            raise RuntimeError("server closed the probe connection")
                        if reply.startswith(prefix):
                            break
                    if i >= 20:  # warm-up
                        times.append((time.perf_counter_ns() - t) // 1000)
                    if label == "online" and not reply.endswith(f" {n}\n"):
                        out["error"] = f"online count reply {reply!r}, expected {n}"
                pct = percentiles(times)
                out[f"{label}_p50_ms"] = pct["p50_ms"]
                out[f"{label}_p99_ms"] = pct["p99_ms"]
            yield out
    finally:
        sock.close()


def run_rooms(bench: Bench, n: int, args):
    """N clients in rooms of ``--room-size``, one sender per room, every room at once."""
    log_in_room(bench, n, args)
    joined = bench.join(args.room_size, timeout=args.login_timeout)
    if joined["joined"] < n:
        raise RuntimeError(f"only {joined['joined']}/{n} joined their rooms: {joined['errors'][:3]}")
    bench.quiet(0.3, 60)
    senders = list(range(0, n, args.room_size))
    for _ in range(args.runs):
        result = bench.chat(
            senders, args.messages, window=16, timeout=args.chat_timeout, room_size=args.room_size
        )
        result["rooms"] = len(senders)
        yield result
        if not settle_after(bench, result):
            return


def run_capacity(bench: Bench, n: int, args):
    """One run on a fresh server: logging in is what is measured."""
    time.sleep(0.2)
    base = proc_status(bench.server.pid)
    redis_base = subscribed_connections(bench)
    before = Probe(bench).snap()
    login = bench.login(n, args.capacity_window, timeout=args.capacity_timeout)
    after_login = Probe(bench).snap()
    logged = login["logged_in"]
    t_quiet = time.monotonic()
    quiet = bench.quiet(0.5, 60)
    settle = time.monotonic() - t_quiet - 0.5
    status = proc_status(bench.server.pid)
    usage = Probe.diff(before, after_login)
    out = {
        "clients": logged,
        "failed": login["failed"],
        "login_s": login["seconds"],
        "joins_settled_s": login["seconds"] + max(0.0, settle) if quiet else None,
        "rss_kb_per_client": (status["rss_kb"] - base["rss_kb"]) / logged if logged else None,
        "rss_mb": status["rss_kb"] / 1024,
        "threads_per_client": (status["threads"] - base["threads"]) / logged if logged else None,
        "login_server_cpu": usage.get("server_cpu"),
        "login_redis_cpu": usage.get("redis_cpu"),
        "login_loadgen_cpu": usage.get("loadgen_cpu"),
        "errors": login["errors"][:3],
    }
    if logged:
        # One broadcast to all: the time until the last client has it.
        result = bench.chat([0], 1, window=1, timeout=60)
        out["broadcast_all_ms"] = result["max_ms"]
        out["broadcast_p50_ms"] = result["p50_ms"]
        out["broadcast_lost"] = result["lost"]
        out.update(released_after_leaving(bench, base, redis_base, n, args.login_timeout))
    yield out


def subscribed_connections(bench: Bench) -> int | None:
    """Redis connections holding a subscription (every user holds two); None without a real Redis."""
    if not bench.redis_url:
        return None
    with redis.Redis.from_url(bench.redis_url) as client:
        return sum(1 for c in client.client_list() if int(c.get("sub", 0)) or int(c.get("psub", 0)))


def released_after_leaving(bench: Bench, base: dict, redis_base: int | None, count: int, timeout: float) -> dict:
    """Every client leaves at once (a reset each): how long until the server is back to its threads
    and Redis to its subscriptions of before the logins, and what is left when ``timeout`` passes."""
    t0 = time.monotonic()
    bench.reset(count, everyone=True)  # logins still in flight at the time limit too: their threads count
    while True:
        threads_left = proc_status(bench.server.pid)["threads"] - base["threads"]
        timed_out = time.monotonic() - t0 > timeout
        pubsub_left = None
        # CLIENT LIST of thousands of connections only once the threads are back (or at the end).
        if threads_left <= 0 or timed_out:
            subscribed = subscribed_connections(bench)
            pubsub_left = None if subscribed is None else subscribed - redis_base
        done = threads_left <= 0 and (pubsub_left is None or pubsub_left <= 0)
        if done or timed_out:
            return {
                "released_s": time.monotonic() - t0 if done else None,
                "threads_left": threads_left,
                "pubsub_left": pubsub_left,
            }
        time.sleep(0.25)


def run_websocket(bench: Bench, n: int, args):
    """N WebSocket clients log in on a server with its web listener; then ``runs`` fan-out runs.

    The server's RSS and threads are read before and after the logins: their
    growth per client is what a browser tab costs the server.
    """
    bench.stop_server()  # the one main() started has no web listener
    bench.start_server(websocket=True)
    time.sleep(0.2)
    base = proc_status(bench.server.pid)
    log_in_room(bench, n, args)
    status = proc_status(bench.server.pid)
    per_client = {
        "rss_kb_per_client": (status["rss_kb"] - base["rss_kb"]) / n,
        "threads_per_client": (status["threads"] - base["threads"]) / n,
    }
    for _ in range(args.runs):
        result = bench.chat(senders_for(n, 10), args.messages, window=16, timeout=args.chat_timeout)
        result.update(per_client)
        yield result
        if not settle_after(bench, result):
            return


ACCOUNT_PASSWORD = "bench password"


def register_accounts(port: int, count: int) -> list[str]:
    """Register ``count`` accounts, one connection each, which then leaves."""
    names = []
    for i in range(count):
        name = f"account{i}"
        sock, reader = rtt_client(port, name)
        try:
            sock.sendall(encode(f"individual:{name}:register:{ACCOUNT_PASSWORD}"))
            while (reply := reader.read()) is not None and ":register" not in reply:
                pass
            if reply != f"individual:{name}:register1:{name}\n":
                raise RuntimeError(f"could not register {name}: {reply!r}")
            sock.sendall(encode("channel:channel1:quit:"))
        finally:
            sock.close()
        names.append(name)
    return names


def hash_cost_ms(samples: int = 20) -> float:
    """The median time of one password check, in this process, with the server's parameters."""
    from chatroom.accounts import PasswordHasher

    hasher = PasswordHasher(workers=1)
    hasher.start()
    try:
        encoded = hasher.hash(ACCOUNT_PASSWORD)
        times = []
        for _ in range(samples):
            t = time.perf_counter()
            hasher.verify(encoded, ACCOUNT_PASSWORD)
            times.append((time.perf_counter() - t) * 1000)
    finally:
        hasher.stop(10)
    return statistics.median(times)


def login_load(port: int, names: list[str], rate: float, seconds: float, out: dict) -> None:
    """Log in ``rate`` times a second for ``seconds``, the accounts in turn, each from a new connection
    that leaves once logged in; login latencies (connect to changeNameFirst1) into ``out``."""
    import threading

    latencies, failures, threads = array("q"), [], []

    def one(name: str) -> None:
        started = time.perf_counter_ns()
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            try:
                reader = FrameReader(sock)
                sock.sendall(encode(f"individual::login:{name}:{ACCOUNT_PASSWORD}"))
                while (reply := reader.read()) is not None and not (":changeNameFirst1:" in reply or ":login0:" in reply):
                    pass
                if reply is None or ":login0:" in reply:
                    failures.append(reply)
                    return
                latencies.append((time.perf_counter_ns() - started) // 1000)
                sock.sendall(encode("channel:channel1:quit:"))
            finally:
                sock.close()
        except OSError as exc:
            failures.append(str(exc))

    start = time.monotonic()
    count = int(rate * seconds)
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        thread = threading.Thread(target=one, args=(names[i % len(names)],), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(60)
    out["logins"] = len(latencies)
    out["logins_per_s"] = len(latencies) / (time.monotonic() - start)
    out["login_failed"] = len(failures)
    out["login_errors"] = [str(f) for f in failures[:3]]
    pct = percentiles(latencies)
    out["login_p50_ms"], out["login_p99_ms"] = pct["p50_ms"], pct["p99_ms"]


def run_logins(bench: Bench, n: int, args):
    """The fixed load alone, then with logins arriving: what hashing passwords costs the room."""
    import threading

    log_in_room(bench, n, args)
    names = register_accounts(bench.port, max(40, int(args.login_rate * 2)))
    hash_ms = hash_cost_ms()
    count = int(args.fixed_rate * args.fixed_seconds)
    for _ in range(args.runs):
        alone = bench.chat(senders_for(n, 10), count, rate=args.fixed_rate, timeout=args.fixed_seconds + 30)
        if not settle_after(bench, alone):
            return
        logins: dict = {}
        loader = threading.Thread(
            target=login_load, args=(bench.port, names, args.login_rate, args.fixed_seconds, logins), daemon=True
        )
        loader.start()
        loaded = bench.chat(senders_for(n, 10), count, rate=args.fixed_rate, timeout=args.fixed_seconds + 30)
        loader.join(args.fixed_seconds + 60)
        yield {
            "hash_ms": hash_ms,
            "alone_p50_ms": alone["p50_ms"], "alone_p99_ms": alone["p99_ms"], "alone_server_cpu": alone["server_cpu"],
            "p50_ms": loaded["p50_ms"], "p99_ms": loaded["p99_ms"], "max_ms": loaded["max_ms"],
            "server_cpu": loaded["server_cpu"], "lost": (alone["lost"] or 0) + (loaded["lost"] or 0),
            **logins,
            "errors": alone["errors"] + loaded["errors"] + logins.get("login_errors", []),
        }
        if not settle_after(bench, loaded):
            return
def scrape_while(bench: Bench, stop_event) -> list[float]:
    """Scrape the server's /metrics every second until ``stop_event``; the seconds each scrape took."""
    import urllib.request

    times = []
    while not stop_event.wait(1.0):
        t = time.perf_counter()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{bench.metrics_port}/metrics", timeout=10) as answer:
                answer.read()
            times.append(time.perf_counter() - t)
        except OSError:
            pass
    return times


def run_fanout_metrics(bench: Bench, n: int, args):
    """fanout, with the metrics endpoint on and scraped every second (as Prometheus would, 15x as often)."""
    import threading

    stop_event = threading.Event()
    scrapes: list[float] = []
    scraper = threading.Thread(target=lambda: scrapes.extend(scrape_while(bench, stop_event)), daemon=True)
    scraper.start()
    try:
        yield from run_fanout(bench, n, args)
    finally:
        stop_event.set()
        scraper.join(15)
    if scrapes:
        print(f"  (metrics: {len(scrapes)} scrapes, median {statistics.median(scrapes) * 1000:.1f} ms)", flush=True)


def run_stop(bench: Bench, n: int, args):
    """N users logged in, 5 % of them reset just before SIGTERM: the graceful stop, timed."""
    log_in_room(bench, n, args)
    reset = bench.reset(max(1, n // 20))
    server = bench.server
    time.sleep(0.05)  # the resets reach the server: their leaves race the stop, as in the field
    t = time.monotonic()
    server.terminate()
    try:
        code = server.wait(60)
    except subprocess.TimeoutExpired:
        code = None
    stop_s = time.monotonic() - t
    if code is None:
        server.kill()
        server.wait(10)
    bench.server = None
    stats = bench.stats()
    left, errors = None, []
    if bench.redis_url:
        with redis.Redis.from_url(bench.redis_url) as client:
            ids = [uid.decode() for key in client.scan_iter("*usersOnline") for uid in client.hkeys(key)]
            left = len(ids)
            if ids:  # which ones, for the server's log (-v names each user's thread conn-<id>)
                errors.append(f"left in Redis: user ids {', '.join(sorted(ids, key=int)[:10])}")
    yield {
        "stop_s": stop_s if code is not None else None,
        "exit_code": code,
        "told": stats["shutdown_notices"],
        "users": n - reset,
        "left_in_redis": left,
        "errors": errors,
    }


SCENARIOS = {
    "logins-under-load": (run_logins, "logins_sizes"),
    "fanout": (run_fanout, "sizes"),
    "fanout-metrics": (run_fanout_metrics, "sizes"),
    "stop": (run_stop, "stop_sizes"),
    "fixed": (run_fixed, "fixed_sizes"),
    "rtt": (run_rtt, "rtt_sizes"),
    "logins": (run_login_rtt, "login_rtt_sizes"),
    "capacity": (run_capacity, "capacity_sizes"),
    "websocket": (run_websocket, "websocket_sizes"),
    "rooms": (run_rooms, "rooms_sizes"),
}


# --- the table ----------------------------------------------------------------


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, spec="{:.1f}") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return spec.format(value)


def summarize(scenario: str, runs: list[dict]) -> dict:
    good = [r for r in runs if "error" not in r]
    keys = set().union(*(r.keys() for r in good)) if good else set()
    summary = {}
    for key in keys:
        values = [r.get(key) for r in good]
        if all(isinstance(v, (int, float)) or v is None for v in values):
            summary[key] = median(values)
    summary["runs"] = len(good)
    summary["errors"] = [r["error"] for r in runs if "error" in r] + [
        e for r in good for e in r.get("errors", [])
    ][:3]
    if scenario == "stop":
        summary["stop_runs"] = [r.get("stop_s") for r in good]
    if scenario in ("fanout", "fanout-metrics", "fixed", "websocket"):
        summary["rates"] = [r.get("rate") for r in good]
        # Correctness is summed over the runs, not a median: every one must be 0.
        for key in ("lost", "duplicated", "reordered", "misattributed"):
            values = [r.get(key) for r in good]
            summary[key] = None if None in values else sum(values)
        summary["timed_out"] = sum(1 for r in good if r.get("timed_out"))
    return summary


def print_tables(results: dict, out=sys.stdout) -> None:
    def p(line=""):
        print(line, file=out)

    by = {}
    for (scenario, backend, n), summary in results.items():
        by.setdefault(scenario, []).append((backend, n, summary))
    for scenario, title in (("fanout", ""), ("fanout-metrics", ", metrics on and scraped every second")):
        if scenario not in by:
            continue
        p(f"\n## Fan-out (10 senders x 200 messages, window 16{title}) - medians")
        p(
            "| backend | N | deliveries/s | runs (deliveries/s) | p50 ms | p99 ms | max ms | lost/dup/reord/misattr "
            "| server CPU | redis CPU | loadgen CPU | ctxsw/delivery | server CPU ms/message |"
        )
        p("|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
        for backend, n, s in by[scenario]:
            runs = " / ".join(fmt(r, "{:,.0f}") for r in s.get("rates", []))
            p(
                f"| {backend} | {n} | {fmt(s.get('rate'), '{:,.0f}')} | {runs} | {fmt(s.get('p50_ms'))} "
                f"| {fmt(s.get('p99_ms'))} | {fmt(s.get('max_ms'))} "
                f"| {correctness_and_cpu_cells(s)} "
                f"| {fmt(s.get('ctxsw_per_delivery'), '{:.2f}')} "
                f"| {fmt(s.get('server_cpu_ms_per_message'), '{:.3f}')} |{flag(s, backend + ' N=' + str(n))}"
            )
    if "fixed" in by:
        p("\n## Fixed load (10 senders x 10 msg/s, 20,000 deliveries/s offered) - medians")
        p(
            "| backend | N | delivered/s | p50 ms | p99 ms | max ms | lost/dup/reord/misattr | server CPU "
            "| redis CPU | loadgen CPU |"
        )
        p("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
        for backend, n, s in by["fixed"]:
            p(
                f"| {backend} | {n} | {fmt(s.get('rate'), '{:,.0f}')} | {fmt(s.get('p50_ms'))} "
                f"| {fmt(s.get('p99_ms'))} | {fmt(s.get('max_ms'))} "
                f"| {correctness_and_cpu_cells(s)} |{flag(s, backend + ' N=' + str(n))}"
            )
    if "rtt" in by:
        p("\n## Command round trip - medians")
        p(
            "| backend | users online | ./online p50 ms | ./online p99 ms | ./activity p50 ms | ./activity p99 ms "
            "| message to its echo p50 ms | echo p99 ms |"
        )
        p("|---|---:|---:|---:|---:|---:|---:|---:|")
        for backend, n, s in by["rtt"]:
            p(
                f"| {backend} | {n} | {fmt(s.get('online_p50_ms'), '{:.2f}')} | {fmt(s.get('online_p99_ms'), '{:.2f}')} "
                f"| {fmt(s.get('activity_p50_ms'), '{:.2f}')} | {fmt(s.get('activity_p99_ms'), '{:.2f}')} "
                f"| {fmt(s.get('echo_p50_ms'), '{:.2f}')} | {fmt(s.get('echo_p99_ms'), '{:.2f}')} |"
                f"{flag(s, backend + ' N=' + str(n))}"
            )
    if "logins" in by:
        p("\n## Login round trip (connect, nickname, changeNameFirst1) - medians")
        p("| backend | arriving together | p50 ms | p99 ms | max ms | idle server p50 ms | idle p99 ms |")
        p("|---|---:|---:|---:|---:|---:|---:|")
        for backend, n, s in by["logins"]:
            p(
                f"| {backend} | {n} | {fmt(s.get('p50_ms'))} | {fmt(s.get('p99_ms'))} | {fmt(s.get('max_ms'))} "
                f"| {fmt(s.get('idle_p50_ms'), '{:.2f}')} | {fmt(s.get('idle_p99_ms'), '{:.2f}')} |"
                f"{flag(s, backend + ' logins N=' + str(n))}"
            )
    if "rooms" in by:
        p("\n## Rooms (rooms of 10, one sender each, 200 messages, window 16, all rooms at once) - medians")
        p(
            "| backend | N | rooms | deliveries/s | p50 ms | p99 ms | max ms | lost/dup/reord/misattr "
            "| server CPU | redis CPU | loadgen CPU | server CPU ms/message |"
        )
        p("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
        for backend, n, s in by["rooms"]:
            p(
                f"| {backend} | {n} | {fmt(s.get('rooms'), '{:.0f}')} | {fmt(s.get('rate'), '{:,.0f}')} "
                f"| {fmt(s.get('p50_ms'))} | {fmt(s.get('p99_ms'))} | {fmt(s.get('max_ms'))} "
                f"| {correctness_and_cpu_cells(s)} | {fmt(s.get('server_cpu_ms_per_message'), '{:.3f}')} |"
                f"{flag(s, backend + ' rooms N=' + str(n))}"
            )
    if "capacity" in by:
        p("\n## Capacity (each login broadcasts a join notice to everyone already there) - medians")
        p(
            "| backend | target | logged in | login s | joins settled s | RSS MB | RSS KB/client | threads/client "
            "| broadcast to all ms | server CPU | redis CPU | loadgen CPU | all left: released s | threads, subscriptions left |"
        )
        p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for backend, n, s in by["capacity"]:
            p(
                f"| {backend} | {n} | {fmt(s.get('clients'), '{:.0f}')} | {fmt(s.get('login_s'))} "
                f"| {fmt(s.get('joins_settled_s'))} | {fmt(s.get('rss_mb'), '{:.0f}')} "
                f"| {fmt(s.get('rss_kb_per_client'), '{:.0f}')} | {fmt(s.get('threads_per_client'), '{:.2f}')} "
                f"| {fmt(s.get('broadcast_all_ms'))} | {fmt(pct(s.get('login_server_cpu')), '{:.0f}%')} "
                f"| {fmt(pct(s.get('login_redis_cpu')), '{:.0f}%')} | {fmt(pct(s.get('login_loadgen_cpu')), '{:.0f}%')} "
                f"| {fmt(s.get('released_s'))} | {fmt(s.get('threads_left'), '{:.0f}')}, {fmt(s.get('pubsub_left'), '{:.0f}')} |"
                f"{flag(s, backend + ' N=' + str(n))}"
            )
    if "websocket" in by:
        p("\n## WebSocket fan-out (10 senders x 200 messages, window 16, every client on /ws) - medians")
        p(
            "| backend | N | deliveries/s | TCP fan-out deliveries/s | p50 ms | p99 ms | lost/dup/reord/misattr "
            "| server CPU | redis CPU | loadgen CPU | RSS KB/WebSocket client | threads/WebSocket client |"
        )
        p("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
        for backend, n, s in by["websocket"]:
            tcp = results.get(("fanout", backend, n), {}).get("rate")
            p(
                f"| {backend} | {n} | {fmt(s.get('rate'), '{:,.0f}')} | {fmt(tcp, '{:,.0f}')} "
                f"| {fmt(s.get('p50_ms'))} | {fmt(s.get('p99_ms'))} | {correctness_and_cpu_cells(s)} "
                f"| {fmt(s.get('rss_kb_per_client'), '{:.0f}')} | {fmt(s.get('threads_per_client'), '{:.2f}')} |"
                f"{flag(s, backend + ' N=' + str(n))}"
            )
    if "logins-under-load" in by:
        p("\n## Logins under load (fixed load alone, then with logins arriving) - medians")
        p(
            "| backend | N | one hash ms | logins/s | login p50 ms | login p99 ms | chat p50 ms alone | p99 alone "
            "| chat p50 ms with logins | p99 with logins | lost | server CPU alone | with logins |"
        )
        p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for backend, n, s in by["logins-under-load"]:
            p(
                f"| {backend} | {n} | {fmt(s.get('hash_ms'))} | {fmt(s.get('logins_per_s'))} "
                f"| {fmt(s.get('login_p50_ms'))} | {fmt(s.get('login_p99_ms'))} | {fmt(s.get('alone_p50_ms'))} "
                f"| {fmt(s.get('alone_p99_ms'))} | {fmt(s.get('p50_ms'))} | {fmt(s.get('p99_ms'))} "
                f"| {fmt(s.get('lost'), '{:.0f}')} | {fmt(pct(s.get('alone_server_cpu')), '{:.0f}%')} "
                f"| {fmt(pct(s.get('server_cpu')), '{:.0f}%')} |{flag(s, backend + ' N=' + str(n))}"
            )
    if "stop" in by:
        p("\n## Graceful stop (SIGTERM with N users, 5 % of them reset just before) - medians")
        p("| backend | N | stop s | runs (s) | users told | users left in Redis | exit code |")
        p("|---|---:|---:|---|---:|---:|---:|")
        for backend, n, s in by["stop"]:
            runs = " / ".join(fmt(r, "{:.1f}") for r in s.get("stop_runs", []))
            p(
                f"| {backend} | {n} | {fmt(s.get('stop_s'))} | {runs} | {fmt(s.get('told'), '{:.0f}')} of "
                f"{fmt(s.get('users'), '{:.0f}')} | {fmt(s.get('left_in_redis'), '{:.0f}')} "
                f"| {fmt(s.get('exit_code'), '{:.0f}')} |{flag(s, backend + ' N=' + str(n))}"
            )
    if NOTES:
        p()
    for i, note in enumerate(NOTES, start=1):
        p(f"[{i}] {note}")
    p(
        "\nCPU: share of one core over the measured interval (200% = both cores). "
        "ctxsw/delivery: the server's context switches per delivery."
    )


def pct(value):
    return None if value is None else value * 100


def correctness_and_cpu_cells(s: dict) -> str:
    """The lost/dup/reord/misattr cell and the server, Redis and load generator CPU cells of a chat row."""
    lost = "n/a" if s.get("lost") is None else s["lost"]
    counts = f"{lost}/{s.get('duplicated', '-')}/{s.get('reordered', '-')}/{s.get('misattributed', '-')}"
    cpus = " | ".join(fmt(pct(s.get(key)), "{:.0f}%") for key in ("server_cpu", "redis_cpu", "loadgen_cpu"))
    return f"{counts} | {cpus}"


NOTES: list[str] = []


def flag(summary: dict, label: str = "") -> str:
    """Record what a row's figures need said about them; the mark points at the note."""
    notes = []
    if summary.get("runs", 0) == 0:
        notes.append("no successful run")
    if summary.get("timed_out"):
        notes.append(
            f"{summary['timed_out']} run(s) hit the time limit; lost = n/a, rate = delivered so far / time"
        )
    notes += summary.get("errors", [])
    if not notes:
        return ""
    NOTES.append(f"{label}: " + "; ".join(str(n) for n in notes)[:400])
    return f" [{len(NOTES)}]"


# --- main ---------------------------------------------------------------------------


def report(scenario: str, backend: str, n: int, run: int, result: dict, t: float, raw: list) -> None:
    raw.append({"scenario": scenario, "backend": backend, "n": n, "run": run, **result})
    brief = {
        k: (round(v, 3) if isinstance(v, float) else v)
        for k, v in result.items()
        if k
        in (
            "rate",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "lost",
            "error",
            "clients",
            "login_s",
            "online_p50_ms",
            "activity_p50_ms",
            "echo_p50_ms",
            "server_cpu",
            "loadgen_cpu",
            "redis_cpu",
            "ctxsw_per_delivery",
            "rss_kb_per_client",
            "broadcast_all_ms",
            "timed_out",
            "hash_ms",
            "logins_per_s",
            "login_p50_ms",
            "alone_p50_ms",
            "stop_s",
            "told",
            "left_in_redis",
            "exit_code",
        )
    }
    print(
        f"  {scenario} {backend} N={n} run {run}: {brief} ({time.monotonic() - t:.0f} s)",
        file=sys.stderr,
        flush=True,
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenarios", default="fanout,fanout-metrics,fixed,rtt,logins,capacity,rooms,websocket,logins-under-load,stop"
    )
    parser.add_argument("--backends", default="real,embedded", help="real (redis-server) and/or embedded")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 run, smaller sizes: a smoke test")
    parser.add_argument("--sizes", default="50,200,1000", help="fan-out client counts")
    parser.add_argument("--fixed-sizes", default="200")
    parser.add_argument("--rtt-sizes", default="10,1000")
    parser.add_argument("--capacity-sizes", default="3000")
    parser.add_argument("--websocket-sizes", default="200", help="WebSocket fan-out client counts")
    parser.add_argument("--rooms-sizes", default="1000", help="clients in the rooms scenario")
    parser.add_argument(
        "--redis-maxclients", type=int, default=15000,
        help="the test Redis's maxclients (two pub/sub connections per user, plus the pools)",
    )
    parser.add_argument("--login-rtt-sizes", default="200", help="users arriving together, logins scenario")
    parser.add_argument("--room-size", type=int, default=10, help="members of each room in the rooms scenario")
    parser.add_argument("--logins-sizes", default="200", help="room sizes of logins-under-load")
    parser.add_argument("--login-rate", type=float, default=20.0, help="logins a second, logins-under-load")
    parser.add_argument("--stop-sizes", default="3000", help="users connected when the stop scenario sends SIGTERM")
    parser.add_argument(
        "--embedded-sizes",
        default="50,200",
        help="fan-out sizes on the embedded backend (fakeredis manages ~9,000 deliveries/s: N=1000 would "
        "only time out, for minutes; pass 50,200,1000 to see it do so)",
    )
    parser.add_argument("--messages", type=int, default=200, help="per sender, fan-out")
    parser.add_argument("--fixed-rate", type=float, default=10.0)
    parser.add_argument("--fixed-seconds", type=float, default=20.0)
    parser.add_argument("--rtt-count", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="load generator processes")
    parser.add_argument("--login-window", type=int, default=16, help="concurrent logins per worker")
    parser.add_argument("--capacity-window", type=int, default=16, help="concurrent logins per worker")
    parser.add_argument(
        "--capacity-timeout",
        type=float,
        default=60.0,
        help="seconds to log the clients in: the target is 3,000 within 60 s",
    )
    parser.add_argument("--chat-timeout", type=float, default=60.0, help="seconds per fan-out run at most")
    parser.add_argument("--login-timeout", type=float, default=180.0, help="seconds to log a room in at most")
    parser.add_argument(
        "--server", type=Path, default=ROOT / "server.py", help="the server script to measure"
    )
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra server argument (repeatable)"
    )
    parser.add_argument(
        "--server-prefix", default="", help='command prefix for the server, e.g. "taskset -c 1"'
    )
    parser.add_argument(
        "--no-hiredis", action="store_true", help="run the server as if hiredis were not installed"
    )
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--log-dir", type=Path, default=ROOT / "bench" / "logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 1
        args.sizes = "50,200"
        args.rtt_sizes = "10,200"
        args.capacity_sizes = "500"
        args.websocket_sizes = "50"
        args.rooms_sizes = "200"
        args.logins_sizes = "50"
        args.stop_sizes = "500"
        args.fixed_seconds = 5.0
    return args


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    try:
        import hiredis

        hi = f"hiredis {hiredis.__version__} installed"
    except ImportError:
        hi = "no hiredis"
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, Python {platform.python_version()}, "
        f"redis-py {redis.__version__}, {hi}, {redis_version.split(' sha')[0]}"
    )


#: The targets make bench is held to (issues 5, 14 and 16): (what, scenario, N, key, "<=" or ">=", bound).
#: Real Redis only: the embedded fakeredis is the fresh machine's default, not the production one.
TARGETS = [
    ("one broadcast reaching all of 3,000 idle users, ms", "capacity", 3000, "broadcast_all_ms", "<=", 250),
    ("3,000 logins, each announced to everyone, s", "capacity", 3000, "login_s", "<=", 40),
    ("RSS per user at 3,000, KB", "capacity", 3000, "rss_kb_per_client", "<=", 120),
    ("login round trip, 200 arriving together, p50 ms", "logins", 200, "p50_ms", "<=", 50),
    ("login round trip, 200 arriving together, p99 ms", "logins", 200, "p99_ms", "<=", 250),
    ("login round trip, idle server, p50 ms", "logins", 200, "idle_p50_ms", "<=", 5),
    ("fan-out, room of 200, deliveries/s", "fanout", 200, "rate", ">=", 300_000),
    ("fan-out, room of 1,000, deliveries/s", "fanout", 1000, "rate", ">=", 300_000),
    ("fan-out lost + duplicated + reordered + misattributed", "fanout", None, "wrong", "<=", 0),
    ("busy room of 1,000, end-to-end p50 ms", "fanout", 1000, "p50_ms", "<=", 300),
    ("fixed load (200 users, 10 x 10 msg/s), p50 ms", "fixed", 200, "p50_ms", "<=", 15),
    ("fixed load (200 users, 10 x 10 msg/s), p99 ms", "fixed", 200, "p99_ms", "<=", 50),
    ("10,000 users on one process: logged in, s", "capacity", 10000, "login_s", "<=", 180),
    ("10,000 users: one broadcast reaching all, ms", "capacity", 10000, "broadcast_all_ms", "<=", 1000),
    ("10,000 users: RSS per user, KB", "capacity", 10000, "rss_kb_per_client", "<=", 120),
    ("after all leave at once: threads and subscriptions left", "capacity", None, "left", "<=", 0),
    ("a message in a room of 10, share of one in the lobby of 1,000 (server CPU)", "rooms", 1000, "room_share", "<=", 0.25),
    ("graceful stop with 3,000 users, s", "stop", 3000, "stop_s", "<=", 10),
]


def summary_value(results: dict, scenario: str, n, key: str):
    """One figure of the summary, from the real-Redis results (None: not measured in this run)."""
    if key == "wrong":
        rows = [s for (sc, backend, _), s in results.items() if sc == scenario and backend == "real"]
        if not rows:
            return None
        return sum((s.get(k) or 0) for s in rows for k in ("lost", "duplicated", "reordered", "misattributed"))
    if key == "left":
        rows = [s for (sc, backend, _), s in results.items() if sc == scenario and backend == "real"]
        left = [s.get(k) for s in rows for k in ("threads_left", "pubsub_left")]
        return None if not rows or None in left else sum(left)
    if key == "room_share":
        rooms = results.get(("rooms", "real", n), {}).get("server_cpu_ms_per_message")
        lobby = results.get(("fanout", "real", 1000), {}).get("server_cpu_ms_per_message")
        return rooms / lobby if rooms and lobby else None
    return results.get((scenario, "real", n), {}).get(key)


def print_summary(results: dict, out=sys.stdout) -> None:
    """One screen: each target, the figure this run measured (medians), met or missed."""
    print("\n## Against the targets (real Redis, medians)", file=out)
    print("| target | bound | measured | |", file=out)
    print("|---|---:|---:|---|", file=out)
    for what, scenario, n, key, sense, bound in TARGETS:
        value = summary_value(results, scenario, n, key)
        if value is None:
            verdict, shown = "not measured", "-"
        else:
            met = value <= bound if sense == "<=" else value >= bound
            shown = f"{value:,.2f}" if isinstance(value, float) and value < 10 else f"{value:,.0f}"
            logged = results.get((scenario, "real", n), {}).get("clients") if key == "login_s" else None
            if logged is not None and logged < n:  # the time is then the time limit's
                met, shown = False, f"{logged:,.0f} of {n:,} in {value:,.0f}"
            verdict = "met" if met else "**missed**"
        print(f"| {what} | {sense} {bound:,} | {shown} | {verdict} |", file=out)


def main(argv=None) -> int:
    # SIGTERM ends the benchmark through its finally blocks: servers, Redis and workers stop too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args = parse_args(argv)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    nofile = raise_nofile()
    hidden = " (hidden from the server)" if args.no_hiredis else ""
    print(f"# make bench: {machine()}{hidden}; open files {nofile}; server {args.server}", flush=True)
    scenarios = [s for s in args.scenarios.split(",") if s]
    backends = [b for b in args.backends.split(",") if b]
    results = {}
    raw = []
    t_all = time.monotonic()
    for backend in backends:
        bench = Bench(args, backend)
        try:
            bench.start_redis()
            for scenario in scenarios:
                func, sizes_attr = SCENARIOS[scenario]
                sizes_text = getattr(args, sizes_attr)
                if scenario.startswith("fanout") and backend == "embedded" and args.embedded_sizes:
                    sizes_text = args.embedded_sizes
                for n in [int(x) for x in sizes_text.split(",") if x]:
                    runs = []
                    # Capacity measures logging in, so each run needs a fresh server;
                    # the others log in once and measure ``runs`` times in that room.
                    servers = args.runs if scenario in ("capacity", "stop") else 1
                    for _ in range(servers):
                        t = time.monotonic()
                        bench.metrics_port = free_port() if scenario == "fanout-metrics" else 0
                        bench.scenario_args = ["--metrics-port", str(bench.metrics_port)] if bench.metrics_port else []
                        bench.start_server()
                        try:
                            for result in func(bench, n, args):
                                runs.append(result)
                                report(scenario, backend, n, len(runs), result, t, raw)
                                t = time.monotonic()
                        except Exception as exc:  # noqa: BLE001 - one failed run must not hide the others
                            result = {"error": f"{type(exc).__name__}: {exc}"}
                            runs.append(result)
                            report(scenario, backend, n, len(runs), result, t, raw)
                        finally:
                            bench.stop_server()
                    results[(scenario, backend, n)] = summarize(scenario, runs)
        finally:
            bench.close()
    print_tables(results)
    print_summary(results)
    print(f"\n(total {time.monotonic() - t_all:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

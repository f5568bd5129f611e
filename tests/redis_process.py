"""A throwaway redis-server on a free port: for the tests and for ``make bench``.

Plain code, no pytest: ``bench/run.py`` imports it too.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProcess:
    """A throwaway redis-server on a free port, without persistence by default."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start it and wait until it answers PING (at most 10 s)."""
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen([*args, *self.extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)  # polling a process that is starting: nothing to await
        client.close()

    def stop(self) -> None:
        """Stop it and wait for it to exit."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class SentinelProcess:
    """A throwaway Redis Sentinel on a free port, watching one master (``redis-server --sentinel``).

    ``down_after_ms`` is how long the master must not answer before the
    Sentinel (the only one: quorum 1) fails over to a replica.
    """

    def __init__(self, master_port: int, config_dir, master_name: str = "mymaster", down_after_ms: int = 1000) -> None:
        self.port = free_port()
        self.master_name = master_name
        self.config = Path(config_dir) / f"sentinel-{self.port}.conf"
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {config_dir}\n"
            f"sentinel monitor {master_name} 127.0.0.1 {master_port} 1\n"
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
            f"sentinel failover-timeout {master_name} 10000\n"
            f"sentinel parallel-syncs {master_name} 1\n"
        )
        self.proc: subprocess.Popen | None = None
        self.client = redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    @property
    def url(self) -> str:
        """The server's ``--redis-url`` for this Sentinel's master."""
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.master_name}"

    def start(self) -> None:
        """Start it and wait until it answers PING (at most 10 s)."""
        self.proc = subprocess.Popen(
            [REDIS_SERVER, str(self.config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server --sentinel did not start") from None
                time.sleep(0.02)  # polling a process that is starting: nothing to await

    def master_port(self) -> int:
        """The port of the server this Sentinel calls master now."""
        return int(self.client.sentinel_get_master_addr_by_name(self.master_name)[1])

    def wait_for_replica(self, port: int, timeout: float = 30) -> None:
        """Wait until the Sentinel knows ``port`` as a healthy replica (it can fail over to it)."""
        deadline = time.monotonic() + timeout
        while True:
            replicas = self.client.sentinel_slaves(self.master_name)
            if any(int(r["port"]) == port and r.get("master-link-status") == "ok"
                   and not {"s_down", "disconnected"} & set(r["flags"].split(",")) for r in replicas):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Sentinel never saw the replica on {port}: {replicas}")
            time.sleep(0.1)  # the Sentinel learns replicas from INFO: polled

    def stop(self) -> None:
        """Stop it and wait for it to exit."""
        self.client.close()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

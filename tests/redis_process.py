"""A throwaway redis-server on a free port: for the tests and for ``make bench``.

Plain code, no pytest: ``bench/run.py`` imports it too.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

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

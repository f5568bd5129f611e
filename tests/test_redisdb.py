"""The Redis adapter: redis-py's internals checked at start, with a fallback that still chats."""

from __future__ import annotations

import logging
import threading

import pytest
from conftest import RawClient, scaled

from chatroom import redisdb
from chatroom.config import Config

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("redis_kind", ["real"], indirect=True)  # fakeredis never takes the fast path
def test_when_redis_py_keeps_its_internals_elsewhere_listeners_use_the_public_path(make_server, monkeypatch, caplog):
    monkeypatch.setattr(redisdb, "REQUIRED_INTERNALS", (*redisdb.REQUIRED_INTERNALS, "_parser._moved_elsewhere"))
    monkeypatch.setattr(redisdb, "_fast_paths", True)
    with caplog.at_level(logging.WARNING, logger="chatroom.server"):
        server = make_server()
        make_server()  # a second server in the process: no second warning
    warnings = [r for r in caplog.records if "keeps its internals elsewhere" in r.getMessage()]
    assert len(warnings) == 1 and "_parser._moved_elsewhere" in warnings[0].getMessage()
    alice, bob = RawClient(server.port), RawClient(server.port)
    try:
        alice.login("alice")
        bob.login("bob")
        (conn,) = [c for c in server.connections if c.name == "bob"]
        assert redisdb.raw_pubsub_socket(conn.broadcast_sub.connection) is None
        for i in range(100):  # a burst, then a quiet message: every one arrives, in order
            alice.send(f"channel:channel1::{i}")
        for i in range(100):
            bob.expect(f"channel:channel1:alice:{i}\n")
        alice.send("individual:bob::psst")
        bob.expect("individual:alice:private:psst\n")
    finally:
        alice.close()
        bob.close()


@pytest.mark.parametrize("redis_kind", ["real"], indirect=True)
def test_with_redis_py_as_pinned_the_listeners_take_the_fast_path(make_server):
    server = make_server()
    client = RawClient(server.port)
    try:
        client.login("alice")
        (conn,) = server.connections
        assert redisdb.raw_pubsub_socket(conn.broadcast_sub.connection) is not None
    finally:
        client.close()


def test_on_the_embedded_redis_a_command_waits_for_a_busy_pool_instead_of_failing():
    # Found by make bench: 1,000 logins at once on the embedded Redis were
    # refused with "Too many connections" once 32 commands were in flight.
    rdb = redisdb.connect_redis(Config())
    pool = rdb.connection_pool
    held = [pool.get_connection() for _ in range(redisdb.COMMAND_CONNECTIONS)]
    releaser = threading.Timer(scaled(0.2), pool.release, args=(held.pop(),))
    releaser.start()
    try:
        assert rdb.ping()  # on the connection released meanwhile
    finally:
        releaser.join()
        for connection in held:
            pool.release(connection)
        pool.disconnect()

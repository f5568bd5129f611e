"""The Redis adapter: redis-py's internals checked at start, with a fallback that still chats."""

from __future__ import annotations

import logging
import threading

import pytest
import redis
from conftest import RawClient, scaled

from chatroom import redisdb
from chatroom.config import Config
from server import ChatServer

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


def server_with_a_small_pool(redis_client, prefix: str, wait: float) -> tuple[ChatServer, redis.BlockingConnectionPool]:
    """A running server whose users' commands share 4 connections, each waited for ``wait`` seconds at most."""
    pool = redis_client.connection_pool
    users_pool = redis.BlockingConnectionPool(
        connection_class=pool.connection_class, max_connections=4, timeout=wait, **pool.connection_kwargs
    )
    server = ChatServer(
        Config(port=0, key_prefix=prefix, dead_after=60.0, rate_limit=0), redis.Redis(connection_pool=users_pool)
    )
    server.start()
    return server, users_pool


def take_every_connection(pool: redis.BlockingConnectionPool) -> list:
    """Every connection of ``pool`` not in use by the server (its control channel keeps one)."""
    held = []
    while True:
        try:
            held.append(pool.get_connection())
        except redis.ConnectionError:
            return held


def test_the_heartbeat_does_not_wait_behind_the_users_commands(redis_client):
    # Found by make bench: when 3,000 users left at once, their removals held
    # every command connection, the heartbeat waited past the pool's limit,
    # and every user was told that Redis was lost, then that it was back.
    server, users_pool = server_with_a_small_pool(redis_client, "heartbeat-apart:", scaled(0.1))
    alice = RawClient(server.port)
    held = []
    try:
        alice.login("alice")
        held = take_every_connection(users_pool)
        with pytest.raises(redis.ConnectionError, match="No connection available"):
            server.rdb.ping()  # the users' commands: every connection taken
        server.membership.heartbeat()
        assert not server.health.down
        assert redis_client.exists(server.keys.server_alive(server.server_id))
    finally:
        for connection in held:
            users_pool.release(connection)
        alice.close()
        server.shutdown()


def test_a_leaving_user_waits_for_a_busy_pool_instead_of_failing(redis_client, caplog):
    # Found by make bench: thousands leaving at once, a removal that waited
    # past the pool's limit failed ("No connection available"); its user was
    # removed only by the next heartbeat, its leave notice late.
    server, users_pool = server_with_a_small_pool(redis_client, "leave-waits:", scaled(0.2))
    alice, bob = RawClient(server.port), RawClient(server.port)
    held = []
    try:
        alice.login("alice")
        bob.login("bob")
        alice.expect("channel:channel1:系统消息:User < bob > joined!\n")
        held = take_every_connection(users_pool)
        with caplog.at_level(logging.ERROR, logger="chatroom.server"):
            bob.close()
            # Busy past one wait (0.2 s), within the retries.
            releaser = threading.Timer(scaled(0.5), lambda: [users_pool.release(c) for c in held])
            releaser.start()
            alice.expect("channel:channel1:系统消息:User left: bob\n")
            releaser.join()
        held = []
        assert not [r.getMessage() for r in caplog.records if "removing" in r.getMessage()]
    finally:
        for connection in held:
            users_pool.release(connection)
        alice.close()
        server.shutdown()

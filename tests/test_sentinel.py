"""Redis Sentinel: a real master, replica and Sentinel on free ports; the servers follow a failover."""

from __future__ import annotations

import time
import types

import pytest
import redis
from conftest import REDIS_SERVER, RedisProcess, scaled, server_processes
from redis_process import SentinelProcess
from test_cluster import BACK, LOST, online_count

from chatroom import redisdb
from chatroom.cluster import RedisHealth

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

#: The Sentinel's down-after-milliseconds: how long a silent master waits for its failover.
DOWN_AFTER_MS = 1000


@pytest.fixture
def sentinel(tmp_path):
    """A master, one replica of it, and a Sentinel (quorum 1) that knows both."""
    master = RedisProcess("--dir", str(tmp_path))
    master.start()
    (tmp_path / "replica").mkdir()
    replica = RedisProcess("--replicaof", "127.0.0.1", str(master.port), "--dir", str(tmp_path / "replica"))
    replica.start()
    watcher = SentinelProcess(master.port, tmp_path, down_after_ms=DOWN_AFTER_MS)
    watcher.start()
    watcher.wait_for_replica(replica.port)
    watcher.master, watcher.replica = master, replica
    yield watcher
    watcher.stop()
    for process in (replica, master):
        if process.proc is not None and process.proc.poll() is None:
            process.stop()


@pytest.fixture
def servers(sentinel):
    yield from server_processes(sentinel.url, "--dead-after", "3")


def test_sentinel_urls_are_checked_when_parsed():
    target = redisdb.parse_sentinel_url("redis+sentinel://:pw@10.0.0.1:26379,[::1]:26380/chat/2")
    assert target.sentinels == [("10.0.0.1", 26379), ("::1", 26380)]
    assert (target.master, target.db, target.password) == ("chat", 2, "pw")
    for bad in ("redis+sentinel://h:26379", "redis+sentinel://h/chat", "redis+sentinel://h:x/chat",
                "redis+sentinel://h:1/chat/zero"):
        with pytest.raises(ValueError):
            redisdb.check_redis_url(bad)
    with pytest.raises(ValueError) as refused:
        redisdb.check_redis_url("redis+sentinel://:hunter2@h/chat")
    assert "hunter2" not in str(refused.value)


def test_back_waits_for_every_listener_cut_by_a_failover_not_only_the_first_to_notice():
    user = types.SimpleNamespace(alive=True, subscribed_under=["old", "old"])
    health = RedisHealth(None, lambda: [user])
    health.run_id = "new"  # the heartbeat found the new master and cut both subscriptions
    with health.resubscribing():  # the broadcast listener noticed first
        user.subscribed_under[0] = None
        assert not health.listeners_back
    user.subscribed_under[0] = "new"
    assert not health.listeners_back, "the personal listener is still on the old master"
    user.subscribed_under[1] = "new"
    assert health.listeners_back
    user.subscribed_under[1] = "old"
    user.alive = False  # a user leaving is not waited for
    assert health.listeners_back


def chat_survives_a_failover(sentinel, servers, fail_over) -> None:
    a, b = servers(), servers()
    alice, bob = a.client(), b.client()
    alice.login("alice")
    bob.login("bob")
    alice.send("channel:channel1::before")
    bob.expect("channel:channel1:alice:before\n")
    old_master = sentinel.master_port()
    fail_over()
    started = time.monotonic()
    for client, name in ((alice, "alice"), (bob, "bob")):
        client.expect(LOST.format(name))
        client.expect(BACK.format(name))
    assert sentinel.master_port() == sentinel.replica.port != old_master
    alice.send("channel:channel1::after")  # on the same client connections
    bob.expect("channel:channel1:alice:after\n")
    bob.send("individual:alice::and privately")
    alice.expect("individual:bob:private:and privately\n")
    assert time.monotonic() - started < scaled(DOWN_AFTER_MS / 1000 + 10)
    # Registrations were reconciled on the new master: count, names, ranking.
    assert online_count(bob, "bob") == 2
    carol = a.client()
    carol.send("individual::changeNameFirst:alice")
    carol.expect(lambda f: "changeNameFirst0" in f)
    carol.login("carol")
    assert online_count(alice, "alice") == 3
    new_master = redis.Redis(port=sentinel.replica.port)
    assert sorted(new_master.hvals("chatroom:usersName")) == [b"alice", b"bob", b"carol"]
    for client, name in ((alice, "alice"), (bob, "bob")):
        assert client.seen.count(LOST.format(name)) == 1 and client.seen.count(BACK.format(name)) == 1


def test_a_sentinel_failover_moves_every_server_to_the_new_master_and_keeps_every_client(sentinel, servers):
    chat_survives_a_failover(sentinel, servers, lambda: sentinel.client.sentinel_failover(sentinel.master_name))


def test_a_master_killed_with_sigkill_is_replaced_and_chat_goes_on(sentinel, servers):
    def kill_master():
        sentinel.master.proc.kill()
        sentinel.master.proc.wait(10)
        sentinel.master.proc = None

    chat_survives_a_failover(sentinel, servers, kill_master)

"""Redis that says no, or says nothing for a while: maxclients, a frozen Redis, a stop under a crowd."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest
import redis
from conftest import REDIS_SERVER, ROOT, RawClient, scaled
from test_cluster import left, online_count

from framing import encode

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

REFUSED = "The server cannot take new users right now, please try again later"
MAY_OR_MAY_NOT = "Redis did not answer in time: your message may or may not have been delivered"


def system_texts(client: RawClient) -> list[str]:
    return [f.rstrip("\n").split(":", 3)[3] for f in client.seen if f.split(":", 3)[2:3] == ["系统消息"]]


@pytest.mark.parametrize("redis_proc", [("--maxclients", "56")], indirect=True)
def test_at_redis_maxclients_connected_users_chat_newcomers_are_refused_and_leavers_leave(redis_proc, cluster):
    server = cluster("--dead-after", "3")
    admin = redis.Redis.from_url(redis_proc.url)
    admin.ping()  # one connection of the 56, kept; the server holds 32 for commands
    users = []
    for i in range(40):  # each user holds two subscriptions: Redis is full long before 40
        client = server.client()
        client.send(f"individual::changeNameFirst:u{i}")
        answer = client.expect(lambda f: "changeNameFirst1" in f or REFUSED in f)
        if REFUSED in answer:
            started = time.monotonic()
            assert client.expect_closed() == []  # the refusal, then the connection closes
            assert time.monotonic() - started < scaled(5)
            break
        users.append(client)
    else:
        pytest.fail("Redis never refused a connection")
    assert len(users) >= 4
    # Everyone already connected chats, again and again (original: about half got "Server error").
    for round_number in range(10):
        for i, user in enumerate(users):
            user.send(f"channel:channel1::r{round_number} from u{i}")
        for user in users:
            awaited = {f"channel:channel1:u{i}:r{round_number} from u{i}\n" for i in range(len(users))}
            while awaited:  # senders' messages interleave in any order
                awaited.discard(user.recv())
    assert not any("Server error" in text for user in users for text in system_texts(user))
    # A user who leaves is removed at once, name and all (original: listed as online for good).
    users[0].send("channel:channel1:quit:")
    users[0].expect_closed()
    users[1].expect(left("u0"))
    assert online_count(users[1], "u1") == len(users) - 1
    again = server.client()  # its two connections are free again: a newcomer fits, and takes the name
    again.login("u0")
    log = server.read_log()
    assert log.count("max number of clients reached") == 1, log
    assert "Traceback" not in log
    admin.close()


@pytest.mark.parametrize("redis_proc", [("--maxclients", "20")], indirect=True)
def test_a_redis_at_maxclients_at_start_is_one_line_and_exit_1(redis_proc):
    holders = [redis.Redis.from_url(redis_proc.url) for _ in range(20)]
    for holder in holders:
        try:
            holder.ping()
        except redis.ConnectionError:
            break  # full
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--port", "0", "--redis-url", redis_proc.url],
        capture_output=True, text=True, timeout=60, check=False,
    )
    for holder in holders:
        holder.close()
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith(f"cannot use Redis at {redis_proc.url}: it has reached its maxclients")


def test_a_redis_frozen_longer_than_the_timeout_leaves_nothing_wrong_behind(redis_proc, cluster):
    """SIGSTOP for 8 s (past redis-py's 5 s timeout), then SIGCONT."""
    server = cluster("--dead-after", "3")
    alice, bob, carol = server.client(), server.client(), server.client()
    alice.login("alice")
    bob.login("bob")
    carol.send("individual::menu:")
    carol.expect(lambda f: "./menu" in f)  # carol is registered, still a guest
    redis_proc.proc.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        alice.send("channel:channel1::said while frozen")
        carol.send("individual::changeNameFirst:carol")
        dave = server.client()  # a login while Redis says nothing
        rename = carol.expect(lambda f: "changeNameFirst" in f)
        told = alice.expect(lambda f: MAY_OR_MAY_NOT in f or "not sent" in f)
        time.sleep(max(0.0, 8 - (time.monotonic() - frozen_at)))  # the freeze itself is under test
    finally:
        redis_proc.proc.send_signal(signal.SIGCONT)
    assert rename.split(":", 2)[2] == (
        "changeNameFirst2:Redis did not answer in time: your nickname was not changed, please try again\n"
    )
    # The timed-out message ran once Redis resumed: it was reported as maybe delivered, never as not sent.
    assert told == f"individual:alice:系统消息:{MAY_OR_MAY_NOT}\n"
    bob.expect("channel:channel1:alice:said while frozen\n")
    assert not any("not sent" in text for text in system_texts(alice))
    dave.expect_closed()
    # carol leaves: the name her timed-out claim may have taken is free again.
    carol.send("channel:channel1:quit:")
    carol.expect_closed()
    eve = server.client()
    deadline = time.monotonic() + scaled(15)
    while True:  # the name is freed by the reconcile after the timeout, or by carol's leaving
        eve.send("individual::changeNameFirst:carol")
        if "changeNameFirst1" in eve.expect(lambda f: "changeNameFirst" in f):
            break
        assert time.monotonic() < deadline, "carol's name stayed taken"
        time.sleep(0.2)  # the reconcile runs on the heartbeat: nothing to await
    # No ghost: whatever dave's timed-out registration left is gone (the reconcile).
    while online_count(bob, "bob") != 3:  # alice, bob, eve
        assert time.monotonic() < deadline, (
            f"ghost users: {online_count(bob, 'bob')} online: "
            f"{redis.Redis.from_url(redis_proc.url).hgetall('chatroom:usersName')}\n{server.read_log()}"
        )
        time.sleep(0.2)
    # Nobody was dropped.
    alice.send("channel:channel1::still here")
    bob.expect("channel:channel1:alice:still here\n")
    assert "Traceback" not in server.read_log()


# --- the graceful stop under a crowd ------------------------------------------------------


def log_in_many(port: int, names: list[str]) -> list[socket.socket]:
    """Log in many raw clients at once: every login sent first, then every answer awaited."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in names]
    for sock, name in zip(sockets, names):
        sock.sendall(encode(f"individual::changeNameFirst:{name}"))
    for sock, name in zip(sockets, names):
        wanted = f"individual:{name}:changeNameFirst1:{name}\n".encode()
        data = b""
        while wanted not in data:
            chunk = sock.recv(65536)
            assert chunk, f"{name} was not logged in"
            data = data[-len(wanted):] + chunk
    return sockets


def read_to_the_end(sock: socket.socket) -> bytes:
    data = []
    try:
        while chunk := sock.recv(1 << 20):
            data.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(data)


@pytest.mark.timeout(180)
def test_sigterm_with_a_thousand_users_tells_each_removes_each_and_others_see_each_leave_once(
    redis_proc, cluster
):
    crowd = cluster("--max-per-ip", "0", "--server-id", "crowd")
    other = cluster("--server-id", "other")
    watcher = other.client()
    watcher.login("watcher")
    names = [f"u{i:04}" for i in range(1000)]
    sockets = log_in_many(crowd.port, names)
    for sock in sockets[:50]:  # some leave by a reset just before the stop, as in the field
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    started = time.monotonic()
    crowd.proc.terminate()
    assert crowd.proc.wait(scaled(30)) == 0
    took = time.monotonic() - started
    assert took < scaled(10), f"the stop took {took:.1f} s"
    notice = b":The server is shutting down\n"
    assert all(notice in read_to_the_end(sock) for sock in sockets[50:])
    watcher.send("channel:channel1::marker")
    watcher.expect("channel:channel1:watcher:marker\n")
    lefts = [f for f in watcher.seen if f.startswith("channel:channel1:系统消息:User left: ")]
    assert sorted(lefts) == sorted(left(name) for name in names)  # each once
    admin = redis.Redis.from_url(redis_proc.url)
    assert admin.hvals("chatroom:usersName") == [b"watcher"]
    assert admin.hkeys("chatroom:usersByName") == [b"watcher"]
    assert admin.smembers("chatroom:servers") == {b"other"}
    assert "shut down in" in crowd.read_log() or "Traceback" not in crowd.read_log()
    for sock in sockets:
        sock.close()


def test_a_second_sigterm_ends_a_stuck_stop_at_once(redis_proc, cluster):
    server = cluster("--shutdown-grace", "60")
    client = server.client()
    client.login("alice")
    redis_proc.proc.send_signal(signal.SIGSTOP)  # the stop now waits on Redis
    try:
        server.proc.terminate()
        time.sleep(0.5)  # let the first signal be taken: it is the second that is under test
        assert server.proc.poll() is None, "the stop did not wait for Redis"
        started = time.monotonic()
        server.proc.terminate()
        server.proc.wait(scaled(5))
        assert time.monotonic() - started < scaled(2)
    finally:
        redis_proc.proc.send_signal(signal.SIGCONT)

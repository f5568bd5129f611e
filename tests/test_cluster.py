"""Several server processes on one real Redis: one room, crashes, Redis restarts and outages."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
from conftest import REDIS_SERVER, ROOT, RawClient, ServerProcess, scaled

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

LOST = "individual:{}:系统消息:The server lost its connection to Redis: messages cannot be sent for now\n"
BACK = "individual:{}:系统消息:The server is connected to Redis again\n"
NOT_SENT = "individual:{}:系统消息:Server error: your message was not sent, please try again later\n"


def left(name):
    return f"channel:channel1:系统消息:User left: {name}\n"


def online_count(client: RawClient, name: str) -> int:
    client.send("channel:channel1:onlineList:")
    answer = client.expect(lambda f: f.startswith(f"channel:channel1:{name}:Users online: "))
    return int(answer.rsplit(" ", 1)[1])


def test_users_on_two_processes_share_one_room(cluster):
    a, b = cluster(), cluster()
    alice, bob, carol = a.client(), b.client(), b.client()
    alice.login("alice")
    bob.login("bob")
    alice.expect("channel:channel1:系统消息:User < bob > joined!\n")
    carol.login("carol")
    alice.send("channel:channel1::hello from A")
    bob.expect("channel:channel1:alice:hello from A\n")
    bob.send("channel:channel1::hello from B")
    alice.expect("channel:channel1:bob:hello from B\n")
    alice.send("individual:bob::psst")
    bob.expect("individual:alice:private:psst\n")
    dave = b.client()
    dave.send("individual::changeNameFirst:ALICE")
    dave.expect(lambda f: "changeNameFirst0:That name is taken" in f)
    assert online_count(alice, "alice") == 4
    bob.send("channel:channel1:activity:")
    ranking = bob.expect(lambda f: "Activity ranking" in f)
    assert " : alice (" in ranking and " : bob (" in ranking
    carol.send("channel:channel1:quit:")
    alice.expect(left("carol"))


def test_starting_another_process_keeps_the_users_of_the_running_ones(cluster):
    a = cluster()
    alice = a.client()
    alice.login("alice")
    b = cluster()
    bob = b.client()
    bob.login("bob")
    assert online_count(bob, "bob") == 2
    alice.send("channel:channel1::still here")
    bob.expect("channel:channel1:alice:still here\n")


def test_a_killed_process_users_are_removed_and_announced_once(cluster):
    a, b, c = (cluster("--dead-after", "1.5") for _ in range(3))
    alice, bob, carol = a.client(), b.client(), c.client()
    alice.login("alice")
    bob.login("bob")
    carol.login("carol")
    a.proc.kill()
    started = time.monotonic()
    bob.expect(left("alice"))
    carol.expect(left("alice"))
    assert time.monotonic() - started < scaled(10)
    bob.send("channel:channel1::marker")
    bob.expect("channel:channel1:bob:marker\n")
    carol.expect("channel:channel1:bob:marker\n")
    assert bob.seen.count(left("alice")) == 1 and carol.seen.count(left("alice")) == 1
    alice_again = c.client()
    alice_again.login("alice")
    assert online_count(bob, "bob") == 3


def test_a_process_restarted_with_the_same_id_cleans_up_at_once(cluster):
    a = cluster("--server-id", "a", "--dead-after", "60")
    b = cluster()
    alice, bob = a.client(), b.client()
    alice.login("alice")
    bob.login("bob")
    a.proc.kill()
    a.proc.wait(10)
    started = time.monotonic()
    a_again = cluster("--server-id", "a", "--dead-after", "60")
    bob.expect(left("alice"))
    assert time.monotonic() - started < scaled(10), "not at once: the dead-after of 60 s would have done it"
    a_again.client().login("alice")


@pytest.mark.parametrize(
    "redis_proc", [(), ("--appendonly", "yes")], indirect=True, ids=["without-persistence", "with-persistence"]
)
def test_a_redis_restart_mid_conversation_loses_no_user(redis_proc, cluster):
    a, b = cluster(), cluster()
    alice, bob = a.client(), b.client()
    alice.login("alice")
    bob.login("bob")
    alice.send("channel:channel1::before")
    bob.expect("channel:channel1:alice:before\n")
    redis_proc.stop()
    redis_proc.start()
    for client, name in ((alice, "alice"), (bob, "bob")):
        client.expect(LOST.format(name))
        client.expect(BACK.format(name))
    alice.send("channel:channel1::after")
    bob.expect("channel:channel1:alice:after\n")
    bob.send("channel:channel1::after too")
    alice.expect("channel:channel1:bob:after too\n")
    # The servers registered their users again (or kept them, with persistence).
    assert online_count(bob, "bob") == 2
    dave = b.client()
    dave.send("individual::changeNameFirst:alice")
    dave.expect(lambda f: "changeNameFirst0" in f)
    dave.login("dave")
    bob.send("channel:channel1:activity:")
    ranking = bob.expect(lambda f: "Activity ranking" in f)
    assert " : alice (" in ranking and " : bob (" in ranking and " : dave (" in ranking
    for client in (alice, bob):
        assert client.seen.count(LOST.format(client.seen[0].split(":")[1])) <= 1



@pytest.mark.timeout(120)
def test_redis_gone_for_ten_seconds_keeps_every_chat_client(redis_proc, cluster):
    a = cluster()
    alice, bob = a.client(), a.client()
    alice.login("alice")
    bob.login("bob")
    redis_proc.stop()
    alice.expect(LOST.format("alice"))
    bob.expect(LOST.format("bob"))
    alice.send("channel:channel1::into the void")
    assert alice.expect(lambda f: "系统消息" in f and "alice" in f.split(":")[1]) == NOT_SENT.format("alice")
    time.sleep(10)  # the outage itself is what is under test
    redis_proc.start()
    alice.expect(BACK.format("alice"))
    bob.expect(BACK.format("bob"))
    alice.send("channel:channel1::back again")
    bob.expect("channel:channel1:alice:back again\n")
    assert alice.seen.count(LOST.format("alice")) == 1 and bob.seen.count(BACK.format("bob")) == 1
    assert online_count(bob, "bob") == 2


def test_graceful_shutdown_of_one_process_leaves_the_others_undisturbed(cluster):
    a, b = cluster(), cluster()
    alice, bob, carol = a.client(), b.client(), b.client()
    alice.login("alice")
    bob.login("bob")
    carol.login("carol")
    a.proc.terminate()
    assert a.proc.wait(10) == 0
    bob.expect(left("alice"))
    bob.send("channel:channel1::still here")
    carol.expect("channel:channel1:bob:still here\n")
    assert online_count(carol, "carol") == 2
    assert bob.seen.count(left("alice")) == 1


@pytest.mark.parametrize("redis_kind", ["real"], indirect=True)  # FLUSHALL of a shared real Redis
def test_after_redis_loses_its_data_new_users_never_get_a_live_users_id(make_server, redis_client):
    server = make_server(dead_after=0.6)  # heartbeat every 0.2 s
    alice = RawClient(server.port)
    alice.login("alice")
    alice_id = redis_client.hget(server.keys.users_by_name, "alice").decode()
    redis_client.flushall()
    deadline = time.monotonic() + 10
    while redis_client.hget(server.keys.users_name, alice_id) != b"alice":  # wait for re-registration
        assert time.monotonic() < deadline, "the server never registered alice again"
        time.sleep(0.05)
    bob = RawClient(server.port)
    bob.login("bob")
    assert redis_client.hget(server.keys.users_by_name, "bob").decode() != alice_id
    bob.send("individual:alice::just you")
    alice.expect("individual:bob:private:just you\n")
    assert online_count(alice, "alice") == 2


# --- what a sender is told about a message is what happened to it -----------------------


def replies_to(client: RawClient, name: str):
    return [f for f in client.seen if f.startswith(f"individual:{name}:")]


def wait_until(condition, failure: str, timeout: float = 10) -> None:
    """Poll Redis (it has no event to await) until ``condition()`` holds."""
    deadline = time.monotonic() + scaled(timeout)
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.02)


def wait_for_log(server: ServerProcess, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.read_log():
        assert time.monotonic() < deadline, f"the server never logged {text!r}"
        time.sleep(0.05)  # a log file has nothing to await


def test_messages_reported_not_sent_during_an_outage_are_never_delivered(redis_proc, cluster):
    a = cluster()
    alice, carol = a.client(), a.client()
    alice.login("alice")
    carol.login("carol")
    redis_proc.stop()
    alice.expect(LOST.format("alice"))
    for text in ("X1", "X2"):
        alice.send(f"channel:channel1::{text}")
        alice.expect(NOT_SENT.format("alice"))
    redis_proc.start()
    alice.expect(BACK.format("alice"))
    carol.expect(BACK.format("carol"))
    alice.send("channel:channel1::X3")
    carol.expect("channel:channel1:alice:X3\n")
    alice.expect("channel:channel1:alice:X3\n")
    # Original here: the failed pipeline kept X1 and X2 queued, and sent them with X3.
    assert not any(":X1" in f or ":X2" in f for f in carol.seen + alice.seen)


def test_out_of_memory_a_refused_message_reaches_nobody_and_gets_one_answer(redis_proc, cluster):
    a = cluster("--dead-after", "0.6")
    alice, carol = a.client(), a.client()
    alice.login("alice")
    carol.login("carol")
    admin = redis.Redis.from_url(redis_proc.url)
    admin.config_set("maxmemory", 1)  # noeviction, the default: every write that may grow memory is refused
    try:
        wait_for_log(a, "Redis refuses writes")  # the heartbeat met it too
        alice.send("channel:channel1::refused")
        alice.expect(NOT_SENT.format("alice"))
        alice.send("individual:carol::also refused")
        alice.expect(NOT_SENT.format("alice"))
        alice.send("individual:alice:changeName:alicia")
        answer = alice.expect(lambda f: f.startswith("individual:alice:"))
        assert "changeNameFirst2" in answer or "changeName1" in answer
    finally:
        admin.config_set("maxmemory", 0)
    name = "alicia" if "changeName1" in answer else "alice"
    alice.send("channel:channel1::accepted again")
    carol.expect(f"channel:channel1:{name}:accepted again\n")
    alice.expect(f"channel:channel1:{name}:accepted again\n")
    assert not any("refused" in f for f in carol.seen)
    # One answer each (after the login's): the refused chat, the refused private message, the rename.
    assert len([f for f in replies_to(alice, "alice") if "系统消息" in f or "changeName" in f]) == 1 + 3
    # Redis answered all along: nobody was told the connection was lost.
    assert LOST.format("carol") not in carol.seen


def test_a_heartbeat_that_fails_during_an_outage_logs_once_then_says_how_long_it_lasted(redis_proc, cluster):
    a = cluster("--dead-after", "0.6")  # a heartbeat every 0.2 s
    alice = a.client()
    alice.login("alice")
    redis_proc.stop()
    alice.expect(LOST.format("alice"))
    time.sleep(1.5)  # the outage itself is what is under test: about 7 heartbeats fail
    redis_proc.start()
    alice.expect(BACK.format("alice"))
    a.stop()
    log = a.read_log()
    assert log.count("lost the connection to Redis") == 1, log
    assert "heartbeat failed" not in log, log
    assert re.search(r"Redis is reachable again, after \d+\.\d s", log), log


#: The last commit before the chatroom package, when server.py held everything.
PRE_PACKAGE_COMMIT = "726734ee1da7086bda0b9be5010e9d12efa1bec6"


def previous_layout(into) -> Path:
    """server.py, framing.py and protocol.py of :data:`PRE_PACKAGE_COMMIT`, extracted into ``into``."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", PRE_PACKAGE_COMMIT, "server.py", "framing.py", "protocol.py"],
            capture_output=True, check=True, timeout=30,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"commit {PRE_PACKAGE_COMMIT} is not in this checkout's history (a shallow clone?): {exc}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True, timeout=30)
    return into / "server.py"


def test_a_process_of_the_previous_layout_and_this_one_share_a_redis(redis_proc, cluster, tmp_path):
    """An upgrade runs old and new processes side by side: same keys, same scripts, same payloads."""
    old = ServerProcess(redis_proc.url, "--rate-limit", "0", "--dead-after", "1.5", script=previous_layout(tmp_path))
    try:
        new = cluster("--dead-after", "1.5")
        alice, bob = old.client(), new.client()
        alice.login("alice")
        bob.login("bob")
        alice.expect("channel:channel1:系统消息:User < bob > joined!\n")
        alice.send("channel:channel1::from the old one")
        bob.expect("channel:channel1:alice:from the old one\n")
        bob.send("individual:alice::and back")
        alice.expect("individual:bob:private:and back\n")
        carol = new.client()
        carol.send("individual::changeNameFirst:ALICE")  # names are shared: taken on the old process
        carol.expect(lambda f: "changeNameFirst0" in f)
        assert online_count(bob, "bob") == 3
        old.proc.kill()  # the new process reaps the old one's users, once
        bob.expect(left("alice"))
        carol.login("alice")
        assert bob.seen.count(left("alice")) == 1
    finally:
        old.stop()
        old.log.close()


# --- crash cleanup that survives a second crash ----------------------------------------


def test_a_survivor_killed_while_cleaning_up_is_taken_over_and_each_user_announced_once(redis_proc, cluster):
    """Three processes; kill -9 the first; once its cleanup has begun, kill -9 the one cleaning."""
    # 20 users a second: the cleanup of 30 users takes 1.5 s, time to kill its cleaner midway.
    a, b, c = (cluster("--server-id", sid, "--dead-after", "1.5", "--reap-rate", "20") for sid in "abc")
    users = [a.client() for _ in range(30)]
    for i, user in enumerate(users):
        user.login(f"u{i}")
    watchers = {"b": b.client(), "c": c.client()}
    for sid, watcher in watchers.items():
        watcher.login(f"w{sid}")
    admin = redis.Redis.from_url(redis_proc.url)
    a.proc.kill()
    deadline = time.monotonic() + scaled(20)
    while True:  # the cleanup has begun: a lease names the cleaner, and some users are gone
        holder = admin.get("chatroom:cleanup:a")
        if holder is not None and admin.scard("chatroom:serverUsers:a") < 30:
            break
        assert time.monotonic() < deadline, "no survivor began the cleanup"
        time.sleep(0.005)  # Redis is polled: there is no event to await
    cleaner = {"b": b, "c": c}[holder.decode()]
    survivor_id = "c" if holder == b"b" else "b"
    cleaner.proc.kill()
    assert 0 < admin.scard("chatroom:serverUsers:a") < 30, "the cleanup was not cut midway"
    watcher = watchers[survivor_id]
    expected = {left(f"u{i}") for i in range(30)} | {left(f"w{holder.decode()}")}
    while not expected <= set(watcher.seen):
        watcher.recv()
    watcher.send("channel:channel1::marker")
    watcher.expect(f"channel:channel1:w{survivor_id}:marker\n")
    assert all(watcher.seen.count(notice) == 1 for notice in expected)
    assert admin.hvals("chatroom:usersName") == [f"w{survivor_id}".encode()]
    assert admin.hlen("chatroom:usersOnline") == 1
    assert admin.hkeys("chatroom:usersByName") == [f"w{survivor_id}".encode()]
    # The dead leave the list once their last user is gone: a moment after the last notice.
    wait_until(lambda: admin.smembers("chatroom:servers") == {survivor_id.encode()}, "the dead stay listed")
    assert not admin.exists("chatroom:serverUsers:a", "chatroom:cleanup:a")
    assert online_count(watcher, f"w{survivor_id}") == 1
    {"b": b, "c": c}[survivor_id].client().login("u7")  # the names are free again


def test_a_stop_cut_short_leaves_its_users_to_the_survivors_as_a_crash_does(redis_proc, cluster):
    """Redis frozen during a stop: the grace runs out, the process exits, and a survivor cleans up."""
    a = cluster("--server-id", "a", "--dead-after", "1.5", "--shutdown-grace", "1")
    b = cluster("--server-id", "b", "--dead-after", "1.5")
    alice, bob = a.client(), b.client()
    alice.login("alice")
    bob.login("bob")
    redis_proc.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        a.proc.terminate()
        a.proc.wait(scaled(10))
        assert time.monotonic() - started < scaled(5)  # the grace, and the watchdog's margin at most
    finally:
        redis_proc.proc.send_signal(signal.SIGCONT)
    bob.expect(left("alice"))
    bob.send("channel:channel1::marker")
    bob.expect("channel:channel1:bob:marker\n")
    assert bob.seen.count(left("alice")) == 1
    assert online_count(bob, "bob") == 1

"""Accounts and moderation across server processes on one real Redis, and the admin command line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis
from conftest import REDIS_SERVER, ROOT, RawClient
from test_accounts import PASSWORD, answer, guest_of, registered

from chatroom import accounts
from chatroom.redisdb import Keys

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

PREFIX = "chatroom:"

def admin(redis_url: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m chatroom.admin --redis-url URL ARGS...``."""
    return subprocess.run(
        [sys.executable, "-m", "chatroom.admin", "--redis-url", redis_url, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "REDIS_URL": "", "CHATROOM_KEY_PREFIX": ""},
    )


def operator_on(server, redis_url: str, name: str = "op") -> RawClient:
    client = server.client()
    registered(client, name)
    result = admin(redis_url, "grant-oper", name)
    assert (result.returncode, result.stdout) == (0, f"{name} is now an operator\n"), result.stderr
    return client


def test_kick_ban_and_mute_reach_users_on_another_process(cluster, redis_proc):
    a, b = cluster(), cluster()
    op = operator_on(a, redis_proc.url)
    alice, carol = b.client(), b.client()
    alice.login("alice")
    carol.login("carol")
    op.send("individual:op:kick:alice bye")
    assert answer(op, "op", "kick1") == "individual:op:kick1:< alice > was kicked\n"
    assert "individual:alice:系统消息:You were kicked by op: bye\n" in alice.expect_closed()
    op.send("individual:op:mute:carol 1h")
    answer(op, "op", "mute1")
    carol.expect(lambda f: f.startswith("individual:carol:系统消息:You were muted by op"))
    carol.send("channel:channel1::hello?")
    carol.expect(lambda f: "your message was not sent" in f)
    remote = RawClient(b.port, source="127.0.0.2")
    remote.login("remote")
    op.send("individual:op:ban:ip=127.0.0.2 1h")
    answer(op, "op", "ban1")
    assert any(f.startswith("individual:remote:系统消息:You are banned until ") for f in remote.expect_closed())
    refused = RawClient(b.port, source="127.0.0.2").expect_closed()
    assert len(refused) == 1 and refused[0].startswith("individual::系统消息:You are banned until ")


def test_failed_logins_are_counted_for_every_process_together(cluster):
    a, b = cluster(), cluster()
    owner = a.client()
    registered(owner, "alice")
    for server in (a, b, a, b, a):
        client = server.client()
        guest = guest_of(client)
        client.send("individual::login:alice:not the password")
        assert answer(client, guest, "login0").endswith(":Wrong password\n")
        client.close()
    late = b.client()
    guest = guest_of(late)
    late.send(f"individual::login:alice:{PASSWORD}")
    assert "Too many failed logins" in answer(late, guest, "login0")


def test_bans_are_honoured_after_every_process_restarted(cluster, redis_proc):
    a = cluster()
    op = operator_on(a, redis_proc.url)
    op.send("individual:op:ban:ip=127.0.0.3 0")
    answer(op, "op", "ban1")
    op.send("individual:op:ban:mallory 1d spam")
    answer(op, "op", "ban1")
    a.stop()
    again = cluster()
    assert RawClient(again.port, source="127.0.0.3").expect_closed() == [
        "individual::系统消息:You are banned until lifted\n"
    ]
    client = again.client()
    guest = guest_of(client)
    client.send("individual::changeNameFirst:mallory")
    assert answer(client, guest, "changeNameFirst0").endswith(":That name is banned\n")
    listing = admin(redis_proc.url, "bans")
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    assert lines[-1] == "2 bans"
    assert lines[0].startswith("ip=127.0.0.3\tuntil lifted\tby op at ")
    assert lines[1].startswith("mallory\tuntil ") and lines[1].endswith(": spam")
    # Lifted from the command line: every process hears of it at once.
    assert admin(redis_proc.url, "unban", "ip=127.0.0.3").stdout == "ip=127.0.0.3 is no longer banned\n"
    RawClient(again.port, source="127.0.0.3").login("welcome back")
    assert admin(redis_proc.url, "unban", "ip=127.0.0.3").returncode == 1


def test_a_login_takes_the_name_from_its_holder_on_another_process(cluster, redis_proc):
    a, b = cluster(), cluster()
    mallory = b.client()
    mallory.login("alice")
    # As a process of an older layout would let happen: alice registered while mallory holds it.
    hasher = accounts.PasswordHasher(workers=1)
    hasher.start()
    try:
        encoded = hasher.hash(PASSWORD)
    finally:
        hasher.stop(5)
    rdb = redis.Redis.from_url(redis_proc.url)
    rdb.hset(Keys(PREFIX).account("alice"), mapping={"name": "alice", "hash": encoded, "created": 0})
    alice = a.client()
    alice.send(f"individual::login:alice:{PASSWORD}")
    alice.expect("individual:alice:changeNameFirst1:alice\n")
    renamed = mallory.expect(lambda f: ":changeName1:" in f)
    guest = renamed.split(":")[1]
    assert guest.startswith("guest-") and renamed == f"individual:{guest}:changeName1:{guest}\n"
    alice.send("individual:alice:who:")
    assert f"alice, {guest}" in alice.expect(lambda f: "Online (" in f)


def test_the_admin_command_line_lists_and_removes_accounts_and_prints_the_log(cluster, redis_proc):
    a = cluster()
    op = operator_on(a, redis_proc.url)
    bob = a.client()
    registered(bob, "bob")
    listing = admin(redis_proc.url, "accounts").stdout.splitlines()
    assert [line.split("\t")[:2] for line in listing[:-1]] == [["bob", "user"], ["op", "operator"]]
    assert listing[-1] == "2 accounts"
    op.send("individual:op:kick:bob enough")
    answer(op, "op", "kick1")
    log = admin(redis_proc.url, "log").stdout.splitlines()
    assert log[-1].endswith("\top\tkick bob enough")
    assert admin(redis_proc.url, "revoke-oper", "op").stdout == "op is no longer an operator\n"
    op.send("individual:op:kick:anyone")
    assert answer(op, "op", "kick0").endswith(":Only an operator may do that\n")
    assert admin(redis_proc.url, "remove-account", "bob").stdout == "account bob removed\n"
    missing = admin(redis_proc.url, "remove-account", "bob")
    assert (missing.returncode, missing.stdout) == (1, "there is no account 'bob'\n")
    assert admin(redis_proc.url, "grant-oper", "nobody").returncode == 1
    newcomer = a.client()
    newcomer.login("bob")  # no longer registered


def test_the_admin_command_line_needs_a_real_redis_and_says_so():
    result = subprocess.run(
        [sys.executable, "-m", "chatroom.admin", "accounts"], cwd=ROOT, capture_output=True, text=True,
        timeout=30, check=False, env={**os.environ, "REDIS_URL": ""},
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith("needs --redis-url (or REDIS_URL): the embedded Redis lives "
                                                   "inside one server process")
    unreachable = admin("redis://127.0.0.1:1/0", "accounts")
    assert unreachable.returncode == 1 and unreachable.stderr.startswith("cannot reach Redis at redis://127.0.0.1:1/0")
    assert "Traceback" not in result.stderr + unreachable.stderr

"""Registered nicknames: register, login, password, unregister, throttling, taking a name back, clear text."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from conftest import ROOT, RawClient

import protocol as p
from chatroom import accounts, redisdb

pytestmark = pytest.mark.timeout(60)

PASSWORD = "correct horse"
JOIN = "channel:channel1:系统消息:User < {} > joined!\n"
REGISTERED = "individual:{name}:changeNameFirst0:That name is registered: log in to use it (/login NAME PASSWORD)\n"


def answer(client: RawClient, name: str, *marks: str) -> str:
    """The next payload to ``name`` with one of ``marks``."""
    return client.expect(lambda f: f.startswith(f"individual:{name}:") and f.split(":", 3)[2] in marks)


def registered(client: RawClient, name: str, password: str = PASSWORD) -> None:
    client.login(name)
    client.send(f"individual:{name}:register:{password}")
    client.expect(f"individual:{name}:register1:{name}\n")


def guest_of(client: RawClient) -> str:
    client.send("individual::menu:")
    return client.expect(lambda f: "./menu" in f).split(":")[1]


def outside_address() -> str:
    """An address of this host that is not loopback (the interface a default route would use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
            address = probe.getsockname()[0]
        except OSError:
            address = ""
    if not address or address.startswith("127."):
        try:
            address = next(
                info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
                if not info[4][0].startswith("127.")
            )
        except (StopIteration, OSError):
            pytest.fail("this host has no address other than loopback: the clear-text rule cannot be tested")
    return address


# --- register and login -----------------------------------------------------------------


def test_a_registered_name_is_taken_only_by_logging_in(connect, chat_server):
    alice = connect()
    registered(alice, "alice")
    alice.send("channel:channel1::before leaving")
    alice.expect("channel:channel1:alice:before leaving\n")
    alice.send("channel:channel1:quit:")
    alice.expect_closed()
    assert chat_server.wait_for_connections(0, 10)
    mallory, bob = connect(), connect()
    bob.login("bob")
    guest = guest_of(mallory)
    mallory.send("individual::changeNameFirst:Alice")
    assert answer(mallory, guest, "changeNameFirst0") == REGISTERED.format(name=guest)
    mallory.login("mallory")
    mallory.send("individual:mallory:changeName:ALICE")
    assert answer(mallory, "mallory", "changeNameFirst0") == REGISTERED.format(name="mallory")
    mallory.send("individual::login:alice:wrong password")
    assert answer(mallory, "mallory", "login0") == "individual:mallory:login0:Wrong password\n"
    # The right password: answered exactly as an accepted first nickname, join and history.
    again = connect()
    again.send(f"individual::login:ALICE:{PASSWORD}")
    again.expect("individual:alice:changeNameFirst1:alice\n")
    again.expect(lambda f: f.startswith("history:") and f.endswith(":alice:before leaving\n"))
    again.expect(JOIN.format("alice"))
    bob.expect(JOIN.format("alice"))


@pytest.mark.parametrize(
    "password, reason",
    [
        ("short", "A password must be at least 8 characters"),
        ("x" * 1025, "A password must be at most 1024 bytes"),
        ("é" * 513, "A password must be at most 1024 bytes"),  # bytes, not characters
        ("has:colon", "A password must not contain ':'"),
    ],
)
def test_a_bad_password_is_refused_with_the_rule(connect, password, reason):
    alice = connect()
    alice.login("alice")
    alice.send(f"individual:alice:register:{password}")
    assert answer(alice, "alice", "register0", "register1") == f"individual:alice:register0:{reason}\n"


def test_a_guest_name_or_a_registered_one_cannot_be_registered(connect):
    guest = connect()
    name = guest_of(guest)
    guest.send(f"individual:{name}:register:{PASSWORD}")
    assert answer(guest, name, "register0") == (
        f"individual:{name}:register0:Take a nickname first: a guest name cannot be registered\n"
    )
    alice = connect()
    registered(alice, "alice")
    alice.send(f"individual:alice:register:{PASSWORD}")
    assert answer(alice, "alice", "register0") == "individual:alice:register0:< alice > is already registered\n"


def test_a_password_is_stored_as_an_argon2id_hash_only(connect, chat_server, redis_client):
    alice = connect()
    registered(alice, "alice")
    record = redis_client.hgetall(chat_server.keys.account("alice"))
    assert record[b"hash"].startswith(b"$argon2id$v=19$m=19456,t=2,p=1$")
    assert not any(PASSWORD.encode() in value for value in record.values())
    assert redis_client.smembers(chat_server.keys.accounts) == {b"alice"}


def test_the_holder_of_an_account_renames_away_and_back_without_a_password(connect):
    alice, bob = connect(), connect()
    registered(alice, "alice")
    bob.login("bob")
    alice.send("individual:alice:changeName:away")
    alice.expect("individual:away:changeName1:away\n")
    bob.send("individual:bob:changeName:alice")  # still registered, and not bob's
    answer(bob, "bob", "changeNameFirst0")
    alice.send("individual:away:changeName:Alice")
    alice.expect("individual:Alice:changeName1:Alice\n")


def test_login_to_no_account_and_without_a_colon(connect):
    client = connect()
    guest = guest_of(client)
    client.send(f"individual::login:nobody:{PASSWORD}")
    assert answer(client, guest, "login0") == f"individual:{guest}:login0:There is no account < nobody >\n"
    client.send("individual::login:nobody")
    assert answer(client, guest, "login0") == f"individual:{guest}:login0:Log in with NAME:PASSWORD\n"


def test_a_logged_in_user_changes_the_password(connect, chat_server):
    alice = connect()
    registered(alice, "alice")
    alice.send("individual:alice:password:wrong one:new password")
    assert answer(alice, "alice", "password0", "password1") == "individual:alice:password0:Wrong password\n"
    alice.send(f"individual:alice:password:{PASSWORD}:short")
    assert answer(alice, "alice", "password0") == (
        "individual:alice:password0:A password must be at least 8 characters\n"
    )
    alice.send(f"individual:alice:password:{PASSWORD}:new password")
    alice.expect("individual:alice:password1:alice\n")
    alice.send("channel:channel1:quit:")
    alice.expect_closed()
    assert chat_server.wait_for_connections(0, 10)
    again = connect()
    guest = guest_of(again)
    again.send(f"individual::login:alice:{PASSWORD}")
    assert answer(again, guest, "login0") == f"individual:{guest}:login0:Wrong password\n"
    again.send("individual::login:alice:new password")
    again.expect("individual:alice:changeNameFirst1:alice\n")


def test_unregister_frees_the_name_and_needs_the_password(connect, chat_server):
    alice = connect()
    registered(alice, "alice")
    alice.send("individual:alice:unregister:wrong password")
    assert answer(alice, "alice", "unregister0", "unregister1") == "individual:alice:unregister0:Wrong password\n"
    alice.send(f"individual:alice:unregister:{PASSWORD}")
    alice.expect("individual:alice:unregister1:alice\n")
    alice.send(f"individual:alice:unregister:{PASSWORD}")
    assert answer(alice, "alice", "unregister0") == (
        "individual:alice:unregister0:You are not logged in to an account\n"
    )
    alice.send("channel:channel1:quit:")
    alice.expect_closed()
    assert chat_server.wait_for_connections(0, 10)
    connect().login("alice")


def test_password_and_unregister_need_an_account(connect):
    bob = connect()
    bob.login("bob")
    for command in (f"password:{PASSWORD}:new password", f"unregister:{PASSWORD}"):
        bob.send(f"individual:bob:{command}")
        assert answer(bob, "bob", "password0", "unregister0").endswith(":You are not logged in to an account\n")


def test_a_login_takes_the_name_from_an_unauthenticated_holder(connect, chat_server, redis_client):
    """As when the name was registered on another process while this user held it."""
    mallory, alice, watcher = connect(), connect(), connect()
    watcher.login("watcher")
    mallory.login("alice")
    guest = f"guest-{redis_client.hget(chat_server.keys.users_by_name, 'alice').decode()}"
    hasher = accounts.PasswordHasher(workers=1)
    hasher.start()
    try:
        encoded = hasher.hash(PASSWORD)
    finally:
        hasher.stop(5)
    redis_client.hset(chat_server.keys.account("alice"), mapping={"name": "alice", "hash": encoded, "created": 0})
    alice.send(f"individual::login:alice:{PASSWORD}")
    alice.expect("individual:alice:changeNameFirst1:alice\n")
    assert mallory.expect(lambda f: "took the name back" in f) == (
        f"individual:{guest}:系统消息:The registered owner of < alice > logged in and took the name back: "
        f"you are now {guest}\n"
    )
    mallory.expect(f"individual:{guest}:changeName1:{guest}\n")
    alice.send("channel:channel1::it is me")
    watcher.expect("channel:channel1:alice:it is me\n")
    mallory.send("channel:channel1::and me?")
    watcher.expect(f"channel:channel1:{guest}:and me?\n")
    mallory.send(f"individual:{guest}:changeName:alice")
    answer(mallory, guest, "changeNameFirst0")


def test_the_account_check_and_the_claim_are_one_step(chat_server, redis_client):
    """A name registered after a rename's checks began is refused, not taken (the claim checks it)."""
    keys = chat_server.keys
    redis_client.hset(keys.account("alice"), mapping={"name": "alice", "hash": "x", "created": 0})
    claim = redisdb.claim_name(redis_client, keys, "41", "Alice", account="alice")
    assert claim is redisdb.Claim.REGISTERED
    assert redis_client.hget(keys.users_by_name, "alice") is None and redis_client.hget(keys.users_name, "41") is None
    assert redisdb.claim_name(redis_client, keys, "41", "Alice") is redisdb.Claim.CLAIMED  # its holder
    assert redisdb.claim_name(redis_client, keys, "42", "bob", account="bob") is redisdb.Claim.CLAIMED
    assert redisdb.claim_name(redis_client, keys, "43", "BOB", account="bob") is redisdb.Claim.TAKEN


# --- throttling ----------------------------------------------------------------------------


def test_five_failed_logins_per_name_then_no_more_tries(connect, make_server):
    alice = connect()
    registered(alice, "alice")
    attacker = connect()
    guest = guest_of(attacker)
    for _ in range(accounts.FAILED_LOGINS_ALLOWED):
        attacker.send("individual::login:alice:not the password")
        assert answer(attacker, guest, "login0").endswith(":Wrong password\n")
    # From another address, with the right password: the name is locked for now.
    other = RawClient(attacker.sock.getpeername()[1], source="127.0.0.2")
    try:
        other_guest = guest_of(other)
        other.send(f"individual::login:alice:{PASSWORD}")
        assert answer(other, other_guest, "login0") == (
            f"individual:{other_guest}:login0:Too many failed logins for < alice >: try again in 10 min\n"
        )
    finally:
        other.close()


def test_five_failed_logins_per_address_then_no_more_tries(connect, chat_server):
    owner = connect()
    registered(owner, "carol")
    attacker = RawClient(chat_server.port, source="127.0.0.3")
    try:
        guest = guest_of(attacker)
        for number in range(accounts.FAILED_LOGINS_ALLOWED):
            attacker.send(f"individual::login:name{number}:{PASSWORD}")
            assert answer(attacker, guest, "login0").endswith(f"There is no account < name{number} >\n")
        attacker.send(f"individual::login:carol:{PASSWORD}")
        assert answer(attacker, guest, "login0") == (
            f"individual:{guest}:login0:Too many failed logins from your address: try again in 10 min\n"
        )
    finally:
        attacker.close()
    # Another address is not locked out.
    friend = connect()
    friend.send(f"individual::login:carol:{PASSWORD}")
    assert friend.expect(lambda f: "changeNameFirst1:carol" in f or "Too many" in f) == (
        "individual:carol:changeNameFirst1:carol\n"
    )


def test_a_throttled_login_computes_no_hash(make_server, monkeypatch):
    server = make_server()
    client = RawClient(server.port, source="127.0.0.4")
    try:
        guest = guest_of(client)
        for _ in range(accounts.FAILED_LOGINS_ALLOWED):
            client.send(f"individual::login:nobody:{PASSWORD}")
            answer(client, guest, "login0")
        hashed = []
        monkeypatch.setattr(server.accounts.hasher, "verify", lambda *args: hashed.append(args))
        client.send(f"individual::login:nobody:{PASSWORD}")
        assert "Too many failed logins" in answer(client, guest, "login0")
        assert hashed == []
    finally:
        client.close()


# --- clear text ------------------------------------------------------------------------------


def test_passwords_in_clear_text_from_another_host_are_refused_naming_the_tls_port(make_server):
    address = outside_address()
    server = make_server(host="0.0.0.0")
    client = RawClient(server.port, host=address)
    try:
        client.login("alice")
        for command, mark in ((f"register:{PASSWORD}", "register0"), (f"password:{PASSWORD}:new password", "password0")):
            client.send(f"individual:alice:{command}")
            assert answer(client, "alice", mark) == (
                f"individual:alice:{mark}:Passwords from your address are accepted over TLS only, "
                "and this server has no TLS port\n"
            )
        client.send(f"individual::login:alice:{PASSWORD}")
        assert "over TLS only" in answer(client, "alice", "login0")
    finally:
        client.close()


def test_allow_plaintext_passwords_turns_the_clear_text_rule_off(make_server):
    address = outside_address()
    server = make_server(host="0.0.0.0", allow_plaintext_passwords=True)
    client = RawClient(server.port, host=address)
    try:
        registered(client, "alice")
    finally:
        client.close()


# --- passwords never shown -------------------------------------------------------------------


def test_a_password_is_in_no_log_line_even_at_debug_level(tmp_path):
    secret = "hunter2-is-secret"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "server.py"), "--port", "0", "-vv"],
        stdout=subprocess.PIPE, stderr=open(tmp_path / "log", "w"), text=True,  # noqa: SIM115
        env={**os.environ, "REDIS_URL": ""},
    )
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        alice = RawClient(port)
        registered(alice, "alice", secret)
        alice.send(f"individual:alice:password:{secret}:{secret}-2")
        alice.expect("individual:alice:password1:alice\n")
        alice.send(f"individual::login:alice:{secret}-wrong")
        answer(alice, "alice", "login0")
        alice.send(f"individual:alice:unregister:{secret}-2")
        alice.expect("individual:alice:unregister1:alice\n")
        alice.close()
    finally:
        proc.terminate()
        proc.wait(10)
    log = (tmp_path / "log").read_text()
    assert "received 'individual:alice:register:***'" in log
    assert secret not in log


def test_the_repr_of_a_message_and_a_redacted_payload_hide_the_password():
    assert "secret" not in repr(p.split_message("individual::login:alice:secret"))
    assert "alice" in repr(p.split_message("individual::login:alice:secret"))
    for payload in ("individual:a:register:secret", "individual:a:password:secret:new secret",
                    "individual:a:unregister:secret", "individual::login:alice:secret"):
        assert "secret" not in p.redacted(payload)
    assert p.redacted("channel:channel1::my secret") == "channel:channel1::my secret"


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("192.0.2.2", False), ("::ffff:192.0.2.2", False), ("fe80::1%eth0", False), ("nonsense", False),
])
def test_loopback_addresses(address, loopback):
    assert accounts.is_loopback(address) is loopback


def test_the_hasher_verifies_and_knows_old_parameters():
    hasher = accounts.PasswordHasher(workers=1)
    hasher.start()
    try:
        encoded = hasher.hash(PASSWORD)
        assert hasher.verify(encoded, PASSWORD) and not hasher.verify(encoded, "wrong password")
        assert not hasher.needs_rehash(encoded)
        weaker = encoded.replace("m=19456,t=2", "m=8192,t=1")
        assert hasher.needs_rehash(weaker)
        assert not hasher.verify("not a hash", PASSWORD)
    finally:
        hasher.stop(5)


def test_past_the_hash_queue_a_login_is_refused_not_queued():
    import threading

    hasher = accounts.PasswordHasher(workers=1, queue_limit=1)  # not started yet: nothing is taken
    waiting = threading.Thread(target=hasher.hash, args=(PASSWORD,))
    waiting.start()
    try:
        deadline = threading.Event()
        while hasher._jobs.qsize() < 1 and not deadline.wait(0.01):  # the queue has no event to await
            pass
        with pytest.raises(accounts.HashingBusy):
            hasher.verify("$argon2id$whatever", PASSWORD)
    finally:
        hasher.start()
        waiting.join(10)
        hasher.stop(5)

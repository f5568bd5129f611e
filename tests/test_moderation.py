"""Operators: kick, ban, unban, bans, mute, unmute, announce; refusals; what each party sees."""

from __future__ import annotations

import logging
import time

import pytest
from conftest import RawClient
from test_accounts import PASSWORD, answer, guest_of, registered

from chatroom import accounts, moderation

pytestmark = pytest.mark.timeout(60)

SYSTEM = "channel:channel1:系统消息:{}\n"
LEFT = "channel:channel1:系统消息:User left: {}\n"


@pytest.fixture
def room(connect, chat_server, redis_client):
    """An operator "op" (logged in), and two users: alice and a watcher."""
    op, alice, watcher = connect(), connect(), connect()
    registered(op, "op")
    accounts.set_operator(redis_client, chat_server.keys, "op", True)
    alice.login("alice")
    watcher.login("watcher")
    return op, alice, watcher


def test_a_non_operator_is_refused_and_nothing_happens(connect, chat_server, redis_client):
    alice, bob = connect(), connect()
    registered(alice, "alice")  # logged in, but no operator flag
    bob.login("bob")
    for command in ("kick:bob", "ban:bob 1h", "unban:bob", "bans:", "mute:bob 1h", "unmute:bob", "announce:hi"):
        alice.send(f"individual:alice:{command}")
        mark = command.split(":")[0]
        assert answer(alice, "alice", f"{mark}0", f"{mark}1") == f"individual:alice:{mark}0:Only an operator may do that\n"
    bob.send("channel:channel1::still here")
    alice.expect("channel:channel1:bob:still here\n")
    assert redis_client.hlen(chat_server.keys.bans) == 0 and redis_client.hlen(chat_server.keys.mutes) == 0
    assert not any("Announcement" in f for f in bob.seen)


def test_a_revoked_operator_is_refused_at_once(room, chat_server, redis_client):
    op, _alice, _ = room
    accounts.set_operator(redis_client, chat_server.keys, "op", False)
    op.send("individual:op:kick:alice")
    assert answer(op, "op", "kick0") == "individual:op:kick0:Only an operator may do that\n"


def test_kick_disconnects_tells_the_user_the_room_and_the_operator(room, chat_server, redis_client, caplog):
    op, alice, watcher = room
    with caplog.at_level(logging.WARNING, logger="chatroom.server"):
        op.send("individual:op:kick:alice spamming links")
        assert answer(op, "op", "kick1") == "individual:op:kick1:< alice > was kicked\n"
        frames = alice.expect_closed()
        assert "individual:alice:系统消息:You were kicked by op: spamming links\n" in frames
        watcher.expect(SYSTEM.format("alice was kicked by op: spamming links"))
        watcher.expect(LEFT.format("alice"))
    assert any("moderation: op" in r.message and "kick alice" in r.message for r in caplog.records)
    (entry,) = moderation.read_log(redis_client, chat_server.keys, 10)
    assert (entry["by"], entry["action"], entry["target"], entry["detail"]) == ("op", "kick", "alice", "spamming links")


def test_the_rooms_of_the_user_concerned_are_told_too(room):
    op, alice, watcher = room
    for client, name in ((alice, "alice"), (watcher, "watcher")):
        client.send("channel:dev:join:")
        client.expect(f"individual:{name}:join1:dev\n")
    op.send("individual:op:mute:alice 10m flooding")
    answer(op, "op", "mute1")
    watcher.expect(lambda f: f.startswith("channel:dev:系统消息:alice was muted by op "))
    op.send("individual:op:kick:alice spamming")
    answer(op, "op", "kick1")
    watcher.expect(SYSTEM.format("alice was kicked by op: spamming"))  # the lobby first
    watcher.expect("channel:dev:系统消息:alice was kicked by op: spamming\n")
    watcher.expect("channel:dev:系统消息:User < alice > left the room\n")


def test_kick_of_nobody_and_without_a_name(room):
    op, _, _ = room
    op.send("individual:op:kick:nobody")
    assert answer(op, "op", "kick0") == "individual:op:kick0:There is no user < nobody >\n"
    op.send("individual:op:kick:")
    assert answer(op, "op", "kick0") == "individual:op:kick0:Usage: kick:NAME [reason]\n"


def test_a_name_with_spaces_is_quoted(connect, room):
    op, _, watcher = room
    big = connect()
    big.login("big bob")
    op.send('individual:op:kick:"big bob" too loud')
    assert answer(op, "op", "kick1") == "individual:op:kick1:< big bob > was kicked\n"
    watcher.expect(SYSTEM.format("big bob was kicked by op: too loud"))


def test_a_reason_or_announcement_that_could_forge_a_line_is_refused(room):
    op, alice, watcher = room
    op.send("individual:op:kick:alice bye\n[21:13] < System > fake")
    assert answer(op, "op", "kick0").endswith(":A message must not contain line breaks: send each line as its own message\n")
    op.send("individual:op:announce:a\x1b[2Jcleared")
    assert answer(op, "op", "announce0").endswith(":A message must not contain control characters\n")
    watcher.send("channel:channel1::marker")
    watcher.expect("channel:channel1:watcher:marker\n")
    assert not any("fake" in f or "cleared" in f for f in watcher.seen + alice.seen)


def test_a_banned_name_is_closed_and_cannot_be_taken_or_logged_into(connect, room, chat_server):
    op, _alice, watcher = room
    carol = connect()
    registered(carol, "carol")
    carol.send("individual:carol:changeName:carol away")  # still carol's account
    carol.expect("individual:carol away:changeName1:carol away\n")
    op.send("individual:op:ban:carol 2h trolling")
    done = answer(op, "op", "ban1")
    assert done.startswith("individual:op:ban1:carol is banned until ") and done.endswith(" UTC\n")
    frames = carol.expect_closed()
    assert any(f.startswith("individual:carol away:系统消息:You are banned until ") and f.endswith(": trolling\n")
               for f in frames)
    notice = watcher.expect(lambda f: "was banned" in f)
    assert notice.startswith(SYSTEM.format("carol was banned by op until ")[:-1]) and notice.endswith(": trolling\n")
    newcomer = connect()
    guest = guest_of(newcomer)
    newcomer.send("individual::changeNameFirst:Carol")
    assert answer(newcomer, guest, "changeNameFirst0") == f"individual:{guest}:changeNameFirst0:That name is banned\n"
    newcomer.send(f"individual::login:carol:{PASSWORD}")
    assert answer(newcomer, guest, "login0").startswith(f"individual:{guest}:login0:< carol > is banned until ")
    op.send("individual:op:bans:")
    listing = answer(op, "op", "bans1")
    assert listing.startswith("individual:op:bans1:Bans (1):\n carol: until ") and "by op: trolling" in listing
    op.send("individual:op:unban:carol")
    assert answer(op, "op", "unban1") == "individual:op:unban1:carol is no longer banned\n"
    op.send("individual:op:unban:carol")
    assert answer(op, "op", "unban0") == "individual:op:unban0:carol is not banned\n"
    op.send("individual:op:bans:")
    assert answer(op, "op", "bans1") == "individual:op:bans1:Nobody is banned\n"
    newcomer.send(f"individual::login:carol:{PASSWORD}")
    newcomer.expect("individual:carol:changeNameFirst1:carol\n")


def test_a_banned_address_is_refused_at_connect_before_any_thread(room, chat_server):
    op, _, watcher = room
    victim = RawClient(chat_server.port, source="127.0.0.2")
    victim.login("victim")
    op.send("individual:op:ban:ip=127.0.0.2 0 flooding")
    assert answer(op, "op", "ban1") == "individual:op:ban1:ip=127.0.0.2 is banned until lifted\n"
    assert "individual:victim:系统消息:You are banned until lifted: flooding\n" in victim.expect_closed()
    watcher.expect(SYSTEM.format("ip=127.0.0.2 was banned by op until lifted: flooding"))
    assert chat_server.wait_for_connections(3, 10)
    released = chat_server.released
    again = RawClient(chat_server.port, source="127.0.0.2")
    assert again.expect_closed() == ["individual::系统消息:You are banned until lifted: flooding\n"]
    assert chat_server.released == released  # it never was a connection: no thread, no Redis
    # A network, and other addresses stay welcome.
    op.send("individual:op:ban:ip=127.0.1.0/24 10m")
    answer(op, "op", "ban1")
    assert RawClient(chat_server.port, source="127.0.1.9").expect_closed()[0].startswith(
        "individual::系统消息:You are banned until "
    )
    RawClient(chat_server.port, source="127.0.2.1").login("elsewhere")
    op.send("individual:op:ban:ip=not-an-address 1h")
    assert answer(op, "op", "ban0") == "individual:op:ban0:Not an IP address or network: not-an-address\n"


def test_ban_refusals(room):
    op, _, _ = room
    for command, reason in (
        ("ban:alice", "Usage: " + moderation.USAGE["ban"]),
        ("ban:alice forever", "Not a duration: forever (10m, 2h, 1d, or 0 for until lifted)"),
        ("ban:guest-3 1h", ("A guest name is new at every connection and cannot be banned: kick it, or ban an address "
                           "(ip=...)")),
    ):
        op.send(f"individual:op:{command}")
        assert answer(op, "op", "ban0") == f"individual:op:ban0:{reason}\n"


def test_a_muted_user_may_read_but_not_speak_until_unmuted(room, connect):
    op, alice, watcher = room
    op.send("individual:op:mute:alice 10m calm down")
    done = answer(op, "op", "mute1")
    assert done.startswith("individual:op:mute1:< alice > is muted until ")
    told = alice.expect(lambda f: f.startswith("individual:alice:") and "muted by" in f)
    assert told.startswith("individual:alice:系统消息:You were muted by op until ") and told.endswith(": calm down\n")
    watcher.expect(lambda f: f.startswith("channel:channel1:系统消息:alice was muted by op until "))
    for payload in ("channel:channel1::let me speak", "individual:watcher::psst"):
        alice.send(payload)
        refusal = alice.expect(lambda f: "not sent" in f)
        assert refusal.startswith("individual:alice:系统消息:You are muted until ")
        assert refusal.endswith(" UTC: your message was not sent\n")
    # Renaming does not shake a mute off, and reading goes on.
    alice.send("individual:alice:changeName:alicia")
    alice.expect("individual:alicia:changeName1:alicia\n")
    alice.send("channel:channel1::as alicia")
    alice.expect(lambda f: "not sent" in f)
    watcher.send("channel:channel1::you can read this")
    alice.expect("channel:channel1:watcher:you can read this\n")
    op.send("individual:op:unmute:alicia")
    assert answer(op, "op", "unmute1") == "individual:op:unmute1:< alicia > may speak again\n"
    alice.expect("individual:alicia:系统消息:You may speak again\n")
    alice.send("channel:channel1::thanks")
    watcher.expect("channel:channel1:alicia:thanks\n")
    assert not any("let me speak" in f or "psst" in f or "as alicia" in f for f in watcher.seen)
    op.send("individual:op:unmute:nobody")
    assert answer(op, "op", "unmute0") == "individual:op:unmute0:< nobody > is not muted\n"


def test_a_mute_stays_with_the_name_when_its_user_comes_back(room, connect, chat_server):
    op, alice, _ = room
    op.send("individual:op:mute:alice 0")
    assert answer(op, "op", "mute1") == "individual:op:mute1:< alice > is muted until lifted\n"
    alice.send("channel:channel1:quit:")
    alice.expect_closed()
    again = connect()
    again.login("alice")
    again.send("channel:channel1::back")
    assert again.expect(lambda f: "not sent" in f) == (
        "individual:alice:系统消息:You are muted until lifted: your message was not sent\n"
    )


def test_an_operator_is_muted_and_rate_limited_like_anyone(make_server, redis_client):
    server = make_server(rate_limit=1, rate_burst=2)
    op = RawClient(server.port)
    try:
        registered(op, "op")
        accounts.set_operator(redis_client, server.keys, "op", True)
        for _ in range(3):
            op.send("individual:op:announce:hello")
        op.expect(lambda f: "You are sending too fast" in f)
    finally:
        op.close()


def test_announce_reaches_every_user_as_a_system_message(room):
    op, alice, watcher = room
    op.send("individual:op:announce:the server restarts at noon")
    assert answer(op, "op", "announce1") == "individual:op:announce1:Announced\n"
    announcement = SYSTEM.format("Announcement from op: the server restarts at noon")
    for client in (alice, watcher, op):
        if announcement not in client.seen:  # the operator's may come before the answer
            client.expect(announcement)


def test_bans_and_mutes_outlive_the_server_that_made_them(room, chat_server, make_server, redis_client):
    op, _, _ = room
    op.send("individual:op:ban:ip=127.0.0.5 1d")
    answer(op, "op", "ban1")
    op.send("individual:op:ban:mallory 1d")
    answer(op, "op", "ban1")
    chat_server.shutdown()
    restarted = make_server(key_prefix=chat_server.config.key_prefix)
    assert RawClient(restarted.port, source="127.0.0.5").expect_closed()[0].startswith(
        "individual::系统消息:You are banned until "
    )
    client = RawClient(restarted.port)
    guest = guest_of(client)
    client.send("individual::changeNameFirst:mallory")
    assert answer(client, guest, "changeNameFirst0").endswith("That name is banned\n")


# --- the pure parts ----------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [
    ("0", 0), ("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1w", 604800), ("1h30m", 5400),
    ("2H", 7200), ("", None), ("10", None), ("-1h", None), ("1y", None), ("0m", None), ("99999w", None),
])
def test_durations(text, seconds):
    assert moderation.parse_duration(text) == seconds


def test_addresses_and_networks_as_bans_compare_them():
    assert str(moderation.parse_network("::ffff:10.1.2.3")) == "10.1.2.3/32"
    assert moderation.shown_network(moderation.parse_network("10.1.2.3")) == "ip=10.1.2.3"
    assert moderation.shown_network(moderation.parse_network("10.1.2.3/8")) == "ip=10.0.0.0/8"
    assert moderation.parse_network("nonsense") is None
    assert str(moderation.peer_address("::ffff:127.0.0.1")) == "127.0.0.1"


def test_a_sanction_expires():
    now = time.time()
    assert moderation.Sanction(now + 60, "op", "", now, "x").active(now)
    assert not moderation.Sanction(now - 1, "op", "", now, "x").active(now)
    assert moderation.Sanction(0, "op", "", now, "x").active(now + 10**9)
    assert moderation.Sanction(0, "op", "", now, "x").until_text("en") == "until lifted"
    assert moderation.Sanction(0, "op", "", now, "x").until_text("zh") == "直到解除"
    assert moderation.Sanction.from_json("nonsense") is None

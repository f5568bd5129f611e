"""End-to-end behaviour of the server over real sockets, on fakeredis and real Redis."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import fakeredis
import pytest
import redis
from conftest import (
    REDIS_SERVER,
    ROOT,
    RawClient,
    RedisProcess,
    free_port,
    redis_connections_held,
    scaled,
    threads_back_to,
)

import protocol as p
from chatroom import announcer, process
from chatroom.config import parse_args
from chatroom.listener import ListenerEngine, wait_in_kernel
from framing import encode
from server import ChatServer, Config

pytestmark = pytest.mark.timeout(60)

JOIN = "channel:channel1:系统消息:User < {} > joined!\n"
LEFT = "channel:channel1:系统消息:User left: {}\n"


def chat_from(name):
    prefix = f"channel:channel1:{name}:"
    return lambda frame: frame.startswith(prefix)


def fields(payload):
    return payload.rstrip("\n").split(":", 3)


# --- names -------------------------------------------------------------------


def test_first_nickname_is_confirmed_then_announced_to_everyone(connect):
    alice, bob = connect(), connect()
    bob.login("bob")
    alice.send("individual::changeNameFirst:alice")
    alice.expect("individual:alice:changeNameFirst1:alice\n")
    alice.expect(JOIN.format("alice"))
    bob.expect(JOIN.format("alice"))


def test_taken_first_nickname_is_refused_with_a_parseable_changeNameFirst0(connect):
    alice, bob = connect(), connect()
    alice.login("alice")
    bob.send("individual::changeNameFirst:alice")
    refusal = bob.expect(lambda f: "changeNameFirst0" in f)
    target_type, target, mark, text = fields(refusal)
    # Original: the target was the remote address, whose ':' shifted every field.
    assert (target_type, mark, text) == ("individual", "changeNameFirst0", "That name is taken, please try another")
    assert target.startswith("guest-")
    bob.login("bob")


def test_names_are_unique_regardless_of_case_and_width(connect):
    alice, bob = connect(), connect()
    alice.login("Alice")
    for lookalike in ("alice", "ALICE", "Ａｌｉｃｅ"):
        bob.send(f"individual::changeNameFirst:{lookalike}")
        assert fields(bob.expect(lambda f: "changeNameFirst0" in f))[2] == "changeNameFirst0"


@pytest.mark.parametrize(
    "name, reason",
    [
        ("a:b", "The name must not contain ':'"),
        ("x" * 33, "The name must be at most 32 characters"),
        (" bob", "The name must not start or end with spaces"),
        ("bo\x1b[2Jb", "The name must not contain control characters"),
        ("系统消息", "That name is reserved"),
        ("Admin", "That name is reserved"),
        ("guest-1", "That name is reserved"),
        ("", "The name must not be empty"),
    ],
)
def test_bad_names_are_refused_with_the_reason(connect, name, reason):
    client = connect()
    client.send(f"individual::changeNameFirst:{name}")
    assert fields(client.expect(lambda f: "changeNameFirst0" in f))[3] == reason


def test_chinese_names_are_allowed(connect):
    client = connect()
    client.login("小明")


def test_change_name_is_confirmed_privately_and_frees_the_old_name(connect):
    alice, bob = connect(), connect()
    alice.login("alice")
    bob.login("bob")
    alice.send("individual:alice:changeName:alicia")
    alice.expect("individual:alicia:changeName1:alicia\n")
    alice.send("channel:channel1::hi")
    assert bob.expect(chat_from("alicia")) == "channel:channel1:alicia:hi\n"
    bob.send("individual:bob:changeName:alice")
    bob.expect("individual:alice:changeName1:alice\n")


def test_change_name_to_a_taken_name_is_refused_with_changeNameFirst0(connect):
    alice, bob = connect(), connect()
    alice.login("alice")
    bob.login("bob")
    bob.send("individual:bob:changeName:alice")
    assert bob.expect(lambda f: "changeNameFirst0" in f) == (
        "individual:bob:changeNameFirst0:That name is taken, please try another\n"
    )


def test_changing_only_the_case_of_ones_own_name_is_allowed(connect):
    alice = connect()
    alice.login("alice")
    alice.send("individual:alice:changeName:Alice")
    alice.expect("individual:Alice:changeName1:Alice\n")


def test_a_leaving_users_name_can_be_taken_again(connect, chat_server):
    alice = connect()
    alice.login("alice")
    alice.send("channel:channel1:quit:")
    alice.expect_closed()
    assert chat_server.wait_for_connections(0, 10)
    connect().login("alice")


def test_two_clients_claiming_one_name_exactly_one_wins(connect):
    first, second = connect(), connect()
    for round_number in range(50):
        name = f"name{round_number}"
        barrier = threading.Barrier(2)

        def claim(client, barrier, name):
            barrier.wait()
            client.send(f"individual::changeName:{name}")

        threads = [threading.Thread(target=claim, args=(c, barrier, name)) for c in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        answers = [c.expect(lambda f: "changeName1:" in f or "changeNameFirst0:" in f) for c in (first, second)]
        winners = [a for a in answers if f"changeName1:{name}" in a]
        assert len(winners) == 1, answers


# --- commands ----------------------------------------------------------------


def test_menu_goes_to_the_asker_whatever_the_target(connect):
    alice, bob = connect(), connect()
    alice.login("alice")
    bob.login("bob")
    for target in ("", "bob", "nobody"):
        alice.send(f"individual:{target}:menu:")
        menu = alice.expect(lambda f: f.startswith("individual:alice:系统消息:"))
        assert "./cd5 or ./quit" in menu
    bob.send("channel:channel1::marker")
    # Nothing of alice's menus went to bob: the next thing he sees is the marker.
    assert bob.expect(lambda f: not f.startswith("channel:channel1:系统消息:")) == "channel:channel1:bob:marker\n"


def test_private_message_reaches_only_its_target_and_is_echoed_to_the_sender(connect):
    alice, bob, carol = connect(), connect(), connect()
    alice.login("alice")
    bob.login("bob")
    carol.login("carol")
    alice.send("individual:bob::psst")
    assert bob.expect(lambda f: f.startswith("individual:")) == "individual:alice:private:psst\n"
    assert alice.expect(lambda f: f.startswith("individual:")) == "individual:bob:privateSent:psst\n"
    carol.send("channel:channel1::marker")
    assert carol.expect(lambda f: not f.startswith("channel:channel1:系统消息:")) == "channel:channel1:carol:marker\n"


def test_a_guest_is_reached_by_its_guest_name_until_it_picks_one(connect):
    alice, guest = connect(), connect()
    alice.login("alice")
    guest.send("channel:channel1::hi")
    guest_name = fields(alice.expect(lambda f: f.endswith(":hi\n")))[2]
    # Names are case-insensitive, guest names too.
    for spelling in (guest_name, guest_name.upper()):
        alice.send(f"individual:{spelling}::psst")
        assert guest.expect(lambda f: f.startswith("individual:")) == "individual:alice:private:psst\n"
        assert alice.expect(lambda f: f.startswith("individual:")) == f"individual:{spelling}:privateSent:psst\n"
    guest.login("gina")
    alice.send(f"individual:{guest_name}::still there?")
    assert alice.expect(lambda f: f.startswith("individual:")) == (
        f"individual:alice:系统消息:There is no user < {guest_name} >\n"
    )
    alice.send("individual:guest-999999::psst")
    assert alice.expect(lambda f: f.startswith("individual:")) == (
        "individual:alice:系统消息:There is no user < guest-999999 >\n"
    )


def test_private_message_to_an_unknown_user_is_refused(connect):
    alice = connect()
    alice.login("alice")
    alice.send("individual:nobody::psst")
    assert alice.expect(lambda f: f.startswith("individual:")) == (
        "individual:alice:系统消息:There is no user < nobody >\n"
    )


def test_who_lists_the_names_online_to_the_asker_only(connect):
    alice, bob, carol = connect(), connect(), connect()
    bob.login("bob")
    alice.login("alice")
    carol.send("individual::menu:")
    guest = fields(carol.expect(lambda f: "./menu" in f))[1]
    alice.send("individual:alice:who:")
    assert alice.expect(lambda f: f.startswith("individual:")) == (
        f"individual:alice:系统消息:Online (3): alice, bob, {guest}\n"
    )
    alice.send("channel:channel1::marker")
    assert bob.expect(lambda f: not f.startswith("channel:channel1:系统消息:")) == "channel:channel1:alice:marker\n"


def test_who_with_more_names_than_fit_in_a_frame_is_cut_short(make_server):
    server = make_server()
    server.rdb.hset(server.keys.users_name, mapping={str(i): f"user{i:04}-" + "x" * 20 for i in range(1000)})
    text = server.who_text()
    assert text.startswith("Online (1000): user0000-") and text.endswith(", …")
    assert p.fits(f"individual:{'x' * 32}:系统消息:{text}", server.config.max_frame)


def test_newcomers_get_the_recent_public_messages_with_their_times(make_server):
    server = make_server(history=3)
    alice = RawClient(server.port)
    bob = RawClient(server.port)
    try:
        alice.login("alice")
        for i in range(5):
            alice.send(f"channel:channel1::m{i}")
        alice.expect("channel:channel1:alice:m4\n")
        bob.send("individual::changeNameFirst:bob")
        bob.expect("individual:bob:changeNameFirst1:bob\n")
        history = [bob.expect(lambda f: f.startswith("history:")) for _ in range(3)]
        assert [fields(h)[0] for h in history] == ["history"] * 3
        assert [fields(h)[2:] for h in history] == [["alice", "m2"], ["alice", "m3"], ["alice", "m4"]]
        assert all(abs(int(fields(h)[1]) - time.time()) < 60 for h in history)
    finally:
        alice.close()
        bob.close()


def test_history_is_cut_to_one_write_the_go_client_can_decode(make_server):
    server = make_server(history=50)
    alice, bob = RawClient(server.port), RawClient(server.port)
    try:
        alice.login("alice")
        for i in range(50):
            alice.send(f"channel:channel1::{i:02} " + "x" * 100)
        alice.expect(lambda f: f.startswith("channel:channel1:alice:49 "))
        bob.login("bob")
        bob.send("channel:channel1::marker")
        bob.expect("channel:channel1:bob:marker\n")
        history = [f for f in bob.seen if f.startswith("history:")]
        assert sum(len(f.encode()) + 4 for f in history) <= 4096
        assert fields(history[-1])[3] == "49 " + "x" * 100  # the newest, oldest first
        assert len(history) == 4096 // len(("history:0000000000:alice:00 " + "x" * 100 + "\n").encode() + b"1234")
    finally:
        alice.close()
        bob.close()


def test_a_repeated_first_nickname_is_a_plain_rename(connect):
    alice, bob = connect(), connect()
    bob.login("bob")
    alice.login("alice")
    alice.send("individual:alice:changeNameFirst:alicia")
    alice.expect("individual:alicia:changeNameFirst1:alicia\n")
    alice.send("channel:channel1::marker")
    bob.expect("channel:channel1:alicia:marker\n")
    assert bob.seen.count(JOIN.format("alice")) == 1 and JOIN.format("alicia") not in bob.seen


def test_a_private_message_whose_echo_would_not_fit_is_refused_whole(connect):
    alice, bob = connect(), connect()
    alice.login("alice")
    bob.login("bob")
    text = "x" * (4092 - len("individual:alice:private:") - 1 - 1)  # delivery fits, echo does not
    alice.send(f"individual:bob::{text}")
    assert "Message too long" in alice.expect(lambda f: f.startswith("individual:"))
    alice.send("individual:bob::short")
    bob.expect("individual:alice:private:short\n")
    assert not any(text in f for f in bob.seen)


def test_history_zero_sends_no_history(make_server):
    server = make_server(history=0)
    alice, bob = RawClient(server.port), None
    try:
        alice.login("alice")
        alice.send("channel:channel1::m")
        alice.expect("channel:channel1:alice:m\n")
        # Connected only now: a guest connected before it would get "m" live.
        bob = RawClient(server.port)
        bob.login("bob")
        assert bob.recv() == JOIN.format("bob")
    finally:
        alice.close()
        if bob is not None:
            bob.close()


def test_unknown_individual_mark_gets_a_format_error(connect):
    alice = connect()
    alice.login("alice")
    alice.send("individual:alice:bogus:x")
    assert alice.expect(lambda f: f.startswith("individual:")) == "individual:alice:系统消息:Bad message format\n"


def test_online_count_goes_to_the_asker_only(connect):
    alice, bob = connect(), connect()
    alice.login("alice")
    bob.login("bob")
    unnamed = connect()  # unnamed users count too, as in the original
    unnamed.send("individual::menu:")
    unnamed.expect(lambda f: "./menu" in f)  # it is registered by now
    bob.send("channel:channel1:onlineList:")
    assert bob.expect(chat_from("bob")) == "channel:channel1:bob:Users online: 3\n"
    bob.send("channel:channel1::marker")
    assert alice.expect(lambda f: not f.startswith("channel:channel1:系统消息:")) == "channel:channel1:bob:marker\n"


def test_activity_ranking_lists_the_five_most_active_users(connect):
    clients = {name: connect() for name in ("u1", "u2", "u3", "u4", "u5", "u6")}
    for name, client in clients.items():
        client.login(name)
    asker = clients["u6"]
    # Only what a user says counts: the nickname and commands do not, so uN ends with N.
    for count, name in enumerate(("u1", "u2", "u3", "u4", "u5"), start=1):
        for i in range(count):
            clients[name].send(f"channel:channel1::{i}")
        for i in range(count):
            asker.expect(f"channel:channel1:{name}:{i}\n")
    asker.send("channel:channel1:activity:")
    ranking = asker.expect(lambda f: "Activity ranking" in f)
    assert ranking == (
        "channel:channel1:系统消息:Activity ranking\n"
        " #1 : u5 (5)\n #2 : u4 (4)\n #3 : u3 (3)\n #4 : u2 (2)\n #5 : u1 (1)\n\n"
    )


def test_quit_closes_the_connection_and_announces_the_leave(connect):
    alice, bob = connect(), connect()
    alice.login("alice")
    bob.login("bob")
    alice.send("channel:channel1:quit:")
    alice.expect_closed()
    bob.expect(LEFT.format("alice"))


def test_nothing_sent_after_quit_is_processed(connect):
    alice, bob = connect(), connect()
    alice.login("alice")
    bob.login("bob")
    alice.send_raw(encode("channel:channel1:quit:") + encode("channel:channel1::ghost"))
    bob.expect(LEFT.format("alice"))
    bob.send("channel:channel1:activity:")
    ranking = bob.expect(lambda f: "Activity ranking" in f)
    bob.send("channel:channel1::marker")
    assert bob.expect(lambda f: not f.startswith("channel:channel1:系统消息:")) == "channel:channel1:bob:marker\n"
    assert "alice" not in ranking


def test_an_unnamed_user_leaving_is_announced_by_its_guest_name(connect):
    alice, bob = connect(), connect()
    bob.login("bob")
    alice.send("channel:channel1::hi")
    guest = fields(bob.expect(lambda f: f.endswith(":hi\n")))[2]
    assert guest.startswith("guest-")
    alice.close()
    bob.expect(LEFT.format(guest))


def test_channel_messages_go_to_the_lobby_without_a_target_and_to_a_room_with_one(connect):
    # The lobby's original name, or none; any other target is a room (see test_rooms.py).
    alice = connect()
    alice.login("alice")
    alice.send("channel:::text")
    assert alice.expect(chat_from("alice")) == "channel:channel1:alice:text\n"
    alice.send("channel:CHANNEL1::text too")
    assert alice.expect(chat_from("alice")) == "channel:channel1:alice:text too\n"
    alice.send("channel:elsewhere::text")
    assert alice.expect(lambda f: f.startswith("individual:")) == (
        "individual:alice:系统消息:You are not in the room < elsewhere >: join it first (/join elsewhere)\n"
    )


def test_an_unknown_channel_mark_gets_a_format_error(connect):
    alice = connect()
    alice.login("alice")
    alice.send("channel:channel1:whatever:text")
    assert alice.expect(lambda f: f.startswith("individual:")) == "individual:alice:系统消息:Bad message format\n"


def test_a_guest_taking_its_first_name_with_changename_is_announced_as_joined(connect):
    alice, bob = connect(), connect()
    alice.login("alice")
    bob.send("individual::changeNameFirst:alice")
    bob.expect(lambda f: "changeNameFirst0" in f)
    bob.send("individual:guest:changeName:bob")  # the Go client's ./cd2 after a refused first name
    bob.expect("individual:bob:changeName1:bob\n")
    alice.expect(JOIN.format("bob"))
    bob.send("channel:channel1:quit:")
    alice.expect(LEFT.format("bob"))
    assert alice.seen.count(JOIN.format("bob")) == 1


def test_newcomers_arriving_together_are_each_announced_before_what_they_say(connect, monkeypatch):
    # Their joins go out in batches (chatroom/announcer.py); a long window makes every one after the first wait.
    monkeypatch.setattr(announcer, "BATCH_WINDOW", scaled(0.5))
    alice = connect()
    alice.login("alice")
    newcomers = [connect() for _ in range(5)]
    for i, newcomer in enumerate(newcomers):
        newcomer.send(f"individual::changeNameFirst:n{i}")
        newcomer.send(f"channel:channel1::hello from n{i}")
    newcomers[0].send("channel:channel1:quit:")  # leaves at once: its leave notice after its join
    awaited = {f"channel:channel1:n{i}:hello from n{i}\n" for i in range(5)} | {LEFT.format("n0")}
    while awaited:
        awaited.discard(alice.expect(lambda f: f in awaited))
    for i in range(5):
        assert alice.seen.index(JOIN.format(f"n{i}")) < alice.seen.index(f"channel:channel1:n{i}:hello from n{i}\n")
    assert alice.seen.index(JOIN.format("n0")) < alice.seen.index(LEFT.format("n0"))


def test_what_a_guest_said_before_its_first_name_comes_before_its_join(connect, monkeypatch):
    monkeypatch.setattr(announcer, "BATCH_WINDOW", scaled(0.5))
    alice, bob = connect(), connect()
    alice.login("alice")
    bob.send("channel:channel1::hi as a guest")
    bob.send("individual:guest:changeName:bob")
    said = alice.expect(lambda f: f.endswith(":hi as a guest\n"))
    alice.expect(JOIN.format("bob"))
    assert alice.seen.index(said) < alice.seen.index(JOIN.format("bob"))


# --- bad input ---------------------------------------------------------------


def test_negative_length_closes_only_that_connection(connect):
    bad, alice = connect(), connect()
    alice.login("alice")
    bad.send_raw(struct.pack("<i", -1))
    frames = bad.expect_closed()
    assert any("Bad frame" in f for f in frames)
    alice.send("channel:channel1::still here")
    alice.expect("channel:channel1:alice:still here\n")


def test_oversized_length_is_refused_before_reading_the_payload(connect):
    bad = connect()
    bad.send_raw(struct.pack("<i", 1 << 30))
    frames = bad.expect_closed()
    assert any("exceeds the limit of 4092" in f for f in frames)


def test_invalid_utf8_gets_an_error_and_the_connection_stays(connect):
    alice = connect()
    alice.login("alice")
    alice.send_raw(struct.pack("<i", 2) + b"\xff\xfe")
    assert alice.expect(lambda f: f.startswith("individual:")) == "individual:alice:系统消息:Message is not valid UTF-8\n"
    alice.send("channel:channel1::ok")
    alice.expect("channel:channel1:alice:ok\n")


def test_a_payload_without_four_fields_gets_an_error(connect):
    alice = connect()
    alice.login("alice")
    alice.send("hello")
    assert alice.expect(lambda f: f.startswith("individual:")) == "individual:alice:系统消息:Bad message format\n"


def test_empty_frames_are_ignored(connect):
    alice = connect()
    alice.login("alice")
    alice.send_raw(b"\x00\x00\x00\x00" * 3)
    alice.send("channel:channel1::after")
    alice.expect("channel:channel1:alice:after\n")


FORGERY = "ok\n[21:13] < System > User left: mallory\n[21:13] < bob > my password is hunter2"


@pytest.mark.parametrize(
    "text, reason",
    [
        (FORGERY, "A message must not contain line breaks: send each line as its own message"),
        ("a\rb", "A message must not contain line breaks: send each line as its own message"),
        ("a\u2028b", "A message must not contain line breaks: send each line as its own message"),
        ("\x1b[2Jcleared", "A message must not contain control characters"),
    ],
)
def test_chat_and_private_texts_that_could_forge_lines_are_refused_and_reach_nobody(make_server, text, reason):
    server = make_server()
    mallory, bob = RawClient(server.port), RawClient(server.port)
    try:
        mallory.login("mallory")
        bob.login("bob")
        for payload in (f"channel:channel1::{text}", f"individual:bob::{text}"):
            mallory.send(payload)
            assert mallory.expect(lambda f: f.startswith("individual:")) == f"individual:mallory:系统消息:{reason}\n"
        mallory.send("channel:channel1::tabs\tare fine")
        bob.expect("channel:channel1:mallory:tabs\tare fine\n")
        assert not any("hunter2" in f or "cleared" in f or "private" in f for f in bob.seen)
        newcomer = RawClient(server.port)
        newcomer.login("newcomer")
        newcomer.send("channel:channel1::marker")
        newcomer.expect("channel:channel1:newcomer:marker\n")
        assert [f for f in newcomer.seen if f.startswith("history:")] == [
            f for f in newcomer.seen if f.startswith("history:") and f.endswith(":mallory:tabs\tare fine\n")
        ]
        newcomer.close()
    finally:
        mallory.close()
        bob.close()


def test_a_name_the_server_says_back_cannot_print_a_line_of_its_own(connect):
    alice = connect()
    alice.login("alice")
    alice.send("individual:bob\n[21.13] < System > hi::psst")
    assert alice.expect(lambda f: f.startswith("individual:")) == (
        "individual:alice:系统消息:There is no user < bob<U+000A>[21.13] < System > hi >\n"
    )
    alice.send("channel:dev\x1b[2J::hello")
    assert "dev<U+001B>[2J" in alice.expect(lambda f: f.startswith("individual:"))


def test_the_servers_own_multi_line_texts_stay_as_they_are(connect):
    alice = connect()
    alice.login("alice")
    alice.send("individual:alice:menu:")
    assert alice.expect(lambda f: "./menu" in f).count("\n") > 3


def test_a_chat_text_too_long_for_the_clients_is_refused(connect):
    alice = connect()
    alice.login("alice")
    alice.send("channel:channel1::" + "x" * 4070)
    longest = "x" * (4092 - len("channel:channel1:alice:") - 1)
    assert alice.expect(lambda f: f.startswith("individual:")) == (
        f"individual:alice:系统消息:Message too long: 4070 bytes, at most {len(longest)} (4092 with names and fields)\n"
    )
    alice.send("channel:channel1::" + longest)
    alice.expect(f"channel:channel1:alice:{longest}\n")


def test_a_redis_error_answers_that_user_and_the_server_goes_on(connect, chat_server, monkeypatch):
    alice = connect()
    alice.login("alice")

    def broken():
        raise redis.ConnectionError("simulated")

    monkeypatch.setattr(chat_server, "top_active_users", broken)
    alice.send("channel:channel1:activity:")
    assert alice.expect(lambda f: f.startswith("individual:")) == (
        "individual:alice:系统消息:Server error, please try again later\n"
    )
    alice.send("channel:channel1::fine")
    alice.expect("channel:channel1:alice:fine\n")


# --- texts -------------------------------------------------------------------


def test_chinese_texts_are_the_originals_byte_for_byte(make_server):
    server = make_server(lang="zh")
    alice, bob = RawClient(server.port), RawClient(server.port)
    try:
        alice.login("alice")
        alice.expect("channel:channel1:系统消息:用户 < alice > 上线了!\n")
        bob.login("bob")
        bob.send("individual:bob:changeName:alice")
        assert bob.expect(lambda f: "changeNameFirst0" in f).encode() == bytes.fromhex(
            "696e646976696475616c3a626f623a6368616e67654e616d654669727374303a"
        ) + "名字重复,请更换名字再次尝试\n".encode()
        bob.send("channel:channel1:onlineList:")
        assert bob.expect(chat_from("bob")) == "channel:channel1:bob:当前在线人数为2人\n"
        bob.send("individual:bob:menu:")
        menu = bob.expect(lambda f: f.startswith("individual:bob:系统消息:"))
        assert menu.encode()[len("individual:bob:系统消息:".encode()):] == (
            " \n * ./cd1 或 ./menu 功能菜单\n * ./cd2 或 ./changeName 更改昵称\n * ./cd3 或 ./online 在线用户数量查询\n"
            "*./cd4 或 ./ activity 查询活跃排行\n * ./cd5 或 ./quit 退出聊天室\n\n"
        ).encode()
        assert len(menu.encode()) - len("individual:bob:系统消息:".encode()) + len("individual:alice:系统消息:".encode()) == 230
        # Only chat counts for the ranking: bob says four things, alice one.
        alice.send("channel:channel1::嗨")
        for i in range(4):
            bob.send(f"channel:channel1::{i}")
        bob.expect("channel:channel1:bob:3\n")
        bob.send("channel:channel1:activity:")
        ranking = bob.expect(lambda f: "活跃度排名" in f)
        # The original's text, with each user's count added.
        assert ranking == "channel:channel1:系统消息:< 系统消息 > 活跃度排名\n 第1名 : bob (4)\n 第2名 : alice (1)\n\n"
        alice.send("channel:channel1:quit:")
        assert bob.expect(lambda f: "下线" in f).encode() == bytes.fromhex(
            "6368616e6e656c3a6368616e6e656c313a e7b3bbe7bb9fe6b688e681af3a e794a8e688b7e5b7b2e4b88be7babf3a"
            "616c696365 0a"
        )
    finally:
        alice.close()
        bob.close()


# --- concurrency and resources -----------------------------------------------


def test_twenty_clients_sending_at_once_each_get_every_message_once_in_order(connect):
    names = [f"c{i}" for i in range(20)]
    clients = [connect() for _ in names]
    for name, client in zip(names, clients):
        client.login(name)
    for index, client in enumerate(clients):  # everyone has seen the later joins: the room is complete
        awaited = {JOIN.format(name) for name in names[index:]} - set(client.seen)
        while awaited:
            awaited.discard(client.recv())
    per_sender = 50

    def send_all(name, client):
        for i in range(per_sender):
            client.send(f"channel:channel1::{name}-{i}")

    senders = [threading.Thread(target=send_all, args=pair) for pair in zip(names, clients)]
    for thread in senders:
        thread.start()

    def receive_all(client, received):
        while sum(len(v) for v in received.values()) < per_sender * len(names):
            _, _, sender, text = fields(client.recv())
            if sender != "系统消息":
                received.setdefault(sender, []).append(text)

    results = [{} for _ in clients]
    receivers = [threading.Thread(target=receive_all, args=pair) for pair in zip(clients, results)]
    for thread in receivers:
        thread.start()
    for thread in senders + receivers:
        thread.join(50)
    for received in results:
        assert received == {name: [f"{name}-{i}" for i in range(per_sender)] for name in names}


def test_leaving_releases_every_thread_and_redis_connection(connect, chat_server, redis_kind, redis_client):
    threads_before = set(threading.enumerate())
    redis_before = redis_connections_held(redis_kind, redis_client)
    for i in range(100):
        client = connect()
        client.send("channel:channel1:quit:")
        client.expect_closed()
        client = connect()
        client.login(f"r{i}")
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # a reset, not a goodbye
    assert chat_server.wait_for_released(200, 20)
    assert threads_back_to(threads_before) == []
    assert redis_connections_held(redis_kind, redis_client) == redis_before


def test_shutdown_tells_users_removes_them_and_ends_every_thread(make_server, redis_client):
    threads_before = set(threading.enumerate())
    server = make_server()
    clients = [RawClient(server.port) for _ in range(3)]
    try:
        for i, client in enumerate(clients):
            client.login(f"s{i}")
        server.shutdown()
        for client in clients:
            frames = client.expect_closed()
            assert any("The server is shutting down" in f for f in frames)
    finally:
        for client in clients:
            client.close()
    assert threads_back_to(threads_before) == []
    assert redis_client.hlen(server.keys.users_online) == 0
    assert redis_client.hlen(server.keys.users_by_name) == 0


def test_a_user_who_leaves_as_the_stop_begins_is_removed_from_redis_too(make_server, redis_client, monkeypatch):
    # The interleaving make bench's stop found: a reset reaches the server just
    # as the stop begins, and the leaving user is gone from the server's list
    # of connections before the stop lists the users it removes itself.
    server = make_server()
    early, late = RawClient(server.port), RawClient(server.port)
    early.login("early")
    late.login("late")
    listing = server._local_connections

    def list_after_a_leave():
        early.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        early.close()  # a reset
        assert server.wait_for_connections(1, scaled(10))
        return listing()

    monkeypatch.setattr(server, "_local_connections", list_after_a_leave)
    try:
        server.shutdown()
        assert any("The server is shutting down" in f for f in late.expect_closed())
    finally:
        late.close()
    assert redis_client.hlen(server.keys.users_online) == 0
    assert redis_client.hlen(server.keys.users_by_name) == 0


def test_a_user_who_speaks_as_the_stop_begins_is_still_told_goodbye(make_server, monkeypatch):
    # The browser test's flake: the page asked for the room's members just as
    # the stop began; the reader saw the stop and closed the connection
    # before the personal listener forwarded the farewell.
    server = make_server()
    ann = RawClient(server.port)
    ann.login("ann")
    listing = server._local_connections

    closed_early = []

    def list_then_speak():
        ann.send("channel:channel1::as the stop begins")
        # Whatever the reader does with it, it must not close the connection first.
        closed_early.append(server.wait_for_connections(0, scaled(0.5)))
        return listing()

    monkeypatch.setattr(server, "_local_connections", list_then_speak)
    try:
        server.shutdown()
        assert any("The server is shutting down" in f for f in ann.expect_closed())
    finally:
        ann.close()
    assert closed_early == [False]


def test_shutdown_with_many_users_announces_each_leave_once_elsewhere(make_server, redis_client):
    prefix = "shutdown-many:"
    leaving = make_server(key_prefix=prefix, server_id="leaving")
    staying = make_server(key_prefix=prefix, server_id="staying")
    watcher = RawClient(staying.port)
    clients = [RawClient(leaving.port) for _ in range(40)]
    try:
        watcher.login("watcher")
        for i, client in enumerate(clients):
            client.login(f"u{i}")
        leaving.shutdown()
        for client in clients:
            assert any("The server is shutting down" in f for f in client.expect_closed())
        watcher.send("channel:channel1::marker")
        seen = []
        while (frame := watcher.recv()) != "channel:channel1:watcher:marker\n":
            seen.append(frame)
        lefts = [f for f in seen if f.startswith("channel:channel1:系统消息:User left: ")]
        assert sorted(lefts) == sorted(LEFT.format(f"u{i}") for i in range(40))
        assert redis_client.hkeys(staying.keys.users_online) == [watcher_id(staying, redis_client)]
        assert redis_client.hkeys(staying.keys.users_by_name) == [b"watcher"]
    finally:
        watcher.close()
        for client in clients:
            client.close()


def test_many_users_leaving_at_once_free_their_names_and_are_announced_once(chat_server, connect, redis_client):
    watcher = connect()
    watcher.login("watcher")
    clients = [connect() for _ in range(30)]
    for i, client in enumerate(clients):
        client.login(f"u{i}")
    for client in clients:
        client.close()
    lefts = set()
    while len(lefts) < 30:
        frame = watcher.recv()
        if frame.startswith("channel:channel1:系统消息:User left: "):
            assert frame not in lefts
            lefts.add(frame)
    assert lefts == {LEFT.format(f"u{i}") for i in range(30)}
    assert redis_client.hkeys(chat_server.keys.users_by_name) == [b"watcher"]
    again = connect()
    again.login("u7")


def watcher_id(server, redis_client):
    (user_id,) = [k for k, v in redis_client.hgetall(server.keys.users_name).items() if v == b"watcher"]
    return user_id


def test_a_busy_room_delivers_everything_in_order_and_a_quiet_message_still_arrives(make_server):
    # A tiny wake-up budget makes every listener linger as long as it may.
    server = make_server(wakeup_budget=1.0)
    threads_before = set(threading.enumerate())
    alice, bob = RawClient(server.port), RawClient(server.port)
    try:
        alice.login("alice")
        bob.login("bob")
        assert server.listeners.linger_seconds() == 0.5  # MAX_LINGER
        for i in range(200):
            alice.send(f"channel:channel1::burst {i}")
        for i in range(200):
            assert bob.expect(chat_from("alice")) == f"channel:channel1:alice:burst {i}\n"
        alice.send("channel:channel1::after the burst")
        assert bob.expect(chat_from("alice")) == "channel:channel1:alice:after the burst\n"
        # Leaving while the listeners linger releases them too.
        alice.send("channel:channel1::one more")
        alice.send("channel:channel1:quit:")
        bob.send("channel:channel1:quit:")
        alice.expect_closed()
        bob.expect_closed()
    finally:
        alice.close()
        bob.close()
    assert server.wait_for_released(2, 10)
    assert threads_back_to(threads_before) == []


def test_a_user_who_waits_for_each_echo_is_not_held_a_linger_a_message(make_server):
    # Two users and a budget of 20 wake-ups a second: a busy listener lingers 0.1 s.
    server = make_server(wakeup_budget=20.0, linger_shrink=1.0)
    alice, bob = RawClient(server.port), RawClient(server.port)
    try:
        alice.login("alice")
        bob.login("bob")
        assert server.listeners.linger_seconds() == 0.1
        waits = []
        for i in range(20):
            started = time.monotonic()
            alice.send(f"channel:channel1::line {i}")
            alice.expect(f"channel:channel1:alice:line {i}\n")
            waits.append(time.monotonic() - started)
        # Each message feeds alice's listener one message a linger: after three such lingers
        # it stops lingering (a linger a message would be 0.1 s each, 2 s in all).
        assert max(waits[5:]) < scaled(0.05), waits
        for i in range(20):
            assert bob.expect(chat_from("alice")) == f"channel:channel1:alice:line {i}\n"
    finally:
        alice.close()
        bob.close()


def test_a_listener_idle_after_a_busy_spell_still_waits_for_the_next_message_as_long_as_it_takes(make_server):
    # A linger of 0.1 s; after the burst the listeners linger, find nothing, and block again.
    server = make_server(wakeup_budget=20.0, linger_shrink=1.0)
    alice, bob = RawClient(server.port), RawClient(server.port)
    try:
        alice.login("alice")
        bob.login("bob")
        for i in range(50):
            alice.send(f"channel:channel1::burst {i}")
        for i in range(50):
            assert bob.expect(chat_from("alice")) == f"channel:channel1:alice:burst {i}\n"
        # Silence for several lingers: a read still timed like a linger would end the subscription.
        time.sleep(5 * server.listeners.linger_seconds())
        alice.send("channel:channel1::after the silence")
        assert bob.expect(chat_from("alice")) == "channel:channel1:alice:after the silence\n"
        bob.send("channel:channel1::still here")
        assert alice.expect(chat_from("bob")) == "channel:channel1:bob:still here\n"
    finally:
        alice.close()
        bob.close()


def test_a_read_made_to_wait_in_the_kernel_returns_a_buffer_at_once_or_what_came_by_its_deadline():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.getsockname()) as sender:
            receiver, _ = listener.accept()
            with receiver:
                buffer = bytearray(1000)
                wait_in_kernel(receiver, scaled(0.05), len(buffer))
                with pytest.raises(BlockingIOError):  # nothing came
                    receiver.recv_into(buffer)
                sender.sendall(b"x" * 1500)
                assert receiver.recv_into(buffer) == 1000  # a buffer's worth: at once
                assert receiver.recv_into(buffer) == 500  # less: what came, once the time is up
                wait_in_kernel(receiver, 0.0, 1)  # an ordinary blocking read again
                threading.Timer(scaled(0.2), sender.sendall, (b"late",)).start()
                assert receiver.recv_into(buffer) == 4


def test_the_linger_grows_with_the_room_within_its_bounds():
    server = ChatServer(Config(listener_linger=0.01, wakeup_budget=1000, linger_shrink=1), fakeredis.FakeRedis())
    for users, linger in ((0, 0.01), (5, 0.01), (100, 0.1), (250, 0.25), (5000, 0.5)):
        server.connections = {object() for _ in range(users)}
        assert server.listeners.linger_seconds() == linger
    server.config.wakeup_budget = 0
    assert server.listeners.linger_seconds() == 0.01
    server.config.listener_linger = 0
    assert server.listeners.linger_seconds() == 0


def test_the_linger_shrinks_while_the_cpu_is_to_spare_and_grows_back_once_it_is_short():
    cpu = [0.0]
    engine = ListenerEngine(
        Config(listener_linger=0.01, wakeup_budget=5000, linger_shrink=0.25), None, lambda: 200, None,
        cpu_seconds=lambda: cpu[0],
    )

    def window(share_of_a_core):  # one window of HEADROOM_WINDOW elapsed, with this CPU use
        cpu[0] += share_of_a_core
        engine._window = (time.monotonic() - 1.0, engine._window[1])
        return engine.linger_seconds()

    assert engine.linger_seconds() == 0.04  # 200 users / 5,000 wake-ups a second
    lingers = [window(0.3) for _ in range(8)]  # a light load: down to a quarter, in steps
    assert lingers[0] < 0.04 and lingers[-1] == 0.01 and lingers == sorted(lingers, reverse=True)
    assert window(0.7) == 0.01  # in between: it stays
    grown = [window(0.95) for _ in range(8)]  # the CPU is short: back to the budget's
    assert grown[-1] == 0.04 and grown == sorted(grown)


# --- the command line --------------------------------------------------------


def test_python_server_py_serves_and_exits_zero_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "server.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("chatroom server listening on 127.0.0.1:"), line + proc.stderr.read()
        client = RawClient(int(line.rsplit(":", 1)[1]))
        client.login("alice")
        proc.send_signal(signal.SIGTERM)
        assert any("shutting down" in f for f in client.expect_closed())
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_cpu_auto_pins_the_process_to_one_allowed_cpu_chosen_by_the_port():
    # In a child process: pinning this one would pin the rest of the tests.
    code = (
        "import json, os\nfrom chatroom import process\n"
        "allowed = sorted(os.sched_getaffinity(0))\n"
        "cpu = process.pin_to_cpu('auto', 9527)\n"
        "print(json.dumps([allowed, cpu, sorted(os.sched_getaffinity(0))]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    allowed, cpu, now = json.loads(out)
    if len(allowed) < 2:
        assert (cpu, now) == (None, allowed)
    else:
        assert now == [cpu] == [allowed[9527 % len(allowed)]]
    assert process.pin_to_cpu("none", 9527) is None


def test_cpu_flag_takes_auto_none_or_a_number():
    assert parse_args([]).cpu == "auto"
    assert parse_args(["--cpu", "none"]).cpu == "none"
    assert parse_args(["--cpu", "1"]).cpu == "1"
    with pytest.raises(SystemExit):
        parse_args(["--cpu", "fast"])


def test_an_unreachable_redis_fails_fast_with_a_clear_message():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--port", "0", "--redis-url", f"redis://127.0.0.1:{port}/0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "REDIS_URL": ""},
    )
    assert result.returncode != 0
    assert "cannot reach Redis at redis://127.0.0.1:" in result.stderr


def run_server(*args: str, env=None, python=(sys.executable,), timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*python, str(ROOT / "server.py"), "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "REDIS_URL": "", **(env or {})},
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "no error was printed"
    return lines[-1]


@pytest.mark.parametrize(
    "args, env, says",
    [
        (["--redis-url", "nonsense"], {}, "argument --redis-url: not a Redis URL"),
        ([], {"REDIS_URL": "nonsense"}, "REDIS_URL: not a Redis URL"),
        (["--port", "99999"], {}, "argument --port: must be at most 65535"),
        ([], {"CHATROOM_PORT": "abc"}, "CHATROOM_PORT: not a whole number"),
        (["--dead-after", "0"], {}, "argument --dead-after: must be at least 0.3"),
    ],
)
def test_bad_settings_exit_2_with_one_line_and_no_traceback(args, env, says):
    result = run_server(*args, env=env)
    assert result.returncode == 2
    assert says in one_line_error(result)


def test_an_unreachable_redis_with_a_password_is_reported_without_it():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_server("--redis-url", f"redis://:hunter2@127.0.0.1:{port}/0")
    assert result.returncode == 1
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0" in one_line_error(result)
    assert "hunter2" not in result.stderr + result.stdout


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_a_read_only_replica_at_start_is_one_line_and_exit_1(tmp_path):
    replica = RedisProcess("--replicaof", "127.0.0.1", str(free_port()), "--dir", str(tmp_path))
    replica.start()
    try:
        result = run_server("--redis-url", replica.url)
    finally:
        replica.stop()
    assert result.returncode == 1
    error = one_line_error(result)
    assert error.startswith(f"cannot use Redis at {replica.url}: ") and "read only replica" in error


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_a_redis_out_of_memory_at_start_is_one_line_and_exit_1(tmp_path):
    full = RedisProcess("--maxmemory", "1", "--dir", str(tmp_path))
    full.start()
    try:
        result = run_server("--redis-url", full.url)
    finally:
        full.stop()
    assert result.returncode == 1
    assert "it is out of memory (maxmemory" in one_line_error(result)


def test_the_server_runs_when_standard_output_cannot_be_written():
    port = free_port()
    with open("/dev/full", "w") as full:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "server.py"), "--port", str(port)],
            stdout=full, stderr=subprocess.PIPE, text=True, env={**os.environ, "REDIS_URL": ""},
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client = RawClient(port)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.05)  # a process starting: nothing to await
        client.login("alice")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_a_python_without_the_dependencies_says_what_to_run():
    # -S: no site-packages, so redis cannot be imported; -I: no PYTHON* variables.
    result = run_server("--help", python=(sys.executable, "-I", "-S"))
    assert result.returncode == 1
    assert "run `make run`, or `pip install .` first" in one_line_error(result)


def test_each_connection_has_its_three_threads_named_after_its_user(connect, chat_server):
    alice = connect()
    alice.login("alice")
    (conn,) = chat_server.connections
    names = {thread.name for thread in threading.enumerate()}
    assert {f"conn-{conn.id}", f"conn-{conn.id}-broadcast", f"conn-{conn.id}-personal"} <= names
    assert (conn.reader_thread.name, conn.broadcast_thread.name) == (f"conn-{conn.id}", f"conn-{conn.id}-broadcast")


def test_python_server_py_runs_with_glibcs_per_thread_malloc_caches_off():
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "server.py"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "REDIS_URL": ""},
    )
    try:
        assert "listening on" in proc.stdout.readline()
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        assert b"GLIBC_TUNABLES=" + process.MALLOC_TUNABLES.encode() in environ
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()


def test_the_futex_hash_table_is_sized_for_the_clients_threads():
    # In a child process: the table is the whole process's.  Its threads start
    # after the call (as in main), and the kernel must keep the size asked for.
    code = (
        "import ctypes, threading\nfrom chatroom import process\n"
        "buckets = process.widen_futex_hash(3 * 4000)\n"
        "done = threading.Event()\n"
        "threads = [threading.Thread(target=done.wait) for _ in range(50)]\n"
        "for t in threads: t.start()\n"
        "now = ctypes.CDLL(None).prctl(78, 2, 0, 0, 0)\n"
        "done.set()\n"
        "print(buckets, now)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    buckets, now = out.split()
    if buckets == "None":  # a kernel without a table per process (before Linux 6.16)
        assert int(now) < 0
    else:
        assert int(buckets) == int(now) == 65536
    assert [process.futex_buckets(n) for n in (0, 3, 3 * 4000, 3 * 10_000, 3 * 1_000_000)] == [
        16, 16, 65536, 131072, process.MAX_FUTEX_BUCKETS,
    ]


def test_the_threads_get_the_smaller_stack():
    code = "from chatroom import process; import threading; process.set_thread_stack_size(); print(threading.stack_size())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert int(out) == process.THREAD_STACK_SIZE == 512 * 1024

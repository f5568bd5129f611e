"""client.py in rooms: rendering and typed lines (pure), the room state, then the program in pipe mode.

The program runs as ``python client.py`` with a pipe for stdin, against the
scripted server of tests/test_client.py (to say exactly what a server
answers, or does not) and against the live server on both Redis backends
(tests/conftest.py).  The terminal's side (the prompt, colours, reconnecting
in a pty) is in tests/test_client_tty.py.
"""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from conftest import RawClient, free_port
from test_client import NOW, ClientProcess, FakeServer, T

import client
from client import JOINING, PARTING, Action, RoomState, Session, parse_frame, parse_line
from framing import MAX_FRAME
from protocol import JOIN_OK, JOIN_REFUSED, PART_OK, PART_REFUSED

pytestmark = pytest.mark.timeout(30)

EN = "[15:04] "


def lines(payload: str, lang: str = "en", me: str = "", counting: bool = False) -> tuple[str, ...]:
    return parse_frame(payload, lang, NOW, me, counting=counting).lines


# --- rendering (parse_frame) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "en", "zh"),
    [
        ("channel:dev:bob:hi\n", EN + "[dev] < bob > hi", T + "[dev] < bob >hi"),
        ("channel:dev:bob:a:b\n", EN + "[dev] < bob > a:b", T + "[dev] < bob >a:b"),
        (
            "channel:dev:系统消息:User < bob > joined the room\n",
            EN + "[dev] < System > User < bob > joined the room",
            T + "[dev] < 系统消息 > User < bob > joined the room",
        ),
        (
            "channel:Dev:系统消息:用户 < bob > 离开了房间\n",
            EN + "[Dev] < System > 用户 < bob > 离开了房间",
            T + "[Dev] < 系统消息 > 用户 < bob > 离开了房间",
        ),
    ],
)
def test_a_rooms_lines_carry_the_rooms_name(payload, en, zh):
    assert lines(payload, "en") == (en,)
    assert lines(payload, "zh") == (zh,)
    assert parse_frame(payload, "en", NOW).room == payload.split(":")[1]


def test_the_lobbys_lines_carry_no_room_and_stay_the_go_clients():
    incoming = parse_frame("channel:channel1:bob:hi\n", "zh", NOW)
    assert (incoming.lines, incoming.room) == ((T + "< bob >hi",), None)
    assert lines("channel:channel1:系统消息:用户 < bob > 上线了!\n", "zh") == (T + "< 系统消息 > 用户 < bob > 上线了!",)


def test_a_rooms_chat_line_is_a_public_line_of_that_room():
    incoming = parse_frame("channel:dev:bob:hi\n", "en", NOW, me="alice")
    assert (incoming.public, incoming.room, incoming.answers) == (("bob", "hi"), "dev", ())
    assert parse_frame("channel:dev:alice:hi\n", "en", NOW, me="alice").answers == (client.ECHO,)


def test_a_room_message_of_several_lines_is_indented_under_its_sender():
    assert lines("channel:dev:mallory:ok\n[21:13] < bob > hunter2\n") == (
        EN + "[dev] < mallory > ok",
        " " * 26 + "[21:13] < bob > hunter2",
    )


def test_a_rooms_name_from_the_network_is_made_visible():
    assert lines("channel:\x1b[2Jdev\n:bob:hi\n") == (EN + "[^[[2Jdev^J] < bob > hi",)


def test_a_rooms_history_line_is_dimmed_with_its_own_time_and_the_room():
    sent = datetime(2024, 5, 6, 9, 30)
    payload = f"roomHistory:dev:{int(sent.timestamp())}:bob:good: morning\n"
    incoming = parse_frame(payload, "en", NOW)
    assert incoming.lines == ("[09:30] [dev] (history) < bob > good: morning",)
    assert (incoming.public, incoming.sent_at, incoming.room) == (("bob", "good: morning"), int(sent.timestamp()), "dev")
    assert all("history" in style for style, _ in incoming.styled[0])
    assert parse_frame(payload, "zh", NOW).lines == ("【  09:30  】[dev] (历史) < bob >good: morning",)


@pytest.mark.parametrize("payload", ["roomHistory:dev:soon:bob:hi\n", "roomHistory:dev:1714980000:no sender\n"])
def test_a_rooms_history_line_that_cannot_be_read_is_dropped(payload):
    assert parse_frame(payload, "en", NOW) == client.Incoming(())


def test_join1_prints_nothing_and_says_which_room_as_the_server_shows_it():
    incoming = parse_frame("individual:alice:join1:Dev\n", "en", NOW, me="alice")
    assert incoming == client.Incoming((), answers=(JOINING,), room="Dev", room_answer=JOIN_OK)


@pytest.mark.parametrize(
    ("payload", "en", "zh", "mark"),
    [
        (
            "individual:alice:join0:That name is reserved\n",
            EN + "< System > That name is reserved",
            T + "< 系统消息 > That name is reserved",
            JOIN_REFUSED,
        ),
        ("individual:alice:part1:dev\n", EN + "You left the room dev", T + "你已离开房间 dev", PART_OK),
        (
            "individual:alice:part0:The lobby channel1 cannot be left\n",
            EN + "< System > The lobby channel1 cannot be left",
            T + "< 系统消息 > The lobby channel1 cannot be left",
            PART_REFUSED,
        ),
    ],
)
def test_the_answers_to_join_and_part_are_shown(payload, en, zh, mark):
    incoming = parse_frame(payload, "en", NOW, me="alice")
    assert (incoming.lines, incoming.room_answer) == ((en,), mark)
    assert incoming.answers == ((JOINING,) if mark == JOIN_REFUSED else (PARTING,))
    assert lines(payload, "zh") == (zh,)


@pytest.mark.parametrize(
    ("payload", "lang", "shown"),
    [
        ("channel:dev:alice:Users in dev: 2\n", "en", EN + "[dev] < System > Users in dev: 2"),
        ("channel:Dev:alice:房间 Dev 的人数为2人\n", "zh", T + "[Dev] < 系统消息 > 房间 Dev 的人数为2人"),
    ],
)
def test_the_count_of_a_room_we_asked_for_is_a_system_line(payload, lang, shown):
    incoming = parse_frame(payload, lang, NOW, "alice", counting=True)
    assert (incoming.lines, incoming.answers, incoming.public) == ((shown,), (client.COUNT, client.ECHO), None)
    # Not asked for: alice said it.
    assert parse_frame(payload, lang, NOW, "alice").public is not None


def test_a_room_has_a_stable_colour_whatever_its_spelling():
    assert client.room_colour("Dev") == client.room_colour("dev") == client.room_colour("ＤＥＶ")
    assert len({client.room_colour(f"room{i}") for i in range(50)}) > 4
    shown = client.render(parse_frame("channel:dev:bob:hi\n", "en", NOW).styled[0], True)
    assert f"[\x1b[{client.room_colour('dev')}mdev\x1b[0m] " in shown
    assert re.sub(r"\x1b\[[0-9;]*m", "", shown) == EN + "[dev] < bob > hi"
    history = parse_frame(f"roomHistory:dev:{int(NOW.timestamp())}:bob:hi\n", "en", NOW).styled[0]
    assert f"\x1b[{client.room_colour('dev')};2mdev\x1b[0m" in client.render(history, True)  # dimmed too


# --- typed lines (parse_line) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "room", "action"),
    [
        ("hello", "dev", Action("channel:dev::hello")),
        ("hello", "channel1", Action("channel:channel1::hello")),  # the lobby's: the Go client's payload
        ("//slash", "dev", Action("channel:dev::/slash")),
        ("/join dev", "channel1", Action("channel:dev:join:", joining="dev")),
        ("/JOIN  two words ", "channel1", Action("channel:two words:join:", joining="two words")),
        ("/part", "dev", Action("channel:dev:part:")),
        ("/part ops", "dev", Action("channel:ops:part:")),
        ("/part", "channel1", Action("channel:channel1:part:")),  # the server says why not
        ("/room ops", "dev", Action(switch_to="ops")),
        ("/r ops", "dev", Action(switch_to="ops")),
        ("/R channel1", "dev", Action(switch_to="channel1")),
        ("/room", "dev", Action(show_rooms=True)),
        ("/rooms", "dev", Action("individual:alice:rooms:")),
        ("/who", "dev", Action("channel:dev:who:")),
        ("/who ops", "dev", Action("channel:ops:who:")),
        ("/who", "channel1", Action("individual:alice:who:")),  # everyone online, as before
        ("/who Channel1", "dev", Action("individual:alice:who:")),
        ("/online", "dev", Action("channel:dev:onlineList:")),
        ("/online", "channel1", Action("channel:channel1:onlineList:")),
        ("/online CHANNEL1", "dev", Action("channel:channel1:onlineList:")),
        ("./cd3", "dev", Action("channel:channel1:onlineList:")),  # the original's command: everyone
        ("./online", "dev", Action("channel:channel1:onlineList:")),
        ("./cd4", "dev", Action("channel:channel1:activity:")),  # the ranking is global
        ("/top", "dev", Action("channel:channel1:activity:")),
        ("/msg bob hi", "dev", Action("individual:bob::hi")),
    ],
)
def test_typed_lines_in_rooms(line, room, action):
    assert parse_line(line, "alice", "en", room) == action


@pytest.mark.parametrize(
    ("line", "en", "zh"),
    [
        ("/join", "Usage: /join ROOM", "用法: /join 房间名"),
        ("/join a:b", "A room name cannot contain ':'", "房间名不能包含':'"),
        ("/part a:b", "A room name cannot contain ':'", "房间名不能包含':'"),
        ("/who a:b", "A room name cannot contain ':'", "房间名不能包含':'"),
    ],
)
def test_bad_room_commands_are_told_locally_and_send_nothing(line, en, zh):
    assert parse_line(line, "alice", "en", "dev") == Action(notice=en)
    assert parse_line(line, "alice", "zh", "dev") == Action(notice=zh)


def test_a_rooms_chat_limit_counts_the_rooms_name():
    limit = client.chat_limit("alice", "development")
    assert len(b"channel:development:alice:") + limit + 1 == MAX_FRAME
    assert parse_line("x" * limit, "alice", "en", "development").payload == "channel:development::" + "x" * limit
    refused = parse_line("x" * (limit + 1), "alice", "en", "development")
    assert (refused.payload, refused.too_long) == (None, True)
    assert client.chat_limit("alice") == client.chat_limit("alice", "channel1")


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        ("channel:dev::hi", client.ECHO),
        ("channel:dev:join:", JOINING),
        ("channel:dev:part:", PARTING),
        ("channel:dev:who:", client.NOTICE),
        ("channel:dev:onlineList:", client.COUNT),
        ("individual:alice:rooms:", client.NOTICE),
    ],
)
def test_what_a_room_request_waits_for(payload, kind):
    assert client.request_kind(payload) == kind


def test_help_and_banner_list_the_room_commands_in_both_languages():
    for lang in ("en", "zh"):
        shown = parse_line("/help", "alice", lang).notice
        for command in ("/join", "/part", "/room", "/r ", "/rooms", "/who [", "/online ["):
            assert command in shown, (lang, command)
        assert all(client.display_width(line) <= 80 for line in shown.splitlines()), lang
        assert "/join" in client.text(lang, "banner_slash") and "/rooms" in client.text(lang, "banner_slash")


# --- the room state (RoomState) and the prompt ----------------------------------------------------


def joined(rooms: RoomState, room: str, *, switch: bool = True) -> str | None:
    rooms.expect(room, switch=switch)
    now_in = rooms.answered(JOIN_OK, room)
    assert rooms.settle() == JOIN_OK
    return now_in


def test_a_room_joined_becomes_the_current_one_as_the_server_shows_it():
    rooms = RoomState()
    assert (rooms.current, rooms.names()) == ("channel1", ["channel1"])
    assert joined(rooms, "dev") == "dev"
    rooms.expect("OPS", switch=True)
    assert rooms.answered(JOIN_OK, "Ops") == "Ops"
    assert (rooms.current, rooms.names(), rooms.joined()) == ("Ops", ["channel1", "dev", "Ops"], ["dev", "Ops"])
    assert joined(rooms, "ops") is None  # already the current one


def test_a_room_joined_again_after_a_reconnect_does_not_become_current():
    rooms = RoomState()
    joined(rooms, "dev")
    joined(rooms, "ops")
    rooms.switch("dev")
    for room in rooms.joined():
        assert joined(rooms, room, switch=False) is None
    assert rooms.current == "dev"


def test_after_parting_the_current_room_the_one_current_before_it_is():
    rooms = RoomState()
    joined(rooms, "dev")
    joined(rooms, "ops")
    assert rooms.switch("dev") is True
    assert rooms.answered(PART_OK, "dev") == "ops"  # ops was current before dev
    assert rooms.answered(PART_OK, "ops") == "channel1"
    joined(rooms, "a")
    joined(rooms, "b")
    assert rooms.switch("channel1") is True
    assert rooms.answered(PART_OK, "b") is None  # not the current one: nothing changes
    assert (rooms.current, rooms.names()) == ("channel1", ["channel1", "a"])


def test_switching_needs_a_room_of_ours():
    rooms = RoomState()
    joined(rooms, "Dev")
    assert rooms.switch("channel1") is True
    assert rooms.switch("CHANNEL1") is False  # already
    assert rooms.switch("nowhere") is None
    assert rooms.switch("DEV") is True
    assert rooms.current == "Dev"


def test_a_refusal_changes_no_room_and_the_answer_is_kept_for_the_main_thread():
    rooms = RoomState()
    rooms.expect("dev", switch=True)
    assert rooms.answered(JOIN_REFUSED, None) is None
    assert (rooms.settle(), rooms.current, rooms.names()) == (JOIN_REFUSED, "channel1", ["channel1"])
    assert rooms.settle() is None  # nothing expected any more


def test_a_room_that_could_not_be_joined_again_is_forgotten():
    rooms = RoomState()
    joined(rooms, "dev")
    joined(rooms, "ops")
    assert rooms.forget("ops") == "dev"
    assert rooms.forget("channel1") is None  # nobody leaves the lobby
    assert rooms.names() == ["channel1", "dev"]


def test_the_prompt_shows_the_current_room_in_its_colour():
    session = Session(None, "en")
    session.name = "alice"
    assert session.prompt_text() == "alice> "
    joined(session.rooms, "dev")
    assert session.prompt_text() == "[dev] alice> "
    session.colour = True
    assert session.prompt_text().startswith(f"[\x1b[{client.room_colour('dev')}mdev\x1b[0m] \x1b[1;")


# --- a room's history after joining (HistoryFilter.joined) ---------------------------------------------


def test_a_rooms_history_drops_what_was_shown_live_as_we_joined():
    seen = client.HistoryFilter(slack=5)
    seen.saw("bob", "before we joined")  # shown before joining: not what the join's history repeats
    seen.joined(1000.0)
    seen.saw("bob", "hi")  # live, in the instant of joining
    history = [(900, "bob", "hi"), (1000, "bob", "hi"), (1001, "carol", "hi"), (999, "bob", "before we joined")]
    # An old "hi" is another message; the one as we joined was shown live; carol's was not.
    assert [seen.admit(*entry) for entry in history] == [True, False, True, True]


# --- the program in pipe mode against a scripted server ------------------------------------------------


@pytest.fixture
def server():
    """The scripted server of tests/test_client.py: it answers what the test says, or nothing."""
    fake = FakeServer()
    yield fake
    fake.stop()


@pytest.fixture
def start_client():
    """Start client processes; any still running after the test is killed."""
    started = []

    def start(port: int, *args: str) -> ClientProcess:
        process = ClientProcess(port, *args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def test_a_line_after_join_goes_to_the_room_joined(server, start_client):
    chat = start_client(server.port, "--name", "alice")
    server.login("alice")
    chat.type("/join dev", "hi dev", "/join DEV2")
    server.expect("channel:dev:join:")
    # Not answered yet: the client waits for join1 before it reads "hi dev"
    # (else it would send it to the lobby, channel:channel1::hi dev, now).
    server.send("individual:alice:join1:dev")
    server.send("channel:dev:系统消息:User < alice > joined the room")
    server.answer("channel:dev::hi dev", "channel:dev:alice:hi dev")
    server.expect("channel:DEV2:join:")
    server.send("individual:alice:join0:There are 10000 rooms already: join one of them")
    chat.type("still dev")
    server.answer("channel:dev::still dev", "channel:dev:alice:still dev")
    chat.end_input()
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert "Current room: dev\n" in output
    assert re.search(r"\[\d\d:\d\d\] \[dev\] < System > User < alice > joined the room\n", output)
    assert re.search(r"\[\d\d:\d\d\] \[dev\] < alice > still dev\n", output)
    assert "< System > There are 10000 rooms already: join one of them\n" in output


def test_a_server_without_rooms_is_waited_for_briefly_and_said(server, start_client):
    # The original server has no rooms: it never answers a join with join1 or join0.
    chat = start_client(server.port, "--name", "alice", "--lang", "zh")
    server.login("alice")
    chat.type("/join dev", "hello")
    server.expect("channel:dev:join:")
    server.chat("alice", "hello")  # within client.ANSWER_TIMEOUT, to the lobby still
    chat.end_input()
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert "服务器没有回应(它也许不支持房间)\n" in output
    assert "当前房间" not in output


def test_room_status_switching_and_parting_are_said(server, start_client):
    chat = start_client(server.port, "--name", "alice")
    server.login("alice")
    chat.type("/join dev", "/join ops", "/room dev", "/room", "/r nowhere", "/part", "in ops")
    for room in ("dev", "ops"):
        server.expect(f"channel:{room}:join:")
        server.send(f"individual:alice:join1:{room}")
    server.expect("channel:dev:part:")
    server.send("individual:alice:part1:dev")
    server.answer("channel:ops::in ops", "channel:ops:alice:in ops")  # ops was current before dev
    chat.end_input()
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert output.count("Current room: dev\n") == 2  # joined, then switched back to
    assert "Current room: dev; your rooms: channel1, dev, ops\n" in output
    assert "You are not in the room < nowhere >: join it first (/join nowhere)\n" in output
    assert re.search(r"\[\d\d:\d\d\] You left the room dev\nCurrent room: ops\n", output)


def test_after_a_reconnect_the_rooms_are_joined_again_and_the_current_one_stays(server, start_client):
    chat = start_client(server.port, "--name", "alice", "--reconnect")
    server.login("alice")
    chat.type("/join dev", "/join ops", "/join qa", "/r dev")
    for room in ("dev", "ops", "qa"):
        server.expect(f"channel:{room}:join:")
        server.send(f"individual:alice:join1:{room}")
    wait_until(chat, lambda output: output.count("Current room: dev\n") == 2)  # joined, then /r dev
    server.close()
    chat.wait_for_output("Reconnecting in 0.5 s (attempt 1)...")
    chat.type("back in dev")  # held until the rooms are ours again
    server.expect("individual::changeNameFirst:alice")
    server.send("individual:alice:changeNameFirst1:alice")
    server.expect("channel:dev:join:")  # in the order joined, once the name is back
    server.send("individual:alice:join1:dev")
    server.expect("channel:ops:join:")
    server.send("individual:alice:系统消息:You are sending too fast (at most 10 messages a second): message not sent")
    server.expect("channel:ops:join:")  # asked again, after a pause
    server.send("individual:alice:join1:ops")
    server.expect("channel:qa:join:")
    server.send("individual:alice:join0:There are 10000 rooms already: join one of them")
    server.answer("channel:dev::back in dev", "channel:dev:alice:back in dev")
    chat.type("/room")
    chat.wait_for_output("your rooms: channel1, dev, ops\n")
    chat.end_input()
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert "Could not join the room < qa > again\n" in output
    assert "Current room: dev; your rooms: channel1, dev, ops\n" in output


def test_a_lost_current_room_falls_back_after_a_reconnect(server, start_client):
    chat = start_client(server.port, "--name", "alice", "--reconnect", "--lang", "zh")
    server.login("alice")
    chat.type("/join dev")
    server.expect("channel:dev:join:")
    server.send("individual:alice:join1:dev")
    chat.wait_for_output("当前房间: dev\n")
    server.close()
    server.expect("individual::changeNameFirst:alice")
    server.send("individual:alice:changeNameFirst1:alice")
    server.expect("channel:dev:join:")
    server.send("individual:alice:join0:房间数已达上限(10000个),请加入已有的房间")
    chat.wait_for_output("无法重新加入房间 < dev >\n当前房间: channel1\n")
    chat.type("lobby")
    server.chat("alice", "lobby")
    chat.end_input()
    server.expect("channel:channel1:quit:")
    server.close()
    assert chat.finish()[0] == 0


# --- the program in pipe mode against the live server ------------------------------------------------------


def test_live_join_chat_switch_who_and_part(chat_server, connect, start_client):
    bob, carol = connect(), connect()
    bob.login("bob")
    carol.login("carol")
    bob.send("channel:dev:join:")
    bob.expect("individual:bob:join1:dev\n")
    bob.send("channel:dev::said before alice came")
    bob.expect("channel:dev:bob:said before alice came\n")
    chat = start_client(chat_server.port, "--name", "alice")
    chat.wait_for_output("Your nickname is now: alice")
    chat.type("/join dev", "hi dev", "/join ops", "hi ops", "/r dev", "/who", "/online", "/rooms", "again dev")
    bob.expect("channel:dev:系统消息:User < alice > joined the room\n")
    bob.expect("channel:dev:alice:hi dev\n")
    bob.expect("channel:dev:alice:again dev\n")
    chat.type("/part", "/part", "in the lobby")
    bob.expect("channel:dev:系统消息:User < alice > left the room\n")
    carol.expect("channel:channel1:alice:in the lobby\n")
    chat.end_input()
    carol.expect("channel:channel1:系统消息:User left: alice\n")
    status, output = chat.finish()
    assert status == 0
    assert "hi ops" not in "".join(bob.seen) and not any(":dev:" in frame for frame in carol.seen)
    for shown in (
        "[dev] (history) < bob > said before alice came\n",
        "[dev] < System > User < alice > joined the room\n",
        "[dev] < alice > hi dev\n",
        "[ops] < alice > hi ops\n",
        "< System > In dev (2): alice, bob\n",
        "[dev] < System > Users in dev: 2\n",
        "< System > Rooms (3): channel1 (3), dev (2), ops (1)\n",
        "You left the room dev\nCurrent room: ops\n",
        "You left the room ops\nCurrent room: channel1\n",
        "< alice > in the lobby\n",
    ):
        assert shown in output, shown
    assert output.count("said before alice came") == 1


def test_live_zh_room_texts(make_server, start_client):
    zh_server = make_server(lang="zh")
    chat = start_client(zh_server.port, "--name", "alice", "--lang", "zh")
    chat.type("/join dev", "/who", "/online", "/part", "/part")
    chat.end_input()
    status, output = chat.finish()
    assert status == 0
    for shown in (
        "当前房间: dev\n",
        "[dev] < 系统消息 > 用户 < alice > 加入了房间\n",
        "< 系统消息 >房间 dev 的用户(1): alice\n",
        "[dev] < 系统消息 > 房间 dev 的人数为1人\n",
        "你已离开房间 dev\n当前房间: channel1\n",
        "< 系统消息 > 大厅 channel1 不能退出\n",
    ):
        assert shown in output, shown


def test_live_reconnect_joins_the_rooms_again_and_keeps_the_current_one(make_server, start_client):
    port = free_port()
    first = make_server(port=port)
    chat = start_client(port, "--name", "alice", "--reconnect")
    chat.type("/join dev", "/join ops", "/room dev")
    wait_until(chat, lambda output: output.count("Current room: dev\n") == 2)  # joined, then /room dev
    first.shutdown()
    chat.wait_for_output("Reconnecting in 0.5 s (attempt 1)...")
    chat.type("back in dev")
    second = make_server(port=port)
    watcher = client_in(second, "watcher", "dev")
    try:
        # Live, or from the room's history if alice was back before the watcher joined.
        watcher.expect(lambda f: f == "channel:dev:alice:back in dev\n" or f.endswith(":alice:back in dev\n"))
        watcher.send("individual:watcher:rooms:")
        watcher.expect("individual:watcher:系统消息:Rooms (3): channel1 (2), dev (2), ops (1)\n")
    finally:
        watcher.close()
    chat.end_input()
    status, output = chat.finish()
    assert status == 0
    assert "Reconnected to the server\n" in output
    assert output.count("< System > User < alice > joined the room\n") == 4  # dev and ops, twice


def wait_until(chat, condition) -> None:
    """Wait until what the client printed satisfies ``condition``."""
    with chat._cond:
        found = chat._cond.wait_for(lambda: condition(chat._out.decode("utf-8", "replace")), client.CONNECT_TIMEOUT)
    assert found, f"not printed; output so far: {chat.output!r}"


def client_in(chat_server, name: str, room: str) -> RawClient:
    """A raw client named ``name`` on ``chat_server``, in ``room``."""
    raw = RawClient(chat_server.port)
    raw.login(name)
    raw.send(f"channel:{room}:join:")
    raw.expect(f"individual:{name}:join1:{room}\n")
    return raw


def test_live_rejoins_that_trip_the_flood_control_are_asked_again(make_server, start_client):
    port = free_port()
    first = make_server(port=port)
    chat = start_client(port, "--name", "alice", "--reconnect")
    rooms = ["r0", "r1", "r2", "r3"]
    chat.type(*(f"/join {room}" for room in rooms), "/r r1")
    wait_until(chat, lambda output: output.count("Current room: r1\n") == 2)
    first.shutdown()
    chat.wait_for_output("Reconnecting in 0.5 s (attempt 1)...")
    # A burst of 3: the nickname and two joins pass, the next is refused; one more a second.
    second = make_server(port=port, rate_limit=1, rate_burst=3)
    wait_until(chat, lambda output: output.count("< System > User < alice > joined the room\n") == 8)
    watcher = RawClient(second.port)
    try:
        watcher.login("watcher")
        watcher.send("individual:watcher:rooms:")
        watcher.expect("individual:watcher:系统消息:Rooms (5): channel1 (2), r0 (1), r1 (1), r2 (1), r3 (1)\n")
    finally:
        watcher.close()
    chat.type("/room")
    chat.wait_for_output("Current room: r1; your rooms: channel1, r0, r1, r2, r3\n")
    assert "You are sending too fast (at most 1 messages a second): message not sent" in chat.output
    assert "Could not join the room" not in chat.output

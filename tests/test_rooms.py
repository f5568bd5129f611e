"""Rooms beside the lobby: join, part, chat, who, the list, limits, names and cleanup."""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time

import pytest
from conftest import RawClient, redis_connections_held, scaled, threads_back_to

from framing import FrameDecoder, encode

pytestmark = pytest.mark.timeout(60)


def join(client: RawClient, room: str, name: str, shown: str | None = None) -> None:
    """Join ``room`` and wait for join1 (with the room as it is shown)."""
    client.send(f"channel:{room}:join:")
    client.expect(f"individual:{name}:join1:{shown or room}\n")


def system_reply(client: RawClient, name: str) -> str:
    return client.expect(lambda f: f.startswith(f"individual:{name}:系统消息:")).rstrip("\n").split(":", 3)[3]


def room_frames(client: RawClient, room: str) -> list[str]:
    return [f for f in client.seen if f.startswith(f"channel:{room}:")]


# --- the protocol ------------------------------------------------------------------


def next_outside_the_lobby(client: RawClient) -> str:
    """The next frame that is not a lobby notice (those of other users' logins come any time)."""
    return client.expect(lambda f: not f.startswith("channel:channel1:"))


def test_join_is_confirmed_then_announced_to_the_members_then_the_history(connect):
    alice, bob = connect(), connect()
    alice.login("alice")
    bob.login("bob")
    alice.send("channel:dev:join:")
    assert next_outside_the_lobby(alice) == "individual:alice:join1:dev\n"
    assert next_outside_the_lobby(alice) == "channel:dev:系统消息:User < alice > joined the room\n"
    alice.send("channel:dev::first")
    alice.expect("channel:dev:alice:first\n")
    bob.send("channel:dev:join:")
    assert next_outside_the_lobby(bob) == "individual:bob:join1:dev\n"
    assert next_outside_the_lobby(bob) == "channel:dev:系统消息:User < bob > joined the room\n"
    history = next_outside_the_lobby(bob)
    assert history.startswith("roomHistory:dev:") and history.endswith(":alice:first\n")
    alice.expect("channel:dev:系统消息:User < bob > joined the room\n")


def test_a_message_in_a_room_reaches_its_members_only(connect):
    alice, bob, lobby_only = connect(), connect(), connect()
    for client, name in ((alice, "alice"), (bob, "bob"), (lobby_only, "carol")):
        client.login(name)
    join(alice, "dev", "alice")
    join(bob, "dev", "bob")
    alice.send("channel:dev::for dev only")
    bob.expect("channel:dev:alice:for dev only\n")
    alice.expect("channel:dev:alice:for dev only\n")
    alice.send("channel:channel1::for everyone")
    lobby_only.expect("channel:channel1:alice:for everyone\n")
    assert not any("dev" in f for f in lobby_only.seen)


def test_a_non_members_message_is_refused_and_published_nowhere(connect):
    alice, mallory = connect(), connect()
    alice.login("alice")
    mallory.login("mallory")
    join(alice, "dev", "alice")
    mallory.send("channel:dev::let me in")
    assert system_reply(mallory, "mallory") == "You are not in the room < dev >: join it first (/join dev)"
    alice.send("channel:dev::marker")
    alice.expect("channel:dev:alice:marker\n")
    assert not any("let me in" in f for f in alice.seen + mallory.seen)


def test_joining_a_room_again_is_answered_join1_with_no_second_notice(connect):
    alice, bob = connect(), connect()
    alice.login("alice")
    bob.login("bob")
    join(alice, "dev", "alice")
    join(bob, "dev", "bob")
    join(bob, "DEV", "bob", shown="dev")
    bob.send("channel:dev::marker")
    alice.expect("channel:dev:bob:marker\n")
    assert alice.seen.count("channel:dev:系统消息:User < bob > joined the room\n") == 1


def test_the_lobby_is_joined_already_and_cannot_be_left(connect):
    alice = connect()
    alice.login("alice")
    join(alice, "channel1", "alice")
    alice.send("channel:channel1:part:")
    alice.expect("individual:alice:part0:The lobby channel1 cannot be left\n")
    alice.send("channel:nowhere:part:")
    alice.expect("individual:alice:part0:You are not in the room < nowhere >\n")


def test_part_is_confirmed_and_the_remaining_members_are_told(connect):
    alice, bob = connect(), connect()
    alice.login("alice")
    bob.login("bob")
    join(alice, "dev", "alice")
    join(bob, "dev", "bob")
    bob.send("channel:dev:part:")
    bob.expect("individual:bob:part1:dev\n")
    alice.expect("channel:dev:系统消息:User < bob > left the room\n")
    bob.send("channel:dev::still here?")
    assert system_reply(bob, "bob").startswith("You are not in the room < dev >")


def test_who_lists_a_rooms_members_and_rooms_lists_the_rooms_with_their_counts(connect):
    alice, bob, carol = connect(), connect(), connect()
    for client, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        client.login(name)
    join(alice, "dev", "alice")
    join(bob, "dev", "bob")
    join(bob, "ops", "bob")
    carol.send("channel:dev:who:")
    assert system_reply(carol, "carol") == "In dev (2): alice, bob"
    carol.send("channel:channel1:who:")
    assert system_reply(carol, "carol") == "Online (3): alice, bob, carol"
    carol.send("individual:carol:rooms:")
    assert system_reply(carol, "carol") == "Rooms (3): channel1 (3), dev (2), ops (1)"
    carol.send("channel:dev:onlineList:")
    assert carol.expect(lambda f: f.startswith("channel:dev:carol:")) == "channel:dev:carol:Users in dev: 2\n"
    carol.send("channel:channel1:onlineList:")
    assert carol.expect(lambda f: f.startswith("channel:channel1:carol:")) == "channel:channel1:carol:Users online: 3\n"
    carol.send("channel:nowhere:who:")
    assert system_reply(carol, "carol") == "There is no room < nowhere >"


def test_the_rooms_list_is_cut_to_fit_one_frame(make_server):
    server = make_server()
    server.rdb.hset(server.keys.rooms, mapping={f"room{i:04}": f"room{i:04}-" + "x" * 20 for i in range(400)})
    client = RawClient(server.port)
    try:
        client.login("alice")
        client.send("individual:alice:rooms:")
        listing = system_reply(client, "alice")
        assert listing.startswith("Rooms (401): channel1 (1), room0000-") and listing.endswith(", …")
    finally:
        client.close()


# --- names and limits ------------------------------------------------------------------


@pytest.mark.parametrize(
    "room, reason",
    [
        ("x" * 33, "The name must be at most 32 characters"),
        ("de\x1bv", "The name must not contain control characters"),
        (" dev", "The name must not start or end with spaces"),
        ("system", "That name is reserved"),
        ("guest-3", "That name is reserved"),
    ],
)
def test_bad_room_names_are_refused_with_the_reason(connect, room, reason):
    alice = connect()
    alice.login("alice")
    alice.send(f"channel:{room}:join:")
    alice.expect(f"individual:alice:join0:{reason}\n")


def test_a_colon_cannot_be_in_a_room_name_since_it_would_end_the_target(connect):
    alice = connect()
    alice.login("alice")
    alice.send("channel:a:b:join:")  # target "a", mark "b": not a join at all
    assert system_reply(alice, "alice") == "Bad message format"
    alice.send("channel:a\uff1ab:join:")  # a fullwidth colon folds to ':'
    alice.expect("individual:alice:join0:The name must not contain ':'\n")


def test_spellings_that_fold_the_same_are_one_room_shown_under_its_first_name(connect):
    alice, bob, carol = connect(), connect(), connect()
    for client, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        client.login(name)
    join(alice, "Dev", "alice")
    join(bob, "dev", "bob", shown="Dev")
    join(carol, "ＤＥＶ", "carol", shown="Dev")
    carol.send("channel:dEv::one room")
    alice.expect("channel:Dev:carol:one room\n")
    bob.expect("channel:Dev:carol:one room\n")


def test_the_rooms_per_user_limit_is_refused_with_its_reason(make_server):
    server = make_server(max_rooms_per_user=2)
    alice = RawClient(server.port)
    try:
        alice.login("alice")
        join(alice, "a", "alice")
        join(alice, "b", "alice")
        alice.send("channel:c:join:")
        alice.expect("individual:alice:join0:You are in 2 rooms already: part one first\n")
        alice.send("channel:a:part:")
        alice.expect("individual:alice:part1:a\n")
        join(alice, "c", "alice")
    finally:
        alice.close()


def test_the_total_rooms_limit_is_refused_with_its_reason_and_existing_rooms_stay_open(make_server):
    server = make_server(max_rooms=2)
    alice, bob = RawClient(server.port), RawClient(server.port)
    try:
        alice.login("alice")
        bob.login("bob")
        join(alice, "a", "alice")
        join(alice, "b", "alice")
        bob.send("channel:c:join:")
        bob.expect("individual:bob:join0:There are 2 rooms already: join one of them\n")
        join(bob, "a", "bob")
    finally:
        alice.close()
        bob.close()


# --- ordering ------------------------------------------------------------------------------


def test_nothing_of_a_room_arrives_before_join1_or_after_part1(make_server):
    server = make_server()
    talker, bob = RawClient(server.port), RawClient(server.port)
    stop = threading.Event()
    try:
        talker.login("talker")
        bob.login("bob")
        join(talker, "dev", "talker")

        def chatter():
            i = 0
            while not stop.is_set():
                talker.send(f"channel:dev::m{i}")
                i += 1
                time.sleep(0.002)  # a steady stream is what is under test

        thread = threading.Thread(target=chatter, daemon=True)
        thread.start()
        for _ in range(10):
            bob.send("channel:dev:join:")
            bob.expect("individual:bob:join1:dev\n")
            bob.expect(lambda f: f.startswith("channel:dev:talker:"))  # it is live
            bob.send("channel:dev:part:")
            bob.expect("individual:bob:part1:dev\n")
        stop.set()
        thread.join()
        bob.send("individual:bob:who:")
        bob.expect(lambda f: f.startswith("individual:bob:系统消息:Online"))
        inside = False
        for frame in bob.seen:
            if frame == "individual:bob:join1:dev\n":
                inside = True
            elif frame == "individual:bob:part1:dev\n":
                inside = False
            elif frame.startswith("channel:dev:talker:"):
                assert inside, "a message of the room arrived outside a join1 ... part1"
    finally:
        stop.set()
        talker.close()
        bob.close()


# --- leaving, emptying, cleanup ------------------------------------------------------------


def test_a_user_who_resets_its_connection_is_gone_from_every_room(make_server):
    server = make_server()
    alice, bob = RawClient(server.port), RawClient(server.port)
    try:
        alice.login("alice")
        bob.login("bob")
        for room in ("dev", "ops"):
            join(alice, room, "alice")
            join(bob, room, "bob")
        bob.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        bob.close()  # RST
        notices = {f"channel:{room}:系统消息:User < bob > left the room\n" for room in ("dev", "ops")}
        while not notices <= set(alice.seen):  # one in each room, in any order
            alice.recv()
        alice.send("channel:dev:who:")
        assert system_reply(alice, "alice") == "In dev (1): alice"
        alice.send("individual:alice:rooms:")
        assert system_reply(alice, "alice") == "Rooms (3): channel1 (1), dev (1), ops (1)"
        assert server.rdb.exists(server.keys.user_rooms("2"), server.keys.user_rooms("1")) == 1  # alice's only
    finally:
        alice.close()


def test_a_room_that_empties_leaves_the_list_and_its_history_awaits_the_next_joiner(make_server):
    server = make_server(room_history_ttl=scaled(30))
    alice, bob = RawClient(server.port), RawClient(server.port)
    try:
        alice.login("alice")
        bob.login("bob")
        join(alice, "dev", "alice")
        alice.send("channel:dev::remember me")
        alice.expect("channel:dev:alice:remember me\n")
        alice.send("channel:dev:part:")
        alice.expect("individual:alice:part1:dev\n")
        bob.send("individual:bob:rooms:")
        assert system_reply(bob, "bob") == "Rooms (1): channel1 (2)"
        assert 0 < server.rdb.ttl(server.keys.room_history("dev")) <= scaled(30)
        join(bob, "DEV", "bob", shown="DEV")  # a new room: shown as this joiner spelled it
        history = bob.expect(lambda f: f.startswith("roomHistory:"))
        assert history.startswith("roomHistory:DEV:") and history.endswith(":alice:remember me\n")
        assert server.rdb.ttl(server.keys.room_history("dev")) == -1  # kept for good while the room lives
    finally:
        alice.close()
        bob.close()


def test_history_zero_ttl_deletes_an_empty_rooms_history(make_server):
    server = make_server(room_history_ttl=0)
    alice = RawClient(server.port)
    try:
        alice.login("alice")
        join(alice, "dev", "alice")
        alice.send("channel:dev::gone with the room")
        alice.expect("channel:dev:alice:gone with the room\n")
        alice.send("channel:dev:part:")
        alice.expect("individual:alice:part1:dev\n")
        assert not server.rdb.exists(server.keys.room_history("dev"))
    finally:
        alice.close()


def test_rooms_cost_no_thread_or_redis_connection_and_leaving_releases_everything(
    make_server, redis_kind, redis_client
):
    server = make_server()
    threads_before = set(threading.enumerate())
    redis_before = redis_connections_held(redis_kind, redis_client)
    alice = RawClient(server.port)
    alice.login("alice")
    with_three = len(threading.enumerate())
    held = redis_connections_held(redis_kind, redis_client)
    for i in range(5):
        join(alice, f"room{i}", "alice")
    assert len(threading.enumerate()) == with_three
    assert redis_connections_held(redis_kind, redis_client)[1] == held[1]  # no pub/sub connection per room
    alice.send("channel:channel1:quit:")
    alice.expect_closed()
    assert server.wait_for_connections(0, 10)
    assert threads_back_to(threads_before) == []
    assert redis_connections_held(redis_kind, redis_client) == redis_before
    assert not server.rdb.hlen(server.keys.rooms)


# --- across processes (real Redis, server processes) ----------------------------------------


class Crowd:
    """Many raw clients read by one selector thread, so that none of their sockets ever fills."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.frames: dict[int, list[str]] = {}
        self.socks: list[socket.socket] = []
        self.lock = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def connect(self, port: int) -> int:
        sock = socket.create_connection(("127.0.0.1", port))
        index = len(self.socks)
        self.socks.append(sock)
        self.frames[index] = []
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, (index, FrameDecoder(1 << 20)))
        return index

    def send(self, index: int, payload: str) -> None:
        self.socks[index].setblocking(True)
        self.socks[index].sendall(encode(payload))
        self.socks[index].setblocking(False)

    def _read(self) -> None:
        while not self.stopping:
            for key, _ in self.selector.select(timeout=0.1):
                index, decoder = key.data
                try:
                    data = key.fileobj.recv(65536)
                except (BlockingIOError, OSError):
                    continue
                if not data:
                    self.selector.unregister(key.fileobj)
                    continue
                decoder.feed(data)
                with self.lock:
                    while (frame := decoder.next_frame()) is not None:
                        self.frames[index].append(frame)
                    self.lock.notify_all()

    def wait(self, done, timeout: float) -> None:
        """Wait until ``done()`` (called under the lock) is true."""
        with self.lock:
            assert self.lock.wait_for(done, timeout), "the crowd never got what it waited for"

    def close(self) -> None:
        self.stopping = True
        self.thread.join()
        for sock in self.socks:
            sock.close()


# A thousand users cost most of a minute, in the join notices every login sends to all of
# channel1; make test runs the same rooms at a quarter of the crowd, make test-scale the whole.
@pytest.mark.timeout(240)
@pytest.mark.parametrize("rooms", [25, pytest.param(100, marks=pytest.mark.scale)])
def test_many_rooms_of_ten_on_two_processes_each_member_gets_its_rooms_messages_once_in_order(cluster, rooms):
    servers = [cluster("--max-per-ip", "0"), cluster("--max-per-ip", "0")]
    per_room, sent_each = 10, 3
    crowd = Crowd()
    try:
        users = []  # (crowd index, name, room)
        for r in range(rooms):
            for m in range(per_room):
                index = crowd.connect(servers[(r * per_room + m) % 2].port)  # every room spans both
                users.append((index, f"u{r}x{m}", f"room{r}"))
        for index, name, _ in users:
            crowd.send(index, f"individual::changeNameFirst:{name}")
        crowd.wait(lambda: all(f"individual:{n}:changeNameFirst1:{n}\n" in crowd.frames[i] for i, n, _ in users), 120)
        for index, _, room in users:
            crowd.send(index, f"channel:{room}:join:")
        crowd.wait(lambda: all(f"individual:{n}:join1:{r}\n" in crowd.frames[i] for i, n, r in users), 60)
        for k in range(sent_each):
            for index, name, room in users:
                crowd.send(index, f"channel:{room}::{name} says {k}")

        def room_messages(index):
            return [f for f in crowd.frames[index] if f.startswith("channel:room") and " says " in f]

        crowd.wait(lambda: all(len(room_messages(i)) >= per_room * sent_each for i, _, _ in users), 120)
        for index, name, room in users:
            got = room_messages(index)
            assert len(got) == per_room * sent_each, (name, got)  # once each: none lost, none twice
            assert all(f.startswith(f"channel:{room}:") for f in got), (name, got)  # nothing of other rooms
            for sender in {f.split(":")[2] for f in got}:
                assert sender.startswith(f"u{room[4:]}x")
                said = [f for f in got if f.split(":")[2] == sender]
                # Correctly attributed, and in the order each sender sent them.
                assert said == [f"channel:{room}:{sender}:{sender} says {k}\n" for k in range(sent_each)]
    finally:
        crowd.close()


def test_rooms_are_shared_across_processes_and_a_killed_process_users_leave_them(cluster):
    a, b = cluster("--dead-after", "1.5"), cluster("--dead-after", "1.5")
    alice, bob, carol = a.client(), b.client(), b.client()
    for client, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        client.login(name)
    for client, name in ((alice, "alice"), (bob, "bob")):
        join(client, "dev", name)
        join(client, "ops", name)
    alice.send("channel:dev::across")
    bob.expect("channel:dev:alice:across\n")
    bob.send("channel:ops::and back")
    alice.expect("channel:ops:bob:and back\n")
    carol.send("channel:dev:who:")
    assert system_reply(carol, "carol") == "In dev (2): alice, bob"
    a.proc.kill()  # alice's process dies; b reaps it within dead-after
    notices = {f"channel:{room}:系统消息:User < alice > left the room\n" for room in ("dev", "ops")}
    while not notices <= set(bob.seen):
        bob.recv()
    for room in ("dev", "ops"):
        carol.send(f"channel:{room}:who:")
        assert system_reply(carol, "carol") == f"In {room} (1): bob"
    carol.send("individual:carol:rooms:")
    assert system_reply(carol, "carol") == "Rooms (3): channel1 (2), dev (1), ops (1)"
    assert sum(f in notices for f in bob.seen) == 2  # once each


def test_after_a_redis_restart_without_its_data_the_rooms_are_back(redis_proc, cluster):
    a = cluster("--dead-after", "0.6")
    alice, bob = a.client(), a.client()
    alice.login("alice")
    bob.login("bob")
    join(alice, "dev", "alice")
    join(bob, "dev", "bob")
    redis_proc.stop()
    redis_proc.start()
    alice.expect(lambda f: "connected to Redis again" in f)
    bob.expect(lambda f: "connected to Redis again" in f)
    alice.send("channel:dev::still a room")
    bob.expect("channel:dev:alice:still a room\n")
    bob.send("channel:dev:who:")
    assert system_reply(bob, "bob") == "In dev (2): alice, bob"

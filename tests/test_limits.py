"""Hostile and broken clients: deadlines, floods, connection limits, slow readers, resources."""

from __future__ import annotations

import errno
import os
import resource
import select
import socket
import subprocess
import sys
import threading
import time
import types

import pytest
from conftest import ROOT, RawClient, scaled, threads_back_to

from chatroom.config import Config
from chatroom.connection import CLIENT_KEEPALIVE
from framing import encode

pytestmark = pytest.mark.timeout(60)


def system_text(frame: str) -> str:
    return frame.rstrip("\n").split(":", 3)[3]


def closed_with(client: RawClient, text: str) -> bool:
    return any(text in frame for frame in client.expect_closed())


# --- deadlines ---------------------------------------------------------------


def test_a_silent_connection_is_closed_after_the_login_timeout(make_server):
    server = make_server(login_timeout=scaled(0.3))
    client = RawClient(server.port)
    assert closed_with(client, f"Nothing received within {scaled(0.3):g} s of connecting; closing")
    assert server.wait_for_connections(0, 10)


def test_a_frame_left_unfinished_is_closed_after_the_frame_timeout(make_server):
    server = make_server(frame_timeout=scaled(0.3))
    client = RawClient(server.port)
    client.login("alice")
    client.send_raw(encode("channel:channel1::hello")[:7])
    assert closed_with(client, f"A message took longer than {scaled(0.3):g} s to arrive; closing")


def test_a_frame_trickled_byte_by_byte_is_cut_at_the_frame_deadline(make_server):
    server = make_server(frame_timeout=scaled(0.5))
    client = RawClient(server.port)
    client.login("alice")
    frame = encode("channel:channel1::" + "x" * 40)
    started = time.monotonic()
    try:
        for byte in frame:
            client.send_raw(bytes([byte]))
            time.sleep(scaled(0.05))  # the trickle itself is what is under test
    except OSError:
        pass
    assert closed_with(client, f"took longer than {scaled(0.5):g} s")
    assert time.monotonic() - started < scaled(2.5)


def test_a_steady_stream_that_always_ends_mid_frame_is_not_cut(make_server):
    server = make_server(frame_timeout=scaled(0.3))
    client = RawClient(server.port)
    client.login("alice")
    stream = b"".join(encode(f"channel:channel1::m{i}") for i in range(40))
    for start in range(0, len(stream), 25):  # 25-byte pieces: nearly every read ends inside a frame
        client.send_raw(stream[start : start + 25])
        time.sleep(scaled(0.02))  # the pacing is what is under test: 0.6 s in all, twice the frame timeout
    client.expect("channel:channel1:alice:m39\n")


def test_an_idle_connection_without_a_nickname_is_dropped_after_the_idle_timeout(make_server):
    server = make_server(idle_timeout=scaled(0.3))
    client = RawClient(server.port)
    client.send("individual::menu:")  # one frame: past the login deadline, still nameless
    assert closed_with(client, f"Idle for more than {scaled(0.3):g} s; closing")


def test_a_named_user_who_only_reads_is_never_dropped_for_silence(make_server):
    server = make_server(idle_timeout=scaled(0.3))
    lurker, talker = RawClient(server.port), RawClient(server.port)
    lurker.login("lurker")
    talker.login("talker")
    time.sleep(scaled(1.0))  # silence, three idle timeouts long, is what is under test
    talker.send("channel:channel1::still there?")
    lurker.expect("channel:channel1:talker:still there?\n")
    assert not any("Idle" in f for f in lurker.seen)
    # A guest that took its name with ./cd2 (changeName) is a named user too.
    guest = RawClient(server.port)
    guest.send("individual::changeNameFirst:lurker")
    guest.expect(lambda f: "changeNameFirst0" in f)
    guest.send("individual:guest:changeName:reader")
    guest.expect("individual:reader:changeName1:reader\n")
    time.sleep(scaled(0.6))
    talker.send("channel:channel1::and you?")
    guest.expect("channel:channel1:talker:and you?\n")


def test_named_chat_sockets_have_tcp_keepalive_to_find_vanished_hosts(make_server):
    server = make_server()
    client = RawClient(server.port)
    client.login("alice")
    (conn,) = server.connections
    assert conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == CLIENT_KEEPALIVE[0]


def test_the_login_deadline_leaves_a_person_minutes_to_type_a_name():
    assert Config().login_timeout >= 180


def test_a_refused_nickname_counts_as_the_first_frame_and_the_user_chats_unnamed(make_server):
    server = make_server(login_timeout=scaled(0.3))
    alice, bob = RawClient(server.port), RawClient(server.port)
    alice.login("alice")
    bob.send("individual::changeNameFirst:alice")
    bob.expect(lambda f: "changeNameFirst0" in f)
    time.sleep(scaled(0.5))  # past the login deadline, which no longer applies
    bob.send("channel:channel1::still here")
    assert bob.expect(lambda f: f.endswith(":still here\n")).startswith("channel:channel1:guest-")


# --- floods ------------------------------------------------------------------


def test_a_burst_over_the_rate_limit_is_refused_with_a_warning(make_server):
    server = make_server(rate_limit=1, rate_burst=3)
    alice = RawClient(server.port)
    alice.send_raw(b"".join(encode(f"channel:channel1::m{i}") for i in range(4)))
    # The warning is a direct reply; the echoes come through Redis: any order.
    while not (any(f.endswith(":m2\n") for f in alice.seen) and any(f.startswith("individual:") for f in alice.seen)):
        alice.recv()
    assert [f.rsplit(":", 1)[1] for f in alice.seen if f.startswith("channel:")] == ["m0\n", "m1\n", "m2\n"]
    warnings = [system_text(f) for f in alice.seen if f.startswith("individual:")]
    assert warnings == ["You are sending too fast (at most 1 messages a second): message not sent"]


def test_a_persistent_flooder_is_disconnected_and_others_are_unharmed(make_server):
    server = make_server(rate_limit=2, rate_burst=5)
    flooder, bob = RawClient(server.port), RawClient(server.port)
    bob.login("bob")
    flooder.login("flooder")
    try:
        flooder.send_raw(b"".join(encode(f"channel:channel1::spam{i}") for i in range(200)))
    except OSError:
        pass
    assert closed_with(flooder, "Still flooding: disconnecting")
    bob.expect("channel:channel1:系统消息:User left: flooder\n")
    bob.send("channel:channel1::fine")
    bob.expect("channel:channel1:bob:fine\n")


def test_rate_limit_zero_turns_flood_control_off(make_server):
    server = make_server(rate_limit=0)
    alice = RawClient(server.port)
    alice.send_raw(b"".join(encode(f"channel:channel1::m{i}") for i in range(300)))
    alice.expect(lambda f: f.endswith(":m299\n"))
    assert not any(f.startswith("individual:") for f in alice.seen)


# --- connection limits -------------------------------------------------------


def test_connections_over_the_per_address_limit_are_refused_with_a_reason(make_server):
    server = make_server(max_per_ip=2)
    first, second = RawClient(server.port), RawClient(server.port)
    first.login("a")
    second.login("b")
    third = RawClient(server.port)
    assert third.expect_closed() == ["individual::系统消息:Too many connections from your address\n"]
    first.close()
    second.expect("channel:channel1:系统消息:User left: a\n")
    assert server.wait_for_connections(1, 10)
    RawClient(server.port).login("c")


def test_connections_over_the_server_limit_are_refused_with_a_reason(make_server):
    server = make_server(max_clients=1)
    admitted = RawClient(server.port)  # kept: a collected client would free its place
    admitted.login("a")
    refused = RawClient(server.port)
    assert refused.expect_closed() == ["individual::系统消息:The server is full, please try again later\n"]
    admitted.close()


# --- slow readers and the message bus ------------------------------------------


def test_a_client_that_stops_reading_is_dropped_without_delaying_others(make_server):
    server = make_server(send_timeout=scaled(0.5))
    sleepy = socket.socket()
    sleepy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sleepy.connect(("127.0.0.1", server.port))
    sleepy.sendall(encode("individual::changeNameFirst:sleepy"))
    alice = RawClient(server.port)
    alice.login("alice")
    text = "y" * 4000  # 400 of these fill any loopback socket buffers (at most 4 MiB send + the receiver's)
    longest_wait = 0.0
    for i in range(3000):
        started = time.monotonic()
        alice.send(f"channel:channel1::{i}{text}")
        alice.expect(lambda f, i=i: f.startswith(f"channel:channel1:alice:{i}y"))
        longest_wait = max(longest_wait, time.monotonic() - started)
        if any("User left: sleepy" in f for f in alice.seen):
            break
    else:
        pytest.fail("the client that never reads was never dropped")
    assert longest_wait < scaled(0.45), "alice waited on sleepy's full socket"
    sleepy.close()
    assert server.wait_for_connections(1, 10)


@pytest.mark.parametrize("redis_kind", ["real"], indirect=True)  # fakeredis has no CLIENT KILL
def test_redis_dropping_a_subscriber_disconnects_that_user_cleanly(make_server, redis_client):
    server = make_server()
    alice = RawClient(server.port)
    alice.login("alice")
    threads = set(threading.enumerate())
    redis_client.client_kill_filter(_type="pubsub")
    assert closed_with(alice, "you may have missed messages, please reconnect")
    assert server.wait_for_connections(0, 10)
    assert threads_back_to(threads) == []
    assert len(threads - set(threading.enumerate())) == 3
    bob = RawClient(server.port)
    bob.login("bob")
    bob.send("channel:channel1:onlineList:")
    bob.expect("channel:channel1:bob:Users online: 1\n")


# --- resources ---------------------------------------------------------------


# The server, with both open-file limits at 64 so that it cannot raise them.
LOW_FILE_LIMIT_SERVER = (
    "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)); "
    "sys.argv = ['server.py', '--port', '0', '--max-per-ip', '0', '--login-timeout', '0']; "
    f"sys.path.insert(0, {str(ROOT)!r}); runpy.run_path({str(ROOT / 'server.py')!r}, run_name='__main__')"
)


@pytest.mark.timeout(30)
def test_a_spare_descriptor_taken_by_another_thread_pauses_the_accept_loop_not_ends_it(monkeypatch):
    """make bench-10k at the 20,000-file limit: the freed spare was taken at once, and reopening it raised."""
    import server

    listener = socket.create_server(("127.0.0.1", 0))
    waiting = socket.create_connection(listener.getsockname())
    accept_loop = types.SimpleNamespace(
        _spare_fd=os.open(os.devnull, os.O_RDONLY),
        _shutting_down=threading.Event(),
        refuse=lambda sock, reason: (sock.sendall(reason.encode()), sock.close()),
    )

    def out_of_files(*args):
        raise OSError(errno.EMFILE, "Too many open files")

    try:
        with monkeypatch.context() as patched:
            patched.setattr(server.os, "open", out_of_files)
            server.ChatServer._refuse_out_of_files(accept_loop, listener)  # the waiting one refused, no spare
            assert accept_loop._spare_fd is None
            started = time.monotonic()
            server.ChatServer._refuse_out_of_files(accept_loop, listener)  # nothing to refuse with: a pause
            assert time.monotonic() - started >= server.OUT_OF_FILES_PAUSE
        assert waiting.recv(100) == b"server_busy"
        server.ChatServer._refuse_out_of_files(accept_loop, listener)  # descriptors free again: the spare is back
        assert accept_loop._spare_fd is not None
    finally:
        if accept_loop._spare_fd is not None:
            os.close(accept_loop._spare_fd)
        waiting.close()
        listener.close()


@pytest.mark.timeout(90)
def test_out_of_file_descriptors_new_connections_are_refused_not_crashed():
    proc = subprocess.Popen(
        [sys.executable, "-c", LOW_FILE_LIMIT_SERVER],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    clients = []
    try:
        port = int(proc.stdout.readline().rsplit(":", 1)[1])
        clients = [RawClient(port) for _ in range(80)]
        # Served connections stay silent until spoken to; refused ones get their reason at once.
        answered, _, _ = select.select([c.sock for c in clients], [], [], 2.0)
        refusals = [c.recv() for c in clients if c.sock in answered]
        assert refusals and set(refusals) == {
            "individual::系统消息:The server is out of resources, please try again later\n"
        }
        for client in clients:
            client.close()
        deadline = time.monotonic() + 30
        while True:  # the server frees descriptors as it processes the closes: poll it
            welcome = RawClient(port)
            try:
                welcome.login("back")
                break
            except (AssertionError, OSError):
                welcome.close()
            assert time.monotonic() < deadline, "the server never recovered"
            time.sleep(0.1)
        assert proc.poll() is None
    finally:
        for client in clients:
            client.close()
        proc.terminate()
        proc.wait(10)


def test_the_server_raises_its_open_file_limit_to_the_hard_limit():
    from chatroom.process import raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        raise_open_file_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == (hard if hard != resource.RLIM_INFINITY else 1 << 20)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_invalid_utf8_frames_count_against_the_rate_limit(make_server):
    server = make_server(rate_limit=1, rate_burst=3)
    flooder = RawClient(server.port)
    try:
        flooder.send_raw(b"\x01\x00\x00\x00\xff" * 50)
    except OSError:
        pass
    frames = flooder.expect_closed()
    assert frames.count("individual:guest-1:系统消息:Message is not valid UTF-8\n") <= 3
    assert any("Still flooding" in f for f in frames)


def test_out_of_threads_for_a_listener_the_client_is_told_and_nothing_leaks(make_server, monkeypatch):
    server = make_server()
    start = threading.Thread.start

    def failing_start(thread):
        if getattr(thread, "_target", None) == server.personal_message:
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", failing_start)
    client = RawClient(server.port)
    assert closed_with(client, "The server is out of resources, please try again later")
    assert server.wait_for_released(1, 10)
    assert server.connections == set() and server._per_ip == {}


def test_a_surprise_while_admitting_one_connection_leaves_the_accept_loop_serving(make_server, monkeypatch, caplog):
    server = make_server()
    original = server.admit
    calls = []

    def admit_once_badly(sock, address, tls=False):
        calls.append(address)
        if len(calls) == 1:
            raise ValueError("a surprise")
        return original(sock, address, tls=tls)

    monkeypatch.setattr(server, "admit", admit_once_badly)
    first = RawClient(server.port)
    assert first.expect_closed() == []
    second = RawClient(server.port)
    second.login("alice")
    assert "could not admit" in caplog.text

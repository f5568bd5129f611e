"""Random frames, payloads and byte streams against a live server.

After every example a well-behaved client still chats and the server is back
to its baseline of threads.  ``make fuzz`` runs the same with many more
examples (FUZZ_EXAMPLES).
"""

from __future__ import annotations

import os
import socket
import struct
import threading

import pytest
from conftest import RawClient, threads_back_to
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framing import encode

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
pytestmark = pytest.mark.timeout(max(120, EXAMPLES))

fuzz_settings = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

words = st.sampled_from(
    ["", "individual", "channel", "channel1", "changeNameFirst", "changeName", "menu", "who", "onlineList",
     "activity", "quit", "系统消息", "private", "history", "guest-1", "alice"]
)
fields = st.one_of(words, st.text(max_size=40))
payloads = st.builds(lambda parts: ":".join(parts), st.lists(fields, min_size=0, max_size=6))
frames = st.one_of(
    payloads.map(encode),
    st.binary(max_size=64).map(lambda b: struct.pack("<i", len(b)) + b),
    st.integers(min_value=-(2**31), max_value=2**31 - 1).map(lambda n: struct.pack("<i", n)),
)
streams = st.one_of(st.binary(max_size=300), st.lists(frames, max_size=12).map(b"".join))


class Room:
    """A server with one well-behaved witness, and the server's baseline threads."""

    def __init__(self, server):
        self.server = server
        self.witness = RawClient(server.port)
        self.witness.login("witness")
        self.threads = set(threading.enumerate())
        self.rounds = 0

    def throw(self, data: bytes, reset: bool) -> None:
        client = RawClient(self.server.port)
        try:
            client.send_raw(data)
        except OSError:
            pass
        if reset:
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        self.rounds += 1
        assert self.server.wait_for_released(self.rounds, 10), "the hostile connection was never released"
        self.witness.send(f"channel:channel1::round {self.rounds}")
        self.witness.expect(f"channel:channel1:witness:round {self.rounds}\n")
        assert threads_back_to(self.threads) == []


@pytest.fixture
def room(make_server):
    return Room(make_server(rate_limit=0, login_timeout=2, frame_timeout=2))


@fuzz_settings
@given(payload_list=st.lists(payloads, max_size=8), reset=st.booleans())
def test_random_payloads_harm_nobody(room, payload_list, reset):
    room.throw(b"".join(encode(p) for p in payload_list), reset)


@fuzz_settings
@given(data=streams, reset=st.booleans())
def test_random_frames_and_bytes_harm_nobody(room, data, reset):
    room.throw(data, reset)

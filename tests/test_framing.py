"""The frame codec: pure decoding fed bytes, and the blocking reader over a socket."""

from __future__ import annotations

import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framing import (
    MAX_FRAME,
    FrameDecoder,
    FrameError,
    FrameReader,
    FrameTimeout,
    FrameTooLarge,
    InvalidUtf8,
    NegativeLength,
    TruncatedFrame,
    encode,
)

pytestmark = pytest.mark.timeout(60)


def test_encode_is_little_endian_byte_length_then_utf8():
    assert encode("individual::changeNameFirst:alice")[:5] == b"\x21\x00\x00\x00i"
    assert encode("系统") == b"\x06\x00\x00\x00" + "系统".encode()
    assert encode("") == b"\x00\x00\x00\x00"


def test_the_original_join_frame_byte_for_byte():
    frame = encode("channel:channel1:系统消息:用户 < alice > 上线了!\n")
    assert frame.hex() == (
        "3a000000" "6368616e6e656c3a6368616e6e656c313a" "e7b3bbe7bb9fe6b688e681af3a"
        "e794a8e688b7203c20616c696365203e20e4b88ae7babfe4ba86210a"
    )


def decode_all(chunks, max_frame=MAX_FRAME):
    decoder = FrameDecoder(max_frame)
    frames = []
    for chunk in chunks:
        decoder.feed(chunk)
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    decoder.end_of_stream()
    return frames


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


texts = st.text(max_size=300).filter(lambda t: len(t.encode()) <= MAX_FRAME)


@given(st.lists(texts, max_size=20), st.lists(st.integers(min_value=0), max_size=30))
def test_any_texts_round_trip_under_any_split_into_segments(messages, cuts):
    stream = b"".join(encode(m) for m in messages)
    assert decode_all(split_at(stream, cuts)) == messages


@given(st.lists(texts, min_size=1, max_size=5))
def test_byte_at_a_time_decodes_the_same(messages):
    stream = b"".join(encode(m) for m in messages)
    assert decode_all([stream[i : i + 1] for i in range(len(stream))]) == messages


def test_a_frame_of_exactly_the_limit_decodes_and_one_more_byte_is_refused():
    assert decode_all([encode("x" * MAX_FRAME)]) == ["x" * MAX_FRAME]
    with pytest.raises(FrameTooLarge) as info:
        decode_all([encode("x" * (MAX_FRAME + 1))])
    assert info.value.length == MAX_FRAME + 1 and info.value.limit == MAX_FRAME


def test_the_limit_is_configurable():
    assert decode_all([encode("x" * 10)], max_frame=10) == ["x" * 10]
    with pytest.raises(FrameTooLarge):
        decode_all([encode("x" * 11)], max_frame=10)


def test_an_oversized_length_is_refused_from_the_header_alone():
    decoder = FrameDecoder()
    decoder.feed(struct.pack("<i", 2**31 - 1))
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_a_negative_length_is_refused():
    decoder = FrameDecoder()
    decoder.feed(b"\xff\xff\xff\xff")
    with pytest.raises(NegativeLength):
        decoder.next_frame()


@pytest.mark.parametrize("tail", [b"\x05", b"\x05\x00\x00\x00ab"])
def test_end_of_stream_inside_a_frame_is_truncation(tail):
    with pytest.raises(TruncatedFrame):
        decode_all([encode("ok"), tail])


def test_invalid_utf8_is_recoverable_and_the_stream_stays_in_step():
    decoder = FrameDecoder()
    decoder.feed(struct.pack("<i", 2) + b"\xff\xfe" + encode("next"))
    with pytest.raises(InvalidUtf8):
        decoder.next_frame()
    assert decoder.next_frame() == "next"  # the bad frame was consumed whole: callers may go on


def test_every_frame_error_is_a_frame_error():
    for cls in (TruncatedFrame, NegativeLength, FrameTooLarge, InvalidUtf8):
        assert issubclass(cls, FrameError)


def test_need_more_data_returns_none_and_keeps_partial_state():
    decoder = FrameDecoder()
    frame = encode("hello")
    decoder.feed(frame[:6])
    assert decoder.next_frame() is None
    assert decoder.in_frame
    decoder.feed(frame[6:])
    assert decoder.next_frame() == "hello"
    assert not decoder.in_frame


@settings(max_examples=30, deadline=None)
@given(st.lists(texts, max_size=10), st.lists(st.integers(min_value=0), max_size=10))
def test_the_socket_reader_loops_over_short_reads(messages, cuts):
    stream = b"".join(encode(m) for m in messages)
    left, right = socket.socketpair()
    with left, right:
        right.settimeout(10)

        def write():
            for piece in split_at(stream, cuts):
                left.sendall(piece)
            left.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=write)
        writer.start()
        reader = FrameReader(right)
        received = []
        while (frame := reader.read()) is not None:
            received.append(frame)
        writer.join()
    assert received == messages


def test_the_socket_reader_reports_a_truncated_frame():
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"\x09\x00\x00\x00abc")
        left.shutdown(socket.SHUT_WR)
        with pytest.raises(TruncatedFrame):
            FrameReader(right).read()


# --- deadlines (FrameReader over a real socket pair) ---------------------------


@pytest.mark.parametrize(
    "sent, options, kind",
    [
        (b"", {"first_frame_timeout": 0.2}, "first"),
        (encode("ok") + b"\x05\x00", {"frame_timeout": 0.2}, "frame"),
        (encode("ok"), {"idle_timeout": 0.2}, "idle"),
    ],
)
def test_each_deadline_raises_a_frame_timeout_that_names_it(sent, options, kind):
    left, right = socket.socketpair()
    with left, right:
        left.sendall(sent)
        reader = FrameReader(right, **options)
        if sent.startswith(encode("ok")):
            assert reader.read() == "ok"
        with pytest.raises(FrameTimeout) as info:
            reader.read()
    assert info.value.kind == kind and info.value.seconds == 0.2


def test_the_first_frame_deadline_is_not_reset_by_partial_data():
    clock = iter([0.0, 0.0, 5.0, 31.0]).__next__
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"\x09\x00")
        reader = FrameReader(right, first_frame_timeout=30, frame_timeout=100, clock=clock)
        with pytest.raises(FrameTimeout):
            reader.read()


def test_has_frame_says_whether_a_read_would_need_more_bytes():
    decoder = FrameDecoder(max_frame=10)
    frame = encode("hello")
    decoder.feed(frame[:6])
    assert not decoder.has_frame()
    decoder.feed(frame[6:] + b"\x01")
    assert decoder.has_frame()
    assert decoder.next_frame() == "hello"
    assert not decoder.has_frame()
    decoder.feed(b"\x00\x00\xff")  # a negative length: an error is ready to be raised
    assert decoder.has_frame()

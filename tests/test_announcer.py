"""Join notices in batches (chatroom/announcer.py), on fakeredis and real Redis."""

from __future__ import annotations

import threading
import time

import pytest
import redis
from conftest import free_port, scaled

from chatroom import announcer
from chatroom.announcer import Announcer

pytestmark = pytest.mark.timeout(30)


def subscribed(client: redis.Redis, channel: str):
    sub = client.pubsub()
    sub.subscribe(channel)
    assert sub.get_message(timeout=5)["type"] == "subscribe"
    return sub


def next_message(sub) -> tuple[bytes, float]:
    """The next message's payload, and when it came."""
    message = sub.get_message(timeout=10)
    assert message is not None and message["type"] == "message"
    return message["data"], time.monotonic()


def test_a_join_after_a_quiet_spell_goes_out_at_once_and_those_close_behind_it_together(redis_client, monkeypatch):
    window = scaled(1.0)
    monkeypatch.setattr(announcer, "BATCH_WINDOW", window)
    sub = subscribed(redis_client, "room")
    joins = Announcer(redis_client, lambda: 1, 5000, lambda exc, context: pytest.fail(f"{context}: {exc}"))
    started = time.monotonic()
    assert joins.announce("room", b"first").is_set()  # nothing went out lately: published before it returns
    data, came = next_message(sub)
    assert data == b"first" and came - started < window / 2
    # Two more within the window: they wait for its end, and go out in one batch.
    events = []
    threads = [threading.Thread(target=lambda p=p: events.append(joins.announce("room", p))) for p in (b"2", b"3")]
    for thread in threads:
        thread.start()
    (one, first_came), (other, second_came) = next_message(sub), next_message(sub)
    assert {one, other} == {b"2", b"3"}
    assert first_came - started >= window * 0.9
    assert second_came - first_came < window / 2
    for thread in threads:
        thread.join()
    assert all(event.wait(5) for event in events)
    sub.close()


def test_a_redis_failure_is_reported_and_nobody_is_left_waiting():
    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=1)
    reports = []
    joins = Announcer(unreachable, lambda: 1, 5000, lambda exc, context: reports.append((type(exc), context)))
    assert joins.announce("room", b"lost").is_set()
    assert reports == [(redis.ConnectionError, "announcing 1 join(s)")]


@pytest.mark.parametrize(("users", "budget", "window"), [(1, 5000, 0.1), (1000, 5000, 0.2), (10000, 5000, 2.0), (10000, 0, 0.1)])
def test_batches_are_further_apart_in_bigger_rooms_within_the_wakeup_budget(users, budget, window):
    assert Announcer(None, lambda: users, budget, None).window() == pytest.approx(window)

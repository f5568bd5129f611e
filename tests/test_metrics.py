"""Prometheus metrics and the health endpoints, as an operator scrapes and probes them."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import pytest
from conftest import REDIS_SERVER, RawClient, RedisProcess, free_port, threads_back_to
from prometheus_client.parser import text_string_to_metric_families

from chatroom import metrics
from chatroom.config import Config
from server import ChatServer

pytestmark = pytest.mark.timeout(60)


def get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:<port><path>."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    status, body = get(port, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples, name: str, server_id: str, **labels) -> float:
    return samples[(name, tuple(sorted({"server_id": server_id, **labels}.items())))]


def test_frame_kinds_are_told_from_the_payload():
    kinds = {
        "channel:channel1::hi": "chat",
        "individual:bob::psst": "private",
        "individual::changeNameFirst:alice": "nickname",
        "individual:alice:changeName:bob": "nickname",
        "individual:alice:menu:": "menu",
        "individual:alice:who:": "who",
        "channel:channel1:onlineList:": "online",
        "channel:channel1:activity:": "activity",
        "channel:channel1:quit:": "quit",
        "channel:dev:join:": "join",
        "channel:dev:part:": "part",
        "channel:dev:who:": "who",
        "channel:dev::hi": "chat",
        "individual:alice:rooms:": "rooms",
        "individual::login:alice:secret12": "account",
        "individual:op:kick:bob": "moderation",
        "channel:channel1:bogus:x": "bad",
        "nonsense": "bad",
        "elsewhere:x:y:z": "bad",
    }
    assert {msg: metrics.FRAME_KINDS[metrics.frame_kind(msg)] for msg in kinds} == kinds


def test_metrics_are_off_unless_a_port_is_given():
    assert Config().metrics_port == 0 and Config().metrics_host == "127.0.0.1"


def test_the_metrics_count_what_users_did_each_series_labelled_with_the_server_id(make_server):
    port = free_port()
    server = make_server(metrics_port=port, server_id="chat-a")
    alice, bob = RawClient(server.port), RawClient(server.port)
    try:
        alice.login("alice")
        bob.login("bob")
        for room in ("dev", "ops", "qa"):  # alice's rooms outlive bob's leaving
            alice.send(f"channel:{room}:join:")
            alice.expect(f"individual:alice:join1:{room}\n")
        bob.send("channel:dev:join:")
        bob.expect("individual:bob:join1:dev\n")
        alice.send("channel:channel1::hello")
        bob.expect("channel:channel1:alice:hello\n")
        alice.send("individual:bob::psst")
        alice.expect("individual:bob:privateSent:psst\n")
        bob.send("channel:channel1:quit:")
        bob.expect_closed()
        assert server.wait_for_released(1, 10)
        samples = scrape(port)
    finally:
        alice.close()
        bob.close()
    assert {dict(labels).get("server_id") for _, labels in samples} == {"chat-a"}
    sid = "chat-a"
    assert value(samples, "chatroom_connections", sid) == 1
    assert value(samples, "chatroom_named_users", sid) == 1
    assert value(samples, "chatroom_rooms", sid) == 3
    assert value(samples, "chatroom_redis_up", sid) == 1
    assert value(samples, "chatroom_threads", sid) >= 3
    assert value(samples, "chatroom_frames_received_total", sid, kind="chat") == 1
    assert value(samples, "chatroom_frames_received_total", sid, kind="private") == 1
    assert value(samples, "chatroom_frames_received_total", sid, kind="nickname") == 2
    assert value(samples, "chatroom_frames_received_total", sid, kind="quit") == 1
    assert value(samples, "chatroom_frames_received_total", sid, kind="join") == 4
    assert value(samples, "chatroom_logins_total", sid, result="ok") == 2
    assert value(samples, "chatroom_disconnects_total", sid, reason="quit") == 1
    assert value(samples, "chatroom_disconnects_total", sid, reason="shutdown") == 0
    # alice got: her login reply, two joins, her echo, the private echo, bob's leave; bob: more.
    assert value(samples, "chatroom_payloads_sent_total", sid) >= 8
    assert value(samples, "chatroom_bytes_sent_total", sid) > value(samples, "chatroom_payloads_sent_total", sid) * 4
    assert value(samples, "chatroom_bytes_received_total", sid) > 0
    assert value(samples, "chatroom_login_seconds_count", sid) == 2
    assert value(samples, "chatroom_message_redis_seconds_count", sid) >= 2
    woken = value(samples, "chatroom_listener_wakeup_payloads_count", sid, listener="broadcast")
    assert woken >= 1
    assert value(samples, "chatroom_listener_wakeup_payloads_sum", sid, listener="broadcast") >= woken
    assert value(samples, "chatroom_resubscriptions_total", sid) == 0
    assert value(samples, "process_resident_memory_bytes", sid) > 0
    assert value(samples, "process_open_fds", sid) > 0


def test_refused_connections_count_as_refused_logins_for_a_limit(make_server):
    port = free_port()
    server = make_server(metrics_port=port, max_clients=1)
    first = RawClient(server.port)
    try:
        first.login("first")
        refused = RawClient(server.port)
        refused.expect_closed()
        refused.close()
        samples = scrape(port)
    finally:
        first.close()
    assert value(samples, "chatroom_logins_total", server.server_id, result="refused") == 1
    assert value(samples, "chatroom_disconnects_total", server.server_id, reason="limit") == 1


def test_healthz_answers_while_the_server_accepts_and_the_endpoint_ends_with_it(make_server):
    threads = set(threading.enumerate())
    port = free_port()
    server = make_server(metrics_port=port)
    assert get(port, "/healthz") == (200, "ok\n")
    assert get(port, "/readyz") == (200, "ready\n")
    assert get(port, "/nothing")[0] == 404
    server.shutdown()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert threads_back_to(threads) == []


def test_a_stopping_server_is_not_ready(make_server):
    server = make_server(metrics_port=free_port())
    assert server.monitoring.not_ready() is None
    server._shutting_down.set()  # the endpoint itself is closed by the stop's end
    try:
        assert server.monitoring.not_ready() == "shutting down"
    finally:
        server._shutting_down.clear()


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_readyz_says_503_with_the_reason_while_redis_is_away_and_200_once_it_is_back(tmp_path):
    redis_proc = RedisProcess("--dir", str(tmp_path))
    redis_proc.start()
    port = free_port()
    server = ChatServer(Config(port=0, redis_url=redis_proc.url, metrics_port=port, key_prefix="readyz:"))
    server.start()
    try:
        assert get(port, "/readyz") == (200, "ready\n")
        redis_proc.stop()
        status, reason = get(port, "/readyz")
        assert status == 503 and reason.startswith("Redis does not answer: connection")
        assert get(port, "/healthz")[0] == 200  # the accept loop runs: not a reason to restart it
        assert value(scrape(port), "chatroom_redis_up", server.server_id) in (0, 1)
        redis_proc.start()
        deadline = 0
        while get(port, "/readyz")[0] != 200:  # the probe subscribes again within a second or so
            deadline += 1
            assert deadline < 20, "never ready again"
            threading.Event().wait(0.5)
    finally:
        server.shutdown()
        redis_proc.stop()

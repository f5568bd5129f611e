"""The client's side of accounts and moderation, without any I/O: slash commands and their answers."""

from __future__ import annotations

from datetime import datetime

import pytest

import client
from chatroom import client_identity as ci

pytestmark = pytest.mark.timeout(30)

NOW = datetime(2025, 12, 1, 21, 13)


@pytest.mark.parametrize("line, payload", [
    ("/register correct horse", "individual:alice:register:correct horse"),
    ("/login bob secret words", "individual::login:bob:secret words"),
    ('/login "big bob" secret', "individual::login:big bob:secret"),
    ("/password old-one new one", "individual:alice:password:old-one:new one"),
    ('/password "old one" new', "individual:alice:password:old one:new"),
    ("/unregister correct horse", "individual:alice:unregister:correct horse"),
    ("/kick bob spamming links", "individual:alice:kick:bob spamming links"),
    ("/BAN ip=10.0.0.0/8 1d", "individual:alice:ban:ip=10.0.0.0/8 1d"),
    ("/unban bob", "individual:alice:unban:bob"),
    ("/bans", "individual:alice:bans:"),
    ("/mute bob 10m", "individual:alice:mute:bob 10m"),
    ("/unmute bob", "individual:alice:unmute:bob"),
    ("/announce restart at noon", "individual:alice:announce:restart at noon"),
])
def test_slash_commands_become_payloads(line, payload):
    assert client.parse_line(line, "alice").payload == payload


@pytest.mark.parametrize("line, usage", [
    ("/register", "Usage: /register PASSWORD"),
    ("/login bob", "Usage: /login NAME PASSWORD"),
    ("/password onlyone", "Usage: /password OLD NEW"),
    ("/kick", "Usage: /kick NAME [REASON]"),
])
def test_a_command_without_its_arguments_shows_its_usage_and_sends_nothing(line, usage):
    action = client.parse_line(line, "alice")
    assert (action.payload, action.notice) == (None, usage)


def test_other_slash_commands_are_the_clients_own():
    assert client.parse_line("/who", "alice").payload == "individual:alice:who:"
    assert "Unknown command" in client.parse_line("/nonsense", "alice").notice
    assert "/register PASSWORD" in client.parse_line("/help", "alice").notice


@pytest.mark.parametrize("payload, shown", [
    ("individual:alice:register1:alice\n",
     "[21:13] < System > < alice > is registered to you: next time, log in with /login alice PASSWORD"),
    ("individual:alice:password1:alice\n", "[21:13] < System > The password of < alice > is changed"),
    ("individual:alice:unregister1:alice\n", "[21:13] < System > < alice > is no longer registered"),
    ("individual:op:kick1:< bob > was kicked\n", "[21:13] < System > < bob > was kicked"),
    ("individual:bob:kick0:Only an operator may do that\n", "[21:13] < System > Only an operator may do that"),
])
def test_answers_are_system_lines(payload, shown):
    incoming = client.parse_frame(payload, "en", NOW)
    assert incoming.lines == (shown,) and incoming.event is None


def test_a_refused_login_is_a_refused_nickname():
    incoming = client.parse_frame("individual:guest-7:login0:Wrong password\n", "en", NOW)
    assert incoming.lines == ("[21:13] < System > Wrong password",)
    assert incoming.event == client.REFUSED


def test_the_client_never_logs_a_password(caplog):
    import logging
    import socket

    a, b = socket.socketpair()
    try:
        session = client.Session(a, "en")
        with caplog.at_level(logging.DEBUG, logger="chatroom.client"):
            session.send(ci.login_payload("alice", "hunter2-secret"))
        assert "hunter2-secret" not in caplog.text and "login:alice:***" in caplog.text
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    "line, holds",
    [("/login alice secret12", True), ("/REGISTER secret12", True), ("/password a b", True),
     ("/unregister x", True), ("/kick bob", False), ("hello /login", False), ("/loginx", False)],
)
def test_lines_with_a_password_are_known_so_the_history_never_keeps_them(line, holds):
    assert ci.holds_password(line) is holds

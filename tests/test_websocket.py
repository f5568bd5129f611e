"""The WebSocket front door, without a browser: the page's files, payloads both ways, every limit, origins, TLS.

The clients here are websockets' own (a browser's behaviour: one text message
per payload) and raw sockets where a client must misbehave.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import ssl
import struct
import threading
import time
import urllib.error
import urllib.request

import pytest
import redis
from conftest import ROOT, RawClient, redis_connections_held, scaled, threads_back_to
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.sync.client import connect

from chatroom.config import Config, parse_args
from chatroom.websocket import CONTENT_SECURITY_POLICY, client_address, origin_allowed, text_frame
from framing import encode
from server import ChatServer

STATIC = ROOT / "chatroom" / "static"

pytestmark = pytest.mark.timeout(60)

JOIN = "channel:channel1:系统消息:User < {} > joined!\n"


def wss_client_context(authority) -> ssl.SSLContext:
    """A context for WsClient over wss://, trusting ``authority``: TLS 1.2 at most.

    websockets' sync client reads the socket in one thread while another
    writes its upgrade request; under TLS 1.3 the server's session tickets
    arrive just then, and the two threads on one OpenSSL connection lost the
    request in 15 of 1,000 connections (a single-threaded TLS 1.3 client
    against the same server: 0 of 1,000). Browsers are not affected; the
    tests check TLS 1.3 on the web port with a raw socket instead.
    """
    context = ssl.create_default_context()
    authority.configure_trust(context)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def tls_version_of(port: int, authority) -> str:
    """The TLS version the server at 127.0.0.1:``port`` agrees with a client allowing every version."""
    context = ssl.create_default_context()
    authority.configure_trust(context)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return tls.version()


class WsClient:
    """A WebSocket chat client: payloads in, payloads out, as the page speaks."""

    def __init__(self, server: ChatServer, *, origin: str | None = None, headers=None, scheme="ws", ssl_context=None):
        url = f"{scheme}://127.0.0.1:{server.websocket.port}/ws"
        self.ws = connect(url, origin=origin, additional_headers=headers, ssl=ssl_context, compression=None,
                          open_timeout=10).__enter__()  # closed by close()
        self.seen: list[str] = []

    def send(self, payload: str | bytes, *, text: bool | None = None) -> None:
        self.ws.send(payload, text=text)

    def recv(self, timeout: float = 10.0) -> str | None:
        try:
            message = self.ws.recv(timeout)
        except ConnectionClosed:
            return None
        self.seen.append(message)
        return message

    def expect(self, wanted) -> str:
        match = wanted if callable(wanted) else (lambda message: message == wanted)
        while True:
            message = self.recv()
            if message is None:
                raise AssertionError(f"closed while waiting for {wanted!r}; saw {self.seen!r}")
            if match(message):
                return message

    def expect_closed(self) -> list[str]:
        messages = []
        while (message := self.recv()) is not None:
            messages.append(message)
        return messages

    def login(self, name: str) -> None:
        self.send(f"individual::changeNameFirst:{name}")
        self.expect(f"individual:{name}:changeNameFirst1:{name}\n")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def web_server(make_server):
    """A server with its web listener on a free port."""
    return make_server(ws_port=0)


@pytest.fixture
def ws_connect(web_server):
    clients = []

    def open_client(server: ChatServer | None = None, **options) -> WsClient:
        client = WsClient(server or web_server, **options)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


def get(server: ChatServer, path: str):
    return urllib.request.urlopen(f"http://127.0.0.1:{server.websocket.port}{path}", timeout=10)


def closed_with(client, text: str) -> bool:
    return any(text in message for message in client.expect_closed())


# --- the page ---------------------------------------------------------------------


def test_the_page_is_served_with_a_policy_that_forbids_inline_script(web_server):
    response = get(web_server, "/")
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    page = response.read().decode()
    assert '<script src="chat.js" defer></script>' in page
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None  # no inline script
    assert re.search(r"\son[a-z]+\s*=", page) is None  # no inline event handlers
    for path, kind in (("/chat.js", "text/javascript"), ("/chat.css", "text/css"), ("/page.json", "application/json")):
        assert get(web_server, path).headers["Content-Type"].startswith(kind)
    with pytest.raises(urllib.error.HTTPError) as missing:
        get(web_server, "/../server.py")
    assert missing.value.code == 404


def test_the_page_inserts_network_strings_as_text_only():
    script = (STATIC / "chat.js").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink


def test_page_settings_carry_the_servers_language_frame_limit_and_texts(make_server):
    server = make_server(ws_port=0, lang="zh")
    settings = json.loads(get(server, "/page.json").read())
    assert settings["lang"] == "zh" and settings["maxFrame"] == 4092
    assert settings["texts"]["joined"]["zh"] == "用户 < {name} > 上线了!"
    assert settings["texts"]["web_title"]["en"] == "Chat room"


# --- payloads both ways -------------------------------------------------------------


def test_a_browser_and_a_terminal_chat_in_one_room(web_server, ws_connect, connect):
    terminal = connect(web_server)
    browser = ws_connect()
    terminal.login("tom")
    browser.login("bea")
    terminal.expect(JOIN.format("bea"))
    browser.send("channel:channel1::hi tom")
    terminal.expect("channel:channel1:bea:hi tom\n")
    terminal.send("channel:channel1::hi bea")
    browser.expect("channel:channel1:tom:hi bea\n")
    terminal.send("individual:bea::psst")
    browser.expect("individual:tom:private:psst\n")
    browser.send("channel:dev:join:")
    browser.expect("individual:bea:join1:dev\n")
    terminal.send("channel:dev:join:")
    browser.expect("channel:dev:系统消息:User < tom > joined the room\n")
    terminal.send("channel:dev::in the room")
    browser.expect("channel:dev:tom:in the room\n")


def test_invalid_utf8_and_binary_messages_are_answered_and_the_connection_stays(ws_connect):
    browser = ws_connect()
    browser.login("bea")
    browser.send(b"channel:channel1::\xff\xfe", text=True)
    browser.expect("individual:bea:系统消息:Message is not valid UTF-8\n")
    browser.send(b"channel:channel1::hello")  # a binary message
    browser.expect("individual:bea:系统消息:Binary messages are not accepted: send each payload as a text message\n")
    browser.send("not a payload")
    browser.expect("individual:bea:系统消息:Bad message format\n")
    browser.send("channel:channel1::still here")
    browser.expect("channel:channel1:bea:still here\n")


def test_a_message_over_the_frame_limit_gets_the_tcp_answer_and_closes(ws_connect):
    browser = ws_connect()
    browser.login("bea")
    browser.send("channel:channel1::" + "x" * 5000)
    assert closed_with(browser, "Bad frame, closing: frame of 5018 bytes exceeds the limit of 4092")


def test_a_fragmented_message_is_one_payload(ws_connect):
    browser = ws_connect()
    browser.login("bea")
    browser.send(["channel:channel1", "::in ", "three pieces"])
    browser.expect("channel:channel1:bea:in three pieces\n")


def test_many_payloads_sent_at_once_arrive_each_as_one_message_in_order(ws_connect, connect, web_server):
    browser = ws_connect()
    browser.login("bea")
    terminal = connect(web_server)
    terminal.login("tom")
    terminal.send_raw(b"".join(encode(f"channel:channel1::m{i}") for i in range(300)))
    for i in range(300):
        assert browser.expect(lambda m: m.startswith("channel:channel1:tom:")) == f"channel:channel1:tom:m{i}\n"


# --- limits -------------------------------------------------------------------------------


def test_the_login_deadline_applies(make_server):
    server = make_server(ws_port=0, login_timeout=scaled(0.3))
    browser = WsClient(server)
    assert closed_with(browser, f"Nothing received within {scaled(0.3):g} s of connecting; closing")


def test_a_nameless_connection_is_dropped_at_the_idle_limit_pongs_or_not(make_server):
    server = make_server(ws_port=0, idle_timeout=scaled(0.4), ws_ping_interval=scaled(0.1))
    browser = WsClient(server)  # websockets answers every ping
    browser.send("individual::menu:")
    assert closed_with(browser, f"Idle for more than {scaled(0.4):g} s; closing")


def test_a_named_tab_that_only_reads_stays_past_the_idle_limit(make_server, connect):
    server = make_server(ws_port=0, idle_timeout=scaled(0.3), ws_ping_interval=scaled(0.1))
    browser = WsClient(server)
    browser.login("reader")
    time.sleep(scaled(1.0))  # silence, three idle limits long, with pings and pongs: what is under test
    talker = connect(server)
    talker.login("talker")
    talker.send("channel:channel1::still there?")
    browser.expect("channel:channel1:talker:still there?\n")
    assert not any("Idle" in m for m in browser.seen)


def handshake(port: int, *, rcvbuf: int | None = None) -> socket.socket:
    """A raw socket that opens the chat and then does only what the test does with it."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def masked(payload: bytes, opcode=Opcode.TEXT) -> bytes:
    """A client's frame: clients must mask."""
    return Frame(opcode, payload).serialize(mask=True, extensions=[])


def test_a_tab_that_stops_answering_pings_is_dropped(make_server, connect):
    server = make_server(ws_port=0, ws_ping_interval=scaled(0.2))
    watcher = connect(server)
    watcher.login("watcher")
    sock = handshake(server.websocket.port)
    try:
        sock.sendall(masked(b"individual::changeNameFirst:ghost"))
        watcher.expect(JOIN.format("ghost"))
        # It reads nothing and answers nothing: two ping intervals later it is gone.
        started = time.monotonic()
        watcher.expect("channel:channel1:系统消息:User left: ghost\n")
        assert time.monotonic() - started < scaled(2.0)
    finally:
        sock.close()


def test_flood_control_applies(make_server):
    server = make_server(ws_port=0, rate_limit=2, rate_burst=5)
    flooder = WsClient(server)
    # The burst, then the 2 x burst refusals in a row that end it, and nothing more: a message
    # left unread when the server closes would reset the connection, losing the answer in flight.
    for i in range(5 + 10 - 1):
        flooder.send(f"channel:channel1::spam{i}")
    flooder.send("channel:channel1::the last straw")  # the tenth refusal
    assert closed_with(flooder, "Still flooding: disconnecting")
    assert sum("too fast" in m for m in flooder.seen) == 1  # warned once


def test_the_per_address_limit_counts_terminals_and_tabs_together(make_server, connect):
    server = make_server(ws_port=0, max_per_ip=2)
    terminal = connect(server)
    terminal.login("tom")
    tab = WsClient(server)
    tab.login("bea")
    third = WsClient(server)
    assert third.expect_closed() == ["individual::系统消息:Too many connections from your address\n"]
    assert third.ws.close_code == 1013
    refused = RawClient(server.port)
    assert refused.expect_closed() == ["individual::系统消息:Too many connections from your address\n"]


def test_idle_sockets_on_the_web_port_are_bounded_and_the_page_still_loads(make_server):
    server = make_server(ws_port=0, max_per_ip=2)
    port = server.websocket.port
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2 + 8)]  # at the bound
    try:
        extra = socket.create_connection(("127.0.0.1", port))
        extra.settimeout(10)
        assert extra.recv(1) == b""  # closed at once, not held for the open timeout
        extra.close()
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 10
    while True:  # the closed sockets' handlers end as websockets notices: poll for the page
        try:
            assert get(server, "/").status == 200
            break
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    WsClient(server).login("fine")


def test_behind_a_trusted_proxy_the_header_names_the_address(make_server):
    server = make_server(ws_port=0, max_per_ip=1, trust_proxy="X-Forwarded-For")
    first = WsClient(server, headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.1"})
    first.login("one")
    other = WsClient(server, headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.2"})
    other.login("two")  # another client behind the proxy: another address
    same = WsClient(server, headers={"X-Forwarded-For": "198.51.100.1"})
    assert same.expect_closed() == ["individual::系统消息:Too many connections from your address\n"]
    assert {conn.address[0] for conn in server.connections} == {"198.51.100.1", "198.51.100.2"}


def test_client_address_takes_the_proxys_entry_and_ignores_what_is_not_an_address():
    headers = Headers([("X-Forwarded-For", "6.6.6.6, 10.0.0.1"), ("X-Forwarded-For", "192.0.2.7")])
    assert client_address(headers, "X-Forwarded-For", ("127.0.0.1", 5)) == ("192.0.2.7", 5)
    assert client_address(Headers([("X-Real-IP", " ::1 ")]), "X-Real-IP", ("127.0.0.1", 5)) == ("::1", 5)
    assert client_address(Headers([("X-Real-IP", "nonsense")]), "X-Real-IP", ("127.0.0.1", 5)) == ("127.0.0.1", 5)
    assert client_address(headers, None, ("127.0.0.1", 5)) == ("127.0.0.1", 5)


def test_a_full_server_refuses_a_tab_with_the_reason(make_server):
    server = make_server(ws_port=0, max_clients=1)
    admitted = WsClient(server)
    admitted.login("a")
    refused = WsClient(server)
    assert refused.expect_closed() == ["individual::系统消息:The server is full, please try again later\n"]


def test_a_tab_that_stops_reading_is_dropped_without_delaying_others(make_server):
    server = make_server(ws_port=0, send_timeout=scaled(0.5))
    sleepy = handshake(server.websocket.port, rcvbuf=4096)
    sleepy.sendall(masked(b"individual::changeNameFirst:sleepy"))
    alice = WsClient(server)
    alice.login("alice")
    text = "y" * 4000
    longest_wait = 0.0
    try:
        for i in range(3000):
            started = time.monotonic()
            alice.send(f"channel:channel1::{i}{text}")
            alice.expect(lambda m, i=i: m.startswith(f"channel:channel1:alice:{i}y"))
            longest_wait = max(longest_wait, time.monotonic() - started)
            if any("User left: sleepy" in m for m in alice.seen):
                break
        else:
            pytest.fail("the tab that never reads was never dropped")
    finally:
        sleepy.close()
    assert longest_wait < scaled(0.45), "alice waited on sleepy's full socket"


# --- origins ---------------------------------------------------------------------


def test_a_page_of_another_origin_is_refused_and_its_own_is_not(web_server):
    port = web_server.websocket.port
    with pytest.raises(InvalidStatus) as refused:
        WsClient(web_server, origin="http://evil.example")
    assert refused.value.response.status_code == 403
    WsClient(web_server, origin=f"http://127.0.0.1:{port}").login("own")
    WsClient(web_server).login("no-browser")  # no Origin: not a browser, no page to hijack it from
    assert web_server.wait_for_connections(2, 10)


def test_the_origins_allow_list_replaces_the_default(make_server):
    server = make_server(ws_port=0, ws_origins="https://chat.example.com")
    WsClient(server, origin="https://chat.example.com").login("allowed")
    with pytest.raises(InvalidStatus):
        WsClient(server, origin=f"http://127.0.0.1:{server.websocket.port}")


@pytest.mark.parametrize(
    "origin, host, allowed, verdict",
    [
        ("http://127.0.0.1:8080", "127.0.0.1:8080", None, True),
        ("https://Chat.Example.com", "chat.example.com", None, True),  # TLS added by a proxy in front
        ("http://127.0.0.1:8081", "127.0.0.1:8080", None, False),
        ("http://evil.example", "127.0.0.1:8080", None, False),
        ("null", "127.0.0.1:8080", None, False),  # a sandboxed frame, a file:// page
        ("http://127.0.0.1:8080", None, None, False),
        (None, "127.0.0.1:8080", None, True),
        ("https://a.example", "b.example", ("https://a.example",), True),
        ("http://b.example", "b.example", ("https://a.example",), False),
    ],
)
def test_origin_rules(origin, host, allowed, verdict):
    assert origin_allowed(origin, host, allowed) is verdict


# --- settings ----------------------------------------------------------------------


def test_web_settings_are_checked_when_parsed(capsys):
    config = parse_args(["--ws-port", "8080", "--ws-origins", "https://a.example, http://b.example:81"])
    assert config.ws_port == 8080 and config.ws_origins == ("https://a.example", "http://b.example:81")
    assert parse_args([]).ws_port is None
    for argv in (["--ws-port", "70000"], ["--ws-origins", "a.example"], ["--ws-origins", "https://a.example/path"],
                 ["--trust-proxy", "X Forwarded"], ["--ws-ping-interval", "0.01"]):
        with pytest.raises(SystemExit) as exit_status:
            parse_args(argv)
        assert exit_status.value.code == 2
    assert "--ws-origins" in capsys.readouterr().err
    with pytest.raises(ValueError):
        Config(ws_origins=["ftp://x"])


def test_text_frames_are_what_websockets_would_send():
    for size in (0, 125, 126, 65535, 65536):
        payload = b"x" * size
        assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])


# --- leaving ------------------------------------------------------------------------


def test_leaving_tabs_release_every_thread_and_redis_connection(web_server, redis_kind, redis_client):
    threads_before = set(threading.enumerate())
    redis_before = redis_connections_held(redis_kind, redis_client)
    for i in range(20):
        quitter = WsClient(web_server)
        quitter.login(f"q{i}")
        quitter.send("channel:channel1:quit:")
        quitter.expect_closed()
        quitter.close()
        closer = WsClient(web_server)
        closer.login(f"c{i}")
        closer.close()  # the tab is closed
        dropped = WsClient(web_server)
        dropped.login(f"d{i}")
        dropped.ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        dropped.ws.close_socket()  # a reset: the network went away
    assert web_server.wait_for_released(60, 20)
    assert threads_back_to(threads_before) == []
    assert redis_connections_held(redis_kind, redis_client) == redis_before


def test_shutdown_tells_every_tab_and_ends_every_thread(make_server, redis_client):
    threads_before = set(threading.enumerate())
    server = make_server(ws_port=0)
    tabs = [WsClient(server) for _ in range(3)]
    for i, tab in enumerate(tabs):
        tab.login(f"t{i}")
    started = time.monotonic()
    server.shutdown()
    assert time.monotonic() - started < scaled(3)
    for tab in tabs:
        assert any("The server is shutting down" in m for m in tab.expect_closed())
    assert threads_back_to(threads_before) == []
    assert redis_client.hlen(server.keys.users_online) == 0


def test_a_server_restarted_on_the_same_web_port_serves_again(make_server, redis_client):
    first = make_server(ws_port=0)
    port = first.websocket.port
    first.shutdown()
    second = make_server(ws_port=port)
    WsClient(second).login("back")


# --- TLS ----------------------------------------------------------------------------


def test_wss_with_a_certificate_passed_as_a_context(redis_client, connect):
    import trustme

    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1", "localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(server_context)
    client_context = wss_client_context(authority)
    server = ChatServer(Config(port=0, ws_port=0, key_prefix="wss-test:", rate_limit=0), redis_client,
                        ws_ssl_context=server_context)
    server.start()
    try:
        assert server.websocket.url.startswith("https://")
        assert tls_version_of(server.websocket.port, authority) == "TLSv1.3"
        page = urllib.request.urlopen(server.websocket.url, context=client_context, timeout=10)
        assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        browser = WsClient(server, scheme="wss", ssl_context=client_context)
        browser.login("secure")
        terminal = connect(server)
        terminal.login("plain")
        terminal.send("channel:channel1::over TCP")
        browser.expect("channel:channel1:plain:over TCP\n")
        browser.send("channel:channel1::over TLS")
        terminal.expect("channel:channel1:secure:over TLS\n")
        browser.close()
    finally:
        server.shutdown()


def test_the_tls_flags_give_the_web_page_https_and_wss_and_passwords_need_them_from_afar(make_server, tmp_path):
    import trustme

    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.cert_chain_pems[0].write_to_path(cert)
    certificate.private_key_pem.write_to_path(key)
    client_context = wss_client_context(authority)
    prefix = "web-tls:"
    secure = make_server(ws_port=0, tls_port=0, tls_cert=str(cert), tls_key=str(key), key_prefix=prefix,
                         trust_proxy="X-Forwarded-For")
    assert secure.websocket.url.startswith("https://")
    assert tls_version_of(secure.websocket.port, authority) == "TLSv1.3"
    plain = make_server(ws_port=0, key_prefix=prefix, trust_proxy="X-Forwarded-For")
    owner = WsClient(plain)  # from loopback: a password in clear text is fine
    owner.login("ann")
    owner.send("individual:ann:register:correct horse")
    owner.expect("individual:ann:register1:ann\n")
    owner.send("channel:channel1:quit:")
    owner.expect_closed()
    afar = {"X-Forwarded-For": "203.0.113.5"}
    clear = WsClient(plain, headers=afar)
    clear.send("individual::login:ann:correct horse")
    assert "accepted over TLS only" in clear.expect(lambda m: ":login0:" in m)
    over_tls = WsClient(secure, headers=afar, scheme="wss", ssl_context=client_context)
    over_tls.send("individual::login:ann:correct horse")
    over_tls.expect("individual:ann:changeNameFirst1:ann\n")
    # SIGHUP: a renewed certificate serves the web connections that come next too.
    renewed = authority.issue_cert("127.0.0.1")
    renewed.cert_chain_pems[0].write_to_path(cert)
    renewed.private_key_pem.write_to_path(key)
    secure.reload_tls()
    again = WsClient(secure, scheme="wss", ssl_context=client_context)
    assert again.ws.socket.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(renewed.cert_chain_pems[0]
                                                                                     .bytes().decode())


def test_the_web_port_in_use_is_a_one_line_error(make_server):
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        with pytest.raises(OSError, match=f"the web port 127.0.0.1:{taken.getsockname()[1]}: "):
            make_server(ws_port=taken.getsockname()[1])
    finally:
        taken.close()


def test_redis_failing_during_a_tab_login_is_answered(make_server, redis_client, monkeypatch):
    server = make_server(ws_port=0)

    def failing(*args, **kwargs):
        raise redis.ConnectionError("Redis went away")

    monkeypatch.setattr("chatroom.redisdb.add_user", failing)
    tab = WsClient(server)
    assert closed_with(tab, "The server cannot take new users right now, please try again later")


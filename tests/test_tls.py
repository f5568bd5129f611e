"""TLS: a second listener beside the plaintext one, handshakes in the connection's thread, SIGHUP reloads,
the client's --tls; with throwaway certificates made here (trustme)."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
import trustme
from conftest import ROOT, RawClient, scaled
from test_accounts import PASSWORD, answer, outside_address, registered

from chatroom.config import Config
from framing import FrameReader, encode

pytestmark = pytest.mark.timeout(60)

JOIN = "channel:channel1:系统消息:User < {} > joined!\n"
TLS_ONLY = "individual::系统消息:This port speaks TLS only: connect with TLS (python client.py --tls)\n"


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def pem_files(directory, cert: trustme.LeafCert, stem: str = "server") -> tuple[str, str]:
    cert_file, key_file = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    with open(cert_file, "ab") as chain:
        chain.writelines(extra.bytes() for extra in cert.cert_chain_pems[1:])
    return str(cert_file), str(key_file)


@pytest.fixture
def cert_files(ca, tmp_path):
    return pem_files(tmp_path, ca.issue_cert("localhost", "127.0.0.1"))


@pytest.fixture
def ca_file(ca, tmp_path):
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def trusting(ca):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def tls_server(make_server, cert_files):
    cert, key = cert_files
    return make_server(tls_port=0, tls_cert=cert, tls_key=key, tls_handshake_timeout=scaled(2))


def test_a_tls_user_and_a_plain_user_chat(tls_server, trusting):
    secure = RawClient(tls_server.tls_port, tls=trusting)
    plain = RawClient(tls_server.port)
    try:
        assert secure.sock.version() in ("TLSv1.2", "TLSv1.3")
        secure.login("alice")
        plain.login("bob")
        secure.expect(JOIN.format("bob"))
        secure.send("channel:channel1::over TLS")
        plain.expect("channel:channel1:alice:over TLS\n")
        plain.send("channel:channel1::in clear")
        secure.expect("channel:channel1:bob:in clear\n")
        plain.send("individual:alice::psst")
        secure.expect("individual:bob:private:psst\n")
        secure.send("individual:bob::psst back")
        plain.expect("individual:alice:private:psst back\n")
        # Passwords are welcome over TLS even from another host; here, from this one, anyway.
        secure.send(f"individual:alice:register:{PASSWORD}")
        secure.expect("individual:alice:register1:alice\n")
    finally:
        secure.close()
        plain.close()


def test_silent_tls_clients_never_hold_up_the_accept_loop_or_the_room(tls_server, trusting):
    silent = [socket.create_connection(("127.0.0.1", tls_server.tls_port)) for _ in range(20)]
    alice, bob = RawClient(tls_server.tls_port, tls=trusting), RawClient(tls_server.port)
    try:
        started = time.monotonic()
        alice.login("alice")
        bob.login("bob")
        for i in range(20):
            alice.send(f"channel:channel1::{i}")
            bob.expect(f"channel:channel1:alice:{i}\n")
        assert time.monotonic() - started < scaled(1.5), "the silent clients held something up"
        # Past the handshake deadline each silent one is told, in clear, what this port is, and closed.
        for sock in silent:
            sock.settimeout(scaled(10))
            assert RawFrames(sock).all() == [TLS_ONLY]
    finally:
        for sock in silent:
            sock.close()
        alice.close()
        bob.close()


class RawFrames:
    """Frames read from a plain socket until it closes."""

    def __init__(self, sock: socket.socket) -> None:
        self.reader = FrameReader(sock)

    def all(self) -> list[str]:
        frames = []
        try:
            while (frame := self.reader.read()) is not None:
                frames.append(frame)
        except ConnectionResetError:
            pass
        return frames


def test_a_plaintext_client_on_the_tls_port_is_told_so(tls_server):
    sock = socket.create_connection(("127.0.0.1", tls_server.tls_port), timeout=10)
    try:
        sock.sendall(encode("individual::changeNameFirst:alice"))
        assert RawFrames(sock).all() == [TLS_ONLY]
    finally:
        sock.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_older_than_1_2_is_refused(tls_server, trusting):
    trusting.maximum_version = ssl.TLSVersion.TLSv1_1
    trusting.minimum_version = ssl.TLSVersion.TLSv1
    with pytest.raises(ssl.SSLError):
        RawClient(tls_server.tls_port, tls=trusting)


def test_every_limit_applies_on_the_tls_port(make_server, cert_files, trusting):
    cert, key = cert_files
    server = make_server(tls_port=0, tls_cert=cert, tls_key=key, max_per_ip=1)
    first = RawClient(server.port)
    try:
        first.login("alice")
        second = RawClient(server.tls_port, timeout=10)  # refused before any handshake: in clear
        assert RawFrames(second.sock).all() == ["individual::系统消息:Too many connections from your address\n"]
    finally:
        first.close()
    assert server.wait_for_connections(0, 10)
    long_one = RawClient(server.tls_port, tls=trusting)
    try:
        long_one.login("bob")
        long_one.send("channel:channel1::" + "x" * 4072)
        limit = 4092 - len("channel:channel1:bob:") - 1
        long_one.expect(f"individual:bob:系统消息:Message too long: 4072 bytes, at most {limit} (4092 with names and fields)\n")
    finally:
        long_one.close()


def test_many_tls_users_sending_at_once_each_get_everything_in_order(tls_server, trusting):
    """Three threads share each TLS connection: no frame is lost, cut or interleaved."""
    names = [f"t{i}" for i in range(6)]
    clients = [RawClient(tls_server.tls_port, tls=trusting) for _ in names]
    try:
        for name, client in zip(names, clients):
            client.login(name)
        for index, client in enumerate(clients):
            awaited = {JOIN.format(name) for name in names[index:]} - set(client.seen)
            while awaited:
                awaited.discard(client.recv())
        per_sender = 40
        senders = [
            threading.Thread(target=lambda c=c, n=n: [c.send(f"channel:channel1::{n}-{i}") for i in range(per_sender)])
            for n, c in zip(names, clients)
        ]
        for thread in senders:
            thread.start()
        for client in clients:
            received: dict[str, list[str]] = {}
            while sum(len(v) for v in received.values()) < per_sender * len(names):
                _, _, sender, text = client.recv().rstrip("\n").split(":", 3)
                if sender != "系统消息":  # a late join notice
                    received.setdefault(sender, []).append(text)
            assert received == {n: [f"{n}-{i}" for i in range(per_sender)] for n in names}
        for thread in senders:
            thread.join(10)
    finally:
        for client in clients:
            client.close()


def test_passwords_over_tls_from_another_host_are_accepted(make_server, cert_files, trusting):
    address = outside_address()
    cert, key = cert_files
    server = make_server(host="0.0.0.0", tls_port=0, tls_cert=cert, tls_key=key)
    plain = RawClient(server.port, host=address)
    secure = RawClient(server.tls_port, host=address, tls=trusting)
    try:
        plain.login("alice")
        plain.send(f"individual:alice:register:{PASSWORD}")
        assert answer(plain, "alice", "register0") == (
            "individual:alice:register0:Passwords from your address are accepted over TLS only: "
            f"connect with TLS to port {server.tls_port}\n"
        )
        registered(secure, "bob")
    finally:
        plain.close()
        secure.close()


# --- the client -----------------------------------------------------------------------


def run_client(port: int, *args: str, stdin: str = "", env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "client.py"), "--port", str(port), *args],
        input=stdin, capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})},
    )


def test_the_client_chats_over_tls_and_logs_in_with_its_password(tls_server, ca_file):
    watcher = RawClient(tls_server.port)
    owner = RawClient(tls_server.port)
    try:
        watcher.login("watcher")
        registered(owner, "alice")
        owner.close()
        result = run_client(tls_server.tls_port, "--tls", "--tls-ca", ca_file, "--name", "alice",
                            stdin="hello over TLS\n/quit\n", env={"CHATROOM_PASSWORD": PASSWORD})
        assert result.returncode == 0, result.stdout + result.stderr
        watcher.expect("channel:channel1:alice:hello over TLS\n")
        assert "Your nickname is now: alice" in result.stdout
        assert PASSWORD not in result.stdout + result.stderr
    finally:
        watcher.close()


@pytest.mark.parametrize("problem, says", [
    ("expired", "the server's certificate was refused: certificate has expired"),
    ("wrong host", "the server's certificate was refused: IP address mismatch"),
    ("unknown CA", "the server's certificate was refused: unable to get local issuer certificate"),
])
def test_the_client_refuses_a_bad_certificate_in_one_line(make_server, ca, ca_file, tmp_path, problem, says):
    if problem == "expired":
        past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
        leaf = ca.issue_cert("127.0.0.1", not_before=past, not_after=past + datetime.timedelta(days=1))
    elif problem == "wrong host":
        leaf = ca.issue_cert("chat.example.org")
    else:
        leaf = trustme.CA().issue_cert("127.0.0.1")
    cert, key = pem_files(tmp_path, leaf, stem="bad")
    server = make_server(tls_port=0, tls_cert=cert, tls_key=key)
    result = run_client(server.tls_port, "--tls", "--tls-ca", ca_file, "--name", "alice", stdin="/quit\n")
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() + result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"Could not connect to 127.0.0.1:{server.tls_port} over TLS: {says}"), lines[0]


def test_a_ca_file_that_cannot_be_read_is_one_line(tmp_path):
    missing = tmp_path / "missing.pem"
    result = run_client(1, "--tls-ca", str(missing))
    assert result.returncode == 1
    assert result.stdout.strip().startswith("cannot read CA certificates from ")
    assert "Traceback" not in result.stderr


# --- settings and SIGHUP --------------------------------------------------------------


@pytest.mark.parametrize("settings, says", [
    ({"tls_port": 0}, "--tls-port needs --tls-cert and --tls-key"),
    ({"plaintext": False}, "--no-plaintext needs --tls-port"),
    ({"tls_cert": "{cert}", "tls_key": "{key}"}, "--tls-cert and --tls-key need --tls-port"),
    ({"tls_port": 0, "tls_cert": "{key}", "tls_key": "{key}"}, "cannot use the certificate"),
    ({"tls_port": 0, "tls_cert": "/nonexistent.pem", "tls_key": "{key}"}, "cannot read '/nonexistent.pem'"),
])
def test_tls_settings_are_checked_together(cert_files, settings, says):
    cert, key = cert_files
    values = {name: value.format(cert=cert, key=key) if isinstance(value, str) else value
              for name, value in settings.items()}
    with pytest.raises(ValueError, match=".*") as error:
        Config(**values)
    assert says in str(error.value)


def test_tls_only_with_no_plaintext(make_server, cert_files, trusting):
    cert, key = cert_files
    server = make_server(tls_port=0, tls_cert=cert, tls_key=key, plaintext=False)
    assert server.port == server.tls_port
    client = RawClient(server.tls_port, tls=trusting)
    try:
        client.login("alice")
    finally:
        client.close()


def served_certificate(port: int, trusting: ssl.SSLContext) -> bytes:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with trusting.wrap_socket(sock, server_hostname="localhost") as tls:
        return tls.getpeercert(binary_form=True)


def test_sighup_reads_the_certificate_again_for_new_connections(ca, cert_files, trusting, tmp_path):
    cert, key = cert_files
    log = open(tmp_path / "log", "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "server.py"), "--port", "0", "--tls-port", "0", "--tls-cert", cert,
         "--tls-key", key], stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "REDIS_URL": ""},
    )
    try:
        proc.stdout.readline()  # the plaintext port
        tls_line = proc.stdout.readline()
        assert "listening for TLS on" in tls_line, tls_line
        port = int(tls_line.rsplit(":", 1)[1])
        before = served_certificate(port, trusting)
        kept = RawClient(port, tls=trusting)
        kept.login("alice")
        renewed = ca.issue_cert("localhost", "127.0.0.1")
        renewed.private_key_pem.write_to_path(key)
        renewed.cert_chain_pems[0].write_to_path(cert)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "TLS certificate reloaded" not in (tmp_path / "log").read_text():
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "log").read_text()
            time.sleep(0.05)  # a log file has nothing to await
        after = served_certificate(port, trusting)
        assert after != before and after == ssl.PEM_cert_to_DER_cert(renewed.cert_chain_pems[0].bytes().decode())
        kept.send("channel:channel1::still here")  # the open connection keeps its session
        kept.expect("channel:channel1:alice:still here\n")
        # A bad file on the next SIGHUP is logged, and the last good certificate kept.
        with open(cert, "w") as broken:
            broken.write("not a certificate")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "TLS certificate not reloaded" not in (tmp_path / "log").read_text():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        assert served_certificate(port, trusting) == after
        kept.close()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        log.close()


def test_tls_connections_release_every_thread_and_redis_connection(tls_server, trusting):
    from conftest import threads_back_to

    before = set(threading.enumerate())
    released = tls_server.released
    pool = tls_server.rdb.connection_pool
    in_use = len(pool._in_use_connections)
    silent = socket.create_connection(("127.0.0.1", tls_server.tls_port))
    talker = RawClient(tls_server.tls_port, tls=trusting)
    talker.login("alice")
    talker.send("channel:channel1:quit:")
    talker.expect_closed()
    quitter = RawClient(tls_server.tls_port, tls=trusting)
    quitter.login("bob")
    quitter.close()  # gone without a goodbye
    silent.close()  # gone before its handshake
    assert tls_server.wait_for_released(released + 3, 10)
    assert threads_back_to(before) == []
    assert len(pool._in_use_connections) == in_use

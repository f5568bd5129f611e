"""The original Go client, built from the seed's own source, against this server.

The Go source is read from the blog post in ../shared/seed at test time (it is not
copied into this repository); the only change is the hard-coded dial address,
pointed at the test server's port.  Skipped where no Go toolchain is installed.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, RawClient

GO = shutil.which("go")
SEED = ROOT.parent / "shared" / "seed" / "000_239ad73594a47b9e.txt"

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(GO is None, reason="no Go toolchain (apt-get install golang-go)"),
    pytest.mark.skipif(
        not SEED.exists(),
        reason=f"the seed post (the Go source) must be at {SEED}: put the shared/ folder beside this checkout",
    ),
]


def extract_go_sources() -> tuple[str, str]:
    """The client's main package and the module package, as printed in the post."""
    text = SEED.read_text(encoding="utf-8")
    client_start = text.index("package main", text.index("clinet\n1."))
    client = text[client_start : text.index("tcp防粘包", client_start)]
    module = text[text.index("package module") :]
    return client, module


@pytest.fixture(scope="session")
def go_client_source(tmp_path_factory) -> Path:
    """A build tree for the client; built per port by :func:`build_go_client`."""
    root = tmp_path_factory.mktemp("go-original")
    client, module = extract_go_sources()
    (root / "go.mod").write_text("module chatRoom\n\ngo 1.19\n")
    (root / "chatRoom4.0" / "module").mkdir(parents=True)
    (root / "chatRoom4.0" / "module" / "module.go").write_text(module)
    (root / "client").mkdir()
    (root / "client" / "main.go.in").write_text(client)
    return root


def build_go_client(root: Path, port: int) -> Path:
    source = (root / "client" / "main.go.in").read_text()
    assert '"127.0.0.1:9527"' in source
    (root / "client" / "main.go").write_text(source.replace('"127.0.0.1:9527"', f'"127.0.0.1:{port}"'))
    binary = root / f"client-{port}"
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOPROXY": "off", "GOCACHE": str(root / ".cache"),
           "GOPATH": str(root / ".gopath")}
    subprocess.run([GO, "build", "-o", str(binary), "./client"], cwd=root, env=env, check=True, timeout=300)
    return binary


class GoClient:
    """The Go client as a person would run it: lines in on stdin, its screen on stdout."""

    def __init__(self, binary: Path) -> None:
        self.proc = subprocess.Popen(
            [str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.screen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self.lines.put(raw.decode("utf-8", "replace"))
        self.lines.put("")

    def type(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def wait_for(self, fragment: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"never printed {fragment!r}; screen: {self.screen!r}") from None
            self.screen.append(line)
            if fragment in line:
                return line
            if line == "":
                raise AssertionError(f"exited before printing {fragment!r}; screen: {self.screen!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def go_client(go_client_source, make_server):
    server = make_server(lang="zh")
    binary = build_go_client(go_client_source, server.port)
    clients = []

    def start() -> GoClient:
        client = GoClient(binary)
        clients.append(client)
        return client

    yield server, start
    for client in clients:
        client.stop()


def stamp_line(line: str) -> str:
    """A Go client line without its 【  HH:MM  】 time stamp."""
    assert line.startswith("【  ") and "  】" in line, line
    return line.split("  】", 1)[1].rstrip("\n")


class RoomChatter:
    """Two users chatting in a room the Go client never joins, all through a session."""

    def __init__(self, port: int) -> None:
        self.carol, self.dave = RawClient(port), RawClient(port)
        for client, name in ((self.carol, "carol"), (self.dave, "dave")):
            client.login(name)
            client.send("channel:dev:join:")
            client.expect(f"individual:{name}:join1:dev\n")
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._chat, daemon=True)
        self.thread.start()

    def _chat(self) -> None:
        i = 0
        while not self.stopping.is_set():
            self.carol.send(f"channel:dev::room chatter {i}")
            i += 1
            self.stopping.wait(0.01)  # a steady conversation is what is under test

    def stop(self) -> int:
        """Stop; returns how many room messages dave received meanwhile."""
        self.stopping.set()
        self.thread.join()
        self.carol.send("channel:dev::last")
        self.dave.expect("channel:dev:carol:last\n")
        for client in (self.carol, self.dave):
            client.close()
        return sum("room chatter" in f for f in self.dave.seen)


def test_the_original_go_client_chats_with_this_server(go_client):
    server, start = go_client
    chatter = RoomChatter(server.port)  # in a room the Go client never sees
    bob = RawClient(server.port)
    bob.login("bob")
    bob.send("channel:channel1::before alice came")  # alice gets it as history, which Go ignores
    alice = start()
    alice.wait_for("服务器连接成功")
    alice.type("alice")
    assert stamp_line(alice.wait_for("你当前昵称为")) == "你当前昵称为: alice"
    bob.expect("channel:channel1:系统消息:用户 < alice > 上线了!\n")
    alice.type("hello")
    assert stamp_line(alice.wait_for("hello")) == "< alice >hello"
    bob.expect("channel:channel1:alice:hello\n")
    bob.send("channel:channel1::hi alice")
    assert stamp_line(alice.wait_for("hi alice")) == "< bob >hi alice"
    alice.type("./cd3")
    assert stamp_line(alice.wait_for("当前在线人数")) == "< alice >当前在线人数为4人"  # bob, carol, dave, alice
    alice.type("./ACTIVITY")
    assert stamp_line(alice.wait_for("活跃度排名")) == "< 系统消息 > < 系统消息 > 活跃度排名"
    alice.type("./cd1")
    assert stamp_line(alice.wait_for("< 系统消息 >")) == "< 系统消息 > "
    alice.wait_for(" * ./cd5 或 ./quit 退出聊天室")
    alice.type("./cd2")
    alice.wait_for("请输入新的昵称")
    alice.type("alicia")
    assert stamp_line(alice.wait_for("昵称为修改成功")) == "昵称为修改成功"
    alice.type("./cd5")
    alice.wait_for("服务器连接已断开")
    assert alice.proc.wait(10) == 0
    bob.expect("channel:channel1:系统消息:用户已下线:alicia\n")
    assert chatter.stop() > 0
    assert not any("room chatter" in line or "加入了房间" in line for line in alice.screen)


def test_the_go_client_survives_what_this_server_adds(go_client):
    server, start = go_client
    alice = start()
    alice.type("alice")
    alice.wait_for("你当前昵称为")
    bob = RawClient(server.port)
    bob.login("bob")
    bob.send("individual:alice::psst")  # a mark the Go client does not know
    assert stamp_line(alice.wait_for("未知错误")) == "< 系统消息 > 未知错误"
    bob.send("channel:channel1::still listening?")
    assert stamp_line(alice.wait_for("still listening?")) == "< bob >still listening?"

"""client.py: its pure functions, then the real program against a scripted server and the live one.

The scripted server is a listening socket in the test that speaks frames; the
client runs as ``python client.py`` with a pipe for stdin, exactly as a user
would pipe input into it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import pytest

import client
from client import (
    ACCEPTED,
    END_OF_INPUT,
    LINE,
    REFUSED,
    SERVER_QUIT,
    Action,
    Inbox,
    chat_limit,
    go_trim_space,
    nickname_action,
    parse_frame,
    parse_line,
    sanitize,
)
from framing import MAX_FRAME, FrameReader, encode

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "client.py"
TIMEOUT = 10.0

NOW = datetime(2024, 5, 6, 15, 4)
T = "【  15:04  】"  # Go: fmt.Println("【 ", time.Now().Format("15:04"), " 】...")
STAMP = r"【  \d\d:\d\d  】"

MENU_FRAME = (
    "individual:alice:系统消息: \n * ./cd1 或 ./menu 功能菜单\n * ./cd2 或 ./changeName 更改昵称\n"
    " * ./cd3 或 ./online 在线用户数量查询\n*./cd4 或 ./ activity 查询活跃排行\n * ./cd5 或 ./quit 退出聊天室\n\n"
)
ACTIVITY_FRAME = "channel:channel1:系统消息:< 系统消息 > 活跃度排名\n 第1名 : bob\n 第2名 : alice\n\n"
TAKEN = "名字重复,请更换名字再次尝试"


def lines(payload: str, lang: str = "zh") -> tuple[str, ...]:
    return parse_frame(payload, lang, NOW).lines


# --- rendering (parse_frame) ------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "printed"),
    [
        ("individual:alice:changeNameFirst1:alice\n", [T + "你当前昵称为: alice"]),
        ("individual:bobby:changeName1:bobby\n", [T + "昵称为修改成功", T + "你当前昵称为: bobby"]),
        ("individual:carol:系统消息:psst\n", [T + "< 系统消息 >psst"]),
        (MENU_FRAME, [T + "< 系统消息 >" + MENU_FRAME.split(":", 3)[3].rstrip("\n")]),
        ("individual:x:somethingElse:whatever\n", [T + "< 系统消息 > 未知错误"]),
        ("individual:x:quit:\n", [T + "开始退出客户端..."]),
        ("channel:channel1:系统消息:用户 < alice > 上线了!\n", [T + "< 系统消息 > 用户 < alice > 上线了!"]),
        ("channel:channel1:系统消息:用户已下线:alice\n", [T + "< 系统消息 > 用户已下线:alice"]),
        ("channel:channel1:alice:hello\n", [T + "< alice >hello"]),
        ("channel:channel1:alice:a:b:c\n", [T + "< alice >a:b:c"]),
        ("channel:channel1:bob:当前在线人数为2人\n", [T + "< bob >当前在线人数为2人"]),
        ("channel:channel1:alice:\n", [T + "< alice >"]),
        (
            ACTIVITY_FRAME,
            [T + "< 系统消息 > < 系统消息 > 活跃度排名\n 第1名 : bob\n 第2名 : alice"],
        ),
    ],
)
def test_zh_lines_are_what_the_go_client_prints(payload, printed):
    assert list(lines(payload, "zh")) == printed


@pytest.mark.parametrize(
    ("payload", "printed"),
    [
        ("individual:alice:changeNameFirst1:alice\n", ["[15:04] Your nickname is now: alice"]),
        (
            "individual:bobby:changeName1:bobby\n",
            ["[15:04] Nickname changed", "[15:04] Your nickname is now: bobby"],
        ),
        ("individual:carol:系统消息:psst\n", ["[15:04] < System > psst"]),
        ("individual:x:somethingElse:whatever\n", ["[15:04] < System > Unknown error"]),
        ("individual:x:quit:\n", ["[15:04] Leaving..."]),
        ("channel:channel1:系统消息:User < alice > joined!\n", ["[15:04] < System > User < alice > joined!"]),
        ("channel:channel1:alice:hello\n", ["[15:04] < alice > hello"]),
        (
            "individual:guest-1:changeNameFirst0:That name is taken\n",
            ["[15:04] < System > That name is taken"],
        ),
        ("Bad message format\n", ["[15:04] < System > Bad message format"]),
    ],
)
def test_en_lines_use_the_english_texts(payload, printed):
    assert list(lines(payload, "en")) == printed


def test_first_nickname_accepted_sets_the_name_and_wakes_the_main_thread():
    incoming = parse_frame("individual:alice:changeNameFirst1:alice\n", "zh", NOW)
    assert (incoming.name, incoming.event) == ("alice", ACCEPTED)


def test_rename_sets_the_name_but_is_no_first_nickname_answer():
    incoming = parse_frame("individual:bobby:changeName1:bobby\n", "zh", NOW)
    assert (incoming.name, incoming.event) == ("bobby", None)


@pytest.mark.parametrize(
    "payload",
    [
        f"individual:guest-7:changeNameFirst0:{TAKEN}\n",  # our server
        f"individual:127.0.0.1:41510:changeNameFirst0:{TAKEN}\n",  # Go server: the name is the address
        f"individual:[::1]:41510:changeNameFirst0:{TAKEN}\n",  # Go server over IPv6
        f"individual:bobby:changeNameFirst0:{TAKEN}\n",  # a refused later rename
    ],
)
def test_a_refused_name_shows_the_servers_reason(payload):
    incoming = parse_frame(payload, "zh", NOW)
    assert incoming.lines == (T + "< 系统消息 > " + TAKEN,)
    assert (incoming.event, incoming.name) == (REFUSED, None)


def test_a_failed_rename_shows_the_reason_even_in_the_shifted_form():
    incoming = parse_frame("individual:127.0.0.1:5:changeNameFirst2:未知原因导致改名失败\n", "zh", NOW)
    assert incoming.lines == (T + "< 系统消息 > 未知原因导致改名失败",)
    assert incoming.event == REFUSED


def test_a_refusal_without_a_reason_gets_a_default_text():
    assert lines("individual:x:changeNameFirst0:\n", "en") == (
        "[15:04] < System > That name is taken, please try another",
    )


def test_a_name_with_a_colon_is_accepted_whole():
    # The Go server lets a name contain ':', which shifts the fields.
    incoming = parse_frame("individual:a:b:changeNameFirst1:a:b\n", "zh", NOW)
    assert (incoming.name, incoming.event) == ("a:b", ACCEPTED)


def test_a_private_message_from_an_unnamed_go_user_is_shown():
    assert lines("individual:127.0.0.1:5555:系统消息:hi\n") == (T + "< 系统消息 >hi",)


def test_a_private_message_cannot_pose_as_a_refusal():
    incoming = parse_frame("individual:mallory:系统消息:changeNameFirst0:gotcha\n", "zh", NOW)
    assert incoming.event is None
    assert incoming.lines == (T + "< 系统消息 >changeNameFirst0:gotcha",)


def test_the_server_telling_us_to_quit_is_an_event():
    assert parse_frame("individual:x:quit:\n", "zh", NOW).event == SERVER_QUIT


@pytest.mark.parametrize("payload", ["信息格式错误\n", "no colons", "a:b:c\n"])
def test_a_payload_with_fewer_than_four_fields_is_shown_as_a_system_line(payload):
    assert lines(payload) == (T + "< 系统消息 > " + payload.rstrip("\n"),)


def test_four_fields_of_an_unknown_kind_print_nothing_as_in_the_original():
    assert lines("other:x:y:z\n") == ()


def test_only_trailing_cr_and_lf_are_trimmed_from_the_message():
    assert lines("channel:channel1:alice:\n hi \r\n\r\n") == (T + "< alice >", " " * 22 + " hi ")


# --- lines a user's text cannot forge ------------------------------------------------------

FORGERY = "ok\n[21:13] < System > User left: mallory\n[21:13] < bob > my password is hunter2"


def test_the_lines_of_a_chat_message_are_indented_under_its_sender():
    # Original: printed as it came, so the text's own lines looked like a
    # system notice and like bob speaking.
    assert lines(f"channel:channel1:mallory:{FORGERY}\n", "en") == (
        "[15:04] < mallory > ok",
        "                    [21:13] < System > User left: mallory",
        "                    [21:13] < bob > my password is hunter2",
    )
    assert lines(f"channel:channel1:mallory:{FORGERY}\n", "zh") == (
        T + "< mallory >ok",
        " " * 24 + "[21:13] < System > User left: mallory",  # 【 and 】 are two columns wide
        " " * 24 + "[21:13] < bob > my password is hunter2",
    )


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r", "\u2028", "\u2029", "\x85", "\v", "\f"])
def test_every_kind_of_line_break_starts_an_indented_line(newline):
    assert lines(f"channel:channel1:bob:one{newline}two{newline}{newline}four\n", "en") == (
        "[15:04] < bob > one",
        "                two",
        "",
        "                four",
    )


def test_private_and_history_lines_are_indented_under_their_sender_too():
    forged = "hi\n[21:13] < bob > my password is hunter2"
    assert lines(f"individual:mallory:private:{forged}\n", "en") == (
        "[15:04] [private] < mallory > hi",
        " " * 30 + "[21:13] < bob > my password is hunter2",
    )
    assert lines(f"individual:bob:privateSent:{forged}\n", "en") == (
        "[15:04] [private] < you -> bob > hi",
        " " * 33 + "[21:13] < bob > my password is hunter2",
    )
    sent = int(datetime(2024, 5, 6, 9, 30).timestamp())
    incoming = parse_frame(f"history:{sent}:mallory:{forged}\n", "en", NOW)
    assert incoming.lines == (
        "[09:30] (history) < mallory > hi",
        " " * 30 + "[21:13] < bob > my password is hunter2",
    )
    assert all("history" in style for line in incoming.styled for style, text in line if text.strip())
    assert incoming.public == ("mallory", forged)  # what was said, for the history filter


def test_a_name_cannot_break_a_line():
    # The original server takes any name; ours refuses these.
    assert lines("channel:channel1:x\n< bob >:hunter2\n", "en") == ("[15:04] < x^J< bob > > hunter2",)
    assert lines("individual:a\u2028b:private:hi\n", "en") == ("[15:04] [private] < a<U+2028>b > hi",)
    assert lines("individual:a\nb:changeNameFirst1:a\nb\n", "en") == ("[15:04] Your nickname is now: a^Jb",)


def test_the_servers_own_multi_line_texts_are_shown_as_they_are():
    assert lines("individual:alice:系统消息:Online (2):\n alice\n bob\n", "en") == (
        "[15:04] < System > Online (2):\n alice\n bob",
    )
    assert lines(ACTIVITY_FRAME, "zh") == (T + "< 系统消息 > " + ACTIVITY_FRAME.split(":", 3)[3].rstrip("\n"),)


@pytest.mark.parametrize(
    ("value", "columns"),
    [("abc", 3), ("你好", 4), ("【  15:04  】", 13), ("e\u0301", 1), ("a\u200bb", 2), ("", 0)],
)
def test_display_width_counts_terminal_columns(value, columns):
    assert client.display_width(value) == columns


# --- sanitising --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[31mred\x1b[0m", "^[[31mred^[[0m"),
        ("\x1b]0;title\x07", "^[]0;title^G"),
        ("over\rwrite", "over^Mwrite"),
        ("back\x08\x08", "back^H^H"),
        ("nul\x00", "nul^@"),
        ("del\x7f", "del^?"),
        ("csi\x9b2J", "csi<U+009B>2J"),
        ("\x85nel", "<U+0085>nel"),
        ("\u202eevil", "<U+202E>evil"),
        ("\u2066iso\u2069", "<U+2066>iso<U+2069>"),
        ("\u200eltr\u200frtl\u061calm", "<U+200E>ltr<U+200F>rtl<U+061C>alm"),
        ("two\nlines\tand tab", "two\nlines\tand tab"),
        ("你好 alice", "你好 alice"),
    ],
)
def test_sanitize_makes_control_characters_visible(raw, shown):
    assert sanitize(raw) == shown


def test_no_field_from_the_network_reaches_the_terminal_raw():
    cases = [
        "channel:channel1:\x1b[2Jbob:\x1b[31mred\x07\n",
        "channel:channel1:系统消息:\x1b[H\n",
        "individual:x:系统消息:\x1b[1A\n",
        "individual:\x1b[5mbob:changeNameFirst1:\x1b[5mbob\n",
        "individual:x:changeNameFirst0:\x1bc\n",
        "\x1b[2J garbage\n",
    ]
    for payload in cases:
        for line in lines(payload) + lines(payload, "en"):
            assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", line), (payload, line)


def test_the_name_kept_is_the_real_one_not_the_shown_one():
    incoming = parse_frame("individual:a\x1bb:changeNameFirst1:a\x1bb\n", "zh", NOW)
    assert incoming.name == "a\x1bb"
    assert incoming.lines == (T + "你当前昵称为: a^[b",)


# --- typed lines (parse_line, nickname_action) ----------------------------------------


@pytest.mark.parametrize(
    ("line", "payload"),
    [
        ("./cd1", "individual:alice:menu:"),
        ("./MENU", "individual:alice:menu:"),
        ("./cd3", "channel:channel1:onlineList:"),
        ("./Online", "channel:channel1:onlineList:"),
        ("./CD4", "channel:channel1:activity:"),
        ("./activity", "channel:channel1:activity:"),
        ("hello", "channel:channel1::hello"),
        ("a:b:c", "channel:channel1::a:b:c"),
        ("", "channel:channel1::"),
        ("./cd6", "channel:channel1::./cd6"),
        ("./menu please", "channel:channel1::./menu please"),
        ("你好", "channel:channel1::你好"),
    ],
)
def test_typed_lines_become_the_go_clients_payloads(line, payload):
    assert parse_line(line, "alice") == Action(payload)


@pytest.mark.parametrize("line", ["./cd5", "./quit", "./QUIT", "./Cd5"])
def test_quit_sends_quit_and_leaves(line):
    assert parse_line(line, "alice") == Action("channel:channel1:quit:", quit=True)


@pytest.mark.parametrize("line", ["./cd2", "./changeName", "./CHANGENAME", "./changename"])
def test_change_name_asks_for_the_new_name(line):
    assert parse_line(line, "alice") == Action(ask_new_name=True)


def test_menu_carries_the_name_we_have_so_far():
    assert parse_line("./menu", "").payload == "individual::menu:"


def test_a_chat_text_whose_broadcast_the_go_clients_cannot_decode_is_not_sent():
    limit = chat_limit("alice")
    assert len(b"channel:channel1:alice:") + limit + 1 == MAX_FRAME
    assert parse_line("x" * limit, "alice").payload == "channel:channel1::" + "x" * limit
    refused = parse_line("x" * (limit + 1), "alice", "en")
    assert (refused.payload, refused.too_long) == (None, True)
    # The limit of the text, and the README's limit of every payload: 4092 bytes.
    assert refused.notice == f"Message too long: {limit + 1} bytes, at most {limit} (4092 with names and fields)"
    assert len(refused.notice) <= 80  # it must fit the line under a terminal's prompt
    assert parse_line("好" * (limit // 3 + 1), "alice", "zh").notice == (
        f"信息过长: {(limit // 3 + 1) * 3}字节, 最多{limit}字节(连同昵称等字段共4092字节)"
    )


def test_nickname_payloads():
    assert nickname_action("alice") == Action("individual::changeNameFirst:alice")
    assert nickname_action("bobby", current="alice") == Action("individual:alice:changeName:bobby")


def test_an_empty_nickname_sends_nothing():
    assert nickname_action("") == Action()
    assert nickname_action("", current="alice") == Action()


def test_an_oversized_nickname_is_not_sent():
    action = nickname_action("n" * MAX_FRAME, "en")
    assert (action.payload, action.too_long) == (None, True)
    assert action.notice.startswith(f"Message too long: {MAX_FRAME} bytes, at most ")


def test_input_is_trimmed_as_go_trims_it():
    assert go_trim_space(" \t alice \r\u3000\xa0") == "alice"
    assert go_trim_space("\x1calice") == "\x1calice"  # Python's strip() would remove it; Go's does not


def test_inbox_holds_input_while_waiting_for_news():
    inbox = Inbox()
    inbox.put(LINE, "bob")
    inbox.put(END_OF_INPUT)
    inbox.put(REFUSED)
    assert inbox.get_news() == (REFUSED, None)
    inbox.put(ACCEPTED)
    assert [inbox.get(), inbox.get(), inbox.get()] == [(LINE, "bob"), (END_OF_INPUT, None), (ACCEPTED, None)]


# --- the program against a scripted server ---------------------------------------------


class FakeServer:
    """A scripted server for one client: reads and writes frames, nothing else."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None

    def accept(self) -> None:
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(TIMEOUT)
        self.reader = FrameReader(self.conn)

    def recv(self) -> str | None:
        if self.conn is None:
            self.accept()
        return self.reader.read()

    def expect(self, payload: str) -> None:
        assert self.recv() == payload

    def send(self, payload: str) -> None:
        """Send a server payload; like the original's, it ends with a newline."""
        self.conn.sendall(encode(payload + "\n"))

    def answer(self, payload: str, *answers: str) -> None:
        """Expect a request, then answer it as a server does (the client awaits answers before leaving)."""
        self.expect(payload)
        for answer in answers:
            self.send(answer)

    def chat(self, name: str, text: str) -> None:
        """Expect ``name``'s chat line and broadcast it back."""
        self.answer(f"channel:channel1::{text}", f"channel:channel1:{name}:{text}")

    def login(self, name: str) -> None:
        self.expect(f"individual::changeNameFirst:{name}")
        self.send(f"individual:{name}:changeNameFirst1:{name}")
        self.send(f"channel:channel1:系统消息:用户 < {name} > 上线了!")

    def frames_until_closed(self) -> list[str]:
        """Half-close (as a server closing after quit), then read what the client still sends."""
        self.conn.shutdown(socket.SHUT_WR)
        frames = []
        while (frame := self.recv()) is not None:
            frames.append(frame)
        return frames

    def reset(self) -> None:
        """Drop the connection with an RST, as a crashed server host would."""
        self.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.conn.close()
        self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def stop(self) -> None:
        self.close()
        self.listener.close()


class ClientProcess:
    """``python client.py`` with stdin, stdout and stderr as pipes."""

    def __init__(self, port: int, *args: str) -> None:
        env = dict(os.environ, PYTHONIOENCODING="utf-8")
        self.proc = subprocess.Popen(
            [sys.executable, str(CLIENT), "--port", str(port), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self._cond = threading.Condition()
        self._out = bytearray()
        self._err = bytearray()
        self._threads = [
            threading.Thread(target=self._collect, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._collect, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _collect(self, stream, into: bytearray) -> None:
        while chunk := stream.read1(65536):
            with self._cond:
                into += chunk
                self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return self._out.decode("utf-8", "replace")

    def type(self, *lines: str) -> None:
        """Write lines to the client's stdin in one write, as a pipe delivers them."""
        self.proc.stdin.write("".join(line + "\n" for line in lines).encode("utf-8"))
        self.proc.stdin.flush()

    def end_input(self) -> None:
        self.proc.stdin.close()

    def wait_for_output(self, needle: str) -> None:
        with self._cond:
            found = self._cond.wait_for(lambda: needle in self._out.decode("utf-8", "replace"), TIMEOUT)
        assert found, f"{needle!r} not printed; output so far: {self.output!r}"

    def finish(self) -> tuple[int, str]:
        """Wait for the client to exit; its status and everything it printed."""
        status = self.proc.wait(TIMEOUT)
        for thread in self._threads:
            thread.join(TIMEOUT)
        return status, self.output

    @property
    def errors(self) -> str:
        with self._cond:
            return self._err.decode("utf-8", "replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass


@pytest.fixture
def server():
    fake = FakeServer()
    yield fake
    fake.stop()


@pytest.fixture
def start_client():
    """Start client processes; any still running after the test is killed."""
    started = []

    def start(port: int, *args: str) -> ClientProcess:
        process = ClientProcess(port, *args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.mark.parametrize(
    "refusal",
    [
        f"individual:guest-1:changeNameFirst0:{TAKEN}",  # our server
        f"individual:127.0.0.1:41510:changeNameFirst0:{TAKEN}",  # the Go server
    ],
    ids=["our-server", "go-server"],
)
def test_a_taken_first_nickname_is_asked_again(server, start_client, refusal):
    chat = start_client(server.port, "--lang", "zh")
    chat.type("alice", "bob")  # on a pipe, the line after a refused name is the next name
    server.expect("individual::changeNameFirst:alice")
    server.send(refusal)
    server.login("bob")
    chat.type("hello")
    server.chat("bob", "hello")
    chat.end_input()
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert output.count("请输入你的昵称:") == 2
    assert re.search(STAMP + "< 系统消息 > " + TAKEN + "\n请输入你的昵称:", output)
    assert re.search(STAMP + "你当前昵称为: bob\n", output)
    assert "未知错误" not in output
    assert output.count("欢迎进入多人聊天室系统") == 1


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_banner_comes_before_anything_the_server_sends_after_the_nickname(server, start_client, lang):
    chat = start_client(server.port, "--name", "alice", "--lang", lang)
    server.expect("individual::changeNameFirst:alice")
    sent = int(datetime.now().timestamp())
    answer = [
        "individual:alice:changeNameFirst1:alice",
        "channel:channel1:系统消息:User < alice > joined!",
        f"history:{sent - 60}:bob:first",
        f"history:{sent - 30}:bob:second",
    ]
    server.conn.sendall(b"".join(encode(payload + "\n") for payload in answer))  # in one burst
    chat.wait_for_output("second\n")
    chat.end_input()
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    banner = client.text(lang, "banner") + "\n" + client.text(lang, "banner_slash") + "\n"
    assert output.count(banner) == 1
    after = output.split(banner, 1)[1]
    for shown in (client.text(lang, "your_name", name="alice"), "User < alice > joined!", "first", "second"):
        assert shown in after, shown


def test_lines_that_arrive_together_are_all_sent(server, start_client):
    chat = start_client(server.port)
    chat.type("alice", "one", "two", "three")
    chat.end_input()
    server.login("alice")
    for text in ("one", "two", "three"):
        server.chat("alice", text)
    server.expect("channel:channel1:quit:")
    server.close()
    assert chat.finish()[0] == 0


def test_commands_are_case_insensitive_and_use_the_current_name(server, start_client):
    chat = start_client(server.port, "--lang", "zh")
    chat.type("alice", "./ONLINE", "./Cd4", "./cd1", "./changeName", "bobby")
    server.login("alice")
    server.answer("channel:channel1:onlineList:", "channel:channel1:alice:当前在线人数为1人")
    server.answer("channel:channel1:activity:", ACTIVITY_FRAME.rstrip("\n"))
    server.answer("individual:alice:menu:", MENU_FRAME.rstrip("\n"))
    server.expect("individual:alice:changeName:bobby")
    server.send("individual:bobby:changeName1:bobby")
    chat.wait_for_output("你当前昵称为: bobby")
    chat.type("./MENU")
    server.answer("individual:bobby:menu:", MENU_FRAME.replace("alice", "bobby").rstrip("\n"))
    chat.type("./cd5")
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert "请输入新的昵称:\n" in output


def test_the_reply_to_our_online_is_a_system_line(server, start_client):
    chat = start_client(server.port, "--lang", "zh")
    chat.type("alice", "./online")
    server.login("alice")
    server.expect("channel:channel1:onlineList:")
    server.send("channel:channel1:alice:当前在线人数为2人")
    chat.wait_for_output("当前在线人数为2人\n")
    chat.type("/online")
    server.answer("channel:channel1:onlineList:", "channel:channel1:alice:当前在线人数为3人")
    chat.wait_for_output("当前在线人数为3人\n")
    server.send("channel:channel1:alice:当前在线人数为4人")  # nobody asked: alice said it
    chat.wait_for_output("当前在线人数为4人\n")
    chat.type("./quit")
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert re.search(STAMP + "< 系统消息 > 用户 < alice > 上线了!\n", output)
    # Original: "< alice >当前在线人数为2人", as if alice had said it.
    assert re.search(STAMP + "< 系统消息 > 当前在线人数为2人\n", output)
    assert re.search(STAMP + "< 系统消息 > 当前在线人数为3人\n", output)
    assert re.search(STAMP + "< alice >当前在线人数为4人\n", output)


def test_quit_waits_for_the_server_to_close_and_exits_0(server, start_client):
    chat = start_client(server.port, "--lang", "zh")
    chat.type("alice", "./QUIT")
    server.login("alice")
    server.expect("channel:channel1:quit:")
    server.send("channel:channel1:系统消息:用户已下线:alice")
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert re.search(STAMP + "< 系统消息 > 用户已下线:alice\n退出成功\n$", output)
    assert "服务器连接已断开" not in output


def test_quit_gives_up_waiting_for_a_server_that_does_not_close(server, start_client):
    chat = start_client(server.port)
    chat.type("alice", "./quit")
    server.login("alice")
    server.expect("channel:channel1:quit:")
    status, output = chat.finish()  # within client.QUIT_TIMEOUT, though the server stays
    assert status == 0
    assert output.endswith("Bye\n")


def test_end_of_input_quits_once_and_exits_0(server, start_client):
    chat = start_client(server.port)
    chat.type("alice")
    server.login("alice")
    chat.end_input()
    server.expect("channel:channel1:quit:")
    assert server.frames_until_closed() == []  # the original sent an error text every 100 ms
    status, output = chat.finish()
    assert status == 0
    assert output.endswith("Bye\n")
    assert "客户端信息读取错误" not in output


def nobody_connected(server: FakeServer) -> bool:
    """Whether no connection waits to be accepted (the kernel completes a connect before accept)."""
    server.listener.settimeout(0)
    try:
        conn, _ = server.listener.accept()
    except BlockingIOError:
        return True
    else:
        conn.close()
        return False
    finally:
        server.listener.settimeout(TIMEOUT)


def test_the_nickname_is_asked_before_connecting(server, start_client):
    # Original: connected, then asked, so the server's login deadline ran while the person typed.
    chat = start_client(server.port)
    chat.wait_for_output("Enter your nickname: ")
    assert nobody_connected(server)
    chat.type("alice")
    server.login("alice")
    chat.wait_for_output("Your nickname is now: alice")
    chat.end_input()
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert output.startswith("Enter your nickname: \nConnected to the server\n")


def test_end_of_input_before_any_nickname_quits_without_connecting(server, start_client):
    chat = start_client(server.port)
    chat.end_input()
    status, output = chat.finish()
    assert status == 0
    assert output == "Enter your nickname: \nBye\n"  # the goodbye on a line of its own
    assert nobody_connected(server)


def test_an_empty_nickname_is_asked_again_before_connecting(server, start_client):
    chat = start_client(server.port)
    chat.type("", "  ")
    chat.wait_for_output("Enter your nickname: \nEnter your nickname: \nEnter your nickname: ")
    assert nobody_connected(server)
    chat.type("bob")
    server.login("bob")
    chat.end_input()
    server.expect("channel:channel1:quit:")
    server.close()
    assert chat.finish()[0] == 0


def test_ctrl_c_quits_like_quit(server, start_client):
    chat = start_client(server.port)
    chat.type("alice")
    server.login("alice")
    chat.wait_for_output("Your nickname is now: alice")
    chat.proc.send_signal(signal.SIGINT)
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert "Traceback" not in chat.errors
    assert output.endswith("Bye\n")


@pytest.mark.parametrize("how", ["close", "reset"])
def test_the_server_going_away_exits_non_zero(server, start_client, how):
    chat = start_client(server.port, "--lang", "zh")
    chat.type("alice")  # stdin stays open: the client must not wait for it
    server.login("alice")
    chat.wait_for_output("你当前昵称为: alice")  # in the room
    server.reset() if how == "reset" else server.close()
    status, output = chat.finish()
    assert status == 1
    assert output.endswith("服务器连接已断开 \n")


def test_the_server_going_away_before_answering_the_nickname_exits_non_zero(server, start_client):
    chat = start_client(server.port)
    chat.type("alice")
    server.expect("individual::changeNameFirst:alice")
    server.close()
    status, output = chat.finish()
    assert status == 1
    assert "The server closed the connection" in output


def test_a_truncated_frame_is_the_server_going_away(server, start_client):
    chat = start_client(server.port)
    chat.type("alice")
    server.login("alice")
    server.conn.sendall(b"\x10\x00")  # the original client never exited after this
    server.close()
    assert chat.finish()[0] == 1


@pytest.mark.parametrize(
    ("length", "reason"),
    [(-1, "negative frame length -1"), (2**31 - 1, "frame of 2147483647 bytes exceeds the limit of 1048576")],
)
def test_a_frame_of_impossible_length_is_reported_as_malformed(server, start_client, length, reason):
    chat = start_client(server.port, "--name", "alice")
    server.login("alice")
    server.conn.sendall(struct.pack("<i", length) + b"xxxx")  # the connection stays open
    status, output = chat.finish()
    assert status == 1
    assert f"The server sent a malformed frame ({reason}): disconnected\n" in output
    assert "The server closed the connection" not in output


def test_after_a_malformed_frame_the_client_reconnects_if_it_may(server, start_client):
    chat = start_client(server.port, "--name", "alice", "--reconnect", "--lang", "zh")
    server.login("alice")
    server.conn.sendall(struct.pack("<i", -7))
    chat.wait_for_output("服务器发送了格式错误的数据帧(negative frame length -7),连接已断开\n")
    server.close()
    server.login("alice")  # a new connection, and the name back
    chat.end_input()
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert "秒后重新连接(第1次)..." in output


def test_an_unparseable_frame_is_shown_and_the_client_keeps_working(server, start_client):
    chat = start_client(server.port, "--lang", "zh")
    chat.type("alice")
    server.login("alice")
    server.send("信息格式错误")
    server.send("channel:channel1:bob:still here")
    chat.wait_for_output("< bob >still here")
    chat.type("hello")
    server.chat("alice", "hello")
    chat.type("./quit")
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert re.search(STAMP + "< 系统消息 > 信息格式错误\n", output)


def test_a_frame_that_is_not_utf8_is_reported_and_skipped(server, start_client):
    chat = start_client(server.port)
    chat.type("alice")
    server.login("alice")
    server.conn.sendall(struct.pack("<i", 2) + b"\xff\xfe")
    server.send("channel:channel1:bob:after")
    chat.wait_for_output("< bob > after")
    chat.end_input()
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert "< System > Message is not valid UTF-8" in output


def test_escape_sequences_from_peers_are_made_visible(server, start_client):
    chat = start_client(server.port, "--lang", "zh")
    chat.type("alice")
    server.login("alice")
    server.send("channel:channel1:\x1b[2Jbob:\x1b[31mred\x07\rover")
    chat.wait_for_output("over")
    chat.end_input()
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert "\x1b" not in output and "\r" not in output and "\x07" not in output
    # The CR starts a line of its own, indented under the sender.
    assert "< ^[[2Jbob >^[[31mred^G\n" + " " * 25 + "over\n" in output


def test_a_forged_chat_message_cannot_pose_as_other_lines(server, start_client):
    chat = start_client(server.port, "--name", "alice", "--no-color")
    server.login("alice")
    server.send("channel:channel1:mallory:" + FORGERY)
    chat.wait_for_output("hunter2\n")
    chat.end_input()
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    shown = output.splitlines()
    assert not [line for line in shown if line.startswith("[21:13]")], output
    assert re.search(r"\[\d\d:\d\d\] < mallory > ok\n {20}\[21:13\] < System > User left: mallory\n", output)
    assert " " * 20 + "[21:13] < bob > my password is hunter2\n" in output


@pytest.mark.parametrize(
    ("lang", "said"),
    [
        ("en", "Could not connect to 127.0.0.1:{port}: connection refused\n"),
        ("zh", "服务器连接失败 127.0.0.1:{port}: connection refused\n"),
    ],
)
def test_an_unreachable_server_exits_non_zero_and_says_where_it_tried(start_client, lang, said):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connecting is refused
        chat = start_client(port, "--name", "alice", "--lang", lang)
        status, output = chat.finish()
    assert status == 1
    assert output == said.format(port=port)


@pytest.mark.parametrize(
    ("address", "shown"),
    [
        (("127.0.0.1", 9533), "127.0.0.1:9533"),
        (("::1", 9527), "[::1]:9527"),
        (("chat.example", 1), "chat.example:1"),
    ],
)
def test_an_address_is_shown_as_host_and_port(address, shown):
    assert client.format_address(address) == shown


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (TimeoutError("timed out"), "timed out"),
        (socket.gaierror(-2, "Name or service not known"), "name or service not known"),
        (OSError(), "OSError"),
    ],
)
def test_connection_errors_are_worded_briefly(error, said):
    assert client.describe_error(error) == said


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--port", "-1"),
        ("--port", "0"),
        ("--port", "65536"),
        ("--port", "http"),
        ("--host", ""),
        ("--host", "two words"),
        ("--host", "bad_host!"),
        ("--host", "a..b"),
        ("--host", "[::1"),
    ],
)
def test_a_bad_port_or_host_is_a_usage_error_that_names_the_option(capsys, option, value):
    with pytest.raises(SystemExit) as exited:
        client.parse_args([option, value])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {option}:" in error
    assert repr(value) in error


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("localhost", "localhost"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("10.0.0.7", "10.0.0.7"),
        ("chat.example.org.", "chat.example.org."),
        ("例え.jp", "例え.jp"),
        ("my_host", "my_host"),
    ],
)
def test_good_hosts_are_accepted(value, host):
    assert client.parse_args(["--host", value]).host == host


@pytest.mark.parametrize("port", ["1", "9527", "65535"])
def test_good_ports_are_accepted(port):
    assert client.parse_args(["--port", port]).port == int(port)


def test_a_bad_port_exits_2_before_connecting(start_client):
    chat = start_client(-1, "--name", "alice")  # start_client passes --port first
    status, output = chat.finish()
    assert (status, output) == (2, "")
    assert "argument --port: must be a port number from 1 to 65535, not '-1'" in chat.errors


def test_main_parses_the_documented_options():
    args = client.parse_args(["--host", "::1", "--port", "1234", "--lang", "zh", "-v"])
    assert (args.host, args.port, args.lang, args.verbose) == ("::1", 1234, "zh", True)
    defaults = client.parse_args([])
    assert (defaults.host, defaults.port, defaults.lang, defaults.verbose) == ("127.0.0.1", 9527, "en", False)


# --- the program against the live server (tests/conftest.py: chat_server, connect) --------


def test_at_the_end_of_input_the_client_waits_for_the_echo_of_its_last_line(server, start_client):
    chat = start_client(server.port, "--name", "alice")
    server.login("alice")
    chat.type("hello")
    chat.end_input()
    server.expect("channel:channel1::hello")
    # Waiting for something not to happen needs a bound: the client must not quit before the echo.
    server.conn.settimeout(0.5)
    with pytest.raises(TimeoutError):
        server.recv()
    server.conn.settimeout(TIMEOUT)
    server.send("channel:channel1:alice:hello")
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert re.search(r"< alice > hello\nBye\n$", output)


def test_at_the_end_of_input_a_server_that_does_not_answer_is_not_waited_for_long(server, start_client):
    chat = start_client(server.port, "--name", "alice")
    server.login("alice")
    chat.type("hello", "/who")
    chat.end_input()
    server.expect("channel:channel1::hello")
    server.expect("individual:alice:who:")
    server.expect("channel:channel1:quit:")  # within the bound (FakeServer's TIMEOUT is longer)
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert output.endswith("Bye\n")


def test_the_server_going_away_before_answering_the_last_lines_exits_1(server, start_client):
    chat = start_client(server.port, "--name", "alice")
    server.login("alice")
    chat.type("hello")
    chat.end_input()
    server.expect("channel:channel1::hello")
    server.close()
    status, output = chat.finish()
    assert status == 1
    assert output.endswith("The server closed the connection\n")


def test_live_every_line_of_a_pipe_is_answered_before_the_client_leaves(chat_server, connect, start_client):
    bob = connect()
    bob.login("bob")
    chat = start_client(chat_server.port, "--name", "alice")
    chat.wait_for_output("Your nickname is now: alice")
    chat.type("/who", "/msg bob psst", "./online", "/top", "./menu", "/msg nobody hi", "first", "last")
    chat.end_input()
    bob.expect("channel:channel1:系统消息:User left: alice\n")
    status, output = chat.finish()
    assert status == 0
    for answer in (
        "< System > Online (2): alice, bob\n",
        "[private] < you -> bob > psst\n",
        "< System > Users online: 2\n",
        "Activity ranking",
        "./cd1 or ./menu",
        "There is no user < nobody >\n",
        "< alice > first\n",
    ):
        assert answer in output, answer
    # The goodbye after every answer.  Not necessarily after "last": the
    # private echo is sent once the reader's batch is written, and the echo of
    # "last" may come first through the listener.
    assert "< alice > last\n" in output and output.endswith("\nBye\n")


def test_live_nickname_message_online_and_quit(chat_server, connect, start_client):
    bob = connect()
    bob.login("bob")
    chat = start_client(chat_server.port)
    chat.type("alice", "hello", "./online")
    bob.expect("channel:channel1:alice:hello\n")
    chat.wait_for_output("< alice > hello\n")
    chat.wait_for_output("< System > Users online: 2\n")
    chat.type("./quit")
    status, output = chat.finish()
    assert status == 0
    assert "Your nickname is now: alice\n" in output
    assert output.endswith("Bye\n")
    bob.expect("channel:channel1:系统消息:User left: alice\n")


def test_live_a_taken_nickname_is_asked_again(chat_server, connect, start_client):
    first = connect()
    first.login("alice")
    chat = start_client(chat_server.port)
    chat.type("alice", "alice2", "hi")
    first.expect("channel:channel1:alice2:hi\n")
    chat.end_input()
    status, output = chat.finish()
    assert status == 0
    assert output.count("Enter your nickname: ") == 2
    assert "Your nickname is now: alice2\n" in output
    assert "Unknown error" not in output


def test_live_rename(chat_server, connect, start_client):
    watcher = connect()
    watcher.login("watcher")
    chat = start_client(chat_server.port)
    chat.type("alice", "./cd2", "bobby")
    chat.wait_for_output("Your nickname is now: bobby")
    chat.type("after")
    watcher.expect("channel:channel1:bobby:after\n")
    chat.end_input()
    assert chat.finish()[0] == 0


def test_live_end_of_input_leaves_the_room(chat_server, connect, start_client):
    watcher = connect()
    watcher.login("watcher")
    chat = start_client(chat_server.port)
    chat.type("carol")
    chat.end_input()
    watcher.expect("channel:channel1:系统消息:User left: carol\n")
    status, output = chat.finish()
    assert status == 0
    assert output.endswith("Bye\n")


def test_live_server_shutdown_exits_non_zero(chat_server, start_client):
    chat = start_client(chat_server.port)
    chat.type("dave")
    chat.wait_for_output("Your nickname is now: dave")
    chat_server.shutdown()
    status, output = chat.finish()
    assert status == 1
    assert "The server closed the connection" in output


# --- private messages, who, history, ranking (parse_frame) -----------------------------


@pytest.mark.parametrize(
    ("payload", "en", "zh"),
    [
        ("individual:bob:private:psst\n", "[15:04] [private] < bob > psst", T + "[私聊] < bob >psst"),
        (
            "individual:bob:privateSent:psst\n",
            "[15:04] [private] < you -> bob > psst",
            T + "[私聊] < 我 -> bob >psst",
        ),
        (
            "individual:alice:系统消息:Online (3): alice, bob, carol\n",
            "[15:04] < System > Online (3): alice, bob, carol",
            T + "< 系统消息 >Online (3): alice, bob, carol",
        ),
        (
            "individual:alice:系统消息:There is no user < bob >\n",
            "[15:04] < System > There is no user < bob >",
            T + "< 系统消息 >There is no user < bob >",
        ),
        (
            "channel:channel1:系统消息:Activity ranking\n #1 : alice (12)\n #2 : bob (3)\n\n",
            "[15:04] < System > Activity ranking\n #1 : alice (12)\n #2 : bob (3)",
            T + "< 系统消息 > Activity ranking\n #1 : alice (12)\n #2 : bob (3)",
        ),
    ],
)
def test_new_message_kinds_are_rendered(payload, en, zh):
    assert lines(payload, "en") == (en,)
    assert lines(payload, "zh") == (zh,)


def test_a_private_message_keeps_colons_in_its_text_and_cannot_pose_as_a_refusal():
    incoming = parse_frame("individual:bob:private:a:changeNameFirst0:b\n", "en", NOW)
    assert incoming.lines == ("[15:04] [private] < bob > a:changeNameFirst0:b",)
    assert incoming.event is None


def test_a_history_line_has_its_own_time_and_is_marked():
    sent = datetime(2024, 5, 6, 9, 30)
    incoming = parse_frame(f"history:{int(sent.timestamp())}:bob:good morning\n", "en", NOW)
    assert incoming.lines == ("[09:30] (history) < bob > good morning",)
    assert (incoming.public, incoming.sent_at) == (("bob", "good morning"), int(sent.timestamp()))
    assert all("history" in style for style, _ in incoming.styled[0])
    zh = parse_frame(f"history:{int(sent.timestamp())}:bob:早\n", "zh", NOW)
    assert zh.lines == ("【  09:30  】(历史) < bob >早",)


def test_a_history_line_from_another_day_says_which_day():
    sent = datetime(2024, 5, 4, 23, 59)
    assert lines(f"history:{int(sent.timestamp())}:bob:late\n", "en") == (
        "[05-04 23:59] (history) < bob > late",
    )


@pytest.mark.parametrize("payload", ["history:soon:bob:hi\n", "history:99999999999999999999:bob:hi\n"])
def test_a_history_line_with_a_bad_time_is_dropped(payload):
    assert parse_frame(payload, "en", NOW) == client.Incoming(())


def test_history_and_chat_text_from_the_network_is_sanitised():
    sent = int(datetime(2024, 5, 6, 9, 30).timestamp())
    for payload in (f"history:{sent}:\x1b[31mbob:\x1b[2J\n", "individual:\x1bbob:private:\x07\n"):
        for colour in (False, True):
            shown = client.render(parse_frame(payload, "en", NOW).styled[0], colour)
            assert not re.search(r"\x1b(?!\[[0-9;]*m)|[\x00-\x08\x0b-\x1a\x1c-\x1f\x7f]", shown), shown
            assert "^[[31mbob" in shown or "^[bob" in shown


# --- styles and colours ---------------------------------------------------------------------


def test_styled_fragments_join_to_the_plain_text():
    line = client.styled("en", "chat_line", "", name=("name", "bob"), text="hi")
    assert client.plain(line) == client.text("en", "chat_line", name="bob", text="hi")
    assert line == (("", "< "), ("name", "bob"), ("", " > "), ("", "hi"))


def test_without_colour_a_line_is_its_plain_text():
    incoming = parse_frame("channel:channel1:bob:hi\n", "zh", NOW, me="alice")
    assert client.render(incoming.styled[0], False) == T + "< bob >hi"


def test_names_have_a_stable_colour_of_their_own():
    assert client.name_colour("bob") == client.name_colour("bob")
    assert len({client.name_colour(f"user{i}") for i in range(50)}) > 4
    shown = client.render(parse_frame("channel:channel1:bob:hi\n", "en", NOW).styled[0], True)
    assert f"\x1b[1;{client.name_colour('bob')}mbob\x1b[0m" in shown
    assert re.sub(r"\x1b\[[0-9;]*m", "", shown) == "[15:04] < bob > hi"


def test_own_private_system_and_history_lines_are_set_apart_by_style():
    def styles(payload, me=""):
        return {style for style, _ in parse_frame(payload, "en", NOW, me).styled[0]}

    sent = int(datetime(2024, 5, 6, 9, 30).timestamp())
    assert "me" in styles("channel:channel1:alice:hi\n", me="alice")
    assert "me" not in styles("channel:channel1:bob:hi\n", me="alice")
    assert "private" in styles("individual:bob:private:psst\n")
    assert "system" in styles("channel:channel1:系统消息:User < bob > joined!\n")
    assert "history" in styles(f"history:{sent}:bob:hi\n")
    # Own lines look the same as anybody's without colours (the Go client's bytes).
    own = parse_frame("channel:channel1:alice:hi\n", "zh", NOW, me="alice")
    assert own.lines == (T + "< alice >hi",)


@pytest.mark.parametrize(
    ("option", "environ", "terminal", "expected"),
    [
        (False, {}, True, True),
        (False, {}, False, False),
        (True, {}, True, False),
        (False, {"NO_COLOR": "1"}, True, False),
        (False, {"NO_COLOR": ""}, True, True),  # no-color.org: set and not empty
        (False, {"TERM": "dumb"}, True, False),
    ],
)
def test_colours_only_on_a_terminal_without_no_color(option, environ, terminal, expected):
    assert client.use_colour(option, environ, terminal) is expected


# --- slash commands (parse_line) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "payload"),
    [
        ("/who", "individual:alice:who:"),
        ("/WHO", "individual:alice:who:"),
        ("/online", "channel:channel1:onlineList:"),
        ("/top", "channel:channel1:activity:"),
        ("/nick bobby", "individual:alice:changeName:bobby"),
        ("/msg bob hi there", "individual:bob::hi there"),
        ("/Msg bob   two  spaces ", "individual:bob::two  spaces"),
        ("/msg bob a:b", "individual:bob::a:b"),
        ("/msg a b c hi", "individual:a::b c hi"),  # unquoted, the name is the first word
        ('/msg "a b" hi', "individual:a b::hi"),
        ("/msg 'a b' hi there", "individual:a b::hi there"),
        ('/msg  "a  b"   spaced  out ', "individual:a  b::spaced  out"),
        ('/msg "it\'s me" hi', "individual:it's me::hi"),
        ("/msg 'say \"hi\"' ok", 'individual:say "hi"::ok'),
        ('/msg "bob" "quoted text"', 'individual:bob::"quoted text"'),
        ("//slash", "channel:channel1::/slash"),
        ("//", "channel:channel1::/"),
        ("./cd3", "channel:channel1:onlineList:"),  # the Go client's forms keep working
    ],
)
def test_slash_commands_become_payloads(line, payload):
    assert parse_line(go_trim_space(line), "alice") == Action(payload)


def test_slash_quit_quits():
    assert parse_line("/quit", "alice") == Action("channel:channel1:quit:", quit=True)


def test_slash_nick_without_a_name_asks_for_it_as_cd2():
    assert parse_line("/nick", "alice") == Action(ask_new_name=True)


def test_slash_help_lists_both_forms_and_sends_nothing():
    action = parse_line("/help", "alice", "en")
    assert action.payload is None
    for command in ("/msg", "/who", "/nick", "/top", "/online", "/quit", "./cd1", "./cd5", "./changeName"):
        assert command in action.notice
    assert "./cd4" in parse_line("/HELP", "alice", "zh").notice


def test_help_says_how_to_quote_a_name_with_spaces():
    assert '/msg "A NAME" TEXT' in parse_line("/help", "alice", "en").notice
    assert '/msg "名 字" 内容' in parse_line("/help", "alice", "zh").notice
    assert parse_line("/msg", "alice", "zh").notice == '用法: /msg 名字 内容, 名字含空格时加引号: /msg "名 字" 内容'


def test_a_quoted_names_private_limit_is_that_names():
    limit = client.private_limit("alice", "a b")
    assert parse_line('/msg "a b" ' + "x" * limit, "alice").payload == "individual:a b::" + "x" * limit
    assert parse_line('/msg "a b" ' + "x" * (limit + 1), "alice").payload is None


USAGE_MSG = 'Usage: /msg NAME TEXT, or /msg "A NAME" TEXT for a name with spaces'


@pytest.mark.parametrize(
    ("line", "notice"),
    [
        ("/frobnicate now", "Unknown command /frobnicate; /help lists the commands"),
        ("/", "Unknown command /; /help lists the commands"),
        ("/msg", USAGE_MSG),
        ("/msg bob", USAGE_MSG),
        ('/msg "a b"', USAGE_MSG),
        ('/msg "a b hi', USAGE_MSG),  # not closed
        ('/msg "" hi', USAGE_MSG),
        ('/msg "a b"hi', USAGE_MSG),
        ("/msg a:b hi", "A name cannot contain ':'"),
        ("/msg 'a:b c' hi", "A name cannot contain ':'"),
    ],
)
def test_bad_slash_commands_are_told_locally_and_send_nothing(line, notice):
    assert parse_line(line, "alice", "en") == Action(notice=notice)


def test_a_private_text_too_long_for_its_delivery_or_echo_is_not_sent():
    limit = client.private_limit("alice", "bob")
    assert limit == MAX_FRAME - len(b"individual:bob:privateSent:\n")
    assert parse_line("/msg bob " + "x" * limit, "alice").payload == "individual:bob::" + "x" * limit
    refused = parse_line("/msg bob " + "x" * (limit + 1), "alice")
    assert refused.too_long
    assert refused.notice.startswith(f"Message too long: {limit + 1} bytes, at most {limit} ")


@pytest.mark.parametrize("line", ["hello", "/msg bob hi", "/frobnicate", "/msg", "./cd2", ""])
def test_only_an_over_long_line_is_too_long(line):
    assert not parse_line(line, "alice").too_long


# --- history after a reconnect (HistoryFilter) ------------------------------------------------


def test_history_is_all_shown_the_first_time():
    seen = client.HistoryFilter()
    assert seen.admit(100, "bob", "hi") and seen.admit(101, "bob", "hi")


def test_history_replayed_after_a_reconnect_shows_only_what_was_missed():
    seen = client.HistoryFilter(slack=5)
    assert seen.admit(100, "bob", "old")  # history on the first connection
    seen.saw("bob", "hi")  # live
    seen.saw("carol", "hi")
    seen.lost(200.0)
    replay = [
        (100, "bob", "old"),
        (150, "bob", "hi"),
        (199, "dave", "lost in the break"),
        (150, "carol", "hi"),
    ]
    replay += [(210, "bob", "hi")]  # said again while we were away
    assert [seen.admit(*entry) for entry in replay] == [False, False, True, False, True]
    # A second reconnect: everything shown so far counts.
    seen.lost(300.0)
    assert [seen.admit(*entry) for entry in replay] == [False, False, False, False, False]


def test_each_line_seen_hides_one_replayed_copy():
    seen = client.HistoryFilter()
    seen.saw("bob", "ok")
    seen.lost(200.0)
    assert [seen.admit(150, "bob", "ok"), seen.admit(160, "bob", "ok")] == [False, True]


def test_main_parses_the_new_options():
    args = client.parse_args(["--name", "alice", "--no-color", "--reconnect"])
    assert (args.name, args.no_color, args.reconnect) == ("alice", True, True)
    assert client.parse_args(["--no-reconnect"]).reconnect is False
    defaults = client.parse_args([])
    assert (defaults.name, defaults.no_color, defaults.reconnect) == (None, False, None)


# --- the program in pipe mode: slash commands, --name, reconnecting ------------------------------


def test_name_option_skips_the_prompt(server, start_client):
    chat = start_client(server.port, "--name", "alice")
    server.login("alice")
    chat.type("hi")
    server.chat("alice", "hi")
    chat.end_input()
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert "Enter your nickname" not in output


def test_a_taken_name_option_is_asked_again(server, start_client):
    chat = start_client(server.port, "--name", "alice")
    server.expect("individual::changeNameFirst:alice")
    server.send("individual:guest-1:changeNameFirst0:That name is taken")
    chat.type("alice2")
    server.login("alice2")
    chat.end_input()
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert "That name is taken\nEnter your nickname: " in output


def test_slash_commands_are_sent_and_local_ones_are_not(server, start_client):
    chat = start_client(server.port, "--name", "alice")
    server.login("alice")
    chat.type(
        "/help", "/bogus", "/msg bob", "/who", "/msg bob hi there", "/top", "/online", "//x", "/nick bobby"
    )
    server.answer("individual:alice:who:", "individual:alice:系统消息:Online (1): alice")
    server.answer("individual:bob::hi there", "individual:bob:privateSent:hi there")
    server.answer("channel:channel1:activity:", "channel:channel1:系统消息:Activity ranking\n #1 : alice (2)\n")
    server.answer("channel:channel1:onlineList:", "channel:channel1:alice:Users online: 1")
    server.chat("alice", "/x")
    server.answer("individual:alice:changeName:bobby", "individual:bobby:changeName1:bobby")
    chat.wait_for_output("Your nickname is now: bobby")
    chat.type("/who", "/quit")
    server.answer("individual:bobby:who:", "individual:bobby:系统消息:Online (1): bobby")
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert "/msg NAME TEXT" in output and "./cd1 or ./menu" in output
    assert "Unknown command /bogus" in output
    assert USAGE_MSG in output


def test_no_colours_when_stdout_is_not_a_terminal(server, start_client):
    chat = start_client(server.port, "--name", "alice")
    server.login("alice")
    sent = int(datetime.now().timestamp())
    server.send(f"history:{sent}:bob:earlier")
    server.send("channel:channel1:bob:hi")
    server.send("channel:channel1:alice:mine")
    server.send("individual:bob:private:psst")
    chat.wait_for_output("psst")
    chat.end_input()
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert "\x1b" not in output
    assert re.search(r"\[\d\d:\d\d\] \(history\) < bob > earlier\n", output)
    assert re.search(r"\[\d\d:\d\d\] \[private\] < bob > psst\n", output)


def test_pipe_mode_reconnects_only_when_asked_and_takes_the_name_back(server, start_client):
    chat = start_client(server.port, "--name", "alice", "--reconnect")
    server.login("alice")
    server.send("channel:channel1:bob:before")
    chat.wait_for_output("< bob > before")
    server.close()
    chat.wait_for_output("Reconnecting in 0.5 s (attempt 1)...")
    chat.type("while away")  # held, sent once the name is back
    server.expect("individual::changeNameFirst:alice")
    server.send("individual:alice:changeNameFirst1:alice")
    server.chat("alice", "while away")
    sent = int(datetime.now().timestamp())
    server.send(f"history:{sent - 1}:bob:before")  # seen before the break: not shown again
    server.send(f"history:{sent}:bob:during")
    chat.wait_for_output("< bob > during")
    chat.end_input()
    server.expect("channel:channel1:quit:")
    server.close()
    status, output = chat.finish()
    assert status == 0
    assert "Reconnected to the server\n" in output
    assert "Not connected: this will be sent once reconnected" in output
    assert output.count("before") == 1
    assert output.count("Your nickname is now: alice") == 2


def test_a_name_taken_while_away_is_said_and_asked_again(server, start_client):
    chat = start_client(server.port, "--name", "alice", "--reconnect")
    server.login("alice")
    server.close()
    server.expect("individual::changeNameFirst:alice")
    server.send("individual:guest-9:changeNameFirst0:That name is taken")
    chat.wait_for_output("Could not take the name < alice > back")
    chat.type("alice2")
    server.login("alice2")
    chat.type("hi")
    server.chat("alice2", "hi")
    chat.end_input()
    server.expect("channel:channel1:quit:")
    server.close()
    assert chat.finish()[0] == 0


def test_end_of_input_while_reconnecting_leaves(start_client):
    fake = FakeServer()
    try:
        chat = start_client(fake.port, "--name", "alice", "--reconnect")
        fake.login("alice")
        fake.stop()  # nobody listens any more: every attempt fails
        chat.wait_for_output(f"Could not reconnect to 127.0.0.1:{fake.port}: connection refused")
        chat.end_input()
        status, output = chat.finish()
    finally:
        fake.stop()
    assert status == 0
    assert output.endswith("Bye\n")


# --- the new kinds against the live server ---------------------------------------------------------


def test_live_who_private_messages_and_history(chat_server, connect, start_client):
    bob = connect()
    bob.login("bob")
    bob.send("channel:channel1::said before alice came")
    bob.expect("channel:channel1:bob:said before alice came\n")
    chat = start_client(chat_server.port, "--name", "alice")
    chat.wait_for_output("(history) < bob > said before alice came\n")
    chat.type("/who", "/msg bob psst", "/msg nobody hello?")
    chat.wait_for_output("< System > Online (2): alice, bob\n")
    bob.expect("individual:alice:private:psst\n")
    chat.wait_for_output("[private] < you -> bob > psst\n")
    chat.wait_for_output("< System > There is no user < nobody >\n")
    bob.send("individual:alice::back at you")
    chat.wait_for_output("[private] < bob > back at you\n")
    chat.type("/top")
    chat.wait_for_output(" (")
    chat.end_input()
    status, output = chat.finish()
    assert status == 0
    assert re.search(r"#\d : alice \(\d+\)", output)
    assert output.index("Commands are case-insensitive") < output.index("(history)")  # the banner first


def test_reconnect_waits_double_each_attempt_up_to_10_s():
    assert [client.reconnect_delay(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert client.reconnect_delay(10_000) == 10


# --- without its dependencies -----------------------------------------------------------------


def test_without_prompt_toolkit_the_client_says_what_to_run(tmp_path):
    # A package that fails to import stands in for a Python without the client's dependencies.
    broken = tmp_path / "prompt_toolkit"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'prompt_toolkit'\")\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path), PYTHONIOENCODING="utf-8")
    done = subprocess.run(
        [sys.executable, str(CLIENT), "--port", "1"],
        check=False,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1
    assert "make client" in done.stderr and "pip install ." in done.stderr


def test_the_zh_banner_names_what_cd4_does():
    # Original: " * ./cd4 或 ./activity 在线用户数量查询", the label of ./cd3 again.
    banner = client.text("zh", "banner").splitlines()
    assert " * ./cd4 或 ./activity 查询活跃排行" in banner
    assert " * ./cd3 或 ./online 在线用户数量查询" in banner
    # The server's menu stays the original's, byte for byte.
    assert "*./cd4 或 ./ activity 查询活跃排行\n" in client.text("zh", "menu")


# --- what the server still owes us (Awaited) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        ("channel:channel1::hello", client.ECHO),
        ("channel:channel1:onlineList:", client.COUNT),
        ("channel:channel1:activity:", client.RANKING),
        ("individual:alice:who:", client.NOTICE),
        ("individual:alice:menu:", client.NOTICE),
        ("individual:bob::psst", client.PRIVATE_ECHO),
        ("individual:alice:changeName:bobby", client.RENAME),
        ("individual::changeNameFirst:alice", None),  # wait_for_answer waits for that one
        ("channel:channel1:quit:", None),
    ],
)
def test_what_a_request_waits_for(payload, kind):
    assert client.request_kind(payload) == kind


@pytest.mark.parametrize(
    ("payload", "answers"),
    [
        ("channel:channel1:alice:hello\n", (client.ECHO,)),
        ("channel:channel1:alice:Users online: 2\n", (client.COUNT, client.ECHO)),
        ("channel:channel1:alice:当前在线人数为2人\n", (client.COUNT, client.ECHO)),
        ("channel:channel1:bob:hello\n", ()),
        ("channel:channel1:系统消息:Activity ranking\n #1 : bob (3)\n\n", (client.RANKING,)),
        (ACTIVITY_FRAME, (client.RANKING,)),
        ("channel:channel1:系统消息:User < bob > joined!\n", ()),
        ("individual:bob:privateSent:psst\n", (client.PRIVATE_ECHO,)),
        ("individual:bob:private:psst\n", ()),
        ("individual:bobby:changeName1:bobby\n", (client.RENAME,)),
        ("individual:alice:changeNameFirst0:That name is taken\n", (client.RENAME,)),
        ("individual:alice:系统消息:Online (1): alice\n", client.NOTICE_ANSWERS),
        ("信息格式错误\n", client.NOTICE_ANSWERS),  # the original server's answer to a mark it does not know
        (f"history:{int(NOW.timestamp())}:alice:hello\n", ()),
    ],
)
def test_which_request_a_frame_answers(payload, answers):
    assert parse_frame(payload, "en", NOW, me="alice").answers == answers


def test_a_notice_answers_a_request_that_has_no_answer_of_its_own():
    awaited = client.Awaited()
    for kind in (client.ECHO, client.NOTICE, client.PRIVATE_ECHO):
        awaited.sent(kind)
    assert awaited.answer((client.ECHO,))
    assert not awaited.answer((client.ECHO,))  # another user's echo of the same: nothing owed
    assert awaited.answer(client.NOTICE_ANSWERS)  # the who reply
    assert awaited
    assert awaited.answer(client.NOTICE_ANSWERS)  # "There is no user < bob >"
    assert not awaited
    assert not awaited.answer(client.NOTICE_ANSWERS)  # unprompted


def test_nothing_is_owed_on_a_connection_that_is_gone():
    awaited = client.Awaited()
    awaited.sent(client.COUNT)
    assert awaited.pending(client.COUNT)
    awaited.clear()
    assert not awaited and not awaited.pending(client.COUNT)


@pytest.mark.parametrize(
    ("payload", "me", "counting", "en", "zh"),
    [
        # Our own count, asked for: the server speaks.
        ("channel:channel1:alice:Users online: 2\n", "alice", True, "< System > Users online: 2", None),
        ("channel:channel1:alice:当前在线人数为2人\n", "alice", True, None, "< 系统消息 > 当前在线人数为2人"),
        # Not asked for, someone else's (the original server broadcasts every count), or not a count: chat.
        ("channel:channel1:alice:Users online: 2\n", "alice", False, "< alice > Users online: 2", None),
        ("channel:channel1:bob:当前在线人数为2人\n", "alice", True, None, "< bob >当前在线人数为2人"),
        ("channel:channel1:alice:Users online: many\n", "alice", True, "< alice > Users online: many", None),
        ("channel:channel1:alice:hello\n", "alice", True, "< alice > hello", None),
    ],
)
def test_only_the_count_we_asked_for_is_a_system_line(payload, me, counting, en, zh):
    lang, shown = ("en", en) if en is not None else ("zh", zh)
    incoming = parse_frame(payload, lang, NOW, me, counting=counting)
    assert incoming.lines == ((T if lang == "zh" else "[15:04] ") + shown,)
    is_system = shown.startswith(("< System >", "< 系统消息 >"))
    assert ("system" in {style for style, _ in incoming.styled[0]}) is is_system
    assert (incoming.public is None) is is_system  # a count is no chat line

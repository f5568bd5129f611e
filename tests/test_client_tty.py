"""client.py in a real pseudo-terminal: the line editor, colours, reconnecting.

The client runs as ``python client.py`` under pexpect, against live
in-process servers (tests/conftest.py).  What it writes is fed to a pyte
screen, so the tests look at what a user would see, and is also kept raw, to
look for colour codes.  Waiting is always for output (or for a frame), never
a sleep.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from pathlib import Path

import pexpect
import pyte
import pytest
from conftest import RawClient, free_port

import client
from framing import FrameReader, encode

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "client.py"
TIMEOUT = 10.0
ROWS, COLS = 60, 160


def colour_codes(raw: str) -> list[str]:
    """The SGR sequences in ``raw`` that set a colour, bold or faint text."""
    found = []
    for match in re.finditer(r"\x1b\[([0-9;]*)m", raw):
        codes = {int(code) for code in match.group(1).split(";") if code}
        if codes & {1, 2, *range(30, 39), *range(40, 49), *range(90, 98), *range(100, 108)}:
            found.append(match.group(0))
    return found


class Terminal:
    """One client in a pty: what it prints goes to a pyte screen and a raw transcript."""

    def __init__(self, args: list[str], colour: bool, shell: str | None = None) -> None:
        env = dict(os.environ, TERM="xterm", PYTHONIOENCODING="utf-8", PROMPT_TOOLKIT_NO_CPR="1")
        env.pop("NO_COLOR", None)
        if not colour:
            env["NO_COLOR"] = "1"
        command = [sys.executable, str(CLIENT), *args]
        if shell is not None:  # run the client from a shell, then `shell` after it
            command = ["/bin/sh", "-c", " ".join(map(quote, command)) + "; " + shell]
        self.child = pexpect.spawn(
            command[0], command[1:], env=env, encoding="utf-8", timeout=TIMEOUT, dimensions=(ROWS, COLS)
        )
        self.screen = pyte.Screen(COLS, ROWS)
        self.stream = pyte.Stream(self.screen)
        self.raw = ""
        self.ended = False

    def _pump(self, timeout: float) -> None:
        """Take what the client printed (waiting at most ``timeout`` for something)."""
        try:
            data = self.child.read_nonblocking(65536, timeout)
        except pexpect.TIMEOUT:
            return
        except pexpect.EOF:
            self.ended = True
            return
        self.raw += data
        self.stream.feed(data)

    @property
    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    @property
    def cursor_line(self) -> str:
        return self.screen.display[self.screen.cursor.y].rstrip()

    def wait(self, condition, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.ended:
                raise AssertionError(f"{what}: not seen; screen:\n{self.text}")
            self._pump(remaining)

    def wait_for(self, needle: str) -> None:
        """Wait until ``needle`` is on the screen."""
        self.wait(lambda: needle in self.text, repr(needle))

    def wait_for_prompt(self, prompt: str) -> None:
        """Wait until the line being edited (the cursor's) is ``prompt``."""
        self.wait(lambda: self.cursor_line == prompt.rstrip(), f"prompt {prompt!r}")

    def send(self, keys: str) -> None:
        self.child.send(keys)

    def finish(self) -> int:
        """Wait for the end of output and the exit; the exit status."""
        self.wait(lambda: self.ended, "the end of output")
        self.child.close()
        return self.child.exitstatus

    def kill(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
        self.child.close()


def quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


@pytest.fixture(params=["fake"])
def redis_kind(request) -> str:
    """The client does not care which Redis the server uses: fakeredis only, to stay fast."""
    return request.param


@pytest.fixture
def terminal():
    """Start clients in pseudo-terminals; any still running after the test is killed."""
    started = []

    def start(port: int, *args: str, colour: bool = False, shell: str | None = None) -> Terminal:
        term = Terminal(["--port", str(port), *args], colour, shell)
        started.append(term)
        return term

    yield start
    for term in started:
        term.kill()


def test_a_half_typed_line_survives_messages_arriving(chat_server, connect, terminal):
    term = terminal(chat_server.port)
    term.wait_for_prompt("Enter your nickname:")
    assert "Connected to the server" not in term.text  # asked first, then connected
    term.send("alice\r")
    term.wait_for("Connected to the server")
    term.wait_for("Your nickname is now: alice")
    term.wait_for(" Also: /help")  # the banner
    term.wait_for_prompt("alice>")
    bob = connect()
    bob.login("bob")
    term.wait_for("User < bob > joined!")
    term.send("hello, wor")
    term.wait_for_prompt("alice> hello, wor")
    for i in range(3):
        bob.send(f"channel:channel1::interruption {i}")
    term.wait_for("< bob > interruption 2")
    # Each message on a line of its own, above the prompt, which still holds the half-typed line.
    term.wait_for_prompt("alice> hello, wor")
    shown = term.text.splitlines()
    for i in range(3):
        assert any(re.fullmatch(rf"\[\d\d:\d\d\] < bob > interruption {i}", line) for line in shown), shown
    assert not any("hello, wor" in line for line in shown[: term.screen.cursor.y])
    term.send("ld\r")
    bob.expect("channel:channel1:alice:hello, world\n")
    term.wait_for("< alice > hello, world")
    term.wait_for_prompt("alice>")  # the sent line is gone from the prompt: the echo shows it
    term.send("\x04")  # Ctrl-D on an empty line: leave
    bob.expect("channel:channel1:系统消息:User left: alice\n")
    assert term.finish() == 0
    assert "Bye" in term.text


def test_colours_on_a_terminal(chat_server, connect, terminal):
    bob = connect()
    bob.login("bob")
    term = terminal(chat_server.port, "--name", "alice", colour=True)
    term.wait_for_prompt("alice>")
    bob.send("channel:channel1::hi alice")
    term.wait_for("< bob > hi alice")
    term.send("/msg bob psst\r")
    term.wait_for("[private] < you -> bob > psst")
    term.send("\x04")
    assert term.finish() == 0
    assert f"\x1b[1;{client.name_colour('bob')}mbob\x1b[0m" in term.raw  # bob's name in bob's colour
    assert "\x1b[35mpsst\x1b[0m" in term.raw  # private: magenta
    assert "\x1b[33mUser < alice > joined!" in term.raw  # system: yellow
    assert "\x1b[1mhi" not in term.raw and "\x1b[2m[" in term.raw  # others' text plain, times dim
    assert colour_codes(term.raw)  # and the check below finds them


def test_without_reconnect_a_terminal_client_exits_1_when_the_server_goes_away(chat_server, terminal):
    term = terminal(chat_server.port, "--name", "alice", "--no-reconnect")
    term.wait_for_prompt("alice>")
    chat_server.shutdown()
    assert term.finish() == 1
    assert "The server closed the connection" in term.text
    assert "Reconnecting" not in term.text


@pytest.mark.parametrize("how", ["NO_COLOR", "--no-color"])
def test_no_colours_with_no_color(chat_server, connect, terminal, how):
    bob = connect()
    bob.login("bob")
    args = ["--name", "alice"] + (["--no-color"] if how == "--no-color" else [])
    term = terminal(chat_server.port, *args, colour=how != "NO_COLOR")
    term.wait_for_prompt("alice>")
    bob.send("channel:channel1::hi alice")
    bob.send("individual:alice::psst")
    term.wait_for("[private] < bob > psst")
    term.send("\x04")
    assert term.finish() == 0
    assert "< bob > hi alice" in term.raw  # no codes inside the line
    assert colour_codes(term.raw) == []


def test_reconnect_after_a_server_restart_takes_the_name_back(make_server, terminal):
    port = free_port()
    first = make_server(port=port)
    term = terminal(port, "--name", "alice")
    term.wait_for_prompt("alice>")
    term.send("half")  # a half-typed line stays through all of it
    term.wait_for_prompt("alice> half")
    first.shutdown()
    term.wait_for("The server is shutting down")
    term.wait_for("Reconnecting in 0.5 s (attempt 1)...")
    term.wait_for_prompt("(offline) alice> half")
    second = make_server(port=port)
    term.wait_for("Reconnected to the server")
    term.wait(lambda: term.text.count("Your nickname is now: alice") == 2, "the name taken back")
    term.wait_for_prompt("alice> half")
    watcher = RawClient(second.port)
    try:
        watcher.login("watcher")
        term.wait_for("User < watcher > joined!")
        term.send(" done\r")
        watcher.expect("channel:channel1:alice:half done\n")  # the same name, on the new server
    finally:
        watcher.close()
    term.send("/quit\r")
    assert term.finish() == 0


def test_ctrl_c_leaves_and_gives_the_terminal_back(chat_server, connect, terminal):
    watcher = connect()
    watcher.login("watcher")
    term = terminal(chat_server.port, "--name", "alice", shell='echo "status=$?"; stty -a')
    term.wait_for_prompt("alice>")
    term.send("typed but not sent")
    term.wait_for_prompt("alice> typed but not sent")
    term.send("\x03")  # Ctrl-C
    watcher.expect("channel:channel1:系统消息:User left: alice\n")
    term.wait_for("status=0")
    term.finish()
    settings = term.text.split("status=0", 1)[1]
    assert re.search(r"(?<![-\w])icanon\b", settings) and re.search(r"(?<![-\w])echo\b", settings), settings
    assert "typed but not sent" not in "".join(watcher.seen)



class ScriptedServer:
    """One connection speaking frames as the test says: like the original server, it forwards anything."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.conn = None

    def expect(self, payload: str) -> None:
        if self.conn is None:
            self.conn, _ = self.listener.accept()
            self.conn.settimeout(TIMEOUT)
            self.reader = FrameReader(self.conn)
        assert self.reader.read() == payload

    def send(self, payload: str) -> None:
        self.conn.sendall(encode(payload + "\n"))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


@pytest.fixture
def scripted():
    server = ScriptedServer()
    yield server
    server.close()


@pytest.mark.parametrize("colour", [True, False], ids=["colour", "no-color"])
def test_a_forged_chat_message_cannot_pose_as_other_lines(scripted, terminal, colour):
    args = ["--name", "alice"] + ([] if colour else ["--no-color"])
    term = terminal(scripted.port, *args, colour=colour)
    scripted.expect("individual::changeNameFirst:alice")
    scripted.send("individual:alice:changeNameFirst1:alice")
    term.wait_for_prompt("alice>")
    forged = "ok\n[21:13] < System > User left: mallory\n[21:13] < bob > my password is hunter2"
    scripted.send("channel:channel1:mallory:" + forged)
    term.wait_for("hunter2")
    shown = term.text.splitlines()
    assert not [line for line in shown if line.startswith("[21:13]")], term.text
    at = next(i for i, line in enumerate(shown) if line.endswith("< mallory > ok"))
    assert shown[at + 1 : at + 3] == [
        " " * 20 + "[21:13] < System > User left: mallory",
        " " * 20 + "[21:13] < bob > my password is hunter2",
    ]
    assert bool(colour_codes(term.raw)) is colour
    term.send("\x04")
    scripted.expect("channel:channel1:quit:")
    scripted.conn.close()
    assert term.finish() == 0


def test_an_over_long_line_stays_in_the_input_line_to_be_shortened(chat_server, connect, terminal):
    bob = connect()
    bob.login("bob")
    term = terminal(chat_server.port, "--name", "alice")
    term.wait_for_prompt("alice>")
    limit = client.chat_limit("alice")
    term.send("x" * (limit + 5) + "\r")
    term.wait_for(f"Message too long: {limit + 5} bytes, at most {limit} (4092 with names and fields)")
    # The text is still being edited: not sent, not erased.
    typed = term.text.split("Message too long")[0].split("alice> ", 1)[1]
    assert typed.replace("\n", "") == "x" * (limit + 5), term.text
    term.send("\x7f" * 5 + "\r")  # shortened by five: now it fits
    bob.expect("channel:channel1:alice:" + "x" * limit + "\n")
    term.wait(lambda: "Message too long" not in term.text, "the refusal gone")
    term.send("\x04")
    assert term.finish() == 0


def test_the_nickname_is_asked_before_connecting_even_with_no_server(terminal):
    port = free_port()  # nothing listens there
    term = terminal(port)
    term.wait_for_prompt("Enter your nickname:")
    term.send("alice\r")
    term.wait_for(f"Could not connect to 127.0.0.1:{port}: connection refused")
    assert term.finish() == 1


# --- rooms -------------------------------------------------------------------------------


@pytest.mark.parametrize("colour", [False, True], ids=["no-color", "colour"])
def test_the_prompt_shows_the_current_room_and_a_line_goes_there(chat_server, connect, terminal, colour):
    bob = connect()
    bob.login("bob")
    bob.send("channel:dev:join:")
    bob.expect("individual:bob:join1:dev\n")
    term = terminal(chat_server.port, "--name", "alice", colour=colour)
    term.wait_for_prompt("alice>")
    term.send("/join dev\r")
    term.wait_for_prompt("[dev] alice>")
    term.wait_for("Current room: dev")
    term.send("hi dev\r")
    bob.expect("channel:dev:alice:hi dev\n")
    term.wait_for("[dev] < alice > hi dev")
    bob.send("channel:dev::hello alice")
    term.wait_for("[dev] < bob > hello alice")
    term.send("/r channel1\r")
    term.wait_for_prompt("alice>")
    term.send("in the lobby\r")
    bob.expect("channel:channel1:alice:in the lobby\n")
    term.send("/room dev\r")
    term.wait_for_prompt("[dev] alice>")
    term.send("/part\r")
    term.wait_for("You left the room dev")
    term.wait_for_prompt("alice>")
    bob.expect("channel:dev:系统消息:User < alice > left the room\n")
    term.send("\x04")
    assert term.finish() == 0
    room = f"\x1b[{client.room_colour('dev')}mdev\x1b[0m"
    assert (room in term.raw) is colour  # the room's name in its colour, on screen and in the prompt
    assert bool(colour_codes(term.raw)) is colour


def test_a_reconnect_joins_the_rooms_again_and_keeps_the_current_one(make_server, terminal):
    port = free_port()
    first = make_server(port=port)
    term = terminal(port, "--name", "alice")
    term.wait_for_prompt("alice>")
    term.send("/join ops\r")
    term.wait_for_prompt("[ops] alice>")
    term.send("/join dev\r")
    term.wait_for_prompt("[dev] alice>")
    first.shutdown()
    term.wait_for_prompt("(offline) [dev] alice>")
    second = make_server(port=port)
    term.wait_for("Reconnected to the server")
    term.wait(lambda: term.text.count("User < alice > joined the room") == 4, "both rooms joined again")
    term.wait_for_prompt("[dev] alice>")
    watcher = RawClient(second.port)
    try:
        watcher.login("watcher")
        watcher.send("channel:dev:join:")
        watcher.expect("individual:watcher:join1:dev\n")
        term.send("back\r")
        watcher.expect("channel:dev:alice:back\n")
        watcher.send("channel:ops:who:")
        watcher.expect("individual:watcher:系统消息:In ops (1): alice\n")
    finally:
        watcher.close()
    term.send("/quit\r")
    assert term.finish() == 0


def test_up_arrow_never_brings_back_a_line_with_a_password(chat_server, connect, terminal):
    term = terminal(chat_server.port, "--name", "alice")
    term.wait_for_prompt("alice>")
    term.send("hello\r")
    term.wait_for("< alice > hello")
    term.send("/login nobody sesame-secret\r")
    term.wait_for("There is no account < nobody >")
    term.send("\x1b[A")  # up: the line before, not the login
    term.wait_for_prompt("alice> hello")
    assert "sesame-secret" not in term.cursor_line
    term.send("\x1b[A")
    term.wait_for_prompt("alice> hello")  # nothing older: the login was never kept
    term.send("\x15\x04")  # Ctrl-U, Ctrl-D
    assert term.finish() == 0

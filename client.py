"""redis-chatroom terminal client: the original Go ``client``, ported to threads.

The functions keep the names of their Go counterparts (``main``,
``getUserInput`` -> :func:`get_user_input`, ``readMsg`` -> :func:`read_msg`,
the input goroutine -> :func:`input_loop`).  The threads::

    main thread   connect; ask_nickname until the server accepts a name;
                  input_loop: each typed line -> one payload -> one sendall
      ├─ read_msg    frames from the server -> parse_frame -> print; tells the
      │              main thread what it must know (name accepted or refused,
      │              connection closed) through the Inbox
      └─ read_stdin  the one reader of standard input: every line, then an
                     end-of-input marker, into the same Inbox

The main thread blocks only on the :class:`Inbox`, never on the socket or on
stdin, so whichever comes first (a line, end of input, the server going away)
wakes it.  Lines that arrive while a nickname awaits the server's answer are
held back and replayed afterwards: on a pipe, the line after a refused
nickname is the next nickname.

What is decided lives in two pure functions, tested without any I/O:
:func:`parse_frame` (a received payload -> lines to print and a state change)
and :func:`parse_line` (a typed line -> the payload to send).

Fixed defects of the original, each also noted where it is fixed: a refused
first nickname is asked again; stdin has one reader, so lines that arrive
together are all sent; end of input quits instead of sending an error text
every 100 ms; a payload that does not split into four fields is shown instead
of stopping the reader; control characters from the network are made visible;
the exit status says whether the user left (0) or the server went away (1).
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import queue
import re
import socket
import sys
import threading
import time
from datetime import datetime
from typing import NamedTuple

import framing
from framing import MAX_FRAME, FrameError, FrameReader, InvalidUtf8
from protocol import (
    ACTIVITY,
    BROADCAST,
    CHANGE_NAME,
    CHANGE_NAME_FIRST,
    CHANGE_NAME_FIRST_OK,
    CHANGE_NAME_OK,
    CHANNEL,
    INDIVIDUAL,
    LANGUAGES,
    MENU,
    NAME_REFUSED,
    ONLINE_LIST,
    QUIT,
    RENAME_FAILED,
    SYSTEM,
    join_message,
    split_message,
    text,
)

logger = logging.getLogger("chatroom.client")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9527
CONNECT_TIMEOUT = 10.0
#: How long ``./quit`` waits for the server to close the connection.
QUIT_TIMEOUT = 2.0
#: Frames we accept from the server.  Larger than what the Go programs can
#: decode (MAX_FRAME) on purpose: showing an oversized frame beats dropping
#: the connection, and the stream stays in step either way.
MAX_INCOMING = 1 << 20

QUIT_PAYLOAD = join_message(CHANNEL, BROADCAST, QUIT, "")

# What the main thread waits for; the kinds of Inbox items.
LINE = "line"  # a line of input (value: the line, untrimmed)
END_OF_INPUT = "eof"
CLOSED = "closed"  # the connection is gone, for whatever reason
ACCEPTED = "accepted"  # the first nickname was accepted
REFUSED = "refused"  # a nickname (first or later) was refused
SERVER_QUIT = "quit"  # the server told us to leave (individual:...:quit:)


# --- pure functions: no I/O ---------------------------------------------------

# Go's unicode.IsSpace, which strings.TrimSpace uses.  Python's str.strip()
# also strips U+001C..U+001F, which Go keeps: matching Go keeps the payloads
# byte for byte those of the Go client.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
)


def go_trim_space(line: str) -> str:
    """Strip leading and trailing white space exactly as Go's ``strings.TrimSpace``."""
    return line.strip(_GO_SPACE)


def _visible_controls() -> dict[int, str]:
    # C0 controls and DEL in caret notation, as `cat -v` shows them.  Newline
    # stays: the server's menu and ranking are multi-line.  Tab stays: it
    # cannot move the cursor anywhere harmful.
    table = {code: "^" + chr(code + 0x40) for code in range(0x20) if code not in (0x09, 0x0A)}
    table[0x7F] = "^?"
    # C1 controls (0x9B is a one-byte CSI on some terminals) and the bidi
    # embeddings, overrides and isolates that can make text read differently
    # from what was sent.
    for code in (*range(0x80, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)):
        table[code] = f"<U+{code:04X}>"
    return table


_VISIBLE = _visible_controls()


def sanitize(value: str) -> str:
    """Make control characters visible, so a peer cannot move the cursor or recolour the terminal."""
    return value.translate(_VISIBLE)


def timestamp(lang: str, now: datetime) -> str:
    """The prefix of every line from the server: ``【  15:04  】`` in zh, as Go's Println spaces it."""
    return text(lang, "stamp", time=now.strftime("%H:%M"))


class Incoming(NamedTuple):
    """What one received payload means for the client."""

    lines: tuple[str, ...]
    #: The name the server just confirmed as ours (changeNameFirst1, changeName1).
    name: str | None = None
    #: ACCEPTED, REFUSED or SERVER_QUIT, for the main thread; None for most frames.
    event: str | None = None


# Marks that may follow a name containing ':' (the original server's initial
# name is the address "127.0.0.1:41510"), which shifts the 4-way split.
_NAME_MARKS = (NAME_REFUSED, RENAME_FAILED, CHANGE_NAME_FIRST_OK, CHANGE_NAME_OK, SYSTEM)
_SHIFTED_MARK = re.compile(":(" + "|".join(map(re.escape, _NAME_MARKS)) + "):")
_INDIVIDUAL_MARKS = frozenset((*_NAME_MARKS, QUIT))


def _unshift(target: str, mark: str, message: str) -> tuple[str, str, str]:
    """Re-split an individual payload whose target contained ':'.

    ``individual:127.0.0.1:41510:changeNameFirst0:<reason>`` splits into target
    "127.0.0.1", mark "41510": the original client showed "unknown error" and
    never learnt that its nickname was refused.
    """
    if mark in _INDIVIDUAL_MARKS:
        return target, mark, message
    rest = f"{target}:{mark}:{message}"
    match = _SHIFTED_MARK.search(rest)
    if match is None:
        return target, mark, message
    return rest[: match.start()], match.group(1), rest[match.end() :]


def parse_frame(payload: str, lang: str, now: datetime) -> Incoming:
    """Turn one payload from the server into the lines to print and the state change.

    Rendering follows the Go client's ``readMsg``; in ``lang="zh"`` the lines
    are byte for byte what it prints (apart from control characters, which
    :func:`sanitize` makes visible, and the fixes below).
    """
    stamp = timestamp(lang, now)
    parts = split_message(payload)
    if parts is None:
        # Original: logged "无效的消息格式" and returned from readMsg, deaf
        # from then on (the server's "信息格式错误" has no colons at all).
        shown = sanitize(payload.rstrip("\r\n"))
        return Incoming((stamp + text(lang, "system_broadcast", text=shown),))
    target_type, target, mark, message = parts
    message = message.rstrip("\r\n")  # Go: strings.TrimRight(message, "\r\n")

    if target_type == INDIVIDUAL:
        target, mark, message = _unshift(target, mark, message)
        shown_target, shown = sanitize(target), sanitize(message)
        if mark == CHANGE_NAME_FIRST_OK:
            return Incoming(
                (stamp + text(lang, "your_name", name=shown_target),), name=target, event=ACCEPTED
            )
        if mark == CHANGE_NAME_OK:
            lines = (stamp + text(lang, "rename_ok"), stamp + text(lang, "your_name", name=shown_target))
            return Incoming(lines, name=target)
        if mark in (NAME_REFUSED, RENAME_FAILED):
            # Original: no case for these, so "< 系统消息 > 未知错误" and the
            # user never saw why.  The reason is the server's text.
            reason = shown or text(lang, "name_taken" if mark == NAME_REFUSED else "rename_failed")
            return Incoming((stamp + text(lang, "system_broadcast", text=reason),), event=REFUSED)
        if mark == QUIT:
            return Incoming((stamp + text(lang, "quitting"),), event=SERVER_QUIT)
        if mark == SYSTEM:
            return Incoming((stamp + text(lang, "system_personal", text=shown),))
        return Incoming((stamp + text(lang, "unknown_error"),))

    if target_type == CHANNEL:
        shown = sanitize(message)
        if mark == SYSTEM:
            return Incoming((stamp + text(lang, "system_broadcast", text=shown),))
        return Incoming((stamp + text(lang, "chat_line", name=sanitize(mark), text=shown),))

    # As the original: four fields of an unknown kind are not for us.
    return Incoming(())


class Action(NamedTuple):
    """What to do with one typed line."""

    #: The payload to send, if any.
    payload: str | None = None
    #: Read the next line as the new nickname (``./cd2``).
    ask_new_name: bool = False
    #: Leave after sending: wait for the server to close (``./cd5``).
    quit: bool = False
    #: A text to print locally (nothing is sent).
    notice: str | None = None


# Keys are casefolded: Go compares with strings.EqualFold.
_COMMANDS = {
    "./cd1": MENU,
    "./menu": MENU,
    "./cd2": CHANGE_NAME,
    "./changename": CHANGE_NAME,
    "./cd3": ONLINE_LIST,
    "./online": ONLINE_LIST,
    "./cd4": ACTIVITY,
    "./activity": ACTIVITY,
    "./cd5": QUIT,
    "./quit": QUIT,
}


def chat_limit(name: str) -> int:
    """The longest chat text (in UTF-8 bytes) whose broadcast the Go clients can still decode.

    Original: any length was sent; the server's ``channel:channel1:<name>:<text>\\n``
    then exceeded 4092 bytes and every Go client in the room hung.
    """
    return MAX_FRAME - len(join_message(CHANNEL, BROADCAST, name, "\n").encode("utf-8"))


def parse_line(line: str, name: str, lang: str = "en") -> Action:
    """Map one typed line (already trimmed) to what to send, as the Go input loop does.

    ``name`` is our current nickname, which the menu and rename payloads carry.
    """
    command = _COMMANDS.get(line.casefold())
    if command == MENU:
        return Action(join_message(INDIVIDUAL, name, MENU, ""))
    if command == CHANGE_NAME:
        return Action(ask_new_name=True)
    if command in (ONLINE_LIST, ACTIVITY):
        return Action(join_message(CHANNEL, BROADCAST, command, ""))
    if command == QUIT:
        return Action(QUIT_PAYLOAD, quit=True)
    limit = chat_limit(name)
    if len(line.encode("utf-8")) > limit:
        return Action(notice=text(lang, "too_long", limit=limit))
    return Action(join_message(CHANNEL, BROADCAST, "", line))


def nickname_action(nick: str, lang: str = "en", current: str | None = None) -> Action:
    """The payload that asks for nickname ``nick``: the first one, or a rename from ``current``.

    An empty nickname sends nothing (the caller asks again, or gives up the
    rename): the original server accepted "" as a name.
    """
    if not nick:
        return Action()
    if current is None:
        payload = join_message(INDIVIDUAL, "", CHANGE_NAME_FIRST, nick)
    else:
        payload = join_message(INDIVIDUAL, current, CHANGE_NAME, nick)
    if len(payload.encode("utf-8")) > MAX_FRAME:
        limit = MAX_FRAME - (len(payload.encode("utf-8")) - len(nick.encode("utf-8")))
        return Action(notice=text(lang, "too_long", limit=limit))
    return Action(payload)


# --- the session: shared by the threads ----------------------------------------


class ServerGone(Exception):
    """The connection closed while we were not leaving."""


class EndOfInput(Exception):
    """Standard input ended."""


class ServerQuit(Exception):
    """The server asked us to leave."""


class Inbox:
    """Everything the main thread waits for, in order of arrival.

    Only the main thread takes items out; lines it is not ready for (while a
    nickname awaits its answer) are held and come out first afterwards.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[str, str | None]] = queue.Queue()
        self._held: collections.deque[tuple[str, str | None]] = collections.deque()

    def put(self, kind: str, value: str | None = None) -> None:
        """Add an item (thread-safe)."""
        self._queue.put((kind, value))

    def get(self, timeout: float | None = None) -> tuple[str, str | None]:
        """The next item, held ones first; raises ``queue.Empty`` after ``timeout``."""
        if self._held:
            return self._held.popleft()
        return self._queue.get(timeout=timeout)

    def get_news(self) -> tuple[str, str | None]:
        """The next item that is not input; input that arrives meanwhile is held."""
        while True:
            kind, value = self._queue.get()
            if kind in (LINE, END_OF_INPUT):
                self._held.append((kind, value))
            else:
                return kind, value


class Session:
    """One connection: the socket, its send lock, our name, the output."""

    def __init__(self, sock: socket.socket, lang: str, out=None) -> None:
        self.sock = sock
        self.lang = lang
        self.out = out if out is not None else sys.stdout
        #: Our name as the server last confirmed it ("" until then, as in Go).
        self.name = ""
        #: Set before the quit payload goes out, so the reader knows the
        #: close that follows is expected.
        self.quitting = False
        self.inbox = Inbox()
        self._send_lock = threading.Lock()
        self._print_lock = threading.Lock()

    def text(self, key: str, **values: object) -> str:
        """A text in the session's language."""
        return text(self.lang, key, **values)

    def send(self, payload: str) -> None:
        """Send one payload as one frame with one ``sendall``.

        A failed send hangs up, which wakes :func:`read_msg`; it reports the
        close, so there is one path for "the server went away".
        """
        logger.debug("send %r", payload)
        try:
            with self._send_lock:
                self.sock.sendall(framing.encode(payload))
        except OSError as exc:
            logger.debug("send failed: %s", exc)
            self.hang_up()

    def show(self, *lines: str, end: str = "\n") -> None:
        """Print lines whole: two threads print."""
        with self._print_lock:
            try:
                for line in lines:
                    self.out.write(line + end)
                self.out.flush()
            except (OSError, ValueError) as exc:  # stdout closed: nobody to tell
                logger.debug("cannot print: %s", exc)

    def hang_up(self) -> None:
        """Shut the socket down; a ``recv`` blocked in another thread returns."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# --- the threads ------------------------------------------------------------------


def read_msg(session: Session) -> None:
    """Reader thread: print every frame from the server until the connection ends."""
    reader = FrameReader(session.sock, MAX_INCOMING)
    try:
        while True:
            try:
                payload = reader.read()
            except InvalidUtf8 as exc:
                logger.debug("frame is not UTF-8: %s", exc)
                stamp = timestamp(session.lang, datetime.now())
                session.show(stamp + session.text("system_broadcast", text=session.text("bad_utf8")))
                continue
            if payload is None:
                logger.debug("the server closed the connection")
                break
            if not payload:
                continue
            logger.debug("received %r", payload)
            incoming = parse_frame(payload, session.lang, datetime.now())
            if incoming.name is not None:
                session.name = incoming.name
            session.show(*incoming.lines)
            if incoming.event is not None:
                session.inbox.put(incoming.event)
    except (OSError, FrameError) as exc:
        # Original: "服务器断开连接 2 err = ..." and, with 1-3 bytes of a header
        # left, never exited.  Any broken stream is the server going away.
        logger.debug("connection lost: %s", exc)
    finally:
        if not session.quitting:
            session.show(session.text("disconnected"))
        session.inbox.put(CLOSED)


def read_stdin(inbox: Inbox, fd: int = 0, encoding: str = "utf-8") -> None:
    """Stdin thread: the one reader of standard input.

    Original: ``getUserInput`` made a new ``bufio.Reader`` per line, so
    whatever one read had buffered beyond the first line was lost; and at end
    of input it returned an error text, which was sent every 100 ms forever.

    ``os.read`` rather than ``sys.stdin``: this thread is still blocked in it
    when the program exits, and a daemon thread inside a buffered file's lock
    makes the interpreter's shutdown abort.
    """
    buffer = bytearray()
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError as exc:
            logger.debug("cannot read stdin: %s", exc)
            chunk = b""
        if not chunk:
            break
        start = len(buffer)
        buffer += chunk
        newline = buffer.find(b"\n", start)
        while newline >= 0:
            inbox.put(LINE, buffer[:newline].decode(encoding, "replace"))
            del buffer[: newline + 1]
            newline = buffer.find(b"\n")
    if buffer:  # a last line without its newline is still a line
        inbox.put(LINE, buffer.decode(encoding, "replace"))
    inbox.put(END_OF_INPUT)


# --- the main thread ----------------------------------------------------------------


def get_user_input(session: Session, prompt: str | None = None) -> str:
    """Print the prompt (a text key), then return the next line, trimmed as Go does.

    Raises :class:`EndOfInput`, :class:`ServerGone` or :class:`ServerQuit`
    when one of those happens first.
    """
    if prompt == "ask_name":
        session.show(session.text(prompt), end="")  # Go: fmt.Print, the answer on the same line
    elif prompt is not None:
        session.show(session.text(prompt))
    while True:
        kind, value = session.inbox.get()
        if kind == LINE:
            return go_trim_space(value)
        if kind == END_OF_INPUT:
            raise EndOfInput
        if kind == CLOSED:
            raise ServerGone
        if kind == SERVER_QUIT:
            raise ServerQuit
        # ACCEPTED / REFUSED of a later rename: read_msg has printed them.


def wait_for_answer(session: Session) -> bool:
    """Wait for the server's answer to a first nickname: True if accepted."""
    while True:
        kind, _ = session.inbox.get_news()
        if kind == ACCEPTED:
            return True
        if kind == REFUSED:
            return False
        if kind == CLOSED:
            raise ServerGone
        if kind == SERVER_QUIT:
            raise ServerQuit


def ask_nickname(session: Session) -> None:
    """Ask for a nickname until the server accepts one.

    Original: sent the first nickname and went on to chat whatever the answer,
    so after a refusal the user chatted under the address as a name.
    """
    while True:
        nick = get_user_input(session, "ask_name")
        action = nickname_action(nick, session.lang)
        if action.notice:
            session.show(action.notice)
        if action.payload is None:
            continue
        session.send(action.payload)
        if wait_for_answer(session):
            return
        # Refused: read_msg has printed the server's reason.


def input_loop(session: Session) -> None:
    """Send what the user types until ``./quit`` (the Go client's input goroutine)."""
    while True:
        action = parse_line(get_user_input(session), session.name, session.lang)
        if action.ask_new_name:
            action = nickname_action(get_user_input(session, "ask_new_name"), session.lang, session.name)
        if action.notice:
            session.show(action.notice)
        if action.quit:
            session.quitting = True
        if action.payload is not None:
            session.send(action.payload)
        if action.quit:
            return


def leave(session: Session) -> int:
    """Send quit (unless sent), wait a little for the server to close, say goodbye; returns 0."""
    if not session.quitting:
        session.quitting = True
        session.send(QUIT_PAYLOAD)
    deadline = time.monotonic() + QUIT_TIMEOUT
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                kind, _ = session.inbox.get(timeout=remaining)
            except queue.Empty:
                logger.debug("the server did not close within %.1f s", QUIT_TIMEOUT)
                break
            if kind == CLOSED:
                break
    except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
        pass
    session.hang_up()
    session.show(session.text("quit_ok"))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="chatroom-client", description="Terminal client for redis-chatroom."
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="server address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="server port (default: %(default)s)")
    parser.add_argument("--lang", choices=LANGUAGES, default="en", help="language of the client's texts")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output to stderr")
    return parser.parse_args(argv)


def _tolerant_stdout() -> None:
    # A terminal that cannot show CJK text should get '?', not a traceback.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="replace")


def main(argv: list[str] | None = None) -> int:
    """Run the client; returns 0 when the user left, 1 when the server went away or was unreachable."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(threadName)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    _tolerant_stdout()
    lang = args.lang
    try:
        sock = socket.create_connection((args.host, args.port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        print(text(lang, "connect_failed", error=exc), flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    sock.settimeout(None)
    session = Session(sock, lang)
    session.show(session.text("connected"))
    stdin_encoding = getattr(sys.stdin, "encoding", None) or "utf-8"
    threading.Thread(target=read_msg, args=(session,), name="read_msg", daemon=True).start()
    threading.Thread(
        target=read_stdin, args=(session.inbox, 0, stdin_encoding), name="read_stdin", daemon=True
    ).start()
    try:
        try:
            ask_nickname(session)
            session.show(session.text("banner"))
            input_loop(session)
        except ServerGone:
            return 1
        except (EndOfInput, ServerQuit, KeyboardInterrupt):
            # Original: on end of input, sent "客户端信息读取错误" every 100 ms.
            pass
        return leave(session)
    finally:
        session.hang_up()
        sock.close()


if __name__ == "__main__":
    sys.exit(main())

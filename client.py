"""redis-chatroom terminal client: the original Go ``client``, ported to threads.

The functions keep the names of their Go counterparts (``main``,
``getUserInput`` -> :func:`get_user_input`, ``readMsg`` -> :func:`read_msg`,
the input goroutine -> :func:`input_loop`).  The threads::

    main thread   ask the first nickname; connect; ask_nickname until the
                  server accepts a name;
                  input_loop: each typed line -> one payload -> one sendall;
                  when the server goes away: reconnect (if allowed), take
                  the name back, go on
      ├─ read_msg    frames from the server -> parse_frame -> print; tells the
      │              main thread what it must know (name accepted or refused,
      │              connection closed) through the Inbox.  One per connection.
      └─ the one reader of standard input, into the same Inbox:
           read_stdin      (stdin is a pipe or file) every line, then an
                           end-of-input marker: plain line mode
           Terminal        (stdin and stdout are a terminal) a prompt_toolkit
                           line editor on its own asyncio loop; everything
                           printed goes through that loop too, above the
                           prompt, so arriving messages never break the line
                           being typed

The main thread blocks only on the :class:`Inbox`, never on the socket or on
stdin, so whichever comes first (a line, end of input, the server going away)
wakes it.  Lines that arrive while a nickname awaits the server's answer, or
while the client is reconnecting, are held back and replayed afterwards: on a
pipe, the line after a refused nickname is the next nickname.

What is decided lives in pure functions, tested without any I/O:
:func:`parse_frame` (a received payload -> styled lines to print and a state
change), :func:`parse_line` (a typed line -> the payload to send),
:func:`render` (a styled line -> text, with or without ANSI colours),
:class:`HistoryFilter` (which replayed history lines were already shown) and
:class:`RoomState` (our rooms and the current one).

Rooms: a line without a command goes to the current room, which the prompt
shows (``[dev] alice> ``); lines of a room other than the lobby carry its
name (``[dev] < bob > hi``).  A ``/join`` or ``/part`` is awaited, briefly,
before the next line is read, so that the next line goes where the user
expects; after a reconnect, once the name is back, the client joins its
rooms again, one at a time, and keeps its current room.

A styled line is a tuple of ``(style, text)`` fragments, as in prompt_toolkit;
without colour it is simply the texts joined, so the zh rendering of the
original message kinds stays byte for byte the Go client's.

Fixed defects of the original, each also noted where it is fixed: a refused
first nickname is asked again; stdin has one reader, so lines that arrive
together are all sent; end of input quits instead of sending an error text
every 100 ms; a payload that does not split into four fields is shown instead
of stopping the reader; control characters from the network are made visible;
a user's text of several lines is indented under its sender, so it cannot
pose as other lines; the exit status says whether the user left (0) or the
server went away (1).
"""

from __future__ import annotations

import sys

try:
    # Checked first, so that a Python without the client's dependencies gets
    # one line saying what to run instead of a traceback (prompt_toolkit is
    # otherwise imported only once a terminal needs it).
    import prompt_toolkit  # noqa: F401
except ImportError:
    sys.exit("client.py needs prompt_toolkit: run `make client`, or `pip install .` first")

import argparse
import asyncio
import collections
import ipaddress
import logging
import os
import queue
import re
import socket
import ssl
import string
import threading
import time
import unicodedata
import zlib
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import NamedTuple

import framing
from chatroom import client_identity
from framing import MAX_FRAME, FrameError, FrameReader, FrameTooLarge, InvalidUtf8, NegativeLength
from protocol import (
    ACTIVITY,
    BROADCAST,
    CHANGE_NAME,
    CHANGE_NAME_FIRST,
    CHANGE_NAME_FIRST_OK,
    CHANGE_NAME_OK,
    CHANNEL,
    HISTORY,
    INDIVIDUAL,
    JOIN,
    JOIN_OK,
    JOIN_REFUSED,
    LANGUAGES,
    MENU,
    NAME_REFUSED,
    ONLINE_LIST,
    PART,
    PART_OK,
    PART_REFUSED,
    PRIVATE,
    PRIVATE_IN,
    PRIVATE_SENT,
    QUIT,
    RENAME_FAILED,
    ROOM_HISTORY,
    ROOMS,
    SYSTEM,
    TEXTS,
    WHO,
    join_message,
    name_key,
    redacted,
    split_message,
    text,
)

logger = logging.getLogger("chatroom.client")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9527
CONNECT_TIMEOUT = 10.0
#: How long ``./quit`` waits for the server to close the connection.
QUIT_TIMEOUT = 2.0
#: Before leaving, how long to wait for the answers to what was sent (see
#: :func:`wait_for_answers`): at most this long without any answer, and at
#: most ANSWERS_MAX_WAIT in all (the original server answers one message a second).
ANSWER_TIMEOUT = QUIT_TIMEOUT
ANSWERS_MAX_WAIT = 10.0
#: Frames we accept from the server.  Larger than what the Go programs can
#: decode (MAX_FRAME) on purpose: showing an oversized frame beats dropping
#: the connection, and the stream stays in step either way.
MAX_INCOMING = 1 << 20
#: Reconnecting: the first wait, doubled after every failed attempt up to the last.
RECONNECT_FIRST_DELAY = 0.5
RECONNECT_MAX_DELAY = 10.0
#: A replayed history line as old as the moment the connection was lost (plus
#: this much clock difference between server and client) may have been shown.
HISTORY_SLACK = 5.0

QUIT_PAYLOAD = join_message(CHANNEL, BROADCAST, QUIT, "")

# What the main thread waits for; the kinds of Inbox items.
LINE = "line"  # a line of input (value: the line, untrimmed)
END_OF_INPUT = "eof"
LEAVE = "leave"  # the user wants out now (Ctrl-C at the terminal's prompt)
CLOSED = "closed"  # the connection is gone, for whatever reason
ACCEPTED = "accepted"  # the first nickname was accepted
REFUSED = "refused"  # a nickname (first or later) was refused
SERVER_QUIT = "quit"  # the server told us to leave (individual:...:quit:)
ANSWERED = "answered"  # the server answered one of our requests (Awaited)
_INPUT = (LINE, END_OF_INPUT)

# What a request waits for: the kinds of answer (Awaited, request_kind, Incoming.answers).
ECHO = "echo"  # our chat line, broadcast back to us too
COUNT = "count"  # the online count
RANKING = "ranking"  # the activity ranking
NOTICE = "notice"  # a system message to us: the who list, the menu
PRIVATE_ECHO = "private echo"  # the echo of our private message
RENAME = "rename"  # changeName1, or the refusal
JOINING = "joining"  # join1, or join0 with the reason
PARTING = "parting"  # part1, or part0 with the reason
#: A system message to us answers who or menu; else it is the refusal of, or
#: an error about, some other request (too long, no such user, flooding...).
NOTICE_ANSWERS = (NOTICE, PRIVATE_ECHO, ECHO, COUNT, RANKING, RENAME, JOINING, PARTING)
#: After a reconnect, how often to ask for a room again whose join got no
#: join1 or join0 (a flood refusal: the rejoins come in a burst), and how
#: long to wait in between (the server's flood bucket refills meanwhile).
REJOIN_TRIES = 3
REJOIN_PAUSE = 1.0


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
    # controls that can make text read differently from what was sent: the
    # embeddings, overrides and isolates, and the directional marks (LRM,
    # RLM, ALM), which reorder the neutral characters around them.
    marks = (0x200E, 0x200F, 0x061C)
    for code in (*range(0x80, 0xA0), *marks, *range(0x202A, 0x202F), *range(0x2066, 0x206A)):
        table[code] = f"<U+{code:04X}>"
    return table


_VISIBLE = _visible_controls()
# For fields that are one line by nature (names): line breaks too.
_VISIBLE_INLINE = {**_VISIBLE, 0x0A: "^J", 0x2028: "<U+2028>", 0x2029: "<U+2029>"}


def sanitize(value: str) -> str:
    """Make control characters visible, so a peer cannot move the cursor or recolour the terminal."""
    return value.translate(_VISIBLE)


def sanitize_inline(value: str) -> str:
    """:func:`sanitize`, and line breaks visible too: for a name, which must never span lines."""
    return value.translate(_VISIBLE_INLINE)


#: What a terminal, or a reader, may take for the start of a new line.
LINE_BREAKS = re.compile("\r\n|[\n\r\v\f\x85\u2028\u2029]")


def display_width(value: str) -> int:
    """The columns a terminal gives ``value``: two for a wide CJK character, none for a combining mark."""
    width = 0
    for char in value:
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def timestamp(lang: str, now: datetime) -> str:
    """The prefix of every line from the server: ``【  15:04  】`` in zh, as Go's Println spaces it."""
    return text(lang, "stamp", time=now.strftime("%H:%M"))


# Styled text: a line is a tuple of (style, text) fragments.  Styles are
# space-separated classes, turned into ANSI colours by render():
#   stamp    the time in front of a line          system   system messages
#   name     a user's name, in its own colour     me       our own name and text
#   private  private messages                     history  history lines (dimmed)
#   notice   what the client itself says          room     a room's name, in its own colour
Fragment = tuple[str, str]
Line = tuple[Fragment, ...]
#: What Session.show takes: a plain string or a styled line.
Printable = str | Line

_FORMATTER = string.Formatter()


def styled(lang: str, key: str, style: str = "", **values: object) -> Line:
    """:func:`protocol.text` as fragments: the template's words in ``style``.

    A value given as a ``(style, text)`` pair gets a style of its own; the
    fragments' texts joined are exactly ``text(lang, key, ...)``.
    """
    template = TEXTS[key].get(lang) or TEXTS[key]["en"]
    if not values:
        return ((style, template),)
    fragments: list[Fragment] = []
    for literal, field, spec, _conversion in _FORMATTER.parse(template):
        if literal:
            fragments.append((style, literal))
        if field is not None:
            value = values[field]
            value_style, value_text = value if isinstance(value, tuple) else (style, value)
            fragments.append((value_style, format(value_text, spec or "")))
    return tuple(fragments)


def plain(line: Printable) -> str:
    """A styled line without its styles."""
    return line if isinstance(line, str) else "".join(fragment for _, fragment in line)


# Eight colours for names, none of them the system (yellow) or private
# (magenta) colour.  crc32, not hash(): stable across runs and machines.
_NAME_COLOURS = ("31", "32", "34", "36", "91", "92", "94", "96")
_STYLE_CODES = {"stamp": "2", "system": "33", "notice": "36", "private": "35", "me": "1", "history": "2"}


def name_colour(name: str) -> str:
    """The SGR colour code of a name: always the same for the same name."""
    return _NAME_COLOURS[zlib.crc32(name.encode("utf-8")) % len(_NAME_COLOURS)]


def room_colour(room: str) -> str:
    """The SGR colour code of a room: the same for every spelling of the same room (``Dev``, ``dev``)."""
    return name_colour(name_key(room))


def is_lobby(room: str) -> bool:
    """Whether ``room`` names the lobby, the original's ``channel1`` (any case, as the server folds it)."""
    return name_key(room) == BROADCAST


def render(line: Printable, colour: bool) -> str:
    """The text to print for a line: ANSI-coloured, or plain."""
    if isinstance(line, str) or not colour:
        return plain(line)
    out = []
    for style, fragment in line:
        codes: list[str] = []
        for cls in style.split():
            if cls == "name":
                codes += ["1", name_colour(fragment)]
            elif cls == "room":
                codes.append(room_colour(fragment))
            elif cls in _STYLE_CODES:
                codes.append(_STYLE_CODES[cls])
        codes = list(dict.fromkeys(codes))  # "name me" is bold twice
        out.append(f"\x1b[{';'.join(codes)}m{fragment}\x1b[0m" if codes and fragment else fragment)
    return "".join(out)


def use_colour(no_colour_option: bool, environ: Mapping[str, str], stdout_is_terminal: bool) -> bool:
    """Colours only on a terminal, and never with ``--no-color``, ``NO_COLOR`` or ``TERM=dumb``."""
    return (
        stdout_is_terminal
        and not no_colour_option
        and not environ.get("NO_COLOR")  # https://no-color.org: set and not empty
        and environ.get("TERM") != "dumb"
    )


class Incoming(NamedTuple):
    """What one received payload means for the client."""

    styled: tuple[Line, ...]
    #: The name the server just confirmed as ours (changeNameFirst1, changeName1).
    name: str | None = None
    #: ACCEPTED, REFUSED or SERVER_QUIT, for the main thread; None for most frames.
    event: str | None = None
    #: (sender, text) of a public chat line, live or from history.
    public: tuple[str, str] | None = None
    #: For a history line: the server's unix time of the message.
    sent_at: int | None = None
    #: The kinds of request this frame may answer, most likely first (see Awaited).
    answers: tuple[str, ...] = ()
    #: The room (as the server shows it) of a chat line, notice or history
    #: line, or of a join1 or part1; None for the lobby's frames.
    room: str | None = None
    #: The server's answer to a join or part: JOIN_OK, JOIN_REFUSED, PART_OK or PART_REFUSED.
    room_answer: str | None = None

    @property
    def lines(self) -> tuple[str, ...]:
        """The lines without styles: what is printed without colours."""
        return tuple(plain(line) for line in self.styled)


# Marks that may follow a name containing ':' (the original server's initial
# name is the address "127.0.0.1:41510"), which shifts the 4-way split.
_NAME_MARKS = (NAME_REFUSED, RENAME_FAILED, CHANGE_NAME_FIRST_OK, CHANGE_NAME_OK, SYSTEM)
_SHIFTED_MARK = re.compile(":(" + "|".join(map(re.escape, _NAME_MARKS)) + "):")
_ROOM_ANSWERS = {JOIN_OK: JOINING, JOIN_REFUSED: JOINING, PART_OK: PARTING, PART_REFUSED: PARTING}
_INDIVIDUAL_MARKS = frozenset((*_NAME_MARKS, QUIT, PRIVATE_IN, PRIVATE_SENT, *_ROOM_ANSWERS))


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


def _stamp(lang: str, when: datetime, style: str = "stamp") -> Line:
    return ((style, timestamp(lang, when)),)


def _system(lang: str, key: str, stamp: Line, **values: object) -> Incoming:
    return Incoming((stamp + styled(lang, key, "system", **values),))


def _user_lines(
    lead: Line, lang: str, key: str, style: str, text_style: str, message: str, **values: object
) -> tuple[Line, ...]:
    """A user's text (chat, private, history) as printed lines, each line of the text on its own.

    The first: ``lead``, then text ``key`` filled with ``values`` and the
    text's first line; the others indented to the column where the text
    begins.  Original: printed the text as it came, so "ok\\n[21:13] < bob >
    my password is hunter2" put a line on the screen that looks like bob
    speaking; indented, no line of a user's text can start like a time and a
    name.  ``message`` is raw: it is split, then made visible.
    """
    first, *more = LINE_BREAKS.split(message)
    shown = sanitize(first)
    line = lead + styled(lang, key, style, text=(text_style, shown), **values)
    indent = " " * (display_width(plain(line)) - display_width(shown))
    following = tuple(((style, indent), (text_style, sanitize(part))) if part else () for part in more)
    return (line, *following)


def _chat_lines(
    lead: Line, lang: str, name: str, message: str, own: bool, extra: str = ""
) -> tuple[Line, ...]:
    name_style = "name me" if own else "name"
    text_style = f"{'me' if own else ''} {extra}".strip()
    name_value = (f"{name_style} {extra}".strip(), sanitize_inline(name))
    return _user_lines(lead, lang, "chat_line", extra, text_style, message, name=name_value)


def _history_stamp(lang: str, sent: datetime, now: datetime) -> str:
    # An older day's message says which day.
    shown = sent.strftime("%H:%M" if sent.date() == now.date() else "%m-%d %H:%M")
    return text(lang, "stamp", time=shown)


def _pattern(key: str, **fields: str) -> re.Pattern[str]:
    """A server text of either language as a regex; ``fields`` are the regexes of its fields."""
    patterns = []
    for template in TEXTS[key].values():
        escaped = re.escape(template).replace(r"\{", "{").replace(r"\}", "}")  # the fields stay fields
        patterns.append(f"(?:{escaped.format(**fields)})")
    return re.compile("|".join(patterns))


# The server's online count, or a room's, in either language (the server's may differ from ours).
_COUNT_TEXT = re.compile(
    _pattern("online_count", count=r"\d+").pattern + "|" + _pattern("room_count", room=".+", count=r"\d+").pattern
)


def _room_tag(lang: str, room: str | None, style: str = "") -> Line:
    """``[dev] ``, the room's name in its colour, before a line of a room other than the lobby."""
    if room is None:
        return ()
    return styled(lang, "room_tag", style, room=(f"room {style}".strip(), sanitize_inline(room)))


def _is_ranking(message: str) -> bool:
    # Its first line is the title, in either language; the original server
    # puts the asker's text in front of it.
    first = message.split("\n", 1)[0] + "\n"
    return any(first.endswith(title) for title in TEXTS["activity_title"].values())


def parse_frame(payload: str, lang: str, now: datetime, me: str = "", *, counting: bool = False) -> Incoming:
    """Turn one payload from the server into the lines to print and the state change.

    Rendering follows the Go client's ``readMsg``; in ``lang="zh"`` the lines
    of the original message kinds are, without styles, byte for byte what it
    prints (apart from control characters, which :func:`sanitize` makes
    visible, a user's text of several lines, whose further lines are
    indented, and the fixes below).  ``me`` is our current name: our own chat
    lines are styled apart.  ``counting``: we asked for the online count and
    it has not come yet.
    """
    stamp = _stamp(lang, now)
    parts = split_message(payload)
    if parts is None:
        # Original: logged "无效的消息格式" and returned from readMsg, deaf
        # from then on (the server's "信息格式错误" has no colons at all).
        incoming = _system(lang, "system_broadcast", stamp, text=sanitize(payload.rstrip("\r\n")))
        return incoming._replace(answers=NOTICE_ANSWERS)  # the original's "信息格式错误"
    target_type, target, mark, message = parts
    message = message.rstrip("\r\n")  # Go: strings.TrimRight(message, "\r\n")

    if target_type == INDIVIDUAL:
        target, mark, message = _unshift(target, mark, message)
        shown_target, shown = sanitize_inline(target), sanitize(message)
        name = ("name", shown_target)
        if mark == CHANGE_NAME_FIRST_OK:
            incoming = _system(lang, "your_name", stamp, name=name)
            return incoming._replace(name=target, event=ACCEPTED)
        if mark == CHANGE_NAME_OK:
            lines = (
                stamp + styled(lang, "rename_ok", "system"),
                stamp + styled(lang, "your_name", "system", name=name),
            )
            return Incoming(lines, name=target, answers=(RENAME,))
        if mark in (NAME_REFUSED, RENAME_FAILED):
            # Original: no case for these, so "< 系统消息 > 未知错误" and the
            # user never saw why.  The reason is the server's text.
            reason = shown or text(lang, "name_taken" if mark == NAME_REFUSED else "rename_failed")
            incoming = _system(lang, "system_broadcast", stamp, text=reason)
            return incoming._replace(event=REFUSED, answers=(RENAME,))
        if mark == QUIT:
            return _system(lang, "quitting", stamp)._replace(event=SERVER_QUIT)
        if mark == SYSTEM:
            return _system(lang, "system_personal", stamp, text=shown)._replace(answers=NOTICE_ANSWERS)
        if mark in (PRIVATE_IN, PRIVATE_SENT):
            key = "private_in" if mark == PRIVATE_IN else "private_out"
            shown_lines = _user_lines(stamp, lang, key, "private", "private", message, name=name)
            return Incoming(shown_lines, answers=(PRIVATE_ECHO,) if mark == PRIVATE_SENT else ())
        if mark in _ROOM_ANSWERS:
            return _room_answer(lang, stamp, mark, message)
        answer = client_identity.answer_text(mark, message, lang)  # register1, login0, kick1, ...
        if answer is not None:
            incoming = _system(lang, "system_personal", stamp, text=sanitize(answer[0]))._replace(answers=NOTICE_ANSWERS)
            return incoming._replace(event=REFUSED) if answer[1] else incoming
        return _system(lang, "unknown_error", stamp)._replace(answers=NOTICE_ANSWERS)

    if target_type == CHANNEL:
        shown = sanitize(message)
        # A room other than the lobby is named in front of each of its lines;
        # the lobby's lines stay the Go client's.
        room = None if is_lobby(target) else target
        lead = stamp + _room_tag(lang, room)
        if mark == SYSTEM:
            incoming = Incoming((lead + styled(lang, "system_broadcast", "system", text=shown),), room=room)
            return incoming._replace(answers=(RANKING,) if _is_ranking(message) else ())
        own = bool(me) and mark == me
        our_count = own and _COUNT_TEXT.fullmatch(message) is not None
        answers = (COUNT, ECHO) if our_count else (ECHO,) if own else ()
        if our_count and counting:
            # Original: "< alice >当前在线人数为2人", as if the asker had said it:
            # the count comes as channel:channel1:<asker>:<text>.  We know we
            # asked, so it is the server speaking.
            line = lead + styled(lang, "system_broadcast", "system", text=shown)
            return Incoming((line,), answers=answers, room=room)
        shown_lines = _chat_lines(lead, lang, mark, message, own)
        return Incoming(shown_lines, public=(mark, message), answers=answers, room=room)

    if target_type == HISTORY:
        # history:<unix seconds>:<sender>:<text>, sent after the first nickname.
        return _history_line(payload, lang, now, me, None, target, mark, message)

    if target_type == ROOM_HISTORY:
        # roomHistory:<room>:<unix seconds>:<sender>:<text>, sent after join1.
        sender, colon, message = message.partition(":")
        if not colon:
            logger.debug("room history line without a sender: %r", payload)
            return Incoming(())
        return _history_line(payload, lang, now, me, target, mark, sender, message)

    # As the original: four fields of an unknown kind are not for us.
    return Incoming(())


def _history_line(
    payload: str, lang: str, now: datetime, me: str, room: str | None, sent_field: str, sender: str, message: str
) -> Incoming:
    """A line of the lobby's history (``room`` None) or of a room's: dimmed, with its own time."""
    try:
        sent_at = int(sent_field)
        sent = datetime.fromtimestamp(sent_at)
    except (ValueError, OverflowError, OSError):
        logger.debug("history line with a bad time: %r", payload)
        return Incoming(())
    lead = (
        ("stamp history", _history_stamp(lang, sent, now)),
        *_room_tag(lang, room, "history"),
        ("history", text(lang, "history_mark")),
    )
    shown_lines = _chat_lines(lead, lang, sender, message, bool(me) and sender == me, "history")
    return Incoming(shown_lines, public=(sender, message), sent_at=sent_at, room=room)


def _room_answer(lang: str, stamp: Line, mark: str, message: str) -> Incoming:
    """join1, join0, part1 or part0: what the server answered to our join or part.

    join1 prints nothing: the server's notice that we joined follows, and the
    client says so if the room becomes the current one.  Nothing else tells
    who parted that they did, so part1 does.  A refusal shows the server's
    reason.
    """
    answers = (_ROOM_ANSWERS[mark],)
    if mark == JOIN_OK:
        return Incoming((), answers=answers, room=message, room_answer=mark)
    if mark == PART_OK:
        line = stamp + styled(lang, "room_parted", "system", room=("room", sanitize_inline(message)))
        return Incoming((line,), answers=answers, room=message, room_answer=mark)
    incoming = _system(lang, "system_broadcast", stamp, text=sanitize(message))
    return incoming._replace(answers=answers, room_answer=mark)


class HistoryFilter:
    """Which replayed history lines the user has already seen: one filter for the lobby, one per room.

    The server sends its history after every first nickname, so also after a
    reconnect.  A replayed line is dropped when the same (sender, text) was
    shown before the connection was lost and the line is not newer than that
    moment (plus :data:`HISTORY_SLACK` for the two clocks): what was said in
    between, or lost in the break, is shown.  A room's history comes after
    join1, when the room's live messages already reach us, so it may repeat
    one of them: a line is dropped too when the same (sender, text) was shown
    live since :meth:`joined` and the line is not older than that moment
    (less the slack).  Used by one reader thread at a time.
    """

    def __init__(self, keep: int = 1000, slack: float = HISTORY_SLACK) -> None:
        self._shown: collections.deque[tuple[str, str]] = collections.deque(maxlen=keep)
        self._slack = slack
        self._before: collections.Counter[tuple[str, str]] = collections.Counter()
        self._cutoff: float | None = None
        self._since_join: collections.deque[tuple[str, str]] = collections.deque(maxlen=keep)
        self._joined_at: float | None = None

    def saw(self, sender: str, message: str) -> None:
        """A live public line was shown."""
        self._shown.append((sender, message))
        if self._joined_at is not None:
            self._since_join.append((sender, message))

    def joined(self, at: float) -> None:
        """The room was joined at unix time ``at`` (join1): its history follows."""
        self._since_join.clear()
        self._joined_at = at - self._slack

    def lost(self, at: float) -> None:
        """The connection was lost at unix time ``at``: the next replay is checked."""
        self._before = collections.Counter(self._shown)
        self._cutoff = at + self._slack

    def admit(self, sent_at: float, sender: str, message: str) -> bool:
        """Whether to show a history line; counts it as shown if so."""
        key = (sender, message)
        if self._cutoff is not None and sent_at <= self._cutoff and self._before[key] > 0:
            self._before[key] -= 1
            return False
        if self._joined_at is not None and sent_at >= self._joined_at and key in self._since_join:
            self._since_join.remove(key)  # shown live in the instant of joining
            return False
        self._shown.append(key)
        return True


def request_kind(payload: str) -> str | None:
    """What kind of answer a payload we send waits for (ECHO, COUNT, ...), or None."""
    parts = split_message(payload)
    if parts is None:
        return None
    if parts.target_type == CHANNEL:  # a chat line's mark is empty, as a private message's
        kinds = {PRIVATE: ECHO, ONLINE_LIST: COUNT, ACTIVITY: RANKING, JOIN: JOINING, PART: PARTING, WHO: NOTICE}
        return kinds.get(parts.mark)
    if parts.target_type == INDIVIDUAL:
        kinds = {PRIVATE: PRIVATE_ECHO, WHO: NOTICE, MENU: NOTICE, CHANGE_NAME: RENAME, ROOMS: NOTICE}
        return kinds.get(parts.mark)
    return None


class Awaited:
    """The answers the server still owes us on this connection, counted by kind.

    The main thread counts a request as it sends it, the reader each answer
    as it prints it (thread-safe).  An answer is matched by kind, not by
    content: a system message can be the refusal of anything.
    """

    def __init__(self) -> None:
        self._owed: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def sent(self, kind: str) -> None:
        """A request that waits for an answer of ``kind`` went out."""
        with self._lock:
            self._owed[kind] += 1

    def answer(self, kinds: tuple[str, ...]) -> bool:
        """A frame that may answer ``kinds`` (most likely first) arrived: True if it answered one."""
        with self._lock:
            for kind in kinds:
                if self._owed[kind] > 0:
                    self._owed[kind] -= 1
                    return True
            return False

    def pending(self, kind: str) -> bool:
        """Whether an answer of ``kind`` is owed."""
        with self._lock:
            return self._owed[kind] > 0

    def give_up(self, kind: str) -> None:
        """Stop waiting for one answer of ``kind``: the user was told it did not come."""
        with self._lock:
            if self._owed[kind] > 0:
                self._owed[kind] -= 1

    def clear(self) -> None:
        """The connection is gone: its answers will never come."""
        with self._lock:
            self._owed.clear()

    def __bool__(self) -> bool:
        with self._lock:
            return any(self._owed.values())


class Action(NamedTuple):
    """What to do with one typed line."""

    #: The payload to send, if any.
    payload: str | None = None
    #: Read the next line as the new nickname (``./cd2``, ``/nick``).
    ask_new_name: bool = False
    #: Leave after sending: wait for the server to close (``./cd5``, ``/quit``).
    quit: bool = False
    #: A text to print locally (nothing is sent).
    notice: str | None = None
    #: Refused for its length: a terminal keeps the line, to be shortened.
    too_long: bool = False
    #: The room a ``/join`` asks for: it becomes the current room once joined.
    joining: str | None = None
    #: The room ``/room`` makes the current one (nothing is sent).
    switch_to: str | None = None
    #: ``/room`` alone: say which room is the current one, and list ours.
    show_rooms: bool = False


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


def chat_limit(name: str, room: str = BROADCAST) -> int:
    """The longest chat text (in UTF-8 bytes) whose broadcast the Go clients can still decode.

    Original: any length was sent; the server's ``channel:channel1:<name>:<text>\\n``
    then exceeded 4092 bytes and every Go client in the room hung.  In a room
    the broadcast is ``channel:<room>:<name>:<text>\\n``.
    """
    return MAX_FRAME - len(join_message(CHANNEL, room, name, "\n").encode("utf-8"))


def private_limit(name: str, target: str) -> int:
    """The longest private text (UTF-8 bytes) whose request, delivery and echo all fit in a frame."""
    frames = (
        join_message(INDIVIDUAL, target, PRIVATE, ""),  # what we send
        join_message(INDIVIDUAL, name, PRIVATE_IN, "\n"),  # what the target gets
        join_message(INDIVIDUAL, target, PRIVATE_SENT, "\n"),  # our echo
    )
    return MAX_FRAME - max(len(frame.encode("utf-8")) for frame in frames)


def _limited(payload: str, message: str, limit: int, lang: str) -> Action:
    length = len(message.encode("utf-8"))
    if length > limit:
        # Both limits: the text's, and the one every payload has (the README's).
        notice = text(lang, "text_too_long", length=length, limit=limit, frame=MAX_FRAME)
        return Action(notice=notice, too_long=True)
    return Action(payload)


# /msg's name: a word, or anything in "double" or 'single' quotes (a name may
# have inner spaces), then white space and the text.
_QUOTED_TARGET = re.compile(r"""(?P<quote>["'])(?P<name>.+?)(?P=quote)(?:\s+(?P<text>.*))?""", re.DOTALL)
_PLAIN_TARGET = re.compile(r"(?P<name>\S+)(?:\s+(?P<text>.*))?", re.DOTALL)


def split_target(rest: str) -> tuple[str, str] | None:
    """``NAME TEXT``, ``"A NAME" TEXT`` or ``'A NAME' TEXT`` -> (name, text); None without both.

    No escapes: a name with one kind of quote goes in the other kind.
    Original: none (the Go client had no private messages); before quoting,
    ``/msg a b c hi`` could only address ``a``.
    """
    rest = rest.lstrip()
    quoted = rest[:1] in ("'", '"')
    match = (_QUOTED_TARGET if quoted else _PLAIN_TARGET).fullmatch(rest)
    if match is None:
        return None
    if not match["text"]:
        return None
    return match["name"], match["text"]


def room_command(command: str, rest: str, name: str, lang: str, room: str) -> Action | None:
    """``/join``, ``/part``, ``/room`` (``/r``), ``/rooms``, ``/who`` and ``/online``; None for another command.

    ``rest`` is the room named (the whole rest of the line: a room's name may
    have inner spaces); ``/part``, ``/who`` and ``/online`` without one are
    about the current room ``room``.  In the lobby ``/who`` and ``/online``
    stay what they were: everyone online.  Whether a name may be a room's is
    the server's to judge; only a ``:``, which would shift its 4-way split,
    is refused here.
    """
    if command not in _ROOM_COMMANDS:
        return None
    if command == "/rooms":
        return Action(join_message(INDIVIDUAL, name, ROOMS, ""))
    if command in ("/room", "/r"):
        return Action(switch_to=rest) if rest else Action(show_rooms=True)
    if command == "/join" and not rest:
        return Action(notice=text(lang, "usage_join"))
    target = rest or room
    if ":" in target:
        return Action(notice=text(lang, "bad_room"))
    if command == "/join":
        return Action(join_message(CHANNEL, target, JOIN, ""), joining=target)
    if command == "/part":
        return Action(join_message(CHANNEL, target, PART, ""))
    if command == "/who":
        lobby = is_lobby(target)
        return Action(join_message(INDIVIDUAL, name, WHO, "") if lobby else join_message(CHANNEL, target, WHO, ""))
    # /online: the lobby's payload stays the original's ./cd3, byte for byte.
    return Action(join_message(CHANNEL, BROADCAST if is_lobby(target) else target, ONLINE_LIST, ""))


_ROOM_COMMANDS = frozenset(("/join", "/part", "/room", "/r", "/rooms", "/who", "/online"))


def slash_command(line: str, name: str, lang: str = "en", room: str = BROADCAST) -> Action:
    """A ``/command`` line (trimmed, starting with one ``/``): what to send or say; ``room`` is the current room."""
    words = line.split(maxsplit=2)
    command = words[0].casefold()
    rest = line[len(words[0]) :].strip()
    if command == "/help":
        return Action(notice=text(lang, "help") + "\n" + text(lang, "help_accounts"))
    identity = client_identity.slash_command(line, name, lang)  # accounts and moderation
    if identity is not None:
        return Action(payload=identity[0], notice=identity[1])
    if command == "/quit":
        return Action(QUIT_PAYLOAD, quit=True)
    action = room_command(command, rest, name, lang, room)
    if action is not None:
        return action
    if command == "/top":
        return Action(join_message(CHANNEL, BROADCAST, ACTIVITY, ""))
    if command == "/nick":
        # Without a name, as ./cd2: the next line is the new name.
        return nickname_action(rest, lang, name) if rest else Action(ask_new_name=True)
    if command == "/msg":
        addressed = split_target(rest)
        if addressed is None:
            return Action(notice=text(lang, "usage_msg"))
        target, message = addressed
        if ":" in target:  # it would shift the server's 4-way split
            return Action(notice=text(lang, "bad_target"))
        payload = join_message(INDIVIDUAL, target, PRIVATE, message)
        return _limited(payload, message, private_limit(name, target), lang)
    return Action(notice=text(lang, "unknown_command", command=sanitize(words[0])))


def parse_line(line: str, name: str, lang: str = "en", room: str = BROADCAST) -> Action:
    """Map one typed line (already trimmed) to what to send, as the Go input loop does.

    ``name`` is our current nickname, which the menu, who and rename payloads
    carry; ``room`` the current room (as the server shows it), where a chat
    line goes.  Beside the Go client's ``./cdN`` commands, which stay the
    original's in any room, a line starting with ``/`` is a slash command
    (:func:`slash_command`); ``//`` sends a text that starts with ``/``.
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
    if line.startswith("//"):
        line = line[1:]
    elif line.startswith("/"):
        return slash_command(line, name, lang, room)
    return _limited(join_message(CHANNEL, room, "", line), line, chat_limit(name, room), lang)


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
    envelope = len(payload.encode("utf-8")) - len(nick.encode("utf-8"))
    return _limited(payload, nick, MAX_FRAME - envelope, lang)


# --- the session: shared by the threads ----------------------------------------


class ServerGone(Exception):
    """The connection closed while we were not leaving."""


class EndOfInput(Exception):
    """Standard input ended."""


class ServerQuit(Exception):
    """The server asked us to leave."""


class Interrupted(Exception):
    """The user pressed Ctrl-C at the terminal's prompt."""


class Inbox:
    """Everything the main thread waits for, in order of arrival.

    Only the main thread takes items out; lines it is not ready for (while a
    nickname awaits its answer, while reconnecting) are held and come out
    first afterwards.
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

    def get_news(self, timeout: float | None = None) -> tuple[str, str | None]:
        """The next item that is not input; input that arrives meanwhile is held.

        Raises ``queue.Empty`` if none came within ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            kind, value = self._queue.get(timeout=remaining)
            if kind in _INPUT:
                self._held.append((kind, value))
            else:
                return kind, value

    def get_new(self, timeout: float | None = None) -> tuple[str, str | None]:
        """The next item that arrives, passing over held ones; ``queue.Empty`` after ``timeout``."""
        return self._queue.get(timeout=timeout)

    def hold(self, kind: str, value: str | None = None) -> None:
        """Keep an item for later: it comes out before anything new."""
        self._held.append((kind, value))

    def holds_lines(self) -> bool:
        """Whether lines are held back."""
        return any(kind == LINE for kind, _ in self._held)


class RoomState:
    """The rooms we are in, which one is the current one, and the answer to the join or part in flight.

    The server is the judge: a room is ours from its join1 to its part1
    (read by the reader thread); the main thread asks (:meth:`expect` before
    a join or part goes out, :meth:`settle` once it is answered), switches
    (``/room``) and reads the current room for each line it sends.  Kept
    through a reconnect, so that the client joins the same rooms again and
    keeps talking where it was.  Thread-safe.

    The current room after parting it: the one that was current before it
    (the lobby if no other), as a browser's tab or an IRC client's window.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Folded name -> name as shown, in the order joined; the lobby is not in it.
        self._rooms: dict[str, str] = {}
        #: Folded names, the most recently current last; the lobby is always in it.
        self._recent: list[str] = [BROADCAST]
        self._expected: tuple[str, bool] | None = None
        self._answer: str | None = None

    def _shown(self, key: str) -> str:
        return self._rooms.get(key, BROADCAST)

    @property
    def current(self) -> str:
        """The current room as the server shows it: ``channel1`` for the lobby."""
        with self._lock:
            return self._shown(self._recent[-1])

    def names(self) -> list[str]:
        """Our rooms as shown: the lobby first, then in the order joined."""
        with self._lock:
            return [BROADCAST, *self._rooms.values()]

    def joined(self) -> list[str]:
        """The rooms beside the lobby, in the order joined: those to join again after a reconnect."""
        with self._lock:
            return list(self._rooms.values())

    def _make_current(self, key: str) -> bool:
        if self._recent[-1] == key:
            return False
        if key in self._recent:
            self._recent.remove(key)
        self._recent.append(key)
        return True

    def expect(self, room: str | None = None, *, switch: bool = False) -> None:
        """A join of ``room`` (``switch``: to become the current room) or a part is about to go out."""
        with self._lock:
            self._expected = (name_key(room), switch) if room is not None else None
            self._answer = None

    def answered(self, mark: str, room: str | None) -> str | None:
        """The server answered a join or part (reader); the new current room if it changed, else None."""
        with self._lock:
            self._answer = mark
            if room is None or mark not in (JOIN_OK, PART_OK):
                return None
            key = name_key(room)
            if mark == PART_OK:
                return self._remove(key)
            if key != BROADCAST:
                self._rooms[key] = room  # as the server shows it: Dev when joined as dev
            if self._expected == (key, True) and self._make_current(key):
                return self._shown(key)
            return None

    def settle(self) -> str | None:
        """The answer to the join or part that was expected (main thread): its mark, or None if none came."""
        with self._lock:
            answer, self._answer, self._expected = self._answer, None, None
            return answer

    def switch(self, room: str) -> bool | None:
        """Make one of our rooms the current one (``/room``): True, False if it was already, None if not ours."""
        key = name_key(room)
        with self._lock:
            if key != BROADCAST and key not in self._rooms:
                return None
            return self._make_current(key)

    def forget(self, room: str) -> str | None:
        """A room we could not join again after a reconnect; the new current room if it changed."""
        with self._lock:
            return self._remove(name_key(room))

    def _remove(self, key: str) -> str | None:
        if key == BROADCAST:
            return None  # nobody leaves the lobby
        self._rooms.pop(key, None)
        was_current = self._recent[-1] == key
        if key in self._recent:
            self._recent.remove(key)
        return self._shown(self._recent[-1]) if was_current else None


class Session:
    """The connection (None until the first, replaced on reconnect), its send lock, our name, the output."""

    def __init__(
        self,
        sock: socket.socket | None,
        lang: str,
        out=None,
        *,
        colour: bool = False,
        address: tuple[str, int] = (DEFAULT_HOST, DEFAULT_PORT),
        reconnect: bool = False,
        tls: ssl.SSLContext | None = None,
        password: str | None = None,
    ) -> None:
        self.sock = sock
        #: The TLS context to (re)connect with (--tls), or None for clear text.
        self.tls = tls
        #: The password of the first nickname (CHATROOM_PASSWORD): it is logged in to, not claimed.
        self.password = password
        self.lang = lang
        self.out = out if out is not None else sys.stdout
        self.colour = colour
        #: Where to reconnect to, and whether to.
        self.address = address
        self.reconnect = reconnect
        #: Reconnect attempts since the name was last accepted.
        self.attempts = 0
        #: The line editor, when stdin and stdout are a terminal.
        self.terminal: Terminal | None = None
        #: Our name as the server last confirmed it ("" until then, as in Go).
        self.name = ""
        #: Set before the quit payload goes out, so the reader knows the
        #: close that follows is expected.
        self.quitting = False
        #: The welcome banner was shown (once per run, not per connection).
        self.greeted = False
        #: False before the first connection, and from losing one to reconnecting.
        self.connected = sock is not None
        #: What the terminal's prompt asks for: a text key, or None for a chat line.
        self.prompt_key: str | None = None
        self.inbox = Inbox()
        self.history = HistoryFilter()
        #: Our rooms and the current one; kept through reconnects.
        self.rooms = RoomState()
        #: The history filter of each room beside the lobby (folded name), used by the reader alone.
        self.room_history: dict[str, HistoryFilter] = {}
        #: What the server still has to answer on the current connection.
        self.awaited = Awaited()
        self._send_lock = threading.Lock()
        self._print_lock = threading.Lock()
        #: The last thing printed (without a terminal) was a prompt that
        #: awaits its answer on the same line; a pipe does not echo it.
        self._line_open = False

    def text(self, key: str, **values: object) -> str:
        """A text in the session's language."""
        return text(self.lang, key, **values)

    def history_of(self, room: str | None) -> HistoryFilter:
        """The history filter of ``room`` (None: the lobby); reader thread only."""
        if room is None or is_lobby(room):
            return self.history
        return self.room_history.setdefault(name_key(room), HistoryFilter())

    def send(self, payload: str) -> None:
        """Send one payload as one frame with one ``sendall``.

        A failed send hangs up, which wakes :func:`read_msg`; it reports the
        close, so there is one path for "the server went away".
        """
        logger.debug("send %r", redacted(payload))
        kind = request_kind(payload)
        try:
            with self._send_lock:
                if kind is not None:  # counted first: the answer may come before sendall returns
                    self.awaited.sent(kind)
                self.sock.sendall(framing.encode(payload))
        except OSError as exc:
            logger.debug("send failed: %s", exc)
            self.hang_up()

    def show(self, *lines: Printable, end: str = "\n") -> None:
        """Print lines whole (two threads print), coloured if the session is."""
        shown = "".join(render(line, self.colour) + end for line in lines)
        with self._print_lock:
            if self.terminal is not None:
                self.terminal.write(shown)
                return
            if not shown:
                return
            if self._line_open:
                shown = "\n" + shown  # whatever follows a prompt starts a line of its own
            self._line_open = not shown.endswith("\n")
            try:
                self.out.write(shown)
                self.out.flush()
            except (OSError, ValueError) as exc:  # stdout closed: nobody to tell
                logger.debug("cannot print: %s", exc)

    def notice(self, key: str, **values: object) -> None:
        """Print one of the client's own texts, styled as the client's."""
        self.show(styled(self.lang, key, "notice", **values))

    def say(self, message: str) -> None:
        """Print a text the client made, styled as the client's."""
        self.show((("notice", message),))

    def hang_up(self) -> None:
        """Shut the socket down; a ``recv`` blocked in another thread returns."""
        if self.sock is None:
            return
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def attach(self, sock: socket.socket) -> None:
        """Use a new connection from now on (the old one is closed)."""
        old, self.sock = self.sock, sock
        if old is not None:
            old.close()
        self.awaited.clear()
        self.quitting = False
        self.connected = True
        self.refresh_prompt()

    # The terminal's prompt ----------------------------------------------------

    def set_prompt(self, key: str | None) -> None:
        """Make the prompt ask for ``key`` (a text key), or for a chat line (None)."""
        self.prompt_key = key
        self.refresh_prompt()

    def refresh_prompt(self) -> None:
        if self.terminal is not None:
            self.terminal.refresh()

    def refusal(self, typed: str) -> str | None:
        """Why the terminal keeps ``typed`` in the input line rather than take it, or None.

        Only for a line too long to send: the user shortens it instead of
        typing it again.  Original: none (it sent any length).
        """
        line = go_trim_space(typed)
        if self.prompt_key == "ask_name":
            action = nickname_action(line, self.lang)
        elif self.prompt_key == "ask_new_name":
            action = nickname_action(line, self.lang, self.name)
        else:
            action = parse_line(line, self.name, self.lang, self.rooms.current)
        return action.notice if action.too_long else None

    def prompt_text(self) -> str:
        """The terminal's prompt, with ANSI colours when the session has them."""
        if self.prompt_key is not None:
            asked = self.text(self.prompt_key)
            return asked if asked.endswith(" ") else asked + " "
        # Offline: a connection was lost, not yet made (the first nickname is asked before).
        offline = self.text("offline") if self.sock is not None and not self.connected else ""
        room = self.rooms.current
        tag = "" if is_lobby(room) else render(_room_tag(self.lang, room), self.colour)
        name = sanitize(self.name)
        if self.colour and name:
            name = f"\x1b[1;{name_colour(name)}m{name}\x1b[0m"
        return f"{offline}{tag}{name}> "


class Terminal:
    """The prompt_toolkit line editor: the reader of a terminal, and the way to its screen.

    It runs on its own asyncio loop in the thread ``read_terminal``.  Each
    line typed goes into the Inbox; Ctrl-D on an empty line is the end of
    input and Ctrl-C a :data:`LEAVE`.  :meth:`write` prints above the prompt
    (prompt_toolkit's ``in_terminal``: erase the prompt, print, draw it again
    with the half-typed line) and returns once the text is on the screen, so
    nothing is lost or reordered when the client exits.
    """

    #: Longest wait for one write to reach the screen before writing directly.
    WRITE_TIMEOUT = 5.0

    def __init__(
        self, inbox: Inbox, message: Callable[[], str], refusal: Callable[[str], str | None] = lambda _: None
    ) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.formatted_text import ANSI
        from prompt_toolkit.history import InMemoryHistory
        from prompt_toolkit.validation import ValidationError, Validator

        class Refusal(Validator):
            # A line refused (too long) is not taken: it stays in the input
            # line, the reason shown under it, until the user has shortened it.
            def validate(self, document) -> None:
                reason = refusal(document.text)
                if reason is not None:
                    raise ValidationError(cursor_position=len(document.text), message=reason)

        class NoPasswords(InMemoryHistory):
            # Up-arrow must never bring back a /login, /register, ... line.
            def append_string(self, string: str) -> None:
                if not client_identity.holds_password(string):
                    super().append_string(string)

        self._inbox = inbox
        # The input line is erased when it is sent: the server's echo shows it.
        self._session: PromptSession[str] = PromptSession(
            erase_when_done=True, validator=Refusal(), validate_while_typing=False, history=NoPasswords()
        )
        self._message = lambda: ANSI(message())
        self._loop = asyncio.new_event_loop()
        self._done = asyncio.Event()
        self._lock = threading.Lock()
        self._stopping = False
        self._writes: set[asyncio.Task] = set()
        self._thread = threading.Thread(target=self._run, name="read_terminal", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        prompter = asyncio.ensure_future(self._prompt_lines())
        await self._done.wait()
        prompter.cancel()
        await asyncio.gather(prompter, return_exceptions=True)
        # Writes already handed to this loop finish before it closes.
        await asyncio.gather(*self._writes, return_exceptions=True)

    async def _prompt_lines(self) -> None:
        while True:
            try:
                line = await self._session.prompt_async(self._message)
            except KeyboardInterrupt:
                self._inbox.put(LEAVE)
                return
            except EOFError:
                self._inbox.put(END_OF_INPUT)
                return
            except Exception as exc:  # noqa: BLE001 - the terminal went away: as the end of input
                logger.debug("terminal input failed: %r", exc)
                self._inbox.put(END_OF_INPUT)
                return
            self._inbox.put(LINE, line)

    def refresh(self) -> None:
        """Draw the prompt again (its text has changed); thread-safe."""
        with self._lock:
            if not self._stopping and self._thread.is_alive():
                self._loop.call_soon_threadsafe(self._session.app.invalidate)

    async def _write(self, shown: str) -> None:
        from prompt_toolkit.application import in_terminal

        task = asyncio.current_task()
        self._writes.add(task)
        try:
            async with in_terminal():
                self._write_now(shown)
        finally:
            self._writes.discard(task)

    def _write_now(self, shown: str) -> None:
        output = self._session.app.output
        output.write_raw(shown)
        output.flush()

    def write(self, shown: str) -> None:
        """Print above the prompt, keeping the line being typed; thread-safe."""
        with self._lock:
            future = None
            if not self._stopping and self._thread.is_alive():
                future = asyncio.run_coroutine_threadsafe(self._write(shown), self._loop)
        if future is None:
            self._write_now(shown)
            return
        try:
            future.result(self.WRITE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - printing must never kill a thread
            logger.debug("cannot print: %r", exc)

    def stop(self) -> None:
        """End the prompt and give the terminal back as it was; idempotent."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            started = self._thread.is_alive()
            if started:
                self._loop.call_soon_threadsafe(self._done.set)
        if started:
            self._thread.join(self.WRITE_TIMEOUT)


# --- the threads ------------------------------------------------------------------


def read_msg(session: Session, sock: socket.socket | None = None) -> None:
    """Reader thread: print every frame from the server until the connection ends."""
    reader = FrameReader(sock if sock is not None else session.sock, MAX_INCOMING)
    malformed: str | None = None  # why the server's stream cannot be read any further
    try:
        while True:
            try:
                payload = reader.read()
            except InvalidUtf8 as exc:
                logger.debug("frame is not UTF-8: %s", exc)
                stamp = _stamp(session.lang, datetime.now())
                bad = session.text("bad_utf8")
                session.show(stamp + styled(session.lang, "system_broadcast", "system", text=bad))
                continue
            if payload is None:
                logger.debug("the server closed the connection")
                break
            if not payload:
                continue
            logger.debug("received %r", payload)
            counting = session.awaited.pending(COUNT)
            incoming = parse_frame(payload, session.lang, datetime.now(), session.name, counting=counting)
            if incoming.name is not None:
                session.name = incoming.name
                session.refresh_prompt()
            now_in = room_answered(session, incoming) if incoming.room_answer is not None else None
            if incoming.public is not None:
                seen = session.history_of(incoming.room)
                if incoming.sent_at is None:
                    seen.saw(*incoming.public)
                elif not seen.admit(incoming.sent_at, *incoming.public):
                    continue  # shown before the reconnect, or live as we joined
            session.show(*incoming.styled)
            if now_in is not None:
                session.notice("room_current", room=("room", sanitize_inline(now_in)))
            if incoming.answers and session.awaited.answer(incoming.answers):
                session.inbox.put(ANSWERED)  # after printing: the goodbye comes after the answer
            if incoming.event is not None:
                session.inbox.put(incoming.event)
    except (NegativeLength, FrameTooLarge) as exc:
        # The stream cannot be trusted after an impossible length: hang up and
        # say so, rather than "the server closed the connection", which it did not.
        logger.debug("malformed frame: %s", exc)
        malformed = str(exc)
        try:
            reader.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    except (OSError, FrameError) as exc:
        # Original: "服务器断开连接 2 err = ..." and, with 1-3 bytes of a header
        # left, never exited.  Any broken stream is the server going away.
        logger.debug("connection lost: %s", exc)
    finally:
        lost_at = time.time()
        for seen in (session.history, *session.room_history.values()):
            seen.lost(lost_at)
        session.connected = False
        session.refresh_prompt()
        if malformed is not None:
            session.show(session.text("malformed_frame", reason=malformed))
        elif not session.quitting:
            session.show(session.text("disconnected"))
        session.inbox.put(CLOSED)


def room_answered(session: Session, incoming: Incoming) -> str | None:
    """Take in the server's answer to a join or part (reader); the new current room if it changed.

    Before the frames that follow it: a joined room's history filter starts
    counting its live lines (its history comes next), a parted room's is
    dropped (a later join shows the room's history afresh).
    """
    now_in = session.rooms.answered(incoming.room_answer, incoming.room)
    if incoming.room is not None and not is_lobby(incoming.room):
        if incoming.room_answer == JOIN_OK:
            session.history_of(incoming.room).joined(time.time())
        elif incoming.room_answer == PART_OK:
            session.room_history.pop(name_key(incoming.room), None)
    session.refresh_prompt()
    return now_in


def start_reader(session: Session) -> None:
    """Start the reader thread of the session's current connection."""
    threading.Thread(target=read_msg, args=(session, session.sock), name="read_msg", daemon=True).start()


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


def _raise_for(kind: str) -> None:
    """Raise what an Inbox item that is not input means for the main thread."""
    if kind == END_OF_INPUT:
        raise EndOfInput
    if kind == CLOSED:
        raise ServerGone
    if kind == SERVER_QUIT:
        raise ServerQuit
    if kind == LEAVE:
        raise Interrupted


def get_user_input(session: Session, prompt: str | None = None) -> str:
    """Ask (a text key: printed, or the terminal's prompt), then return the next line, trimmed as Go does.

    Raises :class:`EndOfInput`, :class:`ServerGone`, :class:`ServerQuit` or
    :class:`Interrupted` when one of those happens first.
    """
    if session.terminal is not None:
        session.set_prompt(prompt)
    elif prompt == "ask_name":
        session.show(session.text(prompt), end="")  # Go: fmt.Print, the answer on the same line
    elif prompt is not None:
        session.show(session.text(prompt))
    try:
        while True:
            kind, value = session.inbox.get()
            if kind == LINE:
                return go_trim_space(value)
            _raise_for(kind)
            # ACCEPTED / REFUSED of a later rename: read_msg has printed them.
    finally:
        if session.terminal is not None and prompt is not None:
            session.set_prompt(None)


def wait_for_answer(session: Session) -> bool:
    """Wait for the server's answer to a first nickname: True if accepted."""
    while True:
        kind, _ = session.inbox.get_news()
        if kind == ACCEPTED:
            return True
        if kind == REFUSED:
            return False
        _raise_for(kind)


def ask_nickname(session: Session, nick: str | None = None, *, reclaim: bool = False) -> None:
    """Ask for a nickname until the server accepts one; ``nick`` is tried first.

    ``reclaim``: ``nick`` is the name we had before a reconnect; if it is
    taken now, say so, then ask.  Original: sent the first nickname and went
    on to chat whatever the answer, so after a refusal the user chatted under
    the address as a name.
    """
    while True:
        if nick is None:
            nick = get_user_input(session, "ask_name")
        action = nickname_action(nick, session.lang)
        if session.password and action.payload is not None:
            action = Action(client_identity.login_payload(nick, session.password))
        if action.notice:
            session.say(action.notice)
        if action.payload is not None:
            if not session.greeted:
                # Before the first nickname goes out, as the Go client: so before
                # anything the server sends once it is accepted (the history).
                # Printed once the name was accepted, it came in the middle of
                # the history the reader was printing meanwhile.
                session.show(session.text("banner"), session.text("banner_slash"))
                session.greeted = True
            session.send(action.payload)
            if wait_for_answer(session):
                return
            # Refused: read_msg has printed the server's reason.
            session.password = None  # a wrong one is not tried on the next name
            if reclaim:
                session.notice("reclaim_refused", name=sanitize(nick))
                reclaim = False
        nick = None


def first_nickname(session: Session) -> str:
    """Ask for the first nickname, before connecting, until there is one that can be sent.

    An empty one is asked again, one too long is said so; whether the
    server takes it, :func:`ask_nickname` finds out once connected.
    """
    while True:
        nick = get_user_input(session, "ask_name")
        action = nickname_action(nick, session.lang)
        if action.notice:
            session.say(action.notice)
        if action.payload is not None:
            return nick


def input_loop(session: Session) -> None:
    """Send what the user types until ``./quit`` (the Go client's input goroutine).

    Returns at ``./quit`` without sending it: :func:`converse` waits for the
    answers to what was sent, then :func:`leave` sends the quit.
    """
    while True:
        action = parse_line(get_user_input(session), session.name, session.lang, session.rooms.current)
        if action.ask_new_name:
            action = nickname_action(get_user_input(session, "ask_new_name"), session.lang, session.name)
        if action.notice:
            session.say(action.notice)
        if action.quit:
            return  # leave() sends the quit, once the answers to what was sent are in
        if action.switch_to is not None:
            switch_room(session, action.switch_to)
        if action.show_rooms:
            current, rooms = session.rooms.current, session.rooms.names()
            session.notice("room_status", room=sanitize_inline(current), rooms=", ".join(map(sanitize_inline, rooms)))
        if action.payload is not None:
            kind = request_kind(action.payload)
            if kind in (JOINING, PARTING):
                session.rooms.expect(action.joining, switch=True)
            session.send(action.payload)
            if kind in (JOINING, PARTING):
                # The next line goes to the room this makes current: wait for it.
                settle(session, kind)


def switch_room(session: Session, room: str) -> None:
    """``/room ROOM``: talk in another of our rooms from now on (nothing is sent)."""
    if session.rooms.switch(room) is None:
        session.notice("room_chat_not_member", room=sanitize_inline(room))
        return
    session.refresh_prompt()
    session.notice("room_current", room=("room", sanitize_inline(session.rooms.current)))


def settle(session: Session, kind: str) -> str | None:
    """Wait (at most ANSWER_TIMEOUT) for the answer to the join or part just sent: its mark, or None.

    Lines typed meanwhile are held: a line after ``/join dev`` goes to dev.
    None when a notice answered instead (a flood refusal) or nothing did in
    time (a server without rooms, such as the original), which is said.
    """
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while session.awaited.pending(kind) and (remaining := deadline - time.monotonic()) > 0:
        try:
            item, _ = session.inbox.get_news(remaining)
        except queue.Empty:
            break
        _raise_for(item)  # the connection lost, or Ctrl-C; an answer: look again
    if session.awaited.pending(kind):
        session.awaited.give_up(kind)  # said now; not waited for again before leaving
        session.notice("no_room_answer")
    return session.rooms.settle()


def pause(session: Session, seconds: float) -> None:
    """Wait ``seconds`` while connected; lines typed meanwhile are held."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            item, _ = session.inbox.get_news(remaining)
        except queue.Empty:
            return
        _raise_for(item)


def rejoin_rooms(session: Session) -> None:
    """After a reconnect, once the name is ours again: join our rooms again; the current one stays.

    One join at a time, each awaited.  One answered neither join1 nor join0
    (the server's flood control, which a burst of rejoins can trip) is asked
    again after REJOIN_PAUSE, REJOIN_TRIES times in all; a room refused
    (join0: the room limit was reached meanwhile, ...) or never answered is
    said and left out, and if it was the current room the previous one is.
    """
    for room in session.rooms.joined():
        answer = None
        for attempt in range(REJOIN_TRIES):
            if attempt:
                pause(session, REJOIN_PAUSE)
            session.rooms.expect(room)
            session.send(join_message(CHANNEL, room, JOIN, ""))
            answer = settle(session, JOINING)
            if answer is not None:
                break
        if answer != JOIN_OK:
            now_in = session.rooms.forget(room)
            session.refresh_prompt()
            session.notice("rejoin_refused", room=sanitize_inline(room))
            if now_in is not None:
                session.notice("room_current", room=("room", sanitize_inline(now_in)))


def wait_offline(session: Session, seconds: float) -> None:
    """Wait before the next attempt to reconnect; typed lines are held for afterwards.

    Raises :class:`Interrupted` on Ctrl-C, :class:`EndOfInput` when the input
    ends with nothing left to send.
    """
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            kind, value = session.inbox.get_new(remaining)
        except queue.Empty:
            return
        if kind == LINE:
            session.inbox.hold(kind, value)
            session.notice("held_offline")
        elif kind == END_OF_INPUT:
            if not session.inbox.holds_lines():
                raise EndOfInput
            session.inbox.hold(kind, value)
        elif kind == LEAVE:
            raise Interrupted
        # Anything else is news of the lost connection: nothing to do.


def open_connection(address: tuple[str, int], tls: ssl.SSLContext | None = None) -> socket.socket:
    """Connect to the server, over TLS with a context; raises ``OSError`` (``ssl.SSLError`` for TLS)."""
    sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT)
    if tls is not None:
        return client_identity.connect_tls(sock, address[0], tls)
    sock.settimeout(None)
    return sock


def reconnect_delay(attempt: int) -> float:
    """How long to wait before reconnect attempt ``attempt`` (1, 2, ...): 0.5 s doubling up to 10 s."""
    return min(RECONNECT_FIRST_DELAY * 2 ** min(attempt - 1, 16), RECONNECT_MAX_DELAY)


def reconnect(session: Session) -> None:
    """Connect again, waiting longer after each attempt, and start reading; say so on screen.

    Tries until it connects, or the user leaves (Ctrl-C, end of input).  The
    attempts are counted until a name is accepted again (see :func:`chat`),
    so a server that accepts and at once closes is not hammered either.
    """
    session.connected = False
    session.awaited.clear()  # what the lost connection owed will never come
    session.rooms.settle()
    session.refresh_prompt()
    while True:
        session.attempts += 1
        delay = reconnect_delay(session.attempts)
        session.notice("reconnect_wait", delay=delay, attempt=session.attempts)
        wait_offline(session, delay)
        try:
            sock = open_connection(session.address, session.tls)
        except OSError as exc:
            logger.debug("reconnect attempt %d failed: %s", session.attempts, exc)
            where = format_address(session.address)
            session.notice("reconnect_failed", address=where, error=describe_error(exc))
            continue
        session.attach(sock)
        start_reader(session)
        session.notice("reconnected")
        return


def chat(session: Session, name: str | None = None) -> None:
    """Nickname (and banner), then chat until the user quits; reconnects if the session may.

    Raises what ends the chat otherwise (:class:`ServerGone` when it may not
    reconnect, :class:`EndOfInput`, ...).
    """
    reclaim = False
    while True:
        try:
            if reclaim:
                # The new connection has no name yet: ask for ours back.
                ask_nickname(session, session.name, reclaim=True)
                reclaim = False
            elif not session.name:
                ask_nickname(session, name)
            session.attempts = 0  # in the room again
            rejoin_rooms(session)
            input_loop(session)
            return
        except ServerGone:
            if not session.reconnect:
                raise
            reclaim = reclaim or bool(session.name)
            reconnect(session)


def wait_for_answers(session: Session) -> bool:
    """Before leaving: wait until the server has answered everything sent, within bounds.

    Original: sent quit at once, and the server could close before the echo
    of the last line (or the answer to the last command) reached us.  Gives
    up after ANSWER_TIMEOUT without an answer, or ANSWERS_MAX_WAIT in all: a
    server need not answer everything (the original does not echo private
    messages).  Returns False if the connection was lost meanwhile; raises
    :class:`Interrupted` on Ctrl-C.
    """
    start = last = time.monotonic()
    # Until the main thread has taken the connection's CLOSED, what it owed is
    # still counted: a loss the reader saw first is found in the Inbox.
    while session.awaited:
        remaining = min(last + ANSWER_TIMEOUT, start + ANSWERS_MAX_WAIT) - time.monotonic()
        if remaining <= 0:
            logger.debug("gave up waiting for the server's answers")
            return True
        try:
            kind, _ = session.inbox.get(timeout=remaining)
        except queue.Empty:
            continue
        if kind == ANSWERED:
            last = time.monotonic()
        elif kind == CLOSED:
            return False
        elif kind == LEAVE:
            raise Interrupted
        elif kind == SERVER_QUIT:
            return True
        # Input after ./quit or the end of input is not read: the user is leaving.
    return True


def leave(session: Session) -> int:
    """Send quit (unless sent), wait a little for the server to close, say goodbye; returns 0."""
    if session.connected:
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


def converse(session: Session, name: str | None = None) -> int:
    """The whole conversation: 0 when the user left, 1 when the server went away."""
    try:
        try:
            chat(session, name)
        except EndOfInput:
            # Original: on end of input, sent "客户端信息读取错误" every 100 ms.
            pass
        # ./quit, or the end of input: the answers first (not on Ctrl-C: out now).
        if not wait_for_answers(session):
            return 1  # the server went away before answering
    except ServerGone:
        return 1
    except (ServerQuit, Interrupted, KeyboardInterrupt):
        pass
    return leave(session)


def format_address(address: tuple[str, int]) -> str:
    """``host:port`` as a user would type it; an IPv6 host in brackets."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe_error(exc: OSError) -> str:
    """What went wrong connecting, briefly: "connection refused", "timed out", ...

    Lower-cased as Go words its errors; an acronym ("IPv6 ...") is kept as is.
    """
    message = exc.strerror or str(exc) or type(exc).__name__
    if message == type(exc).__name__ or not message[1:2].islower():
        return message
    return message[0].lower() + message[1:]


def port_argument(value: str) -> int:
    """``--port``: a TCP port, 1 to 65535.

    Checked here, not by the connect: ``-1`` gave "Servname not supported"
    and ``0`` "Connection refused", neither of which says the port is wrong.
    """
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, not {value!r}")
    return port


# One label of a host name: letters, digits, '-' inside, '_' as some local names have.
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def host_argument(value: str) -> str:
    """``--host``: an IP address (IPv6 with or without brackets) or a host name."""
    host = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii")  # 例え.jp -> xn--r8jz45g.jp
    except UnicodeError:
        ascii_host = ""
    labels = ascii_host[:-1].split(".") if ascii_host.endswith(".") else ascii_host.split(".")
    if not ascii_host or len(ascii_host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise argparse.ArgumentTypeError(f"must be a host name or an IP address, not {value!r}")
    return host


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; a bad ``--host`` or ``--port`` is a usage error (exit status 2)."""
    parser = argparse.ArgumentParser(
        prog="chatroom-client",
        description="Terminal client for redis-chatroom.",
        epilog=(
            "With a terminal, the client edits the line being typed (arriving messages never break it), "
            "colours names and reconnects when the server goes away.  With standard input from a pipe "
            "it reads plain lines, and exits with status 1 when the server goes away unless --reconnect "
            "is given.  Colours are off when standard output is not a terminal, with --no-color, or when "
            "NO_COLOR is set.  Type /help in the chat for the commands."
        ),
    )
    parser.add_argument(
        "--host", type=host_argument, default=DEFAULT_HOST, help="server address (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=port_argument, default=DEFAULT_PORT, help="server port (default: %(default)s)"
    )
    parser.add_argument("--lang", choices=LANGUAGES, default="en", help="language of the client's texts")
    parser.add_argument("--name", help="the nickname to ask for, instead of prompting (asked again if taken); "
                        "with CHATROOM_PASSWORD set, it is logged in to with that password")
    parser.add_argument("--no-color", action="store_true", help="no colours, even on a terminal")
    parser.add_argument(
        "--reconnect",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "when the server goes away, reconnect (waiting 0.5 s, doubling up to 10 s, until Ctrl-C or end "
            "of input) and take the same name back; default: on with a terminal, off with a pipe"
        ),
    )
    parser.add_argument(
        "--tls", action="store_true",
        help="connect over TLS, verifying the server's certificate against the system's CAs (or --tls-ca)",
    )
    parser.add_argument("--tls-ca", metavar="FILE", help="verify the server against these CA certificates (PEM)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output to stderr")
    return parser.parse_args(argv)


def _tolerant_stdout() -> None:
    # A terminal that cannot show CJK text should get '?', not a traceback.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="replace")


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    """Run the client; returns 0 when the user left, 1 when the server went away or was unreachable."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(threadName)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    _tolerant_stdout()
    interactive = _is_terminal(sys.stdin) and _is_terminal(sys.stdout)
    colour = use_colour(args.no_color, os.environ, _is_terminal(sys.stdout))
    address = (args.host, args.port)
    tls_context = None
    if args.tls or args.tls_ca:
        try:
            tls_context = client_identity.tls_context(args.tls_ca)
        except ValueError as exc:
            print(exc, flush=True)
            return 1
    reconnect = interactive if args.reconnect is None else args.reconnect
    # A password on the command line would be visible to every user of the host (ps).
    password = os.environ.get("CHATROOM_PASSWORD") or None
    session = Session(
        None, args.lang, colour=colour, address=address, reconnect=reconnect, tls=tls_context, password=password
    )
    if interactive:
        session.terminal = Terminal(session.inbox, session.prompt_text, session.refusal)
        session.prompt_key = None if args.name else "ask_name"
    try:
        if session.terminal is not None:
            session.terminal.start()
        else:
            stdin_encoding = getattr(sys.stdin, "encoding", None) or "utf-8"
            threading.Thread(
                target=read_stdin, args=(session.inbox, 0, stdin_encoding), name="read_stdin", daemon=True
            ).start()
        try:
            # Original: connected first, then asked, so the server's login
            # deadline ran while the person typed.  Ask first, then connect.
            name = args.name if args.name is not None else first_nickname(session)
        except (EndOfInput, Interrupted, KeyboardInterrupt):
            return leave(session)  # never connected: nothing to tell the server
        try:
            sock = open_connection(address, tls_context)
        except ssl.SSLError as exc:  # a refused certificate above all: one line that says so
            session.show(client_identity.tls_failure(args.host, args.port, exc, args.lang))
            return 1
        except OSError as exc:
            where = format_address(address)
            session.show(session.text("connect_failed", address=where, error=describe_error(exc)))
            return 1
        except KeyboardInterrupt:
            return 130
        session.attach(sock)
        session.notice("connected")
        start_reader(session)
        return converse(session, name)
    finally:
        if session.terminal is not None:
            session.terminal.stop()
        session.hang_up()
        if session.sock is not None:
            session.sock.close()


if __name__ == "__main__":
    sys.exit(main())

"""The client's side of accounts, moderation and TLS: slash commands, their answers, the TLS connection.

Pure functions but :func:`connect_tls`, kept apart from ``client.py``, which
calls them from its own (``slash_command``, ``parse_frame``,
``open_connection``)::

    /register PASSWORD            register the name you hold
    /login NAME PASSWORD          take a registered name (also as the first nickname)
    /password OLD NEW             change your account's password
    /unregister PASSWORD          remove your account
    /kick NAME [REASON]  /ban NAME|ip=ADDRESS DURATION [REASON]  /unban NAME|ip=ADDRESS  /bans
    /mute NAME DURATION [REASON]  /unmute NAME  /announce TEXT            (operators)

A name with spaces is quoted (``/login "big bob" secret``).  A password is
sent, never printed: the client's log hides it (:func:`protocol.redacted`),
and the server never echoes it.
"""

from __future__ import annotations

import socket
import ssl

import protocol as p
from chatroom import tls

#: Slash command -> (the mark it sends, its usage).
COMMANDS = {
    "/register": (p.REGISTER, "/register PASSWORD"),
    "/login": (p.LOGIN, "/login NAME PASSWORD"),
    "/password": (p.PASSWORD, "/password OLD NEW"),
    "/unregister": (p.UNREGISTER, "/unregister PASSWORD"),
    "/kick": (p.KICK, "/kick NAME [REASON]"),
    "/ban": (p.BAN, "/ban NAME|ip=ADDRESS DURATION [REASON]   (DURATION: 10m, 2h, 1d, 0 = until lifted)"),
    "/unban": (p.UNBAN, "/unban NAME|ip=ADDRESS"),
    "/bans": (p.BANS, "/bans"),
    "/mute": (p.MUTE, "/mute NAME DURATION [REASON]"),
    "/unmute": (p.UNMUTE, "/unmute NAME"),
    "/announce": (p.ANNOUNCE, "/announce TEXT"),
}


#: The commands whose line holds a password.
PASSWORD_COMMANDS = frozenset(command for command, (mark, _) in COMMANDS.items() if mark in p.PASSWORD_MARKS)


def holds_password(line: str) -> bool:
    """Whether a typed line is an account command with a password in it (never kept in the line history)."""
    return line.strip().partition(" ")[0].casefold() in PASSWORD_COMMANDS


def login_payload(name: str, password: str) -> str:
    """``individual::login:<name>:<password>``: the first nickname, or a later one, with its password."""
    return p.join_message(p.INDIVIDUAL, "", p.LOGIN, f"{name}:{password}")


def slash_command(line: str, name: str, lang: str = "en") -> tuple[str | None, str | None] | None:
    """An account or moderation ``/command`` line: (the payload, None) or (None, a notice to print).

    None when the line is none of these commands (the caller goes on with its own).
    """
    command, _, rest = line.partition(" ")
    found = COMMANDS.get(command.casefold())
    if found is None:
        return None
    mark, usage = found
    rest = rest.strip()
    text: str | None = rest
    if mark == p.LOGIN:
        login_name, password = p.split_name(rest)
        if not login_name or not password or ":" in login_name:
            text = None
        else:
            return login_payload(login_name, password), None
    elif mark == p.PASSWORD:
        old, new = p.split_name(rest)
        text = f"{old}:{new}" if old and new and ":" not in old else None
    elif mark == p.BANS:
        text = ""
    elif not rest:
        text = None
    if text is None:
        return None, p.text(lang, "usage_command", usage=usage)
    return p.join_message(p.INDIVIDUAL, name, mark, text), None


def answer_text(mark: str, message: str, lang: str = "en") -> tuple[str, bool] | None:
    """For an answer of an account or moderation command: (the text to show, whether it refused a name).

    ``register1``, ``password1`` and ``unregister1`` carry the account's name,
    and are worded here; the others carry the server's own text.  A
    ``login0`` refuses a nickname: the caller asks for one again if it was
    the first.  None for any other mark.
    """
    if mark not in p.ANSWER_MARKS:
        return None
    worded = {
        p.done_mark(p.REGISTER): "registered_you",
        p.done_mark(p.PASSWORD): "password_changed",
        p.done_mark(p.UNREGISTER): "unregistered_you",
    }.get(mark)
    text = p.text(lang, worded, name=message) if worded else message
    return text, mark == p.refused_mark(p.LOGIN)


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The context ``--tls`` connects with: the system's CAs, or ``--tls-ca``'s; raises ValueError."""
    return tls.client_context(ca_file)


def connect_tls(sock: socket.socket, host: str, context: ssl.SSLContext) -> tls.TlsStream:
    """The TLS handshake on a connected socket (within its timeout); a stream the client's threads share.

    Raises ``ssl.SSLError`` (a refused certificate: ``ssl.SSLCertVerificationError``)
    or ``OSError``; the socket is closed then.
    """
    try:
        ssl_sock = context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    return tls.TlsStream.connected(ssl_sock)


def tls_failure(host: str, port: int, exc: BaseException, lang: str = "en") -> str:
    """One line for a TLS connection that failed: where, and why (a refused certificate says so)."""
    return p.text(lang, "tls_failed", host=host, port=port, reason=tls.describe_tls_error(exc))

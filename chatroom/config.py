"""The settings: one :class:`Config` field each, with its default, help, range and flag.

A default is written once, in :class:`Config`; :func:`build_parser` makes the
command line from the fields, so a flag, its environment variable and the
value a test passes to ``Config(...)`` are checked by the same converter.
A value out of range is refused when it is parsed: a usage error naming the
flag or the variable (exit status 2), or ValueError for ``Config(...)``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
from dataclasses import dataclass, field, fields

import protocol as p
from chatroom import tls
from chatroom.redisdb import check_redis_url
from framing import MAX_FRAME

logger = logging.getLogger("chatroom.server")


def _number(kind, minimum=None, maximum=None, *, off_at_zero=False):
    """A converter from text that also checks the range; None bounds are open.

    ``off_at_zero``: 0 is allowed whatever the minimum, and means "no limit".
    """

    def convert(value):
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"not {'a whole number' if kind is int else 'a number'}: {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"not a finite number: {value!r}")
        if off_at_zero and number == 0:
            return number
        if minimum is not None and number < minimum:
            lowest = f"0 (off) or at least {minimum:g}" if off_at_zero and minimum > 0 else f"at least {minimum:g}"
            raise ValueError(f"must be {lowest}, not {value}")
        if maximum is not None and number > maximum:
            raise ValueError(f"must be at most {maximum:g}, not {value}")
        return number

    return convert


def _choice(*choices):
    def convert(value):
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
        return value

    return convert


def _cpu_spec(value):
    if value in ("auto", "none") or (isinstance(value, str) and value.isascii() and value.isdigit()):
        return value
    raise ValueError(f"not auto, none or a CPU number: {value!r}")


def _redis_url(value):
    if value in (None, ""):
        return None
    check_redis_url(value)
    return value


def _server_id(value):
    if value in (None, ""):
        return None
    if len(value) > 64 or not value.isprintable() or any(c.isspace() for c in value):
        raise ValueError(f"must be 1-64 printable characters without spaces: {value!r}")
    return value


def _text(value):
    return value


def _optional_text(value):
    return None if value in (None, "") else value


def _boolean(value):
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not yes or no (1/0, true/false, on/off): {value!r}")


def _optional_port(value):
    if value in (None, ""):
        return None
    return _number(int, 0, 65535)(value)


_ORIGIN = re.compile(r"https?://(\[[0-9a-f:.]+\]|[^\s/:@\[\]?#]+)(:[0-9]{1,5})?")


def _origins(value):
    """``--ws-origins``: a comma-separated allow-list of ``scheme://host[:port]``, as browsers send them."""
    if value in (None, "", ()):
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    origins = []
    for item in items:
        origin = str(item).strip().lower()  # browsers send the scheme and host in lower case
        if not _ORIGIN.fullmatch(origin):
            raise ValueError(f"not an origin (http[s]://host[:port], comma-separated): {item!r}")
        origins.append(origin)
    return tuple(origins)


# An HTTP header name (RFC 9110's token).
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def _header_name(value):
    if value in (None, ""):
        return None
    if not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"not an HTTP header name: {value!r}")
    return value


def _readable_file(value):
    if value in (None, ""):
        return None
    try:
        with open(value, "rb"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot read {value!r}: {exc.strerror}") from None
    return value


def setting(default, help, *, flag=True, env=None, convert=_text, metavar=None, group=None):
    """A :class:`Config` field and everything its flag needs: one place for its default.

    ``convert`` turns text (a flag, an environment variable) into the value
    and raises ValueError, with a reason, for a value out of range; it checks
    values given directly to Config as well.  ``flag=False``: no command-line
    flag (tests and embedders set it).
    """
    metadata = {"help": help, "flag": flag, "env": env, "convert": convert, "metavar": metavar, "group": group}
    return field(default=default, metadata=metadata)


LIMITS = "limits"
WEB = "web"
TLS = "tls"

#: Largest --max-frame: beyond it a single frame is a memory attack of its own.
FRAME_CEILING = 1 << 24
#: Smallest --max-frame: the server's own longest reply (the menu to a 32-character name) must fit.
FRAME_FLOOR = 512


@dataclass(kw_only=True)
class Config:
    """Everything a server instance needs; tests build many in one process.

    Each field is a :func:`setting`: its default, help text, flag, environment
    variable and range are written once here; :func:`parse_args` builds the
    command line from them and every value is checked when a Config is made.
    """

    host: str = setting("127.0.0.1", "listen address", env="CHATROOM_HOST")
    port: int = setting(
        9527, "listen port (0: any free port, printed at start)", env="CHATROOM_PORT", convert=_number(int, 0, 65535)
    )
    redis_url: str | None = setting(
        None, "e.g. redis://localhost:6379/0; none: an embedded fakeredis", env="REDIS_URL", convert=_redis_url
    )
    key_prefix: str = setting("chatroom:", "prefix of every Redis key and channel", env="CHATROOM_KEY_PREFIX")
    lang: str = setting("en", "language of the texts: en, or zh (the original's)", env="CHATROOM_LANG",
                        convert=_choice(*p.LANGUAGES))
    #: Largest frame payload accepted or sent (the Go programs decode <= 4092).
    max_frame: int = setting(
        MAX_FRAME,
        f"largest frame payload in bytes ({FRAME_FLOOR}..{FRAME_CEILING}; above {MAX_FRAME} the original Go "
        "client cannot decode every frame)",
        convert=_number(int, FRAME_FLOOR, FRAME_CEILING),
        group=LIMITS,
    )
    #: Concurrent chat connections; sizes the Redis connection pool.
    max_clients: int = setting(
        4000, "concurrent connections, at least 1 (sizes the Redis pool)", convert=_number(int, 1, 1_000_000),
        group=LIMITS,
    )
    #: A send blocked this long (a client that stopped reading) drops the client.
    send_timeout: float = setting(
        10.0, "seconds a send may block before the client is dropped (0: off)", convert=_number(float, 0),
        group=LIMITS,
    )
    #: How long shutdown waits for the connections' threads, in all.
    close_timeout: float = setting(5.0, "seconds shutdown waits for threads", flag=False,
                                   convert=_number(float, 0))
    #: Public messages kept for newcomers (0 = no history).
    history: int = setting(
        50, "public messages kept for newcomers (0: none)", convert=_number(int, 0, 10_000)
    )
    #: Rooms beside the lobby (see chatroom/rooms.py); both limits hold across every process.
    max_rooms_per_user: int = setting(
        20, "rooms one user may be in, the lobby aside (at least 1)", convert=_number(int, 1, 100_000),
        group=LIMITS,
    )
    max_rooms: int = setting(
        10_000, "rooms existing at once, across every server process (at least 1)",
        convert=_number(int, 1, 10_000_000), group=LIMITS,
    )
    #: An empty room's history stays this long, so that people who come back find the conversation.
    room_history_ttl: float = setting(
        86400.0, "seconds an empty room's history is kept for the next joiner (0: deleted with the room)",
        convert=_number(float, 0),
    )
    #: Seconds from connecting to the first whole frame (0 = no limit).  Long
    #: enough for a person to type a name: both clients connect first.
    login_timeout: float = setting(
        300.0, "seconds from connecting to the first whole frame (0: off)", convert=_number(float, 0),
        group=LIMITS,
    )
    #: Seconds from a frame's first byte to its last (0 = no limit).
    frame_timeout: float = setting(
        10.0, "seconds to finish a begun frame (0: off)", convert=_number(float, 0), group=LIMITS
    )
    #: Seconds of silence before a client that never took a name is dropped
    #: (0 = never).  Named users are never dropped for silence: a reader is
    #: a user too; TCP keepalive finds the ones whose host vanished.
    idle_timeout: float = setting(
        600.0, "seconds of silence before a connection without a nickname is dropped (0: off)",
        convert=_number(float, 0), group=LIMITS,
    )
    #: Messages per second a client may send on average (0 = no limit) ...
    rate_limit: float = setting(
        10.0, "messages a second on average (0: off)", convert=_number(float, 0), metavar="MSGS_PER_S",
        group=LIMITS,
    )
    #: ... and in one burst.  Past it messages are refused; a client that keeps
    #: flooding (2 x burst refusals in a row) is disconnected.
    rate_burst: int = setting(
        20, "messages in one burst, at least 1", convert=_number(int, 1, 1_000_000), metavar="N", group=LIMITS
    )
    #: Concurrent connections from one IP address (0 = no limit).
    max_per_ip: int = setting(
        64, "concurrent connections from one address (0: off)", convert=_number(int, 0, 1_000_000),
        group=LIMITS,
    )
    #: This process's name among the servers sharing one Redis; default "<host>-<port>",
    #: so that a process restarted in the same place cleans up after its previous run.
    server_id: str | None = setting(
        None, "this process among several (default host-port)", env="CHATROOM_SERVER_ID", convert=_server_id
    )
    #: A server whose heartbeat is older than this is dead: a survivor removes its users.
    dead_after: float = setting(
        15.0, "seconds without a heartbeat after which a server is dead (at least 0.3)",
        convert=_number(float, 0.3, 86400),
    )
    #: Users of a dead process a survivor removes (and announces) per second:
    #: every leave notice wakes every listener of every process, so thousands at
    #: once would stall the survivors' rooms.  0 = as fast as Redis goes.
    reap_rate: float = setting(
        1000.0, "users of a dead server removed and announced per second (0: as fast as possible)",
        convert=_number(float, 0), metavar="PER_S",
    )
    #: The longest a graceful stop (SIGTERM, SIGINT) takes: past it the process
    #: exits, and what it left in Redis is cleaned up as after a crash.
    shutdown_grace: float = setting(
        10.0, "seconds a graceful stop may take before the process exits anyway (at least 1)",
        convert=_number(float, 1, 3600),
    )
    #: Prometheus metrics and the health endpoints (/metrics, /healthz, /readyz); 0 = off.
    metrics_port: int = setting(
        0, "port of the Prometheus metrics and the /healthz and /readyz endpoints (0: off)",
        env="CHATROOM_METRICS_PORT", convert=_number(int, 0, 65535),
    )
    metrics_host: str = setting(
        "127.0.0.1", "address of the metrics endpoint (the default keeps it off the public network)",
        env="CHATROOM_METRICS_HOST",
    )
    #: Seconds a busy pub/sub listener waits for more messages before it wakes (0 = never):
    #: fewer thread wake-ups per delivery, for at most this much latency ...
    listener_linger: float = setting(0.01, "seconds a busy listener lingers", flag=False,
                                     convert=_number(float, 0, 1))
    #: ... or longer in a big room: busy listeners together wake about this often a
    #: second at most (the linger grows with the users connected), up to
    #: MAX_LINGER.  0 = the fixed linger above.
    wakeup_budget: float = setting(
        5000.0,
        "busy listeners wake about this often a second at most; they linger longer in bigger rooms, "
        "and join notices go out in batches further apart (0: a fixed 10 ms linger, batches 0.1 s apart)",
        convert=_number(float, 0),
        metavar="PER_S",
    )
    #: While the process has CPU to spare, a busy listener lingers less than
    #: the budget asks, down to this fraction of it: fewer wake-ups matter
    #: only once the CPU is short (see ListenerEngine.linger_seconds).  1 = never.
    linger_shrink: float = setting(
        0.25, "while the process has CPU to spare, busy listeners linger down to this fraction of the linger "
        "the budget sets (0.05..1; 1: always the budget's)",
        convert=_number(float, 0.05, 1),
    )
    #: The browser's front door (chatroom/websocket.py): the page at /, the chat at /ws.
    ws_port: int | None = setting(
        None, "serve the web page and WebSocket chat on this port (0: any free port; none: off)",
        env="CHATROOM_WS_PORT", convert=_optional_port, group=WEB,
    )
    ws_host: str | None = setting(None, "address of the web listener (default: --host)", convert=_optional_text,
                                  group=WEB)
    #: Origin headers allowed to open the chat: defends against cross-site WebSocket
    #: hijacking.  None: the page's own origin only (the one the request's Host names).
    ws_origins: tuple[str, ...] | None = setting(
        None, "comma-separated origins whose pages may open the chat, e.g. https://chat.example.com "
        "(default: the page's own origin)", convert=_origins, metavar="ORIGINS", group=WEB,
    )
    #: The header a reverse proxy puts the client's address in; its last entry counts
    #: for --max-per-ip and the log.  None: the socket's own address.
    trust_proxy: str | None = setting(
        None, "take the client's address from this header set by your reverse proxy, e.g. X-Forwarded-For "
        "(only behind one: clients can send any header)", convert=_header_name, metavar="HEADER", group=WEB,
    )
    #: Pings keep idle tabs (and the proxies between) connected; a tab that does not
    #: answer before the next one is due has gone away.  Pongs are not chat: no flood
    #: token, no activity, and they do not keep a nameless connection from its idle limit.
    ws_ping_interval: float = setting(
        20.0, "seconds between WebSocket pings; no pong by the next ping drops the tab (0: off)",
        convert=_number(float, 0.05, 3600, off_at_zero=True), group=WEB,
    )
    #: The CPU the process runs on: "auto", "none" or a number (see :func:`pin_to_cpu`).
    #: Applied by :func:`main` only: it is the whole process's, not one server's.
    cpu: str = setting(
        "auto", "run on this one CPU: auto (one chosen by the port), none (any) or a CPU number", env="CHATROOM_CPU",
        convert=_cpu_spec,
    )
    # --- TLS and passwords (chatroom/tls.py, chatroom/accounts.py) ---
    #: A second, TLS listener beside the plaintext one (None: none; 0: any free port).
    tls_port: int | None = setting(
        None, "also listen for TLS on this port (0: any free port); needs --tls-cert and --tls-key",
        env="CHATROOM_TLS_PORT", convert=_optional_port, group=TLS,
    )
    tls_cert: str | None = setting(
        None, "the TLS certificate chain, PEM (read again on SIGHUP)", env="CHATROOM_TLS_CERT",
        convert=_readable_file, metavar="FILE", group=TLS,
    )
    tls_key: str | None = setting(
        None, "the TLS private key, PEM (read again on SIGHUP)", env="CHATROOM_TLS_KEY",
        convert=_readable_file, metavar="FILE", group=TLS,
    )
    #: A TLS client must finish its handshake within this long of connecting.
    tls_handshake_timeout: float = setting(
        10.0, "seconds a TLS client has to finish its handshake", convert=_number(float, 0.01, 3600), group=TLS,
    )
    #: The plaintext listener on --port; the original Go client needs it.
    plaintext: bool = setting(
        True, "listen in clear text on --port (the original Go client needs it); --no-plaintext: TLS only",
        env="CHATROOM_PLAINTEXT", convert=_boolean, group=TLS,
    )
    #: Accept passwords in clear text from any address, not only from loopback.
    allow_plaintext_passwords: bool = setting(
        False, "accept register, login and password changes in clear text from any address (private networks)",
        env="CHATROOM_ALLOW_PLAINTEXT_PASSWORDS", convert=_boolean, group=TLS,
    )

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None and item.default is None:
                continue
            try:
                setattr(self, item.name, item.metadata["convert"](value))
            except ValueError as exc:
                raise ValueError(f"{item.name}: {exc}") from None
        self._check_tls()

    def _check_tls(self) -> None:
        """The TLS settings make sense together, and the certificate and key load."""
        if self.tls_port is None:
            if self.tls_cert or self.tls_key:
                raise ValueError("tls_port: --tls-cert and --tls-key need --tls-port")
            if not self.plaintext:
                raise ValueError("plaintext: --no-plaintext needs --tls-port (else nothing would listen)")
            return
        if not (self.tls_cert and self.tls_key):
            raise ValueError("tls_port: --tls-port needs --tls-cert and --tls-key")
        if self.plaintext and self.tls_port and self.tls_port == self.port:
            raise ValueError(f"tls_port: --tls-port and --port are both {self.port}")
        tls.server_context(self.tls_cert, self.tls_key)  # ValueError with the reason


def _flag_type(name: str, convert):
    """An argparse ``type`` from a setting's converter: its ValueError becomes a usage error."""

    def flag_type(value: str):
        try:
            return convert(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    flag_type.__name__ = name
    return flag_type


def build_parser(environ=None, *, only=None, prog="chatroom-server",
                 description="redis-chatroom server") -> argparse.ArgumentParser:
    """The command line, generated from :class:`Config`: a flag per setting.

    A setting's environment variable, when set, replaces its default; it is
    checked as the flag would be, and a bad one is a usage error naming it.
    ``only``: the names of the settings to make flags of (the admin command
    line takes the Redis ones), all by default.
    """
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog=prog, description=description)
    groups = {
        LIMITS: parser.add_argument_group("limits (the help of each says what 0 means)"),
        TLS: parser.add_argument_group("TLS and passwords"),
        WEB: parser.add_argument_group("the web page and the browsers' WebSocket chat (off without --ws-port)"),
    }
    bad_environment = []
    for item in fields(Config):
        meta = item.metadata
        if not meta["flag"] or (only is not None and item.name not in only):
            continue
        default = item.default
        env = meta["env"]
        help_text = meta["help"]
        if item.default is not None and not isinstance(item.default, bool):  # argparse says a flag's own
            help_text += f" [default: {item.default}]"
        if env:
            help_text += f" (env {env})"
            if environ.get(env):
                # Not shown in the help: REDIS_URL may hold a password.
                try:
                    default = meta["convert"](environ[env])
                except ValueError as exc:  # each reason quotes the value (a URL masked)
                    bad_environment.append(f"{env}: {exc}")
        target = groups.get(meta["group"], parser)
        flag = "--" + item.name.replace("_", "-")
        if isinstance(item.default, bool):  # --name / --no-name
            target.add_argument(flag, dest=item.name, default=default, action=argparse.BooleanOptionalAction,
                                help=help_text)
            continue
        target.add_argument(
            flag,
            dest=item.name,
            default=default,
            type=_flag_type(item.name.replace("_", "-"), meta["convert"]),
            metavar=meta["metavar"],
            help=help_text,
        )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v: info, -vv: debug")
    if bad_environment:
        parser.error("; ".join(bad_environment))
    return parser


def parse_args(argv: list[str] | None = None, environ=None) -> Config:
    """Command-line flags (and environment variables) -> a checked :class:`Config`; usage errors exit 2."""
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    values = {item.name: getattr(args, item.name) for item in fields(Config) if item.metadata["flag"]}
    try:
        config = Config(**values)
    except ValueError as exc:  # settings that do not go together (TLS), or a bad default
        parser.error(str(exc))
    if config.max_frame > MAX_FRAME:
        logger.warning(
            "--max-frame %d: the original Go client cannot decode frames over %d bytes", config.max_frame, MAX_FRAME
        )
    return config

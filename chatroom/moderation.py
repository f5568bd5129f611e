"""Operators: kick, ban, mute and announce, on every process; the moderation log.

An operator is a logged-in user whose account has the operator flag (granted
by the admin command line, :mod:`chatroom.admin`).  Their commands, each
answered ``<mark>1:<what was done>`` or ``<mark>0:<reason>``::

    individual:<me>:kick:<name> [reason]                    disconnect the user
    individual:<me>:ban:<name or ip=address> <duration> [reason]
    individual:<me>:unban:<name or ip=address>
    individual:<me>:bans:                                    the bans, with their expiry
    individual:<me>:mute:<name> <duration> [reason]          chat and private messages refused
    individual:<me>:unmute:<name>
    individual:<me>:announce:<text>                          a system message to everyone

A name with spaces is quoted (``kick:"big bob" spam``); a duration is
``30s``, ``10m``, ``2h``, ``1d``, ``1w``, or ``0`` for until lifted; an address
may be a network (``ip=10.0.0.0/8``).  Each action is logged at warning
level, appended to the capped list ``moderationLog`` that the admin command
line prints, and the rooms of the user concerned are told (:meth:`Moderation.announce_about`).

Bans and mutes live in Redis with their expiry (``bans``: ``name:<key>`` or
``ip:<network>`` -> a :class:`Sanction` as JSON; ``mutes``: name_key -> the
same), so a restart or another process honours them.  Every process keeps
them in memory too (:class:`Sanctions`: loaded at start, kept current by the
control channel, reloaded after a Redis outage), so that the accept loop
refuses a banned address without a Redis round trip, and a chat message is
checked for a mute without one.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import redis

import protocol as p
from chatroom.connection import Connection, system_payload
from chatroom.redisdb import Keys

if TYPE_CHECKING:
    from chatroom.accounts import Accounts
    from chatroom.control import ControlChannel

logger = logging.getLogger("chatroom.server")

#: Entries kept in the moderation log (newest first).
MODERATION_LOG_SIZE = 1000
#: The longest ban or mute with an end: ten years.
MAX_DURATION = 3650 * 86400

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d{1,7})([smhdw])")

USAGE = {
    p.KICK: "kick:NAME [reason]",
    p.BAN: "ban:NAME|ip=ADDRESS DURATION [reason]  (DURATION: 10m, 2h, 1d, 0 = until lifted)",
    p.UNBAN: "unban:NAME|ip=ADDRESS",
    p.MUTE: "mute:NAME DURATION [reason]",
    p.UNMUTE: "unmute:NAME",
    p.ANNOUNCE: "announce:TEXT",
}


# --- parsing: pure functions ---------------------------------------------------------


def parse_duration(text: str) -> float | None:
    """Seconds for ``30s``, ``10m``, ``2h``, ``1d``, ``1w`` (or ``1h30m``); 0 for ``0`` (until lifted); None if bad."""
    if text == "0":
        return 0
    parts = _DURATION.findall(text.lower())
    if not parts or "".join(n + u for n, u in parts) != text.lower():
        return None
    seconds = sum(int(number) * _UNITS[unit] for number, unit in parts)
    return seconds if 0 < seconds <= MAX_DURATION else None


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """An address (one host) or a network (``10.0.0.0/8``); an IPv4 address mapped into IPv6 as IPv4."""
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen == 128:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.ip_network(mapped)
    return network


def peer_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer's address as bans compare it (an IPv4-mapped IPv6 address as IPv4), or None."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def shown_network(network) -> str:
    """``ip=1.2.3.4`` for one host, ``ip=10.0.0.0/8`` for a network."""
    one_host = network.prefixlen == network.max_prefixlen
    return f"ip={network.network_address if one_host else network}"


def reason_suffix(reason: str) -> str:
    """``": spamming"`` for a reason, nothing without one."""
    return f": {reason}" if reason else ""


class Sanction(NamedTuple):
    """A ban or a mute: until when (unix time; 0: until lifted), by whom, why, since when, and its target as shown."""

    until: float
    by: str
    reason: str
    at: float
    shown: str

    def active(self, now: float | None = None) -> bool:
        """Whether it still holds."""
        return self.until == 0 or self.until > (time.time() if now is None else now)

    def until_text(self, lang: str) -> str:
        """"until 2025-12-01 23:15 UTC", or "until lifted"."""
        if self.until == 0:
            return p.text(lang, "until_lifted")
        return p.text(lang, "until_time", time=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.until)))

    def to_json(self) -> str:
        """As stored in Redis and sent on the control channel."""
        return json.dumps(self._asdict())

    @classmethod
    def from_json(cls, data: str | bytes) -> Sanction | None:
        """The sanction stored as ``data``, or None if it is not one."""
        try:
            fields = json.loads(data)
            return cls(float(fields["until"]), str(fields["by"]), str(fields["reason"]), float(fields["at"]),
                       str(fields["shown"]))
        except (ValueError, KeyError, TypeError):
            return None


def ban_field(target: str) -> tuple[str, str] | str:
    """(the ``bans`` field, the target as shown) for ``NAME`` or ``ip=ADDRESS``; else the text key of the problem."""
    if target.lower().startswith("ip="):
        network = parse_network(target[3:])
        if network is None:
            return "bad_address"
        return f"ip:{network}", shown_network(network)
    if p.guest_id(target) is not None:
        return "ban_guest"
    problem = p.name_problem(target)
    if problem is not None:
        return problem
    return f"name:{p.name_key(target)}", target


# --- what every process knows ------------------------------------------------------------


class Sanctions:
    """The bans and mutes in force, as this process knows them (see the module docstring)."""

    def __init__(self, rdb: redis.Redis, keys: Keys) -> None:
        self.rdb = rdb
        self.keys = keys
        self.bans: dict[str, Sanction] = {}
        self.mutes: dict[str, Sanction] = {}
        self._networks: list[tuple[object, Sanction]] = []

    def load(self) -> None:
        """Read every ban and mute from Redis (at start, and after the control channel was lost)."""
        now = time.time()
        for key, target in ((self.keys.bans, self.bans), (self.keys.mutes, self.mutes)):
            loaded, expired = {}, []
            for field, data in self.rdb.hgetall(key).items():
                sanction = Sanction.from_json(data)
                if sanction is not None and sanction.active(now):
                    loaded[field.decode()] = sanction
                else:
                    expired.append(field)
            if expired:
                self.rdb.hdel(key, *expired)
            target.clear()
            target.update(loaded)
        self._index_networks()

    def set_ban(self, field: str, sanction: Sanction | None) -> None:
        """Record (or, with None, lift) one ban."""
        if sanction is None:
            self.bans.pop(field, None)
        else:
            self.bans[field] = sanction
        self._index_networks()

    def set_mute(self, name_key: str, sanction: Sanction | None) -> None:
        """Record (or, with None, lift) one mute."""
        if sanction is None:
            self.mutes.pop(name_key, None)
        else:
            self.mutes[name_key] = sanction

    def _index_networks(self) -> None:
        networks = []
        for field, sanction in list(self.bans.items()):
            if field.startswith("ip:"):
                network = parse_network(field[3:])
                if network is not None:
                    networks.append((network, sanction))
        self._networks = networks

    def name_ban(self, name_key: str | None) -> Sanction | None:
        """The ban in force on a name, or None."""
        sanction = self.bans.get(f"name:{name_key}") if name_key else None
        return sanction if sanction is not None and sanction.active() else None

    def address_ban(self, address: str) -> Sanction | None:
        """The ban in force on a peer address (or a network holding it), or None."""
        if not self._networks:
            return None
        ip = peer_address(address)
        if ip is None:
            return None
        for network, sanction in self._networks:
            if ip.version == network.version and ip in network and sanction.active():
                return sanction
        return None

    def mute(self, name_key: str | None) -> Sanction | None:
        """The mute in force on a name, or None."""
        sanction = self.mutes.get(name_key) if name_key else None
        return sanction if sanction is not None and sanction.active() else None

    def active_bans(self) -> list[tuple[str, Sanction]]:
        """(field, ban) of every ban in force, sorted by target."""
        return sorted(((f, s) for f, s in self.bans.items() if s.active()), key=lambda item: item[1].shown.lower())


def read_bans(rdb: redis.Redis, keys: Keys) -> list[Sanction]:
    """Every ban in force, from Redis (the admin command line)."""
    sanctions = Sanctions(rdb, keys)
    sanctions.load()
    return [sanction for _, sanction in sanctions.active_bans()]


def lift_ban(rdb: redis.Redis, keys: Keys, target: str) -> bool | str:
    """Lift a ban on ``NAME`` or ``ip=ADDRESS`` and tell every process; False if there was none, or the problem."""
    field = ban_field(target)
    if isinstance(field, str):
        return field
    if not rdb.hdel(keys.bans, field[0]):
        return False
    rdb.publish(keys.control, json.dumps({"op": "unban", "field": field[0]}))
    return True


def append_log(rdb: redis.Redis, keys: Keys, by: str, action: str, target: str, detail: str = "") -> None:
    """Add one entry to the capped moderation log."""
    entry = json.dumps({"at": time.time(), "by": by, "action": action, "target": target, "detail": detail})
    pipe = rdb.pipeline()
    pipe.lpush(keys.moderation_log, entry)
    pipe.ltrim(keys.moderation_log, 0, MODERATION_LOG_SIZE - 1)
    pipe.execute()


def read_log(rdb: redis.Redis, keys: Keys, count: int) -> list[dict]:
    """The newest ``count`` entries of the moderation log, oldest first."""
    entries = []
    for data in reversed(rdb.lrange(keys.moderation_log, 0, count - 1)):
        try:
            entries.append(json.loads(data))
        except ValueError:
            continue
    return entries


# --- the commands ------------------------------------------------------------------------


class Moderation:
    """The operators' commands, and the rules bans and mutes impose on everyone.

    Handed what it needs: Redis and the key names, the control channel, the
    accounts (who is an operator), the sanctions, the local connections, and
    ``find_user(name) -> user id or None`` (the server's ``get_users_channel``).
    """

    def __init__(
        self,
        rdb: redis.Redis,
        keys: Keys,
        control: ControlChannel,
        accounts: Accounts,
        sanctions: Sanctions,
        local_connections: Callable[[], list[Connection]],
        find_user: Callable[[str], str | None],
    ) -> None:
        self.rdb = rdb
        self.keys = keys
        self.control = control
        self.accounts = accounts
        self.sanctions = sanctions
        self.local_connections = local_connections
        self.find_user = find_user
        control.on("kick", self._kicked)
        control.on("ban", self._banned)
        control.on("unban", self._unbanned)
        control.on("mute", self._muted)
        control.on("unmute", self._unmuted)
        control.on_resubscribed(sanctions.load)

    # --- the rules for everyone -----------------------------------------------------

    def address_refusal(self, address: str, lang: str) -> dict | None:
        """For the accept loop: the values of the ``banned_you`` text if ``address`` is banned, else None.

        No Redis round trip: the bans are in memory.
        """
        sanction = self.sanctions.address_ban(address)
        if sanction is None:
            return None
        return {"until": sanction.until_text(lang), "reason": reason_suffix(sanction.reason)}

    def name_problem(self, name: str) -> str | None:
        """"name_banned" if ``name`` is banned, else None."""
        return "name_banned" if self.sanctions.name_ban(p.name_key(name)) is not None else None

    def refuses(self, conn: Connection, message: p.Message) -> bool:
        """Refuse a chat or private message of a muted user (answered here); True if refused."""
        if message.mark != p.PRIVATE or message.target_type not in (p.CHANNEL, p.INDIVIDUAL):
            return False
        until = self.muted_until(conn)
        if until is None:
            return False
        shown = Sanction(until, "", "", 0, "").until_text(conn.lang)
        conn.reply_text("muted_refusal", until=shown)
        return True

    def muted_until(self, conn: Connection) -> float | None:
        """Until when ``conn`` is muted (0: until lifted), or None if it may speak."""
        now = time.time()
        ends = []
        if conn.muted is not None:
            ends.append(conn.muted[1])
        for name_key in (conn.name_key, conn.account):
            sanction = self.sanctions.mute(name_key)
            if sanction is not None:
                ends.append(sanction.until)
        ends = [end for end in ends if end == 0 or end > now]
        if not ends:
            return None
        return 0 if 0 in ends else max(ends)

    def announce_about(self, user_id: str | None, text: str) -> None:
        """Tell the rooms of the user concerned a moderation action, the lobby first.

        ``channel:channel1:系统消息:<text>``, then ``channel:<room>:系统消息:<text>``
        in each room the user is in (none for an address, which is no user).
        The one place that sends these notices.
        """
        rooms = []
        if user_id is not None:
            keys = self.keys
            room_keys = list(self.rdb.smembers(keys.user_rooms(user_id)))
            shown = self.rdb.hmget(keys.rooms, room_keys) if room_keys else []
            rooms = [(key.decode(), name.decode()) for key, name in zip(room_keys, shown) if name is not None]
        pipe = self.rdb.pipeline(transaction=False)
        pipe.publish(self.keys.broadcast, system_payload(p.CHANNEL, p.BROADCAST, text))
        for key, name in rooms:
            pipe.publish(self.keys.room_channel(key), system_payload(p.CHANNEL, name, text))
        pipe.execute()

    # --- the operators' commands ------------------------------------------------------

    def handle(self, conn: Connection, mark: str, text: str) -> None:
        """Run an operator's command (``p.MODERATION_MARKS``); a non-operator is refused and nothing happens."""
        if not self.accounts.is_operator(conn):
            logger.warning("%r: %s refused: not an operator", conn, mark)
            self._refuse(conn, mark, "not_operator")
            return
        command = {
            p.KICK: self.kick, p.BAN: self.ban, p.UNBAN: self.unban, p.BANS: self.list_bans,
            p.MUTE: self.mute, p.UNMUTE: self.unmute, p.ANNOUNCE: self.announce,
        }[mark]
        command(conn, text)

    def kick(self, conn: Connection, text: str) -> None:
        """``<name> [reason]``: disconnect the user, on whichever process holds them."""
        name, reason = p.split_name(text)
        if not name:
            return self._usage(conn, p.KICK)
        if self._bad_text(conn, p.KICK, reason):
            return None
        user_id = self.find_user(name)
        if user_id is None:
            return self._refuse(conn, p.KICK, "no_such_user", name=name)
        name = self._current_name(user_id) or name
        # The notice first: the room then hears why before it hears that the user left.
        self.announce_about(user_id, conn.text("kicked_notice", name=name, by=conn.name, reason=reason_suffix(reason)))
        self.control.publish("kick", user=user_id, by=conn.name, reason=reason)
        self._record(conn, "kick", name, reason)
        return self._done(conn, p.KICK, "kick_done", name=name)

    def ban(self, conn: Connection, text: str) -> None:
        """``<name or ip=address> <duration> [reason]``: refuse the target, and close its connections everywhere."""
        target, rest = p.split_name(text)
        duration_text, _, reason = rest.partition(" ")
        reason = reason.strip()
        if not target or not duration_text:
            return self._usage(conn, p.BAN)
        duration = parse_duration(duration_text)
        if duration is None:
            return self._refuse(conn, p.BAN, "bad_duration", value=duration_text)
        if self._bad_text(conn, p.BAN, reason):
            return None
        field = ban_field(target)
        if isinstance(field, str):
            return self._refuse(conn, p.BAN, field, value=target[3:])
        field, shown = field
        now = time.time()
        sanction = Sanction(now + duration if duration else 0, conn.name, reason, now, shown)
        self.rdb.hset(self.keys.bans, field, sanction.to_json())
        self.sanctions.set_ban(field, sanction)  # here at once; the others by the control channel
        until = sanction.until_text(conn.lang)
        notice = conn.text("banned_notice", target=shown, by=conn.name, until=until, reason=reason_suffix(reason))
        banned_user = self.find_user(target) if not field.startswith("ip:") else None
        self.announce_about(banned_user, notice)  # before the banned users are closed, and announced as gone
        self.control.publish("ban", field=field, sanction=sanction._asdict())
        self._record(conn, "ban", shown, f"{until}{reason_suffix(reason)}")
        return self._done(conn, p.BAN, "ban_done", target=shown, until=until)

    def unban(self, conn: Connection, text: str) -> None:
        """``<name or ip=address>``: lift a ban."""
        target, _ = p.split_name(text)
        if not target:
            return self._usage(conn, p.UNBAN)
        field = ban_field(target)
        if isinstance(field, str):
            return self._refuse(conn, p.UNBAN, field, value=target[3:])
        field, shown = field
        if not self.rdb.hdel(self.keys.bans, field):
            return self._refuse(conn, p.UNBAN, "not_banned", target=shown)
        self.sanctions.set_ban(field, None)
        self.control.publish("unban", field=field)
        self._record(conn, "unban", shown)
        return self._done(conn, p.UNBAN, "unban_done", target=shown)

    def list_bans(self, conn: Connection, text: str) -> None:
        """The bans in force, with their expiry, as many as fit in one frame."""
        bans = self.sanctions.active_bans()
        if not bans:
            return self._done(conn, p.BANS, "bans_none")
        listing = conn.text("bans_title", count=len(bans))
        for _, sanction in bans:
            line = conn.text("bans_line", target=sanction.shown, until=sanction.until_text(conn.lang),
                             by=sanction.by, reason=reason_suffix(sanction.reason))
            if not conn.fits(p.join_message(p.INDIVIDUAL, conn.name, p.done_mark(p.BANS), listing + line + "\n …")):
                listing += "\n …"
                break
            listing += line
        conn.reply(p.join_message(p.INDIVIDUAL, conn.name, p.done_mark(p.BANS), listing))
        return None

    def mute(self, conn: Connection, text: str) -> None:
        """``<name> <duration> [reason]``: the user's chat and private messages are refused until then."""
        name, rest = p.split_name(text)
        duration_text, _, reason = rest.partition(" ")
        reason = reason.strip()
        if not name or not duration_text:
            return self._usage(conn, p.MUTE)
        duration = parse_duration(duration_text)
        if duration is None:
            return self._refuse(conn, p.MUTE, "bad_duration", value=duration_text)
        if self._bad_text(conn, p.MUTE, reason):
            return None
        user_id = self.find_user(name)
        if user_id is None and p.name_problem(name) is not None:
            return self._refuse(conn, p.MUTE, "no_such_user", name=name)
        name = (self._current_name(user_id) if user_id else None) or name
        now = time.time()
        sanction = Sanction(now + duration if duration else 0, conn.name, reason, now, name)
        name_key = p.name_key(name)
        if p.guest_id(name) is None:  # a guest name is never taken again: the connection alone is muted
            self.rdb.hset(self.keys.mutes, name_key, sanction.to_json())
            self.sanctions.set_mute(name_key, sanction)
        self.control.publish("mute", name_key=name_key, user=user_id, sanction=sanction._asdict())
        until = sanction.until_text(conn.lang)
        self._record(conn, "mute", name, f"{until}{reason_suffix(reason)}")
        notice = conn.text("muted_notice", name=name, by=conn.name, until=until, reason=reason_suffix(reason))
        self.announce_about(user_id, notice)
        return self._done(conn, p.MUTE, "mute_done", name=name, until=until)

    def unmute(self, conn: Connection, text: str) -> None:
        """``<name>``: let the user speak again."""
        name, _ = p.split_name(text)
        if not name:
            return self._usage(conn, p.UNMUTE)
        name_key = p.name_key(name)
        user_id = self.find_user(name)
        removed = self.rdb.hdel(self.keys.mutes, name_key)
        if not removed and user_id is None:
            return self._refuse(conn, p.UNMUTE, "not_muted", name=name)
        self.sanctions.set_mute(name_key, None)
        self.control.publish("unmute", name_key=name_key, user=user_id)
        self._record(conn, "unmute", name)
        return self._done(conn, p.UNMUTE, "unmute_done", name=name)

    def announce(self, conn: Connection, text: str) -> None:
        """``<text>``: a system message to every user on every process."""
        text = text.strip()
        if not text:
            return self._usage(conn, p.ANNOUNCE)
        if self._bad_text(conn, p.ANNOUNCE, text):
            return None
        payload = system_payload(p.CHANNEL, p.BROADCAST, conn.text("announcement", by=conn.name, text=text))
        if not conn.fits(payload.decode()):
            return conn.reply_too_long()
        self.rdb.publish(self.keys.broadcast, payload)
        self._record(conn, "announce", "", text)
        return self._done(conn, p.ANNOUNCE, "announce_done")

    # --- the parts ------------------------------------------------------------------------

    def _current_name(self, user_id: str) -> str | None:
        name = self.rdb.hget(self.keys.users_name, user_id)
        return name.decode() if name is not None else None

    def _bad_text(self, conn: Connection, mark: str, text: str) -> bool:
        """Refuse a reason or an announcement that could forge a line (operators are users too)."""
        problem = p.text_problem(text)
        if problem is not None:
            self._refuse(conn, mark, problem)
            return True
        return False

    def _record(self, conn: Connection, action: str, target: str, detail: str = "") -> None:
        logger.warning("moderation: %s (%r) %s %s %s", conn.name, conn.account, action, target, detail)
        append_log(self.rdb, self.keys, conn.name, action, target, detail)

    def _usage(self, conn: Connection, mark: str) -> None:
        self._refuse(conn, mark, "moderation_usage", usage=USAGE[mark])

    def _refuse(self, conn: Connection, mark: str, key: str, **values: object) -> None:
        conn.reply(p.join_message(p.INDIVIDUAL, conn.name, p.refused_mark(mark), conn.text(key, **values)))

    def _done(self, conn: Connection, mark: str, key: str, **values: object) -> None:
        conn.reply(p.join_message(p.INDIVIDUAL, conn.name, p.done_mark(mark), conn.text(key, **values)))

    # --- control messages: every process, for the users it holds ----------------------------

    def _kicked(self, message: dict) -> None:
        for conn in self.local_connections():
            if conn.id == message["user"]:
                logger.warning("%r: kicked by %s", conn, message["by"])
                self._close(conn, conn.text("kicked_you", by=message["by"], reason=reason_suffix(message["reason"])))

    def _banned(self, message: dict) -> None:
        field = message["field"]
        sanction = Sanction(**message["sanction"])
        self.sanctions.set_ban(field, sanction)
        kind, _, target = field.partition(":")
        network = parse_network(target) if kind == "ip" else None
        for conn in self.local_connections():
            if kind == "name":
                hit = target in (conn.name_key, conn.account)
            else:
                ip = peer_address(conn.address[0])
                hit = network is not None and ip is not None and ip.version == network.version and ip in network
            if hit:
                logger.warning("%r: banned by %s", conn, sanction.by)
                text = conn.text("banned_you", until=sanction.until_text(conn.lang), reason=reason_suffix(sanction.reason))
                self._close(conn, text)

    def _unbanned(self, message: dict) -> None:
        self.sanctions.set_ban(message["field"], None)

    def _muted(self, message: dict) -> None:
        name_key, user_id = message["name_key"], message.get("user")
        sanction = Sanction(**message["sanction"])
        if p.guest_id(sanction.shown) is None:
            self.sanctions.set_mute(name_key, sanction)
        for conn in self.local_connections():
            if conn.id == user_id or name_key in (conn.name_key, conn.account):
                conn.muted = (name_key, sanction.until)
                reason = reason_suffix(sanction.reason)
                conn.reply_text("muted_you", by=sanction.by, until=sanction.until_text(conn.lang), reason=reason)

    def _unmuted(self, message: dict) -> None:
        name_key, user_id = message["name_key"], message.get("user")
        affected = [
            conn for conn in self.local_connections()
            if (conn.id == user_id or name_key in (conn.name_key, conn.account, conn.muted and conn.muted[0]))
            and self.muted_until(conn) is not None
        ]
        self.sanctions.set_mute(name_key, None)
        for conn in affected:
            if conn.muted is not None and conn.muted[0] != name_key:
                # Muted under the name it had then: that record goes too.
                self.rdb.hdel(self.keys.mutes, conn.muted[0])
                self.sanctions.set_mute(conn.muted[0], None)
            conn.muted = None
            conn.reply_text("unmuted_you")

    @staticmethod
    def _close(conn: Connection, text: str) -> None:
        """Tell a user why, then disconnect them (their reader then removes and announces them)."""
        conn.note_leaving("kicked")  # a ban too: the metrics count both as an operator's removal
        conn.reply_system(text)
        conn.shutdown_socket()


"""The ``targetType:target:specialMark:message`` payloads, shared by server and client.

Pure functions and constants only: parsing and building payloads, the
protocol marks (which never change with the language), nickname rules, and
the one table of human-readable texts in Chinese (the original's, byte for
byte) and English.
"""

from __future__ import annotations

import unicodedata
from typing import NamedTuple

# Target types.
INDIVIDUAL = "individual"
CHANNEL = "channel"

#: The broadcast channel's name as it appears in payloads.
BROADCAST = "channel1"

# Special marks.  These are protocol, not text: never translated.
SYSTEM = "系统消息"
CHANGE_NAME_FIRST = "changeNameFirst"
CHANGE_NAME_FIRST_OK = "changeNameFirst1"
NAME_REFUSED = "changeNameFirst0"
RENAME_FAILED = "changeNameFirst2"
CHANGE_NAME = "changeName"
CHANGE_NAME_OK = "changeName1"
MENU = "menu"
ONLINE_LIST = "onlineList"
ACTIVITY = "activity"
QUIT = "quit"
PRIVATE = ""  # individual:<name>::<text> is a private message
# Marks and types this port adds; the Go client shows an unknown individual
# mark as "未知错误" and ignores an unknown target type.
WHO = "who"  # individual:<me>:who: -> the names online, to the asker
PRIVATE_IN = "private"  # individual:<sender>:private:<text>, to the target
PRIVATE_SENT = "privateSent"  # individual:<target>:privateSent:<text>, the sender's echo
HISTORY = "history"  # history:<unix seconds>:<sender>:<text>, after the first nickname
# Rooms beside the lobby (channel1, which every user is in and nobody leaves).
JOIN = "join"  # channel:<room>:join: -> individual:<me>:join1:<room> or join0:<reason>
JOIN_OK = "join1"
JOIN_REFUSED = "join0"
PART = "part"  # channel:<room>:part: -> individual:<me>:part1:<room> or part0:<reason>
PART_OK = "part1"
PART_REFUSED = "part0"
ROOMS = "rooms"  # individual:<me>:rooms: -> the rooms and their member counts, to the asker
#: roomHistory:<room>:<unix seconds>:<sender>:<text>, to a joiner (the lobby's stays history:...).
ROOM_HISTORY = "roomHistory"

# Accounts (chatroom/accounts.py).  Each command is answered <mark>1 (done)
# or <mark>0:<reason> (refused); a successful login is answered as an
# accepted first nickname, changeNameFirst1, so every client understands it.
REGISTER = "register"  # individual:<me>:register:<password>           -> register1:<me>
LOGIN = "login"  # individual::login:<name>:<password>                  -> changeNameFirst1:<name>
PASSWORD = "password"  # individual:<me>:password:<old>:<new>            -> password1:<me>
UNREGISTER = "unregister"  # individual:<me>:unregister:<password>       -> unregister1:<me>
# Moderation (chatroom/moderation.py), for a logged-in operator; answered the same way.
KICK = "kick"  # kick:<name> [reason]
BAN = "ban"  # ban:<name or ip=address> <duration> [reason]
UNBAN = "unban"  # unban:<name or ip=address>
BANS = "bans"  # bans:  -> bans1:<the list>
MUTE = "mute"  # mute:<name> <duration> [reason]
UNMUTE = "unmute"  # unmute:<name>
ANNOUNCE = "announce"  # announce:<text> -> every user: channel:channel1:系统消息:<text>
ACCOUNT_MARKS = frozenset((REGISTER, LOGIN, PASSWORD, UNREGISTER))
MODERATION_MARKS = frozenset((KICK, BAN, UNBAN, BANS, MUTE, UNMUTE, ANNOUNCE))
#: The commands whose message field holds a password: never logged, never shown.
PASSWORD_MARKS = ACCOUNT_MARKS


def done_mark(mark: str) -> str:
    """The mark that says an account or moderation command was carried out (``register1``)."""
    return mark + "1"


def refused_mark(mark: str) -> str:
    """The mark that says an account or moderation command was refused (``register0``)."""
    return mark + "0"


#: Every answer mark of the account and moderation commands.
ANSWER_MARKS = frozenset(
    answer for mark in ACCOUNT_MARKS | MODERATION_MARKS for answer in (done_mark(mark), refused_mark(mark))
)


class Message(NamedTuple):
    """One parsed payload; its repr hides a password (see :func:`redacted`)."""

    target_type: str
    target: str
    mark: str
    text: str

    def __repr__(self) -> str:
        text = _hidden(self.mark, self.text)
        return f"Message(target_type={self.target_type!r}, target={self.target!r}, mark={self.mark!r}, text={text!r})"


def split_message(payload: str) -> Message | None:
    """Split a payload as Go's ``strings.SplitN(payload, ":", 4)``; None if < 4 fields."""
    parts = payload.split(":", 3)
    if len(parts) != 4:
        return None
    return Message(*parts)


def join_message(target_type: str, target: str, mark: str, text: str) -> str:
    """Build a payload from its four fields."""
    return f"{target_type}:{target}:{mark}:{text}"


HIDDEN = "***"


def _hidden(mark: str, text: str) -> str:
    if mark not in PASSWORD_MARKS:
        return text
    if mark == LOGIN:  # the name is not secret, the password is
        name, colon, _ = text.partition(":")
        return f"{name}{colon}{HIDDEN}" if colon else HIDDEN
    return HIDDEN


def redacted(payload: str) -> str:
    """``payload`` as it may appear in a log line: the password of an account command replaced by ``***``.

    Any payload at all may be given, whole or not: only a password is hidden.
    """
    parts = split_message(payload)
    if parts is None or parts.mark not in PASSWORD_MARKS:
        return payload
    return join_message(parts.target_type, parts.target, parts.mark, _hidden(parts.mark, parts.text))


def fits(payload: str, max_frame: int) -> bool:
    """Whether a server payload, with the "\n" every one ends with, fits in one frame of ``max_frame``."""
    return len(payload.encode("utf-8")) + 1 <= max_frame


# --- nicknames ---------------------------------------------------------------

MAX_NAME_LENGTH = 32

#: Names nobody may take, compared after :func:`name_key` folding.
RESERVED_NAMES = frozenset(
    ["系统消息", "系统", "system", "server", "admin", "administrator", "root", "moderator", "channel1"]
)

# Unicode categories refused in names: controls, format characters (bidi
# overrides, zero-width joiners), line/paragraph separators, unassigned and
# private-use code points, surrogates.
_FORBIDDEN_CATEGORIES = frozenset(["Cc", "Cf", "Zl", "Zp", "Cn", "Co", "Cs"])


def name_key(name: str) -> str:
    """The form under which names are unique: NFKC-normalised and case-folded."""
    return unicodedata.normalize("NFKC", name).casefold()


GUEST_PREFIX = "guest-"


def guest_name(user_id: str) -> str:
    """The name a user has until it picks one; reserved, so only that user has it."""
    return f"{GUEST_PREFIX}{user_id}"


def guest_id(name: str) -> str | None:
    """The user id a guest name stands for (``guest-7`` -> ``7``), or None if ``name`` is none."""
    key = name_key(name)
    if key.startswith(GUEST_PREFIX):
        user_id = key[len(GUEST_PREFIX) :]
        if user_id.isascii() and user_id.isdigit():
            return user_id
    return None


def name_problem(name: str) -> str | None:
    """Return the text key saying why ``name`` is refused, or None if it is fine."""
    if not name:
        return "name_empty"
    if len(name) > MAX_NAME_LENGTH:
        return "name_too_long"
    if name != name.strip():
        return "name_spaces"
    key = name_key(name)
    if ":" in name or ":" in key:
        return "name_colon"
    if any(unicodedata.category(c) in _FORBIDDEN_CATEGORIES for c in name):
        return "name_control"
    if key in RESERVED_NAMES or key.startswith(GUEST_PREFIX):
        return "name_reserved"
    return None


def fit_listing(items: list[str], render, max_frame: int) -> str:
    """``render(listing, count)`` with as many of ``items`` as fit one reply frame; ", …" marks a cut.

    The reply is sent as ``individual:<name>:系统消息:<text>``: room is left
    for the longest name (32 characters of up to 4 bytes).
    """
    shown = list(items)
    while True:
        listing = ", ".join(shown) + (", …" if len(shown) < len(items) else "")
        message = render(listing, len(items))
        if fits(f"{INDIVIDUAL}:{'x' * 4 * MAX_NAME_LENGTH}:{SYSTEM}:{message}", max_frame) or not shown:
            return message
        shown = shown[: len(shown) * 3 // 4]


def printable(text: str) -> str:
    """``text`` with every control, format or separator character shown as ``<U+XXXX>``.

    For what a user typed that the server says back to it (a name it looked
    for, a room it is not in): such a text must not print a line of its own.
    """
    return "".join(
        f"<U+{ord(c):04X}>" if unicodedata.category(c) in _FORBIDDEN_CATEGORIES else c for c in text
    )


# --- rooms -------------------------------------------------------------------


def room_problem(name: str) -> str | None:
    """Return the text key saying why ``name`` cannot name a room, or None if it can.

    The nickname rules apply (a room and a nick never collide in the
    protocol, but both are shown the same way), except that ``channel1`` is
    the lobby itself; a ``guest-<n>`` name looks like a user, and is refused.
    """
    if name_key(name) == BROADCAST:
        return None
    return name_problem(name)
# --- passwords ---------------------------------------------------------------

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_BYTES = 1024


def password_problem(password: str) -> str | None:
    """Return the text key saying why ``password`` cannot be set, or None if it is fine.

    At least 8 characters, at most 1,024 bytes of UTF-8, and no ``:``:
    ``password:<old>:<new>`` is split at its first colon, so a password
    holding one could never be changed.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        return "password_short"
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        return "password_long"
    if ":" in password:
        return "password_colon"
    return None


def split_login(text: str) -> tuple[str, str] | None:
    """``<name>:<password>`` of a login, split at the first colon (names never hold one); None without one."""
    name, colon, password = text.partition(":")
    return (name, password) if colon else None


def split_name(text: str) -> tuple[str, str]:
    """(the first word, or a "quoted" or 'quoted' name; the rest, stripped) of a command's text.

    Names may have inner spaces: a name with one kind of quote goes in the other kind.
    """
    text = text.strip()
    if text[:1] in ("'", '"'):
        end = text.find(text[0], 1)
        if end > 0:
            return text[1:end], text[end + 1 :].strip()
    word, _, rest = text.partition(" ")
    return word, rest.strip()


def split_password_change(text: str) -> tuple[str, str] | None:
    """``<old>:<new>`` of a password change, split at the first colon; None without one."""
    old, colon, new = text.partition(":")
    return (old, new) if colon else None


# --- chat text ---------------------------------------------------------------

#: Characters that end a line on some terminal: a chat text holding one could
#: print a second line that looks like the system, or like another user.
LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")


def text_problem(message: str) -> str | None:
    """Return the text key saying why a chat or private text is refused, or None if it is fine.

    Refused: line breaks (a forged line would follow them) and the other C0
    and C1 control characters, which the original Go client passes to the
    terminal as they are; a tab is fine.
    """
    for char in message:
        if char in LINE_BREAKS:
            return "text_line_break"
        if unicodedata.category(char) == "Cc" and char != "\t":
            return "text_control"
    return None


# --- human-readable texts ----------------------------------------------------

LANGUAGES = ("en", "zh")

ZH_MENU = (
    " \n * ./cd1 或 ./menu 功能菜单\n * ./cd2 或 ./changeName 更改昵称\n"
    " * ./cd3 或 ./online 在线用户数量查询\n*./cd4 或 ./ activity 查询活跃排行\n"
    " * ./cd5 或 ./quit 退出聊天室\n"
)
EN_MENU = (
    " \n * ./cd1 or ./menu        this menu\n * ./cd2 or ./changeName  change your nickname\n"
    " * ./cd3 or ./online      how many users are online\n"
    " * ./cd4 or ./activity    activity ranking\n * ./cd5 or ./quit        leave the chat room\n"
)

TEXTS: dict[str, dict[str, str]] = {
    # Server -> client texts (the payload's message field).
    "joined": {"zh": "用户 < {name} > 上线了!", "en": "User < {name} > joined!"},
    "left": {"zh": "用户已下线:{name}", "en": "User left: {name}"},
    "name_taken": {"zh": "名字重复,请更换名字再次尝试", "en": "That name is taken, please try another"},
    "rename_failed": {"zh": "未知原因导致改名失败", "en": "Renaming failed for an unknown reason"},
    "rename_timeout": {
        "zh": "Redis响应超时,昵称未修改,请再试一次",
        "en": "Redis did not answer in time: your nickname was not changed, please try again",
    },
    "login_refused": {
        "zh": "服务器暂时无法接纳新用户,请稍后再试",
        "en": "The server cannot take new users right now, please try again later",
    },
    "menu": {"zh": ZH_MENU, "en": EN_MENU},
    "bad_format": {"zh": "信息格式错误", "en": "Bad message format"},
    "online_count": {"zh": "当前在线人数为{count}人", "en": "Users online: {count}"},
    "activity_title": {"zh": "< 系统消息 > 活跃度排名\n", "en": "Activity ranking\n"},
    "activity_line": {"zh": " 第{rank}名 : {name} ({count})\n", "en": " #{rank} : {name} ({count})\n"},
    "who": {"zh": "在线用户({count}): {names}", "en": "Online ({count}): {names}"},
    "no_such_user": {"zh": "用户 < {name} > 不存在", "en": "There is no user < {name} >"},
    "server_error": {"zh": "服务器内部错误,请稍后再试", "en": "Server error, please try again later"},
    "not_sent": {
        "zh": "服务器内部错误,信息未发送,请稍后再试",
        "en": "Server error: your message was not sent, please try again later",
    },
    "not_sent_many": {
        "zh": "服务器内部错误,你的最后{count}条信息未发送,请稍后再试",
        "en": "Server error: your last {count} messages were not sent, please try again later",
    },
    "outcome_unknown": {
        "zh": "Redis响应超时,你的信息可能已送达,也可能没有",
        "en": "Redis did not answer in time: your message may or may not have been delivered",
    },
    "text_line_break": {
        "zh": "信息不能包含换行,请分成多条发送",
        "en": "A message must not contain line breaks: send each line as its own message",
    },
    "text_control": {"zh": "信息不能包含控制字符", "en": "A message must not contain control characters"},
    "bus_lost": {
        "zh": "服务器与消息总线的连接中断,你可能错过了消息,请重新连接",
        "en": "The server lost its link to the message bus; you may have missed messages, please reconnect",
    },
    "timeout_first": {
        "zh": "{seconds}秒内未收到任何信息,连接关闭",
        "en": "Nothing received within {seconds} s of connecting; closing",
    },
    "timeout_frame": {
        "zh": "一条信息未在{seconds}秒内传完,连接关闭",
        "en": "A message took longer than {seconds} s to arrive; closing",
    },
    "timeout_idle": {"zh": "空闲超过{seconds}秒,连接关闭", "en": "Idle for more than {seconds} s; closing"},
    "flood_warning": {
        "zh": "发言过快(每秒最多{rate}条),该信息未发送",
        "en": "You are sending too fast (at most {rate} messages a second): message not sent",
    },
    "flood_disconnect": {"zh": "持续刷屏,连接关闭", "en": "Still flooding: disconnecting"},
    "server_full": {"zh": "服务器已满,请稍后再试", "en": "The server is full, please try again later"},
    "too_many_from_ip": {
        "zh": "来自你的地址的连接过多",
        "en": "Too many connections from your address",
    },
    "server_busy": {"zh": "服务器资源不足,请稍后再试", "en": "The server is out of resources, please try again later"},
    "redis_lost": {
        "zh": "服务器与Redis的连接中断,信息暂时无法发送",
        "en": "The server lost its connection to Redis: messages cannot be sent for now",
    },
    "redis_back": {"zh": "服务器与Redis的连接已恢复", "en": "The server is connected to Redis again"},
    "server_shutdown": {"zh": "服务器即将关闭", "en": "The server is shutting down"},
    "bad_utf8": {"zh": "信息不是有效的UTF-8编码", "en": "Message is not valid UTF-8"},
    "too_long": {"zh": "信息过长,最多{limit}字节", "en": "Message too long: at most {limit} bytes"},
    # Said by the server and by the client, which refuses such a line before sending it.
    # Short enough for the one line under a terminal's prompt (80 columns).
    "text_too_long": {
        "zh": "信息过长: {length}字节, 最多{limit}字节(连同昵称等字段共{frame}字节)",
        "en": "Message too long: {length} bytes, at most {limit} ({frame} with names and fields)",
    },
    "frame_error": {"zh": "数据帧错误,连接关闭: {reason}", "en": "Bad frame, closing: {reason}"},
    "ws_binary": {
        "zh": "不接受二进制消息: 每条信息请用文本消息发送",
        "en": "Binary messages are not accepted: send each payload as a text message",
    },
    "name_empty": {"zh": "名字不能为空", "en": "The name must not be empty"},
    "name_too_long": {
        "zh": f"名字最长{MAX_NAME_LENGTH}个字符",
        "en": f"The name must be at most {MAX_NAME_LENGTH} characters",
    },
    "name_spaces": {"zh": "名字首尾不能有空格", "en": "The name must not start or end with spaces"},
    "name_colon": {"zh": "名字不能包含':'", "en": "The name must not contain ':'"},
    "name_control": {"zh": "名字不能包含控制字符", "en": "The name must not contain control characters"},
    "name_reserved": {"zh": "该名字为系统保留", "en": "That name is reserved"},
    "room_joined": {"zh": "用户 < {name} > 加入了房间", "en": "User < {name} > joined the room"},
    "room_left": {"zh": "用户 < {name} > 离开了房间", "en": "User < {name} > left the room"},
    "room_limit_user": {
        "zh": "你已加入{limit}个房间,请先退出一个",
        "en": "You are in {limit} rooms already: part one first",
    },
    "room_limit_total": {
        "zh": "房间数已达上限({limit}个),请加入已有的房间",
        "en": "There are {limit} rooms already: join one of them",
    },
    "room_lobby_part": {"zh": "大厅 channel1 不能退出", "en": "The lobby channel1 cannot be left"},
    "room_not_member": {"zh": "你不在房间 < {room} > 中", "en": "You are not in the room < {room} >"},
    "room_chat_not_member": {
        "zh": "你不在房间 < {room} > 中,请先加入 (/join {room})",
        "en": "You are not in the room < {room} >: join it first (/join {room})",
    },
    "no_such_room": {"zh": "房间 < {room} > 不存在", "en": "There is no room < {room} >"},
    "room_who": {"zh": "房间 {room} 的用户({count}): {names}", "en": "In {room} ({count}): {names}"},
    "room_count": {"zh": "房间 {room} 的人数为{count}人", "en": "Users in {room}: {count}"},
    "rooms_list": {"zh": "房间({count}): {rooms}", "en": "Rooms ({count}): {rooms}"},
    # Accounts (chatroom/accounts.py).
    "name_registered": {
        "zh": "该名字已被注册,请登录后使用 (/login 名字 密码)",
        "en": "That name is registered: log in to use it (/login NAME PASSWORD)",
    },
    "register_guest": {"zh": "请先设置昵称:访客名不能注册", "en": "Take a nickname first: a guest name cannot be registered"},
    "register_taken": {"zh": "< {name} > 已被注册", "en": "< {name} > is already registered"},
    "password_short": {"zh": "密码至少8个字符", "en": "A password must be at least 8 characters"},
    "password_long": {"zh": "密码最长1024字节", "en": "A password must be at most 1024 bytes"},
    "password_colon": {"zh": "密码不能包含':'", "en": "A password must not contain ':'"},
    "plaintext_password": {
        "zh": "来自你的地址的密码只能经TLS发送:请用TLS连接端口{port}",
        "en": "Passwords from your address are accepted over TLS only: connect with TLS to port {port}",
    },
    "plaintext_password_no_tls": {
        "zh": "来自你的地址的密码只能经TLS发送,而本服务器没有TLS端口",
        "en": "Passwords from your address are accepted over TLS only, and this server has no TLS port",
    },
    "login_usage": {"zh": "登录格式: 名字:密码", "en": "Log in with NAME:PASSWORD"},
    "password_usage": {"zh": "修改密码格式: 旧密码:新密码", "en": "Change a password with OLD:NEW"},
    "no_account": {"zh": "账号 < {name} > 不存在", "en": "There is no account < {name} >"},
    "wrong_password": {"zh": "密码错误", "en": "Wrong password"},
    "login_throttled_name": {
        "zh": "< {name} > 登录失败次数过多,请{minutes}分钟后再试",
        "en": "Too many failed logins for < {name} >: try again in {minutes} min",
    },
    "login_throttled_address": {
        "zh": "来自你的地址的登录失败次数过多,请{minutes}分钟后再试",
        "en": "Too many failed logins from your address: try again in {minutes} min",
    },
    "not_logged_in": {"zh": "你尚未登录账号", "en": "You are not logged in to an account"},
    "hashing_busy": {"zh": "同时登录的人过多,请稍后再试", "en": "Too many logins at once: please try again in a moment"},
    "taken_over": {
        "zh": "< {name} > 的注册者已登录,取回了该名字;你现在的名字是 {guest}",
        "en": "The registered owner of < {name} > logged in and took the name back: you are now {guest}",
    },
    # Moderation (chatroom/moderation.py).
    "not_operator": {"zh": "只有管理员可以这样做", "en": "Only an operator may do that"},
    "moderation_usage": {"zh": "用法: {usage}", "en": "Usage: {usage}"},
    "bad_duration": {
        "zh": "无效的时长: {value} (如 10m, 2h, 1d, 0 表示直到解除)",
        "en": "Not a duration: {value} (10m, 2h, 1d, or 0 for until lifted)",
    },
    "bad_address": {"zh": "无效的IP地址或网段: {value}", "en": "Not an IP address or network: {value}"},
    "until_time": {"zh": "至{time}", "en": "until {time}"},
    "until_lifted": {"zh": "直到解除", "en": "until lifted"},
    "kick_done": {"zh": "已踢出 < {name} >", "en": "< {name} > was kicked"},
    "kicked_notice": {"zh": "{name} 被 {by} 踢出{reason}", "en": "{name} was kicked by {by}{reason}"},
    "kicked_you": {"zh": "你被 {by} 踢出聊天室{reason}", "en": "You were kicked by {by}{reason}"},
    "ban_done": {"zh": "{target} 已被封禁,{until}", "en": "{target} is banned {until}"},
    "banned_notice": {"zh": "{target} 被 {by} 封禁,{until}{reason}", "en": "{target} was banned by {by} {until}{reason}"},
    "banned_you": {"zh": "你已被封禁,{until}{reason}", "en": "You are banned {until}{reason}"},
    "name_banned": {"zh": "该名字已被封禁", "en": "That name is banned"},
    "login_banned": {"zh": "< {name} > 已被封禁,{until}", "en": "< {name} > is banned {until}"},
    "ban_guest": {
        "zh": "访客名每次连接都不同,不能封禁:请踢出该用户,或封禁其地址 (ip=...)",
        "en": "A guest name is new at every connection and cannot be banned: kick it, or ban an address (ip=...)",
    },
    "unban_done": {"zh": "{target} 已解除封禁", "en": "{target} is no longer banned"},
    "not_banned": {"zh": "{target} 未被封禁", "en": "{target} is not banned"},
    "bans_title": {"zh": "封禁列表({count}):", "en": "Bans ({count}):"},
    "bans_line": {"zh": "\n {target}: {until}, 操作者 {by}{reason}", "en": "\n {target}: {until}, by {by}{reason}"},
    "bans_none": {"zh": "没有封禁", "en": "Nobody is banned"},
    "mute_done": {"zh": "< {name} > 已被禁言,{until}", "en": "< {name} > is muted {until}"},
    "muted_notice": {"zh": "{name} 被 {by} 禁言,{until}{reason}", "en": "{name} was muted by {by} {until}{reason}"},
    "muted_you": {"zh": "你被 {by} 禁言,{until}{reason}", "en": "You were muted by {by} {until}{reason}"},
    "muted_refusal": {"zh": "你已被禁言,{until}:信息未发送", "en": "You are muted {until}: your message was not sent"},
    "unmute_done": {"zh": "< {name} > 已解除禁言", "en": "< {name} > may speak again"},
    "unmuted_you": {"zh": "你已被解除禁言", "en": "You may speak again"},
    "not_muted": {"zh": "< {name} > 未被禁言", "en": "< {name} > is not muted"},
    "announce_done": {"zh": "公告已发送", "en": "Announced"},
    "announcement": {"zh": "{by} 发布公告: {text}", "en": "Announcement from {by}: {text}"},
    # TLS (chatroom/tls.py).
    "tls_only_port": {
        "zh": "此端口只接受TLS连接:请用TLS连接 (python client.py --tls)",
        "en": "This port speaks TLS only: connect with TLS (python client.py --tls)",
    },
    # Client texts.
    "connected": {"zh": "服务器连接成功", "en": "Connected to the server"},
    # Original: "服务器连接失败 err =" and Go's error, which names the address.
    "connect_failed": {"zh": "服务器连接失败 {address}: {error}", "en": "Could not connect to {address}: {error}"},
    "ask_name": {"zh": "请输入你的昵称:", "en": "Enter your nickname: "},
    "ask_new_name": {"zh": "请输入新的昵称:", "en": "Enter your new nickname:"},
    "banner": {
        # Original: "./cd4 或 ./activity 在线用户数量查询", the label of ./cd3
        # again; ./cd4 is the activity ranking.
        "zh": (
            "--------------欢迎进入多人聊天室系统----------------\n"
            " * ./cd1 或 ./menu 功能菜单\n"
            " * ./cd2 或 ./changeName 更改昵称\n"
            " * ./cd3 或 ./online 在线用户数量查询\n"
            " * ./cd4 或 ./activity 查询活跃排行\n"
            " * ./cd5 或 ./quit 退出聊天室\n"
            "---------------指令字母不区分大小写-----------------"
        ),
        "en": (
            "-------------- Welcome to the chat room ----------------\n"
            " * ./cd1 or ./menu        menu\n"
            " * ./cd2 or ./changeName  change your nickname\n"
            " * ./cd3 or ./online      how many users are online\n"
            " * ./cd4 or ./activity    activity ranking\n"
            " * ./cd5 or ./quit        leave the chat room\n"
            "-------------- Commands are case-insensitive -----------"
        ),
    },
    "your_name": {"zh": "你当前昵称为: {name}", "en": "Your nickname is now: {name}"},
    "rename_ok": {"zh": "昵称为修改成功", "en": "Nickname changed"},
    "quitting": {"zh": "开始退出客户端...", "en": "Leaving..."},
    "system": {"zh": "< 系统消息 >", "en": "< System >"},
    "unknown_error": {"zh": "< 系统消息 > 未知错误", "en": "< System > Unknown error"},
    "invalid_message": {"zh": "无效的消息格式", "en": "Unparseable message"},
    "disconnected": {"zh": "服务器连接已断开 ", "en": "The server closed the connection"},
    "malformed_frame": {
        "zh": "服务器发送了格式错误的数据帧({reason}),连接已断开",
        "en": "The server sent a malformed frame ({reason}): disconnected",
    },
    "quit_ok": {"zh": "退出成功", "en": "Bye"},
    # Client texts this port adds (slash commands, private messages, history, reconnecting).
    "banner_slash": {
        "zh": " 也可用: /help /msg 名字 内容 /who /nick 名字 /top /join 房间 /rooms /quit",
        "en": " Also: /help  /msg NAME TEXT  /who  /nick NAME  /top  /join ROOM  /rooms  /quit",
    },
    "help": {
        "zh": (
            "指令(不区分大小写):\n"
            "  /help                 本帮助\n"
            "  /msg 名字 内容        私聊\n"
            '  /msg "名 字" 内容     名字含空格时用引号(" 或 \')括起\n'
            "  /join 房间            加入房间并在其中发言\n"
            "  /part [房间]          退出房间\n"
            "  /room 房间, /r 房间   切换到你的另一个房间; 只输入 /room: 当前房间和你的房间\n"
            "  /rooms                所有房间及其人数\n"
            "  /who [房间]           房间里的用户; 在大厅: 在线用户列表\n"
            "  /online [房间]        房间人数        (./cd3 或 ./online: 在线用户数量)\n"
            "                        (不写房间: 当前房间; 大厅即 channel1)\n"
            "  /top                  活跃排行        (./cd4 或 ./activity)\n"
            "  /nick 名字            更改昵称        (./cd2 或 ./changeName)\n"
            "  /quit                 退出聊天室      (./cd5 或 ./quit)\n"
            "  ./cd1 或 ./menu       服务器的功能菜单\n"
            "  //内容                发送以 / 开头的内容"
        ),
        "en": (
            "Commands (case-insensitive):\n"
            "  /help                 this help\n"
            "  /msg NAME TEXT        a private message to NAME\n"
            '  /msg "A NAME" TEXT    to a name with spaces (or in \'single\' quotes)\n'
            "  /join ROOM            join a room and talk in it\n"
            "  /part [ROOM]          leave a room\n"
            "  /room ROOM, /r ROOM   talk in another of your rooms; /room alone: which one\n"
            "  /rooms                every room, and how many are in it\n"
            "  /who [ROOM]           who is in the room; in the lobby: who is online\n"
            "  /online [ROOM]        how many are in it (./cd3 or ./online: all online)\n"
            "                        (without ROOM: the current room; the lobby is channel1)\n"
            "  /top                  activity ranking           (./cd4 or ./activity)\n"
            "  /nick NAME            change your nickname       (./cd2 or ./changeName)\n"
            "  /quit                 leave the chat room        (./cd5 or ./quit)\n"
            "  ./cd1 or ./menu       the server's menu\n"
            "  //TEXT                send a text that starts with /"
        ),
    },
    "unknown_command": {
        "zh": "未知指令 {command}, 输入 /help 查看指令",
        "en": "Unknown command {command}; /help lists the commands",
    },
    "usage_msg": {
        "zh": '用法: /msg 名字 内容, 名字含空格时加引号: /msg "名 字" 内容',
        "en": 'Usage: /msg NAME TEXT, or /msg "A NAME" TEXT for a name with spaces',
    },
    "bad_target": {"zh": "名字不能包含':'", "en": "A name cannot contain ':'"},
    "private_in": {"zh": "[私聊] < {name} >{text}", "en": "[private] < {name} > {text}"},
    "private_out": {"zh": "[私聊] < 我 -> {name} >{text}", "en": "[private] < you -> {name} > {text}"},
    # Client texts of accounts, moderation and TLS (chatroom/client_identity.py).
    "usage_command": {"zh": "用法: {usage}", "en": "Usage: {usage}"},
    "registered_you": {
        "zh": "< {name} > 已注册,下次请用 /login {name} 密码 登录",
        "en": "< {name} > is registered to you: next time, log in with /login {name} PASSWORD",
    },
    "password_changed": {"zh": "< {name} > 的密码已修改", "en": "The password of < {name} > is changed"},
    "unregistered_you": {"zh": "< {name} > 已取消注册", "en": "< {name} > is no longer registered"},
    "tls_failed": {"zh": "无法经TLS连接 {host}:{port}: {reason}", "en": "Could not connect to {host}:{port} over TLS: {reason}"},
    "help_accounts": {
        "zh": (
            "账号:\n"
            "  /register 密码           注册当前昵称\n"
            "  /login 名字 密码         登录已注册的昵称\n"
            "  /password 旧密码 新密码  修改密码\n"
            "  /unregister 密码         取消注册\n"
            "管理员 (时长: 10m, 2h, 1d, 0 = 直到解除):\n"
            "  /kick 名字 [原因]          /ban 名字|ip=地址 时长 [原因]\n"
            "  /unban 名字|ip=地址  /bans  /mute 名字 时长 [原因]\n"
            "  /unmute 名字               /announce 内容"
        ),
        "en": (
            "Accounts:\n"
            "  /register PASSWORD    register the nickname you hold\n"
            "  /login NAME PASSWORD  take a registered nickname\n"
            "  /password OLD NEW     change your password\n"
            "  /unregister PASSWORD  remove your account\n"
            "Operators (DURATION: 10m, 2h, 1d, or 0 for until lifted):\n"
            "  /kick NAME [REASON]              /ban NAME|ip=ADDRESS DURATION [REASON]\n"
            "  /unban NAME|ip=ADDRESS  /bans    /mute NAME DURATION [REASON]\n"
            "  /unmute NAME                     /announce TEXT"
        ),
    },
    "history_mark": {"zh": "(历史) ", "en": "(history) "},
    "offline": {"zh": "(离线) ", "en": "(offline) "},
    "reconnect_wait": {
        "zh": "{delay:g}秒后重新连接(第{attempt}次)...",
        "en": "Reconnecting in {delay:g} s (attempt {attempt})...",
    },
    "reconnect_failed": {
        "zh": "重新连接 {address} 失败: {error}",
        "en": "Could not reconnect to {address}: {error}",
    },
    "reconnected": {"zh": "已重新连接服务器", "en": "Reconnected to the server"},
    "reclaim_refused": {"zh": "无法取回昵称 < {name} >", "en": "Could not take the name < {name} > back"},
    "held_offline": {
        "zh": "未连接: 重新连接后发送",
        "en": "Not connected: this will be sent once reconnected",
    },
    # The web page's texts (chatroom/static/chat.js, served to it as /page.json).
    "web_title": {"zh": "多人聊天室", "en": "Chat room"},
    "web_intro": {
        "zh": "与终端和 Go 客户端的用户在同一个聊天室聊天。",
        "en": "Chat with the people on the terminal and Go clients, in the same rooms.",
    },
    "web_nickname": {"zh": "昵称", "en": "Nickname"},
    "web_password": {"zh": "密码(仅限已注册的名字)", "en": "Password (registered names only)"},
    "web_enter": {"zh": "进入聊天室", "en": "Enter the chat"},
    "web_connecting": {"zh": "正在连接…", "en": "Connecting…"},
    "web_lost": {"zh": "无法连接服务器,{delay:g}秒后重试…", "en": "Cannot reach the server; trying again in {delay:g} s…"},
    "web_login_failed": {"zh": "登录失败: {reason}", "en": "Could not log in: {reason}"},
    "web_rooms": {"zh": "房间", "en": "Rooms"},
    "web_lobby": {"zh": "大厅", "en": "lobby"},
    "web_join_label": {"zh": "加入或创建房间", "en": "Join or create a room"},
    "web_join": {"zh": "加入", "en": "Join"},
    "web_room_name": {"zh": "房间名", "en": "Room name"},
    "web_part": {"zh": "退出房间 {room}", "en": "Leave the room {room}"},
    "web_members": {"zh": "成员", "en": "Members"},
    "web_members_count": {"zh": "成员({count})", "en": "Members ({count})"},
    "web_message_label": {"zh": "发送到 {room} 的信息", "en": "Message to {room}"},
    "web_placeholder": {"zh": "发送到 {room} (输入 /help 查看指令)", "en": "Message {room} (/help for commands)"},
    "web_send": {"zh": "发送", "en": "Send"},
    "web_new_messages": {"zh": "有新消息 ↓", "en": "New messages ↓"},
    "web_you": {"zh": "我", "en": "you"},
    "web_private_from": {"zh": "私聊 来自 {name}", "en": "private from {name}"},
    "web_private_to": {"zh": "私聊 发给 {name}", "en": "private to {name}"},
    "web_offline": {
        "zh": "未连接: 信息仍在输入框中,重新连接后请再发送",
        "en": "Not connected: your text stays in the box; send it again once reconnected",
    },
    "web_left": {"zh": "你已离开聊天室。", "en": "You left the chat."},
    "web_enter_again": {"zh": "重新进入", "en": "Enter again"},
    "web_language": {"zh": "English", "en": "中文"},
    "web_help": {
        "zh": (
            "指令(不区分大小写):\n"
            "  /join 房间        加入或创建房间\n"
            "  /part [房间]      退出房间(默认当前房间)\n"
            "  /msg 名字 内容    私聊 (名字含空格时加引号)\n"
            "  /nick 名字        更改昵称\n"
            "  /who              当前房间的成员\n"
            "  /online           在线人数\n"
            "  /top              活跃排行\n"
            "  /rooms            所有房间\n"
            "  /quit             离开聊天室\n"
            "  //内容            发送以 / 开头的内容"
        ),
        "en": (
            "Commands (case-insensitive):\n"
            "  /join ROOM        join (or create) a room\n"
            "  /part [ROOM]      leave a room (this one by default)\n"
            '  /msg NAME TEXT    a private message ("A NAME" in quotes)\n'
            "  /nick NAME        change your nickname\n"
            "  /who              who is in this room\n"
            "  /online           how many users are online\n"
            "  /top              activity ranking\n"
            "  /rooms            every room\n"
            "  /quit             leave the chat\n"
            "  //TEXT            send a text that starts with /"
        ),
    },
    # Rooms, as the client shows them.
    "room_tag": {"zh": "[{room}] ", "en": "[{room}] "},
    "room_current": {"zh": "当前房间: {room}", "en": "Current room: {room}"},
    "room_status": {"zh": "当前房间: {room}; 你的房间: {rooms}", "en": "Current room: {room}; your rooms: {rooms}"},
    "room_parted": {"zh": "你已离开房间 {room}", "en": "You left the room {room}"},
    "rejoin_refused": {"zh": "无法重新加入房间 < {room} >", "en": "Could not join the room < {room} > again"},
    "usage_join": {"zh": "用法: /join 房间名", "en": "Usage: /join ROOM"},
    "bad_room": {"zh": "房间名不能包含':'", "en": "A room name cannot contain ':'"},
    "no_room_answer": {
        "zh": "服务器没有回应(它也许不支持房间)",
        "en": "The server did not answer (it may not have rooms)",
    },
    # How the client frames what it prints.  The zh forms are what the Go
    # client's Println produces, spaces included.
    "stamp": {"zh": "【  {time}  】", "en": "[{time}] "},
    "chat_line": {"zh": "< {name} >{text}", "en": "< {name} > {text}"},
    "system_personal": {"zh": "< 系统消息 >{text}", "en": "< System > {text}"},
    "system_broadcast": {"zh": "< 系统消息 > {text}", "en": "< System > {text}"},
}


def text(lang: str, key: str, **values: object) -> str:
    """Look up a human-readable text in ``lang`` ("zh" or "en") and fill it in."""
    template = TEXTS[key].get(lang) or TEXTS[key]["en"]
    return template.format(**values) if values else template

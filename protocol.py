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


class Message(NamedTuple):
    """One parsed payload."""

    target_type: str
    target: str
    mark: str
    text: str


def split_message(payload: str) -> Message | None:
    """Split a payload as Go's ``strings.SplitN(payload, ":", 4)``; None if < 4 fields."""
    parts = payload.split(":", 3)
    if len(parts) != 4:
        return None
    return Message(*parts)


def join_message(target_type: str, target: str, mark: str, text: str) -> str:
    """Build a payload from its four fields."""
    return f"{target_type}:{target}:{mark}:{text}"


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
    "frame_error": {"zh": "数据帧错误,连接关闭: {reason}", "en": "Bad frame, closing: {reason}"},
    "name_empty": {"zh": "名字不能为空", "en": "The name must not be empty"},
    "name_too_long": {
        "zh": f"名字最长{MAX_NAME_LENGTH}个字符",
        "en": f"The name must be at most {MAX_NAME_LENGTH} characters",
    },
    "name_spaces": {"zh": "名字首尾不能有空格", "en": "The name must not start or end with spaces"},
    "name_colon": {"zh": "名字不能包含':'", "en": "The name must not contain ':'"},
    "name_control": {"zh": "名字不能包含控制字符", "en": "The name must not contain control characters"},
    "name_reserved": {"zh": "该名字为系统保留", "en": "That name is reserved"},
    # Client texts.
    "connected": {"zh": "服务器连接成功", "en": "Connected to the server"},
    "connect_failed": {"zh": "服务器连接失败 err = {error}", "en": "Could not connect to the server: {error}"},
    "ask_name": {"zh": "请输入你的昵称:", "en": "Enter your nickname: "},
    "ask_new_name": {"zh": "请输入新的昵称:", "en": "Enter your new nickname:"},
    "banner": {
        "zh": (
            "--------------欢迎进入多人聊天室系统----------------\n"
            " * ./cd1 或 ./menu 功能菜单\n"
            " * ./cd2 或 ./changeName 更改昵称\n"
            " * ./cd3 或 ./online 在线用户数量查询\n"
            " * ./cd4 或 ./activity 在线用户数量查询\n"
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
    "quit_ok": {"zh": "退出成功", "en": "Bye"},
    # Client texts this port adds (slash commands, private messages, history, reconnecting).
    "banner_slash": {
        "zh": " 也可用: /help /msg 名字 内容 /who /nick 名字 /top /quit",
        "en": " Also: /help  /msg NAME TEXT  /who  /nick NAME  /top  /quit",
    },
    "help": {
        "zh": (
            "指令(不区分大小写):\n"
            "  /help                 本帮助\n"
            "  /msg 名字 内容        私聊\n"
            "  /who                  在线用户列表\n"
            "  /online               在线用户数量    (./cd3 或 ./online)\n"
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
            "  /who                  who is online\n"
            "  /online               how many users are online  (./cd3 or ./online)\n"
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
    "usage_msg": {"zh": "用法: /msg 名字 内容", "en": "Usage: /msg NAME TEXT"},
    "bad_target": {"zh": "名字不能包含':'", "en": "A name cannot contain ':'"},
    "private_in": {"zh": "[私聊] < {name} >{text}", "en": "[private] < {name} > {text}"},
    "private_out": {"zh": "[私聊] < 我 -> {name} >{text}", "en": "[private] < you -> {name} > {text}"},
    "history_mark": {"zh": "(历史) ", "en": "(history) "},
    "offline": {"zh": "(离线) ", "en": "(offline) "},
    "reconnect_wait": {
        "zh": "{delay:g}秒后重新连接(第{attempt}次)...",
        "en": "Reconnecting in {delay:g} s (attempt {attempt})...",
    },
    "reconnect_failed": {"zh": "重新连接失败: {error}", "en": "Could not reconnect: {error}"},
    "reconnected": {"zh": "已重新连接服务器", "en": "Reconnected to the server"},
    "reclaim_refused": {"zh": "无法取回昵称 < {name} >", "en": "Could not take the name < {name} > back"},
    "held_offline": {
        "zh": "未连接: 重新连接后发送",
        "en": "Not connected: this will be sent once reconnected",
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

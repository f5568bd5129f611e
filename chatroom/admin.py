"""The admin command line: operators, accounts, bans and the moderation log, straight in Redis.

    chatroom-admin --redis-url redis://host:6379/0 grant-oper alice
    python -m chatroom.admin accounts            (REDIS_URL and CHATROOM_KEY_PREFIX as for the server)

It talks to the Redis the servers share, under the same ``--key-prefix``; a
ban lifted here reaches every server process at once (the control channel).
The embedded fakeredis lives inside one server process, so this needs a real
Redis.  Exit status: 0 done, 1 nothing to do it to (no such account, not
banned) or Redis unreachable, 2 a usage error.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields

import redis

from chatroom import accounts, moderation, redisdb
from chatroom.config import Config, build_parser

#: The settings the admin command line shares with the server.
SETTINGS = ("redis_url", "key_prefix")


def build_admin_parser(environ=None) -> argparse.ArgumentParser:
    """The server's Redis flags (same defaults, same checks, same variables), then the commands."""
    parser = build_parser(environ, only=SETTINGS, prog="chatroom-admin",
                          description="redis-chatroom administration: operators, accounts, bans")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("accounts", help="list the accounts: name, operator or not, when registered")
    for command, what in (("grant-oper", "make the account NAME an operator"),
                          ("revoke-oper", "make the account NAME an operator no more"),
                          ("remove-account", "delete the account NAME (whoever holds the name keeps it, unregistered)")):
        commands.add_parser(command, help=what).add_argument("name", metavar="NAME")
    commands.add_parser("bans", help="list the bans in force, with their expiry")
    commands.add_parser("unban", help="lift the ban on NAME or ip=ADDRESS").add_argument("target", metavar="TARGET")
    log = commands.add_parser("log", help="print the moderation log, oldest first")
    log.add_argument("count", metavar="N", nargs="?", type=int, default=20, help="the newest N entries (default 20)")
    return parser


def when(unix_time: float) -> str:
    """A time as the admin reads it: ``2025-12-01 23:15 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(unix_time)))


def run(rdb, keys: redisdb.Keys, args: argparse.Namespace, out=None) -> int:
    """Carry out one command; what it prints goes to ``out``.  Returns the exit status."""
    out = out or sys.stdout
    command = args.command
    if command == "accounts":
        found = accounts.list_accounts(rdb, keys)
        for record in found:
            role = "operator" if record.get("oper") == "1" else "user"
            print(f"{record['name']}\t{role}\tregistered {when(record.get('created', 0))}", file=out)
        print(f"{len(found)} account{'s' if len(found) != 1 else ''}", file=out)
        return 0
    if command in ("grant-oper", "revoke-oper"):
        if not accounts.set_operator(rdb, keys, args.name, command == "grant-oper"):
            print(f"there is no account {args.name!r}", file=out)
            return 1
        print(f"{args.name} is {'now' if command == 'grant-oper' else 'no longer'} an operator", file=out)
        return 0
    if command == "remove-account":
        if not accounts.remove_account(rdb, keys, args.name):
            print(f"there is no account {args.name!r}", file=out)
            return 1
        print(f"account {args.name} removed", file=out)
        return 0
    if command == "bans":
        bans = moderation.read_bans(rdb, keys)
        for ban in bans:
            until = "until lifted" if ban.until == 0 else f"until {when(ban.until)}"
            reason = f": {ban.reason}" if ban.reason else ""
            print(f"{ban.shown}\t{until}\tby {ban.by} at {when(ban.at)}{reason}", file=out)
        print(f"{len(bans)} ban{'s' if len(bans) != 1 else ''}", file=out)
        return 0
    if command == "unban":
        lifted = moderation.lift_ban(rdb, keys, args.target)
        if lifted is True:
            moderation.append_log(rdb, keys, "(admin)", "unban", args.target)
            print(f"{args.target} is no longer banned", file=out)
            return 0
        print(f"{args.target} is not banned" if lifted is False else f"not a name or ip=ADDRESS: {args.target}",
              file=out)
        return 1
    if command == "log":
        for entry in moderation.read_log(rdb, keys, max(args.count, 0)):
            detail = f" {entry['detail']}" if entry.get("detail") else ""
            print(f"{when(entry['at'])}\t{entry['by']}\t{entry['action']} {entry['target']}{detail}", file=out)
        return 0
    raise AssertionError(command)


def main(argv: list[str] | None = None, environ=None) -> int:
    """``chatroom-admin``: parse, connect, run one command."""
    parser = build_admin_parser(environ)
    args = parser.parse_args(argv)
    values = {item.name: getattr(args, item.name) for item in fields(Config) if item.name in SETTINGS}
    config = Config(**values)
    if not config.redis_url:
        parser.error("needs --redis-url (or REDIS_URL): the embedded Redis lives inside one server process")
    try:
        rdb = redisdb.connect_redis(config)
    except SystemExit as exc:  # one line: cannot reach Redis at ...
        print(exc, file=sys.stderr)
        return 1
    try:
        return run(rdb, redisdb.Keys(config.key_prefix), args)
    except redis.RedisError as exc:
        print(f"Redis failed: {redisdb.describe_redis_error(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The settings: one home for each default, every value checked when it is parsed."""

from __future__ import annotations

import logging
from dataclasses import fields

import pytest

from chatroom.config import Config, parse_args
from chatroom.redisdb import mask_url

pytestmark = pytest.mark.timeout(30)


def usage_error(capsys, argv, environ=None) -> str:
    """The usage error ``argv`` gets (exit status 2), as printed."""
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv, environ or {})
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--port", "-1"], "argument --port: must be at least 0, not -1"),
        (["--port", "99999"], "argument --port: must be at most 65535, not 99999"),
        (["--port", "abc"], "argument --port: not a whole number: 'abc'"),
        (["--max-frame", "0"], "argument --max-frame: must be at least 512, not 0"),
        (["--max-frame", "-5"], "argument --max-frame: must be at least 512"),
        (["--max-frame", "10"], "argument --max-frame: must be at least 512"),
        (["--max-clients", "0"], "argument --max-clients: must be at least 1, not 0"),
        (["--max-clients", "-3"], "argument --max-clients: must be at least 1"),
        (["--max-per-ip", "-1"], "argument --max-per-ip: must be at least 0"),
        (["--login-timeout", "-1"], "argument --login-timeout: must be at least 0"),
        (["--history", "-1"], "argument --history: must be at least 0"),
        (["--rate-limit", "-1"], "argument --rate-limit: must be at least 0"),
        (["--rate-limit", "nan"], "argument --rate-limit: not a finite number: 'nan'"),
        (["--rate-burst", "0"], "argument --rate-burst: must be at least 1"),
        (["--dead-after", "0"], "argument --dead-after: must be at least 0.3, not 0"),
        (["--lang", "fr"], "argument --lang: must be one of en, zh, not 'fr'"),
        (["--redis-url", "nonsense"], "argument --redis-url: not a Redis URL"),
        (["--redis-url", "redis://:secret@host:notaport/0"], "argument --redis-url: not a valid Redis URL"),
        (["--cpu", "fast"], "argument --cpu: not auto, none or a CPU number: 'fast'"),
        (["--server-id", "has space"], "argument --server-id: must be 1-64 printable characters"),
    ],
)
def test_a_value_out_of_range_is_a_usage_error_naming_the_flag(capsys, argv, says):
    error = usage_error(capsys, argv)
    assert says in error
    assert "secret" not in error


@pytest.mark.parametrize(
    "environ, says",
    [
        ({"CHATROOM_PORT": "abc"}, "CHATROOM_PORT: not a whole number: 'abc'"),
        ({"CHATROOM_LANG": "fr"}, "CHATROOM_LANG: must be one of en, zh, not 'fr'"),
        ({"REDIS_URL": "nonsense"}, "REDIS_URL: not a Redis URL"),
    ],
)
def test_a_bad_environment_variable_is_a_usage_error_naming_it(capsys, environ, says):
    assert says in usage_error(capsys, [], environ)


def test_environment_variables_replace_the_defaults_and_flags_win_over_them():
    environ = {"CHATROOM_PORT": "9600", "CHATROOM_LANG": "zh", "REDIS_URL": "redis://h:1/0"}
    config = parse_args([], environ)
    assert (config.port, config.lang, config.redis_url) == (9600, "zh", "redis://h:1/0")
    assert parse_args(["--port", "9601"], environ).port == 9601


def test_zero_turns_off_the_limits_that_say_so():
    config = parse_args(
        ["--max-per-ip", "0", "--login-timeout", "0", "--frame-timeout", "0", "--idle-timeout", "0",
         "--rate-limit", "0", "--send-timeout", "0", "--history", "0"],
        {},
    )
    assert (config.max_per_ip, config.login_timeout, config.rate_limit, config.history) == (0, 0, 0, 0)


def test_a_max_frame_over_what_the_go_client_decodes_is_allowed_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="chatroom.server"):
        assert parse_args(["--max-frame", "8000"], {}).max_frame == 8000
    assert "the original Go client cannot decode frames over 4092 bytes" in caplog.text


def test_every_default_is_written_once_the_flags_take_it_from_config():
    parsed = parse_args([], {})
    for item in fields(Config):
        assert getattr(parsed, item.name) == item.default, item.name


def test_config_made_directly_is_checked_too():
    with pytest.raises(ValueError, match="max_clients: must be at least 1"):
        Config(max_clients=0)
    assert Config(login_timeout=0.3).login_timeout == 0.3


def test_a_redis_password_never_appears_in_what_is_shown():
    assert mask_url("redis://:secret@h:1/0") == "redis://:***@h:1/0"
    assert mask_url("redis://user:secret@h/0") == "redis://user:***@h/0"
    assert mask_url("redis://secret@h/0") == "redis://***@h/0"
    assert mask_url("redis://h:1/0") == "redis://h:1/0"


def test_on_off_settings_take_flags_and_environment_variables(capsys):
    assert parse_args([]).plaintext is True
    assert parse_args([]).allow_plaintext_passwords is False
    assert parse_args(["--allow-plaintext-passwords"]).allow_plaintext_passwords is True
    assert parse_args([], {"CHATROOM_ALLOW_PLAINTEXT_PASSWORDS": "yes"}).allow_plaintext_passwords is True
    assert "CHATROOM_PLAINTEXT: not yes or no" in usage_error(capsys, [], {"CHATROOM_PLAINTEXT": "maybe"})
    assert "--no-plaintext needs --tls-port" in usage_error(capsys, ["--no-plaintext"])
    assert "argument --tls-cert: cannot read '/nonexistent'" in usage_error(capsys, ["--tls-cert", "/nonexistent"])

"""The payload layer, without any I/O: splitting, building, names, chat text, the text table."""

from __future__ import annotations

import string

import pytest

import protocol as p

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    "payload, fields",
    [
        ("channel:channel1::hello", ("channel", "channel1", "", "hello")),
        ("channel:channel1::a:b:c", ("channel", "channel1", "", "a:b:c")),  # Go's SplitN(…, 4): the text keeps its colons
        ("individual::changeNameFirst:alice", ("individual", "", "changeNameFirst", "alice")),
        (":::", ("", "", "", "")),
    ],
)
def test_split_message_is_go_splitn_with_four_fields(payload, fields):
    assert tuple(p.split_message(payload)) == fields
    assert p.join_message(*fields) == payload


@pytest.mark.parametrize("payload", ["", "hello", "a:b", "a:b:c"])
def test_fewer_than_four_fields_is_none(payload):
    assert p.split_message(payload) is None


def test_fits_counts_the_newline_every_server_payload_ends_with():
    assert p.fits("x" * 4091, 4092)
    assert not p.fits("x" * 4092, 4092)
    assert not p.fits("é" * 2046, 4092)  # bytes, not characters


@pytest.mark.parametrize(
    "name, problem",
    [
        ("alice", None),
        ("李雷", None),
        ("a b", None),
        ("", "name_empty"),
        ("x" * 33, "name_too_long"),
        (" alice", "name_spaces"),
        ("a:b", "name_colon"),
        ("a\uff1ab", "name_colon"),  # a fullwidth colon folds to ':'
        ("a\u202eb", "name_control"),
        ("a\nb", "name_control"),
        ("System", "name_reserved"),
        ("guest-12", "name_reserved"),
        ("Guest-12", "name_reserved"),
    ],
)
def test_name_rules(name, problem):
    assert p.name_problem(name) == problem


def test_names_fold_by_nfkc_and_case():
    assert p.name_key("Ａｌｉｃｅ") == p.name_key("ALICE") == "alice"


def test_guest_names_carry_their_id():
    assert p.guest_name("7") == "guest-7"
    assert p.guest_id("GUEST-7") == "7"
    assert p.guest_id("guest-x") is None
    assert p.guest_id("alice") is None


@pytest.mark.parametrize(
    "text, problem",
    [
        ("hello", None),
        ("tab\tis fine", None),
        ("中文 and emoji 🙂", None),
        ("a\nb", "text_line_break"),
        ("a\r\nb", "text_line_break"),
        ("a\u2028b", "text_line_break"),
        ("a\x85b", "text_line_break"),
        ("a\x0bb", "text_line_break"),
        ("\x1b[2J", "text_control"),
        ("\x00", "text_control"),
        ("\x7f", "text_control"),
    ],
)
def test_chat_text_rules(text, problem):
    assert p.text_problem(text) == problem


def test_every_text_has_english_and_chinese_and_the_same_placeholders():
    for key, forms in p.TEXTS.items():
        assert set(forms) == {"en", "zh"}, key
        fields = [{name for _, name, _, _ in string.Formatter().parse(form) if name} for form in forms.values()]
        assert fields[0] == fields[1], key


def test_marks_are_never_translated():
    # The Go client keys on these bytes.
    assert (p.SYSTEM, p.CHANGE_NAME_FIRST_OK, p.NAME_REFUSED, p.RENAME_FAILED, p.CHANGE_NAME_OK) == (
        "系统消息", "changeNameFirst1", "changeNameFirst0", "changeNameFirst2", "changeName1",
    )


def test_a_text_in_an_unknown_language_falls_back_to_english():
    assert p.text("fr", "joined", name="bob") == "User < bob > joined!"


def test_printable_shows_what_could_break_a_line():
    assert p.printable("bob\n[21:13] < System >") == "bob<U+000A>[21:13] < System >"
    assert p.printable("a\u202eb\u2028") == "a<U+202E>b<U+2028>"
    assert p.printable("李雷 and bob") == "李雷 and bob"


@pytest.mark.parametrize("text, parts", [
    ("alice spam", ("alice", "spam")), ("alice", ("alice", "")), ('"big bob" too loud', ("big bob", "too loud")),
    ("'x y'", ("x y", "")), ('"unclosed name', ('"unclosed', "name")), ("  alice   1h  why ", ("alice", "1h  why")),
])
def test_a_command_names_its_target_first_quoted_if_it_has_spaces(text, parts):
    assert p.split_name(text) == parts

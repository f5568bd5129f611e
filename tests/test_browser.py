"""The web page in a real browser: Debian's headless chromium, driven by Playwright.

Each test starts a server with its web listener, opens the page as a person
would (typing, Enter), and checks what the page shows.  Playwright's own
browser download is never used: the browser is /usr/bin/chromium, which CI
installs (.ci/run); without it these tests fail in CI and are skipped
elsewhere, with the reason.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, scaled

pytestmark = pytest.mark.timeout(90)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Chromium's own traffic (updates, sync, ...) fails on a machine without a network, noisily.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: make screenshot: where the pictures go (otherwise into the test's own temporary directory).
SCREENSHOT_DIR = os.environ.get("CHATROOM_SCREENSHOT_DIR")

#: Seconds a page gets to show what the test waits for.
SHOWN = 10_000


@pytest.fixture(scope="session")
def browser():
    """One headless chromium for the session (each test gets its own contexts)."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, and CI must run the browser tests")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        # launch() gives the browser a fresh profile of its own, removed when it closes.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def contexts(browser):
    """Open browser contexts (one person each: own storage); closed after the test."""
    opened = []

    def open_context(**options):
        context = browser.new_context(**options)
        opened.append(context)
        return context

    yield open_context
    for context in opened:
        context.close()


@pytest.fixture
def web_server(make_server):
    return make_server(ws_port=0)


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


class Tab:
    """One person's page: what they type, what they see."""

    def __init__(self, context, server, *, url: str | None = None) -> None:
        self.page = context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("dialog", self._dialog)
        self.page.goto(url or server.websocket.url)
        self.page.wait_for_selector("body[data-ready=true]")

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def enter(self, name: str, password: str = "") -> Tab:
        """Type a nickname (and a password) and press Enter."""
        self.page.locator("#nickname").press_sequentially(name)
        if password:
            self.page.locator("#password").press_sequentially(password)
        self.page.locator("#nickname").press("Enter")
        return self

    def login(self, name: str) -> Tab:
        self.enter(name)
        expect(self.page.locator("#chat")).to_be_visible(timeout=SHOWN)
        expect(self.page.locator("#me")).to_have_text(name, timeout=SHOWN)
        return self

    def say(self, text: str) -> None:
        """Type a line into the message box and press Enter."""
        box = self.page.locator("#message")
        box.fill(text)
        box.press("Enter")

    @property
    def log(self):
        return self.page.locator(".log:not([hidden])")

    def lines(self, kind: str = "line") -> list[str]:
        """What the room on screen shows, one string per line: name and text."""
        return self.log.locator(f".{kind}").evaluate_all(
            "items => items.map(item => [...item.querySelectorAll('.tag, .who, .text')]"
            ".map(part => part.textContent).join(' '))"
        )

    def wait_for_line(self, text: str, kind: str = "line"):
        line = self.log.locator(f".{kind}", has_text=text).last
        expect(line).to_be_visible(timeout=SHOWN)
        return line

    def wait_for_lines(self, count: int, kind: str = "chat") -> list[str]:
        expect(self.log.locator(f".{kind}")).to_have_count(count, timeout=SHOWN)
        return self.lines(kind)


def chats(tab: Tab) -> list[str]:
    return [line for line in tab.lines("chat") if not line.startswith("System")]


# --- one room, three kinds of client -------------------------------------------------


def test_two_browser_tabs_and_a_terminal_chat_in_one_room_in_order(web_server, contexts, connect):
    ann = Tab(contexts(), web_server).login("ann")
    ben = Tab(contexts(), web_server).login("ben")
    tom = connect(web_server)
    tom.login("tom")
    ann.wait_for_line("User < tom > joined!")
    expected = []
    for round_ in range(3):
        ann.say(f"ann {round_}")
        tom.expect(f"channel:channel1:ann:ann {round_}\n")
        ben.say(f"ben {round_}")
        tom.expect(f"channel:channel1:ben:ben {round_}\n")
        tom.send(f"channel:channel1::tom {round_}")
        tom.expect(f"channel:channel1:tom:tom {round_}\n")
        expected += [f"ann ann {round_}", f"ben ben {round_}", f"tom tom {round_}"]
    for tab in (ann, ben):
        assert tab.wait_for_lines(9) == expected
        assert tab.errors == []
    assert ann.log.locator(".chat.mine").count() == 3  # one's own lines stand out
    # The members list is the room's, kept by the join and leave notices.
    expect(ann.page.locator("#member-list li")).to_have_count(3, timeout=SHOWN)
    tom.send("channel:channel1:quit:")
    ann.wait_for_line("User left: tom")
    expect(ann.page.locator("#member-list li")).to_have_text(["ann (you)", "ben"], timeout=SHOWN)
    expect(ann.page.locator("#members-title")).to_have_text("Members (2)")


def test_a_browser_user_joins_a_room_and_parts_it(web_server, contexts, connect):
    ann = Tab(contexts(), web_server).login("ann")
    tom = connect(web_server)
    tom.login("tom")
    ann.say("/join Dev")
    expect(ann.page.locator("#room-list .room[aria-current=true] .name")).to_have_text("Dev", timeout=SHOWN)
    tom.send("channel:dev:join:")
    tom.expect("individual:tom:join1:Dev\n")
    ann.wait_for_line("User < tom > joined the room")
    tom.send("channel:dev::welcome to dev")
    ann.wait_for_line("welcome to dev")
    expect(ann.page.locator("#member-list li")).to_have_count(2, timeout=SHOWN)
    # The lobby is one click away, and what came there meanwhile is counted.
    tom.send("channel:channel1::in the lobby")
    expect(ann.page.locator("#room-list .badge")).to_have_text("1", timeout=SHOWN)
    ann.page.locator("#room-list .room", has_text="channel1").click()
    ann.wait_for_line("in the lobby")
    ann.page.get_by_role("button", name="Leave the room Dev").click()
    tom.expect("channel:Dev:系统消息:User < ann > left the room\n")
    expect(ann.page.locator("#room-list .room")).to_have_count(1, timeout=SHOWN)


def test_a_private_message_from_the_terminal_reaches_the_browser(web_server, contexts, connect):
    ann = Tab(contexts(), web_server).login("ann")
    tom = connect(web_server)
    tom.login("tom")
    tom.send("individual:ann::psst, ann")
    line = ann.wait_for_line("psst, ann", kind="private")
    expect(line.locator(".tag")).to_have_text("private from tom")
    ann.say("/msg tom hello back")
    tom.expect("individual:ann:private:hello back\n")
    expect(ann.log.locator(".private .tag", has_text="private to tom")).to_be_visible(timeout=SHOWN)


def test_markup_from_the_network_shows_as_text_and_runs_nothing(web_server, contexts, connect):
    ann = Tab(contexts(), web_server).login("ann")
    name = "<img src=x onerror=alert(1)>"
    text = "<script>alert(2)</script><img src=x onerror=alert(3)> <b>bold</b>"
    evil = connect(web_server)
    evil.login(name)
    evil.send(f"channel:channel1::{text}")
    line = ann.wait_for_line("<script>alert(2)</script>", kind="chat")
    expect(line.locator(".who")).to_have_text(name)
    expect(line.locator(".text")).to_have_text(text)
    evil.send(f"individual:ann::{text}")
    ann.wait_for_line("<b>bold</b>", kind="private")
    ann.wait_for_line(f"User < {name} > joined!")
    assert ann.page.locator(".log img, .log script, .log b, #member-list img").count() == 0
    ann.page.wait_for_timeout(300)  # an onerror would have fired by now
    assert ann.dialogs == []
    assert ann.errors == []


def test_the_page_reconnects_after_a_server_restart_and_takes_its_name_back(make_server, contexts, connect):
    first = make_server(ws_port=0)
    ann = Tab(contexts(), first).login("ann")
    ann.say("/join dev")
    expect(ann.page.locator("#room-list .room")).to_have_count(2, timeout=SHOWN)
    first.shutdown()
    ann.wait_for_line("The server is shutting down")
    expect(ann.page.locator("#status")).to_contain_text("Reconnecting in", timeout=SHOWN)
    second = make_server(ws_port=first.websocket.port)
    ann.wait_for_line("Reconnected to the server")
    tom = connect(second)
    tom.login("tom")
    tom.send("channel:dev:join:")
    tom.expect("individual:tom:join1:dev\n")  # the page took its rooms back too
    tom.send("channel:dev:who:")
    tom.expect("individual:tom:系统消息:In dev (2): ann, tom\n")
    tom.send("channel:channel1::welcome back")
    ann.page.locator("#room-list .room", has_text="channel1").click()
    ann.wait_for_line("welcome back")
    expect(ann.page.locator("#status")).to_have_text("")


def test_a_page_from_another_origin_is_refused(web_server, contexts):
    context = contexts()
    port = web_server.websocket.port
    evil = (
        "<!doctype html><title>waiting</title><script>"
        f"const ws = new WebSocket('ws://127.0.0.1:{port}/ws');"
        "ws.onopen = () => { document.title = 'open'; ws.send('individual::changeNameFirst:victim'); };"
        "ws.onclose = (e) => { document.title = 'closed ' + e.code; };"
        "</script>"
    )
    context.route("http://evil.test/**", lambda route: route.fulfill(status=200, content_type="text/html", body=evil))
    page = context.new_page()
    page.goto("http://evil.test/")
    expect(page).to_have_title("closed 1006", timeout=SHOWN)
    assert web_server.connections == set()
    # The page's own origin is let in.
    Tab(context, web_server).login("own")


def test_an_idle_tab_stays_connected_past_the_idle_limit(make_server, contexts, connect):
    server = make_server(ws_port=0, idle_timeout=scaled(0.5), ws_ping_interval=scaled(0.2))
    ann = Tab(contexts(), server).login("ann")
    ann.page.wait_for_timeout(scaled(2.0) * 1000)  # four idle limits of silence, pinged: what is under test
    tom = connect(server)
    tom.login("tom")
    tom.send("channel:channel1::still there?")
    ann.wait_for_line("still there?")
    assert "Idle" not in " ".join(ann.lines())


def test_arriving_messages_leave_the_typed_text_and_the_scrolled_view_alone(web_server, contexts, connect):
    ann = Tab(contexts(), web_server).login("ann")
    tom = connect(web_server)
    tom.login("tom")
    for i in range(60):
        tom.send(f"channel:channel1::line {i}")
    ann.wait_for_line("line 59")
    at_bottom = "log => log.scrollHeight - log.scrollTop - log.clientHeight < 48"
    assert ann.log.evaluate(at_bottom)
    box = ann.page.locator("#message")
    box.press_sequentially("half a thou")
    ann.log.evaluate("log => { log.scrollTop = 0; }")
    tom.send("channel:channel1::while you read")
    ann.wait_for_line("while you read")
    assert ann.log.evaluate("log => log.scrollTop") == 0  # not pulled down
    expect(ann.page.locator("#new-messages")).to_be_visible()
    assert box.input_value() == "half a thou"
    assert ann.page.evaluate("document.activeElement.id") == "message"
    ann.page.locator("#new-messages").click()
    assert ann.log.evaluate(at_bottom)


def test_a_taken_name_is_refused_on_the_form_with_the_reason(web_server, contexts, connect):
    tom = connect(web_server)
    tom.login("tom")
    tab = Tab(contexts(), web_server).enter("TOM")
    expect(tab.page.locator("#login-status")).to_have_text("That name is taken, please try another", timeout=SHOWN)
    tab.page.locator("#nickname").fill("")
    tab.login("tim")


def test_a_browser_user_logs_in_to_a_registered_name(web_server, contexts, connect):
    owner = connect(web_server)
    owner.login("ann")
    owner.send("individual:ann:register:correct horse")  # from loopback: clear text is allowed
    owner.expect("individual:ann:register1:ann\n")
    owner.send("channel:channel1:quit:")
    owner.expect_closed()
    tom = connect(web_server)
    tom.login("tom")
    wrong = Tab(contexts(), web_server)
    sent = []
    wrong.page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(payload)))
    wrong.enter("ann", password="not it")
    expect(wrong.page.locator("#login-status")).to_have_text("Could not log in: Wrong password", timeout=SHOWN)
    assert sent[0] == "individual::login:ann:not it"
    ann = Tab(contexts(), web_server)
    ann.enter("ann", password="correct horse")
    expect(ann.page.locator("#me")).to_have_text("ann", timeout=SHOWN)
    tom.expect("channel:channel1:系统消息:User < ann > joined!\n")
    ann.say("logged in from a browser")
    tom.expect("channel:channel1:ann:logged in from a browser\n")
    assert ann.page.locator("#password").input_value() == ""  # not kept in the form


def test_the_commands_of_the_page(web_server, contexts, connect):
    tom = connect(web_server)
    tom.login("tom")
    ann = Tab(contexts(), web_server).login("ann")
    tom.send("channel:channel1::one")
    ann.wait_for_line("one")
    ann.say("/who")
    ann.wait_for_line("Online (2): ann, tom")
    ann.say("/top")
    ann.wait_for_line("Activity ranking")
    ann.say("/online")
    ann.wait_for_line("Users online: 2", kind="system")
    ann.say("/nick anna")
    ann.wait_for_line("Your nickname is now: anna")
    expect(ann.page.locator("#me")).to_have_text("anna")
    ann.say("//slash")
    tom.expect("channel:channel1:anna:/slash\n")
    ann.say("x" * 5000)
    ann.wait_for_line("Message too long: 5000 bytes, at most 4069 (4092 with names and fields)")
    assert ann.page.locator("#message").input_value() == "x" * 5000  # kept, to be shortened
    ann.page.locator("#message").fill("")
    ann.say("/help")
    ann.wait_for_line("/join ROOM")
    assert ann.errors == []


def test_the_page_speaks_the_servers_chinese(make_server, contexts, connect):
    server = make_server(ws_port=0, lang="zh")
    ann = Tab(contexts(), server)
    expect(ann.page.locator("#enter")).to_have_text("进入聊天室")
    ann.login("小明")
    tom = connect(server)
    tom.login("tom")
    ann.wait_for_line("用户 < tom > 上线了!")
    ann.page.locator("#chat .language").click()
    expect(ann.page.locator("#send-form button")).to_have_text("Send")


def test_screenshots_of_the_chat_on_a_desktop_and_a_phone(web_server, contexts, connect, tmp_path):
    """make screenshot: docs/screenshot.png and docs/screenshot-phone.png."""
    out = Path(SCREENSHOT_DIR) if SCREENSHOT_DIR else tmp_path
    tom = connect(web_server)
    tom.login("tom")
    tom.send("channel:channel1::Morning all! Did the deploy go out?")
    tom.expect("channel:channel1:tom:Morning all! Did the deploy go out?\n")
    ann = Tab(contexts(viewport={"width": 1180, "height": 700}), web_server).login("ann")
    tom.send("channel:channel1::Welcome, ann. This room is shared with the terminal and Go clients.")
    ann.say("Hi tom! Yes, 20 minutes ago, all green.")
    li = connect(web_server)
    li.login("李雷")
    li.send("channel:channel1::大家好, 我用的是 Go 客户端")
    ann.say("/join dev")
    expect(ann.page.locator("#room-list .room")).to_have_count(2, timeout=SHOWN)
    ann.page.locator("#room-list .room", has_text="channel1").click()
    tom.send("individual:ann::lunch at 12?")
    tom.send("channel:channel1::Thanks both, see you at the stand-up")
    ann.wait_for_line("Thanks both")
    expect(ann.page.locator("#member-list li")).to_have_count(3, timeout=SHOWN)
    ann.page.screenshot(path=str(out / "screenshot.png"))
    phone = Tab(contexts(viewport={"width": 390, "height": 780}, is_mobile=True, has_touch=True), web_server)
    phone.login("bea")
    tom.send("channel:channel1::Hi bea, the same room on a phone.")
    phone.wait_for_line("on a phone")
    phone.page.screenshot(path=str(out / "screenshot-phone.png"))
    assert (out / "screenshot.png").stat().st_size > 10_000
    assert ann.errors == [] and phone.errors == []


def test_the_static_files_are_in_the_package():
    static = ROOT / "chatroom" / "static"
    assert {p.name for p in static.iterdir()} >= {"index.html", "chat.css", "chat.js", "favicon.svg"}

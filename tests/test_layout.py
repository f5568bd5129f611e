"""The module layout's rules: who may import whom (see the chatroom package's docstring)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.timeout(30)

OURS = {"server", "client", "framing", "protocol", "chatroom"}


def imports_of(path: Path) -> set[str]:
    """The project modules ``path`` imports (top-level names, and chatroom.<module>)."""
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    # Imports for type annotations only (under ``if TYPE_CHECKING:``) are not run: no cycle.
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in OURS:
                found.add(".".join(name.split(".")[:2]) if top == "chatroom" else top)
    return found


def module_name(path: Path) -> str:
    return f"chatroom.{path.stem}" if path.parent.name == "chatroom" else path.stem


SOURCES = {module_name(path): path for path in [*ROOT.glob("*.py"), *(ROOT / "chatroom").glob("*.py")]}


@pytest.mark.parametrize("name", ["framing", "protocol"])
def test_framing_and_protocol_import_nothing_of_the_project(name):
    assert imports_of(SOURCES[name]) == set()


def test_the_package_never_imports_server_or_client():
    for name, path in SOURCES.items():
        if name.startswith("chatroom."):
            assert not imports_of(path) & {"server", "client"}, name


def test_there_are_no_import_cycles():
    graph = {name: {i for i in imports_of(path) if i in SOURCES and i != name} for name, path in SOURCES.items()}
    visiting, done = set(), set()

    def visit(name, trail):
        if name in done:
            return
        assert name not in visiting, " -> ".join([*trail, name])
        visiting.add(name)
        for imported in graph[name]:
            visit(imported, [*trail, name])
        visiting.discard(name)
        done.add(name)

    for name in graph:
        visit(name, [])


def test_redis_py_internals_are_read_in_the_adapter_only():
    for name, path in SOURCES.items():
        if name == "chatroom.redisdb":
            continue
        text = path.read_text(encoding="utf-8")
        for private in ("._parser", "redis._parsers", "_HiredisParser", "connection._sock"):
            assert private not in text, f"{name} reads {private}"


def test_websockets_internals_are_read_in_the_web_listener_only():
    for name, path in SOURCES.items():
        if name == "chatroom.websocket":
            continue
        text = path.read_text(encoding="utf-8")
        for private in ("protocol_mutex", "process_event", "recv_messages", "websockets.sync"):
            assert private not in text, f"{name} reads {private}"

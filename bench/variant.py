"""The server with some of its constants changed: the A/B runs of docs/BENCHMARKS.md.

    CHATROOM_VARIANT="chatroom.redisdb.PUBSUB_READ_SIZE=16384 framing.RECV_SIZE=65536" \\
        .venv/bin/python bench/run.py --server bench/variant.py ...

Each ``module.NAME=VALUE`` of ``CHATROOM_VARIANT`` (VALUE a Python literal)
sets that module's constant before the server starts, so a lever that has no
flag can be turned off in the final code instead of in an old copy of it.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def apply(spec: str) -> None:
    """Set every ``module.NAME=VALUE`` of ``spec``; an unknown module or name is an error."""
    for item in spec.split():
        target, _, value = item.partition("=")
        module_name, _, name = target.rpartition(".")
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            raise SystemExit(f"variant: {module_name} has no {name}")
        setattr(module, name, ast.literal_eval(value))


if __name__ == "__main__":
    apply(os.environ.get("CHATROOM_VARIANT", ""))
    import server

    sys.exit(server.main())

"""A program that never closes its `Runtime`, nor the streams it stops reading, still
has every call in the ledger when it exits, and is told once how to close them."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

PROGRAM = """
import asyncio, sys
from areion import ChatRequest, Message, Runtime
from areion.config import parse_config

config = {
    "models": [{"name": "fast", "provider": "sim", "model": "sim-fast", "time_scale": 0.01}],
    "store": "sqlite:///" + sys.argv[1],
}
rt = Runtime(parse_config(config))  # never closed

def ask(text):
    return ChatRequest(model="fast", messages=[Message(role="user", content=text)])

async def main():
    await rt.chat(ask("one"))
    stream = await rt.chat_stream(ask("two"))
    async for _ in stream:
        break  # abandoned, without aclose()
    dropped = await rt.chat_stream(ask("three"))
    del dropped  # never read at all

asyncio.run(main())
"""


def test_calls_of_an_unclosed_runtime_and_abandoned_streams_are_booked(tmp_path: Path) -> None:
    db = tmp_path / "areion.db"
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(db)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT prompt_tokens, completion_tokens, cost_usd, open FROM ledger"
        ).fetchall()
    assert len(rows) == 3
    assert all(cost > 0 and not still_open for _, _, cost, still_open in rows)
    # Told once each, with the fix.
    assert done.stderr.count("Runtime was not closed") == 1
    assert "await rt.aclose()" in done.stderr
    assert done.stderr.count("ChatStream was dropped") == 1
    assert "await stream.aclose()" in done.stderr

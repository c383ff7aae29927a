"""Session memory and memoized tool results in the SQLite store."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from areion.store import SQLiteStore
from areion.store.records import SessionSummary, SessionTurn
from tests.support import ManualClock


def _turns(first: int, count: int, tag: str = "") -> list[SessionTurn]:
    return [
        SessionTurn(
            seq=seq,
            role="user" if seq % 2 == 0 else "assistant",
            content=f'{tag}turn {seq}: naïve 東京 "quoted" \\ \n',
            tokens=10 + seq,
        )
        for seq in range(first, first + count)
    ]


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "areion.db")


@pytest.fixture
async def store(db_path: str) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(db_path)
    yield store
    await store.aclose()


# -- turns ----------------------------------------------------------------------------


async def test_turns_round_trip_in_order(store: SQLiteStore) -> None:
    await store.append_turns("team-a", "s1", _turns(0, 3))
    await store.append_turns("team-a", "s1", _turns(3, 4))
    assert await store.session_turns("team-a", "s1") == _turns(0, 7)


async def test_turns_after(store: SQLiteStore) -> None:
    await store.append_turns("team-a", "s1", _turns(0, 6))
    assert await store.session_turns("team-a", "s1", after=3) == _turns(4, 2)
    assert await store.session_turns("team-a", "s1", after=5) == []


async def test_unknown_session_is_empty(store: SQLiteStore) -> None:
    assert await store.session_turns("team-a", "nope") == []
    assert await store.session_summaries("team-a", "nope") == []
    await store.append_turns("team-a", "nope", [])  # nothing to do
    assert await store.session_turns("team-a", "nope") == []


async def test_sessions_are_partitioned_by_tenant(store: SQLiteStore) -> None:
    await store.append_turns("team-a", "shared", _turns(0, 2, "a: "))
    await store.append_turns("team-b", "shared", _turns(0, 3, "b: "))
    await store.append_turns("team-a", "other", _turns(0, 1, "o: "))
    await store.add_summary(
        "team-a", "shared", SessionSummary(first_seq=0, last_seq=1, text="A", tokens=1)
    )

    assert await store.session_turns("team-a", "shared") == _turns(0, 2, "a: ")
    assert await store.session_turns("team-b", "shared") == _turns(0, 3, "b: ")
    assert await store.session_turns("team-a", "other") == _turns(0, 1, "o: ")
    assert await store.session_summaries("team-b", "shared") == []
    assert [s.text for s in await store.session_summaries("team-a", "shared")] == ["A"]
    assert await store.session_turns("x' OR '1'='1", "shared") == []


async def test_a_turn_seq_is_stored_once(store: SQLiteStore) -> None:
    await store.append_turns("team-a", "s1", _turns(0, 3))
    with pytest.raises(ValueError, match="already has a turn"):
        await store.append_turns("team-a", "s1", _turns(2, 2))
    # the batch landed whole or not at all: seq 3 is not there either
    assert await store.session_turns("team-a", "s1") == _turns(0, 3)


async def test_concurrent_appends_to_many_sessions(store: SQLiteStore) -> None:
    await asyncio.gather(
        *(store.append_turns(f"t{i % 3}", f"s{i}", _turns(0, 4, f"{i}: ")) for i in range(60))
    )
    for i in range(60):
        assert await store.session_turns(f"t{i % 3}", f"s{i}") == _turns(0, 4, f"{i}: ")


# -- summaries ------------------------------------------------------------------------


async def test_summaries_oldest_first(store: SQLiteStore) -> None:
    later = SessionSummary(first_seq=10, last_seq=19, text="later", tokens=12)
    early = SessionSummary(first_seq=0, last_seq=9, text='early: 東京 "x"', tokens=30)
    await store.add_summary("team-a", "s1", later)
    await store.add_summary("team-a", "s1", early)
    assert await store.session_summaries("team-a", "s1") == [early, later]


async def test_sessions_survive_reopening(db_path: str) -> None:
    first = SQLiteStore(db_path)
    await first.append_turns("team-a", "s1", _turns(0, 5))
    summary = SessionSummary(first_seq=0, last_seq=3, text="so far", tokens=4)
    await first.add_summary("team-a", "s1", summary)
    await first.cache_put("k", b"\x00\xffvalue", ttl=60)
    await first.aclose()

    second = SQLiteStore(db_path)
    try:
        assert await second.session_turns("team-a", "s1") == _turns(0, 5)
        assert await second.session_summaries("team-a", "s1") == [summary]
        assert await second.cache_get("k") == b"\x00\xffvalue"
    finally:
        await second.aclose()


# -- memoized tool results ------------------------------------------------------------


async def test_cache_round_trip_and_overwrite(store: SQLiteStore) -> None:
    assert await store.cache_get("k") is None
    await store.cache_put("k", b"first", ttl=60)
    assert await store.cache_get("k") == b"first"
    await store.cache_put("k", b"second", ttl=60)
    assert await store.cache_get("k") == b"second"


async def test_cache_values_are_bytes_exactly(store: SQLiteStore) -> None:
    values = {f"k{i}": os.urandom(i * 37) for i in range(40)}
    values["every-byte"] = bytes(range(256))
    values["empty"] = b""
    # all in one batch: each value is cut out of one shared BLOB
    await asyncio.gather(*(store.cache_put(k, v, ttl=60) for k, v in values.items()))
    for key, value in values.items():
        assert await store.cache_get(key) == value


async def test_cache_expiry(db_path: str) -> None:
    clock = ManualClock(time.time())  # expiry moves with the test, not the machine's speed
    store = SQLiteStore(db_path, clock=clock)
    try:
        await store.cache_put("short", b"x", ttl=0.05)
        await store.cache_put("long", b"y", ttl=60)
        assert await store.cache_get("short") == b"x"
        clock.advance(0.1)
        assert await store.cache_get("short") is None
        assert await store.cache_get("long") == b"y"
    finally:
        await store.aclose()


async def test_expired_entries_are_swept_by_later_puts(db_path: str, store: SQLiteStore) -> None:
    await asyncio.gather(*(store.cache_put(f"old{i}", b"x", ttl=0.01) for i in range(20)))
    await asyncio.sleep(0.05)
    await store.cache_put("new", b"y", ttl=60)
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT key FROM tool_cache").fetchall() == [("new",)]

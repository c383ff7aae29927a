"""The embedded SQLite store, on a real database file."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from areion.errors import ConfigError
from areion.store import SQLiteStore, Store, open_store
from areion.store.sqlite import _ledger_tuple, sqlite_path
from areion.store.sqlite_schema import LEDGER_CLOSINGS, LEDGER_ROWS, TURNS
from areion.store.sqlite_thread import Job
from areion.types import LedgerEntry


def _entry(request_id: str, tenant: str = "team-a", created: float = 1.0, **fields: Any) -> Any:
    values: dict[str, Any] = {
        "request_id": request_id,
        "tenant": tenant,
        "model": "fast",
        "deployment": "fast/sim-fast",
        "upstream_model": "sim-fast",
        "prompt_tokens": 1_200,
        "completion_tokens": 340,
        "cached_tokens": 1_024,
        "cost_usd": 0.000_281_4,
        "estimated": False,
        "latency_s": 0.8125,
        "created": created,
    }
    values.update(fields)
    return LedgerEntry(**values)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(str(tmp_path / "state" / "areion.db"))
    yield store
    await store.aclose()


async def test_is_a_store(store: SQLiteStore) -> None:
    assert isinstance(store, Store)


async def test_entry_round_trips_every_field(store: SQLiteStore) -> None:
    entry = _entry("req-1", estimated=True, created=1_732_000_000.123456)
    await store.append_ledger([entry])
    assert await store.ledger() == [entry]


async def test_creates_the_parent_folder(tmp_path: Path, store: SQLiteStore) -> None:
    await store.append_ledger([_entry("r")])
    assert (tmp_path / "state" / "areion.db").is_file()


async def test_newest_first_and_limit(store: SQLiteStore) -> None:
    await store.append_ledger([_entry("old", created=100.0), _entry("new", created=300.0)])
    await store.append_ledger([_entry("mid", created=200.0)])
    assert [e.request_id for e in await store.ledger()] == ["new", "mid", "old"]
    assert [e.request_id for e in await store.ledger(limit=2)] == ["new", "mid"]


async def test_filter_by_tenant_and_request(store: SQLiteStore) -> None:
    await store.append_ledger(
        [
            _entry("r1", tenant="team-a", created=1.0),
            _entry("r2", tenant="team-b", created=2.0),
            _entry("r3", tenant="team-a", created=3.0),
            # the same request id under another tenant: the two filters combine with AND
            _entry("r1", tenant="team-b", created=4.0, deployment="fast/sim-fast#2"),
        ]
    )
    team_a = await store.ledger(tenant="team-a")
    assert [(e.request_id, e.tenant) for e in team_a] == [("r3", "team-a"), ("r1", "team-a")]
    r1 = await store.ledger(request_id="r1")
    assert [e.deployment for e in r1] == ["fast/sim-fast#2", "fast/sim-fast"]
    both = await store.ledger(tenant="team-b", request_id="r1")
    assert [(e.request_id, e.tenant, e.created) for e in both] == [("r1", "team-b", 4.0)]
    assert await store.ledger(tenant="nobody") == []


async def test_filter_values_are_not_sql(store: SQLiteStore) -> None:
    await store.append_ledger([_entry("r1")])
    assert await store.ledger(tenant="x' OR '1'='1") == []


async def test_data_survives_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "areion.db")
    first = SQLiteStore(path)
    await first.append_ledger([_entry(f"r{i}", created=float(i)) for i in range(5)])
    await first.aclose()

    second = SQLiteStore(path)
    try:
        assert len(await second.ledger()) == 5
    finally:
        await second.aclose()
    # and another program can read it
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM ledger").fetchone() == (5,)


async def test_a_batch_lands_whole_or_not_at_all(store: SQLiteStore) -> None:
    good = _entry("good")
    bad = _entry("bad", tenant=None)  # type: ignore[arg-type]  # NOT NULL, after a valid row
    with pytest.raises(sqlite3.IntegrityError):
        await store.append_ledger([good, bad])
    assert await store.ledger() == []
    await store.append_ledger([good])  # the store is still usable
    assert await store.ledger() == [good]


async def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "a.db"))
    await store.append_ledger([_entry("r")])
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await store.ledger()


async def test_memory_store() -> None:
    store = open_store("sqlite:///:memory:")
    try:
        await store.append_ledger([_entry("r")])
        assert [e.request_id for e in await store.ledger()] == ["r"]
    finally:
        await store.aclose()


def test_sqlite_urls() -> None:
    assert sqlite_path("sqlite:///areion.db") == "areion.db"
    assert sqlite_path("sqlite:////var/lib/areion.db") == "/var/lib/areion.db"
    assert sqlite_path("sqlite:///") == ":memory:"
    with pytest.raises(ConfigError, match="sqlite:///"):
        sqlite_path("sqlite://areion.db")


def test_unsupported_store_url() -> None:
    with pytest.raises(ConfigError, match="redis://localhost"):
        open_store("redis://localhost")


async def test_a_ledger_from_an_older_version_gains_the_new_columns(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE ledger (request_id TEXT NOT NULL, tenant TEXT NOT NULL, model TEXT NOT NULL,"
        " deployment TEXT NOT NULL, upstream_model TEXT NOT NULL, prompt_tokens INTEGER NOT NULL,"
        " completion_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL,"
        " cost_usd REAL NOT NULL, estimated INTEGER NOT NULL, latency_s REAL NOT NULL,"
        " created REAL NOT NULL)"
    )
    old.execute("INSERT INTO ledger VALUES ('old', 't', 'm', 'd', 'u', 1, 2, 0, 0.5, 0, 0.1, 1.0)")
    old.commit()
    old.close()
    store = SQLiteStore(str(path))
    try:
        new = _entry("new", cache="exact", saved_usd=0.25, client_request_id="theirs")
        await store.append_ledger([new])
        rows = {e.request_id: e for e in await store.ledger()}
    finally:
        await store.aclose()
    assert rows["old"].cost_usd == 0.5 and rows["old"].cache == ""
    assert rows["old"].client_request_id == ""
    assert rows["new"].cache == "exact" and rows["new"].saved_usd == 0.25
    assert rows["new"].client_request_id == "theirs"


async def test_cache_entries_are_numbered_followed_and_dropped_per_tenant(tmp_path: Path) -> None:
    from areion.store.records import CacheEntryRecord

    store = SQLiteStore(str(tmp_path / "areion.db"))

    def entry(tenant: str, text: str, *, expires: float = 1e12) -> CacheEntryRecord:
        return CacheEntryRecord(
            tier="semantic", tenant=tenant, partition="p", model="fast", text=text,
            vector=b"\x00\x00\x80?", payload=b"{}", created=100.0, expires=expires,
        )  # fmt: skip

    try:
        first = await store.add_cache_entry(entry("a", "one"))
        second = await store.add_cache_entry(entry("b", "two"))
        await store.add_cache_entry(entry("a", "gone", expires=1.0))  # already expired
        assert second > first
        assert [e.text for e in await store.cache_entries("semantic")] == ["one", "two"]
        assert [e.id for e in await store.cache_entries("semantic", after=first)] == [second]
        assert await store.cache_entries("plan") == []
        await store.set_cache_threshold("semantic", first, 0.9)
        assert (await store.cache_entries("semantic"))[0].threshold == 0.9
        assert await store.drop_cache_entries("semantic", "b", model="other") == []
        assert await store.drop_cache_entries("semantic", "b") == [second]
        assert [e.tenant for e in await store.cache_entries("semantic")] == ["a"]
    finally:
        await store.aclose()


def _rows(path: Path, sql: str) -> list[Any]:
    with sqlite3.connect(path) as db:
        return sorted(db.execute(sql).fetchall(), key=repr)


async def test_ledger_rows_land_alike_alone_and_in_a_batch_with_other_writes(
    tmp_path: Path,
) -> None:
    """A billed call's rows (bound as parameters) and the same rows in a batch with other
    writes (which goes as JSON, and replays write by write when one fails) make the same
    ledger rows and rollups."""
    entries = [
        _entry("a", tags=("x", "é"), key_label="k", route="r", end_user="u", created=7_200.5),
        _entry("b", cost_usd=0, latency_s=3, estimated=True, created=90_000.0),
    ]
    alone = SQLiteStore(str(tmp_path / "alone.db"))
    await alone.append_ledger(entries)
    await alone.aclose()

    mixed = SQLiteStore(str(tmp_path / "mixed.db"))
    writer = mixed._writer  # its batch handled here, on the test's thread
    loop = asyncio.get_running_loop()
    rows = [_ledger_tuple(e) for e in entries]
    turn = orjson.dumps(["t", "s", 0, "user", "hi", 1])
    bad = orjson.dumps(["t", "s", 0, "user", "again", 1])  # the same seq: fails
    jobs = [
        Job(loop, loop.create_future(), parts=[(LEDGER_ROWS, rows[:1])]),
        Job(loop, loop.create_future(), parts=[(TURNS, turn)]),
        Job(loop, loop.create_future(), parts=[(LEDGER_ROWS, rows[1:])]),
        Job(loop, loop.create_future(), parts=[(TURNS, bad)]),
    ]
    writer._handle(jobs)
    assert [job.error is None for job in jobs] == [True, True, True, False]
    await mixed.aclose()

    for sql in ("SELECT * FROM ledger", "SELECT * FROM spend_rollup"):
        assert _rows(tmp_path / "alone.db", sql) == _rows(tmp_path / "mixed.db", sql)
    assert len(_rows(tmp_path / "alone.db", "SELECT * FROM spend_rollup")) == 4


async def test_closings_land_alike_alone_and_in_a_batch_with_other_writes(tmp_path: Path) -> None:
    """Streams' closings (bound as parameters) and the same closings in a batch with
    other writes (which goes as JSON) give open rows the same real figures and trade
    the same amounts in the rollups: one row opened and closed in one write, one closed
    in a later write (into another hour), one never closed, and closings that find no
    open row (another tenant's, an unknown request, a row closed already)."""
    opened = [
        _entry(name, open=True, estimated=True, cost_usd=0.5, latency_s=0.0, created=100.0)
        for name in ("s1", "s2", "s3")
    ]
    closings = [
        _entry("s1", completion_tokens=7, cost_usd=0.01, latency_s=0.4, created=100.4),
        _entry("s2", completion_tokens=9, cost_usd=0.02, latency_s=3.0, created=3_700.0),
        _entry("s2", tenant="team-b", cost_usd=1.0, created=3_700.0),
        _entry("nobody", cost_usd=1.0, created=3_700.0),
    ]
    again = _entry("s1", cost_usd=1.0, created=9_000.0)

    alone = SQLiteStore(str(tmp_path / "alone.db"))
    await alone.append_ledger(opened, closing=closings[:1])
    await alone.append_ledger([], closing=closings[1:])
    await alone.append_ledger([], closing=[again])
    await alone.aclose()

    mixed = SQLiteStore(str(tmp_path / "mixed.db"))
    writer = mixed._writer  # its batches handled here, on the test's thread
    loop = asyncio.get_running_loop()

    def job(*parts: Any) -> Job:
        return Job(loop, loop.create_future(), parts=list(parts))

    def rows(entries: list[LedgerEntry]) -> list[Any]:
        return [_ledger_tuple(e) for e in entries]

    def turn(seq: int) -> Job:
        return job((TURNS, orjson.dumps(["t", "s", seq, "user", "hi", 1])))

    batches = [
        [job((LEDGER_ROWS, rows(opened)), (LEDGER_CLOSINGS, rows(closings[:1]))), turn(0)],
        [turn(1), job((LEDGER_CLOSINGS, rows(closings[1:])))],
        [job((LEDGER_CLOSINGS, rows([again]))), turn(2)],
    ]
    for batch in batches:
        writer._handle(batch)
        assert [j.error for j in batch] == [None, None]
    await mixed.aclose()

    for sql in ("SELECT * FROM ledger", "SELECT * FROM spend_rollup"):
        assert _rows(tmp_path / "alone.db", sql) == _rows(tmp_path / "mixed.db", sql)
    ledger = {row[0]: row for row in _rows(tmp_path / "alone.db", "SELECT * FROM ledger")}
    assert ledger["s1"][8] == 0.01 and ledger["s1"][15] == 0  # closed once, not again
    assert ledger["s2"][11] == 3_700.0 and ledger["s3"][15] == 1
    assert "nobody" not in ledger
    (hours,) = _rows(
        tmp_path / "alone.db",
        "SELECT group_concat(period_start || ':' || calls || ':' || round(cost_usd, 4)) "
        "FROM (SELECT * FROM spend_rollup WHERE period = 3600 ORDER BY period_start)",
    )
    assert hours == ("0:2:0.51,3600:1:0.02",)

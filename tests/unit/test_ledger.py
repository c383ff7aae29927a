"""The buffered spend ledger, writing to a real SQLite file."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from areion.store import SQLiteStore
from areion.telemetry import Ledger
from areion.telemetry.ledger import attribution
from areion.types import LedgerEntry


def _entry(number: int, tenant: str = "team-a") -> LedgerEntry:
    return LedgerEntry(
        request_id=f"req-{number}",
        tenant=tenant,
        model="fast",
        deployment="fast/sim-fast",
        upstream_model="sim-fast",
        prompt_tokens=100 + number,
        completion_tokens=20,
        cached_tokens=0,
        cost_usd=0.000_027,
        estimated=False,
        latency_s=0.05,
        created=1_000.0 + number,
    )


class FlakyStore(SQLiteStore):
    """A real SQLite store whose next `failures` writes fail, as a locked disk would."""

    def __init__(self, path: str, *, failures: int) -> None:
        super().__init__(path)
        self.failures = failures
        self.writes: list[int] = []

    async def append_ledger(
        self, entries: Sequence[LedgerEntry], *, closing: Sequence[LedgerEntry] = ()
    ) -> None:
        self.writes.append(len(entries) + len(closing))
        if self.failures:
            self.failures -= 1
            raise OSError("disk I/O error")
        await super().append_ledger(entries, closing=closing)


async def _count(path: Path) -> int:
    store = SQLiteStore(str(path))
    try:
        return len(await store.ledger(limit=1_000_000))
    finally:
        await store.aclose()


async def test_close_writes_everything_pending(tmp_path: Path) -> None:
    path = tmp_path / "areion.db"
    store = SQLiteStore(str(path))
    # a long interval: nothing is written by the timer during the test
    ledger = Ledger(store, interval=60.0, batch=512)
    for number in range(1_000):
        ledger.record(_entry(number))
    await ledger.aclose()
    await store.aclose()

    assert await _count(path) == 1_000
    reopened = SQLiteStore(str(path))
    try:
        newest = await reopened.ledger(limit=1)
        assert newest == [_entry(999)]
    finally:
        await reopened.aclose()


async def test_record_does_not_write_on_the_call_path(tmp_path: Path) -> None:
    store = FlakyStore(str(tmp_path / "areion.db"), failures=0)
    ledger = Ledger(store, interval=60.0, batch=512)
    for number in range(10):
        ledger.record(_entry(number))
    assert store.writes == []
    await ledger.aclose()
    assert store.writes == [10]  # one transaction for the whole buffer
    await store.aclose()


async def test_writes_in_batches_in_the_background(tmp_path: Path) -> None:
    store = FlakyStore(str(tmp_path / "areion.db"), failures=0)
    ledger = Ledger(store, interval=60.0, batch=100)
    try:
        for number in range(250):
            ledger.record(_entry(number))
            if number % 50 == 49:
                await asyncio.sleep(0)  # let the writer run, as a live server would
        for _ in range(2000):  # up to 10 s on a busy machine; done once the rows land
            if len(await store.ledger(limit=10_000)) >= 200:
                break
            await asyncio.sleep(0.005)
        # full batches are written without waiting for the 60 s interval
        assert len(await store.ledger(limit=10_000)) >= 200
    finally:
        await ledger.aclose()
    assert len(await store.ledger(limit=10_000)) == 250
    await store.aclose()


async def test_timer_writes_without_a_close(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "areion.db"))
    ledger = Ledger(store, interval=0.01)
    ledger.record(_entry(1, tenant="team-b"))
    try:
        for _ in range(2000):
            if await store.ledger(tenant="team-b"):
                break
            await asyncio.sleep(0.005)
        assert [e.request_id for e in await store.ledger(tenant="team-b")] == ["req-1"]
    finally:
        await ledger.aclose()
        await store.aclose()


async def test_failed_write_keeps_entries_for_a_retry(tmp_path: Path) -> None:
    store = FlakyStore(str(tmp_path / "areion.db"), failures=1)
    ledger = Ledger(store, interval=60.0)
    for number in range(5):
        ledger.record(_entry(number))

    await ledger.flush()  # fails
    assert await store.ledger() == []

    ledger.record(_entry(5))  # recorded while the store was down
    await ledger.flush()  # succeeds
    written = await store.ledger()
    assert sorted(e.request_id for e in written) == [f"req-{n}" for n in range(6)]
    await ledger.aclose()
    assert len(await store.ledger()) == 6  # nothing written twice
    await store.aclose()


async def test_background_failure_is_retried_before_close(tmp_path: Path) -> None:
    path = tmp_path / "areion.db"
    store = FlakyStore(str(path), failures=2)
    ledger = Ledger(store, interval=0.005)
    for number in range(50):
        ledger.record(_entry(number))
    for _ in range(2000):
        if len(store.writes) >= 3:
            break
        await asyncio.sleep(0.005)
    assert len(store.writes) >= 3  # failed twice, then retried on its own
    await ledger.aclose()
    await store.aclose()
    assert await _count(path) == 50


def _read(path: Path) -> list[tuple[str, float, int, int]]:
    """The ledger as another process sees it: its own connection, nothing flushed."""
    import sqlite3

    with sqlite3.connect(path) as connection:
        return connection.execute(
            "SELECT request_id, cost_usd, completion_tokens, open FROM ledger ORDER BY rowid"
        ).fetchall()


async def test_write_returns_once_the_row_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "areion.db"
    store = SQLiteStore(str(path))
    ledger = Ledger(store, interval=60.0)  # no timer: only write() can have written it
    try:
        await ledger.write(_entry(1))
        assert _read(path) == [("req-1", 0.000_027, 20, 0)]
    finally:
        await ledger.aclose()
        await store.aclose()


async def test_an_open_row_is_closed_with_the_real_figures(tmp_path: Path) -> None:
    path = tmp_path / "areion.db"
    store = SQLiteStore(str(path))
    ledger = Ledger(store, interval=60.0)
    try:
        bound = dataclasses.replace(_entry(1), cost_usd=0.01, completion_tokens=1024, open=True)
        await ledger.write(bound)
        assert _read(path) == [("req-1", 0.01, 1024, 1)]  # what a crash would leave
        ledger.close(_entry(1))
        await ledger.flush()
        assert _read(path) == [("req-1", 0.000_027, 20, 0)]
        # A stream that opened and closed within one batch is closed too.
        ledger.record(dataclasses.replace(_entry(2), open=True))
        ledger.close(_entry(2))
        await ledger.flush()
        assert _read(path)[1] == ("req-2", 0.000_027, 20, 0)
    finally:
        await ledger.aclose()
        await store.aclose()


def test_pending_rows_are_written_without_a_running_loop(tmp_path: Path) -> None:
    path = tmp_path / "areion.db"
    store = SQLiteStore(str(path))
    ledger = Ledger(store, interval=60.0)

    async def record() -> None:
        ledger.record(_entry(1))

    asyncio.run(record())  # its loop is gone, and the row with it unless flushed
    ledger.flush_blocking()
    assert _read(path) == [("req-1", 0.000_027, 20, 0)]


_ATTRIBUTION = {
    "key": ("key_label", "ci-key"),
    "route": ("route", "auto"),
    "route_reason": ("route_reason", "rule:short"),
    "run_id": ("run_id", "run_1"),
    "agent": ("agent", "triage"),
    "session": ("session", "s-1"),
    "user": ("end_user", "u-1"),
    "tags": ("tags", ("a", "b")),
    "variant": ("variant", "exp:b"),
}


def test_each_attribution_reaches_the_row_and_a_plain_call_keeps_the_defaults() -> None:
    """Every annotation `attribution` reads lands in its field, alone or with others; a
    call with none of them (only other stages' notes) books the row's defaults."""
    plain = _entry(1)
    assert attribution({"hold": object(), "priority": 1}, None) == {}
    for annotation, (field, value) in _ATTRIBUTION.items():
        row = dataclasses.replace(plain, **attribution({"hold": None, annotation: value}, None))
        assert getattr(row, field) == value, annotation
        others = {name: getattr(plain, name) for name, _ in _ATTRIBUTION.values() if name != field}
        assert {name: getattr(row, name) for name in others} == others
    row = dataclasses.replace(plain, **attribution({}, "body-user"))
    assert row.end_user == "body-user"
    both = attribution({"user": "header-user"}, "body-user")
    assert both["end_user"] == "header-user"

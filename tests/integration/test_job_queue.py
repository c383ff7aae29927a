"""The job queue's contract, on SQLite and on PostgreSQL: leases with fencing, each line
ended (and booked) exactly once, whichever worker ends it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from areion.jobs import BatchRecord, FileRecord, JobQueue, LineRecord, open_queue
from areion.store import SQLiteStore, Store
from areion.types import LedgerEntry
from tests.pg import fresh_schema
from tests.support import ManualClock


@pytest.fixture(params=["sqlite", "postgres"])
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Store, Store, ManualClock]]:
    """Two stores over one database (two workers' processes), on one manual clock."""
    clock = ManualClock(1000.0)
    if request.param == "sqlite":
        pair: list[Store] = [SQLiteStore(str(tmp_path / "a.db"), clock=clock) for _ in range(2)]
        yield pair[0], pair[1], clock
        for store in pair:
            await store.aclose()
        return
    from areion.store.postgres import PostgresStore

    async with fresh_schema() as url:
        pair = [PostgresStore(url, clock=clock) for _ in range(2)]
        yield pair[0], pair[1], clock
        for store in pair:
            await store.aclose()


def entry(request_id: str, tenant: str = "acme") -> LedgerEntry:
    return LedgerEntry(
        request_id=request_id, tenant=tenant, model="fast", deployment="fast-0",
        upstream_model="m", prompt_tokens=3, completion_tokens=4, cached_tokens=0,
        cost_usd=0.5, estimated=False, latency_s=0.1, created=1000.0,
    )  # fmt: skip


async def a_batch(queue: JobQueue, batch_id: str = "batch_1", lines: int = 3) -> None:
    await queue.put_file(
        FileRecord(
            file_id="file-in", tenant="acme", purpose="batch", filename="in.jsonl", bytes=2,
            created=1000.0, lines=lines,
        ),
        b"{}",
    )  # fmt: skip
    await queue.create_batch(
        BatchRecord(
            batch_id=batch_id, tenant="acme", endpoint="/v1/chat/completions",
            input_file_id="file-in", total=lines, created=1000.0, expires_at=90_000.0,
        ),
        [
            LineRecord(batch_id=batch_id, index=i, custom_id=f"c{i}", body={"i": i})
            for i in range(lines)
        ],
    )  # fmt: skip


def ended(line: LineRecord, status: str = "done") -> LineRecord:
    line.status = status  # type: ignore[assignment]
    line.output = f'{{"custom_id": "{line.custom_id}"}}'
    return line


async def test_a_line_is_ended_and_booked_once_and_a_taken_over_worker_is_fenced(
    stores: tuple[Store, Store, ManualClock],
) -> None:
    store_a, store_b, clock = stores
    a, b = open_queue(store_a), open_queue(store_b)
    await a_batch(a)

    held = await a.claim("worker-a", ttl=10)
    assert held is not None and held.status == "in_progress" and held.owner == "worker-a"
    assert await b.claim("worker-b", ttl=10) is None  # the lease is live
    lines = await a.pending_lines("batch_1")
    assert [line.custom_id for line in lines] == ["c0", "c1", "c2"]
    assert await a.end_line(ended(lines[0]), held.fence, [entry("r0")])
    assert not await a.end_line(ended(lines[0]), held.fence, [entry("r0-again")])

    clock.advance(11)  # worker-a died: its lease ran out
    taken = await b.claim("worker-b", ttl=10)
    assert taken is not None and taken.fence > held.fence and taken.owner == "worker-b"
    assert await a.renew("batch_1", held.fence, ttl=10) is None  # a learns it lost the batch
    # worker-a's late answer is refused, whole: no answer stored, no row booked.
    assert not await a.end_line(ended(lines[1]), held.fence, [entry("r1-late")])
    rest = await b.pending_lines("batch_1")
    assert [line.custom_id for line in rest] == ["c1", "c2"]
    assert await b.end_line(ended(rest[0]), taken.fence, [entry("r1")])
    assert await b.end_line(ended(rest[1], "failed"), taken.fence)
    assert await a.finish("batch_1", held.fence, "completed") is None
    done = await b.finish("batch_1", taken.fence, "completed")
    assert done is not None and done.status == "completed" and done.completed_at == clock.now
    assert (done.total, done.completed, done.failed) == (3, 2, 1)

    assert sorted(e.request_id for e in await store_a.ledger()) == ["r0", "r1"]
    output = await b.file_content("acme", "file-batch_1-output")
    assert output == b'{"custom_id": "c0"}\n{"custom_id": "c1"}\n'
    errors = await b.get_file("acme", "file-batch_1-errors")
    assert errors is not None and errors.lines == 1 and errors.purpose == "batch_error"
    assert await b.file_content("globex", "file-batch_1-output") is None
    listed = await b.list_files("acme")
    assert {f.file_id for f in listed} == {"file-in", "file-batch_1-output", "file-batch_1-errors"}
    assert [f.file_id for f in await b.list_files("acme", purpose="batch")] == ["file-in"]
    assert await b.list_files("globex") == []
    assert await b.get_batch("globex", "batch_1") is None


async def test_two_workers_claiming_at_once_take_a_batch_once(
    stores: tuple[Store, Store, ManualClock],
) -> None:
    store_a, store_b, _ = stores
    a, b = open_queue(store_a), open_queue(store_b)
    await a_batch(a)
    claims = await asyncio.gather(*(q.claim(f"w{i}", ttl=10) for i, q in enumerate([a, b] * 3)))
    assert len([c for c in claims if c is not None]) == 1


async def test_a_cancelled_batch_waiting_for_its_window_is_due_at_once(
    stores: tuple[Store, Store, ManualClock],
) -> None:
    store_a, _, clock = stores
    queue = open_queue(store_a)
    await a_batch(queue)
    await queue.create_batch(
        BatchRecord(
            batch_id="batch_later", tenant="acme", endpoint="/v1/chat/completions",
            input_file_id="file-in", created=1001.0, expires_at=90_000.0,
            not_before=clock.now + 3600,
        ),
        [],
    )  # fmt: skip
    first = await queue.claim("w", ttl=10)
    assert first is not None and first.batch_id == "batch_1"
    assert await queue.claim("w", ttl=10) is None  # batch_later waits for its slot
    assert await queue.cancel_batch("globex", "batch_later") is None
    cancelling = await queue.cancel_batch("acme", "batch_later")
    assert cancelling is not None and cancelling.status == "cancelling"
    claimed = await queue.claim("w", ttl=10)
    assert claimed is not None and claimed.batch_id == "batch_later"
    listed = await queue.list_batches("acme")
    assert [b.batch_id for b in listed] == ["batch_later", "batch_1"]
    assert [b.batch_id for b in await queue.list_batches("acme", after="batch_later")] == [
        "batch_1"
    ]

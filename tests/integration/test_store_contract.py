"""One contract, two stores: every behaviour of the `Store` protocol, checked on SQLite
(a file) and on PostgreSQL (a fresh schema per test, dropped after)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from areion.errors import FencedError
from areion.store import SQLiteStore, Store, sqlite_writer
from areion.store.records import (
    ApiKeyRecord,
    CacheEntryRecord,
    Checkpoint,
    ExperimentState,
    OutcomeRecord,
    ResponseRecord,
    RunRecord,
    SessionSummary,
    SessionTurn,
    ToolCallRecord,
)
from areion.telemetry.ledger import Ledger
from areion.types import LedgerEntry
from tests.pg import fresh_schema
from tests.support import ManualClock


class Backend:
    """Where a test's stores keep their state: each store opened here is another
    process (replica) pointing at the same database."""

    def __init__(self, kind: str, location: str) -> None:
        self.kind = kind
        self.location = location
        self.stores: list[Store] = []

    def open(self, *, clock: Callable[[], float] | None = None) -> Store:
        store: Store
        if self.kind == "sqlite":
            store = SQLiteStore(self.location, **({"clock": clock} if clock else {}))
        else:
            from areion.store.postgres import PostgresStore

            store = PostgresStore(self.location, **({"clock": clock} if clock else {}))
        self.stores.append(store)
        return store


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        found = Backend("sqlite", str(tmp_path / "areion.db"))
        yield found
        for store in found.stores:
            await store.aclose()
        return
    async with fresh_schema() as url:
        found = Backend("postgres", url)
        try:
            yield found
        finally:
            for store in found.stores:
                await store.aclose()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


@pytest.fixture
def batches(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The number of writes in each transaction the store commits."""
    sizes: list[int] = []
    if backend.kind == "sqlite":
        commit = sqlite_writer.Writer._commit

        def counting(self: sqlite_writer.Writer, writes: list[Any]) -> None:
            sizes.append(len(writes))
            commit(self, writes)

        monkeypatch.setattr(sqlite_writer.Writer, "_commit", counting)
    else:
        from areion.store import postgres_batch

        apply = postgres_batch.Batcher._apply

        async def counting_apply(self: postgres_batch.Batcher, writes: Any) -> None:
            sizes.append(len(writes))
            await apply(self, writes)

        monkeypatch.setattr(postgres_batch.Batcher, "_apply", counting_apply)
    yield sizes


# -- records ---------------------------------------------------------------------------


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


def _run(run_id: str = "run-1", tenant: str = "team-a", **fields: Any) -> RunRecord:
    values: dict[str, Any] = {
        "run_id": run_id,
        "tenant": tenant,
        "agent": "analyst",
        "session": "s-1",
        "input": "Summarize the report",
        "message_count": 2,
        "limits": {"max_steps": 10},
        "created": 1_732_000_000.25,
        "updated": 1_732_000_000.25,
    }
    values.update(fields)
    return RunRecord(**values)


_FIRST = [
    {"role": "system", "content": "You are careful."},
    {"role": "user", "content": 'Summarize the report: naïve 東京 "quoted" \\ \n'},
]


def _call(run_id: str = "run-1", call_id: str = "c1", **fields: Any) -> ToolCallRecord:
    values: dict[str, Any] = {
        "tenant": "team-a",
        "run_id": run_id,
        "call_id": call_id,
        "name": "search",
        "arguments": '{"q": "revenue"}',
        "status": "started",
        "idempotency_key": f"team-a:{run_id}:{call_id}",
        "updated": 1_732_000_001.5,
    }
    values.update(fields)
    return ToolCallRecord(**values)


def _step(run: RunRecord, step: int, *, events: int = 2, fence: int = 0) -> Checkpoint:
    """The delta of one step: two messages, `events` events and a tool call."""
    call_id = f"call-{step}"
    messages: list[dict[str, Any]] = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "search", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": f"result {step}"},
    ]
    new = replace(
        run,
        steps=run.steps + 1,
        message_count=run.message_count + len(messages),
        prompt_tokens=run.prompt_tokens + 100,
        cost_usd=run.cost_usd + 0.000_123_4,
        updated=run.updated + 1.0,
    )
    return Checkpoint(
        run=new,
        messages=messages,
        events=[{"type": "step", "step": step, "i": i} for i in range(events)],
        tool_calls=[
            _call(run.run_id, call_id, tenant=run.tenant, status="done", result=f"result {step}")
        ],
        fence=fence,
    )


def _key(name: str, key_id: str, *, tenant: str = "team-a", created: float = 1.0) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=key_id,
        digest=hashlib.sha256(key_id.encode()).digest(),
        tenant=tenant,
        name=name,
        rpm=60,
        tpm=None,
        priority="batch",
        models=("fast", "strong"),
        created=created,
    )


def _cache_entry(tenant: str, text: str, **fields: Any) -> CacheEntryRecord:
    values: dict[str, Any] = {
        "tier": "semantic",
        "tenant": tenant,
        "partition": "p",
        "model": "fast",
        "text": text,
        "vector": b"\x00\x00\x80?\x00\x00\x00@",
        "payload": b'{"answer": "\\u0000 bytes \xff"}',
        "created": 100.0,
        "expires": 1e12,
    }
    values.update(fields)
    return CacheEntryRecord(**values)


# -- the ledger ----------------------------------------------------------------------


async def test_is_a_store(store: Store) -> None:
    assert isinstance(store, Store)


async def test_ledger_rows_round_trip_every_field(store: Store) -> None:
    entry = _entry(
        "req-1", estimated=True, created=1_732_000_000.123456, cache="semantic",
        saved_usd=0.25, saved_s=1.5, client_request_id="theirs-1",
    )  # fmt: skip
    await store.append_ledger([entry])
    assert await store.ledger() == [entry]


async def test_ledger_newest_first_filtered_and_limited(store: Store) -> None:
    await store.append_ledger(
        [
            _entry("r1", tenant="team-a", created=1.0),
            _entry("r2", tenant="team-b", created=2.0),
            _entry("r3", tenant="team-a", created=3.0),
            _entry("r1", tenant="team-b", created=4.0, deployment="fast/sim-fast#2"),
        ]
    )
    assert [e.created for e in await store.ledger()] == [4.0, 3.0, 2.0, 1.0]
    assert [e.created for e in await store.ledger(limit=2)] == [4.0, 3.0]
    assert [e.request_id for e in await store.ledger(tenant="team-a")] == ["r3", "r1"]
    assert [e.tenant for e in await store.ledger(request_id="r1")] == ["team-b", "team-a"]
    both = await store.ledger(tenant="team-b", request_id="r1")
    assert [(e.request_id, e.created) for e in both] == [("r1", 4.0)]
    assert await store.ledger(tenant="x' OR '1'='1") == []


async def test_spend_by_tenant_since(store: Store) -> None:
    await store.append_ledger(
        [
            _entry("old", tenant="a", created=10.0, cost_usd=5.0),
            _entry("r1", tenant="a", created=20.0, cost_usd=0.25),
            _entry("r2", tenant="a", created=30.0, cost_usd=0.5),
            _entry("r3", tenant="b", created=20.0, cost_usd=1.0),
        ]
    )
    assert await store.spend_by_tenant(since=20.0) == {"a": 0.75, "b": 1.0}
    assert await store.spend_by_tenant(since=31.0) == {}


async def test_open_rows_are_closed_with_the_real_figures(store: Store) -> None:
    bound = _entry("stream", open=True, cost_usd=0.5, completion_tokens=4_096)
    other = _entry("stream", open=True, deployment="fast/sim-fast#2", cost_usd=0.5)
    await store.append_ledger([bound, other])
    assert [e.open for e in await store.ledger(request_id="stream")] == [True, True]

    real = replace(bound, open=False, cost_usd=0.01, completion_tokens=80, created=2.0)
    await store.append_ledger([], closing=[real])
    rows = {e.deployment: e for e in await store.ledger(request_id="stream")}
    assert rows["fast/sim-fast"] == real  # every figure replaced, no longer open
    assert rows["fast/sim-fast#2"].open and rows["fast/sim-fast#2"].cost_usd == 0.5
    # Closing again touches nothing: only open rows are closed. Nor does another
    # tenant's closing of the same request id.
    await store.append_ledger([], closing=[replace(real, cost_usd=9.0)])
    await store.append_ledger([], closing=[replace(other, tenant="team-b", cost_usd=0.0)])
    rows = {e.deployment: e for e in await store.ledger(request_id="stream")}
    assert rows["fast/sim-fast"] == real
    assert rows["fast/sim-fast#2"].open and rows["fast/sim-fast#2"].cost_usd == 0.5


async def test_a_row_opened_and_closed_in_one_write_ends_closed(store: Store) -> None:
    opened = _entry("s", open=True, cost_usd=1.0)
    closed = replace(opened, open=False, cost_usd=0.1)
    await store.append_ledger([opened], closing=[closed])
    assert await store.ledger() == [closed]


async def test_a_ledger_write_lands_whole_or_not_at_all(store: Store) -> None:
    good = _entry("good")
    bad = _entry("bad", tenant=None)  # NOT NULL, after a valid row
    with pytest.raises(Exception):  # noqa: B017  # the database's own error
        await store.append_ledger([good, bad])
    assert await store.ledger() == []
    await store.append_ledger([good])  # the store is still usable
    assert await store.ledger() == [good]


async def test_200_concurrent_billed_rows_share_commits(store: Store, batches: list[int]) -> None:
    ledger = Ledger(store)
    entries = [_entry(f"r{i}", created=float(i)) for i in range(200)]
    # Each call awaits its own row, as Accounting does before an answer leaves.
    await asyncio.gather(*(ledger.write(entry) for entry in entries))
    assert ledger.pending == 0
    rows = await store.ledger(limit=1000)
    assert sorted(e.request_id for e in rows) == sorted(e.request_id for e in entries)
    assert sum(batches) == 200
    assert len(batches) < 200  # group commit: fewer transactions than writes
    await ledger.aclose()


async def test_a_bad_write_does_not_fail_the_others_of_its_batch(store: Store) -> None:
    await store.create_run(_run(), _FIRST)
    await store.checkpoint(_step(_run(), 1, fence=5))
    stale = _step(_run(), 9, fence=4)  # fenced: another replica owns the run
    results = await asyncio.gather(
        *(store.append_ledger([_entry(f"r{i}")]) for i in range(20)),
        store.checkpoint(stale),
        *(store.append_ledger([_entry(f"s{i}")]) for i in range(20)),
        return_exceptions=True,
    )
    assert [type(r) for r in results if r is not None] == [FencedError]
    assert len(await store.ledger()) == 40


# -- runs ------------------------------------------------------------------------------


async def test_runs_round_trip_and_deltas_append(store: Store) -> None:
    run = _run()
    await store.create_run(run, _FIRST)
    snapshot = await store.load_run("run-1", tenant="team-a")
    assert snapshot is not None
    assert snapshot.run == run and snapshot.messages == _FIRST and snapshot.tool_calls == {}

    expected = list(_FIRST)
    for step in range(1, 6):
        checkpoint = _step(run, step)
        await store.checkpoint(checkpoint)
        run = checkpoint.run
        expected += checkpoint.messages
    snapshot = await store.load_run("run-1")
    assert snapshot is not None
    assert snapshot.run == run
    assert snapshot.messages == expected
    assert sorted(snapshot.tool_calls) == [f"call-{s}" for s in range(1, 6)]
    assert snapshot.tool_calls["call-3"] == _call(
        "run-1", "call-3", status="done", result="result 3"
    )
    events = await store.run_events("run-1")
    assert [seq for seq, _ in events] == list(range(10))
    assert [(e["step"], e["i"]) for _, e in events] == [(s, i) for s in range(1, 6) for i in (0, 1)]
    assert [seq for seq, _ in await store.run_events("run-1", after=7)] == [8, 9]


async def test_a_run_without_messages_and_an_absent_run(store: Store) -> None:
    await store.create_run(_run(message_count=0), [])
    snapshot = await store.load_run("run-1")
    assert snapshot is not None and snapshot.messages == []
    assert await store.load_run("ghost") is None
    assert await store.run_events("ghost") == []


async def test_checkpoint_replaces_the_run_row(store: Store) -> None:
    await store.create_run(_run(), _FIRST)
    paused = _run(
        status="paused", pause_reason="max_steps", steps=5, limits={"max_steps": 20},
        cost_usd=0.5, updated=1_732_000_100.0,
    )  # fmt: skip
    await store.checkpoint(Checkpoint(run=paused))
    snapshot = await store.load_run("run-1")
    assert snapshot is not None and snapshot.run == paused and snapshot.messages == _FIRST


async def test_run_ids_are_per_tenant(store: Store) -> None:
    a, b = _run(tenant="team-a"), _run(tenant="team-b", input="Another", created=2e9)
    await store.create_run(a, _FIRST)
    await store.create_run(b, [{"role": "user", "content": "Another"}])
    with pytest.raises(ValueError, match="run 'run-1' of tenant 'team-b' already exists"):
        await store.create_run(b, [])
    await store.checkpoint(_step(a, 1, events=3))
    await store.checkpoint(_step(replace(b, message_count=1), 1, events=1))

    mine = await store.load_run("run-1", tenant="team-a")
    theirs = await store.load_run("run-1", tenant="team-b")
    assert mine is not None and theirs is not None
    assert (len(mine.messages), len(theirs.messages)) == (4, 3)
    assert theirs.tool_calls["call-1"].tenant == "team-b"
    assert [s for s, _ in await store.run_events("run-1", tenant="team-b")] == [0]
    assert await store.load_run("run-1", tenant="team-c") is None
    assert await store.run_events("run-1", tenant="team-c") == []
    # An operator's read without a tenant finds the oldest run of that id.
    anyone = await store.load_run("run-1")
    assert anyone is not None and anyone.run.tenant == "team-a"
    assert len(await store.run_events("run-1")) == 3


async def test_bad_checkpoints_are_refused_and_land_nothing(store: Store) -> None:
    run = _run()
    await store.create_run(run, _FIRST)
    await store.checkpoint(_step(run, 1))
    with pytest.raises(ValueError, match="no run 'ghost'"):
        await store.checkpoint(_step(_run("ghost"), 1))
    with pytest.raises(ValueError, match="no run 'run-1' of tenant 'team-b'"):
        await store.checkpoint(_step(_run(tenant="team-b"), 1))
    with pytest.raises(ValueError, match="already stored"):
        await store.checkpoint(_step(run, 1))  # message_count is stale
    with pytest.raises(ValueError, match="message_count 1"):
        await store.checkpoint(replace(_step(run, 2), run=_run(message_count=1)))
    stray = _call("run-1", "c9", tenant="team-b")
    with pytest.raises(ValueError, match="tool call 'c9' belongs to run 'run-1' of tenant"):
        await store.checkpoint(Checkpoint(run=run, tool_calls=[stray]))
    snapshot = await store.load_run("run-1")
    assert snapshot is not None
    assert snapshot.run == _step(run, 1).run and len(snapshot.messages) == 4
    assert len(await store.run_events("run-1")) == 2
    assert await store.load_run("ghost") is None


async def test_tool_calls_are_inserted_or_replaced(store: Store) -> None:
    run = _run()
    await store.create_run(run, _FIRST)
    await store.record_tool_call(_call(status="pending_approval"))
    await store.record_tool_call(_call("run-1", "c2"))
    await store.record_tool_call(_call(status="rejected", reason="not allowed"))
    await store.checkpoint(
        Checkpoint(run=run, tool_calls=[_call("run-1", "c2", status="done", result="ok")])
    )
    snapshot = await store.load_run("run-1")
    assert snapshot is not None
    assert snapshot.tool_calls == {
        "c1": _call(status="rejected", reason="not allowed"),
        "c2": _call("run-1", "c2", status="done", result="ok"),
    }


async def test_a_replica_whose_lease_was_taken_over_is_fenced(backend: Backend) -> None:
    first, second = backend.open(), backend.open()  # two replicas, one database
    run = _run()
    await first.create_run(run, _FIRST)
    step = _step(run, 1)
    await first.checkpoint(step)  # fence 0: no lease, the run's fence is 0
    await first.checkpoint(_step(step.run, 2, fence=1))  # the first replica's lease
    taken = await second.load_run("run-1")
    assert taken is not None
    await second.checkpoint(_step(taken.run, 3, fence=2))  # a takeover: a higher token

    late = _step(taken.run, 3, fence=1)
    with pytest.raises(FencedError, match="run 'run-1' of tenant 'team-a' was taken over"):
        await first.checkpoint(late)
    with pytest.raises(FencedError):
        await first.checkpoint(Checkpoint(run=replace(taken.run, status="failed")))  # fence 0
    snapshot = await first.load_run("run-1")
    assert snapshot is not None
    assert snapshot.run.steps == 3 and snapshot.run.status == "running"  # nothing landed
    assert len(snapshot.messages) == 8
    assert len(await first.run_events("run-1")) == 6

    again = _step(snapshot.run, 4, fence=2)  # the same token again is the same owner
    await second.checkpoint(again)
    await second.checkpoint(_step(again.run, 5, fence=7))
    assert (await second.load_run("run-1")).run.steps == 5  # type: ignore[union-attr]


async def test_a_lower_fence_right_behind_a_higher_one_is_refused(store: Store) -> None:
    # Both in flight at once: in one batch or not, the later, lower one is refused.
    run = _run()
    await store.create_run(run, _FIRST)
    taken = _step(run, 1, fence=3)
    late = _step(taken.run, 2, fence=2)
    results = await asyncio.gather(
        store.checkpoint(taken), store.checkpoint(late), return_exceptions=True
    )
    assert results[0] is None and isinstance(results[1], FencedError)
    snapshot = await store.load_run("run-1")
    assert snapshot is not None and snapshot.run == taken.run


async def test_fence_zero_never_refuses_an_unfenced_run(store: Store) -> None:
    run = _run()
    await store.create_run(run, _FIRST)
    for step in range(1, 4):
        checkpoint = _step(run, step)
        await store.checkpoint(checkpoint)
        run = checkpoint.run
    assert (await store.load_run("run-1")).run.steps == 3  # type: ignore[union-attr]


async def test_stale_runs_are_running_runs_not_checkpointed_lately(store: Store) -> None:
    await store.create_run(_run("old", updated=100.0), [])
    await store.create_run(_run("older", updated=50.0), [])
    await store.create_run(_run("fresh", updated=500.0), [])
    await store.create_run(_run("paused", updated=10.0, status="paused"), [])
    await store.create_run(_run("other", tenant="team-b", updated=75.0), [])
    assert await store.stale_runs(updated_before=200.0) == [
        ("team-a", "older"),
        ("team-b", "other"),
        ("team-a", "old"),
    ]
    assert await store.stale_runs(updated_before=200.0, limit=1) == [("team-a", "older")]
    assert await store.stale_runs(updated_before=10.0) == []


# -- sessions --------------------------------------------------------------------------


def _turns(first: int, count: int, tag: str = "") -> list[SessionTurn]:
    return [
        SessionTurn(
            seq=seq, role="user" if seq % 2 == 0 else "assistant",
            content=f'{tag}turn {seq}: naïve 東京 "quoted" \\ \n', tokens=10 + seq,
        )
        for seq in range(first, first + count)
    ]  # fmt: skip


async def test_session_turns_and_summaries(store: Store) -> None:
    await store.append_turns("team-a", "s1", _turns(0, 3))
    await store.append_turns("team-a", "s1", _turns(3, 3))
    await store.append_turns("team-b", "s1", _turns(0, 1, "b: "))
    await store.append_turns("team-a", "s1", [])
    assert await store.session_turns("team-a", "s1") == _turns(0, 6)
    assert await store.session_turns("team-a", "s1", after=3) == _turns(4, 2)
    assert await store.session_turns("team-b", "s1") == _turns(0, 1, "b: ")
    assert await store.session_turns("team-a", "nope") == []
    with pytest.raises(ValueError, match="already has a turn"):
        await store.append_turns("team-a", "s1", _turns(5, 2))
    assert len(await store.session_turns("team-a", "s1")) == 6  # nothing of it landed

    later = SessionSummary(first_seq=2, last_seq=3, text="later", tokens=5)
    first = SessionSummary(first_seq=0, last_seq=1, text="first", tokens=4)
    again = SessionSummary(first_seq=2, last_seq=5, text="again", tokens=6)
    for summary in (later, first, again):
        await store.add_summary("team-a", "s1", summary)
    assert await store.session_summaries("team-a", "s1") == [first, later, again]
    assert await store.session_summaries("team-b", "s1") == []


# -- the tool cache --------------------------------------------------------------------


async def test_tool_cache_values_expire_and_are_swept(backend: Backend) -> None:
    clock = ManualClock(1_000.0)
    store = backend.open(clock=clock)
    await store.cache_put("short", b"\x00\xffvalue", ttl=10)
    await store.cache_put("long", b"y", ttl=60)
    await store.cache_put("long", b"z", ttl=60)  # replaced
    assert await store.cache_get("short") == b"\x00\xffvalue"
    assert await store.cache_get("long") == b"z"
    assert await store.cache_get("absent") is None
    clock.advance(11)
    assert await store.cache_get("short") is None
    assert await store.cache_get("long") == b"z"
    await store.cache_put("new", b"", ttl=60)  # a later put sweeps what expired
    clock.advance(-11)  # back to when "short" was fresh: it is gone, not just hidden
    assert await store.cache_get("short") is None
    assert await store.cache_get("new") == b""


# -- semantic-tier entries -------------------------------------------------------------


async def test_cache_entries_are_numbered_followed_and_dropped(backend: Backend) -> None:
    one, two = backend.open(), backend.open()  # ids are store-wide: two replicas
    first = await one.add_cache_entry(_cache_entry("a", "one", id=99))  # its id is ignored
    second = await two.add_cache_entry(_cache_entry("b", "two", model="strong"))
    third = await one.add_cache_entry(_cache_entry("a", "three", created=300.0))
    await two.add_cache_entry(_cache_entry("a", "gone", expires=1.0))  # already expired
    await one.add_cache_entry(_cache_entry("a", "a plan", tier="plan", model=""))
    assert first < second < third

    entries = await two.cache_entries("semantic")
    assert [e.text for e in entries] == ["one", "two", "three"]
    assert entries[0] == _cache_entry("a", "one", id=first)  # every field, bytes intact
    assert [e.id for e in await one.cache_entries("semantic", after=first)] == [second, third]
    assert [e.id for e in await one.cache_entries("semantic", limit=1)] == [first]
    assert [e.text for e in await one.cache_entries("plan")] == ["a plan"]

    await one.set_cache_threshold("semantic", first, 0.93)
    await one.set_cache_threshold("semantic", 10_000, 0.5)  # gone: nothing
    assert (await two.cache_entries("semantic"))[0].threshold == 0.93

    assert await one.drop_cache_entries("semantic", "b", model="fast") == []
    assert await one.drop_cache_entries("semantic", "a", created_before=200.0) == [first]
    assert await one.drop_cache_entries("semantic", "a", entry=second) == []  # b's
    assert await one.drop_cache_entries("semantic", "b", entry=second) == [second]
    assert [e.text for e in await two.cache_entries("semantic")] == ["three"]
    assert await one.drop_cache_entries("semantic", "a") == [third]
    assert [e.text for e in await two.cache_entries("plan")] == ["a plan"]


# -- API keys --------------------------------------------------------------------------


async def test_keys_are_created_listed_looked_up_and_revoked(store: Store) -> None:
    ops = _key("ops", "key_0000000000000001", created=1.0)
    bot = _key("bot", "key_0000000000000002", tenant="team-b", created=2.0)
    await store.create_key(ops)
    await store.create_key(bot)
    with pytest.raises(ValueError, match="an active key is already named 'ops'"):
        await store.create_key(_key("ops", "key_0000000000000003"))
    with pytest.raises(ValueError, match="already exists"):
        await store.create_key(replace(ops, name="ops-2"))
    assert await store.keys() == [ops, bot]
    assert await store.keys(tenant="team-b") == [bot]
    assert await store.key_by_digest(ops.digest) == ops
    assert await store.key_by_digest(b"\x00" * 32) is None

    assert await store.revoke_key("ops", tenant="team-b") is None  # another tenant's
    revoked = await store.revoke_key("ops", at=50.0)
    assert revoked == replace(ops, revoked_at=50.0)
    assert await store.revoke_key("ops") is None  # no active key of that name left
    assert await store.revoke_key(ops.key_id) is None  # the id names a revoked key
    assert (await store.key_by_digest(ops.digest)) == revoked  # still found, as revoked

    reborn = _key("ops", "key_0000000000000004", created=3.0)
    await store.create_key(reborn)  # a revoked key's name can be given again
    by_id = await store.revoke_key(bot.key_id, tenant="team-b", at=60.0)
    assert by_id is not None and by_id.key_id == bot.key_id
    assert [(k.name, k.revoked_at) for k in await store.keys()] == [
        ("ops", 50.0), ("bot", 60.0), ("ops", None),
    ]  # fmt: skip


async def test_one_of_two_concurrent_revocations_wins(backend: Backend) -> None:
    one, two = backend.open(), backend.open()
    await one.create_key(_key("ops", "key_0000000000000001"))
    results = await asyncio.gather(one.revoke_key("ops"), two.revoke_key("ops"))
    assert sum(r is not None for r in results) == 1


# -- Responses-API responses -----------------------------------------------------------


def _response(
    response_id: str, previous: str | None = None, *, tenant: str = "team-a", text: str = ""
) -> ResponseRecord:
    said = text or response_id
    return ResponseRecord(
        response_id=response_id,
        tenant=tenant,
        previous_response_id=previous,
        model="fast",
        created=12.5,
        messages=[
            {"role": "user", "content": [{"type": "text", "text": f"to {said}"}]},
            {"role": "assistant", "content": f"from {said}"},
        ],
        body={"id": response_id, "object": "response", "output": [{"type": "message"}]},
    )


async def test_responses_round_trip_and_chain_into_a_conversation(store: Store) -> None:
    first = _response("resp_1")
    await store.put_response(first)
    second = _response("resp_2", "resp_1")
    second.messages.append({"role": "tool", "tool_call_id": "c1", "content": "42"})
    await store.put_response(second)
    await store.put_response(_response("resp_3", "resp_2"))

    found = await store.get_response("team-a", "resp_2")
    assert found is not None
    assert found.record == second
    assert found.conversation == first.messages + second.messages
    only = await store.get_response("team-a", "resp_1")
    assert only is not None and only.conversation == first.messages
    last = await store.get_response("team-a", "resp_3")
    assert last is not None
    assert [m["content"] for m in last.conversation if m["role"] != "user"] == [
        "from resp_1", "from resp_2", "42", "from resp_3",
    ]  # fmt: skip
    assert await store.get_response("team-a", "resp_404") is None


async def test_a_response_chain_branches_and_runs_long(store: Store) -> None:
    await store.put_response(_response("root"))
    await store.put_response(_response("left", "root"))
    await store.put_response(_response("right", "root"))
    left = await store.get_response("team-a", "left")
    right = await store.get_response("team-a", "right")
    assert left is not None and right is not None
    assert left.conversation[-1]["content"] == "from left"
    assert right.conversation[-1]["content"] == "from right"
    assert left.conversation[:2] == right.conversation[:2]

    previous = "root"
    for turn in range(60):
        await store.put_response(_response(f"t{turn}", previous))
        previous = f"t{turn}"
    found = await store.get_response("team-a", "t59")
    assert found is not None
    said = [m["content"] for m in found.conversation if m["role"] == "assistant"]
    assert said == ["from root"] + [f"from t{turn}" for turn in range(60)]


async def test_responses_are_per_tenant(store: Store) -> None:
    await store.put_response(_response("resp_1"))
    assert await store.get_response("team-b", "resp_1") is None
    # Another tenant cannot continue it, and nothing is stored by trying.
    with pytest.raises(ValueError, match="has no response 'resp_1'"):
        await store.put_response(_response("resp_b", "resp_1", tenant="team-b"))
    assert await store.get_response("team-b", "resp_b") is None
    # The same id is another response in another tenant's space.
    await store.put_response(_response("resp_1", tenant="team-b", text="b"))
    theirs = await store.get_response("team-b", "resp_1")
    ours = await store.get_response("team-a", "resp_1")
    assert theirs is not None and theirs.conversation[-1]["content"] == "from b"
    assert ours is not None and ours.conversation[-1]["content"] == "from resp_1"


async def test_a_response_id_is_stored_once_and_continues_only_what_exists(
    store: Store,
) -> None:
    await store.put_response(_response("resp_1"))
    with pytest.raises(ValueError, match="already exists"):
        await store.put_response(_response("resp_1", text="again"))
    with pytest.raises(ValueError, match="has no response 'resp_gone'"):
        await store.put_response(_response("resp_2", "resp_gone"))
    assert await store.get_response("team-a", "resp_2") is None
    found = await store.get_response("team-a", "resp_1")
    assert found is not None and found.record.messages[-1]["content"] == "from resp_1"


async def test_responses_outlive_the_store(backend: Backend) -> None:
    first = backend.open()
    await first.put_response(_response("resp_1"))
    await first.aclose()
    second = backend.open()
    await second.put_response(_response("resp_2", "resp_1"))
    found = await second.get_response("team-a", "resp_2")
    assert found is not None and len(found.conversation) == 4


# -- arrivals (the scaling signal's history) -------------------------------------------


async def test_arrivals_of_every_replica_add_up_per_minute(backend: Backend) -> None:
    first, second = backend.open(), backend.open()
    await first.add_arrivals({0: 3, 60: 1})
    await asyncio.gather(second.add_arrivals({60: 4, 120: 2}), first.add_arrivals({120: 5}))
    assert await second.arrivals(since=0) == {0: 3, 60: 5, 120: 7}
    assert await first.arrivals(since=60) == {60: 5, 120: 7}
    await first.add_arrivals({}, forget_before=120)  # old minutes go
    assert await second.arrivals(since=0) == {120: 7}
    await first.aclose()
    again = backend.open()  # a restarted replica still knows them
    assert await again.arrivals(since=0) == {120: 7}


# -- opening ---------------------------------------------------------------------------


async def test_replicas_opening_a_fresh_database_together(backend: Backend) -> None:
    stores = [backend.open() for _ in range(6)]
    # Each one's first use creates (or finds) the tables; none may fail or see half.
    await asyncio.gather(*(s.append_ledger([_entry(f"r{i}")]) for i, s in enumerate(stores)))
    counts = await asyncio.gather(*(s.ledger() for s in stores))
    assert [len(rows) for rows in counts] == [6] * 6


async def test_state_outlives_the_store(backend: Backend) -> None:
    first = backend.open()
    await first.append_ledger([_entry("r")])
    await first.create_run(_run(), _FIRST)
    await first.aclose()
    second = backend.open()
    assert [e.request_id for e in await second.ledger()] == ["r"]
    assert (await second.load_run("run-1")) is not None


async def test_a_closed_store_refuses_work(store: Store) -> None:
    await store.append_ledger([_entry("r")])
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await store.ledger()
    with pytest.raises(RuntimeError, match="closed"):
        await store.append_ledger([_entry("s")])


# -- experiments -----------------------------------------------------------------------


async def test_an_experiments_units_come_from_its_ledger_rows_runs_and_outcomes(
    store: Store,
) -> None:
    label = "prompt-v2:{}"
    # Three sessions: s1 (control, two finished runs), s2 (v2, one finished, one failed),
    # s3 (both variants: a weight changed), and a run of another experiment.
    runs = [
        ("r1", "s1", "control", "finished"), ("r2", "s1", "control", "finished"),
        ("r3", "s2", "v2", "finished"), ("r4", "s2", "v2", "failed"),
        ("r5", "s3", "control", "finished"), ("r6", "s3", "v2", "finished"),
        ("r7", "s4", "other", "finished"),
    ]  # fmt: skip
    entries = []
    for n, (run_id, session, variant, status) in enumerate(runs):
        await store.create_run(_run(run_id, session=session, created=100.0, updated=100.0 + n), [])
        row = _run(run_id, session=session, status=status, created=100.0, updated=102.0 + n)
        await store.checkpoint(Checkpoint(run=row))
        name = "other-exp:a" if variant == "other" else label.format(variant)
        entries += [
            _entry(f"{run_id}-0", run_id=run_id, session=session, variant=name, cost_usd=0.25),
            _entry(f"{run_id}-1", run_id=run_id, session=session, variant=name, cost_usd=0.5),
        ]
    await store.append_ledger(entries)
    # r2's application says it failed; s2 as a whole succeeded (r3 and r4 have no
    # outcome of their own); another tenant's outcome for r1 changes nothing.
    await store.record_outcome(
        OutcomeRecord(tenant="team-a", kind="run", target="r2", success=False)
    )
    await store.record_outcome(
        OutcomeRecord(tenant="team-a", kind="session", target="s2", success=True)
    )
    await store.record_outcome(
        OutcomeRecord(tenant="team-b", kind="run", target="r1", success=False)
    )
    rows = await store.experiment_units("prompt-v2", unit="session", runs=True)
    by_variant = {(r[0], r[1]): r for r in rows}
    assert len(rows) == 3
    control = by_variant[("prompt-v2:control", "prompt-v2:control")]
    assert [float(x) for x in control[2:8]] == [2, 2, 1, 1.5, 2 * 2 * 1540, 2.5]
    v2 = by_variant[("prompt-v2:v2", "prompt-v2:v2")]
    assert [float(x) for x in v2[2:5]] == [2, 2, 2]
    assert ("prompt-v2:control", "prompt-v2:v2") in by_variant  # s3: crossed
    assert await store.has_request("team-a", "r1-0")
    assert not await store.has_request("team-b", "r1-0")


async def test_an_experiments_state_is_kept(store: Store) -> None:
    assert await store.experiment_state("e") is None
    await store.set_experiment_state(
        ExperimentState(name="e", verdict="stopped by guardrail", stopped=("v2",), updated=5.0)
    )
    await store.set_experiment_state(
        ExperimentState(name="e", verdict="winner: v3", stopped=("v2",), promoted="v3", updated=6.0)
    )
    state = await store.experiment_state("e")
    assert state is not None
    assert (state.verdict, state.stopped, state.promoted) == ("winner: v3", ("v2",), "v3")

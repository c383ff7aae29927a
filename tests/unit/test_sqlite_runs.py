"""Agent runs in the SQLite store: checkpoints, tool calls, events, group commit."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from areion.errors import FencedError
from areion.store import SQLiteStore, sqlite_writer
from areion.store.records import Checkpoint, RunRecord, RunSnapshot, ToolCallRecord
from areion.types import LedgerEntry


def _run(run_id: str = "run-1", tenant: str = "team-a", **fields: Any) -> RunRecord:
    values: dict[str, Any] = {
        "run_id": run_id,
        "tenant": tenant,
        "agent": "analyst",
        "session": "s-1",
        "input": "Summarize the report",
        "message_count": 2,
        "created": 1_732_000_000.25,
        "updated": 1_732_000_000.25,
    }
    values.update(fields)
    return RunRecord(**values)


def _first_messages() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are careful."},
        {"role": "user", "content": "Summarize the report"},
    ]


def _call(run_id: str = "run-1", call_id: str = "c1", **fields: Any) -> ToolCallRecord:
    values: dict[str, Any] = {
        "tenant": "team-a",
        "run_id": run_id,
        "call_id": call_id,
        "name": "search",
        "arguments": '{"q": "revenue"}',
        "status": "started",
        "idempotency_key": f"{run_id}:{call_id}",
        "updated": 1_732_000_001.5,
    }
    values.update(fields)
    return ToolCallRecord(**values)


def _step(run: RunRecord, step: int, *, events: int = 2) -> Checkpoint:
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
    )


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "state" / "areion.db")


@pytest.fixture
async def store(db_path: str) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(db_path)
    yield store
    await store.aclose()


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The number of writes in each batch the writer thread commits."""
    sizes: list[int] = []
    commit = sqlite_writer.Writer._commit

    def counting(self: sqlite_writer.Writer, writes: list[Any]) -> None:
        sizes.append(len(writes))
        commit(self, writes)

    monkeypatch.setattr(sqlite_writer.Writer, "_commit", counting)
    yield sizes


async def _hold_writer(store: SQLiteStore) -> tuple[threading.Event, asyncio.Task[Any]]:
    """Keep the writer thread busy until the event is set: writes queue up meanwhile."""
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    release = threading.Event()

    def block(db: sqlite3.Connection) -> None:
        loop.call_soon_threadsafe(started.set)
        release.wait(10)

    task = asyncio.ensure_future(store._writer.read(block))
    await started.wait()
    return release, task


# -- round trips ----------------------------------------------------------------------


async def test_create_and_load_round_trip_every_field(store: SQLiteStore) -> None:
    run = _run(
        status="paused",
        output="partial",
        error=None,
        pause_reason="approval: send_email",
        steps=3,
        prompt_tokens=1_234,
        completion_tokens=56,
        cost_usd=0.000_281_4,
        limits={"max_steps": 20, "max_cost_usd": 0.5, "nested": {"a": [1, 2.5, None]}},
        created=1_732_000_000.123456,
        updated=1_732_000_009.654321,
    )
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": 'Résumé: naïve café, 東京, emoji 🚀, quote " \\ \n'},
        {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": None},
    ]
    await store.create_run(run, messages)
    snapshot = await store.load_run("run-1")
    assert snapshot == RunSnapshot(run=run, messages=messages, tool_calls={})


async def test_absent_run(store: SQLiteStore) -> None:
    assert await store.load_run("nope") is None
    assert await store.run_events("nope") == []


async def test_duplicate_run_id_is_a_value_error(store: SQLiteStore) -> None:
    await store.create_run(_run(), _first_messages())
    with pytest.raises(ValueError, match=r"run-1.*already exists"):
        await store.create_run(_run(agent="other"), [{"role": "user", "content": "x"}])
    snapshot = await store.load_run("run-1")
    assert snapshot is not None
    assert snapshot.run.agent == "analyst"
    assert snapshot.messages == _first_messages()


async def test_create_run_without_messages(store: SQLiteStore) -> None:
    await store.create_run(_run(message_count=0), [])
    snapshot = await store.load_run("run-1")
    assert snapshot is not None
    assert snapshot.messages == []


async def test_delta_checkpoints_append(store: SQLiteStore) -> None:
    run = _run()
    await store.create_run(run, _first_messages())
    expected_messages = _first_messages()
    for step in range(1, 11):
        checkpoint = _step(run, step)
        await store.checkpoint(checkpoint)
        run = checkpoint.run
        expected_messages += checkpoint.messages

    snapshot = await store.load_run("run-1")
    assert snapshot is not None
    assert snapshot.run == run
    assert snapshot.run.message_count == len(expected_messages) == 22
    assert snapshot.messages == expected_messages
    assert sorted(snapshot.tool_calls) == sorted(f"call-{s}" for s in range(1, 11))
    assert snapshot.tool_calls["call-7"].result == "result 7"

    events = await store.run_events("run-1")
    assert [seq for seq, _ in events] == list(range(20))
    assert [(e["step"], e["i"]) for _, e in events] == [
        (s, i) for s in range(1, 11) for i in (0, 1)
    ]


async def test_run_events_after(store: SQLiteStore) -> None:
    run = _run()
    await store.create_run(run, _first_messages())
    await store.checkpoint(_step(run, 1, events=6))
    assert [seq for seq, _ in await store.run_events("run-1", after=3)] == [4, 5]
    assert await store.run_events("run-1", after=5) == []


async def test_checkpoint_replaces_the_run_row(store: SQLiteStore) -> None:
    await store.create_run(_run(), _first_messages())
    paused = _run(
        status="paused",
        pause_reason="max_steps",
        steps=5,
        limits={"max_steps": 10},
        output=None,
        updated=1_732_000_100.0,
    )
    await store.checkpoint(Checkpoint(run=paused))
    snapshot = await store.load_run("run-1")
    assert snapshot is not None
    assert snapshot.run == paused
    assert snapshot.messages == _first_messages()
    assert await store.run_events("run-1") == []


async def test_tool_call_insert_or_replace(store: SQLiteStore) -> None:
    run = _run()
    await store.create_run(run, _first_messages())
    await store.record_tool_call(_call(status="pending_approval"))
    await store.record_tool_call(_call("run-1", "c2", status="started"))
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


# -- tenants --------------------------------------------------------------------------


async def test_tenant_isolation(store: SQLiteStore) -> None:
    run = _run(tenant="team-a")
    await store.create_run(run, _first_messages())
    await store.checkpoint(_step(run, 1))

    assert await store.load_run("run-1", tenant="team-b") is None
    assert await store.run_events("run-1", tenant="team-b") == []
    own = await store.load_run("run-1", tenant="team-a")
    assert own is not None and own.run.tenant == "team-a"
    assert len(await store.run_events("run-1", tenant="team-a")) == 2
    assert len(await store.run_events("run-1")) == 2
    # tenant values are data, not SQL
    assert await store.load_run("run-1", tenant="x' OR '1'='1") is None


async def test_two_tenants_may_use_the_same_run_id(store: SQLiteStore) -> None:
    a, b = _run(tenant="team-a"), _run(tenant="team-b", input="Another task", created=2e9)
    await store.create_run(a, _first_messages())
    await store.create_run(b, [{"role": "user", "content": "Another task"}])
    await store.checkpoint(_step(a, 1, events=3))
    await store.checkpoint(_step(replace(b, message_count=1), 1, events=1))
    with pytest.raises(ValueError, match="run 'run-1' of tenant 'team-b' already exists"):
        await store.create_run(b, [])

    mine = await store.load_run("run-1", tenant="team-a")
    theirs = await store.load_run("run-1", tenant="team-b")
    assert mine is not None and theirs is not None
    assert mine.run.input == "Summarize the report" and theirs.run.input == "Another task"
    assert len(mine.messages) == 4 and len(theirs.messages) == 3
    assert mine.tool_calls["call-1"].tenant == "team-a"
    assert theirs.tool_calls["call-1"].tenant == "team-b"
    assert [seq for seq, _ in await store.run_events("run-1", tenant="team-a")] == [0, 1, 2]
    assert [seq for seq, _ in await store.run_events("run-1", tenant="team-b")] == [0]
    # A call record of one tenant's run never lands in another's.
    stray = _call("run-1", "c9", tenant="team-b")
    with pytest.raises(ValueError, match="tool call 'c9' belongs to run 'run-1' of tenant"):
        await store.checkpoint(Checkpoint(run=_step(a, 2).run, tool_calls=[stray]))
    # An operator's read without a tenant finds the oldest run of that id.
    anyone = await store.load_run("run-1")
    assert anyone is not None and anyone.run.tenant == "team-a"
    assert len(await store.run_events("run-1")) == 3


async def test_a_database_from_before_run_ids_were_per_tenant_is_migrated(
    db_path: str,
) -> None:
    Path(db_path).parent.mkdir(parents=True)
    old = sqlite3.connect(db_path)
    old.executescript(
        """
        CREATE TABLE runs (run_id TEXT NOT NULL PRIMARY KEY, tenant TEXT NOT NULL,
            agent TEXT NOT NULL, session TEXT, status TEXT NOT NULL, input TEXT NOT NULL,
            output TEXT, error TEXT, pause_reason TEXT, steps INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
            cost_usd REAL NOT NULL, message_count INTEGER NOT NULL, limits TEXT NOT NULL,
            created REAL NOT NULL, updated REAL NOT NULL);
        CREATE INDEX runs_tenant ON runs (tenant, created);
        CREATE TABLE run_messages (run_id TEXT NOT NULL, seq INTEGER NOT NULL,
            message TEXT NOT NULL, PRIMARY KEY (run_id, seq));
        CREATE TABLE run_events (run_id TEXT NOT NULL, seq INTEGER NOT NULL,
            event TEXT NOT NULL, PRIMARY KEY (run_id, seq));
        CREATE TABLE tool_calls (run_id TEXT NOT NULL, call_id TEXT NOT NULL,
            name TEXT NOT NULL, arguments TEXT NOT NULL, status TEXT NOT NULL,
            idempotency_key TEXT NOT NULL, result TEXT, reason TEXT, updated REAL NOT NULL,
            PRIMARY KEY (run_id, call_id));
        INSERT INTO runs VALUES ('run-1', 'team-a', 'analyst', 's-1', 'paused', 'Summarize',
            NULL, NULL, 'approval', 1, 10, 5, 0.25, 2, '{}', 1.0, 2.0);
        INSERT INTO run_messages VALUES ('run-1', 0, '{"role":"user","content":"Summarize"}'),
            ('run-1', 1, '{"role":"assistant","content":null}');
        INSERT INTO run_events VALUES ('run-1', 0, '{"kind":"run_started"}');
        INSERT INTO tool_calls VALUES ('run-1', 'c1', 'refund', '{}', 'pending_approval',
            'run-1:c1', NULL, NULL, 1.5);
        """
    )
    old.close()
    store = SQLiteStore(db_path)
    try:
        snapshot = await store.load_run("run-1", tenant="team-a")
        assert snapshot is not None and snapshot.run.status == "paused"
        assert snapshot.messages == [
            {"role": "user", "content": "Summarize"},
            {"role": "assistant", "content": None},
        ]
        assert snapshot.tool_calls["c1"].idempotency_key == "run-1:c1"  # kept as it was
        assert await store.run_events("run-1", tenant="team-a") == [(0, {"kind": "run_started"})]
        # The same id is now free for another tenant, and the old run goes on.
        await store.create_run(_run(tenant="team-b"), _first_messages())
        await store.checkpoint(_step(snapshot.run, 2))
    finally:
        await store.aclose()
    db = sqlite3.connect(db_path)
    indexes = {row[1] for row in db.execute("PRAGMA index_list(runs)")}
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    assert "runs_tenant" in indexes
    assert not {name for name in tables if name.endswith("_v1")}


async def test_checkpoint_cannot_move_a_run_to_another_tenant(store: SQLiteStore) -> None:
    run = _run(tenant="team-a")
    await store.create_run(run, _first_messages())
    stolen = _step(replace(run, tenant="team-b"), 1)
    with pytest.raises(ValueError, match="no run 'run-1' of tenant 'team-b'"):
        await store.checkpoint(stolen)
    snapshot = await store.load_run("run-1")
    assert snapshot is not None
    assert snapshot.run == run
    assert snapshot.messages == _first_messages()
    assert snapshot.tool_calls == {}
    assert await store.run_events("run-1") == []


async def test_checkpoint_of_an_unknown_run(store: SQLiteStore) -> None:
    with pytest.raises(ValueError, match="no run 'ghost'"):
        await store.checkpoint(_step(_run("ghost"), 1))
    assert await store.load_run("ghost") is None


async def test_stale_message_count_lands_nothing(store: SQLiteStore) -> None:
    run = _run()
    await store.create_run(run, _first_messages())
    first = _step(run, 1)
    await store.checkpoint(first)
    again = _step(run, 2)  # built from the old row: its messages overlap seqs 2..3
    with pytest.raises(ValueError, match="already stored"):
        await store.checkpoint(again)
    snapshot = await store.load_run("run-1")
    assert snapshot is not None
    assert snapshot.run == first.run
    assert "call-2" not in snapshot.tool_calls
    assert len(await store.run_events("run-1")) == 2


async def test_message_count_smaller_than_the_delta(store: SQLiteStore) -> None:
    await store.create_run(_run(), _first_messages())
    bad = Checkpoint(run=_run(message_count=1), messages=_first_messages() * 2)
    with pytest.raises(ValueError, match="message_count 1"):
        await store.checkpoint(bad)


# -- durability -----------------------------------------------------------------------


async def test_runs_survive_reopening(db_path: str) -> None:
    first = SQLiteStore(db_path)
    run = _run()
    await first.create_run(run, _first_messages())
    for step in (1, 2, 3):
        checkpoint = _step(run, step)
        await first.checkpoint(checkpoint)
        run = checkpoint.run
    before = await first.load_run("run-1")
    await first.aclose()

    second = SQLiteStore(db_path)
    try:
        assert await second.load_run("run-1") == before
        # event numbering continues from what is stored, not from memory
        await second.checkpoint(_step(run, 4))
        assert [seq for seq, _ in await second.run_events("run-1")] == list(range(8))
    finally:
        await second.aclose()
    # and another program can read it
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT count(*) FROM run_messages").fetchone() == (10,)


_CRASH_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from dataclasses import replace
    from areion.store import SQLiteStore
    from areion.store.records import Checkpoint, RunRecord

    async def main(path):
        store = SQLiteStore(path)
        run = RunRecord(run_id="r", tenant="t", agent="a", message_count=1)
        await store.create_run(run, [{"role": "user", "content": "go"}])
        step = 0
        while True:
            step += 1
            run = replace(run, steps=step, message_count=run.message_count + 1)
            await store.checkpoint(Checkpoint(
                run=run,
                messages=[{"role": "assistant", "content": f"step {step}"}],
                events=[{"step": step}],
            ))
            print(step, flush=True)  # acknowledged: committed

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_acknowledged_checkpoints_survive_kill_9(db_path: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASH_WRITER, db_path],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert child.stdout is not None
    acknowledged = 0
    try:
        for line in child.stdout:
            acknowledged = int(line)
            if acknowledged >= 200:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert acknowledged >= 200
    asyncio.run(_check_after_crash(db_path, acknowledged))


async def _check_after_crash(db_path: str, acknowledged: int) -> None:
    store = SQLiteStore(db_path)
    try:
        snapshot = await store.load_run("r")
        assert snapshot is not None
        # every acknowledged step is there, and each step landed whole
        assert snapshot.run.steps >= acknowledged
        assert len(snapshot.messages) == snapshot.run.message_count == snapshot.run.steps + 1
        last = {"role": "assistant", "content": f"step {snapshot.run.steps}"}
        assert snapshot.messages[-1] == last
        events = await store.run_events("r")
        assert [e["step"] for _, e in events] == list(range(1, snapshot.run.steps + 1))
    finally:
        await store.aclose()


# -- group commit ---------------------------------------------------------------------


async def test_500_concurrent_checkpoints_are_group_committed(
    store: SQLiteStore, batches: list[int]
) -> None:
    runs = [_run(f"run-{i}", tenant=f"t{i % 7}") for i in range(100)]
    await asyncio.gather(*(store.create_run(r, _first_messages()) for r in runs))

    async def steps(run: RunRecord) -> RunRecord:
        for step in range(1, 6):
            checkpoint = _step(run, step, events=1 + step % 3)
            await store.checkpoint(checkpoint)
            run = checkpoint.run
        return run

    batches.clear()
    finals = await asyncio.gather(*(steps(r) for r in runs))
    assert sum(batches) == 500
    assert len(batches) < 100  # writes shared transactions

    for run in finals:
        snapshot = await store.load_run(run.run_id, tenant=run.tenant)
        assert snapshot is not None
        assert snapshot.run == run
        assert len(snapshot.messages) == run.message_count == 12
        assert [m["content"] for m in snapshot.messages[3::2]] == [
            f"result {s}" for s in range(1, 6)
        ]
        assert len(snapshot.tool_calls) == 5
        events = await store.run_events(run.run_id)
        expected = [s for s in range(1, 6) for _ in range(1 + s % 3)]
        assert [seq for seq, _ in events] == list(range(len(expected)))
        assert [e["step"] for _, e in events] == expected


async def test_two_checkpoints_of_one_run_in_one_batch_keep_their_order(
    store: SQLiteStore, batches: list[int]
) -> None:
    run = _run()
    await store.create_run(run, _first_messages())
    first = _step(run, 1, events=3)
    second = _step(first.run, 2, events=2)
    release, held = await _hold_writer(store)
    batches.clear()
    writes = asyncio.gather(store.checkpoint(first), store.checkpoint(second))
    await asyncio.sleep(0.01)
    release.set()
    await writes
    await held
    assert batches == [2]

    snapshot = await store.load_run("run-1")
    assert snapshot is not None
    assert snapshot.run == second.run
    assert snapshot.messages == _first_messages() + first.messages + second.messages
    events = await store.run_events("run-1")
    assert [(seq, e["step"], e["i"]) for seq, e in events] == [
        (0, 1, 0), (1, 1, 1), (2, 1, 2), (3, 2, 0), (4, 2, 1),
    ]  # fmt: skip


async def test_a_lower_fence_behind_a_higher_one_in_the_same_batch_is_refused(
    store: SQLiteStore, batches: list[int]
) -> None:
    run = _run()
    await store.create_run(run, _first_messages())
    taken = replace(_step(run, 1), fence=3)  # the replica that took the run over
    late = replace(_step(taken.run, 2), fence=2)  # the one it was taken from
    release, held = await _hold_writer(store)
    batches.clear()
    writes = asyncio.gather(store.checkpoint(taken), store.checkpoint(late), return_exceptions=True)
    await asyncio.sleep(0.01)
    release.set()
    results = await writes
    await held
    assert batches[0] == 2  # one batch: the stored fence was still 0 when it ran
    assert results[0] is None and isinstance(results[1], FencedError)
    snapshot = await store.load_run("run-1")
    assert snapshot is not None and snapshot.run == taken.run


async def test_a_failing_write_does_not_lose_the_rest_of_its_batch(
    store: SQLiteStore, batches: list[int]
) -> None:
    runs = [_run(f"run-{i}") for i in range(20)]
    await asyncio.gather(*(store.create_run(r, _first_messages()) for r in runs))
    entry = LedgerEntry(
        request_id="req-1", tenant="team-a", model="fast", deployment="fast/x",
        upstream_model="x", prompt_tokens=1, completion_tokens=2, cached_tokens=0,
        cost_usd=0.5, estimated=False, latency_s=0.1, created=1.0,
    )  # fmt: skip

    release, held = await _hold_writer(store)
    batches.clear()
    writes = asyncio.gather(
        *(store.checkpoint(_step(r, 1)) for r in runs[:10]),
        store.create_run(_run("run-3"), []),  # duplicate
        store.checkpoint(_step(_run("ghost"), 1)),  # unknown run
        store.checkpoint(_step(runs[15], 1)),
        store.checkpoint(_step(replace(runs[16], message_count=0), 1)),  # stale count
        store.append_ledger([entry]),
        store.cache_put("k", b"v", ttl=60),
        store.record_tool_call(_call("run-19", "c9")),
        return_exceptions=True,
    )
    await asyncio.sleep(0.01)
    release.set()
    results = await writes
    await held
    assert batches == [17]

    errors = [(i, type(r).__name__) for i, r in enumerate(results) if r is not None]
    assert errors == [(10, "ValueError"), (11, "ValueError"), (13, "ValueError")]
    for run in [*runs[:10], runs[15]]:
        snapshot = await store.load_run(run.run_id)
        assert snapshot is not None
        assert snapshot.run.steps == 1 and len(snapshot.messages) == 4
        assert len(await store.run_events(run.run_id)) == 2
    untouched = await store.load_run("run-16")
    assert untouched is not None and untouched.run == runs[16] and untouched.tool_calls == {}
    assert await store.load_run("ghost") is None
    assert await store.ledger() == [entry]
    assert await store.cache_get("k") == b"v"
    last = await store.load_run("run-19")
    assert last is not None and list(last.tool_calls) == ["c9"]


async def test_a_lone_write_commits_at_once(store: SQLiteStore) -> None:
    run = _run()
    await store.create_run(run, _first_messages())
    loop = asyncio.get_running_loop()
    started = loop.time()
    for step in range(1, 21):
        checkpoint = _step(run, step)
        await store.checkpoint(checkpoint)
        run = checkpoint.run
    # no timer between commits: 20 sequential checkpoints take far less than 20 ticks
    assert loop.time() - started < 0.5


async def test_closed_store_refuses_runs(db_path: str) -> None:
    store = SQLiteStore(db_path)
    await store.create_run(_run(), _first_messages())
    await store.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await store.checkpoint(_step(_run(), 1))
    with pytest.raises(RuntimeError, match="closed"):
        await store.load_run("run-1")

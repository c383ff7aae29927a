"""The embedded default store: one SQLite file in WAL mode.

sqlite3 blocks, so statements run on dedicated threads, never on the event loop:
every write on one writer thread (`sqlite_writer`), which needs no locking of its
own and group-commits (writes that arrive while a transaction is in progress
share the next one), and reads on a reader thread with its own connection
(`sqlite_reader`), which WAL mode lets run while the writer commits. Records are
turned into JSON here, on the event loop, with orjson; the writer only hands the
JSON to SQLite, which unpacks it into rows in C (`sqlite_schema`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import orjson

from areion.errors import ConfigError, FencedError
from areion.store.experiments_sql import (
    EXPERIMENT_STATE_GET,
    EXPERIMENT_STATE_PUT,
    OUTCOME_PUT,
    REQUEST_EXISTS,
    units_query,
)
from areion.store.records import (
    ApiKeyRecord,
    CacheEntryRecord,
    CacheTier,
    Checkpoint,
    ExperimentState,
    OutcomeRecord,
    ResponseRecord,
    RunRecord,
    RunSnapshot,
    SessionSummary,
    SessionTurn,
    StoredResponse,
    ToolCallRecord,
)
from areion.store.rollups import SpendQuery, spend_sql
from areion.store.run_pages import RunCall, RunPageQuery, RunRow, run_calls_sql, run_page_sql
from areion.store.sqlite_reader import Reader
from areion.store.sqlite_schema import (
    ADD_ARRIVALS,
    API_KEY_COLUMNS,
    CACHE,
    CACHE_ENTRY_COLUMNS,
    CACHE_GET,
    EVENTS,
    FENCED_RUN,
    LEDGER_CLOSINGS,
    LEDGER_COLUMNS,
    LEDGER_ROWS,
    LOAD_RUN,
    LOAD_TOOL_CALLS,
    MESSAGES,
    NEW_RUNS,
    PUT_RESPONSE,
    RESPONSE_CHAIN,
    RUN_EVENTS,
    RUNS,
    SESSION_SUMMARIES,
    SESSION_TURNS,
    SUMMARIES,
    TOOL_CALLS,
    TURNS,
    UNKNOWN_RUN,
)
from areion.store.sqlite_thread import Part
from areion.store.sqlite_writer import Writer
from areion.types import LedgerEntry

__all__ = ["SQLiteStore", "sqlite_path"]

T = TypeVar("T")


def sqlite_path(url: str) -> str:
    """The file of a `sqlite:///path` URL (`sqlite:///:memory:` for memory)."""
    if not url.startswith("sqlite:///"):
        raise ConfigError(f"store: '{url}' is not a sqlite:/// URL")
    return url.removeprefix("sqlite:///") or ":memory:"


class SQLiteStore:
    """`Store` over one SQLite database file."""

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        # Unix time of cache expiry; a test's manual clock moves it without waiting.
        self._clock = clock
        self._writer = Writer(path, clock=clock)
        # An in-memory database exists only on the writer's connection.
        self._reader = Reader(path) if path != ":memory:" else None
        self._schema_ready = False
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        return cls(sqlite_path(url))

    async def _write(self, parts: Sequence[Part], size: int) -> None:
        if self._closed:
            raise RuntimeError("the store is closed")
        await self._writer.write(parts, size)

    async def _apply(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` on the writer's connection, between batches, each statement its own
        transaction: for writes with SQL of their own (keys, cache entries)."""
        if self._closed:
            raise RuntimeError("the store is closed")
        return await self._writer.apply(work)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise RuntimeError("the store is closed")
        if self._reader is None:
            return await self._writer.read(work)
        if not self._schema_ready:
            # The writer creates the file and its tables; the reader only opens them.
            await self._writer.read(_nothing)
            self._schema_ready = True
        return await self._reader.read(work)

    # -- ledger ---------------------------------------------------------------------

    async def append_ledger(
        self, entries: Sequence[LedgerEntry], *, closing: Sequence[LedgerEntry] = ()
    ) -> None:
        # Rows and closings the writer binds as parameters (no JSON), in one write: one
        # transaction inserts and closes them all, or none.
        parts: list[Part] = []
        if entries:
            parts.append((LEDGER_ROWS, [_ledger_tuple(e) for e in entries]))
        if closing:
            parts.append((LEDGER_CLOSINGS, [_ledger_tuple(e) for e in closing]))
        if parts:
            await self._write(parts, _ROW_BYTES * (len(entries) + len(closing)))

    async def ledger(
        self, *, tenant: str | None = None, request_id: str | None = None, limit: int = 1000
    ) -> list[LedgerEntry]:
        where: list[str] = []
        args: list[Any] = []
        if tenant is not None:
            where.append("tenant = ?")
            args.append(tenant)
        if request_id is not None:
            where.append("request_id = ?")
            args.append(request_id)
        sql = f"SELECT {LEDGER_COLUMNS} FROM ledger"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC LIMIT ?"
        args.append(limit)

        def read(db: sqlite3.Connection) -> list[Any]:
            return db.execute(sql, args).fetchall()

        return [
            LedgerEntry(
                request_id=row[0],
                tenant=row[1],
                model=row[2],
                deployment=row[3],
                upstream_model=row[4],
                prompt_tokens=row[5],
                completion_tokens=row[6],
                cached_tokens=row[7],
                cost_usd=row[8],
                estimated=bool(row[9]),
                latency_s=row[10],
                created=row[11],
                cache=row[12],
                saved_usd=row[13],
                saved_s=row[14],
                open=bool(row[15]),
                client_request_id=row[16],
                kind=row[17],
                key_label=row[18],
                route=row[19],
                route_reason=row[20],
                run_id=row[21],
                agent=row[22],
                session=row[23],
                end_user=row[24],
                tags=tuple(orjson.loads(row[25])),
                variant=row[26],
            )
            for row in await self._read(read)
        ]

    async def spend(self, query: SpendQuery) -> list[tuple[Any, ...]]:
        sql, args = spend_sql(query, "sqlite")

        def read(db: sqlite3.Connection) -> list[Any]:
            return db.execute(sql, args).fetchall()

        return [tuple(row) for row in await self._read(read)]

    async def run_stats(
        self, *, since: float, until: float, tenant: str | None = None
    ) -> list[tuple[str, str, float, int]]:
        def read(db: sqlite3.Connection) -> list[Any]:
            return db.execute(
                "SELECT agent, status, cost_usd, steps FROM runs "
                "WHERE created >= ?1 AND created < ?2 AND (?3 IS NULL OR tenant = ?3)",
                (since, until, tenant),
            ).fetchall()

        return [(row[0], row[1], float(row[2]), int(row[3])) for row in await self._read(read)]

    async def spend_by_tenant(self, *, since: float) -> dict[str, float]:
        def read(db: sqlite3.Connection) -> list[Any]:
            return db.execute(
                "SELECT tenant, SUM(cost_usd) FROM ledger WHERE created >= ? GROUP BY tenant",
                (since,),
            ).fetchall()

        return {tenant: float(total or 0.0) for tenant, total in await self._read(read)}

    async def run_page(self, query: RunPageQuery) -> list[RunRow]:
        sql, args = run_page_sql(query, "sqlite")

        def read(db: sqlite3.Connection) -> list[Any]:
            return db.execute(sql, args).fetchall()

        return [RunRow.of(row) for row in await self._read(read)]

    async def run_calls(
        self, run_id: str, *, tenant: str, since: float, until: float
    ) -> list[RunCall]:
        sql, args = run_calls_sql(run_id, tenant=tenant, since=since, until=until, dialect="sqlite")

        def read(db: sqlite3.Connection) -> list[Any]:
            return db.execute(sql, args).fetchall()

        return [RunCall.of(row) for row in await self._read(read)]

    # -- agent runs -------------------------------------------------------------------

    async def create_run(self, run: RunRecord, messages: Sequence[dict[str, Any]]) -> None:
        parts: list[Part] = [(NEW_RUNS, orjson.dumps(_run_row(run)))]
        if messages:
            parts.append((MESSAGES, orjson.dumps((run.tenant, run.run_id, 0, list(messages)))))
        try:
            await self._write(parts, _size(parts))
        except sqlite3.IntegrityError as exc:
            if "runs.run_id" in str(exc):
                raise ValueError(
                    f"run {run.run_id!r} of tenant {run.tenant!r} already exists"
                ) from exc
            raise

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        run = checkpoint.run
        first = checkpoint.first_message()
        parts: list[Part] = [(RUNS, orjson.dumps((*_run_row(run), checkpoint.fence)))]
        if checkpoint.messages:
            parts.append(
                (MESSAGES, orjson.dumps((run.tenant, run.run_id, first, checkpoint.messages)))
            )
        if checkpoint.events:
            parts.append((EVENTS, orjson.dumps((run.tenant, run.run_id, checkpoint.events))))
        if checkpoint.tool_calls:
            rows = orjson.dumps([_tool_row(call) for call in checkpoint.tool_calls])
            parts.append((TOOL_CALLS, rows[1:-1]))
        try:
            await self._write(parts, _size(parts))
        except sqlite3.IntegrityError as exc:
            if UNKNOWN_RUN in str(exc):
                raise ValueError(
                    f"checkpoint: no run {run.run_id!r} of tenant {run.tenant!r}"
                ) from exc
            if FENCED_RUN in str(exc):
                raise FencedError(
                    f"run {run.run_id!r} of tenant {run.tenant!r} was taken over by another "
                    f"replica (this checkpoint's fence {checkpoint.fence} is lower than the "
                    "run's); this one must stop driving it"
                ) from exc
            if "run_messages" in str(exc):
                raise ValueError(
                    f"checkpoint of run {run.run_id!r}: messages from seq {first} on are "
                    "already stored (message_count is stale)"
                ) from exc
            raise

    async def record_tool_call(self, record: ToolCallRecord) -> None:
        row = orjson.dumps(_tool_row(record))
        await self._write([(TOOL_CALLS, row)], len(row))

    async def load_run(self, run_id: str, *, tenant: str | None = None) -> RunSnapshot | None:
        def read(db: sqlite3.Connection) -> tuple[Any, list[Any]] | None:
            row = db.execute(LOAD_RUN, (run_id, tenant)).fetchone()
            if row is None:
                return None
            return row, db.execute(LOAD_TOOL_CALLS, (row[1], run_id)).fetchall()

        found = await self._read(read)
        if found is None:
            return None
        row, calls = found
        return RunSnapshot(
            run=RunRecord(
                run_id=row[0],
                tenant=row[1],
                agent=row[2],
                session=row[3],
                status=row[4],
                input=row[5],
                output=row[6],
                error=row[7],
                pause_reason=row[8],
                steps=row[9],
                prompt_tokens=row[10],
                completion_tokens=row[11],
                cost_usd=row[12],
                message_count=row[13],
                limits=orjson.loads(row[14]),
                created=row[15],
                updated=row[16],
            ),
            messages=orjson.loads(row[17]) if row[17] is not None else [],
            tool_calls={
                call[1]: ToolCallRecord(
                    tenant=row[1],
                    run_id=call[0],
                    call_id=call[1],
                    name=call[2],
                    arguments=call[3],
                    status=call[4],
                    idempotency_key=call[5],
                    result=call[6],
                    reason=call[7],
                    updated=call[8],
                )
                for call in calls
            },
        )

    async def stale_runs(self, *, updated_before: float, limit: int = 100) -> list[tuple[str, str]]:
        def read(db: sqlite3.Connection) -> list[Any]:
            return db.execute(
                "SELECT tenant, run_id FROM runs WHERE status = 'running' AND updated < ? "
                "ORDER BY updated LIMIT ?",
                (updated_before, limit),
            ).fetchall()

        return [(tenant, run_id) for tenant, run_id in await self._read(read)]

    async def run_events(
        self, run_id: str, *, after: int = -1, tenant: str | None = None
    ) -> list[tuple[int, dict[str, Any]]]:
        text = await self._read(_scalar(RUN_EVENTS, (run_id, after, tenant)))
        if text is None:
            return []
        return [(seq, event) for seq, event in orjson.loads(text)]

    # -- sessions -------------------------------------------------------------------

    async def session_turns(
        self, tenant: str, session: str, *, after: int = -1
    ) -> list[SessionTurn]:
        text = await self._read(_scalar(SESSION_TURNS, (tenant, session, after)))
        if text is None:
            return []
        return [
            SessionTurn(seq=seq, role=role, content=content, tokens=tokens)
            for seq, role, content, tokens in orjson.loads(text)
        ]

    async def append_turns(self, tenant: str, session: str, turns: Sequence[SessionTurn]) -> None:
        if not turns:
            return
        rows = orjson.dumps([(tenant, session, t.seq, t.role, t.content, t.tokens) for t in turns])[
            1:-1
        ]
        try:
            await self._write([(TURNS, rows)], len(rows))
        except sqlite3.IntegrityError as exc:
            if "session_turns" in str(exc):
                seqs = [t.seq for t in turns]
                raise ValueError(
                    f"session {session!r} of tenant {tenant!r} already has a turn among seqs {seqs}"
                ) from exc
            raise

    async def session_summaries(self, tenant: str, session: str) -> list[SessionSummary]:
        text = await self._read(_scalar(SESSION_SUMMARIES, (tenant, session)))
        if text is None:
            return []
        return [
            SessionSummary(first_seq=first, last_seq=last, text=summary, tokens=tokens)
            for first, last, summary, tokens in orjson.loads(text)
        ]

    async def add_summary(self, tenant: str, session: str, summary: SessionSummary) -> None:
        row = orjson.dumps(
            (tenant, session, summary.first_seq, summary.last_seq, summary.text, summary.tokens)
        )
        await self._write([(SUMMARIES, row)], len(row))

    # -- memoized tool results ----------------------------------------------------------

    async def cache_get(self, key: str) -> bytes | None:
        value: bytes | None = await self._read(_scalar(CACHE_GET, (key, self._clock())))
        return value

    async def cache_put(self, key: str, value: bytes, *, ttl: float) -> None:
        await self._write([(CACHE, (key, bytes(value), self._clock() + ttl))], len(value))

    # -- semantic tiers -----------------------------------------------------------------

    async def add_cache_entry(self, entry: CacheEntryRecord) -> int:
        now = time.time()

        def insert(db: sqlite3.Connection) -> int:
            # Expired entries go with the inserts that make new ones (an indexed range).
            db.execute("DELETE FROM cache_entries WHERE expires <= ?", (now,))
            row = db.execute(
                "INSERT INTO cache_entries (tier, tenant, partition, model, text, vector, "
                "payload, created, expires, threshold) VALUES (?,?,?,?,?,?,?,?,?,?) RETURNING id",
                (
                    entry.tier, entry.tenant, entry.partition, entry.model, entry.text,
                    entry.vector, entry.payload, entry.created, entry.expires, entry.threshold,
                ),
            ).fetchone()  # fmt: skip
            return int(row[0])

        return await self._apply(insert)

    async def cache_entries(
        self, tier: CacheTier, *, after: int = 0, limit: int = 10_000
    ) -> list[CacheEntryRecord]:
        now = time.time()

        def read(db: sqlite3.Connection) -> list[Any]:
            return db.execute(
                f"SELECT {CACHE_ENTRY_COLUMNS} FROM cache_entries "
                "WHERE tier = ? AND id > ? AND expires > ? ORDER BY id LIMIT ?",
                (tier, after, now, limit),
            ).fetchall()

        return [_cache_entry(row) for row in await self._read(read)]

    async def drop_cache_entries(
        self,
        tier: CacheTier,
        tenant: str,
        *,
        model: str | None = None,
        created_before: float | None = None,
        entry: int | None = None,
    ) -> list[int]:
        def delete(db: sqlite3.Connection) -> list[int]:
            rows = db.execute(
                "DELETE FROM cache_entries WHERE tier = ?1 AND tenant = ?2 "
                "AND (?3 IS NULL OR model = ?3) AND (?4 IS NULL OR created <= ?4) "
                "AND (?5 IS NULL OR id = ?5) RETURNING id",
                (tier, tenant, model, created_before, entry),
            ).fetchall()
            return sorted(int(row[0]) for row in rows)

        return await self._apply(delete)

    async def set_cache_threshold(self, tier: CacheTier, entry: int, threshold: float) -> None:
        def update(db: sqlite3.Connection) -> None:
            db.execute(
                "UPDATE cache_entries SET threshold = ? WHERE tier = ? AND id = ?",
                (threshold, tier, entry),
            )

        await self._apply(update)

    # -- API keys -----------------------------------------------------------------------

    async def create_key(self, record: ApiKeyRecord) -> None:
        row = _key_row(record)

        def insert(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT INTO api_keys ({API_KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)", row
            )

        try:
            await self._apply(insert)
        except sqlite3.IntegrityError as exc:
            if "api_keys.name" in str(exc):
                raise ValueError(f"an active key is already named {record.name!r}") from exc
            raise ValueError(f"key {record.key_id!r} already exists") from exc

    async def keys(self, *, tenant: str | None = None) -> list[ApiKeyRecord]:
        def read(db: sqlite3.Connection) -> list[Any]:
            return db.execute(
                f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE ?1 IS NULL OR tenant = ?1 "
                "ORDER BY created, key_id",
                (tenant,),
            ).fetchall()

        return [_key_record(row) for row in await self._read(read)]

    async def key_by_digest(self, digest: bytes) -> ApiKeyRecord | None:
        def read(db: sqlite3.Connection) -> Any:
            return db.execute(
                f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE digest = ?", (digest,)
            ).fetchone()

        row = await self._read(read)
        return None if row is None else _key_record(row)

    async def revoke_key(
        self, name_or_id: str, *, tenant: str | None = None, at: float | None = None
    ) -> ApiKeyRecord | None:
        when = time.time() if at is None else at

        def revoke(db: sqlite3.Connection) -> Any:
            # One statement: two revocations of one key cannot both succeed. An id wins
            # over a name (names never look like ids: see control.keys).
            return db.execute(
                f"UPDATE api_keys SET revoked_at = ?1 WHERE revoked_at IS NULL "
                "AND (?3 IS NULL OR tenant = ?3) AND key_id = COALESCE("
                "(SELECT key_id FROM api_keys WHERE key_id = ?2), "
                "(SELECT key_id FROM api_keys WHERE name = ?2 AND revoked_at IS NULL)) "
                f"RETURNING {API_KEY_COLUMNS}",
                (when, name_or_id, tenant),
            ).fetchone()

        row = await self._apply(revoke)
        return None if row is None else _key_record(row)

    # -- Responses-API responses --------------------------------------------------------

    async def put_response(self, record: ResponseRecord) -> None:
        row = (
            record.tenant, record.response_id, record.previous_response_id, record.model,
            record.created, orjson.dumps(record.messages), orjson.dumps(record.body),
        )  # fmt: skip

        def insert(db: sqlite3.Connection) -> int:
            return db.execute(PUT_RESPONSE, row).rowcount

        try:
            inserted = await self._apply(insert)
        except sqlite3.IntegrityError as exc:
            raise ValueError(
                f"response {record.response_id!r} of tenant {record.tenant!r} already exists"
            ) from exc
        if not inserted:
            raise ValueError(
                f"tenant {record.tenant!r} has no response {record.previous_response_id!r} "
                "to continue"
            )

    async def get_response(self, tenant: str, response_id: str) -> StoredResponse | None:
        def read(db: sqlite3.Connection) -> list[Any]:
            return db.execute(RESPONSE_CHAIN, (tenant, response_id)).fetchall()

        return _stored_response(tenant, await self._read(read))

    # -- experiments ------------------------------------------------------------------

    async def record_outcome(self, outcome: OutcomeRecord) -> None:
        row = (
            outcome.tenant, outcome.kind, outcome.target, int(outcome.success), outcome.score,
            outcome.created,
        )  # fmt: skip

        def put(db: sqlite3.Connection) -> None:
            db.execute(OUTCOME_PUT, row)

        await self._apply(put)

    async def has_request(self, tenant: str, request_id: str) -> bool:
        def read(db: sqlite3.Connection) -> bool:
            return db.execute(REQUEST_EXISTS, (request_id, tenant)).fetchone() is not None

        return await self._read(read)

    async def experiment_units(
        self, name: str, *, unit: str, runs: bool, since: float = 0.0
    ) -> list[tuple[Any, ...]]:
        sql = units_query(unit, runs=runs)
        span = (f"{name}:", f"{name};", since)

        def read(db: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return [tuple(row) for row in db.execute(sql, span)]

        return await self._read(read)

    async def experiment_state(self, name: str) -> ExperimentState | None:
        def read(db: sqlite3.Connection) -> Any:
            return db.execute(EXPERIMENT_STATE_GET, (name,)).fetchone()

        row = await self._read(read)
        if row is None:
            return None
        return ExperimentState(
            name=name, stopped=tuple(orjson.loads(row[0])), promoted=row[1], verdict=row[2]
        )

    async def set_experiment_state(self, state: ExperimentState) -> None:
        row = (
            state.name, orjson.dumps(list(state.stopped)).decode(), state.promoted,
            state.verdict, state.updated,
        )  # fmt: skip

        def put(db: sqlite3.Connection) -> None:
            db.execute(EXPERIMENT_STATE_PUT, row)

        await self._apply(put)

    # -- arrivals ----------------------------------------------------------------------

    async def add_arrivals(
        self, counts: Mapping[int, int], *, forget_before: int | None = None
    ) -> None:
        def add(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(ADD_ARRIVALS, sorted(counts.items()))
                if forget_before is not None:
                    db.execute("DELETE FROM arrivals WHERE start < ?", (forget_before,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        if counts or forget_before is not None:
            await self._apply(add)

    async def arrivals(self, *, since: int) -> dict[int, int]:
        def read(db: sqlite3.Connection) -> list[Any]:
            return db.execute(
                "SELECT start, count FROM arrivals WHERE start >= ? ORDER BY start", (since,)
            ).fetchall()

        return {int(start): int(count) for start, count in await self._read(read)}

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            await self._reader.stop()
        # Last: closing the last connection checkpoints the WAL into the file.
        await self._writer.stop()


def _ledger_rows(entries: Sequence[LedgerEntry]) -> bytes:
    """The rows of `entries` as a JSON fragment (an array without its brackets)."""
    return orjson.dumps([_ledger_tuple(e) for e in entries])[1:-1]


def _ledger_tuple(e: LedgerEntry) -> tuple[Any, ...]:
    """The columns of `e`'s ledger row, its tags as JSON text (what the JSON path's
    `json_extract` makes of them too)."""
    return (
        e.request_id, e.tenant, e.model, e.deployment, e.upstream_model,
        e.prompt_tokens, e.completion_tokens, e.cached_tokens, e.cost_usd,
        int(e.estimated), e.latency_s, e.created, e.cache, e.saved_usd, e.saved_s,
        int(e.open), e.client_request_id, e.kind, e.key_label, e.route,
        e.route_reason, e.run_id, e.agent, e.session, e.end_user,
        orjson.dumps(e.tags).decode() if e.tags else "[]", e.variant,
    )  # fmt: skip


_ROW_BYTES = 512  # what a ledger row counts toward a batch's size cap


def _run_row(run: RunRecord) -> tuple[Any, ...]:
    return (
        run.run_id, run.tenant, run.agent, run.session, run.status, run.input, run.output,
        run.error, run.pause_reason, run.steps, run.prompt_tokens, run.completion_tokens,
        run.cost_usd, run.message_count, run.limits, run.created, run.updated,
    )  # fmt: skip


def _tool_row(call: ToolCallRecord) -> tuple[Any, ...]:
    return (
        call.tenant, call.run_id, call.call_id, call.name, call.arguments, call.status,
        call.idempotency_key, call.result, call.reason, call.updated,
    )  # fmt: skip


def _key_row(key: ApiKeyRecord) -> tuple[Any, ...]:
    models = None if key.models is None else orjson.dumps(list(key.models)).decode()
    return (
        key.key_id, key.digest, key.tenant, key.name, key.rpm, key.tpm, key.priority,
        models, key.created, key.revoked_at,
    )  # fmt: skip


def _key_record(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row[0],
        digest=bytes(row[1]),
        tenant=row[2],
        name=row[3],
        rpm=row[4],
        tpm=row[5],
        priority=row[6],
        models=None if row[7] is None else tuple(orjson.loads(row[7])),
        created=row[8],
        revoked_at=row[9],
    )


def _cache_entry(row: Any) -> CacheEntryRecord:
    return CacheEntryRecord(
        id=row[0],
        tier=row[1],
        tenant=row[2],
        partition=row[3],
        model=row[4],
        text=row[5],
        vector=bytes(row[6]),
        payload=bytes(row[7]),
        created=row[8],
        expires=row[9],
        threshold=row[10],
    )


def _stored_response(tenant: str, chain: Sequence[Any]) -> StoredResponse | None:
    """The response of a chain's rows (oldest first; the response itself last)."""
    if not chain:
        return None
    conversation: list[dict[str, Any]] = []
    for row in chain:
        conversation.extend(orjson.loads(row[5]))
    last = chain[-1]
    record = ResponseRecord(
        response_id=last[1],
        tenant=tenant,
        previous_response_id=last[2],
        model=last[3],
        created=last[4],
        messages=orjson.loads(last[5]),
        body=orjson.loads(last[6]),
    )
    return StoredResponse(record=record, conversation=conversation)


def _nothing(db: sqlite3.Connection) -> None:
    del db


def _size(parts: Sequence[Part]) -> int:
    return sum(len(payload) for _, payload in parts)


def _scalar(sql: str, args: tuple[Any, ...]) -> Callable[[sqlite3.Connection], Any]:
    """A read of the first column of a query's one row."""

    def read(db: sqlite3.Connection) -> Any:
        row = db.execute(sql, args).fetchone()
        return None if row is None else row[0]

    return read

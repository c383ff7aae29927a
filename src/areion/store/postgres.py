"""The shared store: PostgreSQL, for replicas that must see one ledger and one set of runs.

Same behaviour as `SQLiteStore`, so either passes the same contract tests: writes
are group-committed (`postgres_batch`: whatever arrives while a batch is in flight
goes into the next one, as one call of the `areion_write` function); reads and the
rare writes with SQL of their own (keys, semantic-tier entries) are single
statements on pooled connections (`postgres_pool`). Records become rows here;
messages and events are stored as the JSON text orjson makes of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import asyncpg
import orjson

from areion.errors import FencedError
from areion.store.experiments_sql import (
    EXPERIMENT_STATE_GET,
    EXPERIMENT_STATE_PUT,
    OUTCOME_PUT,
    REQUEST_EXISTS,
    numbered,
    units_query,
)
from areion.store.postgres_batch import (
    CACHE,
    CALLS,
    CLOSING,
    EVENTS,
    LEDGER,
    MESSAGES,
    NEW_RUNS,
    RUNS,
    SUMMARIES,
    TURNS,
    Batcher,
    Write,
)
from areion.store.postgres_pool import Connection, Connector, postgres_settings
from areion.store.postgres_schema import (
    API_KEY_COLUMNS,
    CACHE_ENTRY_COLUMNS,
    FENCED,
    LEDGER_COLUMNS,
    RUN_COLUMNS,
    UNKNOWN_RUN,
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
from areion.types import LedgerEntry

__all__ = ["PostgresStore"]

# Without a tenant (an operator's read), the oldest run of that id. The transcript and
# the tool calls come back in the same row: one round trip.
_LOAD_RUN = f"""
WITH run AS (
    SELECT * FROM runs WHERE run_id = $1 AND ($2::text IS NULL OR tenant = $2)
    ORDER BY created LIMIT 1
)
SELECT {RUN_COLUMNS},
    (SELECT string_agg(m.message, ',' ORDER BY m.seq) FROM run_messages AS m
     WHERE m.tenant = run.tenant AND m.run_id = run.run_id),
    (SELECT json_agg(json_build_array(c.call_id, c.name, c.arguments, c.status,
                                      c.idempotency_key, c.result, c.reason, c.updated))
     FROM tool_calls AS c WHERE c.tenant = run.tenant AND c.run_id = run.run_id)
FROM run
"""

_RUN_EVENTS = """
SELECT string_agg('[' || seq || ',' || event || ']', ',' ORDER BY seq) FROM run_events
WHERE run_id = $1 AND seq > $2 AND tenant = coalesce(
    $3::text, (SELECT tenant FROM runs WHERE run_id = $1 ORDER BY created LIMIT 1))
"""

# Entries are followed by id (`cache_entries(after=...)`), so ids must become visible
# in order: the advisory lock, held until the statement commits, is taken before the
# row gets its id, so one insert's id is never committed after a higher one.
_ADD_CACHE_ENTRY = """
WITH locked AS (
    SELECT pg_advisory_xact_lock(hashtext('areion-cache-entries:' || current_schema()))
), swept AS (
    DELETE FROM cache_entries WHERE expires <= $11
)
INSERT INTO cache_entries (tier, tenant, partition, model, text, vector, payload, created,
                           expires, threshold)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 FROM locked
RETURNING id
"""

# One statement: two revocations of one key cannot both succeed. An id wins over a
# name (names never look like ids: see control.keys).
_REVOKE_KEY = f"""
UPDATE api_keys SET revoked_at = $1 WHERE revoked_at IS NULL
AND ($3::text IS NULL OR tenant = $3) AND key_id = coalesce(
    (SELECT key_id FROM api_keys WHERE key_id = $2),
    (SELECT key_id FROM api_keys WHERE name = $2 AND revoked_at IS NULL))
RETURNING {API_KEY_COLUMNS}
"""


# One statement: the previous response is checked by the insert itself (no row
# returned: the tenant has no such previous response; responses are never deleted).
_ADD_ARRIVALS = """
INSERT INTO arrivals (start, count)
SELECT * FROM unnest($1::bigint[], $2::bigint[])
ON CONFLICT (start) DO UPDATE SET count = arrivals.count + excluded.count
"""

_PUT_RESPONSE = """
INSERT INTO responses (tenant, response_id, previous_response_id, model, created, messages, body)
SELECT $1, $2, $3, $4, $5, $6, $7
WHERE $3::text IS NULL OR EXISTS (SELECT 1 FROM responses WHERE tenant = $1 AND response_id = $3)
RETURNING true
"""

# A response and every one before it in its chain, oldest first (the response itself
# last, the only row whose body is read).
_RESPONSE_CHAIN = """
WITH RECURSIVE chain AS (
    SELECT 0 AS depth, response_id, previous_response_id, model, created, messages, body
    FROM responses WHERE tenant = $1 AND response_id = $2
    UNION ALL
    SELECT chain.depth + 1, r.response_id, r.previous_response_id, r.model, r.created,
           r.messages, NULL::text
    FROM responses AS r JOIN chain ON r.tenant = $1 AND r.response_id = chain.previous_response_id
)
SELECT response_id, previous_response_id, model, created, messages, body
FROM chain ORDER BY depth DESC
"""


_OUTCOME_PUT = numbered(OUTCOME_PUT)
_REQUEST_EXISTS = numbered(REQUEST_EXISTS)
_EXPERIMENT_STATE_GET = numbered(EXPERIMENT_STATE_GET)
_EXPERIMENT_STATE_PUT = numbered(EXPERIMENT_STATE_PUT)


class PostgresStore:
    """`Store` over one PostgreSQL database (one schema of it)."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        connect_timeout: float | None = None,
        command_timeout: float | None = None,
        pool_size: int | None = None,
    ) -> None:
        overrides: dict[str, Any] = {
            name: value
            for name, value in (
                ("connect_timeout", connect_timeout),
                ("command_timeout", command_timeout),
                ("pool_size", pool_size),
            )
            if value is not None
        }
        self.settings = postgres_settings(url, **overrides)
        # Unix time of expiry (tool cache, cache entries); a test's manual clock moves it.
        self._clock = clock
        self._connector = Connector(self.settings)
        self._batcher = Batcher(self._connector, clock=clock)
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        return cls(url)

    async def _write(self, write: Write) -> None:
        if self._closed:
            raise RuntimeError("the store is closed")
        await self._batcher.write(write)

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async def fetch(connection: Connection) -> list[asyncpg.Record]:
            return await connection.fetch(sql, *args)

        return await self._connector.run(fetch, again=True)

    async def _fetchval(self, sql: str, *args: Any, again: bool = True) -> Any:
        async def fetchval(connection: Connection) -> Any:
            return await connection.fetchval(sql, *args)

        return await self._connector.run(fetchval, again=again)

    async def _fetchrow(self, sql: str, *args: Any, again: bool = True) -> asyncpg.Record | None:
        async def fetchrow(connection: Connection) -> asyncpg.Record | None:
            return await connection.fetchrow(sql, *args)

        return await self._connector.run(fetchrow, again=again)

    # -- ledger ---------------------------------------------------------------------

    async def append_ledger(
        self, entries: Sequence[LedgerEntry], *, closing: Sequence[LedgerEntry] = ()
    ) -> None:
        write: Write = {}
        if entries:
            write[LEDGER] = [_ledger_row(e) for e in entries]
        if closing:
            write[CLOSING] = [_ledger_row(e) for e in closing]
        if write:
            await self._write(write)

    async def ledger(
        self, *, tenant: str | None = None, request_id: str | None = None, limit: int = 1000
    ) -> list[LedgerEntry]:
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("tenant", tenant), ("request_id", request_id)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        sql = f"SELECT {LEDGER_COLUMNS} FROM ledger"
        if where:
            sql += " WHERE " + " AND ".join(where)
        args.append(limit)
        sql += f" ORDER BY created DESC LIMIT ${len(args)}"
        return [_ledger_entry(row) for row in await self._fetch(sql, *args)]

    async def spend(self, query: SpendQuery) -> list[tuple[Any, ...]]:
        sql, args = spend_sql(query, "postgres")
        return [tuple(row.values()) for row in await self._fetch(sql, *args)]

    async def run_stats(
        self, *, since: float, until: float, tenant: str | None = None
    ) -> list[tuple[str, str, float, int]]:
        rows = await self._fetch(
            "SELECT agent, status, cost_usd, steps FROM runs "
            "WHERE created >= $1 AND created < $2 AND ($3::text IS NULL OR tenant = $3)",
            since,
            until,
            tenant,
        )
        return [(row[0], row[1], float(row[2]), int(row[3])) for row in rows]

    async def spend_by_tenant(self, *, since: float) -> dict[str, float]:
        rows = await self._fetch(
            "SELECT tenant, sum(cost_usd) FROM ledger WHERE created >= $1 GROUP BY tenant", since
        )
        return {row[0]: float(row[1] or 0.0) for row in rows}

    async def run_page(self, query: RunPageQuery) -> list[RunRow]:
        sql, args = run_page_sql(query, "postgres")
        return [RunRow.of(row) for row in await self._fetch(sql, *args)]

    async def run_calls(
        self, run_id: str, *, tenant: str, since: float, until: float
    ) -> list[RunCall]:
        sql, args = run_calls_sql(
            run_id, tenant=tenant, since=since, until=until, dialect="postgres"
        )
        return [RunCall.of(row) for row in await self._fetch(sql, *args)]

    # -- agent runs -------------------------------------------------------------------

    async def create_run(self, run: RunRecord, messages: Sequence[dict[str, Any]]) -> None:
        write: Write = {NEW_RUNS: [_run_row(run, 0)]}
        if messages:
            write[MESSAGES] = _message_rows(run, 0, messages)
        try:
            await self._write(write)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "runs_pkey":
                raise ValueError(
                    f"run {run.run_id!r} of tenant {run.tenant!r} already exists"
                ) from exc
            raise

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        run = checkpoint.run
        first = checkpoint.first_message()
        write: Write = {RUNS: [_run_row(run, checkpoint.fence)]}
        if checkpoint.messages:
            write[MESSAGES] = _message_rows(run, first, checkpoint.messages)
        if checkpoint.events:
            write[EVENTS] = [
                (run.tenant, run.run_id, orjson.dumps(event).decode())
                for event in checkpoint.events
            ]
        if checkpoint.tool_calls:
            write[CALLS] = [_tool_row(call) for call in checkpoint.tool_calls]
        try:
            await self._write(write)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "run_messages_pkey":
                raise ValueError(
                    f"checkpoint of run {run.run_id!r}: messages from seq {first} on are "
                    "already stored (message_count is stale)"
                ) from exc
            raise
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == UNKNOWN_RUN:
                raise ValueError(
                    f"checkpoint: no run {run.run_id!r} of tenant {run.tenant!r}"
                ) from exc
            if exc.sqlstate == FENCED:
                raise FencedError(
                    f"run {run.run_id!r} of tenant {run.tenant!r} was taken over by another "
                    f"replica (this checkpoint's fence {checkpoint.fence} is lower than the "
                    "run's); this one must stop driving it"
                ) from exc
            raise

    async def record_tool_call(self, record: ToolCallRecord) -> None:
        await self._write({CALLS: [_tool_row(record)]})

    async def load_run(self, run_id: str, *, tenant: str | None = None) -> RunSnapshot | None:
        row = await self._fetchrow(_LOAD_RUN, run_id, tenant)
        if row is None:
            return None
        values = list(row.values())
        messages, calls = values[17], values[18]
        fields = dict(zip(RUN_COLUMNS.split(", "), values[:17], strict=True))
        fields["limits"] = orjson.loads(fields["limits"])
        record = RunRecord(**fields)
        return RunSnapshot(
            run=record,
            messages=orjson.loads("[" + messages + "]") if messages is not None else [],
            tool_calls={
                call[0]: ToolCallRecord(
                    tenant=record.tenant,
                    run_id=record.run_id,
                    call_id=call[0],
                    name=call[1],
                    arguments=call[2],
                    status=call[3],
                    idempotency_key=call[4],
                    result=call[5],
                    reason=call[6],
                    updated=float(call[7]),
                )
                for call in (orjson.loads(calls) if calls is not None else ())
            },
        )

    async def stale_runs(self, *, updated_before: float, limit: int = 100) -> list[tuple[str, str]]:
        rows = await self._fetch(
            "SELECT tenant, run_id FROM runs WHERE status = 'running' AND updated < $1 "
            "ORDER BY updated LIMIT $2",
            updated_before,
            limit,
        )
        return [(row[0], row[1]) for row in rows]

    async def run_events(
        self, run_id: str, *, after: int = -1, tenant: str | None = None
    ) -> list[tuple[int, dict[str, Any]]]:
        text = await self._fetchval(_RUN_EVENTS, run_id, after, tenant)
        if text is None:
            return []
        return [(seq, event) for seq, event in orjson.loads("[" + text + "]")]

    # -- sessions -------------------------------------------------------------------

    async def session_turns(
        self, tenant: str, session: str, *, after: int = -1
    ) -> list[SessionTurn]:
        rows = await self._fetch(
            "SELECT seq, role, content, tokens FROM session_turns "
            "WHERE tenant = $1 AND session = $2 AND seq > $3 ORDER BY seq",
            tenant,
            session,
            after,
        )
        return [SessionTurn(seq=r[0], role=r[1], content=r[2], tokens=r[3]) for r in rows]

    async def append_turns(self, tenant: str, session: str, turns: Sequence[SessionTurn]) -> None:
        if not turns:
            return
        rows = [(tenant, session, t.seq, t.role, t.content, t.tokens) for t in turns]
        try:
            await self._write({TURNS: rows})
        except asyncpg.UniqueViolationError as exc:
            seqs = [t.seq for t in turns]
            raise ValueError(
                f"session {session!r} of tenant {tenant!r} already has a turn among seqs {seqs}"
            ) from exc

    async def session_summaries(self, tenant: str, session: str) -> list[SessionSummary]:
        rows = await self._fetch(
            "SELECT first_seq, last_seq, text, tokens FROM session_summaries "
            "WHERE tenant = $1 AND session = $2 ORDER BY first_seq, id",
            tenant,
            session,
        )
        return [SessionSummary(first_seq=r[0], last_seq=r[1], text=r[2], tokens=r[3]) for r in rows]

    async def add_summary(self, tenant: str, session: str, summary: SessionSummary) -> None:
        row = (tenant, session, summary.first_seq, summary.last_seq, summary.text, summary.tokens)
        await self._write({SUMMARIES: [row]})

    # -- memoized tool results ----------------------------------------------------------

    async def cache_get(self, key: str) -> bytes | None:
        value: bytes | None = await self._fetchval(
            "SELECT value FROM tool_cache WHERE key = $1 AND expires > $2", key, self._clock()
        )
        return value

    async def cache_put(self, key: str, value: bytes, *, ttl: float) -> None:
        await self._write({CACHE: [(key, bytes(value), self._clock() + ttl)]})

    # -- semantic tiers -----------------------------------------------------------------

    async def add_cache_entry(self, entry: CacheEntryRecord) -> int:
        entry_id: int = await self._fetchval(
            _ADD_CACHE_ENTRY,
            entry.tier, entry.tenant, entry.partition, entry.model, entry.text,
            bytes(entry.vector), bytes(entry.payload), entry.created, entry.expires,
            entry.threshold, self._clock(),
            again=False,
        )  # fmt: skip
        return entry_id

    async def cache_entries(
        self, tier: CacheTier, *, after: int = 0, limit: int = 10_000
    ) -> list[CacheEntryRecord]:
        rows = await self._fetch(
            f"SELECT {CACHE_ENTRY_COLUMNS} FROM cache_entries "
            "WHERE tier = $1 AND id > $2 AND expires > $3 ORDER BY id LIMIT $4",
            tier,
            after,
            self._clock(),
            limit,
        )
        return [CacheEntryRecord(**dict(row.items())) for row in rows]

    async def drop_cache_entries(
        self,
        tier: CacheTier,
        tenant: str,
        *,
        model: str | None = None,
        created_before: float | None = None,
        entry: int | None = None,
    ) -> list[int]:
        async def delete(connection: Connection) -> list[asyncpg.Record]:
            return await connection.fetch(
                "DELETE FROM cache_entries WHERE tier = $1 AND tenant = $2 "
                "AND ($3::text IS NULL OR model = $3) "
                "AND ($4::double precision IS NULL OR created <= $4) "
                "AND ($5::bigint IS NULL OR id = $5) RETURNING id",
                tier,
                tenant,
                model,
                created_before,
                entry,
            )

        return sorted(row[0] for row in await self._connector.run(delete))

    async def set_cache_threshold(self, tier: CacheTier, entry: int, threshold: float) -> None:
        await self._fetchval(
            "UPDATE cache_entries SET threshold = $1 WHERE tier = $2 AND id = $3",
            threshold,
            tier,
            entry,
        )

    # -- API keys -----------------------------------------------------------------------

    async def create_key(self, record: ApiKeyRecord) -> None:
        try:
            await self._fetchval(
                f"INSERT INTO api_keys ({API_KEY_COLUMNS}) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                *_key_row(record),
                again=False,
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "api_keys_active_name":
                raise ValueError(f"an active key is already named {record.name!r}") from exc
            raise ValueError(f"key {record.key_id!r} already exists") from exc

    async def keys(self, *, tenant: str | None = None) -> list[ApiKeyRecord]:
        rows = await self._fetch(
            f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE $1::text IS NULL OR tenant = $1 "
            "ORDER BY created, key_id",
            tenant,
        )
        return [_key_record(row) for row in rows]

    async def key_by_digest(self, digest: bytes) -> ApiKeyRecord | None:
        row = await self._fetchrow(
            f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE digest = $1", bytes(digest)
        )
        return None if row is None else _key_record(row)

    async def revoke_key(
        self, name_or_id: str, *, tenant: str | None = None, at: float | None = None
    ) -> ApiKeyRecord | None:
        when = time.time() if at is None else at
        row = await self._fetchrow(_REVOKE_KEY, when, name_or_id, tenant, again=False)
        return None if row is None else _key_record(row)

    # -- Responses-API responses --------------------------------------------------------

    async def put_response(self, record: ResponseRecord) -> None:
        try:
            inserted = await self._fetchval(
                _PUT_RESPONSE,
                record.tenant, record.response_id, record.previous_response_id, record.model,
                record.created, orjson.dumps(record.messages).decode(),
                orjson.dumps(record.body).decode(),
                again=False,
            )  # fmt: skip
        except asyncpg.UniqueViolationError as exc:
            raise ValueError(
                f"response {record.response_id!r} of tenant {record.tenant!r} already exists"
            ) from exc
        if not inserted:
            raise ValueError(
                f"tenant {record.tenant!r} has no response {record.previous_response_id!r} "
                "to continue"
            )

    async def get_response(self, tenant: str, response_id: str) -> StoredResponse | None:
        chain = await self._fetch(_RESPONSE_CHAIN, tenant, response_id)
        if not chain:
            return None
        conversation: list[dict[str, Any]] = []
        for row in chain:
            conversation.extend(orjson.loads(row[4]))
        last = chain[-1]
        record = ResponseRecord(
            response_id=last[0],
            tenant=tenant,
            previous_response_id=last[1],
            model=last[2],
            created=last[3],
            messages=orjson.loads(last[4]),
            body=orjson.loads(last[5]),
        )
        return StoredResponse(record=record, conversation=conversation)

    # -- experiments ------------------------------------------------------------------

    async def record_outcome(self, outcome: OutcomeRecord) -> None:
        await self._fetchval(
            _OUTCOME_PUT,
            outcome.tenant, outcome.kind, outcome.target, int(outcome.success), outcome.score,
            outcome.created,
        )  # fmt: skip

    async def has_request(self, tenant: str, request_id: str) -> bool:
        return await self._fetchval(_REQUEST_EXISTS, request_id, tenant) is not None

    async def experiment_units(
        self, name: str, *, unit: str, runs: bool, since: float = 0.0
    ) -> list[tuple[Any, ...]]:
        rows = await self._fetch(
            numbered(units_query(unit, runs=runs)), f"{name}:", f"{name};", since
        )
        return [tuple(row) for row in rows]

    async def experiment_state(self, name: str) -> ExperimentState | None:
        row = await self._fetchrow(_EXPERIMENT_STATE_GET, name)
        if row is None:
            return None
        return ExperimentState(
            name=name, stopped=tuple(orjson.loads(row[0])), promoted=row[1], verdict=row[2]
        )

    async def set_experiment_state(self, state: ExperimentState) -> None:
        await self._fetchval(
            _EXPERIMENT_STATE_PUT,
            state.name, orjson.dumps(list(state.stopped)).decode(), state.promoted,
            state.verdict, state.updated,
        )  # fmt: skip

    # -- arrivals ----------------------------------------------------------------------

    async def add_arrivals(
        self, counts: Mapping[int, int], *, forget_before: int | None = None
    ) -> None:
        if not counts and forget_before is None:
            return
        starts, added = zip(*sorted(counts.items()), strict=True) if counts else ((), ())

        async def add(connection: Connection) -> None:
            async with connection.transaction():
                await connection.execute(_ADD_ARRIVALS, list(starts), list(added))
                if forget_before is not None:
                    await connection.execute("DELETE FROM arrivals WHERE start < $1", forget_before)

        # Not sent again: adding is not idempotent (a lost reply would count twice).
        await self._connector.run(add, again=False)

    async def arrivals(self, *, since: int) -> dict[int, int]:
        rows = await self._fetch(
            "SELECT start, count FROM arrivals WHERE start >= $1 ORDER BY start", since
        )
        return {int(row[0]): int(row[1]) for row in rows}

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._batcher.aclose()
        await self._connector.aclose()


def _ledger_row(e: LedgerEntry) -> tuple[Any, ...]:
    return (
        e.request_id, e.tenant, e.model, e.deployment, e.upstream_model, e.prompt_tokens,
        e.completion_tokens, e.cached_tokens, e.cost_usd, e.estimated, e.latency_s, e.created,
        e.cache, e.saved_usd, e.saved_s, e.open, e.client_request_id, e.kind, e.key_label,
        e.route, e.route_reason, e.run_id, e.agent, e.session, e.end_user,
        orjson.dumps(e.tags).decode(), e.variant,
    )  # fmt: skip


def _ledger_entry(row: asyncpg.Record) -> LedgerEntry:
    fields = dict(row.items())
    fields["tags"] = tuple(orjson.loads(fields["tags"]))
    return LedgerEntry(**fields)


def _run_row(run: RunRecord, fence: int) -> tuple[Any, ...]:
    return (
        run.run_id, run.tenant, run.agent, run.session, run.status, run.input, run.output,
        run.error, run.pause_reason, run.steps, run.prompt_tokens, run.completion_tokens,
        run.cost_usd, run.message_count, orjson.dumps(run.limits).decode(), run.created,
        run.updated, fence,
    )  # fmt: skip


def _message_rows(
    run: RunRecord, first: int, messages: Sequence[dict[str, Any]]
) -> list[tuple[Any, ...]]:
    return [
        (run.tenant, run.run_id, first + i, orjson.dumps(message).decode())
        for i, message in enumerate(messages)
    ]


def _tool_row(call: ToolCallRecord) -> tuple[Any, ...]:
    return (
        call.tenant, call.run_id, call.call_id, call.name, call.arguments, call.status,
        call.idempotency_key, call.result, call.reason, call.updated,
    )  # fmt: skip


def _key_row(key: ApiKeyRecord) -> tuple[Any, ...]:
    models = None if key.models is None else orjson.dumps(list(key.models)).decode()
    return (
        key.key_id, bytes(key.digest), key.tenant, key.name, key.rpm, key.tpm, key.priority,
        models, key.created, key.revoked_at,
    )  # fmt: skip


def _key_record(row: asyncpg.Record) -> ApiKeyRecord:
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

"""The SQLite store's tables, and the one statement that writes a whole batch.

Every write (a checkpoint, a ledger batch, a cache entry...) is a few JSON
fragments, one per kind of row. The writer thread joins the fragments of every
write waiting in its queue into one JSON array per kind and inserts them all with
ONE statement: an INSERT into a temporary view whose INSTEAD OF triggers fan the
arrays out into the tables with `json_each` (the ledger's rows, their rollups and the
closing of open rows in triggers of their own, which run only when a batch has them).
One statement is one `sqlite3_step`, so the writer thread gives up and takes back the GIL once per
batch instead of once per row or per table, and SQLite does the rest in C
without the GIL. A statement is atomic on its own, so in autocommit mode that
single statement is also the batch's whole transaction.
"""

from __future__ import annotations

from typing import Any

from areion.jobs.schema import SQLITE_TABLES as JOB_TABLES
from areion.store.experiments_sql import EXPERIMENT_TABLES, VARIANT_INDEX
from areion.store.rollups import HISTOGRAM, ROLLUP_KEY, rollup_upsert

__all__ = [
    "ADD_ARRIVALS",
    "API_KEY_COLUMNS",
    "BATCH_VIEW",
    "CACHE",
    "CACHE_ENTRY_COLUMNS",
    "CACHE_GET",
    "CLOSE_LEDGER",
    "CLOSING_AT",
    "CLOSING_ROLLED_AT",
    "EVENTS",
    "FENCED_RUN",
    "FILL_ROLLUPS",
    "JSON_KINDS",
    "LEDGER",
    "LEDGER_CLOSE",
    "LEDGER_CLOSINGS",
    "LEDGER_COLUMNS",
    "LEDGER_ROLLED_AT",
    "LEDGER_ROWS",
    "LEDGER_VALUES",
    "LOAD_RUN",
    "LOAD_TOOL_CALLS",
    "MESSAGES",
    "NEW_RUNS",
    "OPENED_AT",
    "PUT_RESPONSE",
    "RESPONSE_CHAIN",
    "RUNS",
    "RUN_EVENTS",
    "RUN_TABLES",
    "SESSION_SUMMARIES",
    "SESSION_TURNS",
    "SUMMARIES",
    "TABLES",
    "TOOL_CALLS",
    "TURNS",
    "UNKNOWN_RUN",
    "WRITE_BATCH",
    "migrate",
]

# Kinds of fragment a write is made of; each is one column of the batch view.
NEW_RUNS = 0  # [run row]                     create_run: plain INSERT, duplicates fail
RUNS = 1  # [run row, fence]                  checkpoint: the run must exist for its tenant
MESSAGES = 2  # [tenant, run_id, first_seq, [message, ...]]
EVENTS = 3  # [tenant, run_id, [event, ...]]  seqs assigned here, after the run's last
TOOL_CALLS = 4  # [tool call row]             insert or replace
TURNS = 5  # [tenant, session, seq, role, content, tokens]
SUMMARIES = 6  # [tenant, session, first_seq, last_seq, text, tokens]
LEDGER = 7  # [ledger row]
LEDGER_CLOSE = 8  # [ledger row]               the real figures of an open row
JSON_KINDS = 9
CACHE = 9  # (key, value, expires): merged by the writer, values go as one BLOB
LEDGER_ROWS = 10  # [ledger row tuple]: a billed call's rows, bound as parameters (below)
LEDGER_CLOSINGS = 11  # [ledger row tuple]: the real figures of open rows, bound likewise

UNKNOWN_RUN = "areion: checkpoint of a run that does not exist for its tenant"
FENCED_RUN = "areion: checkpoint with a fence lower than the run has seen"

_RUN_COLUMNS = (
    "run_id",
    "tenant",
    "agent",
    "session",
    "status",
    "input",
    "output",
    "error",
    "pause_reason",
    "steps",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "message_count",
    "limits",
    "created",
    "updated",
)
# Columns a checkpoint never changes stay out of the UPDATE, so the tenant index
# is not rewritten on every step.
_RUN_FIXED = ("run_id", "tenant", "created")

_TOOL_COLUMNS = (
    "tenant",
    "run_id",
    "call_id",
    "name",
    "arguments",
    "status",
    "idempotency_key",
    "result",
    "reason",
    "updated",
)

_TOOL_KEY = ("tenant", "run_id", "call_id")

LEDGER_COLUMNS = (
    "request_id, tenant, model, deployment, upstream_model, prompt_tokens, "
    "completion_tokens, cached_tokens, cost_usd, estimated, latency_s, created, "
    "cache, saved_usd, saved_s, open, client_request_id, kind, key_label, route, "
    "route_reason, run_id, agent, session, end_user, tags, variant"
)
_LEDGER_WIDTH = 27  # columns of a ledger row, and fields of its JSON array
_LEDGER_NAMES = [column.strip() for column in LEDGER_COLUMNS.split(",")]

# Columns added after the first release of the ledger table: (name, declaration).
# A database made before them gets them on open (see `migrate`).
LEDGER_ADDED = (
    ("cache", "TEXT NOT NULL DEFAULT ''"),
    ("saved_usd", "REAL NOT NULL DEFAULT 0"),
    ("saved_s", "REAL NOT NULL DEFAULT 0"),
    ("open", "INTEGER NOT NULL DEFAULT 0"),
    ("client_request_id", "TEXT NOT NULL DEFAULT ''"),
    # Attribution (run, agent, session, end user, key, route, tags, variant).
    ("kind", "TEXT NOT NULL DEFAULT 'chat'"),
    ("key_label", "TEXT NOT NULL DEFAULT ''"),
    ("route", "TEXT NOT NULL DEFAULT ''"),
    ("route_reason", "TEXT NOT NULL DEFAULT ''"),
    ("run_id", "TEXT NOT NULL DEFAULT ''"),
    ("agent", "TEXT NOT NULL DEFAULT ''"),
    ("session", "TEXT NOT NULL DEFAULT ''"),
    ("end_user", "TEXT NOT NULL DEFAULT ''"),
    ("tags", "TEXT NOT NULL DEFAULT '[]'"),
    ("variant", "TEXT NOT NULL DEFAULT ''"),
)

_LEDGER_TABLES = (
    """
CREATE TABLE IF NOT EXISTS ledger (
    request_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    deployment TEXT NOT NULL,
    upstream_model TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    estimated INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    created REAL NOT NULL,
    cache TEXT NOT NULL DEFAULT '',      -- '' for a model call, else the cache tier that answered
    saved_usd REAL NOT NULL DEFAULT 0,   -- what a cache hit saved
    saved_s REAL NOT NULL DEFAULT 0,
    open INTEGER NOT NULL DEFAULT 0,      -- 1: a stream in progress, priced at its bound
    client_request_id TEXT NOT NULL DEFAULT '', -- the client's x-request-id, if it sent one
    kind TEXT NOT NULL DEFAULT 'chat',   -- chat | embedding | tool
    key_label TEXT NOT NULL DEFAULT '',
    route TEXT NOT NULL DEFAULT '',      -- the route asked for, if any
    route_reason TEXT NOT NULL DEFAULT '',
    run_id TEXT NOT NULL DEFAULT '',     -- the agent run that made the call
    agent TEXT NOT NULL DEFAULT '',
    session TEXT NOT NULL DEFAULT '',
    end_user TEXT NOT NULL DEFAULT '',   -- the request's user, or x-areion-user
    tags TEXT NOT NULL DEFAULT '[]',     -- JSON array of x-areion-tags
    variant TEXT NOT NULL DEFAULT ''     -- the experiment variant, if any
);
CREATE INDEX IF NOT EXISTS ledger_tenant ON ledger (tenant, created);
CREATE INDEX IF NOT EXISTS ledger_request ON ledger (request_id);
CREATE INDEX IF NOT EXISTS ledger_created ON ledger (created);

-- The ledger summed per UTC hour (period 3600) and day (86400), kept by the batch
-- trigger in the statement that inserts the rows (see store/rollups.py).
CREATE TABLE IF NOT EXISTS spend_rollup (
    period INTEGER NOT NULL,
    period_start INTEGER NOT NULL,       -- Unix time
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    key_label TEXT NOT NULL,
    route TEXT NOT NULL,
    agent TEXT NOT NULL,
    cache TEXT NOT NULL,
    calls INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    cache_hits INTEGER NOT NULL,
    saved_usd REAL NOT NULL,
    -- calls per latency bucket (rollups.LATENCY_EDGES), h0 .. h32
"""
    + "".join(f"    {column} INTEGER NOT NULL DEFAULT 0,\n" for column in HISTOGRAM)
    + """
    PRIMARY KEY (period, period_start, tenant, model, key_label, route, agent, cache)
) WITHOUT ROWID;
"""
)

# Also what `migrate` rebuilds the run tables from: no `;` in its comments.
RUN_TABLES = """
-- A run id is unique within its tenant: each tenant names its runs in its own space,
-- so the same id chosen by two tenants is two runs, and neither learns of the other.
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    agent TEXT NOT NULL,
    session TEXT,
    status TEXT NOT NULL,
    input TEXT NOT NULL,
    output TEXT,
    error TEXT,
    pause_reason TEXT,
    steps INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    message_count INTEGER NOT NULL,
    limits TEXT NOT NULL,          -- JSON object
    created REAL NOT NULL,
    updated REAL NOT NULL,
    fence INTEGER NOT NULL DEFAULT 0,  -- the highest fencing token a checkpoint carried
    PRIMARY KEY (tenant, run_id)
);
CREATE INDEX IF NOT EXISTS runs_tenant ON runs (tenant, created);
CREATE INDEX IF NOT EXISTS runs_created ON runs (created);

CREATE TABLE IF NOT EXISTS run_messages (
    tenant TEXT NOT NULL,
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    message TEXT NOT NULL,         -- JSON object, OpenAI wire shape
    PRIMARY KEY (tenant, run_id, seq)
);

CREATE TABLE IF NOT EXISTS run_events (
    tenant TEXT NOT NULL,
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,           -- JSON object
    PRIMARY KEY (tenant, run_id, seq)
);

CREATE TABLE IF NOT EXISTS tool_calls (
    tenant TEXT NOT NULL,
    run_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    name TEXT NOT NULL,
    arguments TEXT NOT NULL,
    status TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    result TEXT,
    reason TEXT,
    updated REAL NOT NULL,
    PRIMARY KEY (tenant, run_id, call_id)
);
"""

TABLES = (
    _LEDGER_TABLES
    + RUN_TABLES
    + EXPERIMENT_TABLES
    + """
CREATE TABLE IF NOT EXISTS session_turns (
    tenant TEXT NOT NULL,
    session TEXT NOT NULL,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    PRIMARY KEY (tenant, session, seq)
);

CREATE TABLE IF NOT EXISTS session_summaries (
    tenant TEXT NOT NULL,
    session TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    text TEXT NOT NULL,
    tokens INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS session_summaries_order
    ON session_summaries (tenant, session, first_seq);

CREATE TABLE IF NOT EXISTS tool_cache (
    key TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tool_cache_expires ON tool_cache (expires);

-- Entries of the semantic tiers (answers, plans): the store is their source of truth,
-- each process keeps its vector index in memory and loads it from here.
CREATE TABLE IF NOT EXISTS cache_entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tier TEXT NOT NULL,            -- semantic | plan
    tenant TEXT NOT NULL,
    partition TEXT NOT NULL,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    vector BLOB NOT NULL,          -- float32, little-endian
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    threshold REAL                 -- lifted by feedback; NULL: the tier's own
);
CREATE INDEX IF NOT EXISTS cache_entries_tenant ON cache_entries (tier, tenant, created);
CREATE INDEX IF NOT EXISTS cache_entries_expires ON cache_entries (expires);

-- API keys made by `areion keys create` or the admin API. Only the SHA-256 digest of
-- a key is stored; the key itself is shown once, at creation, and never again.
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT NOT NULL PRIMARY KEY,
    digest BLOB NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    rpm INTEGER,
    tpm INTEGER,
    priority TEXT,
    models TEXT,                   -- JSON array, or NULL for every model
    created REAL NOT NULL,
    revoked_at REAL
);
-- A name labels one active key (its rate-limit buckets and errors); a revoked key's
-- name can be given to a new one.
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name ON api_keys (name)
    WHERE revoked_at IS NULL;
CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys (tenant, created);

-- Responses of the Responses API kept for previous_response_id and GET /v1/responses/{id}.
-- Each row holds its own turn only: a conversation is the chain of its previous
-- responses, all of one tenant (a put refuses a previous the tenant does not have).
CREATE TABLE IF NOT EXISTS responses (
    tenant TEXT NOT NULL,
    response_id TEXT NOT NULL,
    previous_response_id TEXT,
    model TEXT NOT NULL,
    created REAL NOT NULL,
    messages TEXT NOT NULL,        -- JSON array of this turn's chat messages
    body TEXT NOT NULL,            -- JSON object: the response as served
    PRIMARY KEY (tenant, response_id)
);

-- Requests that arrived per minute, summed over every replica: what the scaling
-- signal's time-of-day profile is learned from.
CREATE TABLE IF NOT EXISTS arrivals (
    start INTEGER NOT NULL PRIMARY KEY,  -- Unix time of the minute's start
    count INTEGER NOT NULL
);
"""
    + JOB_TABLES
)

CACHE_ENTRY_COLUMNS = (
    "id, tier, tenant, partition, model, text, vector, payload, created, expires, threshold"
)

API_KEY_COLUMNS = "key_id, digest, tenant, name, rpm, tpm, priority, models, created, revoked_at"


# The run tables before run ids were namespaced by tenant, and how each one's rows
# are copied into its new shape (run ids were unique across tenants then).
_RUN_TABLES_V1 = {
    "runs": f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs_v1",
    "run_messages": "SELECT r.tenant, m.run_id, m.seq, m.message FROM run_messages_v1 AS m "
    "JOIN runs_v1 AS r USING (run_id)",
    "run_events": "SELECT r.tenant, e.run_id, e.seq, e.event FROM run_events_v1 AS e "
    "JOIN runs_v1 AS r USING (run_id)",
    "tool_calls": f"SELECT r.tenant, {', '.join('t.' + c for c in _TOOL_COLUMNS[1:])} "
    "FROM tool_calls_v1 AS t JOIN runs_v1 AS r USING (run_id)",
}


def migrate(db: Any) -> None:
    """Bring a database made by an earlier version up to this schema.

    Tables added later (api_keys) need nothing here: `TABLES` creates whatever is
    missing on every open; columns added to an existing table do, and so do the run
    tables, whose keys gained the tenant (SQLite cannot change a primary key in
    place: each table is rebuilt, in one transaction)."""
    present = {row[1] for row in db.execute("PRAGMA table_info(ledger)")}
    for name, declaration in LEDGER_ADDED:
        if name not in present:
            db.execute(f"ALTER TABLE ledger ADD COLUMN {name} {declaration}")
    # Only streams in progress are open: a small index, for closing them.
    db.execute("CREATE INDEX IF NOT EXISTS ledger_open ON ledger (request_id) WHERE open = 1")
    db.execute(VARIANT_INDEX)
    _fill_rollups(db)
    if not _runs_namespaced(db):
        _namespace_runs(db)
    if "fence" not in {row[1] for row in db.execute("PRAGMA table_info(runs)")}:
        db.execute("ALTER TABLE runs ADD COLUMN fence INTEGER NOT NULL DEFAULT 0")


def _fill_rollups(db: Any) -> None:
    """Sum a ledger made before the rollups into them (once: afterwards every row that
    lands adds to them)."""
    if db.execute("SELECT 1 FROM spend_rollup LIMIT 1").fetchone() is not None:
        return
    if db.execute("SELECT 1 FROM ledger LIMIT 1").fetchone() is None:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if db.execute("SELECT 1 FROM spend_rollup LIMIT 1").fetchone() is None:
            db.execute(FILL_ROLLUPS)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _namespace_runs(db: Any) -> None:
    """Rebuild the run tables keyed by (tenant, run_id), in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if not _runs_namespaced(db):  # another process may have migrated meanwhile
            db.execute("DROP INDEX IF EXISTS runs_tenant")
            for table in _RUN_TABLES_V1:
                db.execute(f"ALTER TABLE {table} RENAME TO {table}_v1")
            for statement in RUN_TABLES.split(";"):
                if statement.strip():
                    db.execute(statement)
            for table, rows in _RUN_TABLES_V1.items():
                # runs has gained columns since (fence): their defaults fill them.
                columns = f"({', '.join(_RUN_COLUMNS)})" if table == "runs" else ""
                db.execute(f"INSERT INTO {table} {columns} {rows}")
            for table in _RUN_TABLES_V1:
                db.execute(f"DROP TABLE {table}_v1")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _runs_namespaced(db: Any) -> bool:
    return "tenant" in {row[1] for row in db.execute("PRAGMA table_info(run_messages)")}


def _fields(source: str, count: int) -> str:
    return ", ".join(f"json_extract({source}, '$[{i}]')" for i in range(count))


def _upsert(
    table: str,
    columns: tuple[str, ...],
    key: tuple[str, ...],
    fixed: tuple[str, ...],
    *,
    also: str = "",
) -> str:
    # `WHERE true` keeps the parser from reading ON CONFLICT as a join constraint.
    updates = ", ".join(
        [f"{c} = excluded.{c}" for c in columns if c not in fixed] + ([also] if also else [])
    )
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) "
        f"SELECT {_fields('value', len(columns))} FROM json_each(NEW.{table}) WHERE true "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates};"
    )


# A checkpoint never lowers a run's fence (its check refuses a lower one first).
_RUNS_UPSERT = _upsert(
    "runs",
    (*_RUN_COLUMNS, "fence"),
    ("tenant", "run_id"),
    (*_RUN_FIXED, "fence"),
    also="fence = max(runs.fence, excluded.fence)",
)

# What `rollups.rolled_up` sums of a ledger row, in the order it takes them.
_ROLLED_UP = (
    "created", "latency_s", *ROLLUP_KEY,
    "prompt_tokens", "completion_tokens", "cost_usd", "saved_usd",
)  # fmt: skip

# The columns `rollup_upsert` reads (by name), from a ledger row `l`.
_ROLLED = ", ".join(f"l.{name}" for name in _ROLLED_UP)


FILL_ROLLUPS = rollup_upsert(f"SELECT {_ROLLED} FROM ledger AS l", "sqlite")

# The open rows a batch closes, beside their closing figures `c`.
_CLOSED = (
    "FROM json_each(NEW.ledger_close) AS c JOIN ledger AS l ON l.open = 1 "
    "AND l.request_id = json_extract(c.value, '$[0]') "
    "AND l.tenant = json_extract(c.value, '$[1]') "
    "AND l.deployment = json_extract(c.value, '$[3]')"
)
# A closing's real figures, with the open row's dimensions.
_CLOSING_ROLLED = (
    "json_extract(c.value, '$[11]') AS created, l.tenant, l.model, l.key_label, l.route, "
    "l.agent, l.cache, json_extract(c.value, '$[10]') AS latency_s, "
    "json_extract(c.value, '$[5]') AS prompt_tokens, "
    "json_extract(c.value, '$[6]') AS completion_tokens, "
    "json_extract(c.value, '$[8]') AS cost_usd, l.saved_usd"
)

# What of a closing the writer binds, in a row of `CLOSE_LEDGER`'s parameters, and where
# each is in a ledger row.
_CLOSING_FIELDS = (
    "request_id", "tenant", "deployment", "prompt_tokens", "completion_tokens",
    "cached_tokens", "cost_usd", "estimated", "latency_s", "created",
)  # fmt: skip
CLOSING_AT = tuple(_LEDGER_NAMES.index(name) for name in _CLOSING_FIELDS)


OPENED_AT = tuple(range(len(_ROLLED_UP)))
"""Where `rolled_up` finds its fields of the open row in a `CLOSE_LEDGER` select's row."""
CLOSING_ROLLED_AT = tuple(range(len(_ROLLED_UP), 2 * len(_ROLLED_UP)))
"""Where it finds them with the closing's figures instead (the open row's dimensions and
saved_usd, the closing's time, latency, tokens and cost)."""


def _closing_values(rows: int) -> tuple[str, str]:
    """For `rows` closings bound as parameters (`CLOSING_AT`'s fields of each, the rows of
    a table `c`): the select of the open rows they close, each beside its closing's
    figures (`OPENED_AT`, `CLOSING_ROLLED_AT`), and the UPDATE that closes them. No JSON
    to take apart, and the writer sums what the rollups trade (`rolled_up`): SQLite's
    grouping of a few rows, in the batch view's way, cost the writer several times more."""
    row = "(" + ", ".join("?" * len(_CLOSING_FIELDS)) + ")"
    values = f"WITH c ({', '.join(_CLOSING_FIELDS)}) AS (VALUES {', '.join([row] * rows)}) "
    figures = ", ".join(f"{name} = c.{name}" for name in _CLOSING_FIELDS[3:])
    closing = ", ".join(
        f"c.{name}" if name in _CLOSING_FIELDS[3:] else f"l.{name}" for name in _ROLLED_UP
    )
    return (
        values + f"SELECT {_ROLLED}, {closing} FROM c JOIN ledger AS l "
        "ON l.open = 1 AND l.request_id = c.request_id AND l.tenant = c.tenant "
        "AND l.deployment = c.deployment",
        values + f"UPDATE ledger SET {figures}, open = 0 FROM c WHERE ledger.open = 1 "
        "AND ledger.request_id = c.request_id AND ledger.tenant = c.tenant "
        "AND ledger.deployment = c.deployment",
    )


# The writer's closings in a batch of ledger writes, by number of closings (32, 16...
# 1: a batch's are a few of them; 32 are 320 parameters).
CLOSE_LEDGER = {rows: _closing_values(rows) for rows in (32, 16, 8, 4, 2, 1)}

# A JSON batch's ledger rows, and what they add to the rollups, read back from the table
# (cheaper than extracting the JSON again): the statement's own inserts are the last
# rowids, since a new rowid is one more than the largest and this thread alone writes.
_JUST_INSERTED = (
    "FROM ledger AS l WHERE l.rowid > "
    "(SELECT max(rowid) FROM ledger) - json_array_length(NEW.ledger)"
)
_LEDGER_INSERT = f"""INSERT INTO ledger ({LEDGER_COLUMNS})
    SELECT {_fields("value", _LEDGER_WIDTH)} FROM json_each(NEW.ledger);
    {rollup_upsert(f"SELECT {_ROLLED} {_JUST_INSERTED}", "sqlite")};"""

# The batch view lives in the connection's temp schema: nothing of it is stored
# in the file, and other programs reading the database never see it.
BATCH_VIEW = f"""
CREATE TEMP VIEW IF NOT EXISTS areion_batch
    (new_runs, runs, messages, events, tool_calls, turns, summaries, ledger,
     ledger_close, cache, cache_blob, now)
AS SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL;

-- Only for a batch with more than ledger rows: a billed call's batch (ledger rows
-- alone) skips its statements, each of which costs even when it finds nothing to do.
CREATE TEMP TRIGGER IF NOT EXISTS areion_batch_write INSTEAD OF INSERT ON areion_batch
WHEN COALESCE(NEW.new_runs, NEW.runs, NEW.messages, NEW.events, NEW.tool_calls, NEW.turns,
              NEW.summaries, NEW.cache) IS NOT NULL
BEGIN
    INSERT INTO runs ({", ".join(_RUN_COLUMNS)})
    SELECT {_fields("value", len(_RUN_COLUMNS))} FROM json_each(NEW.new_runs);

    -- A checkpoint may not create a run nor move it to another tenant.
    SELECT RAISE(ABORT, '{UNKNOWN_RUN}')
    FROM json_each(NEW.runs) AS c
    WHERE NOT EXISTS (
        SELECT 1 FROM runs
        WHERE run_id = json_extract(c.value, '$[0]') AND tenant = json_extract(c.value, '$[1]')
    );

    -- Fencing: a checkpoint whose fence is lower than the run has seen (stored, or
    -- carried by an earlier checkpoint of this batch) comes from a replica whose lease
    -- on the run was taken over.
    SELECT RAISE(ABORT, '{FENCED_RUN}')
    FROM (
        SELECT json_extract(value, '$[0]') AS r, json_extract(value, '$[1]') AS t,
               json_extract(value, '$[17]') AS fence,
               max(json_extract(value, '$[17]')) OVER (
                   PARTITION BY json_extract(value, '$[1]'), json_extract(value, '$[0]')
                   ORDER BY key ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS earlier
        FROM json_each(NEW.runs)
    ) AS c
    JOIN runs ON runs.run_id = c.r AND runs.tenant = c.t
    WHERE c.fence < max(runs.fence, COALESCE(c.earlier, 0));

    {_RUNS_UPSERT}

    INSERT INTO run_messages (tenant, run_id, seq, message)
    SELECT json_extract(b.value, '$[0]'), json_extract(b.value, '$[1]'),
           json_extract(b.value, '$[2]') + m.key, m.value
    FROM json_each(NEW.messages) AS b, json_each(b.value, '$[3]') AS m;

    -- Event seqs continue after the run's last stored event; numbering by position
    -- in the batch keeps two checkpoints of one run in one batch in order. SQLite
    -- evaluates the whole SELECT before inserting, since it reads run_events.
    INSERT INTO run_events (tenant, run_id, seq, event)
    SELECT t, r,
           COALESCE((SELECT MAX(seq) FROM run_events AS x WHERE x.tenant = t AND x.run_id = r),
                    -1)
           + ROW_NUMBER() OVER (PARTITION BY t, r ORDER BY bk, ek), e
    FROM (
        SELECT json_extract(b.value, '$[0]') AS t, json_extract(b.value, '$[1]') AS r,
               b.key AS bk, v.key AS ek, v.value AS e
        FROM json_each(NEW.events) AS b, json_each(b.value, '$[2]') AS v
    );

    {_upsert("tool_calls", _TOOL_COLUMNS, _TOOL_KEY, _TOOL_KEY)}

    INSERT INTO session_turns (tenant, session, seq, role, content, tokens)
    SELECT {_fields("value", 6)} FROM json_each(NEW.turns);

    INSERT INTO session_summaries (tenant, session, first_seq, last_seq, text, tokens)
    SELECT {_fields("value", 6)} FROM json_each(NEW.summaries);

    -- Cache values travel as one BLOB; each row says where its bytes are.
    INSERT INTO tool_cache (key, value, expires)
    SELECT json_extract(value, '$[0]'),
           CASE json_extract(value, '$[2]') WHEN 0 THEN x'' ELSE
               substr(NEW.cache_blob, json_extract(value, '$[1]'), json_extract(value, '$[2]'))
           END,
           json_extract(value, '$[3]')
    FROM json_each(NEW.cache) WHERE true
    ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires;

    -- Expired entries are swept lazily, by the batches that put new ones.
    DELETE FROM tool_cache WHERE NEW.cache IS NOT NULL AND expires <= NEW.now;
END;

-- The ledger's statements, in triggers of their own that run only for a batch that has
-- ledger rows (the rollups' statements cost even when they find nothing to do): rows
-- without closings (what a billed call writes), or closings with or without rows.
CREATE TEMP TRIGGER IF NOT EXISTS areion_batch_ledger INSTEAD OF INSERT ON areion_batch
WHEN NEW.ledger IS NOT NULL AND NEW.ledger_close IS NULL
BEGIN
    {_LEDGER_INSERT}
END;

CREATE TEMP TRIGGER IF NOT EXISTS areion_batch_ledger_close INSTEAD OF INSERT ON areion_batch
WHEN NEW.ledger_close IS NOT NULL
BEGIN
    {_LEDGER_INSERT}

    -- After the inserts: a stream that opened and closed within one batch closes too.
    -- The rollups trade the open row's figures for the closing's, before the update.
    {rollup_upsert(f"SELECT {_ROLLED} {_CLOSED}", "sqlite", sign="-")};
    {rollup_upsert(f"SELECT {_CLOSING_ROLLED} {_CLOSED}", "sqlite")};

    UPDATE ledger SET
        prompt_tokens = json_extract(c.value, '$[5]'),
        completion_tokens = json_extract(c.value, '$[6]'),
        cached_tokens = json_extract(c.value, '$[7]'),
        cost_usd = json_extract(c.value, '$[8]'),
        estimated = json_extract(c.value, '$[9]'),
        latency_s = json_extract(c.value, '$[10]'),
        created = json_extract(c.value, '$[11]'),
        open = 0
    FROM json_each(NEW.ledger_close) AS c
    WHERE ledger.open = 1
      AND ledger.request_id = json_extract(c.value, '$[0]')
      AND ledger.tenant = json_extract(c.value, '$[1]')
      AND ledger.deployment = json_extract(c.value, '$[3]');
END;
"""

# JSON arrives as UTF-8 bytes from orjson; CAST makes it TEXT, since SQLite 3.45+
# may read a BLOB argument of a JSON function as its binary JSONB format.
WRITE_BATCH = (
    "INSERT INTO areion_batch VALUES ("
    + ", ".join(f"CAST(?{i + 1} AS TEXT)" for i in range(JSON_KINDS))
    + f", CAST(?{JSON_KINDS + 1} AS TEXT), ?{JSON_KINDS + 2}, ?{JSON_KINDS + 3})"
)

# A batch of ledger rows and closings and nothing else (what billed calls and streams
# write) is written without the batch view: the rows bound as parameters of multi-row
# inserts, then the closings (`CLOSE_LEDGER`), then what the rows add to the rollups,
# summed by the writer (`rollups.rolled_up`), in one transaction. Taking 27 fields out
# of each row's JSON cost SQLite several times what the insert itself does.
_LEDGER_ROW = "(" + ", ".join("?" * _LEDGER_WIDTH) + ")"


# Statements of 32, 16... 1 rows, so a batch of any size is a few of them (each kept
# prepared by the connection); 32 rows are 864 parameters, under the 999 of old builds.
# Each statement is one step, and each step gives up the GIL, which the writer thread
# then waits to take back from a busy event loop (up to the interpreter's switch
# interval, 5 ms): a batch's latency is in its statements more than in its rows.
LEDGER_VALUES = {
    rows: f"INSERT INTO ledger ({LEDGER_COLUMNS}) VALUES " + ", ".join([_LEDGER_ROW] * rows)
    for rows in (32, 16, 8, 4, 2, 1)
}


# Where `rolled_up` finds what it sums in a row of LEDGER_VALUES' parameters.
LEDGER_ROLLED_AT = tuple(_LEDGER_NAMES.index(name) for name in _ROLLED_UP)

# Reads build their JSON in SQL, so a whole transcript comes back as one value:
# one step of the statement (one GIL hand-off) instead of one per row.
# Without a tenant (?2 NULL: an operator's read), the oldest run of that id.
LOAD_RUN = f"""
WITH run AS (
    SELECT * FROM runs WHERE run_id = ?1 AND (?2 IS NULL OR tenant = ?2)
    ORDER BY created LIMIT 1
)
SELECT {", ".join(_RUN_COLUMNS)},
    (SELECT '[' || group_concat(message, ',') || ']'
     FROM (SELECT message FROM run_messages
           WHERE tenant = (SELECT tenant FROM run) AND run_id = ?1 ORDER BY seq))
FROM run
"""

LOAD_TOOL_CALLS = (
    f"SELECT {', '.join(_TOOL_COLUMNS[1:])} FROM tool_calls WHERE tenant = ? AND run_id = ?"
)

RUN_EVENTS = """
SELECT '[' || group_concat('[' || seq || ',' || event || ']', ',') || ']'
FROM (SELECT seq, event FROM run_events
      WHERE run_id = ?1 AND seq > ?2 AND tenant = COALESCE(
          ?3, (SELECT tenant FROM runs WHERE run_id = ?1 ORDER BY created LIMIT 1))
      ORDER BY seq)
"""

SESSION_TURNS = """
SELECT '[' || group_concat(json_array(seq, role, content, tokens), ',') || ']'
FROM (SELECT seq, role, content, tokens FROM session_turns
      WHERE tenant = ?1 AND session = ?2 AND seq > ?3 ORDER BY seq)
"""

SESSION_SUMMARIES = """
SELECT '[' || group_concat(json_array(first_seq, last_seq, text, tokens), ',') || ']'
FROM (SELECT first_seq, last_seq, text, tokens FROM session_summaries
      WHERE tenant = ?1 AND session = ?2 ORDER BY first_seq, rowid)
"""

ADD_ARRIVALS = (
    "INSERT INTO arrivals (start, count) VALUES (?, ?) "
    "ON CONFLICT (start) DO UPDATE SET count = count + excluded.count"
)

CACHE_GET = "SELECT value FROM tool_cache WHERE key = ? AND expires > ?"

# One statement: the previous response is checked by the insert itself (no row
# inserted: the tenant has no such previous response).
PUT_RESPONSE = """
INSERT INTO responses (tenant, response_id, previous_response_id, model, created, messages, body)
SELECT ?1, ?2, ?3, ?4, ?5, CAST(?6 AS TEXT), CAST(?7 AS TEXT)
WHERE ?3 IS NULL OR EXISTS (SELECT 1 FROM responses WHERE tenant = ?1 AND response_id = ?3)
"""

# A response and every one before it in its chain, oldest first: the response itself is
# the last row (depth 0), the only one whose body is read.
RESPONSE_CHAIN = """
WITH RECURSIVE chain (depth, response_id, previous_response_id, model, created, messages,
                      body) AS (
    SELECT 0, response_id, previous_response_id, model, created, messages, body
    FROM responses WHERE tenant = ?1 AND response_id = ?2
    UNION ALL
    SELECT chain.depth + 1, r.response_id, r.previous_response_id, r.model, r.created,
           r.messages, NULL
    FROM responses AS r JOIN chain ON r.tenant = ?1 AND r.response_id = chain.previous_response_id
)
SELECT depth, response_id, previous_response_id, model, created, messages, body
FROM chain ORDER BY depth DESC
"""

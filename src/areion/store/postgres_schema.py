"""The PostgreSQL store's schema, its migrations, and the function that writes a batch.

Every table lives in one schema (`?schema=NAME` in the store URL, else the
connection's default, `public`). The schema is versioned: `schema_version` holds
the version the tables are at, and `MIGRATIONS[i]` brings them from version `i` to
`i + 1`. A store migrates when it first connects, inside one transaction that holds
a transaction-level advisory lock on the schema's name, so replicas starting
together never race: the first one migrates, the others wait, then find nothing to
do. A migration never alters a type the write function takes; it makes a new one.

Batched writes (ledger rows and closings, new runs, checkpoints, tool-call records,
session turns and summaries, tool-cache values) are applied by ONE call of
`areion_write`, a PL/pgSQL function taking one array of rows per kind: one round
trip and one transaction per batch, however many writes it holds, like the SQLite
store's batch view. A bad write (a fenced checkpoint, a stale message count, a run
that does not exist) aborts the whole call; the store then replays the batch one
write at a time so only the bad write's caller hears of it.
"""

from __future__ import annotations

from areion.store.experiments_sql import EXPERIMENT_TABLES, VARIANT_INDEX
from areion.store.rollups import HISTOGRAM, rollup_upsert

__all__ = [
    "API_KEY_COLUMNS",
    "CACHE_ENTRY_COLUMNS",
    "FENCED",
    "LEDGER_COLUMNS",
    "MIGRATIONS",
    "RUN_COLUMNS",
    "TOOL_COLUMNS",
    "UNKNOWN_RUN",
    "VERSION",
    "WRITE",
]

# SQLSTATEs `areion_write` raises; class "AR" is Areion's own, no PostgreSQL class.
UNKNOWN_RUN = "AR001"  # a checkpoint of a run that does not exist for its tenant
FENCED = "AR002"  # a checkpoint whose fence is lower than the run's

RUN_COLUMNS = (
    "run_id, tenant, agent, session, status, input, output, error, pause_reason, steps, "
    "prompt_tokens, completion_tokens, cost_usd, message_count, limits, created, updated"
)

TOOL_COLUMNS = (
    "tenant, run_id, call_id, name, arguments, status, idempotency_key, result, reason, updated"
)

_LEDGER_COLUMNS_V1 = (
    "request_id, tenant, model, deployment, upstream_model, prompt_tokens, "
    "completion_tokens, cached_tokens, cost_usd, estimated, latency_s, created, "
    "cache, saved_usd, saved_s, open, client_request_id"
)
# Version 3 added the attribution columns.
LEDGER_COLUMNS = (
    _LEDGER_COLUMNS_V1 + ", kind, key_label, route, route_reason, run_id, agent, session, "
    "end_user, tags, variant"
)

CACHE_ENTRY_COLUMNS = (
    "id, tier, tenant, partition, model, text, vector, payload, created, expires, threshold"
)

API_KEY_COLUMNS = "key_id, digest, tenant, name, rpm, tpm, priority, models, created, revoked_at"

_TABLES = """
CREATE TABLE ledger (
    request_id text NOT NULL,
    tenant text NOT NULL,
    model text NOT NULL,
    deployment text NOT NULL,
    upstream_model text NOT NULL,
    prompt_tokens bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    cached_tokens bigint NOT NULL,
    cost_usd double precision NOT NULL,
    estimated boolean NOT NULL,
    latency_s double precision NOT NULL,
    created double precision NOT NULL,              -- Unix time
    cache text NOT NULL DEFAULT '',                 -- '' for a model call, else the cache tier
    saved_usd double precision NOT NULL DEFAULT 0,  -- what a cache hit saved
    saved_s double precision NOT NULL DEFAULT 0,
    open boolean NOT NULL DEFAULT false,            -- a stream in progress, priced at its bound
    client_request_id text NOT NULL DEFAULT ''      -- the client's x-request-id, if it sent one
);
CREATE INDEX ledger_tenant ON ledger (tenant, created);
CREATE INDEX ledger_created ON ledger (created);
CREATE INDEX ledger_request ON ledger (request_id);
-- Only streams in progress are open: a small index, for closing them.
CREATE INDEX ledger_open ON ledger (request_id) WHERE open;

-- A run id is unique within its tenant: the same id chosen by two tenants is two runs.
CREATE TABLE runs (
    run_id text NOT NULL,
    tenant text NOT NULL,
    agent text NOT NULL,
    session text,
    status text NOT NULL,
    input text NOT NULL,
    output text,
    error text,
    pause_reason text,
    steps integer NOT NULL,
    prompt_tokens bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    cost_usd double precision NOT NULL,
    message_count integer NOT NULL,
    limits text NOT NULL,                           -- JSON object
    created double precision NOT NULL,
    updated double precision NOT NULL,
    fence bigint NOT NULL DEFAULT 0,                -- the highest fencing token seen
    PRIMARY KEY (tenant, run_id)
);
-- An operator's read names no tenant: the oldest run of that id.
CREATE INDEX runs_id ON runs (run_id, created);
CREATE INDEX runs_running ON runs (updated) WHERE status = 'running';

CREATE TABLE run_messages (
    tenant text NOT NULL,
    run_id text NOT NULL,
    seq integer NOT NULL,
    message text NOT NULL,                          -- JSON object, OpenAI wire shape
    PRIMARY KEY (tenant, run_id, seq)
);

CREATE TABLE run_events (
    tenant text NOT NULL,
    run_id text NOT NULL,
    seq integer NOT NULL,
    event text NOT NULL,                            -- JSON object
    PRIMARY KEY (tenant, run_id, seq)
);

CREATE TABLE tool_calls (
    tenant text NOT NULL,
    run_id text NOT NULL,
    call_id text NOT NULL,
    name text NOT NULL,
    arguments text NOT NULL,
    status text NOT NULL,
    idempotency_key text NOT NULL,
    result text,
    reason text,
    updated double precision NOT NULL,
    PRIMARY KEY (tenant, run_id, call_id)
);

CREATE TABLE session_turns (
    tenant text NOT NULL,
    session text NOT NULL,
    seq integer NOT NULL,
    role text NOT NULL,
    content text NOT NULL,
    tokens integer NOT NULL,
    PRIMARY KEY (tenant, session, seq)
);

CREATE TABLE session_summaries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- insertion order, for ties
    tenant text NOT NULL,
    session text NOT NULL,
    first_seq integer NOT NULL,
    last_seq integer NOT NULL,
    text text NOT NULL,
    tokens integer NOT NULL
);
CREATE INDEX session_summaries_order ON session_summaries (tenant, session, first_seq, id);

CREATE TABLE tool_cache (
    key text PRIMARY KEY,
    value bytea NOT NULL,
    expires double precision NOT NULL
);
CREATE INDEX tool_cache_expires ON tool_cache (expires);

-- Entries of the semantic tiers: every replica loads and follows them by id.
CREATE TABLE cache_entries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tier text NOT NULL,                             -- semantic | plan
    tenant text NOT NULL,
    partition text NOT NULL,
    model text NOT NULL,
    text text NOT NULL,
    vector bytea NOT NULL,                          -- float32, little-endian
    payload bytea NOT NULL,
    created double precision NOT NULL,
    expires double precision NOT NULL,
    threshold double precision                      -- lifted by feedback; NULL: the tier's own
);
CREATE INDEX cache_entries_follow ON cache_entries (tier, id);
CREATE INDEX cache_entries_tenant ON cache_entries (tier, tenant, created);
CREATE INDEX cache_entries_expires ON cache_entries (expires);

-- Only the SHA-256 digest of a key is stored, never the key.
CREATE TABLE api_keys (
    key_id text PRIMARY KEY,
    digest bytea NOT NULL UNIQUE,
    tenant text NOT NULL,
    name text NOT NULL,
    rpm integer,
    tpm integer,
    priority text,
    models text,                                    -- JSON array, or NULL for every model
    created double precision NOT NULL,
    revoked_at double precision
);
-- A name labels one active key; a revoked key's name can be given to a new one.
CREATE UNIQUE INDEX api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL;
CREATE INDEX api_keys_tenant ON api_keys (tenant, created);

-- Batches `areion_write` applied lately: a batch sent again after its connection
-- dropped (committed or not, the client cannot tell) is applied at most once.
CREATE TABLE write_batches (
    id uuid PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX write_batches_at ON write_batches (at);
"""

# The row types of `areion_write`'s arrays. `pos` orders a batch's rows of one run
# (or key) as their writes arrived: events are numbered by it, and the last record
# of a run, tool call or cache key in a batch is the one kept.
_TYPES = """
CREATE TYPE areion_run_row AS (
    run_id text, tenant text, agent text, session text, status text, input text,
    output text, error text, pause_reason text, steps integer, prompt_tokens bigint,
    completion_tokens bigint, cost_usd double precision, message_count integer,
    limits text, created double precision, updated double precision,
    fence bigint, pos integer
);
CREATE TYPE areion_message_row AS (tenant text, run_id text, seq integer, message text);
CREATE TYPE areion_event_row AS (tenant text, run_id text, event text, pos integer);
CREATE TYPE areion_tool_call_row AS (
    tenant text, run_id text, call_id text, name text, arguments text, status text,
    idempotency_key text, result text, reason text, updated double precision, pos integer
);
CREATE TYPE areion_turn_row AS (
    tenant text, session text, seq integer, role text, content text, tokens integer
);
CREATE TYPE areion_summary_row AS (
    tenant text, session text, first_seq integer, last_seq integer, text text, tokens integer
);
CREATE TYPE areion_ledger_row AS (
    request_id text, tenant text, model text, deployment text, upstream_model text,
    prompt_tokens bigint, completion_tokens bigint, cached_tokens bigint,
    cost_usd double precision, estimated boolean, latency_s double precision,
    created double precision, cache text, saved_usd double precision,
    saved_s double precision, open boolean, client_request_id text
);
CREATE TYPE areion_cache_row AS (
    key text, value bytea, expires double precision, pos integer
);
"""

_RUN_UPDATED = (
    "agent, session, status, input, output, error, pause_reason, steps, prompt_tokens, "
    "completion_tokens, cost_usd, message_count, limits, updated"
)
_TOOL_UPDATED = "name, arguments, status, idempotency_key, result, reason, updated"


def _write_function(
    name: str, ledger_type: str, ledger_columns: str, *, rolled: str = "", closed: str = ""
) -> str:
    """`CREATE FUNCTION` of a version of the batch write; `rolled` and `closed` are the
    statements that keep the spend rollups (after the ledger's inserts; before its
    closings)."""
    return f"""
CREATE FUNCTION {name}(
    p_batch uuid, p_now double precision,
    p_new_runs areion_run_row[], p_runs areion_run_row[], p_messages areion_message_row[],
    p_events areion_event_row[], p_calls areion_tool_call_row[], p_turns areion_turn_row[],
    p_summaries areion_summary_row[], p_entries {ledger_type}[],
    p_closing {ledger_type}[], p_cache areion_cache_row[]
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    INSERT INTO write_batches (id) VALUES (p_batch) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;  -- a resend of a batch that committed
    END IF;
    -- A resend comes within seconds; minutes of memory are plenty.
    DELETE FROM write_batches WHERE at < now() - interval '10 minutes';

    IF p_new_runs IS NOT NULL THEN
        INSERT INTO runs ({RUN_COLUMNS}, fence)
        SELECT {RUN_COLUMNS}, fence FROM unnest(p_new_runs);
    END IF;

    IF p_runs IS NOT NULL THEN
        -- Lock the runs in key order, so two replicas' batches cannot deadlock on them,
        -- and hold them: the checks below stay true until this transaction commits.
        PERFORM 1 FROM runs AS r
        WHERE (r.tenant, r.run_id) IN (SELECT c.tenant, c.run_id FROM unnest(p_runs) AS c)
        ORDER BY r.tenant, r.run_id
        FOR UPDATE OF r;

        -- A checkpoint may not create a run nor move it to another tenant.
        SELECT c.tenant, c.run_id INTO bad FROM unnest(p_runs) AS c
        WHERE NOT EXISTS (
            SELECT 1 FROM runs AS r WHERE r.tenant = c.tenant AND r.run_id = c.run_id)
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION USING ERRCODE = '{UNKNOWN_RUN}',
                MESSAGE = format('checkpoint of a run that does not exist: %s of tenant %s',
                                 bad.run_id, bad.tenant);
        END IF;

        -- Fencing: a checkpoint with a lower fence than the run has seen (stored, or
        -- carried by an earlier checkpoint of this batch) comes from a replica whose
        -- lease was taken over.
        SELECT c.tenant, c.run_id, c.fence, greatest(r.fence, c.earlier) AS seen INTO bad
        FROM (
            SELECT x.tenant, x.run_id, x.fence, coalesce(max(x.fence) OVER (
                PARTITION BY x.tenant, x.run_id ORDER BY x.pos
                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS earlier
            FROM unnest(p_runs) AS x
        ) AS c
        JOIN runs AS r ON r.tenant = c.tenant AND r.run_id = c.run_id
        WHERE c.fence < greatest(r.fence, c.earlier)
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION USING ERRCODE = '{FENCED}',
                MESSAGE = format('run %s of tenant %s: fence %s is lower than %s',
                                 bad.run_id, bad.tenant, bad.fence, bad.seen);
        END IF;

        UPDATE runs AS r SET ({_RUN_UPDATED}, fence) = (
            {", ".join("c." + name for name in _RUN_UPDATED.split(", "))},
            greatest(r.fence, c.fence))
        FROM (
            SELECT DISTINCT ON (x.tenant, x.run_id) * FROM unnest(p_runs) AS x
            ORDER BY x.tenant, x.run_id, x.pos DESC
        ) AS c
        WHERE r.tenant = c.tenant AND r.run_id = c.run_id;
    END IF;

    IF p_messages IS NOT NULL THEN
        INSERT INTO run_messages (tenant, run_id, seq, message)
        SELECT tenant, run_id, seq, message FROM unnest(p_messages);
    END IF;

    IF p_events IS NOT NULL THEN
        -- Seqs continue after the run's last stored event (the run's row is locked).
        INSERT INTO run_events (tenant, run_id, seq, event)
        SELECT e.tenant, e.run_id,
               coalesce(last.seq, -1)
               + row_number() OVER (PARTITION BY e.tenant, e.run_id ORDER BY e.pos)::integer,
               e.event
        FROM unnest(p_events) AS e
        LEFT JOIN LATERAL (
            SELECT max(x.seq) AS seq FROM run_events AS x
            WHERE x.tenant = e.tenant AND x.run_id = e.run_id
        ) AS last ON true;
    END IF;

    IF p_calls IS NOT NULL THEN
        INSERT INTO tool_calls ({TOOL_COLUMNS})
        SELECT DISTINCT ON (tenant, run_id, call_id) {TOOL_COLUMNS} FROM unnest(p_calls)
        ORDER BY tenant, run_id, call_id, pos DESC
        ON CONFLICT (tenant, run_id, call_id) DO UPDATE SET ({_TOOL_UPDATED}) = (
            {", ".join("excluded." + name for name in _TOOL_UPDATED.split(", "))});
    END IF;

    IF p_turns IS NOT NULL THEN
        INSERT INTO session_turns (tenant, session, seq, role, content, tokens)
        SELECT tenant, session, seq, role, content, tokens FROM unnest(p_turns);
    END IF;

    IF p_summaries IS NOT NULL THEN
        INSERT INTO session_summaries (tenant, session, first_seq, last_seq, text, tokens)
        SELECT tenant, session, first_seq, last_seq, text, tokens FROM unnest(p_summaries);
    END IF;

    IF p_entries IS NOT NULL THEN
        INSERT INTO ledger ({ledger_columns})
        SELECT {ledger_columns} FROM unnest(p_entries);{rolled}
    END IF;

    IF p_closing IS NOT NULL THEN
        -- After the inserts: a stream that opened and closed within one batch closes too.{closed}
        UPDATE ledger AS l SET
            prompt_tokens = c.prompt_tokens, completion_tokens = c.completion_tokens,
            cached_tokens = c.cached_tokens, cost_usd = c.cost_usd, estimated = c.estimated,
            latency_s = c.latency_s, created = c.created, open = false
        FROM unnest(p_closing) AS c
        WHERE l.open AND l.request_id = c.request_id AND l.tenant = c.tenant
          AND l.deployment = c.deployment;
    END IF;

    IF p_cache IS NOT NULL THEN
        INSERT INTO tool_cache (key, value, expires)
        SELECT DISTINCT ON (key) key, value, expires FROM unnest(p_cache)
        ORDER BY key, pos DESC
        ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires;
        -- Expired values are swept lazily, by the batches that put new ones.
        DELETE FROM tool_cache WHERE expires <= p_now;
    END IF;
    RETURN true;
END
$$;
"""


_WRITE_FUNCTION = _write_function("areion_write", "areion_ledger_row", _LEDGER_COLUMNS_V1)

WRITE = "SELECT areion_write2($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"

# Version 2: responses of the Responses API, kept for previous_response_id and
# GET /v1/responses/{id}. Each row holds its own turn only: a conversation is the chain
# of its previous responses, all of one tenant.
_RESPONSES = """
CREATE TABLE responses (
    tenant text NOT NULL,
    response_id text NOT NULL,
    previous_response_id text,
    model text NOT NULL,
    created double precision NOT NULL,
    messages text NOT NULL,                         -- JSON array of this turn's chat messages
    body text NOT NULL,                             -- JSON object: the response as served
    PRIMARY KEY (tenant, response_id)
);
"""

# Version 3: attribution in the ledger (run, agent, session, end user, key, route,
# tags, variant, kind), and the spend rollups, filled from the rows already there. The
# batch write takes the new row type under a new name (`areion_write2`); the old
# function stays, forwarding to it, so a replica not yet upgraded still writes (its
# rows without attribution) and its rows reach the rollups too.
_ROLLED = (
    "l.created, l.tenant, l.model, l.key_label, l.route, l.agent, l.cache, l.latency_s, "
    "l.prompt_tokens, l.completion_tokens, l.cost_usd, l.saved_usd"
)
_CLOSED = (
    "FROM unnest(p_closing) AS c JOIN ledger AS l ON l.open AND l.request_id = c.request_id "
    "AND l.tenant = c.tenant AND l.deployment = c.deployment"
)
_CLOSING_ROLLED = (
    "c.created, l.tenant, l.model, l.key_label, l.route, l.agent, l.cache, c.latency_s, "
    "c.prompt_tokens, c.completion_tokens, c.cost_usd, l.saved_usd"
)
_V1_ROWS = (
    "(SELECT array_agg(ROW(e.*, 'chat', '', '', '', '', '', '', '', '[]', '')"
    "::areion_ledger_row2) FROM unnest({}) AS e)"
)
_ROLLED_ENTRIES = rollup_upsert("SELECT * FROM unnest(p_entries)", "postgres")
_ROLLED_CLOSING = (
    "-- The rollups trade the open row's figures for the closing's, before the update.\n"
    f"        {rollup_upsert(f'SELECT {_ROLLED} {_CLOSED}', 'postgres', sign='-')};\n"
    f"        {rollup_upsert(f'SELECT {_CLOSING_ROLLED} {_CLOSED}', 'postgres')};"
)

_HISTOGRAM_COLUMNS = "\n".join(f"    {column} bigint NOT NULL DEFAULT 0," for column in HISTOGRAM)

_WRITE_FUNCTION2 = _write_function(
    "areion_write2",
    "areion_ledger_row2",
    LEDGER_COLUMNS,
    rolled="\n        " + _ROLLED_ENTRIES + ";",
    closed="\n        " + _ROLLED_CLOSING,
)

_ATTRIBUTION = f"""
ALTER TABLE ledger
    ADD COLUMN kind text NOT NULL DEFAULT 'chat',   -- chat | embedding | tool
    ADD COLUMN key_label text NOT NULL DEFAULT '',
    ADD COLUMN route text NOT NULL DEFAULT '',
    ADD COLUMN route_reason text NOT NULL DEFAULT '',
    ADD COLUMN run_id text NOT NULL DEFAULT '',
    ADD COLUMN agent text NOT NULL DEFAULT '',
    ADD COLUMN session text NOT NULL DEFAULT '',
    ADD COLUMN end_user text NOT NULL DEFAULT '',
    ADD COLUMN tags text NOT NULL DEFAULT '[]',     -- JSON array of x-areion-tags
    ADD COLUMN variant text NOT NULL DEFAULT '';
CREATE INDEX runs_created ON runs (created);

-- The ledger summed per UTC hour (period 3600) and day (86400), kept by areion_write2
-- in the transaction that inserts the rows (see store/rollups.py).
CREATE TABLE spend_rollup (
    period integer NOT NULL,
    period_start bigint NOT NULL,                   -- Unix time
    tenant text NOT NULL,
    model text NOT NULL,
    key_label text NOT NULL,
    route text NOT NULL,
    agent text NOT NULL,
    cache text NOT NULL,
    calls bigint NOT NULL,
    prompt_tokens bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    cost_usd double precision NOT NULL,
    cache_hits bigint NOT NULL,
    saved_usd double precision NOT NULL,
    -- calls per latency bucket (rollups.LATENCY_EDGES), h0 .. h32
{_HISTOGRAM_COLUMNS}
    PRIMARY KEY (period, period_start, tenant, model, key_label, route, agent, cache)
);
{rollup_upsert(f"SELECT {_ROLLED} FROM ledger AS l", "postgres")};

CREATE TYPE areion_ledger_row2 AS (
    request_id text, tenant text, model text, deployment text, upstream_model text,
    prompt_tokens bigint, completion_tokens bigint, cached_tokens bigint,
    cost_usd double precision, estimated boolean, latency_s double precision,
    created double precision, cache text, saved_usd double precision,
    saved_s double precision, open boolean, client_request_id text,
    kind text, key_label text, route text, route_reason text, run_id text, agent text,
    session text, end_user text, tags text, variant text
);
{_WRITE_FUNCTION2}
CREATE OR REPLACE FUNCTION areion_write(
    p_batch uuid, p_now double precision,
    p_new_runs areion_run_row[], p_runs areion_run_row[], p_messages areion_message_row[],
    p_events areion_event_row[], p_calls areion_tool_call_row[], p_turns areion_turn_row[],
    p_summaries areion_summary_row[], p_entries areion_ledger_row[],
    p_closing areion_ledger_row[], p_cache areion_cache_row[]
) RETURNS boolean LANGUAGE sql AS $$
    SELECT areion_write2(p_batch, p_now, p_new_runs, p_runs, p_messages, p_events, p_calls,
        p_turns, p_summaries, {_V1_ROWS.format("p_entries")}, {_V1_ROWS.format("p_closing")},
        p_cache)
$$;
"""

# Experiments: outcomes posted by applications, each experiment's verdict state, and the
# ledger's rows of experiments indexed by variant.
_EXPERIMENTS = EXPERIMENT_TABLES + VARIANT_INDEX + ";\n"
# Requests that arrived per minute, summed over every replica: what the scaling
# signal's time-of-day profile is learned from (a migration of its own).
_ARRIVALS = """
CREATE TABLE arrivals (
    start bigint PRIMARY KEY,                       -- Unix time of the minute's start
    count bigint NOT NULL
);
"""

# MIGRATIONS[i] brings a schema at version i to version i + 1.
MIGRATIONS: tuple[str, ...] = (
    _TABLES + _TYPES + _WRITE_FUNCTION,
    _RESPONSES,
    _ATTRIBUTION,
    _ARRIVALS,
    _EXPERIMENTS,
)
VERSION = len(MIGRATIONS)

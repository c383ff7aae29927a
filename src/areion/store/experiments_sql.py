"""What both stores keep and read for experiments: outcomes, verdict state, and the
per-unit figures a report is made of, read straight from the ledger and the runs.

A ledger row of an experiment carries `variant` = `experiment:variant`, so the units of
an experiment are found through a range on that column (a partial index holds only the
rows of experiments). The SQL is written once for both stores; `?` placeholders become
`$n` for PostgreSQL (`numbered`).
"""

from __future__ import annotations

import itertools
import re

__all__ = [
    "EXPERIMENT_STATE_GET",
    "EXPERIMENT_STATE_PUT",
    "EXPERIMENT_TABLES",
    "OUTCOME_PUT",
    "REQUEST_EXISTS",
    "UNIT_COLUMNS",
    "VARIANT_INDEX",
    "numbered",
    "units_query",
]

EXPERIMENT_TABLES = """
CREATE TABLE IF NOT EXISTS outcomes (
    tenant TEXT NOT NULL,
    target_kind TEXT NOT NULL,           -- run | request | session
    target TEXT NOT NULL,
    success SMALLINT NOT NULL,           -- 1 or 0
    score DOUBLE PRECISION,
    created DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (tenant, target_kind, target)
);
CREATE TABLE IF NOT EXISTS experiment_state (
    name TEXT PRIMARY KEY,
    stopped TEXT NOT NULL DEFAULT '[]',  -- JSON array: variants a guardrail stopped
    promoted TEXT,                       -- the winner every unit now gets
    verdict TEXT NOT NULL DEFAULT 'running',
    updated DOUBLE PRECISION NOT NULL
);
"""

# After the ledger has its `variant` column (an old SQLite database gains it on open).
VARIANT_INDEX = (
    "CREATE INDEX IF NOT EXISTS ledger_variant ON ledger (variant, tenant) WHERE variant <> ''"
)

# The last outcome posted for a target wins.
OUTCOME_PUT = (
    "INSERT INTO outcomes (tenant, target_kind, target, success, score, created) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, target_kind, target) DO UPDATE SET "
    "success = excluded.success, score = excluded.score, created = excluded.created"
)

REQUEST_EXISTS = "SELECT 1 FROM ledger WHERE request_id = ? AND tenant = ? LIMIT 1"

EXPERIMENT_STATE_GET = "SELECT stopped, promoted, verdict FROM experiment_state WHERE name = ?"

EXPERIMENT_STATE_PUT = (
    "INSERT INTO experiment_state (name, stopped, promoted, verdict, updated) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET stopped = excluded.stopped, "
    "promoted = excluded.promoted, verdict = excluded.verdict, updated = excluded.updated"
)

# What `units_query` returns per unit, in order.
UNIT_COLUMNS = (
    "first_variant", "last_variant", "tasks", "judged", "successes", "cost_usd", "tokens",
    "latency_s", "first_seen",
)  # fmt: skip

_UNIT_KEY = {
    "session": "CASE WHEN t.session <> '' THEN 's:' || t.session ELSE 'r:' || t.task END",
    "user": "CASE WHEN t.end_user <> '' THEN 'u:' || t.end_user ELSE 'r:' || t.task END",
    "run": "'r:' || t.task",
    "request": "'r:' || t.task",
}

# A task's success: its own outcome, else its session's, else (runs) how it ended.
_RUN_TASKS = """
SELECT l.tenant AS tenant, l.run_id AS task, max(l.variant) AS variant,
       min(l.variant) AS variant_min, max(l.session) AS session,
       max(l.end_user) AS end_user, sum(l.cost_usd) AS cost,
       sum(l.prompt_tokens + l.completion_tokens) AS tokens
FROM ledger AS l
WHERE l.variant <> '' AND l.variant >= ? AND l.variant < ? AND l.run_id <> ''
  AND l.created >= ?
GROUP BY l.tenant, l.run_id
"""

_CALL_TASKS = """
SELECT l.tenant AS tenant, l.request_id AS task, max(l.variant) AS variant,
       min(l.variant) AS variant_min, max(l.session) AS session,
       max(l.end_user) AS end_user, sum(l.cost_usd) AS cost,
       sum(l.prompt_tokens + l.completion_tokens) AS tokens, max(l.latency_s) AS latency,
       min(l.created) AS created
FROM ledger AS l
WHERE l.variant <> '' AND l.variant >= ? AND l.variant < ? AND l.kind <> 'tool'
  AND l.created >= ?
GROUP BY l.tenant, l.request_id
"""


def units_query(unit: str, *, runs: bool) -> str:
    """Per unit of one experiment (its variant range and a start time as parameters):
    the columns of `UNIT_COLUMNS`. A unit whose tasks saw two variants shows it in
    `first_variant` <> `last_variant` (the report counts and excludes it)."""
    key = _UNIT_KEY[unit]
    if runs:
        return f"""
WITH t AS ({_RUN_TASKS}),
j AS (
    SELECT t.*, r.updated - r.created AS latency, r.created AS created,
           coalesce(o.success, so.success,
                    CASE WHEN r.status = 'finished' THEN 1 ELSE 0 END) AS success,
           1 AS judged
    FROM t
    JOIN runs AS r ON r.tenant = t.tenant AND r.run_id = t.task
    LEFT JOIN outcomes AS o
        ON o.tenant = t.tenant AND o.target_kind = 'run' AND o.target = t.task
    LEFT JOIN outcomes AS so
        ON so.tenant = t.tenant AND so.target_kind = 'session' AND so.target = t.session
           AND t.session <> ''
    WHERE r.status IN ('finished', 'failed')
)
SELECT min(t.variant_min), max(t.variant), count(*), sum(t.judged), sum(t.success),
       sum(t.cost), sum(t.tokens), avg(t.latency), min(t.created)
FROM j AS t
GROUP BY t.tenant, {key}
"""
    return f"""
WITH t AS ({_CALL_TASKS}),
j AS (
    SELECT t.*, coalesce(o.success, so.success) AS success,
           CASE WHEN coalesce(o.success, so.success) IS NULL THEN 0 ELSE 1 END AS judged
    FROM t
    LEFT JOIN outcomes AS o
        ON o.tenant = t.tenant AND o.target_kind = 'request' AND o.target = t.task
    LEFT JOIN outcomes AS so
        ON so.tenant = t.tenant AND so.target_kind = 'session' AND so.target = t.session
           AND t.session <> ''
)
SELECT min(t.variant_min), max(t.variant), count(*), sum(t.judged),
       coalesce(sum(t.success), 0), sum(t.cost), sum(t.tokens), avg(t.latency),
       min(t.created)
FROM j AS t
GROUP BY t.tenant, {key}
"""


_PLACEHOLDER = re.compile(r"\?")


def numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2, ...`."""
    counter = itertools.count(1)
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)

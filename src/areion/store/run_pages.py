"""Pages of runs and a run's model calls, for the dashboard: keyset queries both stores
run alike, so a page costs the same at the first run as at the hundred-thousandth.

A page of runs is newest first (or costliest first), filtered by tenant, status and
agent; the next page starts after the last row's (created, tenant, run_id), never at
an offset. A run's model calls are its ledger rows, read through the ledger's
(tenant, created) index between the run's creation and its last update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from areion.store.rollups import Dialect, binder

__all__ = [
    "RUN_CALL_COLUMNS",
    "RUN_ROW_COLUMNS",
    "RunCall",
    "RunPageQuery",
    "RunRow",
    "run_calls_sql",
    "run_page_sql",
]


RUN_ROW_COLUMNS = (
    "run_id",
    "tenant",
    "agent",
    "status",
    "steps",
    "cost_usd",
    "pause_reason",
    "created",
    "updated",
)
RUN_CALL_COLUMNS = (
    "created",
    "kind",
    "model",
    "deployment",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_s",
    "cache",
)
MAX_RUN_CALLS = 1000


@dataclass(slots=True, kw_only=True)
class RunRow:
    """One line of a list of runs."""

    run_id: str
    """The run's id (unique within its tenant)."""
    tenant: str
    """Whose run it is."""
    agent: str
    """The agent's name."""
    status: str
    """running, paused, finished or failed."""
    steps: int
    """Model calls made so far."""
    cost_usd: float
    """Spend so far."""
    pause_reason: str | None
    """Why it is paused, if it is."""
    created: float
    """Unix time the run started."""
    updated: float
    """Unix time of its last checkpoint."""

    @classmethod
    def of(cls, row: Any) -> RunRow:
        """A row of `run_page_sql`."""
        return cls(
            run_id=row[0],
            tenant=row[1],
            agent=row[2],
            status=row[3],
            steps=int(row[4]),
            cost_usd=float(row[5]),
            pause_reason=row[6],
            created=float(row[7]),
            updated=float(row[8]),
        )


@dataclass(slots=True, kw_only=True)
class RunPageQuery:
    """Which runs a page lists."""

    tenant: str | None = None
    """Only this tenant's runs; None: every tenant's."""
    status: str | None = None
    """Only runs with this status."""
    agent: str | None = None
    """Only runs of this agent."""
    after: tuple[float, str, str] | None = None
    """(created, tenant, run_id) of the previous page's last run: start after it."""
    limit: int = 50
    """The most runs a page holds."""
    order: Literal["created", "cost"] = "created"
    """Newest first, or costliest first (then `since`/`until` bound the runs)."""
    since: float | None = None
    """Only runs created at or after this Unix time."""
    until: float | None = None
    """Only runs created before this Unix time."""


def run_page_sql(query: RunPageQuery, dialect: Dialect) -> tuple[str, list[Any]]:
    """One statement for a page of runs; its rows make `RunRow.of`."""
    args: list[Any] = []
    arg = binder(args, dialect)

    where: list[str] = []
    for column in ("tenant", "status", "agent"):
        value = getattr(query, column)
        if value is not None:
            where.append(f"{column} = {arg(value)}")
    if query.since is not None:
        where.append(f"created >= {arg(query.since)}")
    if query.until is not None:
        where.append(f"created < {arg(query.until)}")
    if query.order == "cost":
        order = "cost_usd DESC, created DESC, tenant DESC, run_id DESC"
    else:
        order = "created DESC, tenant DESC, run_id DESC"
        if query.after is not None:
            created, tenant, run_id = query.after
            where.append(
                f"(created, tenant, run_id) < ({arg(created)}, {arg(tenant)}, {arg(run_id)})"
            )
    sql = f"SELECT {', '.join(RUN_ROW_COLUMNS)} FROM runs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {order} LIMIT {arg(query.limit)}"
    return sql, args


@dataclass(slots=True, kw_only=True)
class RunCall:
    """One ledger row of a run: a model call, a cache hit or a tool's booking."""

    created: float
    """Unix time it was booked."""
    kind: str
    """chat, embedding or tool."""
    model: str
    """The model group (or tool) it was booked under."""
    deployment: str
    """The deployment that answered."""
    prompt_tokens: int
    """Input tokens."""
    completion_tokens: int
    """Output tokens."""
    cost_usd: float
    """What it cost."""
    latency_s: float
    """How long it took."""
    cache: str
    """The cache tier that answered ('' for none)."""

    @classmethod
    def of(cls, row: Any) -> RunCall:
        """A row of `run_calls_sql`."""
        return cls(
            created=float(row[0]),
            kind=row[1],
            model=row[2],
            deployment=row[3],
            prompt_tokens=int(row[4]),
            completion_tokens=int(row[5]),
            cost_usd=float(row[6]),
            latency_s=float(row[7]),
            cache=row[8],
        )


def run_calls_sql(
    run_id: str, *, tenant: str, since: float, until: float, dialect: Dialect
) -> tuple[str, list[Any]]:
    """One statement for a run's ledger rows booked in [since, until], oldest first."""
    marks = ("?", "?", "?", "?") if dialect == "sqlite" else ("$1", "$2", "$3", "$4")
    sql = (
        f"SELECT {', '.join(RUN_CALL_COLUMNS)} FROM ledger WHERE tenant = {marks[0]} "
        f"AND created >= {marks[1]} AND created <= {marks[2]} AND run_id = {marks[3]} "
        f"ORDER BY created LIMIT {MAX_RUN_CALLS}"
    )
    return sql, [tenant, since, until, run_id]

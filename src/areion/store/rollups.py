"""Spend rollups: the ledger summed per hour and per day, and the spend queries over them.

Each ledger row adds to two rollup rows (its UTC hour and its UTC day), keyed by
tenant x model x key label x route x agent x cache tier, in the same statement
(SQLite) or transaction (PostgreSQL) that inserts the row: the rollups are never
behind the ledger. A rollup row counts its calls in a histogram of `BUCKETS` fixed,
log-spaced latency ranges (a column each), so p50 and p95 come from the rollups
(`quantile`).

A stream's open row counts at its bound while open, like the ledger row itself; when
the row is closed, its open figures are taken out of the rollups and its real ones put
in (the hour may change: a row's time is when it closed). Sums over the rollups
therefore equal sums over the ledger at every moment.

A spend query (`SpendQuery`) is answered from the fewest rows: whole days from the day
rollups, whole hours from the hour rollups, the minutes at either edge from the ledger
(`segments`); a dimension the rollups do not keep (deployment, run, user, tag) reads
the ledger itself, through its `created` index, bounded by since/until. Each store
turns a query into one UNION ALL statement (`spend_sql`) whose rows are (dimensions,
sums, histogram); `merge` adds them up into groups.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "BUCKETS",
    "DIMENSIONS",
    "HISTOGRAM",
    "LATENCY_EDGES",
    "RAW_DIMENSIONS",
    "ROLLUP_KEY",
    "ROLLUP_VALUES",
    "SUMS",
    "Dialect",
    "SpendQuery",
    "SpendTotals",
    "binder",
    "bucket_sql",
    "merge",
    "quantile",
    "rolled_up",
    "rollup_upsert",
    "segments",
    "spend_sql",
]

Dialect = Literal["sqlite", "postgres"]

# 1 ms x sqrt(2)^i: 1 ms .. 46 s in 32 edges, 33 buckets (the first below 1 ms, the
# last from 46 s on). sqrt(2) steps keep a quantile's error under ~20%.
LATENCY_EDGES: tuple[float, ...] = tuple(0.001 * 2 ** (i / 2) for i in range(32))
BUCKETS = len(LATENCY_EDGES) + 1

HOUR = 3600
DAY = 86400

# The rollup key's dimensions, as ledger columns.
ROLLUP_KEY = ("tenant", "model", "key_label", "route", "agent", "cache")
# What a rollup row sums, then its latency histogram: calls per bucket, a column each.
SUMS = ("calls", "prompt_tokens", "completion_tokens", "cost_usd", "cache_hits", "saved_usd")
HISTOGRAM = tuple(f"h{i}" for i in range(BUCKETS))

# A spend query's dimensions, as the API names them, and the ledger column of each
# (hour and day are computed from `created`, tag from `tags`).
DIMENSIONS: dict[str, str] = {
    "tenant": "tenant",
    "key": "key_label",
    "model": "model",
    "deployment": "deployment",
    "route": "route",
    "agent": "agent",
    "run": "run_id",
    "user": "end_user",
    "tag": "tags",
    "cache": "cache",
    "hour": "created",
    "day": "created",
}
RAW_DIMENSIONS = frozenset(("deployment", "run", "user", "tag"))
"""Dimensions only the ledger has: a query naming one reads the ledger's rows."""


def bucket_sql(column: str, low: int = 0, high: int = len(LATENCY_EDGES)) -> str:
    """The latency bucket of `column` (seconds), as SQL both stores evaluate alike: a
    binary search over `LATENCY_EDGES` (5 comparisons a row, not up to 32)."""
    if low == high:
        return str(low)
    middle = (low + high) // 2
    below = bucket_sql(column, low, middle)
    above = bucket_sql(column, middle + 1, high)
    return f"(CASE WHEN {column} < {LATENCY_EDGES[middle]!r} THEN {below} ELSE {above} END)"


def _floor(expression: str, period: int | str, dialect: Dialect) -> str:
    if dialect == "sqlite":  # times are positive: CAST truncates, which is floor
        return f"(CAST(({expression}) / {period} AS INTEGER) * {period})"
    return f"(floor(({expression}) / {period})::bigint * {period})"


def rollup_upsert(source: str, dialect: Dialect, *, sign: str = "") -> str:
    """The statement adding the rows `source` selects (columns created, tenant, model,
    key_label, route, agent, cache, latency_s, prompt_tokens, completion_tokens,
    cost_usd, saved_usd) to the hour and day rollups; `sign` `-` takes them out."""
    key = ", ".join(ROLLUP_KEY)
    total = "" if dialect == "sqlite" else "::bigint"
    periods = f"(SELECT {HOUR} AS period UNION ALL SELECT {DAY})"
    # The rows are made once (LIMIT -1 in SQLite, OFFSET 0 in PostgreSQL keep the planner
    # from inlining them, which would search each row's bucket again in every sum).
    once = "LIMIT -1" if dialect == "sqlite" else "OFFSET 0"
    rows = f"SELECT r0.*, {bucket_sql('r0.latency_s')} AS b FROM ({source}) AS r0 {once}"
    counted = (
        (f"sum(r.b = {i})" for i in range(BUCKETS))
        if dialect == "sqlite"
        else (f"count(*) FILTER (WHERE r.b = {i})" for i in range(BUCKETS))
    )
    sums = [
        "count(*)",
        f"sum(r.prompt_tokens){total}",
        f"sum(r.completion_tokens){total}",
        "sum(r.cost_usd)",
        f"sum(CASE WHEN r.cache <> '' THEN 1 ELSE 0 END){total}",
        "sum(r.saved_usd)",
        *counted,
    ]
    # `WHERE true` keeps SQLite's parser from reading ON CONFLICT as a join constraint.
    return (
        f"INSERT INTO spend_rollup (period, period_start, {key}, {', '.join(_ADDED)}) "
        f"SELECT p.period, {_floor('r.created', 'p.period', dialect)}, "
        f"{', '.join('r.' + c for c in ROLLUP_KEY)}, {', '.join(sign + x for x in sums)} "
        f"FROM ({rows}) AS r, {periods} AS p WHERE true "
        f"GROUP BY {', '.join(str(i) for i in range(1, len(ROLLUP_KEY) + 3))} "
        f"{_ADD_ON_CONFLICT}"
    )


_ADDED = (*SUMS, *HISTOGRAM)
_ADD_ON_CONFLICT = (
    f"ON CONFLICT (period, period_start, {', '.join(ROLLUP_KEY)}) DO UPDATE SET "
    + ", ".join(f"{c} = spend_rollup.{c} + excluded.{c}" for c in _ADDED)
)

_ROLLUP_ROW = "(" + ", ".join("?" * (2 + len(ROLLUP_KEY) + len(_ADDED))) + ")"

ROLLUP_VALUES = {
    rows: (
        f"INSERT INTO spend_rollup (period, period_start, {', '.join(ROLLUP_KEY)}, "
        f"{', '.join(_ADDED)}) VALUES {', '.join([_ROLLUP_ROW] * rows)} {_ADD_ON_CONFLICT}"
    )
    for rows in (16, 8, 4, 2, 1)
}
"""The statements adding 16, 8... 1 rollup rows' figures, given as parameters
(`rolled_up`), by the number of rows (16 rows are 656 parameters, under the 999 of old
builds). One `rolled_up` list's rows are of distinct rollup rows; the SQLite writer puts
a few lists in one statement, whose upsert takes its rows one by one, in order.
(PostgreSQL refuses a statement that updates one row twice.)"""


def rolled_up(
    rows: Iterable[Sequence[Any]], at: Sequence[int], *, taken: bool = False
) -> list[tuple[Any, ...]]:
    """The `ROLLUP_VALUES` parameters of new ledger rows: what they add to the hour and
    day rollups, summed here (SQLite reading the rows back to group them cost the
    writer more); `taken`: what taking them out subtracts, negated. `at` gives each
    row's position of created, latency_s, the `ROLLUP_KEY` columns, then prompt_tokens,
    completion_tokens, cost_usd and saved_usd. Periods and buckets are those
    `rollup_upsert` computes in SQL."""
    created, latency, *rest = at
    key_at, (prompt, completion, cost, saved) = rest[: len(ROLLUP_KEY)], rest[len(ROLLUP_KEY) :]
    cache = key_at[ROLLUP_KEY.index("cache")]
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        bucket = len(SUMS) + bisect.bisect_right(LATENCY_EDGES, row[latency])
        dims = tuple(row[i] for i in key_at)
        for period in (HOUR, DAY):
            key = (period, int(row[created] / period) * period, *dims)
            sums = groups.get(key)
            if sums is None:
                # In the order of SUMS (calls, tokens in and out, cost, hits, saved),
                # then the histogram.
                sums = groups[key] = [0, 0, 0, 0.0, 0, 0.0, *([0] * BUCKETS)]
            sums[0] += 1
            sums[1] += row[prompt]
            sums[2] += row[completion]
            sums[3] += row[cost]
            sums[4] += row[cache] != ""
            sums[5] += row[saved]
            sums[bucket] += 1
    if taken:
        return [(*key, *(-x for x in sums)) for key, sums in groups.items()]
    return [(*key, *sums) for key, sums in groups.items()]


@dataclass(slots=True, kw_only=True)
class SpendQuery:
    """What a spend report asks for."""

    group_by: tuple[str, ...] = ()
    """Dimensions (keys of `DIMENSIONS`), in the order the groups name them."""
    since: float
    """Unix time, inclusive."""
    until: float
    """Unix time, exclusive."""
    tenant: str | None = None
    """Only this tenant's rows; None: every tenant's."""


def segments(query: SpendQuery) -> list[tuple[str, float, float]]:
    """The sources that answer `query`: (`raw` | `hour` | `day`, from, to), together
    covering [since, until) once."""
    since, until = query.since, query.until
    if until <= since:
        return []
    if RAW_DIMENSIONS.intersection(query.group_by):
        return [("raw", since, until)]
    h0, h1 = math.ceil(since / HOUR) * HOUR, math.floor(until / HOUR) * HOUR
    if h0 >= h1:
        return [("raw", since, until)]
    out: list[tuple[str, float, float]] = []
    if since < h0:
        out.append(("raw", since, h0))
    if h1 < until:
        out.append(("raw", h1, until))
    d0, d1 = math.ceil(h0 / DAY) * DAY, math.floor(h1 / DAY) * DAY
    if "hour" in query.group_by or d0 >= d1:
        out.append(("hour", h0, h1))
        return out
    if h0 < d0:
        out.append(("hour", h0, d0))
    out.append(("day", d0, d1))
    if d1 < h1:
        out.append(("hour", d1, h1))
    return out


def _dimension(name: str, source: str, dialect: Dialect) -> str:
    """The SQL of dimension `name` in a segment read from `source`."""
    if source == "raw":
        if name == "hour":
            return _floor("l.created", HOUR, dialect)
        if name == "day":
            return _floor("l.created", DAY, dialect)
        if name == "tag":
            return "coalesce(t.value, '')"
        return "l." + DIMENSIONS[name]
    if name == "hour":
        return "s.period_start"  # an hour rollup's (a query by hour reads no day rollup)
    if name == "day":
        return _floor("s.period_start", DAY, dialect)
    return "s." + DIMENSIONS[name]


def binder(args: list[Any], dialect: Dialect) -> Callable[[Any], str]:
    """A function that appends a value to `args` and gives its placeholder in `dialect`."""

    def arg(value: Any) -> str:
        args.append(value)
        return "?" if dialect == "sqlite" else f"${len(args)}"

    return arg


def spend_sql(
    query: SpendQuery, dialect: Dialect, *, ledger_only: bool = False
) -> tuple[str, list[Any]]:
    """One statement answering `query`: rows of (each dimension of `query.group_by`,
    calls, input tokens, output tokens, cost, cache hits, saved USD, then the calls in
    each latency bucket), up to one row per group and source, for `merge`.
    `ledger_only` reads the raw ledger alone (what a report without rollups reads; for
    `bench/spend.py`'s comparison)."""
    args: list[Any] = []
    arg = binder(args, dialect)

    parts: list[str] = []
    dims = query.group_by
    sources = [("raw", query.since, query.until)] if ledger_only else segments(query)
    for source, start, end in sources:
        columns = [_dimension(name, source, dialect) for name in dims]
        if source == "raw":
            tagged = ""
            if "tag" in dims:
                tagged = (
                    " LEFT JOIN json_each(l.tags) AS t ON true"
                    if dialect == "sqlite"
                    else " LEFT JOIN LATERAL json_array_elements_text(l.tags::json) AS t(value)"
                    " ON true"
                )
            where = f"x.created >= {arg(start)} AND x.created < {arg(end)}"
            if query.tenant is not None:
                where += f" AND x.tenant = {arg(query.tenant)}"
            select = [
                *columns,
                "count(*)",
                "sum(l.prompt_tokens)",
                "sum(l.completion_tokens)",
                "sum(l.cost_usd)",
                "sum(CASE WHEN l.cache <> '' THEN 1 ELSE 0 END)",
                "sum(l.saved_usd)",
                # Grouped by bucket too: each row of the answer counts one bucket's calls.
                *(f"CASE WHEN l.b = {i} THEN count(*) ELSE 0 END" for i in range(BUCKETS)),
            ]
            rows = f"SELECT x.*, {bucket_sql('x.latency_s')} AS b FROM ledger AS x WHERE {where}"
            body = f"SELECT {', '.join(select)} FROM ({rows}) AS l{tagged}"
            group = [*(str(i) for i in range(1, len(dims) + 1)), "l.b"]
        else:
            period = HOUR if source == "hour" else DAY
            where = (
                f"s.period = {period} AND s.period_start >= {arg(int(start))} "
                f"AND s.period_start < {arg(int(end))}"
            )
            if query.tenant is not None:
                where += f" AND s.tenant = {arg(query.tenant)}"
            select = [*columns, *(f"sum(s.{c})" for c in (*SUMS, *HISTOGRAM))]
            body = f"SELECT {', '.join(select)} FROM spend_rollup AS s WHERE {where}"
            group = [str(i) for i in range(1, len(dims) + 1)]
        if group:
            body += f" GROUP BY {', '.join(group)}"
        parts.append(body)
    if not parts:
        # Nothing to read; a statement that returns no row keeps callers uniform.
        return "SELECT 1 WHERE false", []
    return " UNION ALL ".join(parts), args


@dataclass(slots=True, kw_only=True)
class SpendTotals:
    """One group's sums, merged from its rows."""

    calls: int = 0
    """Ledger rows: model calls, cache hits, solver answers, tool calls with a cost."""
    input_tokens: int = 0
    """Prompt tokens."""
    output_tokens: int = 0
    """Completion tokens."""
    cost_usd: float = 0.0
    """What the calls cost."""
    cache_hits: int = 0
    """Calls a cache answered."""
    saved_usd: float = 0.0
    """What those hits would have cost."""
    histogram: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    """Calls per latency bucket (`LATENCY_EDGES`)."""

    def add(self, row: Sequence[Any]) -> None:
        """Add a row of `spend_sql` without its dimensions: the sums, then the histogram
        (all None: a segment without rows)."""
        calls, prompt, completion, cost, hits, saved = row[:6]
        self.calls += int(calls or 0)
        self.input_tokens += int(prompt or 0)
        self.output_tokens += int(completion or 0)
        self.cost_usd += float(cost or 0.0)
        self.cache_hits += int(hits or 0)
        self.saved_usd += float(saved or 0.0)
        histogram = self.histogram
        for i, count in enumerate(row[6:]):
            if count:
                histogram[i] += int(count)

    def as_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 10),
            "cache_hits": self.cache_hits,
            "saved_usd": round(self.saved_usd, 10),
            "latency_p50_s": quantile(self.histogram, 0.5),
            "latency_p95_s": quantile(self.histogram, 0.95),
        }


def merge(rows: Iterable[Sequence[Any]], dimensions: int) -> dict[tuple[Any, ...], SpendTotals]:
    """The groups of `spend_sql`'s rows: the first `dimensions` values of a row name its
    group. Groups whose rows cancel out (an open row moved by its closing) are dropped."""
    groups: dict[tuple[Any, ...], SpendTotals] = {}
    for row in rows:
        key = tuple(row[:dimensions])
        totals = groups.get(key)
        if totals is None:
            totals = groups[key] = SpendTotals()
        totals.add(row[dimensions:])
    return {key: totals for key, totals in groups.items() if totals.calls}


def quantile(histogram: Sequence[int], q: float) -> float | None:
    """The `q` quantile of the latencies counted in `histogram`, in seconds (None when it
    counts none): found in its bucket, interpolated geometrically within it."""
    total = sum(histogram)
    if total <= 0:
        return None
    target = q * total
    seen = 0
    for i, count in enumerate(histogram):
        if count <= 0:
            continue
        if seen + count >= target:
            fraction = (target - seen) / count
            high = LATENCY_EDGES[i] if i < len(LATENCY_EDGES) else LATENCY_EDGES[-1] * math.sqrt(2)
            if i == 0:
                return round(high * fraction, 4)
            low = LATENCY_EDGES[i - 1]
            return round(low * math.pow(high / low, fraction), 4)
        seen += count
    return round(LATENCY_EDGES[-1], 4)

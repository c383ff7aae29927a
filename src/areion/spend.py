"""Spend and cost per task, read from a store: what `GET /v1/spend` and `areion report`
both answer.

`spend()` groups the ledger by any of `store.rollups.DIMENSIONS` over [since, until):
calls, tokens, cost, cache hits, saved USD and p50/p95 latency per group, read from the
rollups where they keep the dimensions asked for. `tasks()` is the cost of a task: per
agent, how many runs finished, failed, paused or still run, and the p50/p95/mean cost
and steps of the finished ones (a run's cost is its model calls plus its tools').
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from areion.errors import RequestError
from areion.store.base import Store
from areion.store.rollups import DIMENSIONS, SpendQuery, SpendTotals, merge

__all__ = [
    "DEFAULT_SPAN_S",
    "MAX_GROUPS",
    "parse_group_by",
    "parse_time",
    "span",
    "spend",
    "tasks",
]

DEFAULT_SPAN_S = 30 * 86400.0
"""Without `since`: the last 30 days."""
MAX_GROUPS = 10_000
"""The most groups one answer lists (the costliest first)."""


def parse_time(value: str, param: str) -> float:
    """Unix seconds from `value`: a number, or an ISO 8601 date or time (UTC unless it
    names its offset); `RequestError` naming `param` otherwise."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise RequestError(
                f"{param} '{text[:40]}' is neither Unix seconds nor an ISO 8601 time "
                "(e.g. 2026-12-01 or 2026-12-01T09:00:00Z)",
                param=param,
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    if not math.isfinite(seconds) or seconds < 0:
        raise RequestError(f"{param} must be a time after 1970, got '{text[:40]}'", param=param)
    return seconds


def parse_group_by(value: str) -> tuple[str, ...]:
    """The dimensions of a comma list (`tenant,model`); `RequestError` on an unknown or
    repeated one."""
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    for name in names:
        if name not in DIMENSIONS:
            raise RequestError(
                f"group_by: unknown dimension '{name[:40]}'; use any of " + ", ".join(DIMENSIONS),
                param="group_by",
            )
    if len(set(names)) != len(names):
        raise RequestError("group_by names a dimension twice", param="group_by")
    return names


def span(
    since: float | None, until: float | None, *, now: float | None = None
) -> tuple[float, float]:
    """[since, until) with the defaults filled: until now, since 30 days before until."""
    if until is None:
        # A second ahead: the row of a call that ended just now is in.
        until = (time.time() if now is None else now) + 1.0
    end = until
    start = end - DEFAULT_SPAN_S if since is None else since
    if start >= end:
        raise RequestError("since must be before until", param="since")
    return start, end


def _label(name: str, value: Any) -> Any:
    if name in ("hour", "day"):
        return datetime.fromtimestamp(int(value), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


async def spend(store: Store, query: SpendQuery, *, limit: int = MAX_GROUPS) -> dict[str, Any]:
    """The answer of `GET /v1/spend` for `query`: its groups, costliest first (at most
    `limit`), and the total over every group."""
    groups = merge(await store.spend(query), len(query.group_by))
    total = SpendTotals()
    for totals in groups.values():
        total.calls += totals.calls
        total.input_tokens += totals.input_tokens
        total.output_tokens += totals.output_tokens
        total.cost_usd += totals.cost_usd
        total.cache_hits += totals.cache_hits
        total.saved_usd += totals.saved_usd
        total.histogram = [a + b for a, b in zip(total.histogram, totals.histogram, strict=True)]
    if "tag" in query.group_by:
        # A row with two tags is in two groups: the total comes from the rows once.
        once = SpendQuery(since=query.since, until=query.until, tenant=query.tenant)
        total = merge(await store.spend(once), 0).get((), SpendTotals())
    ordered = sorted(groups.items(), key=lambda item: (-item[1].cost_usd, str(item[0])))
    data = [
        {
            **{name: _label(name, value) for name, value in zip(query.group_by, key, strict=True)},
            **totals.as_json(),
        }
        for key, totals in ordered[:limit]
    ]
    return {
        "object": "spend",
        "since": query.since,
        "until": query.until,
        "group_by": list(query.group_by),
        "data": data,
        "has_more": len(ordered) > limit,
        "total": total.as_json(),
    }


def _quantile(values: list[float], q: float) -> float:
    """The `q` quantile of sorted `values`, interpolated linearly between ranks."""
    position = q * (len(values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "mean": None}
    values = sorted(values)
    return {
        "p50": round(_quantile(values, 0.5), 10),
        "p95": round(_quantile(values, 0.95), 10),
        "mean": round(sum(values) / len(values), 10),
    }


async def tasks(
    store: Store, *, since: float, until: float, tenant: str | None = None
) -> dict[str, Any]:
    """Cost per task: per agent, runs by status and what a finished run cost and took,
    over the runs created in [since, until)."""
    statuses: dict[str, dict[str, int]] = defaultdict(
        lambda: {"finished": 0, "failed": 0, "paused": 0, "running": 0}
    )
    costs: dict[str, list[float]] = defaultdict(list)
    steps: dict[str, list[float]] = defaultdict(list)
    for agent, status, cost, count in await store.run_stats(
        since=since, until=until, tenant=tenant
    ):
        by_status = statuses[agent]
        by_status[status] = by_status.get(status, 0) + 1
        if status == "finished":
            costs[agent].append(cost)
            steps[agent].append(float(count))
    data = [
        {
            "agent": agent,
            "runs": statuses[agent],
            "cost_usd": _summary(costs[agent]),
            "steps": _summary(steps[agent]),
        }
        for agent in sorted(statuses)
    ]
    return {"object": "spend.tasks", "since": since, "until": until, "data": data}

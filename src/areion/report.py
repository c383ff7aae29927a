"""`areion report`: spend by tenant, model and agent, cost per task, cache savings and
latency, as tables, JSON (`--json`) or a PNG (`--plot FILE`).

It reads the store the config names (`store:`, as `areion serve` does), so it works
with the server stopped and sees every replica's spend when they share PostgreSQL.
The figures are `GET /v1/spend`'s (`areion.spend`), read from the rollups: a report
over months reads a few thousand rollup rows, not the ledger's millions. When the
range covers more than `PROGRESS_ROWS` ledger rows, a progress bar on stderr (when it
is a terminal) follows the report's queries.
"""

from __future__ import annotations

import importlib
import re
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from areion import spend
from areion.errors import ConfigError
from areion.store.base import Store
from areion.store.rollups import SpendQuery

__all__ = ["PROGRESS_ROWS", "Progress", "build_report", "parse_since", "plot_report", "render"]

PROGRESS_ROWS = 5000
"""Ledger rows in range above which the report shows its progress."""

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str, param: str, *, now: float | None = None) -> float:
    """Unix seconds from `value`: relative to now (`7d`, `12h`, `30m`), else as
    `GET /v1/spend` reads it (Unix seconds, ISO 8601)."""
    match = _RELATIVE.match(value.strip())
    if match:
        return (time.time() if now is None else now) - float(match[1]) * _UNITS[match[2]]
    return spend.parse_time(value, param)


class Progress:
    """A one-line progress bar on a terminal stream; silent elsewhere."""

    def __init__(self, steps: int, rows: int, stream: TextIO, *, force: bool = False) -> None:
        self.steps = steps
        self.done = 0
        self.rows = rows
        self.stream = stream
        self.shown = force or (rows > PROGRESS_ROWS and stream.isatty())

    def step(self, what: str) -> None:
        self.done += 1
        if not self.shown:
            return
        width = 24
        filled = width * self.done // self.steps
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(
            f"\rreading spend over {self.rows:,} ledger rows [{bar}] "
            f"{self.done}/{self.steps} {what:<14}"
        )
        if self.done == self.steps:
            self.stream.write("\n")
        self.stream.flush()


async def build_report(
    store: Store,
    *,
    since: float,
    until: float,
    tenant: str | None = None,
    progress: TextIO | None = None,
    force_progress: bool = False,
) -> dict[str, Any]:
    """Every table of the report, as JSON: `GET /v1/spend` by tenant, model, agent and
    cache tier, over time (by day, or by hour over two days or less), and cost per task
    (`GET /v1/spend/tasks`)."""

    async def query(*group_by: str) -> dict[str, Any]:
        q = SpendQuery(group_by=group_by, since=since, until=until, tenant=tenant)
        return await spend.spend(store, q)

    total = await query()
    over = "hour" if until - since <= 2 * 86400 else "day"
    sections = {
        "by_tenant": ("tenant",),
        "by_model": ("model",),
        "by_agent": ("agent",),
        "cache": ("cache",),
        "over_time": (over, "tenant"),
    }
    bar = Progress(
        len(sections) + 1,
        int(total["total"]["calls"]),
        progress or sys.stderr,
        force=force_progress,
    )
    report: dict[str, Any] = {"since": since, "until": until, "tenant": tenant}
    for name, group_by in sections.items():
        report[name] = (await query(*group_by))["data"]
        bar.step(name)
    report["tasks"] = (await spend.tasks(store, since=since, until=until, tenant=tenant))["data"]
    bar.step("tasks")
    report["total"] = total["total"]
    return report


def _usd(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _table(title: str, header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    lines = [title]
    if not rows:
        return [*lines, "  (nothing in this range)", ""]
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return [*lines, ""]


def _spend_rows(data: list[dict[str, Any]], name: str) -> list[tuple[str, ...]]:
    return [
        (
            str(row[name]) or "-",
            f"{row['calls']:,}",
            f"{row['input_tokens']:,}",
            f"{row['output_tokens']:,}",
            _usd(row["cost_usd"]),
            _seconds(row["latency_p50_s"]),
            _seconds(row["latency_p95_s"]),
        )
        for row in data
    ]


_SPEND = ("{}", "CALLS", "INPUT TOK", "OUTPUT TOK", "COST USD", "P50 S", "P95 S")


def render(report: dict[str, Any]) -> str:
    """The report as text tables."""

    def when(t: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))

    total = report["total"]
    lines = [
        f"Spend from {when(report['since'])} to {when(report['until'])} UTC"
        + (f", tenant {report['tenant']}" if report["tenant"] else ""),
        f"  {total['calls']:,} calls, {_usd(total['cost_usd'])} USD, "
        f"{total['cache_hits']:,} cache hits saving {_usd(total['saved_usd'])} USD, "
        f"latency p50 {_seconds(total['latency_p50_s'])} s, "
        f"p95 {_seconds(total['latency_p95_s'])} s",
        "",
    ]
    for title, key, name in (
        ("By tenant", "by_tenant", "tenant"),
        ("By model (latency per model)", "by_model", "model"),
        ("By agent (- : calls outside agent runs)", "by_agent", "agent"),
    ):
        header = (_SPEND[0].format(name.upper()), *_SPEND[1:])
        lines += _table(title, header, _spend_rows(report[key], name))
    cache_rows = [
        (row["cache"] or "(model calls)", f"{row['calls']:,}", f"{row['cache_hits']:,}",
         _usd(row["cost_usd"]), _usd(row["saved_usd"]))
        for row in report["cache"]
    ]  # fmt: skip
    lines += _table("Cache savings", ("TIER", "CALLS", "HITS", "COST USD", "SAVED USD"), cache_rows)
    task_rows = [
        (
            row["agent"],
            str(row["runs"]["finished"]),
            str(row["runs"]["failed"]),
            str(row["runs"]["paused"]),
            _usd(row["cost_usd"]["p50"]),
            _usd(row["cost_usd"]["p95"]),
            _usd(row["cost_usd"]["mean"]),
            "-" if row["steps"]["mean"] is None else f"{row['steps']['mean']:.1f}",
        )
        for row in report["tasks"]
    ]
    lines += _table(
        "Cost per task (finished runs)",
        ("AGENT", "FINISHED", "FAILED", "PAUSED", "P50 USD", "P95 USD", "MEAN USD", "STEPS"),
        task_rows,
    )
    return "\n".join(lines).rstrip() + "\n"


def plot_report(report: dict[str, Any], path: str) -> None:
    """Spend over time (per tenant) and cost per task (per agent) as a PNG at `path`."""
    try:
        # Imported by name: matplotlib is optional and has no type stubs here.
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ModuleNotFoundError:
        raise ConfigError(
            "--plot needs matplotlib, which is not installed: pip install 'areion[plot]'"
        ) from None
    figure, (over_time, per_task) = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict[str, dict[str, float]] = {}
    period = "hour" if report["over_time"] and "hour" in report["over_time"][0] else "day"
    for row in report["over_time"]:
        series.setdefault(row["tenant"], {})[row[period]] = row["cost_usd"]
    moments = sorted({moment for points in series.values() for moment in points})
    for tenant, points in sorted(series.items()):
        over_time.plot(moments, [points.get(m, 0.0) for m in moments], marker="o", label=tenant)
    over_time.set_title(f"Spend per {period} (USD)")
    over_time.tick_params(axis="x", labelrotation=45, labelsize=7)
    if series:
        over_time.legend(fontsize=8)
    agents = [row for row in report["tasks"] if row["cost_usd"]["mean"] is not None]
    names = [row["agent"] for row in agents]
    positions = list(range(len(names)))
    per_task.bar([p - 0.2 for p in positions], [r["cost_usd"]["p50"] for r in agents], 0.4,
                 label="p50")  # fmt: skip
    per_task.bar([p + 0.2 for p in positions], [r["cost_usd"]["p95"] for r in agents], 0.4,
                 label="p95")  # fmt: skip
    per_task.set_xticks(positions, names)
    per_task.set_title("Cost per task by agent (USD, finished runs)")
    if agents:
        per_task.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)

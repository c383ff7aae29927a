"""`areion experiments report NAME`: an experiment's figures as a table, JSON or a plot."""

from __future__ import annotations

import importlib
from typing import Any

from areion.errors import ConfigError

__all__ = ["plot_experiment", "render_experiment"]


def _interval(value: dict[str, float | None], fmt: str) -> str:
    estimate, low, high = value["estimate"], value["low"], value["high"]
    if estimate is None:
        return "-"
    if low is None or high is None:
        return format(estimate, fmt)
    return f"{estimate:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def render_experiment(report: dict[str, Any]) -> str:
    """The report as text: one row per variant, then each comparison with control."""
    lines = [
        f"experiment {report['name']}: {report['verdict']} "
        f"(judged on {report['metric']}, control {report['control']})"
    ]
    header = ("variant", "units", "tasks", "success rate", "cost/task", "cost/success",
              "p50 latency s", "p95 latency s")  # fmt: skip
    rows = [header]
    for v in report["variants"]:
        rows.append(
            (
                v["name"] + (" (stopped)" if v["stopped"] else ""),
                str(v["units"]),
                str(v["tasks"]),
                _interval(v["success_rate"], ".3f"),
                _interval(v["cost_per_task_usd"], ".5f"),
                _interval(v["cost_per_success_usd"], ".5f"),
                _interval(v["latency_p50_s"], ".2f"),
                _interval(v["latency_p95_s"], ".2f"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.append("")
    lines.append("against control (anytime-valid 95% intervals):")
    for v in report["variants"][1:]:
        for c in v["vs_control"]:
            what = "difference" if c["kind"] == "difference" else "ratio"
            shown = _interval(c, ".3f")
            lines.append(f"  {v['name']} {c['metric']} {what}: {shown}")
        if v["stopped"]:
            lines.append(f"  {v['name']} stopped by guardrail: {v['stopped']}")
    if report.get("crossed_units"):
        lines.append(f"units that saw two variants (left out): {report['crossed_units']}")
    return "\n".join(lines) + "\n"


def plot_experiment(report: dict[str, Any], path: str) -> None:
    """The running estimate of each variant against control, with its interval, as the
    units came in: a PNG at `path`."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ModuleNotFoundError:
        raise ConfigError(
            "--plot needs matplotlib, which is not installed: pip install 'areion[plot]'"
        ) from None
    figure, axis = plt.subplots(figsize=(9, 4.5))
    kind = "difference"
    for name in sorted({point["variant"] for point in report["history"]}):
        points = [p for p in report["history"] if p["variant"] == name and p["low"] is not None]
        if not points:
            continue
        kind = points[0]["kind"]
        at = [p["at"] for p in points]
        axis.plot(at, [p["estimate"] for p in points], marker="o", label=f"{name} vs control")
        axis.fill_between(at, [p["low"] for p in points], [p["high"] for p in points], alpha=0.2)
    axis.axhline(0.0 if kind == "difference" else 1.0, color="grey", linewidth=1)
    axis.set_title(
        f"{report['name']}: {report['metric']} "
        f"({'difference' if kind == 'difference' else 'ratio'} to control), {report['verdict']}"
    )
    axis.set_xlabel("time (Unix seconds)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)

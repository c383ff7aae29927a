"""`areion jobs list|show|cancel`: the job queue of the config's store, as an operator
sees it (every tenant's); `show --watch` draws a job's progress until it ends."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import Any

from areion.config import Config
from areion.jobs.queue import JobQueue, open_queue
from areion.jobs.records import TERMINAL, BatchRecord

__all__ = ["add_jobs_parser", "progress_bar"]

_BAR = 30


def progress_bar(batch: BatchRecord, width: int = _BAR) -> str:
    """`[#########.....] 612/1000 lines, 3 failed (in_progress)`."""
    ended = batch.completed + batch.failed
    filled = width if not batch.total else round(width * ended / batch.total)
    failed = f", {batch.failed} failed" if batch.failed else ""
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {ended}/{batch.total} lines{failed} "
        f"({batch.status})"
    )


def _when(value: float | None) -> str:
    if not value:
        return "-"
    return dt.datetime.fromtimestamp(value, dt.UTC).isoformat(timespec="seconds")


def _json(batch: BatchRecord) -> dict[str, Any]:
    return {
        "id": batch.batch_id, "tenant": batch.tenant, "endpoint": batch.endpoint,
        "status": batch.status, "total": batch.total, "completed": batch.completed,
        "failed": batch.failed, "created": batch.created, "not_before": batch.not_before,
        "deadline": batch.deadline, "schedule": batch.schedule, "native": batch.native,
        "owner": batch.owner,
    }  # fmt: skip


async def _run(args: argparse.Namespace, config: Config) -> int:
    from areion.store import open_store

    store = open_store(config.store)
    try:
        queue = open_queue(store)
        return await _action(args, queue)
    finally:
        await store.aclose()


async def _action(args: argparse.Namespace, queue: JobQueue) -> int:
    if args.action == "list":
        batches = await queue.list_batches(args.tenant, limit=args.limit)
        if args.json:
            print(json.dumps([_json(b) for b in batches]))
            return 0
        for b in batches:
            print(f"{b.batch_id}  {b.tenant}  {b.endpoint}  {progress_bar(b, 10)}  "
                  f"starts {_when(b.not_before)}")  # fmt: skip
        if not batches:
            print("no jobs", file=sys.stderr)
        return 0
    if args.action == "cancel":
        found = await queue.cancel_batch(None, args.job)
    else:
        found = await queue.get_batch(None, args.job)
    if found is None:
        print(f"areion: no job '{args.job}' in the store", file=sys.stderr)
        return 2
    if args.action == "cancel":
        print(f"job {found.batch_id}: {found.status}")
        return 0
    if args.json:
        print(json.dumps(_json(found)))
        return 0
    print(f"job {found.batch_id} of tenant {found.tenant}: {found.endpoint}")
    print(f"  created {_when(found.created)}, starts {_when(found.not_before)}, "
          f"deadline {_when(found.deadline)}")  # fmt: skip
    if found.schedule.get("reason"):
        print(f"  {found.schedule['reason']}")
    if found.native:
        print(f"  sent to {found.native.get('deployment')}: {found.native.get('batch_id')}")
    if args.watch:
        await _watch(queue, found, args.interval)
    else:
        print("  " + progress_bar(found))
    return 0


async def _watch(queue: JobQueue, batch: BatchRecord, interval: float) -> None:
    """Redraw the job's bar in place (a line per change off a terminal) until it ends."""
    live = sys.stdout.isatty()
    shown = ""
    while True:
        bar = progress_bar(batch)
        if bar != shown:
            print(("\r  " if live else "  ") + bar, end="" if live else "\n", flush=True)
            shown = bar
        if batch.status in TERMINAL:
            break
        await asyncio.sleep(interval)
        batch = await queue.get_batch(None, batch.batch_id) or batch
    if live:
        print()


def add_jobs_parser(
    commands: Any, *, config: Callable[[str | None], tuple[Config, str]], config_help: str
) -> None:
    """The `jobs` command and its actions, on `commands` (argparse subparsers)."""
    jobs = commands.add_parser("jobs", help="list, show and cancel batches and deferred runs")
    actions = jobs.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the newest jobs, every tenant's")
    listing.add_argument("--tenant", help="only this tenant's")
    listing.add_argument("--limit", type=int, default=20)
    show = actions.add_parser("show", help="one job: when it starts and why, its progress")
    show.add_argument("job", metavar="ID")
    show.add_argument("--watch", action="store_true", help="draw its progress until it ends")
    show.add_argument("--interval", type=float, default=0.5, help="seconds between redraws")
    cancel = actions.add_parser("cancel", help="stop a job (answered lines stay answered)")
    cancel.add_argument("job", metavar="ID")

    def run(args: argparse.Namespace) -> int:
        loaded, _ = config(args.config)
        return asyncio.run(_run(args, loaded))

    for action in (listing, show, cancel):
        action.add_argument("--config", help=config_help)
        action.add_argument("--json", action="store_true", help="print JSON")
        action.set_defaults(run=run)

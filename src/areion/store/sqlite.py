"""The embedded default store: one SQLite file in WAL mode.

sqlite3 blocks, so every statement runs on one dedicated thread: the event loop
never waits on the disk, and a single writer needs no locking of its own.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from areion.errors import ConfigError
from areion.types import LedgerEntry

__all__ = ["SQLiteStore", "sqlite_path"]

T = TypeVar("T")

_SCHEMA = """
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
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_tenant ON ledger (tenant, created);
CREATE INDEX IF NOT EXISTS ledger_request ON ledger (request_id);
"""

_COLUMNS = (
    "request_id, tenant, model, deployment, upstream_model, prompt_tokens, "
    "completion_tokens, cached_tokens, cost_usd, estimated, latency_s, created"
)

_BATCH_VALUES = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(12))
_INSERT_BATCH = f"INSERT INTO ledger ({_COLUMNS}) SELECT {_BATCH_VALUES} FROM json_each(?)"


def sqlite_path(url: str) -> str:
    """The file of a `sqlite:///path` URL (`sqlite:///:memory:` for memory)."""
    if not url.startswith("sqlite:///"):
        raise ConfigError(f"store: '{url}' is not a sqlite:/// URL")
    return url.removeprefix("sqlite:///") or ":memory:"


class SQLiteStore:
    """`Store` over one SQLite database file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="areion-sqlite")
        self._db: sqlite3.Connection | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        return cls(sqlite_path(url))

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a process crash; only an OS crash can lose
            # the last transactions, which is the trade every WAL deployment makes.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise RuntimeError("the store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: work(self._connect()))

    async def append_ledger(self, entries: Sequence[LedgerEntry]) -> None:
        # One statement for the whole batch: the writer thread holds the GIL for one
        # call instead of one per row, which kept stealing it from the event loop.
        rows = orjson.dumps(
            [
                (
                    e.request_id, e.tenant, e.model, e.deployment, e.upstream_model,
                    e.prompt_tokens, e.completion_tokens, e.cached_tokens, e.cost_usd,
                    int(e.estimated), e.latency_s, e.created,
                )
                for e in entries
            ]
        )  # fmt: skip

        def write(db: sqlite3.Connection) -> None:
            db.execute(_INSERT_BATCH, (rows,))

        await self._run(write)

    async def ledger(
        self, *, tenant: str | None = None, request_id: str | None = None, limit: int = 1000
    ) -> list[LedgerEntry]:
        where: list[str] = []
        args: list[Any] = []
        if tenant is not None:
            where.append("tenant = ?")
            args.append(tenant)
        if request_id is not None:
            where.append("request_id = ?")
            args.append(request_id)
        sql = f"SELECT {_COLUMNS} FROM ledger"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC LIMIT ?"
        args.append(limit)

        def read(db: sqlite3.Connection) -> list[LedgerEntry]:
            return [
                LedgerEntry(
                    request_id=row[0],
                    tenant=row[1],
                    model=row[2],
                    deployment=row[3],
                    upstream_model=row[4],
                    prompt_tokens=row[5],
                    completion_tokens=row[6],
                    cached_tokens=row[7],
                    cost_usd=row[8],
                    estimated=bool(row[9]),
                    latency_s=row[10],
                    created=row[11],
                )
                for row in db.execute(sql, args)
            ]

        return await self._run(read)

    async def aclose(self) -> None:
        if self._closed:
            return

        def close(db: sqlite3.Connection) -> None:
            db.close()

        if self._db is not None:
            await self._run(close)
            self._db = None
        self._closed = True
        self._executor.shutdown(wait=True)

"""The PostgreSQL store's connections: URL, pool, migration, and failure handling.

The pool (asyncpg) is opened lazily, in the event loop that first uses the store,
and the schema is migrated on its first connection. asyncpg connections belong to
one loop: work from another loop (a ledger flushed from a finalizer at exit) gets a
connection of its own for the occasion; if the pool's loop has closed, the next
loop opens a new pool.

Whatever shows that PostgreSQL cannot be reached (a refused or timed-out connect, a
connection lost mid-statement, a server shutting down, a statement past its timeout)
becomes `BackendUnavailableError(backend="postgres")`, within `connect_timeout` or
`command_timeout`. Nothing needs restarting once PostgreSQL is back: asyncpg's pool
replaces a closed connection when it is next acquired. A connection that died while
idle in the pool is only noticed by the statement sent on it; work that is safe to
send twice (reads, and batches, which `areion_write` applies at most once) is then
sent once more on a fresh connection.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from areion.errors import BackendUnavailableError, ConfigError
from areion.store.postgres_schema import MIGRATIONS, VERSION

__all__ = ["Connection", "Connector", "PostgresSettings", "postgres_settings"]

T = TypeVar("T")
if TYPE_CHECKING:
    Connection: TypeAlias = asyncpg.Connection[asyncpg.Record]
else:
    Connection = asyncpg.Connection  # generic only in the type stubs

_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


@dataclass(slots=True, kw_only=True, frozen=True)
class PostgresSettings:
    """Where the store's database is and how long to wait for it."""

    dsn: str
    """The URL asyncpg connects with (Areion's own query parameters removed)."""
    schema: str | None = None
    """The schema every table lives in (created if missing); None: the default one."""
    connect_timeout: float = 3.0
    """Seconds to open a connection (TCP, authentication, start-up)."""
    command_timeout: float = 5.0
    """Seconds any one statement may take, and a wait for a free pooled connection."""
    pool_size: int = 10
    """Connections at most."""


def postgres_settings(url: str, **overrides: Any) -> PostgresSettings:
    """The settings of a `postgresql://user@host:port/db?schema=NAME` URL; the query may
    also set `connect_timeout`, `command_timeout` (seconds) and `pool_size`."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError("store: not a postgresql:// URL")
    ours: dict[str, Any] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "schema":
            if not _SCHEMA_NAME.fullmatch(value):
                raise ConfigError(
                    f"store: schema '{value}' is not a plain identifier (letters, digits, _)"
                )
            ours["schema"] = value
        elif name in ("connect_timeout", "command_timeout"):
            ours[name] = _number(name, value, float)
        elif name == "pool_size":
            ours[name] = _number(name, value, int)
        else:
            theirs.append((name, value))
    if not any(name == "application_name" for name, _ in theirs):
        theirs.append(("application_name", "areion"))  # what pg_stat_activity shows
    ours.update(overrides)
    dsn = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(theirs)))
    return PostgresSettings(dsn=dsn, **ours)


def _number(name: str, value: str, kind: Callable[[str], float]) -> float:
    try:
        number = kind(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise ConfigError(f"store: {name}={value!r} must be a positive number")
    return number


class Connector:
    """Connections to one PostgreSQL schema, pooled per event loop."""

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: asyncio.Lock | None = None
        self._migrated = False
        self._closed = False

    async def run(self, work: Callable[[Connection], Awaitable[T]], *, again: bool = False) -> T:
        """`work` on a connection. `again`: `work` may be sent twice, so it is, once,
        when its connection turns out to have been lost."""
        if self._closed:
            raise RuntimeError("the store is closed")
        try:
            return await self._run(work)
        except Exception as exc:
            if not (again and _lost(exc)):
                _raise_translated(exc)
        try:
            return await self._run(work)
        except Exception as exc:
            _raise_translated(exc)

    async def _run(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        if self._pool is not None and self._loop is not loop and not self._loop_closed():
            # The pool serves its own loop only; this one gets a connection of its own.
            connection = await self._connect()
            try:
                if not self._migrated:
                    await _migrate(connection, self.settings.schema)
                    self._migrated = True
                return await work(connection)
            finally:
                await connection.close(timeout=self.settings.command_timeout)
        pool = await self._open(loop)
        async with pool.acquire(timeout=self.settings.command_timeout) as pooled:
            return await work(pooled)  # type: ignore[arg-type]  # a proxy of a Connection

    def _loop_closed(self) -> bool:
        return self._loop is not None and self._loop.is_closed()

    async def _open(self, loop: asyncio.AbstractEventLoop) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool is not None and self._loop is loop:
            return self._pool
        if self._opening is None or self._loop is not loop:
            # The loop that used the pool has closed (its connections went with it).
            self._pool, self._loop, self._opening = None, loop, asyncio.Lock()
        async with self._opening:
            if self._pool is not None:
                return self._pool
            settings = self.settings
            pool = await asyncpg.create_pool(
                settings.dsn,
                min_size=1,
                max_size=settings.pool_size,
                timeout=settings.connect_timeout,
                command_timeout=settings.command_timeout,
                server_settings=_server_settings(settings.schema),
                reset=_keep,
            )
            try:
                if not self._migrated:
                    async with pool.acquire(timeout=settings.command_timeout) as connection:
                        await _migrate(connection, settings.schema)  # type: ignore[arg-type]
                    self._migrated = True
            except BaseException:
                pool.terminate()
                raise
            self._pool = pool
            return pool

    async def _connect(self) -> Connection:
        settings = self.settings
        return await asyncpg.connect(
            settings.dsn,
            timeout=settings.connect_timeout,
            command_timeout=settings.command_timeout,
            server_settings=_server_settings(settings.schema),
        )

    async def aclose(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if self._loop is not asyncio.get_running_loop():
            pool.terminate()  # its loop is gone or elsewhere: nothing to wait for
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=self.settings.command_timeout)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pool.terminate()


async def _keep(connection: Connection) -> None:
    """The pool's reset between uses: nothing. The store never changes a session's
    state (asyncpg still rolls back a transaction left open); its default reset would
    cost a round trip on every release."""
    del connection


def _server_settings(schema: str | None) -> dict[str, str]:
    return {} if schema is None else {"search_path": f'"{schema}"'}


async def _migrate(connection: Connection, schema: str | None) -> None:
    """Bring the schema to `VERSION`, under an advisory lock held until commit."""
    async with connection.transaction():
        await connection.execute(
            "SELECT pg_advisory_xact_lock(hashtext('areion-schema:' || $1::text))",
            schema if schema is not None else "",
        )
        if schema is not None:
            await connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer)")
        current = await connection.fetchval("SELECT max(version) FROM schema_version") or 0
        if current > VERSION:
            raise ConfigError(
                f"store: the database schema is at version {current}, newer than this "
                f"Areion knows ({VERSION}); upgrade Areion"
            )
        for version in range(current, VERSION):
            await connection.execute(MIGRATIONS[version])
        if current < VERSION:
            await connection.execute("DELETE FROM schema_version")
            await connection.execute("INSERT INTO schema_version VALUES ($1)", VERSION)


# SQLSTATE classes that mean the server cannot serve: 08 connection exception,
# 53 insufficient resources (too many connections, disk full), 57 operator
# intervention (shutting down, starting up), 58 system error.
_DOWN_CLASSES = ("08", "53", "57", "58")
# Serialization failure and deadlock: the transaction was rolled back; send it again.
_RETRY_STATES = ("40001", "40P01")


def _lost(exc: BaseException) -> bool:
    """Did the work fail because its connection broke (or its transaction was rolled
    back by a deadlock), so that sending it again on another may succeed?"""
    if isinstance(exc, asyncpg.PostgresError):
        state = str(exc.sqlstate or "")
        return state in ("08003", "08006", "57P01", "57P02") or state in _RETRY_STATES
    if isinstance(exc, asyncpg.InterfaceError):
        return "closed" in str(exc)
    return isinstance(exc, ConnectionResetError | BrokenPipeError)


def _raise_translated(exc: Exception) -> NoReturn:
    translated = _translated(exc)
    if translated is exc:
        raise exc
    raise translated from exc


def _translated(exc: Exception) -> Exception:
    """The error a caller of the store sees for `exc`."""
    if isinstance(exc, asyncpg.PostgresError):
        state = str(exc.sqlstate or "")
        if state[:2] in _DOWN_CLASSES:
            return _unavailable(exc)
        if state[:2] == "28" or state == "3D000":  # authentication, unknown database
            return ConfigError(f"store: PostgreSQL refused the connection: {exc}")
        return exc
    if isinstance(exc, TimeoutError | OSError):
        return _unavailable(exc)
    if isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
        return _unavailable(exc)
    return exc


def _unavailable(exc: BaseException) -> BackendUnavailableError:
    why = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        why = "no answer in time"
    return BackendUnavailableError(
        f"the ledger and state store (PostgreSQL) is unavailable: {why}; "
        "calls are refused until it is back",
        backend="postgres",
    )

"""PostgreSQL for tests: a fresh schema per test, and a proxy that can play an outage.

The server is `AREION_TEST_POSTGRES` (default: the local one CI runs,
postgresql://postgres@127.0.0.1:5432/test). Without it, tests that need it skip,
except under CI=true, where they fail: CI must never pass by running none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

POSTGRES_URL = os.environ.get("AREION_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), 2):
            return True
    except OSError:
        return False


def require_postgres() -> str:
    """The test server's URL; skips (fails under CI=true) when it cannot be reached."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        reason = "asyncpg is not installed (pip install -e '.[dev]')"
    else:
        if _reachable(POSTGRES_URL):
            return POSTGRES_URL
        reason = f"PostgreSQL is not reachable at {POSTGRES_URL}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the PostgreSQL tests")
    pytest.skip(reason)


@contextlib.asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """A store URL whose tables go in a schema of their own, dropped afterwards."""
    import asyncpg

    url = require_postgres()
    schema = f"areion_test_{uuid.uuid4().hex[:12]}"
    try:
        # The application name lets a test find this schema's connections.
        yield f"{url}?schema={schema}&application_name={schema}"
    finally:
        admin = await asyncpg.connect(url)
        try:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await admin.close()


async def terminate_connections(url: str, application_name: str) -> int:
    """Kill the server side of every connection of `application_name`, and wait until
    they are gone; how many there were."""
    import asyncpg

    admin = await asyncpg.connect(url.partition("?")[0])
    try:
        killed = await admin.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) "
            "FROM pg_stat_activity WHERE application_name = $1",
            application_name,
        )
        return int(killed)
    finally:
        await admin.close()


class Proxy:
    """A TCP relay to PostgreSQL that can be turned off (refusing connections and
    dropping open ones, as a server that went down) and on again, on the same port."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        self.port = 0

    def url(self, target_url: str) -> str:
        parts = urlsplit(target_url)
        netloc = (
            f"{parts.username}@127.0.0.1:{self.port}"
            if parts.username
            else (f"127.0.0.1:{self.port}")
        )
        return parts._replace(netloc=netloc).geturl()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._pipes):
            writer.transport.abort()
        self._pipes.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._pipes.update((writer, up_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._pipes.difference_update((writer, up_writer))

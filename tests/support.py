"""Helpers for tests that need real servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn


class FirstChoice(random.Random):
    """A balancer's tie-breaker that always takes the first candidate (config order)."""

    def choice(self, seq: Any) -> Any:
        return seq[0]


class ManualClock:
    """A clock that moves only when a test moves it: durations without sleeping."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _Instant(selectors.DefaultSelector):
    """Never blocks: waiting for the next timer moves the virtual clock there instead."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> Any:
        if timeout is not None and timeout > 0:
            self._clock.advance(timeout)
        return super().select(0)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: sleeps and timers take no real time, and happen in
    the same order however busy the machine is. For code that waits only on timers."""

    def __init__(self) -> None:
        self.clock = ManualClock(0.0)
        super().__init__(_Instant(self.clock))

    def time(self) -> float:
        return self.clock()


def run_virtual(main: Coroutine[Any, Any, Any]) -> Any:
    """Run `main` to completion on a `VirtualTimeLoop`."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.close()


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test process owns signals
        pass


@contextlib.contextmanager
def serve_app(
    app: Any,
    *,
    port: int | None = None,
    shutdown_timeout: float | None = None,
    host: str = "127.0.0.1",
    **options: Any,
) -> Iterator[str]:
    """Serve an ASGI app on `host` (loopback) in a background thread; yields its base URL.

    `shutdown_timeout`: cancel requests still running this long after the test is done
    with the server (by default they are waited for). `options` go to uvicorn
    (`http=guarded_protocol(...)`, as `areion serve` runs)."""
    port = port or free_port(host)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="critical" if shutdown_timeout is not None else "warning",
        lifespan="on",
        timeout_graceful_shutdown=shutdown_timeout,
        **options,
    )
    server = _ThreadServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{f'[{host}]' if ':' in host else host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def wait_for_prometheus(url: str, timeout: float = 60.0) -> None:
    """Wait until the Prometheus at `url` answers queries: it listens, and answers 503,
    before its storage is open."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/-/ready", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.1)
    raise RuntimeError(f"Prometheus at {url} was not ready after {timeout}s")


async def gather_limited(coros: list[Any], limit: int) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def run(coro: Any) -> Any:
        async with semaphore:
            return await coro

    return await asyncio.gather(*(run(c) for c in coros))


async def eventually(check: Callable[[], Awaitable[bool]], *, within: float = 10.0) -> None:
    """Poll `check` until it is true; fail after `within` seconds (a generous bound, not a
    timing claim: the state is polled, never waited for by sleeping a fixed time)."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within}s")
        await asyncio.sleep(0.01)


# -- Redis ------------------------------------------------------------------------------

REDIS_URL = os.environ.get("AREION_TEST_REDIS", "redis://127.0.0.1:6379/0")
"""The Redis the shared-state tests use (CI and the dev machines run one here)."""


def _redis_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _missing(what: str) -> None:
    """Fail in CI, where Redis must be there; skip on a machine without it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}; CI must provide it")
    pytest.skip(what)


def missing_embedding_model(error: Exception) -> NoReturn:
    """Fail in CI, where the embedding model must be installed; skip on a machine
    without it. `error` is the `ModelNotInstalledError` that found it missing."""
    from areion.cache.embedding import INSTALL_HINT

    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must install the embedding model: {error}")
    pytest.skip(f"embedding model not installed ({INSTALL_HINT})")


def require_embedding_model() -> Path:
    """The installed embedding model's directory (`missing_embedding_model` if none)."""
    from areion.cache.embedding import ModelNotInstalledError, model_dir

    try:
        return model_dir()
    except ModelNotInstalledError as exc:
        missing_embedding_model(exc)


def require_redis(url: str = REDIS_URL) -> None:
    parts = urlsplit(url)
    if not _redis_answers(parts.hostname or "127.0.0.1", parts.port or 6379):
        _missing(f"no Redis answers at {url} (set AREION_TEST_REDIS to use another)")


def prefixed(url: str, prefix: str | None = None) -> str:
    """`url` with a key prefix of its own (by default a new, unique one)."""
    prefix = prefix or f"areion-test:{uuid.uuid4().hex}:"
    return f"{url}{'&' if '?' in url else '?'}prefix={prefix}"


class PrivateRedis:
    """A redis-server of the test's own, on a free loopback port, keeping nothing on disk:
    kill it and start it again on the same port to test what a restart does.

        with PrivateRedis() as redis:
            shared = RedisShared(redis.url)
            redis.kill()
            redis.start()
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._dir = tempfile.mkdtemp(prefix="areion-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            _missing("redis-server is not installed")
        assert binary is not None
        options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self._dir]
        self._process = subprocess.Popen(
            [binary, "--port", str(self.port), *options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while not _redis_answers("127.0.0.1", self.port, timeout=0.5):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        """Stop it as a crash would (SIGKILL): everything it held is gone."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)

    def pause(self) -> None:
        """Freeze it (SIGSTOP): connections stay open and nothing answers."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

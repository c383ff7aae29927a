"""Helpers for tests that need real servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import random
import selectors
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any

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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test process owns signals
        pass


@contextlib.contextmanager
def serve_app(
    app: Any, *, port: int | None = None, shutdown_timeout: float | None = None, **options: Any
) -> Iterator[str]:
    """Serve an ASGI app on 127.0.0.1 in a background thread; yields its base URL.

    `shutdown_timeout`: cancel requests still running this long after the test is done
    with the server (by default they are waited for). `options` go to uvicorn
    (`http=guarded_protocol(...)`, as `areion serve` runs)."""
    port = port or free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
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
        yield f"http://127.0.0.1:{port}"
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


async def gather_limited(coros: list[Any], limit: int) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def run(coro: Any) -> Any:
        async with semaphore:
            return await coro

    return await asyncio.gather(*(run(c) for c in coros))

"""Several `areion serve` processes sharing one PostgreSQL schema and one Redis prefix:
the replicas of the distributed-mode tests."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.support import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]


class Cluster:
    """N replicas of one config; `urls[i]` is replica i's base URL."""

    def __init__(
        self, config: dict[str, Any], folder: Path, replicas: int = 3, args: tuple[str, ...] = ()
    ) -> None:
        self.config = config
        self.args = args
        self.path = folder / "areion.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.ports = [free_port() for _ in range(replicas)]
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * replicas
        self.logs = [folder / f"replica-{i}.log" for i in range(replicas)]
        self._turn = itertools.count()

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def start(self, i: int, env: dict[str, str] | None = None) -> None:
        with self.logs[i].open("ab") as log:
            self.processes[i] = subprocess.Popen(
                [sys.executable, "-m", "areion.cli", "serve", "--config", str(self.path),
                 "--port", str(self.ports[i]), "--log-level", "warning", *self.args],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )  # fmt: skip
        try:
            wait_for_port(self.ports[i], timeout=60)
        except RuntimeError:
            raise RuntimeError(f"replica {i} did not start:\n{self.log(i)}") from None

    def kill(self, i: int) -> None:
        """kill -9: the replica dies with whatever it was doing."""
        process = self.processes[i]
        if process is not None:
            process.kill()
            process.wait(timeout=30)
            self.processes[i] = None

    def stop(self, i: int) -> None:
        process = self.processes[i]
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            self.processes[i] = None

    def log(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")

    def next_url(self) -> str:
        """Round-robin over the replicas, as a load balancer spreads requests."""
        return self.urls[next(self._turn) % len(self.urls)]


@contextlib.contextmanager
def cluster(
    config: dict[str, Any],
    folder: Path,
    replicas: int = 3,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Iterator[Cluster]:
    group = Cluster(config, folder, replicas, args)
    try:
        for i in range(replicas):
            group.start(i, env)
        yield group
    finally:
        for i in range(replicas):
            group.stop(i)

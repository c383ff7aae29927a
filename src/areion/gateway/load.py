"""Load reported by deployments, for capacity-aware balancing.

vLLM (and `areion sim`) expose gauges at /metrics: requests running, requests
waiting and KV-cache usage. A `LoadProbe` polls them in the background; the hot
path only reads the last snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["LoadProbe", "LoadReading", "RemoteLoad", "parse_vllm_metrics"]

log = logging.getLogger("areion.gateway.load")


class LoadReading(Protocol):
    """What balancing reads of a deployment's load (a `RemoteLoad`, or an in-process one)."""

    @property
    def running(self) -> float: ...
    @property
    def waiting(self) -> float: ...
    @property
    def kv_cache_usage(self) -> float: ...


@dataclass(slots=True, kw_only=True)
class RemoteLoad:
    """What a deployment reports about itself."""

    running: float = 0.0
    """Requests being generated."""
    waiting: float = 0.0
    """Requests queued for a slot."""
    kv_cache_usage: float = 0.0
    """Fraction (0..1) of the KV cache in use."""
    updated: float = 0.0
    """`time.monotonic()` of the reading."""


_RUNNING = {"vllm:num_requests_running"}
_WAITING = {"vllm:num_requests_waiting"}
_KV = {"vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"}


def parse_vllm_metrics(text: str, *, model: str | None = None) -> RemoteLoad:
    """Sum the vLLM load gauges in a Prometheus text page (for one `model_name` if given)."""
    load = RemoteLoad(updated=time.monotonic())
    kv_seen = False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if model is not None and sample.labels.get("model_name", model) != model:
                continue
            if sample.name in _RUNNING:
                load.running += sample.value
            elif sample.name in _WAITING:
                load.waiting += sample.value
            elif sample.name in _KV and not kv_seen:
                load.kv_cache_usage = max(load.kv_cache_usage, sample.value)
        if family.name in _KV and family.samples:
            kv_seen = True
    return load


@dataclass(slots=True, kw_only=True)
class _Target:
    url: str
    model: str
    apply: Callable[[RemoteLoad], None]


class LoadProbe:
    """Polls load endpoints every `interval` seconds while the runtime runs."""

    def __init__(self, *, interval: float = 0.5) -> None:
        self.interval = interval
        self._targets: list[_Target] = []
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def watch(self, url: str, *, model: str, apply: Callable[[RemoteLoad], None]) -> None:
        self._targets.append(_Target(url=url, model=model, apply=apply))

    @property
    def targets(self) -> Sequence[str]:
        return [target.url for target in self._targets]

    def start(self) -> None:
        if self._targets and self._task is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(1.0))
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def poll_once(self) -> None:
        assert self._client is not None
        await asyncio.gather(*(self._poll(target) for target in self._targets))

    async def _poll(self, target: _Target) -> None:
        assert self._client is not None
        try:
            response = await self._client.get(target.url)
            response.raise_for_status()
            target.apply(parse_vllm_metrics(response.text, model=target.model))
        except (httpx.HTTPError, ValueError) as error:
            log.debug("load probe %s failed: %s", target.url, error)

    async def _run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.interval)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

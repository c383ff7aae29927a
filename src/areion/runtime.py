"""`Runtime`: the one engine behind the library, the server and the CLI."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from types import TracebackType

from areion.accounting import Accounting
from areion.config import Config, default_config, load_config
from areion.errors import RequestError, UnknownModelError
from areion.gateway import Gateway, LoadProbe, build_groups
from areion.gateway.deployments import Deployment
from areion.gateway.load import RemoteLoad
from areion.pipeline import Call, Result, Stage, compose
from areion.store import Store, open_store
from areion.streaming import ChatStream
from areion.telemetry import Ledger, Metrics
from areion.types import ChatRequest, ChatResponse

__all__ = ["Runtime"]


# A random per-process prefix and a counter: unique across replicas and restarts,
# without a system call per request.
_ID_PREFIX = "req_" + os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """A new, unique request id."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):x}"


class Runtime:
    """Runs model calls through the request path: accounting, then the gateway.

    `Runtime()` is the embedded default (sim models, SQLite in `areion.db`);
    `Runtime.from_config("areion.yaml")` reads a config file. Use it as an async
    context manager, or call `aclose()`, so pending ledger writes land.
    """

    def __init__(self, config: Config | None = None, *, store: Store | None = None) -> None:
        self.config = config or default_config()
        self.metrics = Metrics()
        self.store = store or open_store(self.config.store)
        self.ledger = Ledger(self.store)
        groups = build_groups(self.config, self.metrics)
        self.gateway = Gateway(self.config, groups, self.metrics)
        self.load_probe = LoadProbe()
        for deployment in self.gateway.deployments.values():
            if deployment.config.load_metrics_url:
                self.load_probe.watch(
                    deployment.config.load_metrics_url,
                    model=deployment.config.upstream_model,
                    apply=_setter(deployment),
                )
        stages: list[Stage] = [Accounting(self.gateway.deployments, self.ledger, self.metrics)]
        self._handler = compose(stages, self._terminal)
        self._started = False
        self._closed = False

    @classmethod
    def from_config(cls, path: str | os.PathLike[str]) -> Runtime:
        """A runtime configured by a YAML file."""
        return cls(load_config(path))

    @property
    def models(self) -> list[str]:
        """The model names clients can ask for."""
        return list(self.gateway.groups)

    def _begin(self, request: ChatRequest, tenant: str, request_id: str | None) -> Call:
        if not self._started:
            self._started = True
            self.load_probe.start()
        if request.model not in self.gateway.groups:
            raise UnknownModelError(
                f"model '{request.model}' does not exist; available: "
                + ", ".join(sorted(self.gateway.groups)),
                param="model",
            )
        if not request.messages:
            raise RequestError("messages must not be empty", param="messages")
        return Call(
            request=request,
            tenant=tenant,
            request_id=request_id or new_request_id(),
            started=time.perf_counter(),
        )

    async def _terminal(self, call: Call) -> Result:
        if call.request.stream:
            return await self.gateway.stream(
                call.request, request_id=call.request_id, started=call.started
            )
        return await self.gateway.complete(call.request)

    async def chat(
        self, request: ChatRequest, *, tenant: str = "default", request_id: str | None = None
    ) -> ChatResponse:
        """The whole answer to `request` (whose `stream` flag is ignored)."""
        if request.stream:
            request.stream = False
        call = self._begin(request, tenant, request_id)
        result = await self._handler(call)
        assert isinstance(result, ChatResponse)
        return result

    async def chat_stream(
        self, request: ChatRequest, *, tenant: str = "default", request_id: str | None = None
    ) -> ChatStream:
        """The answer as a `ChatStream`; returns once its first chunk has arrived."""
        request.stream = True
        call = self._begin(request, tenant, request_id)
        result = await self._handler(call)
        assert isinstance(result, ChatStream)
        return result

    async def aclose(self) -> None:
        """Stop background work, write pending ledger records, close connections."""
        if self._closed:
            return
        self._closed = True
        await self.load_probe.aclose()
        await self.ledger.aclose()
        await self.gateway.aclose()
        await self.store.aclose()

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _setter(deployment: Deployment) -> Callable[[RemoteLoad], None]:
    def apply(load: RemoteLoad) -> None:
        deployment.remote_load = load

    return apply

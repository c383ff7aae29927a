"""The sim provider: a simulated model answered in-process, without HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

from areion.config import ModelConfig
from areion.errors import ConfigError
from areion.sim.engine import SimEngine, SimLoad
from areion.types import ChatRequest, ChatResponse, StreamChunk

__all__ = ["SimProvider", "shared_engine"]

# One engine per time scale for the whole process, so deployments of the same
# profile share its slots and queue, as they would share one real server.
_ENGINES: dict[float, SimEngine] = {}


def shared_engine(time_scale: float = 1.0) -> SimEngine:
    """The process-wide engine for `time_scale`, with the built-in profiles."""
    engine = _ENGINES.get(time_scale)
    if engine is None:
        engine = _ENGINES[time_scale] = SimEngine(time_scale=time_scale)
    return engine


class SimProvider:
    """Answers one sim deployment from a `SimEngine` (the shared one unless given)."""

    def __init__(
        self, config: ModelConfig, *, deployment: str, engine: SimEngine | None = None
    ) -> None:
        self.deployment = deployment
        self.model = config.profile or config.upstream_model
        self._engine = engine if engine is not None else shared_engine(config.time_scale)
        if self.model not in self._engine.profiles:
            known = ", ".join(sorted(self._engine.profiles))
            raise ConfigError(
                f"deployment {deployment}: sim has no profile '{self.model}'; "
                f"set profile (or model) to one of: {known}",
                param="profile",
            )

    async def complete(self, request: ChatRequest) -> ChatResponse:
        return await self._engine.complete(request, model=self.model)

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        return self._engine.stream(request, model=self.model)

    def load(self) -> SimLoad:
        """Running, waiting and KV-cache usage of this deployment's model right now."""
        return self._engine.load(self.model)

    async def aclose(self) -> None:
        pass

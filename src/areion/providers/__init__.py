"""Providers: how one deployment answers a chat (or embeddings) request."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, assert_never

from areion.config import ModelConfig
from areion.errors import ConfigError
from areion.providers.base import EmbeddingProvider, Provider

if TYPE_CHECKING:
    from areion.cache.embedding import Embedder

__all__ = ["EmbeddingProvider", "Provider", "build_provider"]


def build_provider(
    config: ModelConfig, *, deployment: str, embedder: Callable[[], Embedder] | None = None
) -> Provider:
    """The provider for one configured deployment; `embedder` gives the runtime's shared
    sentence embedder, which `provider: local` serves."""
    match config.provider:
        case "openai":
            from areion.providers.openai_compat import OpenAIProvider

            return OpenAIProvider(config, deployment=deployment)
        case "anthropic":
            from areion.providers.anthropic import AnthropicProvider

            return AnthropicProvider(config, deployment=deployment)
        case "sim":
            from areion.providers.sim import SimProvider

            return SimProvider(config, deployment=deployment)
        case "replay":
            from areion.providers.replay import ReplayProvider

            return ReplayProvider(config, deployment=deployment)
        case "local":
            from areion.providers.local import LocalEmbeddingProvider

            if embedder is None:
                raise ConfigError(
                    f"model '{config.name}': provider local needs a runtime's embedder"
                )
            return LocalEmbeddingProvider(config, deployment=deployment, embedder=embedder)
        case _:
            assert_never(config.provider)

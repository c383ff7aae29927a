"""Providers: how one deployment answers a chat request."""

from __future__ import annotations

from typing import assert_never

from areion.config import ModelConfig
from areion.providers.base import Provider

__all__ = ["Provider", "build_provider"]


def build_provider(config: ModelConfig, *, deployment: str) -> Provider:
    """The provider for one configured deployment."""
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
        case _:
            assert_never(config.provider)

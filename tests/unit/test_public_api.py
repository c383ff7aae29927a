"""`areion.__all__` is the public contract; every module says what it exports."""

from __future__ import annotations

import importlib
import pkgutil
import re
from types import ModuleType

import pytest

import areion

# The documented public API. Changing it is a release-note event: update this list
# only together with the docs and the changelog.
PUBLIC_API = [
    "Agent",
    "AreionError",
    "AuthenticationError",
    "ChatRequest",
    "ChatResponse",
    "ChatStream",
    "Choice",
    "Config",
    "ConfigError",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "Message",
    "ProviderTimeoutError",
    "ProviderUnavailableError",
    "RateLimitedError",
    "ReplayMissError",
    "RequestError",
    "RunResult",
    "Runtime",
    "StreamChunk",
    "StreamInterruptedError",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "ToolContext",
    "ToolResult",
    "UnknownModelError",
    "UpstreamError",
    "Usage",
    "__version__",
    "load_config",
    "tool",
]

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(areion.__path__, prefix=f"{areion.__name__}.")
)


def _import(name: str) -> ModuleType:
    return importlib.import_module(name)


def test_public_api_is_pinned() -> None:
    assert sorted(areion.__all__) == sorted(PUBLIC_API)
    assert len(areion.__all__) == len(set(areion.__all__))


def test_every_public_name_is_importable() -> None:
    namespace: dict[str, object] = {}
    exec("from areion import *", namespace)
    for name in PUBLIC_API:
        assert namespace.get(name) is getattr(areion, name), name


def test_public_errors_share_one_root() -> None:
    errors = [getattr(areion, name) for name in PUBLIC_API if name.endswith("Error")]
    assert errors
    assert all(issubclass(error, areion.AreionError) for error in errors)


def test_version_is_a_release_number() -> None:
    assert re.match(r"^\d+\.\d+", areion.__version__)


def test_the_walk_finds_the_subpackages() -> None:
    # guards the walk itself: if it silently found nothing, the checks below would pass
    assert {"areion.config", "areion.gateway.deployments", "areion.store.sqlite"} <= set(MODULES)


@pytest.mark.parametrize("name", ["areion", *MODULES])
def test_module_declares_all(name: str) -> None:
    module = _import(name)
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list | tuple), f"{name} has no __all__"
    assert len(exported) == len(set(exported)), f"{name}.__all__ repeats a name"
    missing = [item for item in exported if not hasattr(module, item)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"

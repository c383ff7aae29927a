"""The semantic tier across processes: two runtimes over one store and one `Shared`
(as two replicas over PostgreSQL and Redis) serve each other's entries, and an
invalidation or feedback through one reaches the other."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from areion import ChatRequest, Message, Runtime
from areion.config import parse_config
from areion.store.shared import LocalShared
from tests.scripted import Behaviour, ScriptedUpstream
from tests.support import serve_app

pytest.importorskip("onnxruntime", reason="needs the semantic extra: pip install -e '.[dev]'")

QUESTION = "How can I improve my English speaking skills?"
PARAPHRASE = "How do I improve my English speaking skills?"
ANSWER = "Speak every day, record yourself, and find a conversation partner."


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[ScriptedUpstream, str]]:
    scripted = ScriptedUpstream()
    scripted.default = Behaviour(text=ANSWER)
    with serve_app(scripted.app) as url:
        yield scripted, url


@pytest.fixture
async def replicas(upstream: Any, tmp_path: Path) -> AsyncIterator[tuple[Runtime, Runtime]]:
    _, url = upstream
    config = parse_config(
        {
            "models": [
                {"name": "fast", "provider": "openai", "model": "m", "base_url": url + "/v1"}
            ],
            "store": f"sqlite:///{tmp_path / 'shared.db'}",
            "cache": {"exact": {"enabled": False}, "semantic": {"enabled": True}},
        }
    )
    shared = LocalShared()
    async with Runtime(config, shared=shared) as one, Runtime(config, shared=shared) as two:
        yield one, two


def ask(text: str) -> ChatRequest:
    return ChatRequest(model="fast", messages=[Message(role="user", content=text)], temperature=0)


async def stored(runtime: Runtime) -> None:
    """Wait until `runtime` has stored and announced what it answered (which it does
    after the answer left)."""
    cache = runtime.semantic_cache
    assert cache is not None
    await cache.settled()


async def test_an_answer_cached_by_one_replica_is_a_hit_on_another(replicas: Any) -> None:
    one, two = replicas
    assert (await one.chat(ask(QUESTION), tenant="acme")).cache in (None, "miss")
    await stored(one)
    hit = await two.chat(ask(PARAPHRASE), tenant="acme")
    assert hit.cache == "hit-semantic" and hit.message.content == ANSWER
    other = await two.chat(ask(PARAPHRASE), tenant="globex")
    assert other.cache in (None, "miss")  # another tenant never hits it


async def test_an_invalidation_through_one_replica_reaches_the_other(replicas: Any) -> None:
    one, two = replicas
    await one.chat(ask(QUESTION), tenant="acme")
    await stored(one)
    assert (await two.chat(ask(PARAPHRASE), tenant="acme")).cache == "hit-semantic"
    cache_one = one.semantic_cache
    assert cache_one is not None
    assert await cache_one.invalidate("acme") == 1
    assert (await two.chat(ask(PARAPHRASE), tenant="acme")).cache in (None, "miss")


async def test_feedback_on_a_hit_through_another_replica_lifts_it_everywhere(
    replicas: Any,
) -> None:
    one, two = replicas
    await one.chat(ask(QUESTION), tenant="acme")
    await stored(one)
    hit = await two.chat(ask(PARAPHRASE), tenant="acme", request_id="req-hit")
    assert hit.cache == "hit-semantic"
    await stored(two)  # its announcement of the hit
    entry, score = int(hit.info["entry"]), float(hit.info["score"])
    cache_one, cache_two = one.semantic_cache, two.semantic_cache
    assert cache_one is not None and cache_two is not None
    judged = await cache_one.feedback("acme", "req-hit", correct=False)  # sent to the other one
    assert judged is not None and judged.entry == entry
    for cache in (cache_one, cache_two):
        assert cache.thresholds.threshold(entry) > score
    assert (await one.chat(ask(PARAPHRASE), tenant="acme")).cache in (None, "miss")

"""Look-alike questions are never answered from the semantic cache.

`tests/data/lookalikes.csv` holds a few hundred pairs written for this: the same
question with another number, date, unit or name, negated, with its direction swapped,
or about another thing in the same template. Embeddings put most of them above 0.95
cosine (GPTCache serves the opposite answer for an exact reversal, its issue #694).
Each pair runs through a real `Runtime`: the real MiniLM embedder, the shipped
verifier at the default wrong-hit rate, an OpenAI-compatible upstream on loopback.
The first question is answered and cached, the second must reach the upstream.
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from areion import Runtime
from areion.config import parse_config
from areion.types import ChatRequest, Message
from tests.scripted import Behaviour, ScriptedUpstream
from tests.support import require_embedding_model, serve_app

pytest.importorskip("onnxruntime", reason="needs the semantic extra: pip install -e '.[dev]'")

LOOKALIKES = Path(__file__).parent.parent / "data" / "lookalikes.csv"
KINDS = {"number", "date", "unit", "name", "negation", "direction", "entity"}
# Rewordings the cache should serve: without them a cache that never hits would pass.
PARAPHRASES = [
    ("How can I improve my English writing?", "How do I improve my English writing?"),
    ("How do I learn Python quickly?", "How can I learn python fast?"),
    ("What are the best ways to make money online?", "What is the best way to make money online?"),
    ("Why is the sky blue?", "Why does the sky look blue?"),
]  # fmt: skip


def _pairs() -> list[dict[str, str]]:
    with LOOKALIKES.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    require_embedding_model()
    scripted = ScriptedUpstream()
    scripted.default = Behaviour(text="An answer to the first question.")
    with serve_app(scripted.app) as url:
        yield url


def _config(url: str, tmp_path: Path, **cache: Any) -> Any:
    return parse_config(
        {
            "models": [
                {"name": "fast", "provider": "openai", "model": "m", "base_url": url + "/v1"}
            ],
            "store": f"sqlite:///{tmp_path / 'lookalikes.db'}",
            "cache": {"semantic": {"enabled": True}, **cache},
        }
    )  # fmt: skip


def _ask(text: str) -> ChatRequest:
    return ChatRequest(model="fast", messages=[Message(role="user", content=text)], temperature=0)


async def _served(
    url: str, tmp_path: Path, pairs: list[tuple[str, str]], verifier: str = "lexical"
) -> list[str | None]:
    """For each (cached, asked) pair, in a tenant of its own: the cache result of `asked`
    once `cached` has been answered."""
    config = _config(url, tmp_path, semantic={"enabled": True, "verifier": verifier})
    async with Runtime(config) as runtime:
        results: list[str | None] = []
        for n, (cached, asked) in enumerate(pairs):
            first = await runtime.chat(_ask(cached), tenant=f"t{n}")
            assert first.cache == "miss"
            results.append((await runtime.chat(_ask(asked), tenant=f"t{n}")).cache)
        return results


def test_the_set_is_a_few_hundred_pairs_of_every_kind() -> None:
    pairs = _pairs()
    assert len(pairs) >= 300
    assert {row["kind"] for row in pairs} == KINDS
    assert all(row["cached"] != row["asked"] for row in pairs)


@pytest.mark.parametrize("verifier", ["lexical", "pair"])
def test_no_lookalike_is_served_from_the_semantic_cache(
    upstream_url: str, tmp_path: Path, verifier: str
) -> None:
    pairs = _pairs()
    results = asyncio.run(
        _served(upstream_url, tmp_path, [(row["cached"], row["asked"]) for row in pairs], verifier)
    )
    served = [
        f"{row['kind']}: {row['cached']!r} served for {row['asked']!r}"
        for row, result in zip(pairs, results, strict=True)
        if result != "miss"
    ]
    assert served == []


@pytest.mark.parametrize("verifier", ["lexical", "pair"])
def test_paraphrases_are_still_served(upstream_url: str, tmp_path: Path, verifier: str) -> None:
    served = asyncio.run(_served(upstream_url, tmp_path, PARAPHRASES, verifier))
    assert served == ["hit-semantic"] * len(PARAPHRASES)


async def _runs_for_repeats(url: str, tmp_path: Path) -> tuple[list[str | None], int]:
    """Exact tier off: each question asked twice reaches the semantic tier twice."""
    config = _config(
        url, tmp_path, exact={"enabled": False}, semantic={"enabled": True, "embed_memo": 0}
    )
    async with Runtime(config) as runtime:
        first = await runtime.chat(_ask("How do I learn to swim as an adult?"))
        embedder: Any = runtime.embedder
        before = embedder.runs
        again = await runtime.chat(_ask("How do I learn to swim as an adult?"))
        other_context = await runtime.chat(
            ChatRequest(
                model="fast",
                messages=[
                    Message(role="system", content="Answer in French."),
                    Message(role="user", content="How do I learn to swim as an adult?"),
                ],
                temperature=0,
            )
        )
        return [first.cache, again.cache, other_context.cache], embedder.runs - before


def test_the_same_question_is_served_without_embedding_it(
    upstream_url: str, tmp_path: Path
) -> None:
    outcomes, runs = asyncio.run(_runs_for_repeats(upstream_url, tmp_path))
    # The repeat is a hit with no embedding; the same words in another context are
    # a different question (looked up by embedding, and a miss).
    assert outcomes[1] == "hit-semantic"
    assert "hit-semantic" not in (outcomes[0], outcomes[2])
    assert runs == 1

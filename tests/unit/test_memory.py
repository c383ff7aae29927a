"""Session memory: the context budget, folding into summaries, and their retrieval."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from areion.agent.memory import SUMMARY_HEADER, SessionMemory, rank_bm25
from areion.store.base import Store
from areion.store.records import SessionSummary, SessionTurn
from areion.tokenizer import count_tokens
from areion.types import Message


class MemorySessions:
    """Just the four session methods of `Store`, in memory, until SQLiteStore has them."""

    def __init__(self) -> None:
        self.turns: dict[tuple[str, str], list[SessionTurn]] = {}
        self.summaries: dict[tuple[str, str], list[SessionSummary]] = {}

    async def session_turns(
        self, tenant: str, session: str, *, after: int = -1
    ) -> list[SessionTurn]:
        return [turn for turn in self.turns.get((tenant, session), []) if turn.seq > after]

    async def append_turns(self, tenant: str, session: str, turns: Sequence[SessionTurn]) -> None:
        stored = self.turns.setdefault((tenant, session), [])
        for turn in turns:
            # A real store keys turns by seq; a repeated seq here is a memory bug.
            assert not stored or turn.seq > stored[-1].seq, f"seq {turn.seq} reused"
            stored.append(turn)

    async def session_summaries(self, tenant: str, session: str) -> list[SessionSummary]:
        return list(self.summaries.get((tenant, session), []))

    async def add_summary(self, tenant: str, session: str, summary: SessionSummary) -> None:
        self.summaries.setdefault((tenant, session), []).append(summary)


class FirstWords:
    """A summarizer that keeps each folded turn's first word, and records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], str | None]] = []

    async def __call__(self, turns: Sequence[SessionTurn], previous: str | None) -> str:
        self.calls.append(([turn.seq for turn in turns], previous))
        return " ".join(turn.content.split()[0] for turn in turns)


def _memory(backend: MemorySessions, **options: Any) -> SessionMemory:
    return SessionMemory(cast(Store, backend), **options)


def _exchange(i: int) -> list[tuple[str, str]]:
    return [
        ("user", f"q{i} please tell me something about topic number {i}"),
        ("assistant", f"a{i} here is something I know about topic number {i}"),
    ]


def _split(messages: list[Message]) -> tuple[str | None, list[Message]]:
    """The summary message's text (if any) and the turn messages."""
    if messages and messages[0].role == "system":
        return messages[0].text(), messages[1:]
    return None, messages


def _spent(messages: list[Message], summaries: list[SessionSummary]) -> int:
    """Tokens `context` charged to the budget: shown summaries and turns."""
    header, turns = _split(messages)
    shown = [s for s in summaries if header is not None and s.text in header]
    return sum(s.tokens for s in shown) + sum(count_tokens(m.text()) for m in turns)


async def test_no_summarizer_keeps_newest_turns_within_budget() -> None:
    backend = MemorySessions()
    memory = _memory(backend, budget_tokens=60)
    for i in range(10):
        await memory.remember("t", "s", _exchange(i))

    stored = backend.turns["t", "s"]
    assert [turn.seq for turn in stored] == list(range(20))
    assert all(turn.tokens == count_tokens(turn.content) for turn in stored)
    assert ("t", "s") not in backend.summaries  # nothing to fold with

    summary, turns = _split(await memory.context("t", "s", "anything"))
    assert summary is None
    assert sum(count_tokens(m.text()) for m in turns) <= 60
    # The oldest are dropped: what is left is the newest stretch, in order.
    assert [m.text() for m in turns] == [turn.content for turn in stored[-len(turns) :]]
    assert [m.role for m in turns[-2:]] == ["user", "assistant"]
    assert 0 < len(turns) < 20
    # One more turn would not have fit.
    assert sum(t.tokens for t in stored[-len(turns) - 1 :]) > 60


async def test_context_of_an_empty_session_is_empty() -> None:
    memory = _memory(MemorySessions())
    assert await memory.context("t", "new", "hello") == []


async def test_folding_over_budget_summarizes_oldest_turns_once() -> None:
    backend = MemorySessions()
    summarizer = FirstWords()
    memory = _memory(backend, budget_tokens=80, summarizer=summarizer, fold_batch_tokens=20)
    for i in range(12):
        await memory.remember("t", "s", _exchange(i))

    summaries = backend.summaries["t", "s"]
    assert len(summaries) >= 2
    # Folds cover consecutive seq ranges from the start, none twice.
    assert summaries[0].first_seq == 0
    for before, after in itertools.pairwise(summaries):
        assert after.first_seq == before.last_seq + 1
    # Each fold got the previous summary, for continuity.
    assert summarizer.calls[0][1] is None
    assert [previous for _, previous in summarizer.calls[1:]] == [s.text for s in summaries[:-1]]
    # Seqs continue across folds: no gap, no reuse.
    assert [turn.seq for turn in backend.turns["t", "s"]] == list(range(24))

    latest = summaries[-1]
    unsummarized = [t for t in backend.turns["t", "s"] if t.seq > latest.last_seq]
    assert sum(t.tokens for t in unsummarized) <= 80
    # Folds end at exchange boundaries: what stays verbatim opens with a question.
    assert all(s.last_seq % 2 == 1 for s in summaries)
    assert unsummarized[0].role == "user"

    messages = await memory.context("t", "s", "topic")
    summary, turns = _split(messages)
    assert summary is not None and summary.startswith(SUMMARY_HEADER)
    assert latest.text in summary
    assert _spent(messages, summaries) <= 80
    # The folded turns come back only as their summary, never verbatim.
    folded = {t.content for t in backend.turns["t", "s"] if t.seq <= latest.last_seq}
    assert not folded & {m.text() for m in turns}
    assert [m.text() for m in turns] == [t.content for t in unsummarized][-len(turns) :]
    assert turns[-1].text() == _exchange(11)[1][1]


async def test_fold_leaves_newest_half_budget_and_folds_at_least_a_batch() -> None:
    backend = MemorySessions()
    summarizer = FirstWords()
    memory = _memory(backend, budget_tokens=100, summarizer=summarizer, fold_batch_tokens=90)
    for i in range(20):
        await memory.remember("t", "s", _exchange(i))
        if ("t", "s") in backend.summaries:
            break
    (summary,) = backend.summaries["t", "s"]
    turns = backend.turns["t", "s"]
    folded = [t for t in turns if t.seq <= summary.last_seq]
    left = [t for t in turns if t.seq > summary.last_seq]
    assert sum(t.tokens for t in folded) >= 90
    assert sum(t.tokens for t in left) <= 50
    assert summary.text == " ".join(t.content.split()[0] for t in folded)


async def test_relevant_older_summary_is_retrieved_and_irrelevant_one_is_not() -> None:
    backend = MemorySessions()
    texts = [
        "The user is planning a kubernetes cluster upgrade to version 1.30 next week.",
        "The user shared a grocery list: bananas, oat milk and coffee beans.",
        "The user asked about the weather in Lisbon; it will rain on Friday.",
    ]
    for n, text in enumerate(texts):
        folded = SessionSummary(
            first_seq=2 * n, last_seq=2 * n + 1, text=text, tokens=count_tokens(text)
        )
        await backend.add_summary("t", "s", folded)
    memory = _memory(backend, budget_tokens=500)

    summary, _ = _split(await memory.context("t", "s", "Did the Kubernetes upgrade go well?"))
    assert summary is not None
    assert texts[0] in summary and texts[2] in summary
    assert texts[1] not in summary
    # Chronological order, whatever the ranking.
    assert summary.index(texts[0]) < summary.index(texts[2])

    summary, _ = _split(await memory.context("t", "s", "what should I buy: bananas?"))
    assert summary is not None
    assert texts[1] in summary and texts[0] not in summary


async def test_latest_summary_is_always_present() -> None:
    backend = MemorySessions()
    texts = ["kubernetes upgrade notes", "kubernetes rollback plan", "small talk about cats"]
    for n, text in enumerate(texts):
        await backend.add_summary(
            "t", "s", SessionSummary(first_seq=n, last_seq=n, text=text, tokens=count_tokens(text))
        )

    unrelated = _memory(backend)
    summary, _ = _split(await unrelated.context("t", "s", "quarterly revenue"))
    assert summary == f"{SUMMARY_HEADER}\n\n{texts[2]}"

    # With room for one summary only, the latest wins over relevant older ones.
    one = _memory(backend, max_summaries_in_prompt=1)
    summary, _ = _split(await one.context("t", "s", "kubernetes"))
    assert summary == f"{SUMMARY_HEADER}\n\n{texts[2]}"

    two = _memory(backend, max_summaries_in_prompt=2)
    summary, _ = _split(await two.context("t", "s", "kubernetes rollback"))
    assert summary == f"{SUMMARY_HEADER}\n\n{texts[1]}\n\n{texts[2]}"


async def test_summaries_and_turns_share_the_budget() -> None:
    backend = MemorySessions()
    relevant = "kubernetes " + "details " * 25
    latest = "the latest summary of the conversation"
    for session in ("s", "quiet"):
        for n, text in enumerate([relevant, latest]):
            await backend.add_summary(
                "t",
                session,
                SessionSummary(first_seq=n, last_seq=n, text=text, tokens=count_tokens(text)),
            )
    memory = _memory(backend, budget_tokens=50)

    # Alone, both summaries fit.
    summary, _ = _split(await memory.context("t", "quiet", "kubernetes"))
    assert summary == f"{SUMMARY_HEADER}\n\n{relevant}\n\n{latest}"

    for i in range(5):
        await memory.remember("t", "s", _exchange(i))
    messages = await memory.context("t", "s", "kubernetes")
    summary, turns = _split(messages)
    # The newest turns take their share first; the relevant summary no longer fits.
    assert summary == f"{SUMMARY_HEADER}\n\n{latest}"
    assert len(turns) >= 2 and turns[-1].text() == _exchange(4)[1][1]
    assert _spent(messages, backend.summaries["t", "s"]) <= 50
    # Turns after a summary continue its seqs.
    assert backend.turns["t", "s"][0].seq == 2


async def test_summarizer_failure_keeps_turns_and_folds_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = MemorySessions()
    working = FirstWords()
    broken = True

    async def flaky(turns: Sequence[SessionTurn], previous: str | None) -> str:
        if broken:
            raise RuntimeError("cheap model is down")
        return await working(turns, previous)

    memory = _memory(backend, budget_tokens=60, summarizer=flaky, fold_batch_tokens=10)
    with caplog.at_level(logging.WARNING, logger="areion.agent.memory"):
        for i in range(6):
            await memory.remember("t", "s", _exchange(i))
    assert "cheap model is down" in caplog.text
    assert ("t", "s") not in backend.summaries
    assert len(backend.turns["t", "s"]) == 12

    broken = False
    await memory.remember("t", "s", _exchange(6))
    (summary,) = backend.summaries["t", "s"]
    assert summary.first_seq == 0
    assert summary.text.split()[:2] == ["q0", "a0"]


async def test_empty_summary_is_not_stored() -> None:
    backend = MemorySessions()

    async def blank(turns: Sequence[SessionTurn], previous: str | None) -> str:
        return "   "

    memory = _memory(backend, budget_tokens=40, summarizer=blank, fold_batch_tokens=10)
    for i in range(5):
        await memory.remember("t", "s", _exchange(i))
    assert ("t", "s") not in backend.summaries
    assert len(backend.turns["t", "s"]) == 10


async def test_tenants_do_not_see_each_others_sessions() -> None:
    backend = MemorySessions()
    memory = _memory(backend, budget_tokens=60, summarizer=FirstWords(), fold_batch_tokens=10)
    for i in range(6):
        await memory.remember("a", "s", _exchange(i))

    assert await memory.context("b", "s", "topic") == []
    await memory.remember("b", "s", [("user", "hello from b")])
    _, turns = _split(await memory.context("b", "s", "topic"))
    assert [m.text() for m in turns] == ["hello from b"]
    # B's first turn starts its own seqs; A's session is untouched.
    assert backend.turns["b", "s"][0].seq == 0
    assert ("b", "s") not in backend.summaries
    assert len(backend.turns["a", "s"]) == 12


async def test_concurrent_remembers_fold_each_turn_once() -> None:
    backend = MemorySessions()

    async def slow(turns: Sequence[SessionTurn], previous: str | None) -> str:
        await asyncio.sleep(0.01)  # let the other run reach its fold meanwhile
        return " ".join(turn.content.split()[0] for turn in turns)

    memory = _memory(backend, budget_tokens=60, summarizer=slow, fold_batch_tokens=10)
    for i in range(3):
        await memory.remember("t", "s", _exchange(i))
    await asyncio.gather(*(memory.remember("t", "s", _exchange(i)) for i in range(3, 7)))

    assert [turn.seq for turn in backend.turns["t", "s"]] == list(range(14))
    covered = [
        seq for s in backend.summaries["t", "s"] for seq in range(s.first_seq, s.last_seq + 1)
    ]
    assert covered == sorted(set(covered))


async def test_remember_rejects_other_roles() -> None:
    memory = _memory(MemorySessions())
    with pytest.raises(ValueError, match="role"):
        await memory.remember("t", "s", [("tool", "42")])


def test_bm25_ranks_shared_rare_words_higher() -> None:
    docs = ["the cat sat on the mat", "kubernetes upgrade of the cluster", "a cat and a dog"]
    scores = rank_bm25("Is the cat OK?", docs)
    assert scores[1] == 0.0  # "the" and "is" are stop words
    assert scores[0] > 0 and scores[2] > 0
    assert rank_bm25("the of and", docs) == [0.0, 0.0, 0.0]
    assert rank_bm25("cat", []) == []


async def test_with_sqlite_store(tmp_path: Path) -> None:
    from areion.store.sqlite import SQLiteStore

    store = SQLiteStore(str(tmp_path / "areion.db"))
    try:
        memory = SessionMemory(
            store, budget_tokens=60, summarizer=FirstWords(), fold_batch_tokens=10
        )
        for i in range(8):
            await memory.remember("t", "s", _exchange(i))
        await memory.remember("other", "s", [("user", "not yours")])

        summaries = await store.session_summaries("t", "s")
        assert summaries and summaries[0].first_seq == 0
        stored = await store.session_turns("t", "s")
        assert [turn.seq for turn in stored] == list(range(16))

        messages = await memory.context("t", "s", "topic")
        summary, turns = _split(messages)
        assert summary is not None and summaries[-1].text in summary
        assert _spent(messages, summaries) <= 60
        assert turns[-1].text() == _exchange(7)[1][1]
        assert "not yours" not in {m.text() for m in messages}
    finally:
        await store.aclose()

"""Session memory: what an agent remembers of a conversation across runs.

Turns are stored per (tenant, session) in the store. A run's prompt gets the
session's summaries and its most recent turns within a token budget; when the
unsummarized turns outgrow the budget, the oldest of them are folded into a
summary by a cheap model (the `Summarizer`), so nothing said is dropped for good.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

from areion.store.base import Store
from areion.store.records import SessionSummary, SessionTurn
from areion.tokenizer import count_tokens
from areion.types import Message, Role

__all__ = ["SUMMARY_HEADER", "SessionMemory", "Summarizer", "rank_bm25"]

log = logging.getLogger("areion.agent.memory")

Summarizer = Callable[[Sequence[SessionTurn], str | None], Awaitable[str]]
"""`(turns to fold, previous summary text or None) -> summary text`; the runtime
implements it with a call to a cheap model."""

SUMMARY_HEADER = "Earlier in this conversation (summarized):"
"""First line of the system message that carries the selected summaries."""

_ROLES: frozenset[str] = frozenset({"user", "assistant"})

# Words too common to say anything about relevance. Short on purpose: summaries
# are short, and an over-eager list would drop words a query hinges on.
# fmt: off
_STOP_WORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "been", "but", "by", "can", "could", "did",
    "do", "does", "for", "from", "had", "has", "have", "he", "her", "his", "i", "if", "in",
    "into", "is", "it", "its", "me", "my", "no", "not", "of", "on", "or", "our", "she",
    "so", "that", "the", "their", "them", "then", "there", "these", "they", "this", "those",
    "to", "too", "us", "was", "we", "were", "what", "when", "where", "which", "who", "why",
    "will", "with", "would", "you", "your"
})
# fmt: on
_WORD = re.compile(r"[a-z0-9]+")

# BM25's usual constants: term-frequency saturation and length normalization.
_K1 = 1.2
_B = 0.75


def _words(text: str) -> list[str]:
    return [word for word in _WORD.findall(text.lower()) if word not in _STOP_WORDS]


def rank_bm25(query: str, documents: Sequence[str]) -> list[float]:
    """The BM25 score of each document for `query`; 0.0 when they share no word.

    Scoring over the candidate documents alone is enough here: a session has few
    summaries, and what matters is their order, not comparable absolute scores.
    """
    terms = set(_words(query))
    docs = [Counter(_words(document)) for document in documents]
    if not terms or not docs:
        return [0.0] * len(documents)
    average = sum(doc.total() for doc in docs) / len(docs) or 1.0
    df = {term: sum(1 for doc in docs if term in doc) for term in terms}
    scores = []
    for doc in docs:
        norm = _K1 * (1 - _B + _B * doc.total() / average)
        score = 0.0
        for term in terms:
            tf = doc[term]
            if tf:
                # The "+1" variant of IDF stays positive even for a word every
                # summary contains, so any shared word counts as some relevance.
                idf = math.log(1 + (len(docs) - df[term] + 0.5) / (df[term] + 0.5))
                score += idf * tf * (_K1 + 1) / (tf + norm)
        scores.append(score)
    return scores


class SessionMemory:
    """The per-session conversation memory of agents, kept in a `Store`.

    `context` lays the prompt out as: the selected summaries (one system message,
    in chronological order), then the recent turns, oldest first, so the newest
    content comes last. That order keeps the prompt prefix stable from one run to
    the next: between folds, runs of a session share the same summaries and the
    same first turns and only append at the end, so provider prompt caching and
    vLLM prefix caching hit. Folding in batches (rather than sliding the window
    by one turn per run) is what keeps that prefix still for many runs. Summaries
    picked for relevance to a query can vary between runs; the latest summary,
    always included, does not.
    """

    def __init__(
        self,
        store: Store,
        *,
        budget_tokens: int = 2000,
        summarizer: Summarizer | None = None,
        fold_batch_tokens: int = 500,
        max_summaries_in_prompt: int = 3,
    ) -> None:
        """`budget_tokens` caps summary + turn tokens in `context`; `fold_batch_tokens`
        is the least a fold summarizes (small folds would make many tiny summaries
        and many cheap-model calls); without a `summarizer` nothing is folded."""
        if budget_tokens <= 0:
            raise ValueError("budget_tokens must be positive")
        if fold_batch_tokens < 0:
            raise ValueError("fold_batch_tokens must not be negative")
        if max_summaries_in_prompt < 1:
            raise ValueError("max_summaries_in_prompt must be at least 1")
        self.store = store
        self.budget_tokens = budget_tokens
        self.summarizer = summarizer
        self.fold_batch_tokens = fold_batch_tokens
        self.max_summaries_in_prompt = max_summaries_in_prompt
        # One lock per (tenant, session), so two runs of a session finishing at
        # once neither take the same seq numbers nor fold the same turns twice.
        # Weak values: a lock lives only while someone holds or awaits it, so
        # idle sessions cost nothing. This guards one process only; across
        # replicas a double fold is harmless enough, since each summary names
        # the exact seq range it covers and `context` reads after the latest.
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def _lock(self, tenant: str, session: str) -> asyncio.Lock:
        key = (tenant, session)
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    async def _state(
        self, tenant: str, session: str
    ) -> tuple[list[SessionSummary], list[SessionTurn]]:
        """The session's summaries (by `last_seq`) and its unsummarized turns."""
        # Sorted here rather than trusted in insertion order: after a cross-replica
        # double fold, the one reaching furthest is the latest.
        summaries = sorted(
            await self.store.session_summaries(tenant, session),
            key=lambda summary: (summary.last_seq, summary.first_seq),
        )
        after = summaries[-1].last_seq if summaries else -1
        turns = await self.store.session_turns(tenant, session, after=after)
        return summaries, turns

    async def context(self, tenant: str, session: str, query: str) -> list[Message]:
        """The messages to put between the agent's system prompt and the new run's.

        Within the budget, in order of priority: the latest summary; the newest
        turns up to half the budget; older summaries relevant to `query` (BM25,
        best first, up to `max_summaries_in_prompt` summaries in all); then older
        turns in what is left. Turns stay contiguous: the first one that does not
        fit ends them. The budget counts the stored token counts of summaries and
        turns, not the header or per-message framing.
        """
        summaries, turns = await self._state(tenant, session)
        left = self.budget_tokens
        chosen: list[SessionSummary] = []
        if summaries and summaries[-1].tokens <= left:
            chosen.append(summaries[-1])
            left -= summaries[-1].tokens

        # Turns are taken newest first and stay contiguous: `start` is the oldest
        # one taken so far, and a turn that does not fit ends the taking. The
        # newest turn is never crowded out by older summaries, even when it alone
        # is over half the budget.
        start = len(turns)
        recent = min(left, max(self.budget_tokens // 2, turns[-1].tokens if turns else 0))
        while start and turns[start - 1].tokens <= recent:
            start -= 1
            recent -= turns[start].tokens
            left -= turns[start].tokens

        older = summaries[:-1]
        scores = rank_bm25(query, [summary.text for summary in older])
        ranked = sorted(
            (pair for pair in zip(scores, older, strict=True) if pair[0] > 0),
            key=lambda pair: pair[0],
            reverse=True,
        )
        for _, summary in ranked:
            if len(chosen) >= self.max_summaries_in_prompt:
                break
            if summary.tokens <= left:
                chosen.append(summary)
                left -= summary.tokens

        while start and turns[start - 1].tokens <= left:
            start -= 1
            left -= turns[start].tokens

        messages: list[Message] = []
        if chosen:
            chosen.sort(key=lambda summary: (summary.first_seq, summary.last_seq))
            body = "\n\n".join(summary.text for summary in chosen)
            messages.append(Message(role="system", content=f"{SUMMARY_HEADER}\n\n{body}"))
        for turn in turns[start:]:
            role: Role = "assistant" if turn.role == "assistant" else "user"
            messages.append(Message(role=role, content=turn.content))
        return messages

    async def remember(self, tenant: str, session: str, turns: Sequence[tuple[str, str]]) -> None:
        """Append `(role, text)` turns to the session, then fold if it outgrew the budget.

        A summarizer failure is logged and leaves the turns unsummarized (the next
        `remember` tries again): memory upkeep never fails the caller's run.
        """
        for role, _ in turns:
            if role not in _ROLES:
                raise ValueError(f"session turn role must be user or assistant, not {role!r}")
        async with self._lock(tenant, session):
            summaries, pending = await self._state(tenant, session)
            # Seqs continue after the last turn, or after the last summary when it
            # covers every turn.
            last = pending[-1].seq if pending else (summaries[-1].last_seq if summaries else -1)
            new = [
                SessionTurn(seq=last + 1 + i, role=role, content=text, tokens=count_tokens(text))
                for i, (role, text) in enumerate(turns)
            ]
            if new:
                await self.store.append_turns(tenant, session, new)
                pending.extend(new)
            await self._fold(tenant, session, summaries, pending)

    async def _fold(
        self,
        tenant: str,
        session: str,
        summaries: list[SessionSummary],
        pending: list[SessionTurn],
    ) -> None:
        """Fold the oldest pending turns into a summary, if they exceed the budget."""
        total = sum(turn.tokens for turn in pending)
        if self.summarizer is None or total <= self.budget_tokens:
            return
        # Leave unsummarized the newest turns that fit in half the budget, so the
        # next runs still see the conversation verbatim and the following fold is
        # a budget's half away; fold at least `fold_batch_tokens`.
        keep = 0
        kept_tokens = 0
        for turn in reversed(pending):
            if kept_tokens + turn.tokens > self.budget_tokens // 2:
                break
            keep += 1
            kept_tokens += turn.tokens
        # The verbatim part starts at a user turn, so a fold does not cut an
        # exchange in half and the prompt's turns open with a question.
        while keep and (
            total - kept_tokens < self.fold_batch_tokens or pending[-keep].role != "user"
        ):
            kept_tokens -= pending[-keep].tokens
            keep -= 1
        batch = pending[: len(pending) - keep]
        previous = summaries[-1].text if summaries else None
        try:
            text = (await self.summarizer(batch, previous)).strip()
            if not text:
                raise ValueError("the summarizer returned no text")
        except Exception as exc:
            log.warning(
                "session %s/%s: could not fold turns %d..%d, leaving them unsummarized: %s",
                tenant,
                session,
                batch[0].seq,
                batch[-1].seq,
                exc,
            )
            return
        await self.store.add_summary(
            tenant,
            session,
            SessionSummary(
                first_seq=batch[0].seq,
                last_seq=batch[-1].seq,
                text=text,
                tokens=count_tokens(text),
            ),
        )

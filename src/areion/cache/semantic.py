"""L2, the semantic cache: a paraphrase of a question already answered, answered again.

A request is looked up when its answer is deterministic enough (temperature 0, or
the config's opt-in), it offers no tools, and its last message is a user question
short enough to embed whole. The question is embedded (MiniLM on ONNX Runtime,
micro-batched under concurrency) and searched among the entries that share

- the tenant: one tenant never receives another's answer;
- the model group;
- the conversation context: a hash of the system prompt, the previous turn (the two
  messages before the question) and every parameter that can change the answer. "And
  in Python?" after a question on sorting in Go is a different question from the
  same words after one on string formatting.

The nearest few entries by cosine are candidates; `SemanticVerifier` scores each,
vetoing different numbers, negation and swapped entities, and the best one whose
score reaches its threshold is served. The threshold comes from the configured
maximum wrong-hit rate through the verifier's calibration table, and per entry from
`AdaptiveThreshold`: feedback that a hit was wrong lifts that entry's threshold
above the score it was served at (vCache, arXiv 2502.03771).

Entries live in the store, shared by every replica (`TierMirror`): each process keeps
a copy (the index and the answers, bounded in number), loaded at start and kept in
step with what other replicas store, drop and learn from feedback. `invalidate()`
drops entries by tenant, model group, age or entry id, everywhere. Without a store
(the cache used on its own) entries live in this process only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from areion.cache.embedding import Embedder
from areion.cache.exact import output_params
from areion.cache.index import PartitionedIndex
from areion.cache.mirror import Copy, TierMirror
from areion.cache.serving import HitServer, when_complete
from areion.cache.verifier import (
    DEFAULT_MAX_WRONG_HIT_RATE,
    AdaptiveThreshold,
    SemanticVerifier,
)
from areion.errors import ConfigError
from areion.pipeline import Call, Handler, Result
from areion.store.base import Store
from areion.store.records import CacheEntryRecord
from areion.store.shared import Shared
from areion.telemetry.ledger import Ledger
from areion.telemetry.metrics import Metrics
from areion.types import ChatRequest

__all__ = ["SemanticCache", "SemanticHit", "context_key", "question_of"]

log = logging.getLogger(__name__)

_RECENT_HITS = 10_000  # hits remembered for feedback, by request id


def question_of(request: ChatRequest, max_chars: int) -> str | None:
    """The text to look `request` up by: its last message, when that is a user's plain
    text of at most `max_chars`; else None (not looked up)."""
    if not request.messages:
        return None
    last = request.messages[-1]
    if last.role != "user":
        return None
    content = last.content
    if isinstance(content, list) and any(part.get("type") != "text" for part in content):
        return None  # images, audio, files: the text alone is not the question
    text = last.text().strip()
    if not text or len(text) > max_chars:
        return None
    return text


def context_key(request: ChatRequest) -> str:
    """A hash of what, besides the question, decides the answer: the model group, the
    system prompt, the previous turn and the output parameters."""
    system = [m.to_openai() for m in request.messages[:-1] if m.role in ("system", "developer")]
    turn = [m.to_openai() for m in request.messages[:-1] if m.role not in ("system", "developer")]
    canonical = orjson.dumps(
        [request.model, system, turn[-2:], output_params(request)],
        option=orjson.OPT_SORT_KEYS,
        default=str,
    )
    return request.model + "\x1f" + hashlib.sha256(canonical).hexdigest()[:32]


@dataclass(slots=True, kw_only=True)
class _Entry:
    id: int
    tenant: str
    model: str
    partition: str
    question: str
    created: float
    expires: float
    answer: bytes  # orjson of serving.entry_of()


@dataclass(slots=True, frozen=True)
class SemanticHit:
    """A semantic hit, remembered for feedback on it."""

    tenant: str
    entry: int
    score: float


class SemanticCache:
    """The L2 stage: answers paraphrases of cached questions without a model call."""

    def __init__(
        self,
        metrics: Metrics,
        ledger: Ledger,
        embedder: Embedder,
        *,
        verifier: SemanticVerifier | None = None,
        max_wrong_hit_rate: float = DEFAULT_MAX_WRONG_HIT_RATE,
        ttl_s: float = 86_400.0,
        any_temperature: bool = False,
        max_entries: int = 100_000,
        max_chars: int = 1000,
        candidates: int = 4,
        store: Store | None = None,
        shared: Shared | None = None,
    ) -> None:
        self.embedder = embedder  # shared: its owner closes it
        self.verifier = verifier or SemanticVerifier.load()
        self.verifier.prepare()  # its pair model, if any: built now, not on a lookup
        threshold = self.verifier.threshold_for(max_wrong_hit_rate)
        if math.isinf(threshold):
            raise ConfigError(
                f"cache.semantic.max_wrong_hit_rate: {max_wrong_hit_rate} is stricter than the"
                " verifier's calibration can vouch for; raise it (default"
                f" {DEFAULT_MAX_WRONG_HIT_RATE}) or recalibrate the verifier"
            )
        self.thresholds = AdaptiveThreshold(threshold, max_wrong_hit_rate=max_wrong_hit_rate)
        self.ttl_s = ttl_s
        self.any_temperature = any_temperature
        self.max_entries = max_entries
        self.max_chars = max_chars
        self.candidates = candidates
        self._index = PartitionedIndex()
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._by_text: dict[tuple[str, str, str], int] = {}
        self._recent: OrderedDict[tuple[str, str], SemanticHit] = OrderedDict()
        self._hit_server = HitServer("semantic", metrics, ledger)
        self._mirror = TierMirror(
            "semantic",
            Copy(
                add=self._apply,
                drop=self._drop_id,
                feedback=self._observe,
                has=self._entries.__contains__,
                hit=self._heard_hit,
            ),
            store=store,
            shared=shared,
        )
        self._loaded = store is None
        self._writes: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        """Stop the index's build thread."""
        self._index.close()

    async def settled(self) -> None:
        """Wait for the store writes and notices of answers already given."""
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def aclose(self) -> None:
        """Finish storing entries in flight, stop following the store."""
        await self.settled()
        await self._mirror.aclose()

    def eligible(self, request: ChatRequest) -> bool:
        return (
            (self.any_temperature or request.temperature == 0)
            and not request.tools
            and request.extra.get("n", 1) == 1
        )

    # -- the stage --------------------------------------------------------------------

    async def handle(self, call: Call, call_next: Handler) -> Result:
        control = call.annotations.get("cache_control")
        request = call.request
        if control == "no-store" or not self.eligible(request):
            return await call_next(call)
        question = question_of(request, self.max_chars)
        if question is None:
            return await call_next(call)
        if not self._loaded:
            await self._load()
        partition = context_key(request)
        if control != "refresh":
            # The very question already cached here: served without embedding it.
            same = self._same_text(call.tenant, partition, question)
            if same is not None:
                return self._serve(call, *same)
        try:
            vector = (await self.embedder.embed([question]))[0]
        except Exception:  # the cache must never fail a request it could pass on
            log.exception("semantic cache: embedding failed; passing the request on")
            return await call_next(call)
        # Later stages embedding the same text with the same model (a learned route) reuse it.
        call.annotations["embedding"] = (self.embedder, question, vector)
        if control != "refresh":
            found = await self._lookup(call.tenant, partition, question, vector)
            if found is not None:
                return self._serve(call, *found)
        self._hit_server.miss()
        result = await call_next(call)

        def store(answer: dict[str, Any]) -> None:
            if _cacheable(answer["response"]):
                self._insert(call.tenant, request.model, partition, question, vector, answer)

        when_complete(result, call, store)
        return result

    def _serve(self, call: Call, entry: _Entry, score: float) -> Result:
        self._remember_hit(SemanticHit(call.tenant, entry.id, score), call.request_id)
        if self._mirror.shared:
            self._later(
                self._mirror.hit(
                    {"tenant": call.tenant, "request_id": call.request_id,
                     "id": entry.id, "score": score}
                )
            )  # fmt: skip
        return self._hit_server.serve(
            orjson.loads(entry.answer), call, {"entry": entry.id, "score": score}
        )

    def _same_text(self, tenant: str, partition: str, question: str) -> tuple[_Entry, float] | None:
        """The live entry for this very question in the partition, if the verifier
        (at cosine 1: the same text embeds the same) and its threshold still serve it."""
        entry_id = self._by_text.get((tenant, partition, question))
        entry = None if entry_id is None else self._entries.get(entry_id)
        if entry is None:
            return None
        if entry.expires <= time.time():
            self._drop(entry)
            return None
        score = self.verifier.score(question, entry.question, 1.0)
        if score < self.thresholds.threshold(entry.id):
            return None  # feedback lifted this entry above even its own question
        self._entries.move_to_end(entry.id)
        return entry, score

    async def _lookup(
        self, tenant: str, partition: str, question: str, vector: Any
    ) -> tuple[_Entry, float] | None:
        now = time.time()

        def candidates() -> Iterator[tuple[_Entry, str, float, float]]:
            for entry_id, cosine in self._index.search(tenant, partition, vector, self.candidates):
                entry = self._entries.get(entry_id)
                if entry is None:
                    continue
                if entry.expires <= now:
                    self._drop(entry)
                    continue
                yield entry, entry.question, cosine, self.thresholds.threshold(entry.id)

        shortlist = self.verifier.first_stage(question, candidates())
        if shortlist.settled:
            found = shortlist.found
        else:  # the pair model's run (~2.5 ms of CPU) goes off the loop, as the embedder's
            found = await asyncio.get_running_loop().run_in_executor(
                None, self.verifier.second_stage, question, shortlist
            )
        if found is None:
            return None
        entry, _, score = found
        self._entries.move_to_end(entry.id)
        return entry, score

    async def _load(self) -> None:
        try:
            await self._mirror.ready()
        except Exception:  # the store is down: serve misses now, load on a later call
            log.warning("semantic cache: loading entries from the store failed", exc_info=True)
            return
        self._loaded = True

    def _later(self, work: Any) -> None:
        """Run `work` (a store write) after the answer has left."""
        task = asyncio.get_running_loop().create_task(work)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def _insert(
        self,
        tenant: str,
        model: str,
        partition: str,
        question: str,
        vector: Any,
        answer: dict[str, Any],
    ) -> None:
        """Keep a fresh answer: in this process's copy at once (the same question asked
        again right after finds it), then in the store, under the id it gives there."""
        now = time.time()
        record = CacheEntryRecord(
            tier="semantic",
            tenant=tenant,
            partition=partition,
            model=model,
            text=question,
            vector=np.asarray(vector, dtype="<f4").tobytes(),
            payload=orjson.dumps(answer),
            created=now,
            expires=now + self.ttl_s,
            id=self._mirror.provisional_id(),
        )
        replaced = self._by_text.get((tenant, partition, question))
        self._apply(record, fresh=True)
        if self._mirror.shared:
            self._later(self._share(record, replaced))

    async def _share(self, record: CacheEntryRecord, replaced: int | None) -> None:
        provisional = record.id
        try:
            stored = await self._mirror.add(record)
            if replaced is not None and replaced > 0:
                # A refresh, or two misses racing: the newest answer wins, everywhere.
                await self._mirror.drop(record.tenant, entry=replaced)
        except Exception:  # a cache must never fail the answer it keeps
            log.warning("semantic cache: storing an entry failed", exc_info=True)
            return
        entry = self._entries.pop(provisional, None)
        if entry is None:
            return  # dropped or evicted meanwhile
        self._index.remove(record.tenant, record.partition, provisional)
        if stored in self._entries:
            return  # already fetched under its id (its announcement came back first)
        entry.id = record.id = stored
        self._index.add(record.tenant, record.partition, stored, _vector(record))
        self._entries[stored] = entry
        key = (record.tenant, record.partition, record.text)
        if self._by_text.get(key) == provisional:
            self._by_text[key] = stored

    def _apply(self, record: CacheEntryRecord, *, fresh: bool = False) -> None:
        """Add an entry to this process's copy: a `fresh` answer of ours, or a stored one
        (ours, or another replica's); for one question the newest entry wins."""
        if record.id in self._entries or record.expires <= time.time():
            return
        text_key = (record.tenant, record.partition, record.text)
        old = self._by_text.get(text_key)
        if old is not None and old in self._entries:
            # Ours not stored yet (a negative id) are the newest of all.
            if not fresh and (old < 0 or old > record.id):
                return
            self._drop(self._entries[old])
        entry = _Entry(
            id=record.id,
            tenant=record.tenant,
            model=record.model,
            partition=record.partition,
            question=record.text,
            created=record.created,
            expires=record.expires,
            answer=record.payload,
        )
        self._index.add(record.tenant, record.partition, entry.id, _vector(record))
        self._entries[entry.id] = entry
        self._by_text[text_key] = entry.id
        if record.threshold is not None:
            # The lift survives as the wrong hit that caused it (see AdaptiveThreshold).
            self.thresholds.observe(entry.id, record.threshold - 1e-6, False)
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries.values())))

    def _drop_id(self, entry_id: int) -> None:
        entry = self._entries.get(entry_id)
        if entry is not None:
            self._drop(entry)

    def _drop(self, entry: _Entry) -> None:
        if self._entries.pop(entry.id, None) is None:
            return
        self._index.remove(entry.tenant, entry.partition, entry.id)
        key = (entry.tenant, entry.partition, entry.question)
        if self._by_text.get(key) == entry.id:
            del self._by_text[key]
        self.thresholds.forget(entry.id)

    # -- management -------------------------------------------------------------------

    async def invalidate(
        self,
        tenant: str,
        *,
        model: str | None = None,
        older_than_s: float | None = None,
        entry: int | None = None,
    ) -> int:
        """Drop `tenant`'s entries, narrowed to a model group, an age or one entry id,
        from the store and every replica; returns how many were dropped."""
        cutoff = None if older_than_s is None else time.time() - older_than_s
        if self._mirror.shared:
            if not self._loaded:
                await self._load()
            dropped = await self._mirror.drop(
                tenant, model=model, created_before=cutoff, entry=entry
            )
            return len(dropped)
        doomed = [
            e
            for e in self._entries.values()
            if e.tenant == tenant
            and (model is None or e.model == model)
            and (cutoff is None or e.created <= cutoff)
            and (entry is None or e.id == entry)
        ]
        for e in doomed:
            self._drop(e)
        return len(doomed)

    def _remember_hit(self, hit: SemanticHit, request_id: str) -> None:
        # Keyed by tenant too: two tenants' request ids may be the same (an agent
        # step's id derives from its run id, which each tenant chooses).
        self._recent[(hit.tenant, request_id)] = hit
        while len(self._recent) > _RECENT_HITS:
            self._recent.popitem(last=False)

    def _heard_hit(self, notice: dict[str, Any]) -> None:
        """A hit another replica served: feedback on it may be sent here."""
        try:
            hit = SemanticHit(str(notice["tenant"]), int(notice["id"]), float(notice["score"]))
            self._remember_hit(hit, str(notice["request_id"]))
        except (KeyError, TypeError, ValueError):
            log.warning("semantic cache: a malformed hit notice was ignored")

    def _observe(self, entry_id: int, score: float, correct: bool) -> None:
        if entry_id in self._entries:
            self.thresholds.observe(entry_id, score, correct)

    async def feedback(self, tenant: str, request_id: str, correct: bool) -> SemanticHit | None:
        """Judge the semantic hit that answered `request_id`: a wrong one lifts its
        entry's threshold above the hit's score, on every replica. None if no such
        recent hit of `tenant`."""
        hit = self._recent.get((tenant, request_id))
        if hit is None:
            return None
        if hit.entry in self._entries:
            threshold = self.thresholds.observe(hit.entry, hit.score, correct)
            await self._mirror.feedback(hit.entry, hit.score, correct, threshold)
        return hit


def _vector(record: CacheEntryRecord) -> Any:
    return np.frombuffer(record.vector, dtype="<f4")


def _cacheable(response: dict[str, Any]) -> bool:
    """A complete text answer (OpenAI shape): not cut off, not a tool call, not empty."""
    choices = response.get("choices") or []
    if len(choices) != 1:
        return False
    message = choices[0].get("message") or {}
    return (
        choices[0].get("finish_reason") == "stop"
        and not message.get("tool_calls")
        and isinstance(message.get("content"), str)
        and bool(message["content"].strip())
    )

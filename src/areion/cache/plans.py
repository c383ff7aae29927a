"""L3 plan caching: the plan a finished run followed, offered to a run on a similar task.

In the spirit of Agentic Plan Caching (arXiv 2506.14852): when a run of an agent that
opted in (`Agent(plan_cache=True)`) finishes, its transcript is reduced to a `Plan` —
the tool calls it made, step by step, with argument templates, and the shape of its
final answer; never the tool results. Argument values taken verbatim from the task
become `<from the task>`, values copied from an earlier tool result become
`<from an earlier result>`, long texts become `<text written for the task>`; other
literals (units, modes, flags) stay. Calls that failed are left out, so a plan is
the path that worked, without the detours.

A new run's task is embedded and searched among the plans of the same tenant and
agent (one `PartitionedIndex` partition each: tenants never see each other's plans).
The nearest few by cosine are candidates; `SemanticVerifier` scores each and vetoes
look-alikes — different numbers, one side negated, an entity swapped — and the best
one whose score reaches the threshold is offered to the model as a system message
before the task. A plan is advice the model adapts, not an answer served as is, so
the default threshold allows more wrong hits than the answer cache does (20% rather
than 10%, a score of 0.67 instead of 0.91): paraphrased tasks we tried scored
0.69-0.82, so the answer cache's threshold would offer almost no plan, and tasks of
another kind ("cancel order 1234" for "look up order 1234") scored under 0.2.

So a plan is offered for the same job on the same values, phrased differently; a
task with other values misses. Matching those too, as the paper does, would need a
verifier calibrated on task templates: with the values masked, this one scores such
pairs 0.24-0.31, barely above tasks of another kind (0.1-0.2).

The offered plan is part of the run's transcript (`PLAN_KEY` marks the message), so
a resumed run sees exactly what it saw before and never looks up again.

Given a store, plans live there, shared by every replica (`TierMirror`); each process
keeps a copy for lookups, bounded in number (least recently used dropped first) and
with a TTL. Without one, plans live in this process only. `invalidate()` drops them
by tenant, agent and age. The embedder is made on first use, off the event loop, so
agents that never opt in never load the model.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from areion.cache.mirror import Copy, TierMirror
from areion.errors import ConfigError
from areion.store.records import CacheEntryRecord

if TYPE_CHECKING:  # numpy, hnswlib, ONNX Runtime: imported once a plan cache is made
    from areion.cache.embedding import Embedder, Vectors
    from areion.cache.index import PartitionedIndex
    from areion.cache.verifier import SemanticVerifier
    from areion.store.base import Store
    from areion.store.shared import Shared

__all__ = [
    "DEFAULT_MAX_WRONG_HIT_RATE",
    "PLAN_KEY",
    "Plan",
    "PlanCache",
    "PlanCall",
    "PlanHit",
    "PlanMatch",
    "offered_plan",
]

# Plans are advice the model adapts (see the module docstring), so they may be
# offered on a looser match than a cached answer is served on.
DEFAULT_MAX_WRONG_HIT_RATE = 0.2

# The key, in the transcript's copy of the plan message, of what was offered: the
# entry id, the earlier task and the score. Message.from_openai ignores it, so it never
# reaches a provider.
PLAN_KEY = "areion_plan"

FROM_TASK = "<from the task>"
FROM_RESULT = "<from an earlier result>"
LONG_TEXT = "<text written for the task>"

# Longer string arguments are written for the task (a message body, a query with
# details): the plan keeps that such a text goes there, not the text itself.
_MAX_LITERAL = 60
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")


@dataclass(slots=True, kw_only=True)
class PlanCall:
    """One tool call of a plan."""

    tool: str
    """The tool's name."""
    arguments: dict[str, Any]
    """The arguments, with task- and result-specific values replaced by placeholders."""

    def render(self) -> str:
        return f"{self.tool} {orjson.dumps(self.arguments).decode()}"


@dataclass(slots=True, kw_only=True)
class Plan:
    """What a finished run did, reusable for a similar task."""

    steps: list[list[PlanCall]]
    """Tool calls per model turn, in order; the calls of one turn ran in parallel."""
    answer: str
    """The shape of the final answer ("plain text, about 20 words", "a JSON object ...")."""

    @classmethod
    def of_run(cls, task: str, messages: Sequence[dict[str, Any]], output: str) -> Plan | None:
        """The plan of a finished run's transcript (OpenAI-shaped messages); None when
        the run called no tool successfully (there is nothing to reuse)."""
        results: dict[str, str] = {
            str(m.get("tool_call_id")): str(m.get("content") or "")
            for m in messages
            if m.get("role") == "tool"
        }
        source = _Sources(task)
        steps: list[list[PlanCall]] = []
        for message in messages:
            if message.get("role") != "assistant" or not message.get("tool_calls"):
                continue
            step: list[PlanCall] = []
            for call in message["tool_calls"]:
                result = results.get(str(call.get("id")))
                if result is None or result.startswith("error:"):
                    continue  # unanswered or failed: not part of the path that worked
                function = call.get("function") or {}
                try:
                    arguments = orjson.loads(function.get("arguments") or "{}")
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(arguments, dict):
                    continue
                step.append(
                    PlanCall(tool=str(function.get("name")), arguments=source.template(arguments))
                )
            if step:
                steps.append(step)
            # Results of this turn are where later turns' values may come from.
            for call in message["tool_calls"]:
                source.add_result(results.get(str(call.get("id"))) or "")
        if not steps:
            return None
        return cls(steps=steps, answer=_answer_shape(output))

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "steps": [
                    [{"tool": c.tool, "arguments": c.arguments} for c in s] for s in self.steps
                ],
                "answer": self.answer,
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> Plan:
        raw = orjson.loads(data)
        return cls(
            steps=[
                [PlanCall(tool=c["tool"], arguments=c["arguments"]) for c in s]
                for s in raw["steps"]
            ],
            answer=raw["answer"],
        )

    def tools(self) -> set[str]:
        """The names of the tools the plan calls."""
        return {call.tool for step in self.steps for call in step}

    def render(self) -> str:
        """The plan as numbered lines a model can follow."""
        lines = []
        for number, step in enumerate(self.steps, start=1):
            if len(step) == 1:
                lines.append(f"{number}. {step[0].render()}")
            else:
                lines.append(f"{number}. in parallel: " + "; ".join(c.render() for c in step))
        lines.append(f"{len(self.steps) + 1}. answer: {self.answer}")
        return "\n".join(lines)


class _Sources:
    """Where an argument value may have come from: the task, or an earlier tool result."""

    __slots__ = ("_numbers", "_result_numbers", "_results", "_task")

    def __init__(self, task: str) -> None:
        self._task = task.casefold()
        self._numbers = _numbers_in(task)
        self._results: list[str] = []
        self._result_numbers: set[str] = set()

    def add_result(self, text: str) -> None:
        self._results.append(text.casefold())
        self._result_numbers |= _numbers_in(text)

    def template(self, value: Any) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            text = _number_text(value)
            if text in self._numbers:
                return FROM_TASK
            return FROM_RESULT if text in self._result_numbers else value
        if isinstance(value, str):
            needle = value.strip().casefold()
            if needle and _contains(self._task, needle):
                return FROM_TASK
            if needle and any(_contains(result, needle) for result in self._results):
                return FROM_RESULT
            return LONG_TEXT if len(value) > _MAX_LITERAL else value
        if isinstance(value, list):
            return [self.template(item) for item in value]
        if isinstance(value, dict):
            return {key: self.template(item) for key, item in value.items()}
        return value


def _contains(text: str, needle: str) -> bool:
    """`needle` occurs in `text` as whole words ("c" is not found in "celsius")."""
    return re.search(r"(?<!\w)" + re.escape(needle) + r"(?!\w)", text) is not None


def _number_text(value: float) -> str:
    """One spelling per number: 5, 5.0 and "5" are all "5"."""
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return repr(value)


def _numbers_in(text: str) -> set[str]:
    found = set()
    for match in _NUMBER.findall(text):
        try:
            found.add(_number_text(float(match.replace(",", ""))))
        except ValueError:  # "1.2.3": a version, not a number
            found.add(match)
    return found


def _answer_shape(output: str) -> str:
    try:
        value = orjson.loads(output)
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        return "a JSON object with the keys " + ", ".join(str(key) for key in value)
    if isinstance(value, list):
        return "a JSON list"
    words = len(output.split())
    lines = sum(1 for line in output.splitlines() if line.strip())
    if lines > 1:
        return f"plain text, {lines} lines, about {words} words"
    return f"plain text, about {words} words"


@dataclass(slots=True, kw_only=True, frozen=True)
class PlanHit:
    """The plan a run was offered, as its transcript records it."""

    entry: int
    """The plan cache entry (per process; 0 if unknown)."""
    task: str
    """The earlier, similar task whose plan it is."""
    score: float
    """The verifier's score of the match."""


def offered_plan(messages: Sequence[dict[str, Any]]) -> PlanHit | None:
    """The plan offered to the run of this transcript, if any."""
    for message in messages:
        meta = message.get(PLAN_KEY)
        if isinstance(meta, dict):
            return PlanHit(
                entry=int(meta.get("entry") or 0),
                task=str(meta.get("task") or ""),
                score=float(meta.get("score") or 0.0),
            )
    return None


@dataclass(slots=True, kw_only=True, frozen=True)
class PlanMatch:
    """A cached plan found for a task."""

    entry: int
    """The entry's id."""
    task: str
    """The earlier task the plan worked for."""
    plan: Plan
    """The plan."""
    cosine: float
    """Cosine similarity of the two tasks' embeddings."""
    score: float
    """The verifier's score (probability that the tasks ask the same thing)."""
    hits: int
    """Times the entry has been offered, this one included."""

    def message(self) -> dict[str, Any]:
        """The system message that offers the plan, as the run's transcript stores it."""
        text = (
            f"A plan that worked for a similar task ({self.task!r}):\n"
            f"{self.plan.render()}\n"
            "Use it as a starting point, not as an order: adapt it to this task (take "
            "values from this task, not the earlier one), skip steps it does not need, "
            "and check each result before relying on it."
        )
        meta = {"entry": self.entry, "task": self.task, "score": round(self.score, 4)}
        return {"role": "system", "content": text, PLAN_KEY: meta}


@dataclass(slots=True, kw_only=True)
class _Entry:
    id: int
    tenant: str
    agent: str
    task: str
    plan: Plan
    created: float
    expires: float
    hits: int = 0


class PlanCache:
    """Plans of finished runs, per (tenant, agent), offered to runs on similar tasks.

    `embedder`: an `Embedder`, or a factory called (in a worker thread) on first use;
    by default `MiniLMEmbedder`. `index`: where task embeddings are searched, one
    partition per (tenant, agent); by default a new `PartitionedIndex`. `verifier`:
    the look-alike check, by default the one shipped with Areion; `max_wrong_hit_rate`
    turns its calibration into the threshold. `ttl_s`: how long a plan is offered,
    unless `remember` is given another. `max_chars`: longer tasks are neither
    remembered nor looked up (the embedding would see only their beginning).
    """

    def __init__(
        self,
        embedder: Embedder | Callable[[], Embedder] | None = None,
        *,
        index: PartitionedIndex | None = None,
        verifier: SemanticVerifier | None = None,
        max_wrong_hit_rate: float = DEFAULT_MAX_WRONG_HIT_RATE,
        ttl_s: float = 7 * 86_400.0,
        max_entries: int = 10_000,
        max_chars: int = 2000,
        candidates: int = 4,
        store: Store | None = None,
        shared: Shared | None = None,
    ) -> None:
        if ttl_s <= 0 or max_entries < 1 or candidates < 1:
            raise ConfigError("plan cache: ttl_s, max_entries and candidates must be positive")
        self._owns_embedder = embedder is None
        # A class or a function is a factory; an embedder instance is not callable.
        self._factory = embedder if callable(embedder) else None
        self._embedder: Embedder | None = None if callable(embedder) else embedder
        if embedder is None:
            self._factory = _minilm
        self._loading = threading.Lock()
        self._index = index
        self.clock: Callable[[], float] = time.time
        """Unix time for entry ages and expiry; replaceable (a test's manual clock)."""
        if verifier is None:
            from areion.cache.verifier import SemanticVerifier

            # The cheap verifier: a plan is advice, not an answer, and the lookup runs
            # inline, so no pair-model run on it.
            verifier = SemanticVerifier.load(kind="lexical")
        self.verifier = verifier
        threshold = self.verifier.threshold_for(max_wrong_hit_rate)
        if math.isinf(threshold):
            raise ConfigError(
                f"plan cache: max_wrong_hit_rate {max_wrong_hit_rate} is stricter than the"
                f" verifier's calibration can vouch for; raise it (default"
                f" {DEFAULT_MAX_WRONG_HIT_RATE})"
            )
        self.threshold = threshold
        """The verifier score a match must reach."""
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_chars = max_chars
        self.candidates = candidates
        self.hits = 0
        """Lookups that found a plan."""
        self.misses = 0
        """Lookups that found none."""
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._by_task: dict[tuple[str, str, str], int] = {}
        self._mirror = TierMirror(
            "plan",
            Copy(
                add=self._apply,
                drop=self._drop_id,
                feedback=lambda entry, score, correct: None,  # plans take no feedback
                has=self._entries.__contains__,
            ),
            store=store,
            shared=shared,
        )

    def __len__(self) -> int:
        return len(self._entries)

    async def lookup(
        self, tenant: str, agent: str, task: str, *, tools: Collection[str] | None = None
    ) -> PlanMatch | None:
        """The best plan of `tenant`'s `agent` for `task`, if one is similar enough.

        `tools`: the agent's tools now; a plan calling any other tool is not offered.
        """
        task = task.strip()
        if not task or len(task) > self.max_chars:
            self.misses += 1
            return None
        embedder = await self._ready()  # a missing model fails the first run, not silently
        await self._mirror.ready()
        index = self._index
        if index is None or index.partition(tenant, agent) is None:
            self.misses += 1  # nothing to find: no need to embed the task
            return None
        vectors = await embedder.embed([task])
        now = self.clock()

        def candidates() -> Iterator[tuple[_Entry, str, float, float]]:
            for entry_id, cosine in index.search(tenant, agent, vectors[0], self.candidates):
                entry = self._entries.get(entry_id)
                if entry is None:
                    continue
                if entry.expires <= now:
                    self._drop(entry)
                    continue
                if tools is not None and not entry.plan.tools() <= set(tools):
                    continue  # the agent no longer has a tool the plan needs
                yield entry, entry.task, cosine, self.threshold

        best = self.verifier.best(task, candidates())
        if best is None:
            self.misses += 1
            return None
        entry, cosine, score = best
        entry.hits += 1
        self.hits += 1
        self._entries.move_to_end(entry.id)
        return PlanMatch(
            entry=entry.id, task=entry.task, plan=entry.plan, cosine=cosine, score=score,
            hits=entry.hits,
        )  # fmt: skip

    async def remember(
        self,
        tenant: str,
        agent: str,
        task: str,
        plan: Plan,
        *,
        ttl_s: float | None = None,
        source: int | None = None,
    ) -> int | None:
        """Keep `plan` as what worked for `task`; returns the entry id (None: not kept).

        `source`: the entry whose plan the run was offered. If the run followed it
        exactly, that entry is kept longer instead of adding a near-duplicate.
        """
        task = task.strip()
        if not task or len(task) > self.max_chars or not plan.steps:
            return None
        now = self.clock()
        expires = now + (self.ttl_s if ttl_s is None else ttl_s)
        offered = None if source is None else self._entries.get(source)
        if (
            offered is not None
            and (offered.tenant, offered.agent) == (tenant, agent)
            and offered.plan == plan
        ):
            offered.expires = max(offered.expires, expires)
            self._entries.move_to_end(offered.id)
            return offered.id
        vectors = await self._embed(task)
        await self._mirror.ready()
        record = CacheEntryRecord(
            tier="plan", tenant=tenant, partition=agent, model=agent, text=task,
            vector=vectors[0].astype("<f4").tobytes(), payload=plan.to_json(), created=now,
            expires=expires,
        )  # fmt: skip
        old = self._by_task.get((tenant, agent, task))
        record.id = await self._mirror.add(record)
        if old is not None and old in self._entries and self._mirror.shared:
            await self._mirror.drop(tenant, entry=old)  # the newest plan for a task wins
        self._apply(record)
        return record.id

    def _apply(self, record: CacheEntryRecord) -> None:
        """Add a stored plan to this process's copy (ours, or another replica's)."""
        import numpy as np

        if record.id in self._entries or record.expires <= self.clock():
            return
        key = (record.tenant, record.partition, record.text)
        old = self._by_task.get(key)
        if old is not None and old in self._entries:
            if old > record.id:
                return  # a newer plan for the same task is already here
            self._drop(self._entries[old])
        index = self._index
        assert index is not None  # made by _ready
        entry = _Entry(
            id=record.id, tenant=record.tenant, agent=record.partition, task=record.text,
            plan=Plan.from_json(record.payload), created=record.created, expires=record.expires,
        )  # fmt: skip
        index.add(entry.tenant, entry.agent, entry.id, np.frombuffer(record.vector, dtype="<f4"))
        self._entries[entry.id] = entry
        self._by_task[key] = entry.id
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries.values())))

    def _drop_id(self, entry_id: int) -> None:
        entry = self._entries.get(entry_id)
        if entry is not None:
            self._drop(entry)

    async def invalidate(
        self, tenant: str, agent: str | None = None, older_than_s: float | None = None
    ) -> int:
        """Drop `tenant`'s plans, narrowed to one agent and to those older than
        `older_than_s` seconds, everywhere; returns how many were dropped."""
        cutoff = None if older_than_s is None else self.clock() - older_than_s
        if self._mirror.shared:
            await self._ready()
            await self._mirror.ready()
            # A plan's record names its agent as its model.
            return len(await self._mirror.drop(tenant, model=agent, created_before=cutoff))
        doomed = [
            e
            for e in self._entries.values()
            if e.tenant == tenant
            and (agent is None or e.agent == agent)
            and (cutoff is None or e.created <= cutoff)
        ]
        for e in doomed:
            self._drop(e)
        return len(doomed)

    async def aclose(self) -> None:
        """Stop following the store."""
        await self._mirror.aclose()

    def close(self) -> None:
        """Stop the index's build thread, and the embedder if this cache made it."""
        if self._index is not None:
            self._index.close()
        close = getattr(self._embedder, "close", None)
        if self._owns_embedder and callable(close):
            close()

    async def _embed(self, text: str) -> Vectors:
        """`text`'s embedding, as a one-row matrix."""
        return await (await self._ready()).embed([text])

    async def _ready(self) -> Embedder:
        """The embedder, loaded if it was not yet, and an index that fits it."""
        embedder = self._embedder
        if embedder is None:
            # Loading the model takes about a second: not on the event loop.
            embedder = await asyncio.to_thread(self._load)
        if self._index is None:
            from areion.cache.index import PartitionedIndex

            self._index = PartitionedIndex(embedder.dim)
        elif self._index.dim != embedder.dim:
            raise ConfigError(
                f"plan cache: the index holds {self._index.dim}-dimensional vectors but the"
                f" embedder makes {embedder.dim}; give both the same dimension"
            )
        return embedder

    def _load(self) -> Embedder:
        with self._loading:  # two first lookups at once load one model
            if self._embedder is None:
                assert self._factory is not None
                self._embedder = self._factory()
            return self._embedder

    def _drop(self, entry: _Entry) -> None:
        if self._entries.pop(entry.id, None) is None:
            return
        assert self._index is not None
        self._index.remove(entry.tenant, entry.agent, entry.id)
        key = (entry.tenant, entry.agent, entry.task)
        if self._by_task.get(key) == entry.id:
            del self._by_task[key]


def _minilm() -> Embedder:
    from areion.cache.embedding import MiniLMEmbedder

    return MiniLMEmbedder()

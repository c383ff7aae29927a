"""Routes: virtual models (`model: "auto"`) that pick a real one per request.

The `Router` stage sits inside the caches (a cached answer needs no routing) and
outside accounting (every attempt of a cascade is paid for and booked). For a
request to a route it

1. answers exact computations with the solver, when the route allows it;
2. asks the route's policy for a candidate:
   - `rules`: the first rule whose conditions all hold (tier and tag headers, prompt
     length, tools, a response format), else the strongest candidate;
   - `learned`: the difficulty model (`areion train router`) picks the cheapest
     candidate expected to keep `target_quality` of the best one's quality; a prompt
     unlike the router's training data goes to the strongest candidate instead
     (reason `out_of_domain`): the router's predictions hold only where it was trained;
   - `cascade`: the two cheapest candidates answer at once; the cheaper's answer is
     kept if it passes the checks (valid JSON for the requested schema, the two
     agree); when the two cannot be compared (programs, long prose) the route's
     `unverified` candidate answers; else the strongest;
3. moves non-critical traffic to the fastest candidate while the route is degraded
   (its rolling p95 latency broke `latency_objective_s`), with hysteresis;
4. sets the reasoning effort of reasoning models from the prompt's difficulty.

The decision is counted in `areion_route_decisions_total` and named in the response's
`x-areion-route-reason` header; `x-areion-model` names the deployment that answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from areion.cache.serving import NO_STORE, as_stream, free_entry
from areion.config import ModelConfig, RouteConfig, RouteRule
from areion.errors import ConfigError
from areion.pipeline import Call, Handler, Result
from areion.telemetry.ledger import Ledger
from areion.telemetry.metrics import Metrics
from areion.types import ChatRequest, ChatResponse, Choice, Message, Usage

if TYPE_CHECKING:  # numpy and the embedder: only for learned routes
    from areion.cache.embedding import Embedder
    from areion.routing.learned import LearnedRouter

__all__ = [
    "LatencyWatch",
    "LearnedPolicy",
    "Pick",
    "Policy",
    "Router",
    "RulesPolicy",
    "agree",
    "compare",
    "prompt_text",
    "reasoning_effort",
    "schema_valid",
    "stated_choice",
]

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class Pick:
    """A policy's choice: the model group, why, and how hard the prompt looks (0..1)."""

    model: str
    reason: str
    difficulty: float | None = None


class Policy(Protocol):
    async def choose(self, call: Call, text: str) -> Pick: ...


def prompt_text(request: ChatRequest) -> str:
    """The text a policy judges: the last user message."""
    for message in reversed(request.messages):
        if message.role == "user":
            return message.text()
    return ""


def _prompt_chars(request: ChatRequest) -> int:
    return sum(len(m.text()) for m in request.messages)


class RulesPolicy:
    """First matching rule wins; no match -> the last (strongest) candidate."""

    def __init__(self, route: RouteConfig) -> None:
        self.rules = list(route.rules)
        self.fallback = route.candidates[-1]

    @staticmethod
    def matches(rule: RouteRule, call: Call) -> bool:
        when, request = rule.when, call.request
        if when.tier is not None and call.annotations.get("tier") != when.tier:
            return False
        if when.tag is not None and when.tag not in call.annotations.get("tags", ()):
            return False
        if when.tools is not None and bool(request.tools) != when.tools:
            return False
        if (
            when.response_format is not None
            and ("response_format" in request.extra) != when.response_format
        ):
            return False
        chars = _prompt_chars(request)
        if when.min_prompt_chars is not None and chars < when.min_prompt_chars:
            return False
        return when.max_prompt_chars is None or chars <= when.max_prompt_chars

    async def choose(self, call: Call, text: str) -> Pick:
        for index, rule in enumerate(self.rules):
            if self.matches(rule, call):
                return Pick(rule.model, f"rule:{index}")
        return Pick(self.fallback, "default")


class LearnedPolicy:
    """The difficulty model of `areion train router` behind a route.

    The router file's candidates (the models of its training data, cheapest first)
    map to the route's candidates by name when the names match, else by position.
    Difficulty, for reasoning effort, is the chance that the cheapest candidate fails.
    When the semantic cache has just embedded the same text with the same embedder, its
    vector is reused: one embedding per request.
    """

    def __init__(
        self, route: RouteConfig, router: LearnedRouter, embedder: Callable[[], Embedder]
    ) -> None:
        names = list(router.candidates)
        if set(names) <= set(route.candidates):
            self.mapping = {name: name for name in names}
        elif len(names) == len(route.candidates):
            self.mapping = dict(zip(names, route.candidates, strict=True))
        else:
            raise ConfigError(
                f"routes.{route.name}.router: the router was trained for {names}; list "
                f"{len(names)} candidates, cheapest first, or name them alike"
            )
        self.router = router
        self.target_quality = route.target_quality
        self._embedder = embedder

    @classmethod
    def load(cls, route: RouteConfig, embedder: Callable[[], Embedder]) -> LearnedPolicy:
        from areion.routing.learned import LearnedRouter

        assert route.router is not None  # the config requires it for this policy
        return cls(route, LearnedRouter.load(route.router), embedder)

    async def choose(self, call: Call, text: str) -> Pick:
        from areion.routing.learned import embedding_text

        embedder = self._embedder()
        known = call.annotations.get("embedding")  # (embedder, text, vector), from L2
        if known is not None and known[0] is embedder and known[1] == embedding_text(text):
            decision = self.router.decide(text, known[2], self.target_quality)
        else:
            decision = await self.router.route(text, embedder, self.target_quality)
        difficulty = 1.0 - decision.scores.get(self.router.candidates[0], 0.0)
        reason = "out_of_domain" if decision.out_of_domain else "learned"
        return Pick(self.mapping[decision.candidate], reason, difficulty)


class LatencyWatch:
    """Rolling p95 of a route's latencies against its objective, with hysteresis.

    Degraded once the p95 of the last `window` calls exceeds `objective_s`; back to
    normal once it is under `recover_ratio` x `objective_s`. Checked every tenth call.
    """

    def __init__(self, objective_s: float, *, recover_ratio: float = 0.8, window: int = 200):
        self.objective_s = objective_s
        self.recover_s = objective_s * recover_ratio
        self._samples: deque[float] = deque(maxlen=window)
        self._count = 0
        self.degraded = False

    def p95(self) -> float:
        if not self._samples:
            return 0.0
        ordered = sorted(self._samples)
        return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]

    def observe(self, seconds: float) -> bool | None:
        """Record one latency; returns the new mode (True: degraded) when it changed."""
        self._samples.append(seconds)
        self._count += 1
        if self._count % 10 or len(self._samples) < min(20, self._samples.maxlen or 20):
            return None
        p95 = self.p95()
        if not self.degraded and p95 > self.objective_s:
            self.degraded = True
            return True
        if self.degraded and p95 < self.recover_s:
            self.degraded = False
            return False
        return None


# Reasoning effort by difficulty: easy prompts get none.
_EFFORTS = ((0.25, "none"), (0.5, "low"), (0.75, "medium"), (math.inf, "high"))


def reasoning_effort(difficulty: float) -> str:
    """The OpenAI-style `reasoning_effort` for a prompt of this difficulty (0..1)."""
    for bound, effort in _EFFORTS:
        if difficulty < bound:
            return effort
    return "high"


_CHOICE = re.compile(r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-E])\)?\b", re.IGNORECASE)
# A reply that is a choice letter and little else: "B", "(c) because ...", "D. Paris".
_BARE_CHOICE = re.compile(r"^\W*(?:\(([A-Ea-e])\)|([A-E])(?:[\).:](?:\s|$)|\s*$))")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_CODE = re.compile(r"\bdef |\breturn\b|[{};=]|```")
# Prose longer than this says too much to be compared by its words or last number.
_SHORT = 400


def _normalized(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def stated_choice(text: str) -> str | None:
    """The multiple-choice letter an answer states, if it states one."""
    found: list[str] = _CHOICE.findall(text)
    if found:
        return found[-1].upper()
    bare = _BARE_CHOICE.match(text)
    return (bare.group(1) or bare.group(2)).upper() if bare else None


def compare(first: str, second: str) -> bool | None:
    """Do two answers say the same thing? True or False when what they state can be
    compared: the same words; the same choice (multiple choice); for short prose,
    the same last number, and any other difference is a disagreement. None when it
    cannot: two different programs (equal outputs would need running them) or long
    prose, whose words differ even when the answers agree."""
    if _normalized(first) == _normalized(second):
        return True
    a, b = stated_choice(first), stated_choice(second)
    if a and b:
        return a == b
    if _CODE.search(first) or _CODE.search(second):
        return None
    if len(first) >= _SHORT or len(second) >= _SHORT:
        return None
    if a or b:
        return False
    x: list[str] = _NUMBER.findall(first)
    y: list[str] = _NUMBER.findall(second)
    return bool(x and y and float(x[-1]) == float(y[-1]))


def agree(first: str, second: str) -> bool:
    """Do two answers demonstrably say the same thing (`compare` is True)?"""
    return compare(first, second) is True


def schema_valid(request: ChatRequest, text: str) -> bool:
    """Does `text` satisfy the request's response format (true when it asks for none)?
    JSON that parses; for a `json_schema`, an object with the schema's required keys."""
    spec = request.extra.get("response_format")
    if not isinstance(spec, dict) or spec.get("type") not in ("json_object", "json_schema"):
        return True
    try:
        value = json.loads(text)
    except ValueError:
        return False
    if spec["type"] == "json_object":
        return isinstance(value, dict)
    schema = (spec.get("json_schema") or {}).get("schema") or {}
    if schema.get("type") == "object" and not isinstance(value, dict):
        return False
    required = schema.get("required") or []
    return not isinstance(value, dict) or all(key in value for key in required)


@dataclass(slots=True)
class _Route:
    config: RouteConfig
    policy: Policy | None  # None: cascade
    watch: LatencyWatch | None
    degraded_model: str


SolverFn = Callable[[ChatRequest], str | None]


class Router:
    """The routing stage: resolves a route name to a model group per request."""

    def __init__(
        self,
        routes: Sequence[RouteConfig],
        models: Sequence[ModelConfig],
        metrics: Metrics,
        ledger: Ledger,
        *,
        learned: Callable[[RouteConfig], Policy] | None = None,
        solver: SolverFn | None = None,
    ) -> None:
        self._metrics = metrics
        self._ledger = ledger
        self._solver = solver
        self._reasoning = {m.name for m in models if m.reasoning}
        self.clock: Callable[[], float] = time.perf_counter
        """What a route's latencies are measured with, from the call reaching the router
        to its answer; replaceable (a test's manual clock)."""
        self.routes: dict[str, _Route] = {}
        for config in routes:
            policy: Policy | None
            if config.policy == "rules":
                policy = RulesPolicy(config)
            elif config.policy == "learned":
                if learned is None:
                    raise RuntimeError("a learned route needs a policy loader")
                policy = learned(config)
            else:
                policy = None
            watch = (
                LatencyWatch(
                    config.latency_objective_s,
                    recover_ratio=config.recover_ratio,
                    window=config.window,
                )
                if config.latency_objective_s is not None
                else None
            )
            self.routes[config.name] = _Route(
                config, policy, watch, config.degraded_model or config.candidates[0]
            )
            metrics.route_degraded.labels(config.name).set(0)

    def __contains__(self, name: object) -> bool:
        return name in self.routes

    async def handle(self, call: Call, call_next: Handler) -> Result:
        route = self.routes.get(call.request.model)
        if route is None:
            return await call_next(call)
        config = route.config
        call.annotations["route"] = config.name
        started = self.clock()
        if config.solver and self._solver is not None:
            answer = self._solver(call.request)
            if answer is not None:
                return self._solved(call, answer)
        text = prompt_text(call.request)
        if (
            route.watch is not None
            and route.watch.degraded
            and (call.annotations.get("tier") != "critical")
        ):
            pick = Pick(route.degraded_model, "degraded")
        elif route.policy is None:
            return await self._cascade(route, call, call_next, started)
        else:
            pick = await route.policy.choose(call, text)
        return await self._send(route, call, call_next, pick, started)

    # -- one model ----------------------------------------------------------------------

    def _retarget(self, call: Call, pick: Pick, *, stream: bool | None = None) -> Call:
        extra = call.request.extra
        if (
            pick.difficulty is not None
            and pick.model in self._reasoning
            and "reasoning_effort" not in extra
        ):
            extra = {**extra, "reasoning_effort": reasoning_effort(pick.difficulty)}
        request = dataclasses.replace(
            call.request,
            model=pick.model,
            extra=extra,
            stream=call.request.stream if stream is None else stream,
        )
        annotations = dict(call.annotations)
        annotations["route_reason"] = pick.reason  # booked in the ledger with the call
        return dataclasses.replace(call, request=request, annotations=annotations)

    async def _send(
        self, route: _Route, call: Call, call_next: Handler, pick: Pick, started: float
    ) -> Result:
        self._count(route, pick)
        result = await call_next(self._retarget(call, pick))
        self._note(result, route, pick.reason)
        self._watch(route, result, started)
        return result

    def _count(self, route: _Route, pick: Pick) -> None:
        reason = pick.reason.split(":", 1)[0]
        self._metrics.route_decisions.labels(route.config.name, pick.model, reason).inc()

    @staticmethod
    def _note(result: Result, route: _Route, reason: str) -> None:
        info = result.info
        info["route"] = route.config.name
        info["route_reason"] = reason

    def _watch(self, route: _Route, result: Result, started: float) -> None:
        watch = route.watch
        if watch is None:
            return
        if isinstance(result, ChatResponse):
            self._observe(route, self.clock() - started)
        else:
            result.on_finish(lambda _s, _e: self._observe(route, self.clock() - started))

    def _observe(self, route: _Route, seconds: float) -> None:
        assert route.watch is not None
        changed = route.watch.observe(seconds)
        if changed is None:
            return
        name = route.config.name
        mode = "degraded" if changed else "normal"
        self._metrics.route_degraded.labels(name).set(1 if changed else 0)
        self._metrics.route_mode_changes.labels(name, mode).inc()
        log.warning(
            "route %s: %s mode (p95 %.3f s, objective %.3f s)",
            name,
            mode,
            route.watch.p95(),
            route.watch.objective_s,
        )

    # -- cascade ------------------------------------------------------------------------

    async def _cascade(
        self, route: _Route, call: Call, call_next: Handler, started: float
    ) -> Result:
        """Two cheapest candidates at once; keep the cheaper's answer if the checks pass;
        if the two answers cannot be compared, the route's `unverified` candidate answers;
        else the strongest. Every attempt goes through accounting."""
        config = route.config
        first, second, last = config.candidates[0], config.candidates[1], config.candidates[-1]
        checks = set(config.checks)
        attempts = [self._retarget(call, Pick(first, "cascade"), stream=False)]
        if "agreement" in checks:
            attempts.append(self._retarget(call, Pick(second, "cascade"), stream=False))
        for i, attempt in enumerate(attempts):
            attempt.request_id = f"{call.request_id}.{i + 1}"
        answers = await asyncio.gather(*(call_next(a) for a in attempts))
        responses = [a for a in answers if isinstance(a, ChatResponse)]
        spent = sum(r.cost_usd or 0.0 for r in responses)
        cheap = responses[0]
        text = cheap.message.text()
        verdict = compare(text, responses[1].message.text()) if "agreement" in checks else True
        if "schema" in checks and not schema_valid(call.request, text):
            verdict = False
        if verdict is True:
            pick = Pick(first, "cascade_accept")
        elif verdict is None and config.unverified:
            pick = Pick(config.unverified, "cascade_unverified")
        else:
            pick = Pick(last, "cascade_escalate")
        self._count(route, pick)
        asked = [first, second][: len(responses)]
        if pick.model in asked:  # answered already
            final = responses[asked.index(pick.model)]
        else:
            escalated = self._retarget(call, pick, stream=False)
            escalated.request_id = f"{call.request_id}.{len(attempts) + 1}"
            result = await call_next(escalated)
            assert isinstance(result, ChatResponse)
            spent += result.cost_usd or 0.0
            final = result
        final.cost_usd = spent  # the client pays for every attempt
        self._note(final, route, pick.reason)
        self._watch(route, final, started)
        if not call.request.stream:
            return final
        return as_stream(final, call)

    # -- solver -------------------------------------------------------------------------

    def _solved(self, call: Call, answer: str) -> Result:
        name = str(call.annotations["route"])
        call.annotations["route_reason"] = "solver"
        self._metrics.route_decisions.labels(name, "solver", "solver").inc()
        self._ledger.record(free_entry(call, "solver", "solver"))
        response = ChatResponse(
            id="chatcmpl-" + call.request_id,
            model="solver",
            created=int(time.time()),
            choices=[Choice(message=Message(role="assistant", content=answer),
                            finish_reason="stop")],
            usage=Usage(prompt_tokens=0, completion_tokens=0),
            deployment="solver",
            cost_usd=0.0,
            info={"route": name, "route_reason": "solver", NO_STORE: True},
        )  # fmt: skip
        if not call.request.stream:
            return response
        return as_stream(response, call)

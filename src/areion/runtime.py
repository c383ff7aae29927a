"""`Runtime`: the one engine behind the library, the server and the CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import threading
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from areion.accounting import Accounting
from areion.agent.agent import Agent
from areion.agent.events import Event
from areion.agent.loop import RunResult
from areion.agent.memory import SessionMemory
from areion.agent.runner import AgentRunner, RunNotFoundError
from areion.cache.exact import ExactCache
from areion.cache.plans import PlanCache
from areion.cache.vectors import EmbeddingCache
from areion.config import Config, LaneLimitsConfig, RouteConfig, default_config, load_config
from areion.control import Admission
from areion.control.keys import KeyRing
from areion.control.lanes import LaneLimits, Lanes, lane_of
from areion.errors import (
    BackendUnavailableError,
    ConfigError,
    LimitError,
    RequestError,
    UnknownModelError,
)
from areion.gateway import Gateway, LoadProbe, build_groups
from areion.gateway.deployments import Deployment
from areion.gateway.fleet import Fleet
from areion.gateway.load import RemoteLoad
from areion.pipeline import (
    Call,
    EmbeddingCall,
    EmbeddingHandler,
    EmbeddingStage,
    Result,
    Stage,
    compose,
    compose_embedding,
)
from areion.pricing import PriceBound, price_bound
from areion.providers.base import HttpTransport
from areion.routing.router import LearnedPolicy, Policy, Router, SolverFn
from areion.store import Store, open_store
from areion.store.counters import Counters, FailOpenCounters
from areion.store.records import OutcomeKind, OutcomeRecord, SessionTurn
from areion.store.shared import LocalShared, Shared, open_shared
from areion.streaming import ChatStream
from areion.telemetry import Ledger, Metrics
from areion.telemetry.experiments import (
    Assignment,
    ExperimentNotFoundError,
    Experiments,
    OutcomeTargetError,
)
from areion.telemetry.scaling import ScalingSignal
from areion.telemetry.verdicts import ExperimentReport, Judge
from areion.tokenizer import count_each
from areion.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    LedgerEntry,
    Message,
)

if TYPE_CHECKING:  # loaded when used: numpy, ONNX Runtime (a semantic tier), the job queue
    from areion.cache.embedding import Embedder
    from areion.cache.semantic import SemanticCache
    from areion.jobs.records import DeferredRun
    from areion.jobs.service import Jobs
    from areion.telemetry.tracing import Tracing

__all__ = ["CallOptions", "Runtime"]

log = logging.getLogger("areion.runtime")


# A random per-process prefix and a counter: unique across replicas and restarts,
# without a system call per request.
_ID_PREFIX = "req_" + os.urandom(8).hex()
# An experiment's parameters that are fields of `ChatRequest`; the others go in `extra`.
_REQUEST_FIELDS = frozenset({"temperature", "top_p", "max_tokens"})
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """A new, unique request id."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):x}"


@dataclass(slots=True, frozen=True, kw_only=True)
class CallOptions:
    """Who asks for a model call, and how, besides the request itself."""

    tenant: str = "default"
    """Who pays; whose caches, runs and limits apply."""
    request_id: str | None = None
    """Areion's id of the call; a new one by default."""
    client_request_id: str = ""
    """The id the client gave the request (the server's `x-request-id` header), kept in
    the ledger beside Areion's; it names nothing inside Areion."""
    cache: str | None = None
    """`no-store` (neither read nor write the response caches) or `refresh` (skip the
    read, write anew)."""
    tier: str | None = None
    """interactive, batch, critical...: what routing rules match on; `critical` traffic
    is never moved by a route's degraded mode."""
    tags: Sequence[str] = ()
    """Free-form tags routing rules match on."""
    key: str | None = None
    """The label of the API key that asks (`AuthKey.label`): its limits, model list
    and default priority apply."""
    priority: str | None = None
    """The lane: interactive (default) or batch; critical counts as interactive."""
    user: str | None = None
    """The end user the call is for (the `x-areion-user` header); else the request's
    `user` field. Booked in the ledger."""
    run_id: str | None = None
    """The agent run making the call (booked in the ledger)."""
    agent: str | None = None
    """The name of that run's agent."""
    session: str | None = None
    """The session the call belongs to."""
    variant: str | None = None
    """The experiment variant (`experiment:variant`) the call is served by, when its run
    was assigned one; a call without one may be assigned one of a plain-call experiment."""
    book: Callable[[LedgerEntry], None] | None = None
    """Takes the ledger rows of the call instead of the ledger: a batch worker writes
    them with the line's answer in one transaction (`jobs.worker`)."""


class Runtime:
    """Runs model calls through the request path: accounting, then the gateway.

    `Runtime()` is the embedded default (sim models, SQLite in `areion.db`);
    `Runtime.from_config("areion.yaml")` reads a config file. Use it as an async
    context manager, or call `aclose()`, so pending ledger writes land.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        store: Store | None = None,
        shared: Shared | None = None,
    ) -> None:
        self.config = config or default_config()
        self._embedder: Embedder | None = None
        self._embedder_lock = threading.Lock()
        # Label values: only configured names; anything else is counted as `other`.
        self.metrics = Metrics(
            models=[m.name for m in self.config.models] + [r.name for r in self.config.routes],
            tenants=[t.name for t in self.config.all_tenants],
        )
        self.store = store or open_store(self.config.store)
        self.shared = shared or open_shared(self.config.shared)
        counters = self.shared.counters
        if self.config.limits.shared_failure == "open" and not isinstance(self.shared, LocalShared):
            counters = FailOpenCounters(counters, on_fallback=self._shared_down)
        self._counters = counters
        self._warned_shared_down = 0.0
        self.ledger = Ledger(self.store)
        self.experiments = Experiments(self.config.experiments)
        self.judge = Judge(self.store, self.experiments, registry=self.metrics.registry)
        self.metrics.ledger_pending.set_function(lambda: self.ledger.pending)
        self._max_pending = self.config.ledger.max_pending_rows
        groups = build_groups(self.config, self.metrics, embedder=lambda: self.embedder)
        self.gateway = Gateway(self.config, groups, self.metrics)
        self.tracing: Tracing | None = None
        """OpenTelemetry traces (`tracing:` in the config); None when off, and then
        nothing of OpenTelemetry is imported."""
        if self.config.tracing.active():
            self._start_tracing()
        if not isinstance(self.shared, LocalShared):
            # Replicas: breakers, cooldowns, load and capped slots are shared.
            self.gateway.fleet = Fleet(self.shared, self.gateway.deployments)
        self.load_probe = LoadProbe()
        for deployment in self.gateway.deployments.values():
            if deployment.config.load_metrics_url:
                self.load_probe.watch(
                    deployment.config.load_metrics_url,
                    model=deployment.config.upstream_model,
                    apply=_setter(deployment),
                )
        self.memory = SessionMemory(
            self.store,
            budget_tokens=self.config.memory.budget_tokens,
            summarizer=self._summarize,
        )
        self.agents = AgentRunner(
            self,
            self.store,
            context=self.memory.context,
            remember=self.memory.remember,
            plans=self._make_plan_cache,  # called when an agent with plan_cache first runs
            shared=self.shared,
            lease_ttl_s=self.config.runs.lease_ttl_s,
            tracing=self.tracing,
            on_drive=self.metrics.agent_drive,
            experiments=self.experiments,
        )
        # API keys of the config and the store (the server authenticates with it).
        self.keys = KeyRing(self.config.auth, self.store)
        stages: list[Stage] = []
        if self.tracing is not None:
            # Outermost: a refused call (429, 402) and a cache hit have their span too.
            stages.append(self.tracing.stage())
        # First: every arrival counts toward the scaling signal, refused ones included.
        self.scaling: ScalingSignal | None = None
        if self.config.scaling.enabled:
            self.scaling = ScalingSignal(
                self.config.scaling, self.store, elsewhere=self._in_flight_elsewhere
            )
            self.scaling.register(self.metrics.registry)
            stages.append(self.scaling)
        # Admission first: a cache hit still counts as a request and is reconciled to 0.
        # Always there: a key made in the store later may carry limits or a model list
        # (a call with nothing to check passes straight through).
        self.admission = Admission(
            counters,
            keys=self.config.auth.keys,
            lookup=self.keys.limits,
            tenants=self.config.all_tenants,
            limits=self.config.limits,
            prices=self._price_bounds(),
            spend_since=lambda since: self.store.spend_by_tenant(since=since),
        )
        stages.append(self.admission)
        self.exact_cache: ExactCache | None = None
        if self.config.cache.exact.enabled:
            self.exact_cache = ExactCache(
                self.store,
                self.metrics,
                self.ledger,
                ttl_s=self.config.cache.exact.ttl_s,
                any_temperature=self.config.cache.exact.any_temperature,
                shared=self.shared,
            )
            stages.append(self.exact_cache)
        self.semantic_cache: SemanticCache | None = None
        semantic = self.config.cache.semantic
        if semantic.enabled:
            from areion.cache.semantic import SemanticCache
            from areion.cache.verifier import DEFAULT_MAX_WRONG_HIT_RATE, SemanticVerifier

            self.semantic_cache = SemanticCache(
                self.metrics,
                self.ledger,
                self.embedder,
                verifier=SemanticVerifier.load(kind=semantic.verifier),
                max_wrong_hit_rate=semantic.max_wrong_hit_rate or DEFAULT_MAX_WRONG_HIT_RATE,
                ttl_s=semantic.ttl_s,
                any_temperature=semantic.any_temperature,
                max_entries=semantic.max_entries,
                max_chars=semantic.max_chars,
                store=self.store,
                shared=self.shared,
            )
            stages.append(self.semantic_cache)
        self.router: Router | None = None
        if self.config.routes:
            self.router = Router(
                self.config.routes,
                self.config.models,
                self.metrics,
                self.ledger,
                learned=self._learned_policy,
                solver=self._solver(),
            )
            stages.append(self.router)
        # Accounting sits inside the caches and the router: a hit costs nothing and books a saving.
        accounting = Accounting(
            self.gateway.deployments, self.ledger, self.metrics, self.admission.outputs
        )
        stages.append(accounting)
        self.lanes = self._make_lanes()
        # Last: hits and routing take no slot, and the gateway's retries hold one.
        stages.append(self.lanes)
        self._jobs: Jobs | None = None
        self._handler = compose(stages, self._terminal)
        self._embedding_handler = self._embedding_path(accounting)
        self._started = False
        self._listening: asyncio.Task[None] | None = None
        self._closed = False
        # A runtime nobody closes still gets its buffered ledger rows written, when it is
        # collected or at exit at the latest (billed rows are written before their
        # answers leave; what is buffered is free rows and closings of open streams).
        self._unclosed = weakref.finalize(self, _write_unclosed, self.ledger)

    def _start_tracing(self) -> None:
        try:
            from areion.telemetry.tracing import Tracing
        except ImportError as error:
            raise ConfigError(
                f"tracing is on (tracing.enabled, or an OTEL_EXPORTER_OTLP_*ENDPOINT variable) "
                f"but OpenTelemetry is not installed ({error.name}): pip install 'areion[tracing]'"
            ) from None
        self.tracing = Tracing(self.config.tracing, self.gateway.deployments)
        for deployment in self.gateway.deployments.values():
            transport = getattr(deployment.provider, "http", None)
            if isinstance(transport, HttpTransport):
                # Upstream calls carry the call's span as their `traceparent`.
                transport.propagate = self.tracing.propagate

    def _price_bounds(self) -> dict[str, PriceBound]:
        """The dearest price each model name bills on its first try: its group's dearest
        deployment; for a route, its dearest candidate, or the sum of what a cascade may
        call. A fallback to a dearer group covers the difference before it is called
        (`gateway.spend`)."""
        bounds = {name: group.dearest() for name, group in self.gateway.groups.items()}
        for route in self.config.routes:
            if route.policy == "cascade":
                # The cheap attempts at once, then at most one more (strongest or unverified).
                asked = route.candidates[: 2 if "agreement" in route.checks else 1]
                then = {route.candidates[-1], route.unverified or route.candidates[-1]}
                bound = price_bound(bounds[c] for c in then - set(asked))
                bounds[route.name] = sum((bounds[c] for c in asked), bound)
            else:
                bounds[route.name] = price_bound(bounds[c] for c in route.candidates)
        return bounds

    @property
    def embedder(self) -> Embedder:
        """The sentence embedder the semantic tiers and `provider: local` models share,
        loaded on first use.

        Thread-safe: the plan cache loads it from a worker thread."""
        with self._embedder_lock:
            if self._embedder is None:
                from areion.cache.embedding import MiniLMEmbedder

                semantic = self.config.cache.semantic
                self._embedder = MiniLMEmbedder(
                    threads=semantic.embed_threads,
                    max_batch=semantic.embed_max_batch,
                    sessions=semantic.embed_sessions,
                    memo=semantic.embed_memo,
                    quantized=semantic.embed_quantized,
                )
            return self._embedder

    def _make_plan_cache(self) -> PlanCache:
        plans = self.config.cache.plans
        return PlanCache(
            lambda: self.embedder,  # shared with L2; the plan cache does not close it
            ttl_s=plans.ttl_s,
            max_wrong_hit_rate=plans.max_wrong_hit_rate,
            max_entries=plans.max_entries,
            max_chars=plans.max_chars,
            store=self.store,
            shared=self.shared,
        )

    @classmethod
    def from_config(cls, path: str | os.PathLike[str]) -> Runtime:
        """A runtime configured by a YAML file."""
        return cls(load_config(path))

    def _shared_down(self, operation: str) -> None:
        self.metrics.shared_fallbacks.labels(operation).inc()
        if time.monotonic() - self._warned_shared_down > 60:
            self._warned_shared_down = time.monotonic()
            log.warning(
                "the shared backend is unreachable: limits and budgets are enforced by "
                "this replica alone (limits.shared_failure: open)"
            )

    @property
    def counters(self) -> Counters:
        """The atomic counters every replica shares: limits, budgets, tool cooldowns."""
        return self._counters

    @property
    def models(self) -> list[str]:
        """The model names clients can ask for: model groups, then routes."""
        return [*self.gateway.groups, *(route.name for route in self.config.routes)]

    def models_for(self, key: str | None) -> list[str]:
        """The model names the API key with this label may ask for (its `models` list),
        in `models` order; every name for no key or a key without a list."""
        entry = None if key is None else self.keys.limits(key)
        if entry is None or entry.models is None:
            return self.models
        allowed = set(entry.models)
        return [name for name in self.models if name in allowed]

    def _learned_policy(self, route: RouteConfig) -> Policy:
        return LearnedPolicy.load(route, lambda: self.embedder)

    def _make_lanes(self) -> Lanes:
        """Lanes capping the groups whose every deployment sets max_concurrency; the
        others are only counted (calls in flight per lane, for the gauges)."""
        capacities = {
            name: (
                sum(d.config.max_concurrency or 0 for d in group.deployments)
                if all(d.config.max_concurrency for d in group.deployments)
                else None
            )
            for name, group in self.gateway.groups.items()
        }
        lanes = self.config.lanes

        def limits(config: LaneLimitsConfig) -> LaneLimits:
            return LaneLimits(max_queued=config.max_queued, max_wait_s=config.max_wait_s)

        return Lanes(
            capacities,
            interactive=limits(lanes.interactive),
            batch=limits(lanes.batch),
            max_queued=lanes.max_queued,
            interactive_reserve=lanes.interactive_reserve,
            batch_every=lanes.batch_every,
            weights={t.name: t.weight for t in self.config.all_tenants},
            registry=self.metrics.registry,
        )

    def _in_flight_elsewhere(self) -> int:
        """Upstream calls the other replicas have in flight, as they last reported."""
        if self.gateway.fleet is None:
            return 0
        return sum(d.remote_outstanding for d in self.gateway.deployments.values())

    def _solver(self) -> SolverFn | None:
        if not any(route.solver for route in self.config.routes):
            return None
        from areion.routing.solver import solve_request

        return solve_request

    def _begin(self, request: ChatRequest, options: CallOptions) -> Call:
        self._admit_model(request.model, options)
        if not request.messages:
            raise RequestError("messages must not be empty", param="messages")
        group = self.gateway.groups.get(request.model)
        if group is not None and not group.chats:
            raise RequestError(
                f"model '{request.model}' serves embeddings only (provider local); send it "
                "to POST /v1/embeddings",
                param="model",
            )
        call = Call(
            request=request,
            tenant=options.tenant,
            request_id=options.request_id or new_request_id(),
            client_request_id=options.client_request_id,
            started=time.perf_counter(),
        )
        self._annotate(call.annotations, options)
        return call

    def _admit_model(self, model: str, options: CallOptions) -> None:
        """Refuse new calls while the ledger cannot keep up, start what runs in the
        background, and refuse a model name that does not exist (404)."""
        if self.ledger.pending > self._max_pending:
            raise BackendUnavailableError(
                f"the ledger's store has been unreachable for {self.ledger.pending} calls "
                "(ledger.max_pending_rows): new calls are refused until it is back, rather "
                "than served unbilled",
                backend="store",
                retry_after=5.0,
            )
        if not self._started:
            self._start_background()
        if model not in self.gateway.groups and (self.router is None or model not in self.router):
            raise UnknownModelError(
                f"model '{model[:100]}' does not exist; available: "
                # Only what the caller may call: other names are not its business.
                + ", ".join(sorted(self.models_for(options.key))),
                param="model",
            )

    def _annotate(self, annotations: dict[str, Any], options: CallOptions) -> None:
        """A call's annotations from its options: cache control, tier, tags, key, lane."""
        cache, tier, key, priority = options.cache, options.tier, options.key, options.priority
        if cache is not None:
            if cache not in ("no-store", "refresh"):
                raise RequestError(
                    f"cache control '{cache}' is not one of: no-store, refresh",
                    param="x-areion-cache",
                )
            annotations["cache_control"] = cache
        if tier is not None:
            annotations["tier"] = tier
        if options.tags:
            annotations["tags"] = tuple(options.tags)
        if key is not None:
            annotations["key"] = key
        if priority is None and key is not None:
            entry = self.keys.limits(key)
            priority = entry.priority if entry is not None else None
        if options.book is not None:
            annotations["book"] = options.book
        if priority is not None:
            annotations["priority"] = lane_of(priority)  # a bad value: 400
            if priority == "critical" and "tier" not in annotations:
                annotations["tier"] = "critical"  # never moved by degraded mode
        # Attribution for the ledger: only what was given, so a plain call pays nothing.
        if options.user:
            annotations["user"] = options.user
        if options.run_id:
            annotations["run_id"] = options.run_id
        if options.agent:
            annotations["agent"] = options.agent
        if options.session:
            annotations["session"] = options.session
        if options.variant:
            annotations["variant"] = options.variant

    def _start_background(self) -> None:
        """Probes, load reports and notices, in the running loop (once)."""
        self._started = True
        self.load_probe.start()
        if self.gateway.fleet is not None:
            self.gateway.fleet.start()
        if self.scaling is not None:
            self.scaling.start()
        self._listening = asyncio.get_running_loop().create_task(self.shared.start())
        if self.experiments:
            self.judge.start(min(c.check_every_s for c in self.experiments.configs))

    async def start(self) -> None:
        """Start what runs in the background (the server does it at start; otherwise the
        first call does): deployments' load probes, the shared backend's notices."""
        if not self._started:
            self._start_background()
        assert self._listening is not None
        await self._listening

    async def _terminal(self, call: Call) -> Result:
        hold = call.annotations.get("hold")  # Admission's, when the tenant has a budget
        if call.request.stream:
            return await self.gateway.stream(
                call.request, request_id=call.request_id, started=call.started, hold=hold
            )
        return await self.gateway.complete(call.request, hold=hold)

    async def answer(self, request: ChatRequest, options: CallOptions) -> Result:
        """The answer to `request` in the shape it asks for: a `ChatStream` when
        `request.stream` is set (returned once its first chunk has arrived), else a
        `ChatResponse`."""
        model = request.model  # the name asked for; a route retargets the call
        if not self.experiments or options.variant:
            call = self._begin(request, options)
        else:
            self._admit_model(model, options)  # 404 before a variant changes the name
            if options.request_id is None:
                options = dataclasses.replace(options, request_id=new_request_id())
            assignment = self._assign(request, options)
            call = self._begin(request, options)
            if assignment is not None:
                call.annotations["variant"] = assignment.label
                if request.model != model:
                    call.annotations["asked_model"] = model  # what the key's list is checked on
        try:
            result = await self._handler(call)
        except LimitError as error:
            # Counted here: admission refuses before accounting sees the call.
            self.metrics.refusal(model, error.code)
            raise
        if "variant" in call.annotations:
            result.info["experiment"] = call.annotations["variant"]
        return result

    def _assign(self, request: ChatRequest, options: CallOptions) -> Assignment | None:
        """The experiment variant of a plain call, applied to `request`: its model or
        route, its parameters."""
        assert options.request_id is not None
        assignment = self.experiments.for_call(
            request.model,
            request_id=options.request_id,
            session=options.session,
            user=options.user or request.user,
        )
        if assignment is None:
            return None
        variant = assignment.variant
        target = variant.model or variant.route
        if target is not None:
            request.model = target
        for name, value in variant.params.items():
            if name in _REQUEST_FIELDS:
                setattr(request, name, value)
            else:
                request.extra[name] = value
        return assignment

    async def chat(
        self,
        request: ChatRequest,
        *,
        tenant: str = "default",
        request_id: str | None = None,
        cache: str | None = None,
        tier: str | None = None,
        tags: Sequence[str] = (),
        key: str | None = None,
        priority: str | None = None,
        user: str | None = None,
        run_id: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        variant: str | None = None,
    ) -> ChatResponse:
        """The whole answer to `request` (whose `stream` flag is ignored).

        The keyword arguments are those of `CallOptions`.
        """
        request.stream = False
        options = CallOptions(
            tenant=tenant, request_id=request_id, cache=cache, tier=tier, tags=tags, key=key,
            priority=priority, user=user, run_id=run_id, agent=agent, session=session,
            variant=variant,
        )  # fmt: skip
        result = await self.answer(request, options)
        assert isinstance(result, ChatResponse)
        return result

    async def chat_stream(
        self,
        request: ChatRequest,
        *,
        tenant: str = "default",
        request_id: str | None = None,
        cache: str | None = None,
        tier: str | None = None,
        tags: Sequence[str] = (),
        key: str | None = None,
        priority: str | None = None,
        user: str | None = None,
        run_id: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        variant: str | None = None,
    ) -> ChatStream:
        """The answer as a `ChatStream`; returns once its first chunk has arrived.

        The keyword arguments are those of `CallOptions`.
        """
        request.stream = True
        options = CallOptions(
            tenant=tenant, request_id=request_id, cache=cache, tier=tier, tags=tags, key=key,
            priority=priority, user=user, run_id=run_id, agent=agent, session=session,
            variant=variant,
        )  # fmt: skip
        result = await self.answer(request, options)
        assert isinstance(result, ChatStream)
        return result

    # -- experiments --------------------------------------------------------------

    async def experiment_report(self, name: str, *, over_time: bool = False) -> ExperimentReport:
        """Experiment `name`'s figures and verdict now (what it decides is carried out:
        a stopped variant's units back to control, a promoted winner for all)."""
        if self.experiments.get(name) is None:
            known = ", ".join(c.name for c in self.experiments.configs) or "none configured"
            raise ExperimentNotFoundError(
                f"no experiment '{name[:100]}'; experiments: {known}", param="name"
            )
        return await self.judge.report(name, over_time=over_time)

    async def record_outcome(
        self,
        *,
        success: bool,
        tenant: str = "default",
        run_id: str | None = None,
        request_id: str | None = None,
        session: str | None = None,
        score: float | None = None,
    ) -> None:
        """Record whether a task succeeded: an agent run, a call (Areion's request id,
        `x-request-id` of its answer), or a whole session. Experiments judge success
        by it; a later outcome for the same target replaces it."""
        named: tuple[tuple[OutcomeKind, str | None], ...] = (
            ("run", run_id),
            ("request", request_id),
            ("session", session),
        )
        targets = [(k, v) for k, v in named if v]
        if len(targets) != 1:
            raise RequestError("name exactly one of run_id, request_id or session", param="run_id")
        kind, target = targets[0]
        if kind == "run" and await self.store.load_run(target, tenant=tenant) is None:
            raise RunNotFoundError(f"you have no run '{target[:100]}'", param="run_id")
        if kind == "request" and not await self.store.has_request(tenant, target):
            raise OutcomeTargetError(
                f"you have no call of request id '{target[:100]}' (Areion's x-request-id)",
                param="request_id",
            )
        await self.store.record_outcome(
            OutcomeRecord(
                tenant=tenant,
                kind=kind,
                target=target,
                success=success,
                score=score,
                created=time.time(),
            )
        )

    # -- embeddings ---------------------------------------------------------------

    def _embedding_path(self, accounting: Accounting) -> EmbeddingHandler:
        """The embeddings chain: the stages that apply to them, around `Gateway.embed`."""
        stages: list[EmbeddingStage] = [self.admission]
        if self.scaling is not None:
            stages.insert(0, self.scaling)
        if self.tracing is not None:
            stages.insert(0, self.tracing.stage())
        self.embedding_cache: EmbeddingCache | None = None
        if self.config.cache.embeddings.enabled:
            self.embedding_cache = EmbeddingCache(
                self.store, self.metrics, self.ledger, ttl_s=self.config.cache.embeddings.ttl_s
            )
            stages.append(self.embedding_cache)
        stages.append(accounting)
        stages.append(self.lanes)
        if any(not group.chats for group in self.gateway.groups.values()):
            _ = self.embedder  # provider local: load the model now, not on a first request
        return compose_embedding(stages, self._embed_terminal)

    async def _embed_terminal(self, call: EmbeddingCall) -> EmbeddingResponse:
        return await self.gateway.embed(call.request, hold=call.annotations.get("hold"))

    async def embed(
        self, request: EmbeddingRequest, options: CallOptions | None = None
    ) -> EmbeddingResponse:
        """One vector per input of `request`, in input order, through the request path's
        stages that apply to embeddings: admission (limits, budgets), the embedding cache,
        accounting, lanes, then the gateway (balancing, retries, fallbacks)."""
        options = options or CallOptions()
        self._admit_model(request.model, options)
        group = self.gateway.groups.get(request.model)
        if group is None:
            raise RequestError(
                f"model '{request.model}' is a route; routes choose among chat models, and "
                "embeddings need a model group",
                param="model",
            )
        if not group.embeds:
            providers = sorted({d.config.provider for d in group.deployments})
            raise RequestError(
                f"model '{request.model}' cannot make embeddings: provider "
                f"{', '.join(providers)} serves chat only; use a model of provider openai "
                "(an upstream with /embeddings) or local",
                param="model",
            )
        if isinstance(request.input, str):  # a bare text, as OpenAI's API takes it
            request.input = [request.input]
        if not request.input:
            raise RequestError("input must not be empty", param="input")
        texts = [item for item in request.input if isinstance(item, str)]
        if texts and len(texts) != len(request.input):
            raise RequestError("input mixes texts and token arrays; send one kind", param="input")
        tokens = count_each(texts) if texts else [len(item) for item in request.input]
        call = EmbeddingCall(
            request=request,
            tokens=tokens,
            tenant=options.tenant,
            request_id=options.request_id or new_request_id(),
            client_request_id=options.client_request_id,
            started=time.perf_counter(),
        )
        self._annotate(call.annotations, options)
        try:
            return await self._embedding_handler(call)
        except LimitError as error:
            self.metrics.refusal(request.model, error.code)
            raise

    # -- agents -------------------------------------------------------------------

    async def run(
        self,
        agent: Agent,
        input: str,
        *,
        session: str | None = None,
        run_id: str | None = None,
        tenant: str = "default",
    ) -> RunResult:
        """Run `agent` on `input` until it finishes, pauses or fails; checkpointed."""
        return await self.agents.run(agent, input, session=session, run_id=run_id, tenant=tenant)

    def stream(
        self,
        agent: Agent,
        input: str,
        *,
        session: str | None = None,
        run_id: str | None = None,
        tenant: str = "default",
    ) -> AsyncIterator[Event]:
        """The events of a new run as they happen (model text streams as deltas)."""
        return self.agents.stream(agent, input, session=session, run_id=run_id, tenant=tenant)

    async def resume(
        self,
        run_id: str,
        *,
        agent: Agent,
        tenant: str = "default",
        max_steps: int | None = None,
        max_cost_usd: float | None = None,
        max_tokens: int | None = None,
    ) -> RunResult:
        """Continue a paused or interrupted run from its last checkpoint.

        The limits, when given, raise the agent's for this run (a run paused at a
        limit goes on).
        """
        limits = {"max_steps": max_steps, "max_cost_usd": max_cost_usd, "max_tokens": max_tokens}
        return await self.agents.resume(
            run_id,
            agent=agent,
            tenant=tenant,
            limits={k: v for k, v in limits.items() if v is not None},
        )

    @property
    def jobs(self) -> Jobs:
        """The job queue in this runtime's store and its worker (`areion.jobs`)."""
        if self._jobs is None:
            from areion.jobs.service import Jobs

            self._jobs = Jobs(self)
        return self._jobs

    async def defer(
        self,
        agent: Agent,
        input: str,
        *,
        deadline: float | None = None,
        window: str | None = None,
        not_before: float | None = None,
        session: str | None = None,
        run_id: str | None = None,
        tenant: str = "default",
    ) -> DeferredRun:
        """Run `agent` on `input` later: in `window` (one of `jobs.windows`; the default
        window if None, `"none"` for none), not before `not_before`, and not waiting for
        a window past `deadline` (Unix times). The run is a job in the store: this
        runtime's worker (or any of the same store that knows the agent) starts it."""
        return await self.jobs.defer(
            agent, input, tenant=tenant, session=session, run_id=run_id, window=window,
            not_before=not_before, deadline=deadline,
        )  # fmt: skip

    async def approve(self, run_id: str, call_id: str, *, tenant: str = "default") -> None:
        """Approve a tool call a paused run waits for; then `resume` the run."""
        await self.agents.approve(run_id, call_id, tenant=tenant)

    async def reject(
        self, run_id: str, call_id: str, reason: str, *, tenant: str = "default"
    ) -> None:
        """Reject a tool call a paused run waits for; then `resume` the run."""
        await self.agents.reject(run_id, call_id, reason, tenant=tenant)

    def cognitive_error(self, agent: str, kind: str) -> None:
        """Count a mistake of an agent's model (unknown tool, bad arguments, ...)."""
        self.metrics.cognitive_error(agent, kind)

    async def book_tool(self, entry: LedgerEntry) -> None:
        """Book a tool call's own cost (`@tool(cost_usd=...)`, `ToolResult`): counted in
        the spend metric, committed to the ledger, and counted in the tenant's budget
        windows before the run goes on (its next model call is admitted against it)."""
        self.metrics.cost.labels(entry.model, entry.deployment, entry.tenant).inc(entry.cost_usd)
        await self.ledger.write(entry)
        if entry.cost_usd > 0:
            await self.admission.charge(entry.tenant, entry.cost_usd)

    async def _summarize(self, turns: Sequence[SessionTurn], previous: str | None) -> str:
        model = self.config.memory.summary_model or self.models[0]
        transcript = "\n".join(f"{turn.role}: {turn.content}" for turn in turns)
        prompt = (
            "Summarize this part of a conversation in a few sentences. Keep names, numbers, "
            "decisions and open questions.\n\n"
        )
        if previous:
            prompt += f"Summary of what came before:\n{previous}\n\n"
        request = ChatRequest(
            model=model,
            messages=[Message(role="user", content=prompt + "Conversation:\n" + transcript)],
            max_tokens=300,
            temperature=0,
        )
        response = await self.chat(request, tenant="areion-memory")
        return response.message.text()

    async def aclose(self) -> None:
        """Stop background work, write pending ledger records, close connections."""
        if self._closed:
            return
        self._closed = True
        self._unclosed.detach()
        if self._jobs is not None:
            await self._jobs.aclose()
        await self.load_probe.aclose()
        if self.gateway.fleet is not None:
            await self.gateway.fleet.aclose()
        await self.judge.aclose()
        await self.admission.drain()
        if self.exact_cache is not None:
            await self.exact_cache.drain()
        if self.embedding_cache is not None:
            await self.embedding_cache.drain()
        if self.semantic_cache is not None:
            await self.semantic_cache.aclose()
        if self.agents.plans is not None:
            await self.agents.plans.aclose()
        await self.ledger.aclose()
        await self.gateway.aclose()
        if self.scaling is not None:
            await self.scaling.aclose()
        await self.store.aclose()
        await self.shared.aclose()
        if self.tracing is not None:
            # Every span has ended by now (streams are closed): export them, then stop.
            await asyncio.to_thread(self.tracing.shutdown)
        if self.agents.plans is not None:
            self.agents.plans.close()
        if self.semantic_cache is not None:
            self.semantic_cache.close()
        close = getattr(self._embedder, "close", None)
        if callable(close):
            close()

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


_UNCLOSED = (
    "an areion Runtime was not closed: its pending ledger rows are written now. Use "
    "`async with Runtime(...) as rt:` or call `await rt.aclose()` when you are done."
)
_warned_unclosed = False


def _write_unclosed(ledger: Ledger) -> None:
    """For a runtime collected (or left at exit) without `aclose()`: warn once, and
    write what its ledger still holds."""
    global _warned_unclosed
    if not _warned_unclosed:
        _warned_unclosed = True
        warnings.warn(_UNCLOSED, RuntimeWarning, stacklevel=2)
    ledger.flush_blocking()


def _setter(deployment: Deployment) -> Callable[[RemoteLoad], None]:
    def apply(load: RemoteLoad) -> None:
        deployment.remote_load = load

    return apply

"""Prometheus metrics of the request path.

The histograms of a model call carry the OpenTelemetry GenAI conventions' names and
attributes (`gen_ai.client.operation.duration`, `gen_ai.client.token.usage`,
`gen_ai.client.operation.time_to_first_chunk`, as Prometheus spells them, with
Areion's `deployment` beside); the rest carry an `areion_` prefix. Label children
are bound once per deployment so a call pays for an increment, not a label lookup.

Every label value is bounded: a model or deployment label is one of the configured
names, else `other`; a tenant, agent or error kind is one of the first few hundred
seen, else `other`. Nothing a client sends (an unknown model, a path, a key) can make
a new series: LiteLLM leaked memory that way. No metric has a path or key label.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values

__all__ = [
    "OTHER",
    "BoundCounter",
    "BoundHistogram",
    "DeploymentMetrics",
    "LabelValues",
    "Metrics",
    "OperationMetrics",
]

OTHER = "other"
"""The label value of everything beyond a label's bound."""

# The GenAI conventions' advised bucket boundaries for durations and token counts.
_DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
_TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))  # 1, 4, 16 ... 67108864
_GENAI = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "deployment")
_SPARE_TENANTS = 1000  # tenants beyond the config's (store keys made later) before `other`
_SPARE_KINDS = 100  # agents, error kinds: fixed in code or config, capped all the same


class LabelValues:
    """The values one label may take: the known ones, then the first `spare` others
    seen; anything beyond is `other`. A lookup is one set membership test."""

    __slots__ = ("_seen", "_spare")

    def __init__(self, known: Iterable[str] = (), *, spare: int = 0) -> None:
        self._seen = set(known)
        self._spare = spare

    def add(self, value: str) -> None:
        """Make `value` known (a configured name)."""
        self._seen.add(value)

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if self._spare > 0:
            self._spare -= 1
            self._seen.add(value)
            return value
        return OTHER


class Metrics:
    """Every metric of one runtime, in its own registry.

    `models`: the model names clients may ask for (groups and routes); any other name
    is counted as `other`. `tenants`: the configured tenants."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        models: Iterable[str] = (),
        tenants: Iterable[str] = (),
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.model = LabelValues(models)
        """A model label's value: a configured name, else `other`."""
        self.deployment = LabelValues([""])
        """A deployment label's value: a deployment's id ("" for none), else `other`."""
        self.tenant = LabelValues(tenants, spare=_SPARE_TENANTS)
        self.kind = LabelValues(spare=_SPARE_KINDS)
        self.agent = LabelValues(spare=_SPARE_KINDS)
        labels = ("model", "deployment")
        self.requests = Counter(
            "areion_requests",
            "Model calls answered, by outcome.",
            (*labels, "outcome"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration: a model call through Areion, from the request to "
            "the whole answer.",
            _GENAI,
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Time from the request to the first chunk of a streamed answer.",
            _GENAI,
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Tokens of one model call, by type (input, output).",
            (*_GENAI, "gen_ai_token_type"),
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "areion_tokens",
            "Tokens consumed, by type (input, output, cached_input).",
            (*labels, "type"),
            registry=self.registry,
        )
        self.cost = Counter(
            "areion_cost_usd",
            "Spend in USD.",
            (*labels, "tenant"),
            registry=self.registry,
        )
        self.errors = Counter(
            "areion_errors",
            "Failed attempts and calls, by kind.",
            (*labels, "kind"),
            registry=self.registry,
        )
        self.refusals = Counter(
            "areion_refusals",
            "Calls refused by Areion's own limits, by code: rate_limit_exceeded (429), "
            "budget_exceeded (402), overloaded (503, a full lane), limit_exceeded.",
            ("model", "code"),
            registry=self.registry,
        )
        self.retries = Counter(
            "areion_retries",
            "Attempts retried on another try or deployment.",
            labels,
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "areion_fallbacks",
            "Calls moved to a fallback model group.",
            ("model", "fallback"),
            registry=self.registry,
        )
        self.stream_stops = Counter(
            "areion_stream_stops",
            "Streams Areion stopped before their end, by reason: budget (the tenant's "
            "budget could not cover more output), max_tokens (the upstream ignored it).",
            (*labels, "reason"),
            registry=self.registry,
        )
        self.shared_fallbacks = Counter(
            "areion_shared_fallbacks",
            "Counter operations served by this process's own counters because the shared "
            "backend (Redis) was unreachable (limits.shared_failure: open).",
            ("operation",),
            registry=self.registry,
        )
        self.ledger_pending = Gauge(
            "areion_ledger_pending_rows",
            "Ledger rows waiting for the store (more than a few: it is unreachable).",
            registry=self.registry,
        )
        self.cognitive_errors = Counter(
            "areion_agent_cognitive_errors",
            "Mistakes of agents' models: unknown_tool, invalid_arguments, repeated_call, "
            "unparsable_output.",
            ("agent", "kind"),
            registry=self.registry,
        )
        self.agent_runs = Counter(
            "areion_agent_runs",
            "Agent runs driven until they finished, failed or paused (a resumed run "
            "counts again), by agent and status.",
            ("agent", "status"),
            registry=self.registry,
        )
        self.agent_duration = Histogram(
            "gen_ai_invoke_agent_duration_seconds",
            "GenAI agent invocation duration: one drive of a run, from its start (or "
            "resumption) until it finished, failed or paused.",
            ("gen_ai_agent_name",),
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.cache_requests = Counter(
            "areion_cache_requests",
            "Cache lookups, by tier (exact, semantic) and result (hit, miss).",
            ("tier", "result"),
            registry=self.registry,
        )
        self.cache_saved_usd = Counter(
            "areion_cache_saved_usd",
            "Spend avoided by cache hits (what the cached answer cost when it was made).",
            ("tier",),
            registry=self.registry,
        )
        self.cache_saved_seconds = Counter(
            "areion_cache_saved_seconds",
            "Latency avoided by cache hits (how long the cached answer took to make).",
            ("tier",),
            registry=self.registry,
        )
        self.route_decisions = Counter(
            "areion_route_decisions",
            "Routing decisions, by route, chosen model and reason (rule, default, learned, "
            "out_of_domain, cascade_accept, cascade_unverified, cascade_escalate, degraded, "
            "solver).",
            ("route", "model", "reason"),
            registry=self.registry,
        )
        self.route_degraded = Gauge(
            "areion_route_degraded",
            "1 while a route is in degraded mode (its p95 latency broke its objective).",
            ("route",),
            registry=self.registry,
        )
        self.route_mode_changes = Counter(
            "areion_route_mode_changes",
            "Switches of a route into (degraded) and out of (normal) degraded mode.",
            ("route", "mode"),
            registry=self.registry,
        )
        self.outstanding = Gauge(
            "areion_deployment_outstanding",
            "Calls in flight per deployment.",
            labels,
            registry=self.registry,
        )
        self.breaker_open = Gauge(
            "areion_circuit_open",
            "1 while a deployment's circuit breaker is open.",
            labels,
            registry=self.registry,
        )

    def for_deployment(
        self, model: str, deployment: str, *, provider: str = "", embeds: bool = False
    ) -> DeploymentMetrics:
        """The children of a configured deployment of group `model`, by `provider`
        (the GenAI conventions' `gen_ai.provider.name`); `embeds`: it answers
        embeddings (else chat only)."""
        self.model.add(model)
        self.deployment.add(deployment)
        return DeploymentMetrics(self, model, deployment, provider=provider, embeds=embeds)

    def error(self, model: str, deployment: str, kind: str) -> None:
        """Count a failed call of `model` (any name: an unknown one counts as `other`)."""
        labels = (self.model(model), self.deployment(deployment))
        self.errors.labels(*labels, self.kind(kind)).inc()

    def refusal(self, model: str, code: str) -> None:
        """Count a call of `model` refused by a limit, budget or lane."""
        self.refusals.labels(self.model(model), self.kind(code)).inc()

    def agent_drive(self, agent: str, status: str, seconds: float) -> None:
        """Count one drive of a run of `agent` that ended `status` after `seconds`."""
        name = self.agent(agent)
        self.agent_runs.labels(name, self.kind(status)).inc()
        self.agent_duration.labels(name).observe(seconds)

    def cognitive_error(self, agent: str, kind: str) -> None:
        self.cognitive_errors.labels(self.agent(agent), self.kind(kind)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# prometheus_client keeps each child's value as a float behind a lock (`MutexValue`),
# unless it runs in multiprocess mode (a value in a shared file). The call path adds to
# the float itself (`DeploymentMetrics.answered`): the lock guards updates made from
# several threads, and every update of a deployment's children is the event loop's.
_PLAIN_VALUES = prometheus_values.ValueClass is prometheus_values.MutexValue


class BoundCounter:
    """A counter's label child, for the call path: `inc` adds to its value directly.

    The child's own `inc` checks that the metric is a child and the amount not negative
    (Areion's amounts never are) in three more calls; a model call makes four
    increments and three observations. The value object is prometheus_client's own,
    so the exposition, the registry and multiprocess mode are unchanged
    (tests/unit/test_metrics.py checks both ways agree)."""

    __slots__ = ("_value",)

    def __init__(self, child: Counter) -> None:
        self._value = child._value

    def inc(self, amount: float = 1.0) -> None:
        self._value.inc(amount)


class BoundHistogram:
    """A histogram's label child, for the call path: `observe` finds the bucket by
    bisection (the child's own walks the bounds in Python) and adds to the child's sum
    and bucket values directly."""

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._sum = child._sum
        self._buckets = child._buckets
        self._bounds = child._upper_bounds  # ascending, the last +Inf

    def observe(self, amount: float) -> None:
        self._sum.inc(amount)
        # The first bound at or above `amount`, as the child's `observe` picks it.
        self._buckets[bisect.bisect_left(self._bounds, amount)].inc(1)


class OperationMetrics:
    """The GenAI histograms' children of one operation (chat, embeddings) on one
    deployment."""

    __slots__ = ("duration", "input_tokens", "output_tokens", "ttft")

    def __init__(self, metrics: Metrics, operation: str, labels: tuple[str, str, str]) -> None:
        genai = (operation, *labels)
        self.duration = BoundHistogram(metrics.duration.labels(*genai))
        self.ttft = BoundHistogram(metrics.ttft.labels(*genai))
        self.input_tokens = BoundHistogram(metrics.token_usage.labels(*genai, "input"))
        self.output_tokens = BoundHistogram(metrics.token_usage.labels(*genai, "output"))


class DeploymentMetrics:
    """Label children bound to one deployment of one model group."""

    __slots__ = (
        "_cost",
        "_labels",
        "_metrics",
        "cached_tokens",
        "chat",
        "embeddings",
        "errors_by_kind",
        "input_tokens",
        "ok",
        "output_tokens",
        "retries",
    )

    def __init__(
        self,
        metrics: Metrics,
        model: str,
        deployment: str,
        *,
        provider: str = "",
        embeds: bool = False,
    ) -> None:
        self._metrics = metrics
        self._labels = (model, deployment)
        self.ok = BoundCounter(metrics.requests.labels(model, deployment, "ok"))
        self.input_tokens = BoundCounter(metrics.tokens.labels(model, deployment, "input"))
        self.output_tokens = BoundCounter(metrics.tokens.labels(model, deployment, "output"))
        self.cached_tokens = BoundCounter(metrics.tokens.labels(model, deployment, "cached_input"))
        self.retries = metrics.retries.labels(model, deployment)
        genai = (provider, model, deployment)
        self.chat = OperationMetrics(metrics, "chat", genai)
        """The GenAI histograms of its chat calls."""
        self.embeddings = OperationMetrics(metrics, "embeddings", genai) if embeds else self.chat
        """Those of its embeddings calls (a deployment that cannot embed: never used)."""
        self.errors_by_kind: dict[str, Counter] = {}
        self._cost: dict[str, BoundCounter] = {}

    def answered(
        self,
        operation: OperationMetrics,
        *,
        latency_s: float,
        prompt_tokens: int,
        completion_tokens: int | None,
        cached_tokens: int,
        tenant: str,
        amount: float,
        ok: bool = True,
    ) -> None:
        """Count one answered call: `ok` in the requests, its duration and tokens in
        `operation`'s histograms (`completion_tokens` None: an operation without output
        tokens) and the token counters, `amount` in `tenant`'s cost.

        One frame for what the children's `inc` and `observe` do in twenty, each taking
        its value's lock: the values' floats are added to directly (`_PLAIN_VALUES`)."""
        if not _PLAIN_VALUES:  # the same, through the children's own methods
            if ok:
                self.ok.inc()
            operation.duration.observe(latency_s)
            operation.input_tokens.observe(prompt_tokens)
            self.input_tokens.inc(prompt_tokens)
            if completion_tokens is not None:
                operation.output_tokens.observe(completion_tokens)
                self.output_tokens.inc(completion_tokens)
            if cached_tokens:
                self.cached_tokens.inc(cached_tokens)
            self.cost(tenant, amount)
            return
        if ok:
            self.ok._value._value += 1
        histogram = operation.duration
        histogram._sum._value += latency_s
        histogram._buckets[bisect.bisect_left(histogram._bounds, latency_s)]._value += 1
        histogram = operation.input_tokens
        histogram._sum._value += prompt_tokens
        histogram._buckets[bisect.bisect_left(histogram._bounds, prompt_tokens)]._value += 1
        self.input_tokens._value._value += prompt_tokens
        if completion_tokens is not None:
            histogram = operation.output_tokens
            histogram._sum._value += completion_tokens
            bucket = bisect.bisect_left(histogram._bounds, completion_tokens)
            histogram._buckets[bucket]._value += 1
            self.output_tokens._value._value += completion_tokens
        if cached_tokens:
            self.cached_tokens._value._value += cached_tokens
        child = self._cost.get(tenant)
        if child is None:
            self.cost(tenant, amount)  # binds the tenant's child
        else:
            child._value._value += amount

    def cost(self, tenant: str, amount: float) -> None:
        child = self._cost.get(tenant)
        if child is None:
            label = self._metrics.tenant(tenant)
            child = BoundCounter(self._metrics.cost.labels(*self._labels, label))
            if label != OTHER:  # the cache is as bounded as the label
                self._cost[tenant] = child
        child.inc(amount)

    def error(self, kind: str) -> None:
        child = self.errors_by_kind.get(kind)
        if child is None:
            label = self._metrics.kind(kind)
            child = self._metrics.errors.labels(*self._labels, label)
            if label != OTHER:
                self.errors_by_kind[kind] = child
        child.inc()
        self._metrics.requests.labels(*self._labels, "error").inc()

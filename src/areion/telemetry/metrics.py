"""Prometheus metrics of the request path.

Names follow the OpenTelemetry GenAI conventions where one exists
(`gen_ai.client.operation.duration`, `gen_ai.server.time_to_first_token`) and carry
an `areion_` prefix otherwise. Label children are bound once per deployment so a
call pays for an increment, not for a label lookup.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["DeploymentMetrics", "Metrics"]

_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)


class Metrics:
    """Every metric of one runtime, in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("model", "deployment")
        self.requests = Counter(
            "areion_requests",
            "Model calls answered, by outcome.",
            (*labels, "outcome"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "End-to-end duration of a model call through Areion.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time from the request to the first streamed chunk.",
            labels,
            buckets=_LATENCY_BUCKETS,
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
            "cascade_accept, cascade_escalate, degraded, solver).",
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

    def for_deployment(self, model: str, deployment: str) -> DeploymentMetrics:
        return DeploymentMetrics(self, model, deployment)

    def error(self, model: str, deployment: str, kind: str) -> None:
        self.errors.labels(model, deployment, kind).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class DeploymentMetrics:
    """Label children bound to one deployment of one model group."""

    __slots__ = (
        "_cost",
        "_labels",
        "_metrics",
        "cached_tokens",
        "duration",
        "errors_by_kind",
        "input_tokens",
        "ok",
        "output_tokens",
        "retries",
        "ttft",
    )

    def __init__(self, metrics: Metrics, model: str, deployment: str) -> None:
        self._metrics = metrics
        self._labels = (model, deployment)
        self.ok = metrics.requests.labels(model, deployment, "ok")
        self.duration = metrics.duration.labels(model, deployment)
        self.ttft = metrics.ttft.labels(model, deployment)
        self.input_tokens = metrics.tokens.labels(model, deployment, "input")
        self.output_tokens = metrics.tokens.labels(model, deployment, "output")
        self.cached_tokens = metrics.tokens.labels(model, deployment, "cached_input")
        self.retries = metrics.retries.labels(model, deployment)
        self.errors_by_kind: dict[str, Counter] = {}
        self._cost: dict[str, Counter] = {}

    def cost(self, tenant: str, amount: float) -> None:
        child = self._cost.get(tenant)
        if child is None:
            child = self._cost[tenant] = self._metrics.cost.labels(*self._labels, tenant)
        child.inc(amount)

    def error(self, kind: str) -> None:
        child = self.errors_by_kind.get(kind)
        if child is None:
            child = self.errors_by_kind[kind] = self._metrics.errors.labels(*self._labels, kind)
        child.inc()
        self._metrics.requests.labels(*self._labels, "error").inc()

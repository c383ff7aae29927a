"""Deployments, model groups, and the choice of a deployment for a call."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from areion.config import Config, ModelConfig
from areion.gateway.load import LoadReading, RemoteLoad
from areion.gateway.resilience import BreakerState, CircuitBreaker
from areion.pricing import Price, PriceBound, default_price, price_bound
from areion.providers import EmbeddingProvider, Provider, build_provider
from areion.telemetry.metrics import DeploymentMetrics, Metrics

if TYPE_CHECKING:
    from areion.cache.embedding import Embedder

__all__ = ["Deployment", "ModelGroup", "build_groups", "pick_deployment"]

# A deployment at or above this KV-cache use is about to queue or preempt.
_KV_SATURATED = 0.95


@dataclass(slots=True, kw_only=True)
class Deployment:
    """One endpoint serving a model group."""

    id: str
    """Unique name, reported in `x-areion-model`."""
    group: str
    """The model group it serves."""
    config: ModelConfig
    """Its configuration."""
    provider: Provider
    """How to call it."""
    price: Price
    """What its tokens cost."""
    breaker: CircuitBreaker
    """Its circuit breaker."""
    metrics: DeploymentMetrics
    """Its metric children."""
    outstanding: int = 0
    """Calls in flight from this process."""
    remote_outstanding: int = 0
    """Calls in flight from the other replicas, as they last reported (`Fleet`)."""
    cooldown_until: float = 0.0
    """The gateway's clock time (`time.monotonic()`) before which a 429's Retry-After
    asks us to stay away."""
    remote_load: RemoteLoad | None = None
    """The last load the deployment reported (polled), if it reports any."""
    live_load: Callable[[], LoadReading] | None = None
    """A direct reading of load, for in-process providers."""

    def load_score(self) -> float:
        """Lower is better: calls in flight, the deployment's own queue, a full KV cache."""
        in_flight = self.outstanding + self.remote_outstanding
        score = float(in_flight)
        load: LoadReading | None = (
            self.live_load() if self.live_load is not None else self.remote_load
        )
        if load is not None:
            score = max(score, load.running) + 2.0 * load.waiting
            if load.kv_cache_usage >= _KV_SATURATED:
                score += 8.0
        limit = self.config.max_concurrency
        if limit is not None and in_flight >= limit:
            score += 1000.0
        return score


@dataclass(slots=True, kw_only=True)
class ModelGroup:
    """The deployments that answer to one model name."""

    name: str
    """The name clients ask for."""
    deployments: list[Deployment] = field(default_factory=list)
    """Its deployments, in config order."""

    def dearest(self) -> PriceBound:
        """The highest input and output prices any of its deployments bills."""
        return price_bound(d.price for d in self.deployments)

    @property
    def embeds(self) -> bool:
        """Whether every deployment's provider serves embeddings."""
        return all(isinstance(d.provider, EmbeddingProvider) for d in self.deployments)

    @property
    def chats(self) -> bool:
        """Whether it serves chat: not a group of `provider: local` (embeddings only)."""
        return any(d.config.provider != "local" for d in self.deployments)


def pick_deployment(
    group: ModelGroup, now: float, rng: random.Random, exclude: Iterable[Deployment] = ()
) -> Deployment | None:
    """The least-loaded deployment whose breaker lets a call through, or None.

    Deployments in `exclude` (already failed for this call) or cooling down after
    a 429 are passed over while another one is available; when none is, the one
    free soonest is returned, so a single-deployment group can still be retried.
    """
    excluded = set(map(id, exclude))
    best: list[Deployment] = []
    best_score = 0.0
    fallback: list[Deployment] = []
    for deployment in group.deployments:
        if not deployment.breaker.available(now):
            continue
        if id(deployment) in excluded or deployment.cooldown_until > now:
            fallback.append(deployment)
            continue
        score = deployment.load_score()
        if not best or score < best_score:
            best, best_score = [deployment], score
        elif score == best_score:
            best.append(deployment)
    if not best:
        if not fallback:
            return None
        # Everything left has failed this call or asked us to wait: retry the one
        # free soonest (the caller has already waited out its backoff or Retry-After).
        return min(fallback, key=lambda d: (d.cooldown_until, d.load_score()))
    return best[0] if len(best) == 1 else rng.choice(best)


def _export_state(metrics: Metrics, deployment: Deployment) -> None:
    # Read at scrape time, so the hot path pays nothing to keep these gauges current.
    labels = (deployment.group, deployment.id)
    metrics.outstanding.labels(*labels).set_function(lambda: deployment.outstanding)
    metrics.breaker_open.labels(*labels).set_function(
        lambda: float(deployment.breaker.state is BreakerState.OPEN)
    )


def _deployment_ids(models: list[ModelConfig]) -> list[str]:
    taken = {model.id for model in models if model.id}
    ids: list[str] = []
    for model in models:
        if model.id:
            ids.append(model.id)
            continue
        base = f"{model.name}/{model.upstream_model}"
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}#{n}"
        taken.add(candidate)
        ids.append(candidate)
    return ids


def build_groups(
    config: Config, metrics: Metrics, *, embedder: Callable[[], Embedder] | None = None
) -> dict[str, ModelGroup]:
    """Model groups with their deployments and providers, from the configuration;
    `embedder` gives the sentence embedder `provider: local` deployments serve."""
    groups: dict[str, ModelGroup] = {}
    for deployment_id, model in zip(_deployment_ids(config.models), config.models, strict=True):
        price = (
            Price(
                input=model.price.input,
                output=model.price.output,
                cached_input=model.price.cached_input,
                batch=model.price.batch,
            )
            if model.price is not None
            else default_price(model.upstream_model)
        )
        provider = build_provider(model, deployment=deployment_id, embedder=embedder)
        deployment = Deployment(
            id=deployment_id,
            group=model.name,
            config=model,
            provider=provider,
            price=price,
            breaker=CircuitBreaker(
                failure_threshold=config.breaker.failure_threshold,
                reset_timeout=config.breaker.reset_timeout,
            ),
            metrics=metrics.for_deployment(
                model.name,
                deployment_id,
                provider=model.provider,
                embeds=isinstance(provider, EmbeddingProvider),
            ),
            live_load=getattr(provider, "load", None),
        )
        _export_state(metrics, deployment)
        groups.setdefault(model.name, ModelGroup(name=model.name)).deployments.append(deployment)
    return groups

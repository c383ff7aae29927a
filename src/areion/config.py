"""Settings from `areion.yaml` and the environment.

`${VAR}` anywhere in a string value is replaced by the environment variable; an
unset variable is an error unless a default is given as `${VAR:-default}`. Secrets
(API keys) are kept as `SecretStr`, so they never show in a repr or a log line.
"""

from __future__ import annotations

import hashlib
import os
import re
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from areion.errors import ConfigError

__all__ = [
    "LOCAL_EMBEDDING_MODEL",
    "AgentConfig",
    "AuthConfig",
    "AuthKey",
    "BreakerConfig",
    "CacheConfig",
    "Config",
    "EmbeddingCacheConfig",
    "ExactCacheConfig",
    "ExperimentConfig",
    "JobsConfig",
    "LedgerConfig",
    "LimitsConfig",
    "MemoryConfig",
    "ModelConfig",
    "ModelLimit",
    "PriceConfig",
    "RetryConfig",
    "RunsConfig",
    "ScalingConfig",
    "ServerConfig",
    "TenantConfig",
    "TracingConfig",
    "WindowConfig",
    "default_config",
    "load_config",
]

ProviderKind = Literal["openai", "anthropic", "sim", "replay", "local"]

LOCAL_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
"""The one model `provider: local` serves: the bundled sentence embedder (embeddings only)."""

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PriceConfig(_Strict):
    """USD per one million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    # What the provider's batch API bills, as a fraction of these prices (OpenAI's and
    # Anthropic's: half).
    batch: float = Field(default=0.5, gt=0, le=1)


class ModelConfig(_Strict):
    """One deployment of a model group; a repeated `name` adds deployments to the group."""

    name: str = Field(min_length=1)
    provider: ProviderKind
    model: str | None = None
    id: str | None = None
    base_url: str | None = None
    api_key: SecretStr | None = None
    price: PriceConfig | None = None
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    # Timeouts in seconds: TCP connect, first byte of the answer, whole call.
    connect_timeout: float = Field(default=5.0, gt=0)
    first_byte_timeout: float = Field(default=60.0, gt=0)
    total_timeout: float = Field(default=600.0, gt=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    # A vLLM-style Prometheus endpoint with running/waiting/KV-cache gauges.
    load_metrics_url: str | None = None
    # sim: profile name (defaults to `model`); replay: CSV file or folder.
    profile: str | None = None
    data: str | None = None
    time_scale: float = Field(default=1.0, gt=0)
    anthropic_version: str = "2023-06-01"
    # A reasoning model: routes set its reasoning effort (OpenAI `reasoning_effort`,
    # Anthropic thinking budget) from the prompt's difficulty.
    reasoning: bool = False
    # The upstream has a batch API (provider openai: {base_url}/files, /batches; provider
    # anthropic: Message Batches): a batch whose lines all ask this group is sent there,
    # at the provider's batch price.
    native_batch: bool = False

    @property
    def upstream_model(self) -> str:
        return self.model or self.name

    @model_validator(mode="before")
    @classmethod
    def _local_model(cls, data: Any) -> Any:
        # provider local: the upstream model is the bundled one, whatever the group's name.
        if isinstance(data, dict) and data.get("provider") == "local" and not data.get("model"):
            return {**data, "model": LOCAL_EMBEDDING_MODEL}
        return data

    @model_validator(mode="after")
    def _check_provider_fields(self) -> ModelConfig:
        if self.provider == "local" and self.model != LOCAL_EMBEDDING_MODEL:
            raise ValueError(
                f"provider 'local' serves only {LOCAL_EMBEDDING_MODEL} (the bundled sentence "
                f"embedder); leave out model, or write model: {LOCAL_EMBEDDING_MODEL}"
            )
        if self.provider == "openai" and not self.base_url:
            raise ValueError("provider 'openai' needs base_url (for example http://host:port/v1)")
        if self.provider == "replay" and not self.data:
            raise ValueError(
                "provider 'replay' needs data: a RouterBench-format CSV file or folder"
            )
        if self.native_batch and self.provider not in ("openai", "anthropic"):
            raise ValueError(
                "native_batch: only providers 'openai' (an OpenAI-compatible /v1/batches) and "
                "'anthropic' (Message Batches) are sent batches; leave it out and Areion runs "
                "the lines itself"
            )
        if self.first_byte_timeout > self.total_timeout:
            raise ValueError("first_byte_timeout must not exceed total_timeout")
        return self


Priority = Literal["critical", "interactive", "batch"]


class AuthKey(_Strict):
    """An API key, the tenant it belongs to, and its own limits."""

    key: SecretStr
    tenant: str = Field(min_length=1)
    # How limits and errors name the key; default: a digest prefix of the key.
    name: str | None = Field(default=None, min_length=1)
    rpm: int | None = Field(default=None, ge=1)  # requests per minute
    tpm: int | None = Field(default=None, ge=1)  # tokens (prompt + output) per minute
    # The lane of its requests when they send no x-areion-priority header.
    priority: Priority | None = None
    # The model names (groups or routes) the key may ask for; absent = all.
    models: list[str] | None = None

    @property
    def label(self) -> str:
        """The key's name, or `key-` and a digest prefix: safe to log and to show."""
        if self.name:
            return self.name
        return "key-" + hashlib.sha256(self.key.get_secret_value().encode()).hexdigest()[:8]

    @model_validator(mode="after")
    def _non_empty(self) -> AuthKey:
        if not self.key.get_secret_value():
            raise ValueError("key is empty")
        return self


class TenantConfig(_Strict):
    """Limits and budgets of one tenant, over all its keys (and its agent runs)."""

    name: str = Field(min_length=1)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    # Dollars per UTC calendar day and month: a call whose estimated cost does not fit
    # what is left (minus what calls in flight reserved) is refused.
    budget_usd_per_day: float | None = Field(default=None, gt=0)
    budget_usd_per_month: float | None = Field(default=None, gt=0)
    # Caps on one call's estimate (prompt + max_tokens, at the model's price).
    max_usd_per_request: float | None = Field(default=None, gt=0)
    max_tokens_per_request: int | None = Field(default=None, ge=1)
    # Its share of a model group's queue under overload, against other tenants' (lanes).
    weight: float = Field(default=1.0, gt=0)


class AuthConfig(_Strict):
    """With no keys here (tenant, admin or metrics keys) and no active key in the store:
    the server is open and every call is tenant `default`."""

    keys: list[AuthKey] = Field(default_factory=list)
    # Accepted here too, where earlier versions had them; `tenants:` at the top level
    # is the documented place.
    tenants: list[TenantConfig] = Field(default_factory=list)
    # Keys of the admin API (/v1/admin/keys); none: the admin API is off (404).
    admin_keys: list[SecretStr] = Field(default_factory=list)
    # Keys that may read /metrics (and /healthz's per-deployment detail), besides the
    # admin keys: for a Prometheus scraper. They call no model and see no run.
    metrics_keys: list[SecretStr] = Field(default_factory=list)
    # How long a process trusts its lookup of a store key (made by `areion keys create`
    # or the admin API): a key revoked by another process is refused within this.
    key_cache_ttl_s: float = Field(default=5.0, gt=0, le=300)

    @model_validator(mode="after")
    def _operator_keys_apart(self) -> AuthConfig:
        tenant_keys = {key.key.get_secret_value() for key in self.keys}
        for field, keys in (("admin_keys", self.admin_keys), ("metrics_keys", self.metrics_keys)):
            for i, key in enumerate(keys):
                if not key.get_secret_value():
                    raise ValueError(f"{field}[{i}]: the key is empty")
                if key.get_secret_value() in tenant_keys:
                    raise ValueError(
                        f"{field}[{i}]: the same as a key in auth.keys; it must be one of its own"
                    )
        return self


class ModelLimit(_Strict):
    """Rate limits of one model name (a group or a route) over every tenant."""

    model: str = Field(min_length=1)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)


class LimitsConfig(_Strict):
    """Model-wide rate limits and how a call's tokens are estimated at admission."""

    models: list[ModelLimit] = Field(default_factory=list)
    # The output-token estimate of a call, per answer, until its model has answered 20
    # calls; then the 95th percentile of its recent answers' lengths. Either is capped by
    # the call's max_tokens, reserved at admission and reconciled when the call ends.
    default_max_tokens: int = Field(default=1024, ge=1)
    # How long a call may wait for budget held only by calls in flight (they settle at
    # their real cost, usually below their estimate) before it is refused with 402.
    budget_wait_s: float = Field(default=10.0, ge=0, le=600)
    # When the shared backend (Redis) that holds limits and budgets is unreachable:
    # `closed` refuses calls (503) rather than serve them unlimited; `open` lets each
    # replica enforce the limits on its own meanwhile (N replicas may let N times
    # through), counted in areion_shared_fallbacks_total.
    shared_failure: Literal["closed", "open"] = "closed"


class LaneLimitsConfig(_Strict):
    """How many calls of one lane may wait for a model group, and for how long."""

    max_queued: int | None = Field(default=None, ge=0)
    max_wait_s: float | None = Field(default=None, gt=0)


class LanesConfig(_Strict):
    """Priority lanes in front of model groups whose deployments all set max_concurrency.

    Interactive calls are served before batch; within a lane tenants share by weight;
    over the bounds, batch is shed first (503 with Retry-After)."""

    interactive: LaneLimitsConfig = Field(
        default_factory=lambda: LaneLimitsConfig(max_queued=1000, max_wait_s=30.0)
    )
    batch: LaneLimitsConfig = Field(
        default_factory=lambda: LaneLimitsConfig(max_queued=10_000, max_wait_s=600.0)
    )
    max_queued: int | None = Field(default=None, ge=0)  # both lanes, per group
    # The share of a group's slots batch may never hold: room for interactive arrivals.
    interactive_reserve: float = Field(default=0.25, ge=0, lt=1)
    # 0: strict priority; N: batch gets at least one slot per N interactive grants.
    batch_every: int = Field(default=0, ge=0)


class RetryConfig(_Strict):
    """Retries within a model group, before falling back to the next group."""

    max_attempts: int = Field(default=3, ge=1, le=20)
    backoff_base: float = Field(default=0.05, ge=0)
    backoff_max: float = Field(default=2.0, ge=0)
    # A Retry-After longer than this moves on to another deployment instead of waiting.
    max_retry_after: float = Field(default=5.0, ge=0)


class BreakerConfig(_Strict):
    """Per-deployment circuit breaker."""

    failure_threshold: int = Field(default=5, ge=1)
    reset_timeout: float = Field(default=10.0, gt=0)


class MemoryConfig(_Strict):
    """Session memory of agents."""

    budget_tokens: int = Field(default=2000, ge=100)
    # The model group that folds old turns into summaries; default: the first model.
    summary_model: str | None = None


class ExactCacheConfig(_Strict):
    """L1: the exact response cache."""

    enabled: bool = True
    ttl_s: float = Field(default=3600.0, gt=0)
    # Cache every request, not only temperature 0: for clients that accept a repeat.
    any_temperature: bool = False


class SemanticCacheConfig(_Strict):
    """L2: the semantic cache (needs the `semantic` extra and the embedding model)."""

    # Off by default: a wrong hit is a wrong answer, so serving paraphrases is a choice.
    enabled: bool = False
    ttl_s: float = Field(default=86_400.0, gt=0)
    # The share of semantic hits allowed to be wrong, on traffic as hard as the
    # calibration pairs; default: the verifier's (0.15).
    max_wrong_hit_rate: float | None = Field(default=None, gt=0, lt=1)
    any_temperature: bool = False
    max_entries: int = Field(default=100_000, ge=1)
    # Longer questions are not looked up: the embedding model reads 256 tokens at most.
    max_chars: int = Field(default=1000, ge=1, le=4000)
    # ONNX Runtime threads of the embedder (shared by the semantic tiers, learned routes
    # and `provider: local` models). 2 roughly halves a lone query's time on 2 idle cores
    # and raises batched throughput, but competes with the event loop for the second core.
    embed_threads: int = Field(default=1, ge=1, le=64)
    # Texts the shared embedder runs together at most: concurrent calls are micro-batched
    # up to this; 1 runs every call on its own.
    embed_max_batch: int = Field(default=64, ge=1, le=4096)
    # Embedder runs in flight at once (each `embed_threads` threads): 2 lets a hit that
    # arrives during a run start its own at once instead of waiting for it, on a
    # machine with a core to spare (bench/cache_hit.py --variants: no gain on 2 busy cores).
    embed_sessions: int = Field(default=1, ge=1, le=64)
    # Recently embedded texts whose vectors are kept (1.5 KB each): a question asked
    # again in the same words is not embedded again. 0 keeps none.
    embed_memo: int = Field(default=4096, ge=0, le=1_000_000)
    # 8-bit integer products in the embedder: a short query ~3x faster on CPU, vectors
    # within cosine 0.995 of float32 ones; the shipped verifier is calibrated on these.
    embed_quantized: bool = True
    # "lexical" (the default): the cheap logistic model alone, calibrated on its own.
    # "pair": the verifier reads the best candidate again with the pair model (a second
    # MiniLM run over query and candidate, ~2.6 ms of CPU a lookup): about a quarter more
    # hits at the same wrong-hit rate, for a semantic hit about twice as slow (bench/
    # cache_hit.py: 3.6 -> 6.6 ms p50 one at a time, and the embedder's queue doubled
    # under load), which is why it is not the default.
    verifier: Literal["pair", "lexical"] = "lexical"


class PlanCacheConfig(_Strict):
    """L3: plans of agents created with `plan_cache` (needs the `semantic` extra)."""

    ttl_s: float = Field(default=604_800.0, gt=0)
    # Looser than the answer cache's: a plan is advice the model adapts, not an answer.
    max_wrong_hit_rate: float = Field(default=0.2, gt=0, lt=1)
    max_entries: int = Field(default=10_000, ge=1)
    max_chars: int = Field(default=2000, ge=1, le=4000)


class EmbeddingCacheConfig(_Strict):
    """The embedding cache: each input's vector, per tenant, model and parameters."""

    # On by default: an embedding model gives the same vector for the same input.
    enabled: bool = True
    ttl_s: float = Field(default=604_800.0, gt=0)


class CacheConfig(_Strict):
    exact: ExactCacheConfig = Field(default_factory=ExactCacheConfig)
    semantic: SemanticCacheConfig = Field(default_factory=SemanticCacheConfig)
    plans: PlanCacheConfig = Field(default_factory=PlanCacheConfig)
    embeddings: EmbeddingCacheConfig = Field(default_factory=EmbeddingCacheConfig)


CascadeCheck = Literal["schema", "agreement"]
_CASCADE_CHECKS: tuple[CascadeCheck, ...] = ("schema", "agreement")


class RuleMatch(_Strict):
    """When a routing rule applies; every condition given must hold."""

    tier: str | None = None  # the x-areion-tier header (interactive, batch, critical...)
    tag: str | None = None  # one of the x-areion-tags header's comma-separated tags
    tools: bool | None = None  # the request offers tools
    response_format: bool | None = None  # the request asks for JSON / a schema
    min_prompt_chars: int | None = Field(default=None, ge=0)
    max_prompt_chars: int | None = Field(default=None, ge=0)


class RouteRule(_Strict):
    when: RuleMatch = Field(default_factory=RuleMatch)
    model: str = Field(min_length=1)


class RouteConfig(_Strict):
    """A virtual model: clients ask for `name`, the route picks one of `candidates`."""

    name: str = Field(min_length=1)
    policy: Literal["rules", "learned", "cascade"] = "rules"
    # Model groups, cheapest (and fastest) first.
    candidates: list[str] = Field(min_length=1)
    # learned, cascade: keep this share of the best candidate's quality, at least cost.
    target_quality: float = Field(default=0.95, gt=0, le=1)
    # rules: first match wins; no match -> the last (strongest) candidate.
    rules: list[RouteRule] = Field(default_factory=list)
    # learned: the router file made by `areion train router`.
    router: str | None = None
    # cascade: what must pass for a cheaper answer to be accepted.
    checks: list[CascadeCheck] = Field(default_factory=lambda: list(_CASCADE_CHECKS))
    # cascade: the candidate that answers when the two cheap answers cannot be compared
    # (programs, long prose); default: the strongest. `areion eval routing --policy
    # cascade` prints the one that fits recorded outcomes.
    unverified: str | None = None
    # Exact computations (arithmetic, units, dates) answered without a model.
    solver: bool = True
    # Degraded mode: when the route's rolling p95 latency exceeds this, traffic that is
    # not `critical` goes to `degraded_model` (default: the first candidate) until the
    # p95 is back under `recover_ratio` x the objective.
    latency_objective_s: float | None = Field(default=None, gt=0)
    degraded_model: str | None = None
    recover_ratio: float = Field(default=0.8, gt=0, le=1)
    window: int = Field(default=200, ge=20)

    @model_validator(mode="after")
    def _check_policy(self) -> RouteConfig:
        if self.policy == "learned" and not self.router:
            raise ValueError(
                f"routes.{self.name}: policy learned needs `router:`, a file made by "
                "`areion train router`"
            )
        if self.policy == "cascade" and len(self.candidates) < 2:
            raise ValueError(f"routes.{self.name}: a cascade needs at least two candidates")
        if self.unverified is not None and self.unverified not in self.candidates:
            raise ValueError(
                f"routes.{self.name}: unverified {self.unverified!r} is not one of the "
                f"candidates {self.candidates}"
            )
        return self


class ExperimentScope(_Strict):
    """What an experiment applies to: one agent's runs, or plain calls to a model or route."""

    agent: str | None = None
    model: str | None = None
    route: str | None = None

    @model_validator(mode="after")
    def _one(self) -> ExperimentScope:
        named = [k for k in ("agent", "model", "route") if getattr(self, k)]
        if len(named) != 1:
            raise ValueError("applies_to names exactly one of agent, model or route")
        return self


class VariantConfig(_Strict):
    """One arm of an experiment and what it changes."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    # Relative share of the units (any scale; 0 sends it no new units).
    weight: float = Field(ge=0)
    # Agent experiments: the instructions (a file's text, or given inline) in place of
    # the agent's own.
    instructions: str | None = None
    instructions_file: str | None = None
    # The model group or route the variant's calls go to instead.
    model: str | None = None
    route: str | None = None
    # Request parameters set on the variant's calls (temperature, max_tokens, ...).
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> VariantConfig:
        if self.instructions is not None and self.instructions_file is not None:
            raise ValueError(
                f"variant {self.name}: give instructions or instructions_file, not both"
            )
        if self.model is not None and self.route is not None:
            raise ValueError(f"variant {self.name}: give model or route, not both")
        unknown = set(self.params) - _VARIANT_PARAMS
        if unknown:
            raise ValueError(
                f"variant {self.name}: params {sorted(unknown)} cannot be set; "
                f"known: {sorted(_VARIANT_PARAMS)}"
            )
        return self


_VARIANT_PARAMS = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "reasoning_effort",
        "presence_penalty",
        "frequency_penalty",
        "seed",
    }
)


class GuardrailConfig(_Strict):
    """Bounds a variant must keep against control; a significant breach stops it."""

    max_cost_per_task_ratio: float | None = Field(default=None, gt=1)
    max_p95_latency_ratio: float | None = Field(default=None, gt=1)


class StopConfig(_Strict):
    """When an experiment may give its verdict."""

    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    min_units_per_variant: int = Field(default=200, ge=2)
    # The smallest difference worth finding: absolute for the success rate, relative
    # for cost and latency. Below it, a settled interval reads "no difference".
    min_effect: float | None = Field(default=None, gt=0)


class ExperimentConfig(_Strict):
    """An A/B test: units split between variants by weight, judged against control."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    applies_to: ExperimentScope
    unit: Literal["session", "user", "run", "request"] = "session"
    variants: list[VariantConfig] = Field(min_length=2)
    control: str = "control"
    metric: Literal["success", "cost", "latency"] = "success"
    guardrails: GuardrailConfig = Field(default_factory=GuardrailConfig)
    stop: StopConfig = Field(default_factory=StopConfig)
    # Once the verdict names a winner, send every unit to it.
    promote: bool = False
    # How often a server judges an experiment with guardrails or promotion (and every
    # replica applies what the last verdict decided).
    check_every_s: float = Field(default=60.0, ge=1.0)

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"experiments.{self.name}: variant names repeat: {names}")
        if self.control not in names:
            raise ValueError(
                f"experiments.{self.name}: control {self.control!r} is not a variant; "
                f"variants: {names}"
            )
        if not any(v.weight > 0 for v in self.variants):
            raise ValueError(
                f"experiments.{self.name}: at least one variant needs a weight above 0"
            )
        if self.applies_to.agent is None and self.unit == "run":
            raise ValueError(f"experiments.{self.name}: unit run is for agent experiments")
        return self


class AgentConfig(_Strict):
    """An agent the server can run, by the import path of an `Agent` object."""

    name: str = Field(min_length=1)
    path: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class LedgerConfig(_Strict):
    """How much billing may wait while the ledger's store is unreachable."""

    # Rows kept in memory for the store while it is down; past this, new calls are
    # refused (503) rather than served unbilled.
    max_pending_rows: int = Field(default=100_000, ge=1)


class RunsConfig(_Strict):
    """Agent runs across replicas."""

    # A run's driver holds a lease this long, renewing it every third of it; a run whose
    # driver died (its lease ran out, no checkpoint for this long) is taken over by a
    # replica that serves its agent.
    lease_ttl_s: float = Field(default=15.0, ge=1.0, le=3600.0)
    # Whether this server takes over such runs by itself.
    adopt: bool = True


class WindowConfig(_Strict):
    """When deferred work may start: off-peak hours in a timezone, or the greenest slot
    of a carbon-intensity schedule (a CSV of forecasts: `time,g_per_kwh`)."""

    hours: str | None = Field(default=None, pattern=r"^\d\d:\d\d-\d\d:\d\d$")  # 01:00-06:00
    timezone: str = "UTC"
    carbon_file: str | None = None
    # Slots above this are chosen only when no slot before the deadline is below it.
    max_g_per_kwh: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> WindowConfig:
        if (self.hours is None) == (self.carbon_file is None):
            raise ValueError(
                "a window has either hours (off-peak: '01:00-06:00') or carbon_file (green)"
            )
        if self.hours is not None:
            for part in self.hours.split("-"):
                hour, minute = (int(x) for x in part.split(":"))
                if hour > 23 or minute > 59:
                    raise ValueError(f"hours: '{part}' is not a time of day (00:00 to 23:59)")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"timezone: '{self.timezone}' is not an IANA timezone (Europe/Berlin, UTC)"
            ) from None
        return self


class JobsConfig(_Strict):
    """Batches (the Files and Batches APIs): their worker, and their limits."""

    # Each `areion serve` process runs a worker taking batches from the store's queue.
    worker: bool = True
    # A worker holds a batch this long unless it renews (every third of it); a worker
    # that dies is taken over after at most this long.
    lease_ttl_s: float = Field(default=15.0, ge=0.5, le=3600.0)
    # Lines of one batch a worker has in flight at once (they queue in the batch lane).
    concurrency: int = Field(default=16, ge=1, le=4096)
    # How often an idle worker looks for a batch that is due.
    poll_s: float = Field(default=1.0, gt=0, le=300)
    # Lines a worker keeps in flight while the group has interactive calls (lanes: its
    # deployments set max_concurrency): the batch yields the process to them.
    yield_concurrency: int = Field(default=4, ge=1, le=4096)
    # Tries of a line refused for a while (rate limited, overloaded) before it fails.
    max_line_attempts: int = Field(default=5, ge=1, le=100)
    # The largest file POST /v1/files takes (413 past it); also the body cap there.
    max_file_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    # The most lines one batch may have.
    max_lines: int = Field(default=50_000, ge=1)
    # How often a provider's batch (native_batch) is polled.
    native_poll_s: float = Field(default=10.0, gt=0, le=3600)
    # Named windows deferred work may ask for, and the one a batch gets by default.
    windows: dict[str, WindowConfig] = Field(default_factory=dict)
    default_window: str | None = None

    @model_validator(mode="after")
    def _check_default(self) -> JobsConfig:
        if self.default_window is not None and self.default_window not in self.windows:
            raise ValueError(
                f"default_window: no window named '{self.default_window}' in jobs.windows"
            )
        return self


class ServerConfig(_Strict):
    """`areion serve`: where it listens and what it takes from a client."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # One line per request on the `areion.access` logger (server/access.py): request id,
    # tenant, key label, model, deployment, status, latency, cost, cache; text or json.
    access_log: bool = True
    log_format: Literal["text", "json"] = "text"
    # A larger request body is answered 413 (it bounds the memory and the time one
    # request may take to parse and count).
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1)
    # From a request's first byte to the end of its headers, and from there to the end
    # of its body: a client slower than that is disconnected (408), so slow clients cannot
    # hold the server's sockets.
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=60.0, gt=0)
    # A connection with no request in progress is closed after this long.
    idle_timeout_s: float = Field(default=5.0, gt=0)
    # Open client connections at most; one more is answered 503 and closed. Keep it
    # below the process's open-file limit (`ulimit -n`), which upstream connections share.
    max_connections: int = Field(default=512, ge=1)
    # With no auth configured, `areion serve` refuses a host beyond loopback unless
    # this (or --allow-open) says to run open on purpose.
    allow_open: bool = False


class TracingConfig(_Strict):
    """OpenTelemetry traces (the `tracing` extra), exported over OTLP HTTP/protobuf.

    A field left unset takes its standard `OTEL_*` environment variable, as any
    OpenTelemetry SDK does: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (or
    OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces), OTEL_EXPORTER_OTLP_(TRACES_)HEADERS,
    OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG).
    """

    # None: on when an OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
    # variable is set. OTEL_SDK_DISABLED=true turns it off whatever this says.
    enabled: bool | None = None
    # The collector's OTLP/HTTP base URL (http://collector:4318); /v1/traces is added
    # unless the URL already ends with it.
    endpoint: str | None = None
    # Sent with every export (a vendor's API key): secrets, never logged.
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    service_name: str | None = None
    # The share of new traces recorded (a trace continued from a caller follows the
    # caller's decision); None: OTEL_TRACES_SAMPLER, else every trace.
    sample_ratio: float | None = Field(default=None, ge=0.0, le=1.0)
    # Prompts, completions, tool arguments and results on the spans. Off by default:
    # they may hold personal data, and a trace backend is rarely the place for it.
    capture_content: bool = False
    # How long one export may take before it is dropped.
    timeout_s: float = Field(default=10.0, gt=0)

    def active(self, environ: Mapping[str, str] | None = None) -> bool:
        """Whether traces are on, given the environment (`os.environ` by default)."""
        env = os.environ if environ is None else environ
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return False
        if self.enabled is not None:
            return self.enabled
        return bool(
            env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        )


class ScalingConfig(_Strict):
    """`areion_desired_replicas`: how many replicas the forecast load needs."""

    enabled: bool = True
    # Calls one replica should have in flight at most; the signal is the expected calls
    # in flight (forecast arrival rate x p95 service time) divided by this.
    target_concurrency_per_replica: float = Field(default=8.0, gt=0)
    # How far ahead the forecast looks (about the time a new replica takes to serve).
    horizon_s: float = Field(default=900.0, ge=0, le=86_400)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=100, ge=1)
    # Days of arrivals the time-of-day profile is learned from (kept in the store).
    history_days: int = Field(default=14, ge=1, le=90)
    # The zone whose clock the daily and weekly pattern follows (an IANA name).
    timezone: str = "UTC"
    # The service time assumed until this replica has seen calls finish.
    service_time_s: float = Field(default=1.0, gt=0)
    # How often each replica adds its arrival counts to the store and reads everyone's.
    flush_s: float = Field(default=10.0, gt=0, le=300)

    @model_validator(mode="after")
    def _check(self) -> ScalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        try:
            if self.timezone != "UTC":  # needs no time zone database
                zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(
                f"timezone '{self.timezone}' is not a known time zone; use an IANA "
                "name such as Europe/Paris or UTC (zones other than UTC need the system's "
                "time zone database, or `pip install tzdata`)"
            ) from None
        return self


class Config(_Strict):
    """The whole configuration."""

    models: list[ModelConfig] = Field(min_length=1)
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    # Limits, budgets and lane weights per tenant, over all its keys.
    tenants: list[TenantConfig] = Field(default_factory=list)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    store: str = "sqlite:///areion.db"
    # State replicas share at once (limits, budgets, breakers, leases, notices):
    # redis://host:port/db; none: this process's memory (one replica).
    shared: str | None = None
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    runs: RunsConfig = Field(default_factory=RunsConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    routes: list[RouteConfig] = Field(default_factory=list)
    lanes: LanesConfig = Field(default_factory=LanesConfig)
    agents: list[AgentConfig] = Field(default_factory=list)
    experiments: list[ExperimentConfig] = Field(default_factory=list)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)

    def _check_local(self) -> set[str]:
        """The groups of `provider: local` (embeddings only); none may have deployments of
        another provider: one group's vectors must all come from one model."""
        local = {model.name for model in self.models if model.provider == "local"}
        for i, model in enumerate(self.models):
            if model.name in local and model.provider != "local":
                raise ValueError(
                    f"models[{i}]: group '{model.name}' has provider local deployments; its "
                    "deployments must all be local (vectors of different models do not mix)"
                )
        return local

    @property
    def all_tenants(self) -> list[TenantConfig]:
        """Every tenant's settings: those of `tenants:` and of `auth.tenants`."""
        return [*self.tenants, *self.auth.tenants]

    @model_validator(mode="after")
    def _check_references(self) -> Config:
        groups = {model.name for model in self.models}
        local = self._check_local()
        for group, targets in self.fallbacks.items():
            if group not in groups:
                raise ValueError(f"fallbacks: '{group}' is not a model name")
            for target in targets:
                if target not in groups:
                    raise ValueError(f"fallbacks.{group}: '{target}' is not a model name")
                if target == group:
                    raise ValueError(f"fallbacks.{group}: a group cannot fall back to itself")
                if (group in local) != (target in local):
                    raise ValueError(
                        f"fallbacks.{group}: '{target}' is not interchangeable with it: only "
                        "provider local groups (embeddings only) fall back to each other"
                    )
        if self.memory.summary_model is not None and self.memory.summary_model not in groups:
            raise ValueError(f"memory.summary_model: '{self.memory.summary_model}' is not a model")
        if self.memory.summary_model in local:
            raise ValueError(
                f"memory.summary_model: '{self.memory.summary_model}' serves embeddings only"
            )
        names = [agent.name for agent in self.agents]
        if len(names) != len(set(names)):
            raise ValueError("agents: names must be unique")
        ids = [model.id for model in self.models if model.id]
        if len(ids) != len(set(ids)):
            raise ValueError("models: deployment ids must be unique")
        route_names: set[str] = set()
        for route in self.routes:
            where = f"routes.{route.name}"
            if route.name in groups:
                raise ValueError(f"{where}: a route cannot have a model group's name")
            if route.name in route_names:
                raise ValueError(f"{where}: route names must be unique")
            route_names.add(route.name)
            for name in route.candidates:
                if name not in groups:
                    raise ValueError(f"{where}.candidates: '{name}' is not a model name")
                if name in local:
                    raise ValueError(
                        f"{where}.candidates: '{name}' serves embeddings only (provider "
                        "local); routes choose among chat models"
                    )
            for i, rule in enumerate(route.rules):
                if rule.model not in route.candidates:
                    raise ValueError(
                        f"{where}.rules[{i}].model: '{rule.model}' is not one of the candidates"
                    )
            if route.degraded_model is not None and route.degraded_model not in route.candidates:
                raise ValueError(
                    f"{where}.degraded_model: '{route.degraded_model}' is not one of the candidates"
                )
        known = groups | route_names
        for where, listed in (("tenants", self.tenants), ("auth.tenants", self.auth.tenants)):
            names = [tenant.name for tenant in listed]
            if len(names) != len(set(names)):
                raise ValueError(f"{where}: names must be unique")
        both = {t.name for t in self.tenants} & {t.name for t in self.auth.tenants}
        if both:
            raise ValueError(
                f"tenants: {', '.join(sorted(both))} also in auth.tenants; list each tenant "
                "once (the top-level tenants: is the documented place)"
            )
        names = [key.name for key in self.auth.keys if key.name]
        if len(names) != len(set(names)):
            raise ValueError("auth.keys: names must be unique")
        for i, key in enumerate(self.auth.keys):
            for name in key.models or ():
                if name not in known:
                    raise ValueError(
                        f"auth.keys[{i}].models: '{name}' is not a model or route name"
                    )
        for i, limit in enumerate(self.limits.models):
            if limit.model not in known:
                raise ValueError(
                    f"limits.models[{i}].model: '{limit.model}' is not a model or route name"
                )
        # An agent experiment may name an agent defined in code, not in `agents:`: the
        # runtime matches it by name when it runs.
        seen_experiments: set[str] = set()
        for experiment in self.experiments:
            where = f"experiments.{experiment.name}"
            if experiment.name in seen_experiments:
                raise ValueError(f"{where}: experiment names must be unique")
            seen_experiments.add(experiment.name)
            scope = experiment.applies_to
            if scope.model is not None and scope.model not in groups:
                raise ValueError(f"{where}.applies_to.model: '{scope.model}' is not a model name")
            if scope.route is not None and scope.route not in route_names:
                raise ValueError(f"{where}.applies_to.route: '{scope.route}' is not a route name")
            for variant in experiment.variants:
                aimed = variant.model or variant.route
                if aimed is not None and aimed not in known:
                    raise ValueError(
                        f"{where}.variants.{variant.name}: '{aimed}' is not a model or route name"
                    )
        if not self.store.startswith(("sqlite:///", "postgresql://", "postgres://")):
            # Only the scheme is echoed: a URL may carry a password.
            shown = self.store.partition("://")[0] + "://..." if "://" in self.store else self.store
            raise ValueError(
                f"store: '{shown}' is not supported; use sqlite:///path.db, or "
                "postgresql://user@host:port/db for replicas sharing one database"
            )
        return self


_PLACEHOLDER = re.compile(r"__areion_env_(\d+)__")


def _resolve(name: str, default: str | None, path: str) -> str:
    found = os.environ.get(name)
    # Shell semantics: `${VAR:-default}` takes the default when VAR is unset or empty.
    if found or (found is not None and default is None):
        return found
    if default is not None:
        return default
    raise ConfigError(
        f"{path}: environment variable {name} is not set "
        f"(export it, or write ${{{name}:-default}} to allow a default)",
        param=path,
    )


def _interpolate(value: Any, path: str, table: list[tuple[str, str | None]]) -> Any:
    if isinstance(value, str):
        value = _PLACEHOLDER.sub(lambda m: _resolve(*table[int(m.group(1))], path), value)
        return _ENV_PATTERN.sub(lambda m: _resolve(m.group(1), m.group(2), path), value)
    if isinstance(value, dict):
        return {
            key: _interpolate(item, f"{path}.{key}" if path else str(key), table)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_interpolate(item, f"{path}[{i}]", table) for i, item in enumerate(value)]
    return value


def _protect(text: str) -> tuple[str, list[tuple[str, str | None]]]:
    """Replace each `${VAR}` with a plain token before YAML parsing.

    `{key: ${ACME_KEY}}` is not valid YAML (the `{` of `${` opens a mapping), and a
    value substituted into the text could inject YAML; a token parses as a plain
    scalar, and the value replaces it after parsing, inside the string only.
    """
    table: list[tuple[str, str | None]] = []

    def token(match: re.Match[str]) -> str:
        table.append((match.group(1), match.group(2)))
        return f"__areion_env_{len(table) - 1}__"

    return _ENV_PATTERN.sub(token, text), table


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "config"


def parse_config(
    data: Any, *, source: str = "config", _env: list[tuple[str, str | None]] | None = None
) -> Config:
    """Validate a config mapping; a problem raises `ConfigError` naming the field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, not {type(data).__name__}")
    data = _interpolate(data, "", _env or [])
    try:
        return Config.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            where = _location(tuple(item["loc"]))
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}")
        raise ConfigError(f"{source}: invalid configuration: " + "; ".join(problems)) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML config file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config file {file}: {error.strerror}") from None
    text, table = _protect(text)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{file}: not valid YAML: {error}") from None
    return parse_config(data, source=str(file), _env=table)


def default_config() -> Config:
    """The embedded default: built-in sim models, SQLite state, no keys."""
    return parse_config(
        {
            "models": [
                {"name": "fast", "provider": "sim", "model": "sim-fast"},
                {"name": "strong", "provider": "sim", "model": "sim-strong"},
            ],
            "fallbacks": {"fast": ["strong"]},
        },
        source="default config",
    )

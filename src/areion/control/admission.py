"""The admission stage: rate limits and budgets, first in the request path.

For each call: the key's model list -> an estimate (prompt tokens counted with
the tokenizer + `max_tokens` or the default cap; its cost at the dearest price
the model name can bill) -> per-request caps -> one atomic take from every
requests and tokens bucket of the key, tenant and model -> one atomic reservation
in the tenant's day and month budgets -> the call -> reconciliation: the real
tokens and cost replace the estimate (a stream's when it ends; a cache hit's are
0; a failed call's are 0). A refusal takes nothing: what was taken is given back.

An embeddings call goes the same way (`handle_embedding`): its inputs' tokens are its
prompt, it has no output, and its cost is the input tokens at the dearest input price.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from areion.config import LimitsConfig, TenantConfig
from areion.control.budgets import BudgetWindow, PriceBound, Windows, exceeded, in_flight_only
from areion.control.estimates import OutputEstimate
from areion.control.holds import Hold
from areion.control.keys import KeyLimits
from areion.control.limits import RateLimit, RateReport, refusal
from areion.errors import (
    BackendUnavailableError,
    BudgetExceededError,
    ModelNotAllowedError,
    RequestError,
)
from areion.pipeline import Call, EmbeddingCall, EmbeddingHandler, Handler, Result
from areion.store.counters import BudgetState, Counters, Take
from areion.streaming import ChatStream
from areion.tokenizer import estimate_usage
from areion.types import ChatRequest, EmbeddingRequest, EmbeddingResponse, Usage

__all__ = ["Admission", "Policy"]

SpendSince = Callable[[float], Awaitable[dict[str, float]]]
"""Each tenant's recorded spend since a Unix time (`Store.spend_by_tenant`)."""
Clock = Callable[[], float]
KeyLookup = Callable[[str], KeyLimits | None]
"""The key with a label, for keys known only at run time (the store's: `KeyRing.limits`)."""

_FREE = PriceBound(0.0, 0.0)
# How often a call waiting for budget looks again without being told (another
# replica's calls settle without telling this one).
_POLL_S = 0.25
# Providers count a prompt with their own tokenizers, some a fifth more than cl100k, and
# frame messages in tokens of their own: a call's money is reserved for the count plus
# a fifth, plus these.
_PROMPT_MARGIN = 8


@dataclass(slots=True, frozen=True, kw_only=True)
class Policy:
    """Everything admission applies to one (key, tenant, model)."""

    models: frozenset[str] | None
    """What the key may ask for; None: anything."""
    key: str | None
    """The key's label, for errors."""
    limits: tuple[RateLimit, ...]
    """Its rate limits, key first, then tenant, then model."""
    max_usd: float | None
    max_tokens: int | None
    price: PriceBound
    free: bool = False
    """Nothing to check or take: no model list, limits, caps nor budget."""


@dataclass(slots=True, frozen=True, kw_only=True)
class _Ask:
    """What one call asks of the limits: tokens in, tokens out, answers."""

    prompt: int
    """Prompt (or input) tokens, as counted here."""
    output: int
    """Output tokens expected, over all answers."""
    n: int
    """Answers asked for."""
    max_output_tokens: int | None
    """The client's cap on output tokens, over all answers."""
    embeddings: bool = False
    """An embeddings call: its inputs are what to cut down, there is no max_tokens."""

    @property
    def parts(self) -> str:
        if self.embeddings:
            return f"{self.prompt} input"
        return f"{self.prompt} prompt + {self.output} output"

    @property
    def fix(self) -> str:
        return "send fewer or shorter inputs" if self.embeddings else "lower max_tokens"

    @property
    def shorten(self) -> str:
        return self.fix if self.embeddings else "lower max_tokens or shorten the prompt"

    @property
    def param(self) -> str:
        return "input" if self.embeddings else "max_tokens"


@dataclass(slots=True)
class _Admitted:
    """What one admitted call holds until it is reconciled."""

    takes: list[Take]
    """The tokens-per-minute takes, to be corrected by the real count."""
    tokens: int
    """The tokens taken from each tokens-per-minute bucket."""
    hold: Hold | None
    """Its hold on the tenant's budget windows, if the tenant has a budget."""
    model: str
    """The model name it asked for, whose output lengths it teaches the estimate."""
    n: int
    """The answers it asked for."""


class Admission:
    """Admits, refuses and reconciles calls against rate limits and budgets."""

    def __init__(
        self,
        counters: Counters,
        *,
        keys: Iterable[KeyLimits],
        lookup: KeyLookup | None = None,
        tenants: Iterable[TenantConfig],
        limits: LimitsConfig,
        prices: Mapping[str, PriceBound],
        spend_since: SpendSince | None = None,
        clock: Clock = time.time,
    ) -> None:
        self._counters = counters
        self._keys = {key.label: key for key in keys}
        self._lookup = lookup
        self._tenants = {tenant.name: tenant for tenant in tenants}
        self._models = {limit.model: limit for limit in limits.models}
        self.outputs = OutputEstimate(limits.default_max_tokens)
        """The expected output length of each model's calls (what a call reserves)."""
        self._budget_wait_s = limits.budget_wait_s
        self._prices = dict(prices)
        self._windows = Windows(self._tenants.values())
        self._spend_since = spend_since
        self.clock = clock
        """Unix time for rate buckets and budget windows; replaceable (a manual clock)."""
        self._policies: dict[tuple[str | None, str, str], tuple[KeyLimits | None, Policy]] = {}
        self._seeding: dict[str, asyncio.Future[None]] = {}  # window key -> its seeding
        self._settling: set[asyncio.Task[None]] = set()
        self._signal: asyncio.Future[None] | None = None
        self._retries: set[asyncio.Task[None]] = set()

    def policy(self, key: str | None, tenant: str, model: str) -> Policy:
        """What applies to a call by `key` of `tenant` for `model` (cached)."""
        entry = self._key(key)
        found = self._policies.get((key, tenant, model))
        # A store key made again under the same name is another entry: recompute.
        if found is not None and found[0] is entry:
            return found[1]
        limits: list[RateLimit] = []
        scopes: list[tuple[str, str, int | None, int | None]] = []
        if entry is not None:
            scopes.append((f"key '{entry.label}'", f"key:{entry.label}", entry.rpm, entry.tpm))
        config = self._tenants.get(tenant)
        if config is not None:
            scopes.append((f"tenant '{tenant}'", f"tenant:{tenant}", config.rpm, config.tpm))
        model_limit = self._models.get(model)
        if model_limit is not None:
            scopes.append((f"model '{model}'", f"model:{model}", model_limit.rpm, model_limit.tpm))
        for scope, bucket, rpm, tpm in scopes:
            if rpm is not None:
                limits.append(
                    RateLimit(scope=scope, kind="requests", per_minute=rpm, bucket="rpm:" + bucket)
                )
            if tpm is not None:
                limits.append(
                    RateLimit(scope=scope, kind="tokens", per_minute=tpm, bucket="tpm:" + bucket)
                )
        policy = Policy(
            models=frozenset(entry.models)
            if entry is not None and entry.models is not None
            else None,
            key=entry.label if entry is not None else key,
            limits=tuple(limits),
            max_usd=config.max_usd_per_request if config is not None else None,
            max_tokens=config.max_tokens_per_request if config is not None else None,
            price=self._prices.get(model, _FREE),
            free=(
                not limits
                and (entry is None or entry.models is None)
                and (config is None or not _has_caps(config))
            ),
        )
        self._policies[(key, tenant, model)] = (entry, policy)
        return policy

    def _key(self, label: str | None) -> KeyLimits | None:
        if label is None:
            return None
        found = self._keys.get(label)
        if found is None and self._lookup is not None:
            found = self._lookup(label)
        return found

    async def handle(self, call: Call, call_next: Handler) -> Result:
        request = call.request
        policy = self.policy(call.annotations.get("key"), call.tenant, request.model)
        if policy.free:
            return await call_next(call)
        n = request.n
        ask = _Ask(
            prompt=estimate_usage(request, "").prompt_tokens,
            output=self.outputs.tokens(request.model, max_tokens=request.max_tokens, n=n),
            n=n,
            max_output_tokens=request.max_tokens * n if request.max_tokens else None,
        )
        admitted, report = await self._admit(call.tenant, call.annotations, policy, request, ask)
        try:
            result = await call_next(call)
        except BaseException:
            self._settle(admitted, None)
            raise
        if report is not None:
            result.info["ratelimit"] = report
        if isinstance(result, ChatStream):
            result.on_finish(lambda stream, error: self._settle_later(admitted, stream))
        else:
            self._settle(admitted, _real_usage(result.usage, result.cache))
        return result

    async def handle_embedding(
        self, call: EmbeddingCall, call_next: EmbeddingHandler
    ) -> EmbeddingResponse:
        """The same for an embeddings call: its inputs' tokens are its prompt, and it has
        no output; settled at the tokens and cost it was billed (0 for inputs served from
        the embedding cache)."""
        request = call.request
        policy = self.policy(call.annotations.get("key"), call.tenant, request.model)
        if policy.free:
            return await call_next(call)
        ask = _Ask(prompt=sum(call.tokens), output=0, n=1, max_output_tokens=None, embeddings=True)
        admitted, report = await self._admit(call.tenant, call.annotations, policy, request, ask)
        try:
            response = await call_next(call)
        except BaseException:
            self._settle(admitted, None)
            raise
        if report is not None:
            response.info["ratelimit"] = report
        # Not `complete`: an embedding has no output length to learn from.
        self._settle(admitted, response.usage, complete=False)
        return response

    async def _admit(
        self,
        tenant: str,
        annotations: dict[str, Any],
        policy: Policy,
        request: ChatRequest | EmbeddingRequest,
        ask: _Ask,
    ) -> tuple[_Admitted, RateReport | None]:
        """Check the key's model list and the per-request caps, take from the rate buckets
        and reserve in the budget windows (the hold goes in `annotations`), or refuse
        having taken nothing."""
        # An experiment's variant may send the call elsewhere: the key is checked on
        # the name the client asked for.
        asked = annotations.get("asked_model", request.model)
        if policy.models is not None and asked not in policy.models:
            raise ModelNotAllowedError(
                f"key '{policy.key}' may not use model '{asked}'; it may use: "
                + ", ".join(sorted(policy.models)),
                param="model",
            )
        prompt, output = ask.prompt, ask.output
        tokens = prompt + output
        # Money is reserved for what the provider may count: its tokenizer is not ours.
        billed_prompt = prompt + prompt // 5 + _PROMPT_MARGIN
        usd = policy.price.cost(billed_prompt, output)
        self._check_request_caps(policy, tenant, tokens, usd, ask)
        now = self.clock()
        takes: list[Take] = []
        if policy.limits:
            takes = [
                limit.take(1 if limit.kind == "requests" else tokens) for limit in policy.limits
            ]
            for limit, take in zip(policy.limits, takes, strict=True):
                if take.amount > limit.per_minute:
                    raise RequestError(
                        f"this request needs an estimated {tokens} tokens ({ask.parts}), more "
                        f"than the {limit.per_minute} tokens per minute of {limit.scope}; "
                        f"{ask.fix}",
                        param=ask.param,
                    )
        windows = self._windows.of(tenant, now)
        reservations = [w.reservation(usd) for w in windows]
        report: RateReport | None = None
        deadline: float | None = None
        # One atomic step takes from every bucket and reserves in every window, or does
        # neither: a refused call costs nothing.
        while takes or reservations:
            admit = await self._counters.admit(takes, reservations, now)
            if takes:
                report = RateReport(policy.limits, admit.buckets)
                if not admit.taken:
                    raise refusal(report, [take.amount for take in takes])
            if admit.reserved:
                break
            unknown = [
                w for w, state in zip(windows, admit.budgets, strict=True) if not state.known
            ]
            if unknown:
                await self._seed(unknown)
                continue
            if not in_flight_only(windows, admit.budgets, usd):
                raise exceeded(windows, admit.budgets, usd, now)
            deadline, waited = await self._wait_for_budget(deadline)
            if not waited:
                raise exceeded(windows, admit.budgets, usd, now)
            now = self.clock()
        hold: Hold | None = None
        if windows:
            hold = Hold(
                self._counters,
                windows,
                reserve=functools.partial(self._reserve, windows),
                reserved=usd,
                prompt_tokens=billed_prompt,
                output_tokens=output,
                max_output_tokens=ask.max_output_tokens,
                clock=self.clock,
                notify=self._notify_settled,
            )
            annotations["hold"] = hold
        admitted = _Admitted(
            takes=[t for t, lim in zip(takes, policy.limits, strict=False) if lim.kind == "tokens"],
            tokens=tokens,
            hold=hold,
            model=request.model,
            n=ask.n,
        )
        return admitted, report

    async def _reserve(
        self, windows: tuple[BudgetWindow, ...], usd: float, held: float = 0.0
    ) -> tuple[bool, list[BudgetState]]:
        """Reserve `usd` in every window, for a call that already holds `held` (a hold
        growing). While only other calls in flight stand in the way, wait (up to
        `budget_wait_s`) for them to settle: most settle below their estimate. Whether
        it was reserved, and the windows as the last try found them."""
        deadline: float | None = None
        while True:
            ok, states = await self._counters.reserve([w.reservation(usd) for w in windows])
            unknown = [w for w, state in zip(windows, states, strict=True) if not state.known]
            if unknown:
                await self._seed(unknown)
                continue
            if ok or not in_flight_only(windows, states, usd, held=held):
                return ok, states
            deadline, waited = await self._wait_for_budget(deadline)
            if not waited:
                return ok, states

    async def _wait_for_budget(self, deadline: float | None) -> tuple[float, bool]:
        """Wait until a call settles here, or a while has passed (another replica's calls
        settle without telling this one), unless `deadline` (loop time; None: from now
        plus `budget_wait_s`) has passed. The deadline, and whether it waited."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self._budget_wait_s
        left = deadline - loop.time()
        if left <= 0:
            return deadline, False
        signal = self._signal
        if signal is None or signal.get_loop() is not loop:
            signal = self._signal = loop.create_future()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(left, _POLL_S)):
                await asyncio.shield(signal)
        return deadline, True

    def _notify_settled(self) -> None:
        signal, self._signal = self._signal, None
        if signal is not None and not signal.done():
            signal.set_result(None)

    def _check_request_caps(
        self, policy: Policy, tenant: str, tokens: int, usd: float, ask: _Ask
    ) -> None:
        if policy.max_tokens is not None and tokens > policy.max_tokens:
            raise BudgetExceededError(
                f"Budget exceeded: tenant '{tenant}' allows {policy.max_tokens} tokens per "
                f"request (max_tokens_per_request) and this one may use {tokens}; {ask.shorten}",
                budget="request",
            )
        if policy.max_usd is not None and usd > policy.max_usd:
            raise BudgetExceededError(
                f"Budget exceeded: tenant '{tenant}' allows ${policy.max_usd:.6f} per request "
                f"(max_usd_per_request) and this one may cost ${usd:.6f}; {ask.fix} "
                "or use a cheaper model",
                budget="request",
            )

    def _settle(self, admitted: _Admitted, usage: Usage | None, *, complete: bool = True) -> None:
        """Give back the tokens the call did not use, settle its hold at what accounting
        booked for it, and learn its output length from a `complete` answer (`usage`
        None: it failed or was a cache hit).

        The counters are told at once, in one step, before any later call is admitted;
        a shared backend's acknowledgement is awaited in the background (`drain`), so
        the answer does not wait for a second round trip."""
        if usage is not None and complete:
            self.outputs.observe(admitted.model, usage.completion_tokens, n=admitted.n)
        used = 0 if usage is None else usage.prompt_tokens + usage.completion_tokens
        gives = [(take, float(admitted.tokens - used)) for take in admitted.takes]
        hold = admitted.hold
        try:
            pending = self._counters.release(
                gives, hold.settlements() if hold else [], self.clock()
            )
        except BackendUnavailableError:
            self._not_released(hold)
            return
        if pending is None:
            if hold is not None:
                hold.settled()
            return
        task = asyncio.get_running_loop().create_task(self._acknowledged(pending, hold))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _acknowledged(self, pending: Awaitable[None], hold: Hold | None) -> None:
        try:
            await pending
        except BackendUnavailableError:
            self._not_released(hold)
            return
        if hold is not None:
            hold.settled()

    def _not_released(self, hold: Hold | None) -> None:
        # Unused tokens not given back: the bucket refills by itself. But the call is
        # answered and booked; its reservation must not stay held for good: settle it
        # once the shared backend is back.
        if hold is not None:
            self._settle_when_back(hold)

    def _settle_when_back(self, hold: Hold, attempt: int = 0) -> None:
        async def retry() -> None:
            await asyncio.sleep(min(30.0, 0.5 * 2**attempt))
            try:
                await hold.settle()
            except BackendUnavailableError:
                self._settle_when_back(hold, attempt + 1)

        task = asyncio.get_running_loop().create_task(retry())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    def _settle_later(self, admitted: _Admitted, stream: ChatStream) -> None:
        # Runs after accounting's finisher (registered first), so usage and cost are final.
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # a stream collected after its loop ended: nothing is left to settle
        usage = _real_usage(stream.usage, stream.info.get("cache"))
        self._settle(admitted, usage, complete=stream.finish_reason is not None)

    async def charge(self, tenant: str, usd: float) -> None:
        """Count spend made outside a model call (a tool's own cost, already booked in
        the ledger) in the tenant's budget windows, so the next call's reservation sees
        it. A window the counters do not know yet starts from the ledger, which holds it."""
        for window in self._windows.of(tenant, self.clock()):
            await self._counters.settle(window.key, 0.0, usd)

    async def _seed(self, windows: list[BudgetWindow]) -> None:
        """Start windows the counters do not know (new, or forgotten by a restart of
        the shared backend) at the spend the ledger holds for them; one ledger read per
        window however many calls wait for it."""
        for window in windows:
            pending = self._seeding.get(window.key)
            if pending is None:
                pending = asyncio.get_running_loop().create_future()
                # Read by the waiters, if any: no "exception never retrieved" otherwise.
                pending.add_done_callback(lambda f: f.cancelled() or f.exception())
                self._seeding[window.key] = pending
                try:
                    spent = 0.0
                    if self._spend_since is not None:
                        since = await self._spend_since(Windows.start(window))
                        spent = since.get(window.tenant, 0.0)
                    await self._counters.seed(window.key, spent)
                    pending.set_result(None)
                except Exception as error:
                    pending.set_exception(error)
                    raise
                except BaseException:
                    pending.cancel()
                    raise
                finally:
                    del self._seeding[window.key]
            else:
                await asyncio.shield(pending)

    async def drain(self) -> None:
        """Wait for the reconciliations a shared backend has not acknowledged yet."""
        while self._settling:
            await asyncio.gather(*self._settling)


def _has_caps(tenant: TenantConfig) -> bool:
    """Whether a tenant has a per-request cap or a budget."""
    return any(
        value is not None
        for value in (
            tenant.max_usd_per_request,
            tenant.max_tokens_per_request,
            tenant.budget_usd_per_day,
            tenant.budget_usd_per_month,
        )
    )


def _real_usage(usage: Usage | None, cache: object) -> Usage | None:
    """What a call really used; None for a cache hit (it used no model)."""
    if isinstance(cache, str) and cache.startswith("hit"):
        return None
    return usage

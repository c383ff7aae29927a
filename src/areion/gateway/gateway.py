"""The gateway: one call to a model group, made to succeed if any deployment can.

For each group in order (the one asked for, then its fallbacks) it picks the
least-loaded available deployment, and retries failures on another deployment,
or after a backoff, up to `retry.max_attempts` per group. A streamed call is
retried or failed over only until its first chunk arrives; after that the client
has seen output, and a failure is reported, never silently retried or truncated.
Embeddings (`embed()`) go the same way as a plain call, through the groups of the
plan that serve embeddings.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from areion.config import Config
from areion.errors import (
    AreionError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    RateLimitedError,
    RequestError,
    StreamInterruptedError,
    UpstreamError,
)
from areion.gateway.deployments import Deployment, ModelGroup, pick_deployment
from areion.gateway.fleet import Fleet
from areion.gateway.resilience import Deadline, backoff_delay
from areion.gateway.spend import Claim, OutputGuard, SpendHold
from areion.providers import EmbeddingProvider
from areion.streaming import ChatStream
from areion.telemetry.metrics import Metrics
from areion.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    StreamChunk,
)

__all__ = ["Gateway"]

T = TypeVar("T")


def _kind(error: AreionError) -> str:
    return error.code


class Gateway:
    """Sends calls to deployments with balancing, retries, breakers and fallbacks."""

    def __init__(self, config: Config, groups: dict[str, ModelGroup], metrics: Metrics) -> None:
        self.groups = groups
        self.fallbacks = {group: list(targets) for group, targets in config.fallbacks.items()}
        self.retry = config.retry
        self.metrics = metrics
        self.deployments: dict[str, Deployment] = {
            deployment.id: deployment
            for group in groups.values()
            for deployment in group.deployments
        }
        self.rng = random.Random()
        self.fleet: Fleet | None = None
        """The other replicas' view of the deployments, in distributed mode."""
        """Breaks ties between equally loaded deployments and jitters backoff; replace it
        (a seeded or scripted `Random`) for reproducible picks."""
        self.clock: Callable[[], float] = time.monotonic
        """What breakers and 429 cooldowns count their time by (monotonic seconds);
        replace it (a test's manual clock) to move time without waiting."""

    def _plan(self, model: str) -> list[ModelGroup]:
        plan = [self.groups[model]]
        for name in self.fallbacks.get(model, ()):
            plan.append(self.groups[name])
        return plan

    def embedding_plan(self, model: str) -> list[ModelGroup]:
        """The groups an embeddings call of `model` may go to: the group, then those of
        its fallbacks that serve embeddings."""
        return [group for group in self._plan(model) if group.embeds]

    async def _attempts(
        self,
        request: ChatRequest | EmbeddingRequest,
        call: Callable[[Deployment], Awaitable[T]],
        claim: Claim | None,
        hold: SpendHold | None,
        plan: list[ModelGroup] | None = None,
    ) -> tuple[Deployment, T, int]:
        """The deployment that answered, its answer, and how many attempts failed first."""
        last_error: AreionError | None = None
        failures = 0
        plan = self._plan(request.model) if plan is None else plan
        for position, group in enumerate(plan):
            if claim is not None and hold is not None:
                # Cover the group's dearest price before calling it: a fallback to a
                # dearer group must fit the budget, or it is not made. What the failed
                # group was covered for goes back first: failures are not billed, and a
                # call waiting for budget must not hold some.
                if position:
                    await claim.release()
                bound = group.dearest().cost(hold.prompt_tokens, hold.output_tokens)
                if not await claim.cover(bound):
                    what = f"calling '{group.name}'"
                    if position:
                        why = "is unavailable" if last_error is None else "failed"
                        if last_error is not None:
                            why += f" ({last_error.message})"
                        what = f"'{request.model}' {why}, and falling back to '{group.name}'"
                    raise claim.refusal(bound, what)
            if position:
                model = self.metrics.model(request.model)
                self.metrics.fallbacks.labels(model, group.name).inc()
            tried: list[Deployment] = []
            for attempt in range(self.retry.max_attempts):
                now = self.clock()
                deployment = pick_deployment(group, now, self.rng, tried)
                if deployment is None:
                    break
                if not deployment.breaker.acquire(now):
                    # Another call took the half-open probe between the pick and now.
                    tried.append(deployment)
                    continue
                if attempt:
                    deployment.metrics.retries.inc()
                deployment.outstanding += 1
                try:
                    result = await call(deployment)
                except RequestError:
                    deployment.breaker.release()
                    raise
                except UpstreamError as error:
                    deployment.metrics.error(_kind(error))
                    last_error = error
                    failures += 1
                    if isinstance(error, RateLimitedError):
                        # Throttling says nothing about health: honour it, don't trip the breaker.
                        deployment.breaker.release()
                        wait = error.retry_after or 0.0
                        deployment.cooldown_until = self.clock() + wait
                        if self.fleet is not None:
                            self.fleet.cooled(deployment)
                    else:
                        deployment.breaker.record_failure(self.clock())
                        wait = 0.0
                    if not error.retryable:
                        break
                    tried.append(deployment)
                    last_try = attempt + 1 >= self.retry.max_attempts
                    if not last_try and not await self._pause(group, tried, attempt, wait):
                        break
                    continue
                except BaseException:
                    deployment.breaker.release()
                    raise
                finally:
                    deployment.outstanding -= 1
                deployment.breaker.record_success()
                return deployment, result, failures
        raise self._final_error(request.model, plan, last_error)

    async def _pause(
        self, group: ModelGroup, tried: list[Deployment], attempt: int, retry_after: float
    ) -> bool:
        """Wait before the next attempt in `group`; False if the group should be left."""
        now = self.clock()
        untried = any(
            d not in tried and d.breaker.available(now) and d.cooldown_until <= now
            for d in group.deployments
        )
        if untried:
            return True  # another deployment can take it now: no reason to wait
        if retry_after > self.retry.max_retry_after:
            return False
        delay = backoff_delay(
            attempt, base=self.retry.backoff_base, cap=self.retry.backoff_max, rng=self.rng
        )
        delay = max(delay, retry_after)
        if delay:
            await asyncio.sleep(delay)
        return True

    def _final_error(
        self, model: str, plan: list[ModelGroup], last: AreionError | None
    ) -> AreionError:
        if isinstance(last, RateLimitedError):
            return last
        now = self.clock()
        waits = [
            max(d.breaker.retry_in(now), d.cooldown_until - now)
            for group in plan
            for d in group.deployments
        ]
        retry_after = max(0.0, min(waits)) if waits else None
        if last is None:
            return ProviderUnavailableError(
                f"no deployment of '{model}' (or its fallbacks) is available: "
                "circuit breakers are open",
                retry_after=retry_after,
            )
        if isinstance(last, ProviderTimeoutError):
            return last
        if isinstance(last, UpstreamError) and last.upstream_status in (None, 502, 503):
            return ProviderUnavailableError(
                f"every deployment of '{model}' (and its fallbacks) failed; last error: "
                f"{last.message}",
                retry_after=retry_after,
                upstream_status=last.upstream_status,
            )
        return last

    async def complete(
        self, request: ChatRequest, *, hold: SpendHold | None = None
    ) -> ChatResponse:
        """The answer from the first deployment that gives one; with a budget `hold`,
        each group tried is covered by it first."""

        async def call(deployment: Deployment) -> ChatResponse:
            return await self._whole(deployment, lambda: deployment.provider.complete(request))

        claim = hold.claim() if hold is not None else None
        deployment, response, failures = await self._attempts(request, call, claim, hold)
        response.deployment = deployment.id
        if failures:
            response.info["retries"] = failures
        return response

    async def embed(
        self, request: EmbeddingRequest, *, hold: SpendHold | None = None
    ) -> EmbeddingResponse:
        """The vectors from the first deployment that gives them, among the groups of
        `embedding_plan()` (the caller makes sure the first serves embeddings)."""

        async def call(deployment: Deployment) -> EmbeddingResponse:
            provider = deployment.provider
            assert isinstance(provider, EmbeddingProvider)  # the plan's groups all embed
            return await self._whole(deployment, lambda: provider.embed(request))

        claim = hold.claim() if hold is not None else None
        plan = self.embedding_plan(request.model)
        deployment, response, failures = await self._attempts(request, call, claim, hold, plan)
        response.deployment = deployment.id
        if failures:
            response.info["retries"] = failures
        return response

    async def _whole(self, deployment: Deployment, make: Callable[[], Awaitable[T]]) -> T:
        """One call answered whole, within the deployment's total timeout (and its capped
        slot over the replicas)."""
        holder = await self._take_slot(deployment)
        deadline = Deadline(deployment.config.total_timeout)
        try:
            return await make()
        except (asyncio.CancelledError, TimeoutError) as error:
            if deadline.caused(error) or isinstance(error, TimeoutError):
                raise ProviderTimeoutError(
                    f"deployment {deployment.id} did not answer within its total timeout "
                    f"({deployment.config.total_timeout}s)"
                ) from None
            raise
        finally:
            deadline.end()
            if holder is not None:
                await self._give_slot(deployment, holder)

    async def stream(
        self,
        request: ChatRequest,
        *,
        request_id: str,
        started: float,
        hold: SpendHold | None = None,
    ) -> ChatStream:
        """A stream whose first chunk has arrived; failures before it were retried.

        With a budget `hold`, each group tried is covered by it first, and the stream's
        output must stay covered as it grows (`OutputGuard`), or the stream stops."""

        async def call(
            deployment: Deployment,
        ) -> tuple[AsyncIterator[StreamChunk], StreamChunk, str | None]:
            holder = await self._take_slot(deployment)  # held until the stream ends
            iterator = deployment.provider.stream(request).__aiter__()
            deadline = Deadline(deployment.config.first_byte_timeout)
            try:
                first = await anext(iterator)
            except BaseException as error:
                # Ended before any other await, as asyncio.timeout's exit would be.
                timed_out = deadline.caused(error) or isinstance(error, TimeoutError)
                await _close(iterator)
                if holder is not None:
                    await self._give_slot(deployment, holder)
                if timed_out:
                    raise ProviderTimeoutError(
                        f"deployment {deployment.id} sent no first chunk within "
                        f"{deployment.config.first_byte_timeout}s"
                    ) from None
                if isinstance(error, StopAsyncIteration):
                    raise UpstreamError(
                        f"deployment {deployment.id} sent an empty stream"
                    ) from None
                raise
            deadline.end()
            return iterator, first, holder

        claim = hold.claim() if hold is not None else None
        attempt = await self._attempts(request, call, claim, hold)
        deployment, (iterator, first, holder), failures = attempt
        deployment.outstanding += 1
        deadline = (
            asyncio.get_running_loop().time()
            + deployment.config.total_timeout
            - (time.perf_counter() - started)
        )
        guard: OutputGuard | None = None
        if claim is not None and hold is not None and deployment.price.output > 0:
            guard = OutputGuard(
                claim,
                deployment.price,
                prompt_tokens=hold.prompt_tokens,
                cap=hold.max_output_tokens,
            )
        stream = ChatStream(
            self._rest(deployment, iterator, first, deadline, guard, holder),
            model=request.model,
            deployment=deployment.id,
            upstream_model=deployment.config.upstream_model,
            request_id=request_id,
            started=started,
            first_chunk_at=time.perf_counter(),
        )
        if claim is not None:
            stream.bound_usd = claim.amount
        if failures:
            stream.info["retries"] = failures
        return stream

    async def _rest(
        self,
        deployment: Deployment,
        iterator: AsyncIterator[StreamChunk],
        first: StreamChunk,
        deadline: float,
        guard: OutputGuard | None,
        holder: str | None,
    ) -> AsyncIterator[StreamChunk]:
        # The total timeout is checked as each chunk arrives; a stall between chunks
        # is bounded by the provider's read timeout (first_byte_timeout). A timer per
        # chunk would cost ~3 us each, on every chunk of every stream.
        loop = asyncio.get_running_loop()
        try:
            yield first
            if guard is not None and guard.passes(first) and not await guard.extend():
                yield self._cut(first, deployment, guard)
                return
            async for chunk in iterator:
                if loop.time() > deadline:
                    raise TimeoutError
                yield chunk
                # What arrived is paid for; what has not must be covered, or not be read.
                if guard is not None and guard.passes(chunk) and not await guard.extend():
                    yield self._cut(chunk, deployment, guard)
                    return
        except TimeoutError:
            deployment.metrics.error("upstream_timeout")
            raise StreamInterruptedError(
                f"deployment {deployment.id} exceeded its total timeout mid-stream"
            ) from None
        except AreionError as error:
            deployment.metrics.error(_kind(error))
            deployment.breaker.record_failure(self.clock())
            raise StreamInterruptedError(
                f"deployment {deployment.id} failed mid-stream: {error.message}"
            ) from error
        finally:
            deployment.outstanding -= 1
            await _close(iterator)
            if holder is not None:
                await self._give_slot(deployment, holder)

    async def _take_slot(self, deployment: Deployment) -> str | None:
        """In distributed mode, one of a capped deployment's slots over all replicas."""
        if self.fleet is None or deployment.config.max_concurrency is None:
            return None
        deadline = self.clock() + deployment.config.first_byte_timeout
        return await self.fleet.take_slot(deployment, deadline)

    async def _give_slot(self, deployment: Deployment, holder: str) -> None:
        assert self.fleet is not None
        await self.fleet.give_slot(deployment, holder)

    def _cut(self, last: StreamChunk, deployment: Deployment, guard: OutputGuard) -> StreamChunk:
        """The last chunk of a stream stopped before its end (see `OutputGuard`)."""
        reason = "max_tokens" if guard.past_cap else "budget"
        self.metrics.stream_stops.labels(deployment.group, deployment.id, reason).inc()
        return StreamChunk(
            id=last.id, model=last.model, created=last.created, finish_reason="length"
        )

    async def aclose(self) -> None:
        for deployment in self.deployments.values():
            await deployment.provider.aclose()


async def _close(iterator: AsyncIterator[StreamChunk]) -> None:
    closer = getattr(iterator, "aclose", None)
    if closer is not None:
        await closer()

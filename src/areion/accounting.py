"""Accounting stage: usage -> cost -> ledger and metrics, for every answered call.

A billed answer leaves only once its ledger row is committed (`Ledger.write`); a
stream leaves once its open row is, and the row is closed with the real figures
when the stream ends (see `telemetry.ledger`). What accounting books for a call is
also what its budget hold settles at (`control.holds.Hold.book`). An embeddings call
is booked the same way (`handle_embedding`): a row per upstream call, its input tokens
at the deployment's input price.
"""

from __future__ import annotations

import time

from areion.control.estimates import OutputEstimate
from areion.errors import AreionError
from areion.gateway.deployments import Deployment
from areion.pipeline import Call, EmbeddingCall, EmbeddingHandler, Handler, Result
from areion.pricing import cost
from areion.streaming import ChatStream
from areion.telemetry.ledger import Ledger, attribution
from areion.telemetry.metrics import Metrics
from areion.tokenizer import estimate_usage
from areion.types import ChatRequest, ChatResponse, EmbeddingResponse, LedgerEntry, Usage

__all__ = ["Accounting"]


def _output_text(response: ChatResponse) -> str:
    parts: list[str] = []
    for choice in response.choices:
        parts.append(choice.message.text())
        for call in choice.message.tool_calls or ():
            parts.append(call.name + call.arguments)
    return "".join(parts)


def _rough_prompt_tokens(request: ChatRequest) -> int:
    """About as many tokens as the prompt has, without encoding it (four characters a
    token): for an open row's estimate only, which a real count replaces."""
    return sum(len(m.text()) // 4 + 3 for m in request.messages) + 3


class Accounting:
    """Prices each answer, writes it to the ledger and counts it in metrics."""

    def __init__(
        self,
        deployments: dict[str, Deployment],
        ledger: Ledger,
        metrics: Metrics,
        outputs: OutputEstimate,
    ) -> None:
        self._deployments = deployments
        self._ledger = ledger
        self._metrics = metrics
        self._outputs = outputs

    async def handle(self, call: Call, call_next: Handler) -> Result:
        try:
            result = await call_next(call)
        except AreionError as error:
            self._metrics.error(call.request.model, "", error.code)
            raise
        deployment = self._deployments.get(result.deployment)
        if deployment is None:  # answered by a stage before the gateway
            return result
        if isinstance(result, ChatStream):
            # Its first byte leaves only once the ledger knows it may cost this much.
            await self._ledger.write(self._open_entry(call, deployment, result))
            result.on_finish(lambda stream, error: self._finish_stream(call, stream, error))
            return result
        usage = result.usage
        if usage is None:
            usage = result.usage = estimate_usage(call.request, _output_text(result))
        if result.cost_usd is None:
            result.cost_usd = cost(usage, deployment.price)
        entry = self._book(call, deployment, usage, result.cost_usd)
        book = call.annotations.get("book")
        if book is not None:
            book(entry)  # written with the batch line's answer, before it is stored
        else:
            await self._ledger.write(entry)
        return result

    async def handle_embedding(
        self, call: EmbeddingCall, call_next: EmbeddingHandler
    ) -> EmbeddingResponse:
        try:
            response = await call_next(call)
        except AreionError as error:
            self._metrics.error(call.request.model, "", error.code)
            raise
        deployment = self._deployments.get(response.deployment)
        if deployment is None:  # answered by a stage before the gateway
            return response
        usage = response.usage
        if usage is None:
            usage = response.usage = Usage(prompt_tokens=sum(call.tokens), estimated=True)
        if response.cost_usd is None:
            response.cost_usd = cost(usage, deployment.price)
        await self._ledger.write(self._book(call, deployment, usage, response.cost_usd))
        return response

    def _open_entry(self, call: Call, deployment: Deployment, stream: ChatStream) -> LedgerEntry:
        """The row of a stream that has just started: what it may cost, at most."""
        request = call.request
        bound = stream.bound_usd
        prompt = _rough_prompt_tokens(request)
        output = self._outputs.tokens(request.model, max_tokens=request.max_tokens, n=request.n)
        if bound is None:
            bound = cost(Usage(prompt_tokens=prompt, completion_tokens=output), deployment.price)
        return _entry(
            call,
            deployment,
            Usage(prompt_tokens=prompt, completion_tokens=output, estimated=True),
            bound,
            open=True,
        )

    def _finish_stream(self, call: Call, stream: ChatStream, error: BaseException | None) -> None:
        deployment = self._deployments.get(stream.deployment)
        if deployment is None:
            return
        usage = stream.usage
        if usage is None:
            # No usage chunk (the provider did not send one, or the stream broke or was
            # closed early): count what was received, so a cut stream is still paid for.
            usage = stream.usage = estimate_usage(call.request, "".join(stream.text_parts))
        if stream.cost_usd is None:
            stream.cost_usd = cost(usage, deployment.price)
        deployment.metrics.chat.ttft.observe(stream.ttft_s)
        entry = self._book(call, deployment, usage, stream.cost_usd, ok=error is None)
        self._ledger.close(entry)

    def _book(
        self,
        call: Call | EmbeddingCall,
        deployment: Deployment,
        usage: Usage,
        amount: float,
        *,
        ok: bool = True,
    ) -> LedgerEntry:
        """Count the call in metrics and in its budget hold; its ledger row."""
        metrics = deployment.metrics
        entry = _entry(call, deployment, usage, amount)
        embedding = isinstance(call, EmbeddingCall)
        metrics.answered(
            metrics.embeddings if embedding else metrics.chat,
            latency_s=entry.latency_s,
            prompt_tokens=usage.prompt_tokens,
            # An embedding has no output tokens.
            completion_tokens=None if embedding else usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            tenant=call.tenant,
            amount=amount,
            ok=ok,
        )
        hold = call.annotations.get("hold")
        if hold is not None:
            hold.book(amount)
        return entry


def _entry(
    call: Call | EmbeddingCall,
    deployment: Deployment,
    usage: Usage,
    amount: float,
    *,
    open: bool = False,
) -> LedgerEntry:
    return LedgerEntry(
        request_id=call.request_id,
        client_request_id=call.client_request_id,
        tenant=call.tenant,
        model=call.request.model,
        deployment=deployment.id,
        upstream_model=deployment.config.upstream_model,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        cost_usd=amount,
        estimated=usage.estimated,
        latency_s=time.perf_counter() - call.started,
        created=time.time(),
        open=open,
        kind="embedding" if isinstance(call, EmbeddingCall) else "chat",
        **attribution(call.annotations, call.request.user),
    )

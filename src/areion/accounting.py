"""Accounting stage: usage -> cost -> ledger and metrics, for every answered call."""

from __future__ import annotations

import time

from areion.errors import AreionError
from areion.gateway.deployments import Deployment
from areion.pipeline import Call, Handler, Result
from areion.pricing import cost
from areion.streaming import ChatStream
from areion.telemetry.ledger import Ledger
from areion.telemetry.metrics import Metrics
from areion.tokenizer import estimate_usage
from areion.types import ChatResponse, LedgerEntry, Usage

__all__ = ["Accounting"]


def _output_text(response: ChatResponse) -> str:
    parts: list[str] = []
    for choice in response.choices:
        parts.append(choice.message.text())
        for call in choice.message.tool_calls or ():
            parts.append(call.name + call.arguments)
    return "".join(parts)


class Accounting:
    """Prices each answer, writes it to the ledger and counts it in metrics."""

    def __init__(self, deployments: dict[str, Deployment], ledger: Ledger, metrics: Metrics):
        self._deployments = deployments
        self._ledger = ledger
        self._metrics = metrics

    async def handle(self, call: Call, call_next: Handler) -> Result:
        try:
            result = await call_next(call)
        except AreionError as error:
            self._metrics.error(call.request.model, "", error.code)
            raise
        if isinstance(result, ChatStream):
            result.on_finish(lambda stream, error: self._finish_stream(call, stream, error))
            return result
        deployment = self._deployments.get(result.deployment)
        if deployment is None:  # answered by a stage before the gateway
            return result
        usage = result.usage
        if usage is None:
            usage = result.usage = estimate_usage(call.request, _output_text(result))
        if result.cost_usd is None:
            result.cost_usd = cost(usage, deployment.price)
        self._book(call, deployment, usage, result.cost_usd, time.perf_counter() - call.started)
        return result

    def _finish_stream(self, call: Call, stream: ChatStream, error: BaseException | None) -> None:
        deployment = self._deployments.get(stream.deployment)
        if deployment is None:
            return
        usage = stream.usage
        if usage is None:
            # No usage chunk (the provider did not send one, or the stream broke):
            # count what was generated, so a broken stream is still paid for.
            usage = stream.usage = estimate_usage(call.request, "".join(stream.text_parts))
        if stream.cost_usd is None:
            stream.cost_usd = cost(usage, deployment.price)
        deployment.metrics.ttft.observe(stream.ttft_s)
        self._book(
            call,
            deployment,
            usage,
            stream.cost_usd,
            time.perf_counter() - call.started,
            ok=error is None,
        )

    def _book(
        self,
        call: Call,
        deployment: Deployment,
        usage: Usage,
        amount: float,
        latency: float,
        *,
        ok: bool = True,
    ) -> None:
        metrics = deployment.metrics
        if ok:
            metrics.ok.inc()
        metrics.duration.observe(latency)
        metrics.input_tokens.inc(usage.prompt_tokens)
        metrics.output_tokens.inc(usage.completion_tokens)
        if usage.cached_tokens:
            metrics.cached_tokens.inc(usage.cached_tokens)
        metrics.cost(call.tenant, amount)
        self._ledger.record(
            LedgerEntry(
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
                latency_s=latency,
                created=time.time(),
            )
        )

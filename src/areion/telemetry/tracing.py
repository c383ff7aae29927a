"""OpenTelemetry traces of model calls, agent runs and tool calls (GenAI conventions).

Imported only when tracing is on (`tracing:` in the config, or an `OTEL_EXPORTER_OTLP_*`
endpoint in the environment: `TracingConfig.active`). With it off the runtime holds
`tracing = None`: no stage, no middleware, no header hook, nothing of OpenTelemetry
imported; the request path pays a `None` check where an agent runs a tool, nothing else.

What a trace holds:

```
invoke_agent {agent}            INTERNAL  one per run (or resume) of an agent
├── chat {model}                CLIENT    one per model call (cache hits included)
├── execute_tool {tool}         INTERNAL  one per tool call, parallel calls side by side
└── chat {model}
```

A `chat` span covers the whole request path (admission, caches, routing, the gateway's
retries and fallbacks); a stream's ends with the stream. Its attributes are the GenAI
conventions' (`gen_ai.*`) and Areion's own (`areion.*`: cost, cache tier, route and
reason, deployment, retries, time to first token). Prompts, completions and tool
arguments and results are recorded only with `capture_content`.

A caller's W3C `traceparent` (and `tracestate`) is continued (`ContinueTrace`, the
server's outermost middleware), and the current span's context is sent upstream in a
`traceparent` header (`propagate`, the providers' HTTP transport), so one trace runs
from the client through Areion to the model server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Receive, Scope, Send

from areion._version import __version__
from areion.config import TracingConfig
from areion.errors import AreionError
from areion.pipeline import Call, EmbeddingCall, EmbeddingHandler, Handler, Result
from areion.streaming import ChatStream
from areion.types import ChatRequest, ChatResponse, EmbeddingResponse, Message

if TYPE_CHECKING:
    from areion.gateway.deployments import Deployment

__all__ = ["ContinueTrace", "Tracing", "TracingStage"]

_TRACES_PATH = "/v1/traces"

# gen_ai.provider.name: the conventions' names where one exists, else Areion's own.
_PROVIDERS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "sim": "areion.sim",
    "replay": "areion.replay",
    "local": "areion.local",
}


def _endpoint(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith(_TRACES_PATH) else base + _TRACES_PATH


def _resource(config: TracingConfig) -> Resource:
    """OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME, under the config's service name;
    `areion` when nothing names the service."""
    resource = Resource.create({})
    name = config.service_name
    if name is None and str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown"):
        name = "areion"
    if name is not None:
        resource = resource.merge(Resource({SERVICE_NAME: name}))
    return resource


def _error_type(error: BaseException) -> str:
    return error.code if isinstance(error, AreionError) and error.code else type(error).__name__


def _parts(message: Message) -> list[dict[str, Any]]:
    """A message's parts in the conventions' shape (text, tool calls, tool results)."""
    if message.role == "tool":
        return [
            {"type": "tool_call_response", "id": message.tool_call_id, "response": message.text()}
        ]
    parts: list[dict[str, Any]] = []
    text = message.text()
    if text:
        parts.append({"type": "text", "content": text})
    for call in message.tool_calls or ():
        parts.append(
            {"type": "tool_call", "id": call.id, "name": call.name, "arguments": call.arguments}
        )
    return parts


def _input_messages(request: ChatRequest) -> str:
    return orjson.dumps([{"role": m.role, "parts": _parts(m)} for m in request.messages]).decode()


def _output_messages(response: ChatResponse) -> str:
    return orjson.dumps(
        [
            {
                "role": "assistant",
                "parts": _parts(choice.message),
                "finish_reason": choice.finish_reason or "",
            }
            for choice in response.choices
        ]
    ).decode()


class Tracing:
    """The runtime's tracer: an OpenTelemetry `TracerProvider` of its own (the process's
    global one is left alone), exporting in batches over OTLP HTTP/protobuf."""

    def __init__(
        self,
        config: TracingConfig,
        deployments: Mapping[str, Deployment],
        *,
        exporter: SpanExporter | None = None,
    ) -> None:
        self.capture_content = config.capture_content
        """Whether prompts, completions and tool arguments and results go on spans."""
        self._deployments = deployments
        if exporter is None:
            exporter = OTLPSpanExporter(
                endpoint=None if config.endpoint is None else _endpoint(config.endpoint),
                # Empty: the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)HEADERS.
                headers={k: v.get_secret_value() for k, v in config.headers.items()} or None,
                timeout=config.timeout_s,
            )
        sampler = None  # the SDK's: OTEL_TRACES_SAMPLER, else parent-based always-on
        if config.sample_ratio is not None:
            sampler = ParentBased(TraceIdRatioBased(config.sample_ratio))
        self.provider = TracerProvider(resource=_resource(config), sampler=sampler)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("areion", __version__)
        self._propagator = TraceContextTextMapPropagator()

    # -- model calls --------------------------------------------------------------

    def stage(self) -> TracingStage:
        """The request path's first stage: a `chat` span around each call."""
        return TracingStage(self)

    def provider_name(self, deployment: str, model: str) -> str:
        """gen_ai.provider.name of the deployment that answered; for an answer no
        deployment gave (a cache hit, the solver), that of the group asked for."""
        found = self._deployments.get(deployment)
        if found is None:
            found = next((d for d in self._deployments.values() if d.group == model), None)
        if found is None:
            return "areion"
        kind = found.config.provider
        return _PROVIDERS.get(kind, kind)

    def start_call(self, call: Call) -> Span:
        request = call.request
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": request.model,
            "areion.tenant": call.tenant,
            "areion.request_id": call.request_id,
        }
        variant = call.annotations.get("variant")
        if variant:
            attributes["areion.experiment"] = variant
        if request.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = request.max_tokens
        if request.temperature is not None:
            attributes["gen_ai.request.temperature"] = request.temperature
        if request.top_p is not None:
            attributes["gen_ai.request.top_p"] = request.top_p
        span = self.tracer.start_span(
            f"chat {request.model}", kind=SpanKind.CLIENT, attributes=attributes
        )
        if self.capture_content and span.is_recording():  # not serialized for a dropped span
            span.set_attribute("gen_ai.input.messages", _input_messages(request))
        return span

    def end_call(self, span: Span, call: Call, result: Result) -> None:
        """The answer's attributes, and the span's end (a stream's when it ends)."""
        if not span.is_recording():
            return  # not sampled: nothing to record, nothing to end
        if isinstance(result, ChatStream):
            result.on_finish(lambda stream, error: self._end_stream(span, call, stream, error))
            return
        usage = result.usage
        attributes: dict[str, Any] = {
            "gen_ai.provider.name": self.provider_name(result.deployment, call.request.model),
            "gen_ai.response.model": result.model,
            "gen_ai.response.finish_reasons": [
                c.finish_reason for c in result.choices if c.finish_reason is not None
            ],
            "areion.deployment": result.deployment,
            "areion.cache": result.cache or "miss",
            "areion.cost_usd": result.cost_usd or 0.0,
        }
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
            if usage.cached_tokens:
                attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_tokens
        if self.capture_content:
            attributes["gen_ai.output.messages"] = _output_messages(result)
        self._info(attributes, result.info)
        span.set_attributes(attributes)
        span.end()

    def _end_stream(
        self, span: Span, call: Call, stream: ChatStream, error: BaseException | None
    ) -> None:
        usage = stream.usage
        attributes: dict[str, Any] = {
            "gen_ai.provider.name": self.provider_name(stream.deployment, call.request.model),
            "gen_ai.response.model": stream.upstream_model,
            "areion.deployment": stream.deployment,
            "areion.cache": str(stream.info.get("cache", "miss")),
            "areion.cost_usd": stream.cost_usd or 0.0,
            "areion.ttft_s": stream.ttft_s,
        }
        if stream.finish_reason is not None:
            attributes["gen_ai.response.finish_reasons"] = [stream.finish_reason]
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
            if usage.cached_tokens:
                attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_tokens
        if self.capture_content:
            output = {
                "role": "assistant",
                "parts": [{"type": "text", "content": "".join(stream.text_parts)}],
                "finish_reason": stream.finish_reason or "",
            }
            attributes["gen_ai.output.messages"] = orjson.dumps([output]).decode()
        self._info(attributes, stream.info)
        span.set_attributes(attributes)
        if error is not None:
            _failed(span, error)
        span.end()

    @staticmethod
    def _info(attributes: dict[str, Any], info: Mapping[str, Any]) -> None:
        """What the request path noted: route and reason, retries, queue wait."""
        if "route" in info:
            attributes["areion.route"] = str(info["route"])
            attributes["areion.route.reason"] = str(info.get("route_reason", ""))
        attributes["areion.retries"] = int(info.get("retries", 0))
        if "queue_wait_s" in info:
            attributes["areion.queue_wait_s"] = float(info["queue_wait_s"])

    def start_embedding(self, call: EmbeddingCall) -> Span:
        request = call.request
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "embeddings",
            "gen_ai.request.model": request.model,
            "areion.tenant": call.tenant,
            "areion.request_id": call.request_id,
            "areion.inputs": len(request.input),
        }
        if request.dimensions is not None:
            attributes["gen_ai.embeddings.dimension.count"] = request.dimensions
        return self.tracer.start_span(
            f"embeddings {request.model}", kind=SpanKind.CLIENT, attributes=attributes
        )

    def end_embedding(self, span: Span, call: EmbeddingCall, response: EmbeddingResponse) -> None:
        if not span.is_recording():
            return
        attributes: dict[str, Any] = {
            "gen_ai.provider.name": self.provider_name(response.deployment, call.request.model),
            "gen_ai.response.model": response.model,
            "areion.deployment": response.deployment,
            "areion.cache": response.cache or "miss",
            "areion.cost_usd": response.cost_usd or 0.0,
        }
        if response.vectors:
            attributes["gen_ai.embeddings.dimension.count"] = len(response.vectors[0])
        if response.usage is not None:
            attributes["gen_ai.usage.input_tokens"] = response.usage.prompt_tokens
        self._info(attributes, response.info)
        span.set_attributes(attributes)
        span.end()

    # -- agents and tools ---------------------------------------------------------

    @contextlib.contextmanager
    def invoke_agent(
        self,
        *,
        agent: str,
        model: str,
        run_id: str,
        tenant: str,
        session: str | None,
        resumed: bool,
        variant: str = "",
    ) -> Iterator[Span]:
        """The span of one run (or resume) of an agent, current while it runs: its model
        and tool calls are its children."""
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": agent,
            "gen_ai.request.model": model,
            "areion.run_id": run_id,
            "areion.tenant": tenant,
            "areion.run.resumed": resumed,
        }
        if session is not None:
            attributes["gen_ai.conversation.id"] = session
        if variant:
            attributes["areion.experiment"] = variant
        with self._current(f"invoke_agent {agent}", SpanKind.INTERNAL, attributes) as span:
            yield span

    @staticmethod
    def agent_done(
        span: Span,
        *,
        status: str,
        steps: int,
        cost_usd: float,
        input_tokens: int,
        output_tokens: int,
    ) -> None:
        """Where the run ended up, on its span."""
        span.set_attributes(
            {
                "areion.run.status": status,
                "areion.run.steps": steps,
                "areion.cost_usd": cost_usd,
                "gen_ai.usage.input_tokens": input_tokens,
                "gen_ai.usage.output_tokens": output_tokens,
            }
        )
        if status == "failed":
            span.set_status(StatusCode.ERROR, "the run failed")

    @contextlib.contextmanager
    def execute_tool(self, *, name: str, call_id: str, arguments: str) -> Iterator[Span]:
        """The span of one tool call, current while the tool runs."""
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.call.id": call_id,
            "gen_ai.tool.type": "function",
        }
        if self.capture_content:
            attributes["gen_ai.tool.call.arguments"] = arguments
        with self._current(f"execute_tool {name}", SpanKind.INTERNAL, attributes) as span:
            yield span

    def tool_done(self, span: Span, *, result: str, error: str | None, cached: bool) -> None:
        """A tool call's outcome, on its span."""
        span.set_attribute("areion.tool.cached", cached)
        if self.capture_content:
            span.set_attribute("gen_ai.tool.call.result", result)
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(StatusCode.ERROR, error)

    @contextlib.contextmanager
    def _current(self, name: str, kind: SpanKind, attributes: dict[str, Any]) -> Iterator[Span]:
        span = self.tracer.start_span(name, kind=kind, attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield span
        except BaseException as error:
            _failed(span, error)
            raise
        finally:
            otel_context.detach(token)
            span.end()

    # -- propagation --------------------------------------------------------------

    def propagate(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        """`headers` with the current span's `traceparent` (and `tracestate`) added, for
        an upstream call; unchanged outside any span."""
        carrier = dict(headers)
        self._propagator.inject(carrier)
        return carrier

    def incoming(self, headers: Iterable[tuple[bytes, bytes]]) -> otel_context.Context | None:
        """The context of a request's `traceparent` (and `tracestate`), if it has one."""
        carrier: dict[str, str] = {}
        for name, value in headers:
            if name in (b"traceparent", b"tracestate"):
                carrier[name.decode()] = value.decode("latin-1")
        if "traceparent" not in carrier:
            return None
        return self._propagator.extract(carrier)

    # -- lifecycle ----------------------------------------------------------------

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Export every span ended so far (blocking); False if it timed out."""
        return self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Export what is left and stop the exporter's thread (blocking)."""
        self.provider.shutdown()


def _failed(span: Span, error: BaseException) -> None:
    span.set_attribute("error.type", _error_type(error))
    message = error.message if isinstance(error, AreionError) else str(error)
    span.set_status(StatusCode.ERROR, message[:500])


@contextlib.contextmanager
def _current_until_error(span: Span) -> Iterator[None]:
    """`span` current for the block; on an error, failed and ended. On success it is
    left open: a call's span ends with its answer, which for a stream is later."""
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    except BaseException as error:
        _failed(span, error)
        span.end()
        raise
    finally:
        otel_context.detach(token)


class TracingStage:
    """The request path's first stage when tracing is on: one `chat {model}` span per
    call (`embeddings {model}` in the embeddings chain), current while the later stages
    and the gateway run (so the upstream call carries it), ended when the answer is
    complete."""

    def __init__(self, tracing: Tracing) -> None:
        self._tracing = tracing

    async def handle_embedding(
        self, call: EmbeddingCall, call_next: EmbeddingHandler
    ) -> EmbeddingResponse:
        tracing = self._tracing
        span = tracing.start_embedding(call)
        with _current_until_error(span):
            response = await call_next(call)
        tracing.end_embedding(span, call, response)
        return response

    async def handle(self, call: Call, call_next: Handler) -> Result:
        tracing = self._tracing
        span = tracing.start_call(call)
        with _current_until_error(span):
            result = await call_next(call)
        tracing.end_call(span, call, result)
        return result


class ContinueTrace:
    """ASGI middleware: a request's `traceparent` is the parent of whatever it starts
    (a model call's span, an agent run's), in this task and the tasks it creates."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self._tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        parent = None
        if scope["type"] == "http":
            parent = self._tracing.incoming(scope["headers"])
        if parent is None:
            await self.app(scope, receive, send)
            return
        token = otel_context.attach(parent)
        try:
            await self.app(scope, receive, send)
        finally:
            otel_context.detach(token)

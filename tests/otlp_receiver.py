"""A test OTLP/HTTP trace receiver: a real HTTP server on loopback that takes
`POST /v1/traces` (protobuf), decodes each body with opentelemetry-proto's
`ExportTraceServiceRequest`, and keeps the spans for a test to read."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in value.kvlist_value.values}
    return None if kind is None else getattr(value, kind)


@dataclass(slots=True, kw_only=True)
class ReceivedSpan:
    """One span as it arrived."""

    name: str
    """The span's name."""
    trace_id: str
    """32 hex digits."""
    span_id: str
    """16 hex digits."""
    parent_span_id: str
    """16 hex digits; empty for a root span."""
    kind: str
    """SERVER, CLIENT, INTERNAL..."""
    attributes: dict[str, Any]
    """Its attributes, decoded."""
    error: bool
    """Whether its status is ERROR."""
    resource: dict[str, Any] = field(default_factory=dict)
    """The attributes of the resource that sent it (service.name...)."""
    start_ns: int = 0
    """Start time, Unix nanoseconds."""
    end_ns: int = 0
    """End time, Unix nanoseconds."""


class OtlpReceiver:
    """Serves on 127.0.0.1 (a free port) in a thread, while used as a context manager."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                receiver._take(body, dict(self.headers.items()))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        """The OTLP/HTTP base URL (the exporter adds /v1/traces)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _take(self, body: bytes, headers: dict[str, str]) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans: list[ReceivedSpan] = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        ReceivedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=ProtoSpan.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            error=span.status.code == Status.STATUS_CODE_ERROR,
                            resource=resource,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                        )
                    )
        with self._lock:
            self.requests += 1
            self.headers.append({k.lower(): v for k, v in headers.items()})
            self.spans.extend(spans)

    def named(self, prefix: str) -> list[ReceivedSpan]:
        """The spans whose name starts with `prefix`."""
        with self._lock:
            return [span for span in self.spans if span.name.startswith(prefix)]

    def traces(self) -> dict[str, list[ReceivedSpan]]:
        """The spans by trace id."""
        found: dict[str, list[ReceivedSpan]] = {}
        with self._lock:
            for span in self.spans:
                found.setdefault(span.trace_id, []).append(span)
        return found

    def __iter__(self) -> Iterator[ReceivedSpan]:
        with self._lock:
            return iter(list(self.spans))

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

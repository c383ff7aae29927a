"""The request log: one line per request, for the operator of `areion serve`.

`AccessLog` (the outermost middleware) writes, when a request's answer has been sent
(a stream: when it ends), a line on the `areion.access` logger: method, path, status,
latency, Areion's request id and the client's, tenant, key label, model, deployment,
cost, cache outcome and, for an error, its code. As text (`key=value` pairs) or as one
JSON object a line (`server.log_format: json`, `areion serve --log-format json`).

What it may write is chosen field by field, so a key never appears: the tenant and the
key's label come from the authenticated identity, never from a header; the path is
written without its query string; values a client chose (model, path, client id) are
clipped and stripped of control characters, so they cannot forge a line. Successful
`GET /healthz` and `/metrics` (probes and scrapes) are not logged.

The handlers add what only they know with `note(scope, ...)`; `EventStream` notes the
stream, whose cost and cache outcome are read once it has ended.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any, Literal

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from areion.control.keys import Identity
from areion.pricing import usd_text

__all__ = [
    "ACCESS_LOGGER",
    "AccessLog",
    "LogFormat",
    "configure_access_log",
    "inner_send",
    "note",
    "sent_past",
]

ACCESS_LOGGER = "areion.access"
"""The logger of the request lines."""

LogFormat = Literal["text", "json"]

_RECORD = "areion.access"  # the scope key of a request's record
_WRAPS = "areion.access.wraps"  # the scope key of (the log's send, the send it wraps)
_SENT = "areion.sent"  # the record's key of the status of an answer sent past the log
_IDENTITY = "areion.identity"  # set by the app's authentication middleware
_QUIET = ("/healthz", "/metrics")
_ANSWER_HEADERS = {
    b"x-request-id": "request_id",
    b"x-areion-model": "deployment",
    b"x-areion-cost-usd": "cost_usd",
    b"x-areion-cache": "cache",
}
_ANSWER_FIELDS = {name.decode(): field for name, field in _ANSWER_HEADERS.items()}
_UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f\"\\]")
_CLIP = 200

log = logging.getLogger(ACCESS_LOGGER)


def note(scope: Scope, **fields: Any) -> None:
    """Add what a handler knows (model, request id, error, the stream) to the line of
    the request in `scope` (nothing if the request log is off)."""
    record = scope.get(_RECORD)
    if record is not None:
        record.update(fields)


def inner_send(scope: Scope, send: Send) -> Send | None:
    """The send that `send` passes messages on to, when `send` is the request log's own;
    else None. An answer written past the log, to it, tells the log (`sent_past`)."""
    wraps = scope.get(_WRAPS)
    return wraps[1] if wraps is not None and wraps[0] is send else None


def sent_past(scope: Scope, status: int, headers: dict[str, str]) -> None:
    """The answer of the request in `scope` was written whole past the log's send: its
    `status` and `headers` (by lower-case name), as the log's send would have seen them."""
    record = scope[_RECORD]
    record[_SENT] = status
    for name, field in _ANSWER_FIELDS.items():
        value = headers.get(name)
        if value is not None and field not in record:
            record[field] = value


def _clean(value: object) -> str:
    """A value a client may have chosen, safe on one line and clipped."""
    text = str(value)[:_CLIP]
    return _UNSAFE.sub("_", text)


class AccessLog:
    """ASGI middleware: one `areion.access` line per HTTP request."""

    def __init__(self, app: ASGIApp, *, format: LogFormat = "text") -> None:
        self.app = app
        self.format = format

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        record: dict[str, Any] = {}
        scope[_RECORD] = record
        status = 0
        ended = False

        async def watched(message: Message) -> None:
            nonlocal status, ended
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    field = _ANSWER_HEADERS.get(name)
                    if field is not None and field not in record:
                        record[field] = value.decode("latin-1")
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                ended = True
            await send(message)

        scope[_WRAPS] = (watched, send)
        try:
            await self.app(scope, receive, watched)
        except BaseException:
            # The answer was cut short (the app raised after it had started).
            record.setdefault("error", "interrupted")
            self._write(scope, record, status or 500, started)
            raise
        sent = record.pop(_SENT, None)
        if sent is not None:  # written whole past `watched` (`sent_past`)
            status, ended = sent, True
        if not ended:
            record.setdefault("error", "client_disconnected")
        # 499 (nginx's "client closed request") when the client left before any answer.
        self._write(scope, record, status or 499, started)

    def _write(self, scope: Scope, record: dict[str, Any], status: int, started: float) -> None:
        path = scope["path"]
        if status < 400 and path in _QUIET:
            return
        latency_ms = (time.perf_counter() - started) * 1000.0
        identity = scope.get(_IDENTITY)
        fields: dict[str, Any] = {
            "time": _utc(time.time()),
            "request_id": record.get("request_id"),
            "method": scope["method"],
            "path": _clean(path),
            "status": status,
            "latency_ms": round(latency_ms, 3),
        }
        if isinstance(identity, Identity):
            fields["tenant"] = identity.tenant
            fields["key"] = identity.key
        else:
            fields["tenant"] = fields["key"] = None
        model = record.get("model")
        fields["model"] = None if model is None else _clean(model)
        stream = record.get("stream")
        fields["deployment"] = record.get("deployment")
        cost = record.get("cost_usd")
        cache = record.get("cache")
        if stream is not None:
            if stream.cost_usd is not None:
                cost = usd_text(stream.cost_usd)
            cache = str(stream.info.get("cache", cache or "miss"))
        fields["cost_usd"] = cost
        fields["cache"] = cache
        fields["error"] = record.get("error")
        client_id = _client_request_id(scope)
        if client_id:
            fields["client_request_id"] = _clean(client_id)
        if self.format == "json":
            line = orjson.dumps(fields).decode()
        else:
            line = " ".join([f"{name}={'-' if v is None else v}" for name, v in fields.items()])
        # `log.info`, but for the frames logging walks to find the caller (file, line and
        # function: this one, every time), which no request line shows.
        log.handle(log.makeRecord(ACCESS_LOGGER, logging.INFO, "", 0, line, (), None))


def _utc(now: float) -> str:
    """`now` as ISO 8601 UTC to the millisecond."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
    return f"{seconds}.{int(now % 1 * 1000):03d}Z"


def _client_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            return str(value.decode("latin-1"))
    return None


def configure_access_log(level: str = "info", *, stream: Any = None) -> None:
    """Send the request lines, and only their text, to `stream` (default stderr), as
    `areion serve` does; they are at level info, so a `level` above it (warning,
    error, critical) turns them off. Other loggers are left alone."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False

"""What every model-call endpoint shares, whatever API it speaks: the caller's
`CallOptions` from the request's headers, the answer's `x-areion-*` headers, and an
error's headers (`Retry-After`, `x-ratelimit-*`, `x-should-retry`).

`x-should-retry` tells the openai and anthropic SDKs whether to retry on their own
(both honour it before their own rules). Areion has already retried an upstream
failure (`retry.max_attempts`, other deployments, fallbacks), so every
`UpstreamError` says `false`: SDK retries on top would multiply the calls upstream
by the SDK's attempts. Areion's own refusals (rate limits 429, budgets 402, lanes and
shared backends 503) were never tried upstream and carry no header: the SDKs' own
rules apply (they retry 429 and 503 after `Retry-After`, and never 402).
"""

from __future__ import annotations

import math
from typing import Any

from starlette.types import Scope

from areion.control.limits import RateReport
from areion.errors import (
    AreionError,
    LimitError,
    ProviderUnavailableError,
    RateLimitedError,
    UpstreamError,
)
from areion.pricing import usd_text
from areion.runtime import CallOptions, new_request_id
from areion.server.access import note
from areion.streaming import ChatStream
from areion.types import ChatResponse

__all__ = [
    "answer_headers",
    "call_options",
    "error_headers",
    "info_headers",
    "request_headers",
]


def request_headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by (lower-case) name, the first of a repeated one, made
    once per request: a Starlette `Headers` lookup scans them all, every time."""
    found: dict[bytes, bytes] | None = scope.get(_HEADERS)
    if found is None:
        found = scope[_HEADERS] = dict(reversed(scope["headers"]))
    return found


_HEADERS = "areion.headers"


def call_options(
    scope: Scope, tenant: str, key: str | None, model: str | None = None
) -> CallOptions:
    """The options of a model call of `model` asked for by the request of `scope`, from tenant
    `tenant` with the key labelled `key`: a new request id of Areion's own, and the
    client's id, cache control, tier, tags, priority and end user from its headers. The
    request id and model go on the request's log line."""
    # Areion's own id names the call (ledger, cache feedback): a client's id is its
    # own choice, and another tenant could choose the same one. It is kept beside.
    headers = request_headers(scope)
    request_id = new_request_id()
    note(scope, request_id=request_id, model=model)
    if not _OPTION_HEADERS.intersection(headers):  # the common call: none of them
        return CallOptions(tenant=tenant, request_id=request_id, key=key)
    tags = [t.strip() for t in _header(headers, b"x-areion-tags").split(",")]
    return CallOptions(
        tenant=tenant,
        request_id=request_id,
        client_request_id=_header(headers, b"x-request-id")[:128],
        cache=headers[b"x-areion-cache"].decode("latin-1")
        if b"x-areion-cache" in headers
        else None,
        tier=_header(headers, b"x-areion-tier") or None,
        tags=[t for t in tags if t],
        key=key,
        priority=_header(headers, b"x-areion-priority") or None,
        user=_header(headers, b"x-areion-user")[:128] or None,
        session=_header(headers, b"x-areion-session")[:128] or None,
    )


_OPTION_HEADERS = frozenset(
    {
        b"x-areion-tags",
        b"x-request-id",
        b"x-areion-cache",
        b"x-areion-tier",
        b"x-areion-priority",
        b"x-areion-user",
        b"x-areion-session",
    }
)


def _header(headers: dict[bytes, bytes], name: bytes) -> str:
    return headers.get(name, b"").decode("latin-1")


def answer_headers(answer: ChatResponse | ChatStream, options: CallOptions) -> dict[str, str]:
    """The headers of an answer: which deployment answered, whether a cache did, what it
    cost (a stream's cost is known only at its end, and goes in its last event), the
    request ids, and what the request path noted (`info_headers`)."""
    assert options.request_id is not None
    headers = {"x-areion-model": answer.deployment, "x-request-id": options.request_id}
    if options.client_request_id:
        headers["x-client-request-id"] = options.client_request_id
    if isinstance(answer, ChatStream):
        headers["x-areion-cache"] = str(answer.info.get("cache", "miss"))
    else:
        headers["x-areion-cost-usd"] = usd_text(answer.cost_usd or 0.0)
        headers["x-areion-cache"] = answer.cache or "miss"
    headers.update(info_headers(answer.info))
    return headers


_INFO_HEADERS = {
    "entry": "x-areion-cache-entry",  # the semantic cache entry that answered
    "score": "x-areion-cache-score",  # and how sure its verifier was
    "route": "x-areion-route",  # the route asked for
    "route_reason": "x-areion-route-reason",  # why it picked the model it did
    "experiment": "x-areion-experiment",  # experiment:variant that served the call
}


def info_headers(info: dict[str, Any]) -> dict[str, str]:
    """Response headers for what the request path noted about the call."""
    if not info:  # a plain call noted nothing
        return {}
    headers = {header: str(info[key]) for key, header in _INFO_HEADERS.items() if key in info}
    report = info.get("ratelimit")
    if isinstance(report, RateReport):
        headers.update(report.headers())
    return headers


def error_headers(error: AreionError) -> dict[str, str]:
    """The headers of an error answer: `Retry-After` when waiting helps, the limit's
    `x-ratelimit-*`, and `x-should-retry: false` for an upstream failure Areion has
    already retried (see the module's docstring)."""
    headers: dict[str, str] = {}
    retry_after = getattr(error, "retry_after", None)
    if isinstance(error, LimitError):
        headers.update(error.headers)
        if retry_after is not None:
            # Rounded up: a client that waits this long finds room.
            headers.setdefault("retry-after", str(max(1, math.ceil(retry_after))))
    elif isinstance(error, RateLimitedError | ProviderUnavailableError):
        # Always tell a throttled client when to come back, even if upstream did not.
        headers["retry-after"] = str(max(1, round(retry_after or 1)))
    elif retry_after:
        headers["retry-after"] = str(max(1, round(retry_after)))
    if isinstance(error, UpstreamError):
        headers["x-should-retry"] = "false"
    return headers

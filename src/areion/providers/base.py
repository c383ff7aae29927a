"""The provider seam: one deployment's way of answering a chat request.

A provider is built from one `ModelConfig` and knows its upstream model id, its
endpoint and its credentials. It does not retry, balance or fall back (the gateway
does); it turns one request into one answer, or raises an `AreionError` that says
what went wrong, so the gateway can decide whether another attempt may help.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

import httpx

from areion.config import ModelConfig
from areion.errors import (
    AreionError,
    ProviderTimeoutError,
    RateLimitedError,
    RequestError,
    UpstreamError,
)
from areion.types import ChatRequest, ChatResponse, StreamChunk

__all__ = [
    "Provider",
    "error_from_status",
    "error_from_transport",
    "http_client",
    "parse_retry_after",
]


@runtime_checkable
class Provider(Protocol):
    """Answers chat requests for one deployment."""

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """The whole answer at once."""
        ...

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        """The answer as chunks; the last chunk carries usage when the provider reports it."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def http_client(config: ModelConfig) -> httpx.AsyncClient:
    """A pooled client with the deployment's connect and first-byte timeouts.

    httpx's read timeout bounds the wait for each byte: for a plain call that is
    the wait for the answer to start, for a stream the longest stall between chunks.
    The total timeout is the gateway's.
    """
    timeout = httpx.Timeout(
        connect=config.connect_timeout,
        read=config.first_byte_timeout,
        write=config.connect_timeout,
        pool=config.connect_timeout,
    )
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
    return httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_status(
    status: int, detail: str, *, deployment: str, retry_after: float | None = None
) -> AreionError:
    """The error for an upstream HTTP status.

    A 4xx the caller caused (bad parameters, context too long) comes back as a
    `RequestError`: another deployment would refuse it too, so it is not retried.
    """
    detail = detail.strip()[:500] or "(no detail)"
    if status == 429:
        return RateLimitedError(
            f"deployment {deployment} is rate limited: {detail}", retry_after=retry_after
        )
    if status in (401, 403):
        return UpstreamError(
            f"deployment {deployment} rejected Areion's credentials (HTTP {status}); "
            f"check its api_key: {detail}",
            upstream_status=status,
        )
    if status in (408,):
        return ProviderTimeoutError(
            f"deployment {deployment} timed out (HTTP {status})", upstream_status=status
        )
    if status == 404:
        return UpstreamError(
            f"deployment {deployment} does not know the model or path (HTTP 404): {detail}",
            upstream_status=status,
        )
    if 400 <= status < 500:
        error = RequestError(f"upstream refused the request (HTTP {status}): {detail}")
        return error
    return UpstreamError(
        f"deployment {deployment} failed (HTTP {status}): {detail}", upstream_status=status
    )


def error_from_transport(error: httpx.HTTPError, *, deployment: str) -> AreionError:
    """The error for a failure below HTTP (connect, timeout, broken connection)."""
    if isinstance(error, httpx.ConnectTimeout):
        return ProviderTimeoutError(f"deployment {deployment}: connect timed out")
    if isinstance(error, httpx.TimeoutException):
        return ProviderTimeoutError(
            f"deployment {deployment}: no answer within the first-byte timeout"
        )
    if isinstance(error, httpx.ConnectError):
        return UpstreamError(f"deployment {deployment}: cannot connect ({error})")
    return UpstreamError(f"deployment {deployment}: {type(error).__name__}: {error}")

"""The provider seam: one deployment's way of answering a chat request.

A provider is built from one `ModelConfig` and knows its upstream model id, its
endpoint and its credentials. It does not retry, balance or fall back (the gateway
does); it turns one request into one answer, or raises an `AreionError` that says
what went wrong, so the gateway can decide whether another attempt may help.

Serving embeddings is an optional capability: a provider that has `embed()` is an
`EmbeddingProvider` (`openai`, `local`); the others (`anthropic`, `sim`, `replay`)
answer chat only.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Protocol, runtime_checkable

import orjson

from areion.config import ModelConfig
from areion.errors import (
    AreionError,
    ProviderTimeoutError,
    RateLimitedError,
    RequestError,
    UpstreamError,
)
from areion.providers.http1 import ConnectError, ConnectTimeoutError, Http1Pool
from areion.redact import redact
from areion.types import ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, StreamChunk

__all__ = [
    "EmbeddingProvider",
    "HttpTransport",
    "Provider",
    "credentials",
    "error_detail",
    "error_from_status",
    "error_from_transport",
    "parse_retry_after",
    "retry_after_of",
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


@runtime_checkable
class EmbeddingProvider(Protocol):
    """A provider that also serves embeddings (`isinstance(provider, EmbeddingProvider)`)."""

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        """One vector per input, in input order, and the usage the upstream reported."""
        ...


class HttpTransport:
    """One deployment's pooled HTTP connections (`providers.http1`), opened on first use.

    Neither httpx nor aiohttp on the hot path: measured in `bench/`, httpx's pool
    spent most of a call's CPU in its own bookkeeping under concurrency, and
    aiohttp about 100 us a call, a quarter of the server's; `http1` does what a
    deployment's calls need for a third of that. The pool belongs to the event loop
    that first used it; a transport used from a new loop opens a new pool.
    """

    def __init__(self, config: ModelConfig, *, deployment: str) -> None:
        self.deployment = deployment
        # What this deployment is sent, and so what its answers might echo back.
        self.secrets = credentials(config)
        # The read timeout bounds each wait for bytes: the wait for an answer to start,
        # and the longest stall between stream chunks. The total timeout is the gateway's.
        self._connect_timeout = config.connect_timeout
        self._read_timeout = config.first_byte_timeout
        self._pool: Http1Pool | None = None
        self.propagate: Callable[[Mapping[str, str]], Mapping[str, str]] | None = None
        """Adds the trace context to a request's headers (set when tracing is on)."""

    def _open(self) -> Http1Pool:
        loop = asyncio.get_running_loop()
        pool = self._pool
        if pool is None or pool.loop is not loop or pool.closed:
            pool = self._pool = Http1Pool(
                loop, connect_timeout=self._connect_timeout, read_timeout=self._read_timeout
            )
        return pool

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        """POST and return the body of a 200 answer; any other answer raises."""
        if self.propagate is not None:
            headers = self.propagate(headers)
        try:
            response = await self._open().post(url, body, headers)
            try:
                content = await response.read()
            except BaseException:
                response.close()
                raise
        except _TRANSPORT_ERRORS as error:
            raise error_from_transport(
                error, deployment=self.deployment, secrets=self.secrets
            ) from None
        if response.status != 200:
            raise self._status_error(response.status, response.headers, content)
        return content

    async def post_lines(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> AsyncIterator[list[bytes]]:
        """POST and yield the lines of a 200 answer as they arrive (a stream), those of
        each read together (`Response.lines`)."""
        if self.propagate is not None:
            headers = self.propagate(headers)
        try:
            response = await self._open().post(url, body, headers)
            try:
                if response.status != 200:
                    content = await response.read()
                    raise self._status_error(response.status, response.headers, content)
                # Read to the very end even after the stream's last event, so the
                # connection goes back to the pool instead of being closed.
                async for lines in response.lines():
                    yield lines
            finally:
                response.close()  # closes the connection unless the answer was read whole
        except _TRANSPORT_ERRORS as error:
            raise error_from_transport(
                error, deployment=self.deployment, secrets=self.secrets
            ) from None

    def _status_error(self, status: int, headers: Mapping[str, str], content: bytes) -> AreionError:
        return error_from_status(
            status,
            error_detail(content),
            deployment=self.deployment,
            retry_after=retry_after_of(headers),
            secrets=self.secrets,
        )

    def redact(self, text: str) -> str:
        """Upstream text with this deployment's credentials, and anything key-like, masked."""
        return redact(text, self.secrets)

    async def aclose(self) -> None:
        if self._pool is not None:
            # A RuntimeError means its event loop is gone, and the sockets went with it.
            with contextlib.suppress(RuntimeError):
                self._pool.close()
        self._pool = None


# What a call's transport may raise below HTTP: OSError covers a refused or broken
# connection, ValueError a header that cannot be sent.
_TRANSPORT_ERRORS = (TimeoutError, OSError, ValueError)


def credentials(config: ModelConfig) -> tuple[str, ...]:
    """The secrets a deployment is configured with: its api_key and header values."""
    values = [value.get_secret_value() for value in config.headers.values()]
    if config.api_key is not None:
        values.append(config.api_key.get_secret_value())
    return tuple(value for value in values if value)


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms` (OpenAI) or `Retry-After`."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"))


def error_detail(body: bytes) -> str:
    """The message of an OpenAI- or Anthropic-shaped error body, else the body itself."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message") or data["error"])
    return body.decode("utf-8", "replace")


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
    status: int,
    detail: str,
    *,
    deployment: str,
    retry_after: float | None = None,
    secrets: Iterable[str] = (),
) -> AreionError:
    """The error for an upstream HTTP status, its `detail` redacted (`secrets` and
    anything key-like masked: the message reaches the client and the logs).

    A 4xx the caller caused (bad parameters, context too long) comes back as a
    `RequestError`: another deployment would refuse it too, so it is not retried.
    """
    # Redacted before it is cut: a cut through a secret would leave part of it.
    detail = redact(detail, secrets).strip()[:500] or "(no detail)"
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


def error_from_transport(
    error: BaseException, *, deployment: str, secrets: Iterable[str] = ()
) -> AreionError:
    """The error for a failure below HTTP (connect, timeout, broken connection); the
    library's description is redacted like an upstream's text."""
    if isinstance(error, ConnectTimeoutError):
        return ProviderTimeoutError(f"deployment {deployment}: connect timed out")
    if isinstance(error, TimeoutError):
        return ProviderTimeoutError(
            f"deployment {deployment}: no answer within the first-byte timeout"
        )
    if isinstance(error, ConnectError):
        reason = redact(str(error.cause), secrets)
        return UpstreamError(f"deployment {deployment}: cannot connect ({reason})")
    return UpstreamError(
        f"deployment {deployment}: {type(error).__name__}: {redact(str(error), secrets)}"
    )

"""`POST /v1/embeddings`: OpenAI's embeddings API over `Runtime.embed`.

The body is validated as strictly as the chat body (`server/schema.py`), with
OpenAI's limits where they can be checked without counting tokens, and one of
Areion's own on the work one input may cost:

- `input`: a string, an array of strings, an array of integers (one token array) or
  an array of token arrays; at most `MAX_INPUTS`; no empty string or array; a text at
  most `MAX_INPUT_CHARS` characters, a token array at most `MAX_INPUT_TOKENS` tokens;
- `encoding_format`: `float` (default) or `base64` (little-endian float32);
- `dimensions` (>= 1), `user`; other parameters are passed to the upstream.

The answer has OpenAI's shape, and the headers of a chat answer: `x-areion-model`,
`x-areion-cost-usd`, `x-areion-cache` (`hit-embedding`, `partial-embedding`, `miss`),
`x-areion-cache-hits` (inputs served from the cache / inputs), `x-request-id`, and
the rate-limit headers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from areion.control.limits import RateReport
from areion.errors import RequestError
from areion.pricing import usd_text
from areion.runtime import CallOptions, Runtime, new_request_id
from areion.server.access import note
from areion.server.schema import json_response, parse_body
from areion.types import EmbeddingRequest, EncodingFormat

__all__ = [
    "MAX_INPUTS",
    "MAX_INPUT_CHARS",
    "MAX_INPUT_TOKENS",
    "EmbeddingsApi",
    "parse_embedding_request",
]

MAX_INPUTS = 2048
"""Inputs per request at most (OpenAI's limit)."""
MAX_INPUT_TOKENS = 8192
"""Tokens of one token array at most (OpenAI's limit per input)."""
MAX_INPUT_CHARS = 8 * MAX_INPUT_TOKENS
"""Characters of one text at most: eight a token, past what any upstream with OpenAI's
limit takes in all but contrived text; it bounds the work one input costs Areion."""

_TOKEN_IDS = 2**31  # token ids are non-negative 32-bit integers
_SHAPE = (
    "must be a string, an array of strings, an array of integers (tokens) or an array "
    "of token arrays"
)

Identify = Callable[[Request], tuple[str, str | None]]
"""The tenant and key label of a request (the app's authentication)."""


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    model: str = Field(min_length=1)
    input: Any
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


def _invalid(param: str, message: str) -> RequestError:
    return RequestError(f"invalid parameter '{param}': {message}", param=param)


def _tokens(value: list[Any], param: str) -> list[int]:
    if not value:
        raise _invalid(param, "a token array must not be empty")
    if len(value) > MAX_INPUT_TOKENS:
        raise _invalid(
            param, f"at most {MAX_INPUT_TOKENS} tokens an input, got {len(value)}; split it"
        )
    for i, token in enumerate(value):
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < _TOKEN_IDS:
            raise _invalid(f"{param}[{i}]", "a token must be an integer from 0 to 2147483647")
    return value


def _text(value: str, param: str) -> str:
    if not value:
        raise _invalid(param, "must not be an empty string")
    if len(value) > MAX_INPUT_CHARS:
        raise _invalid(
            param, f"at most {MAX_INPUT_CHARS} characters an input, got {len(value)}; split it"
        )
    return value


def _inputs(value: Any) -> list[str] | list[list[int]]:
    """The request's inputs, one per vector: texts, or token arrays."""
    if isinstance(value, str):
        return [_text(value, "input")]
    if not isinstance(value, list):
        raise _invalid("input", _SHAPE)
    if not value:
        raise _invalid("input", "must not be empty")
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        return [_tokens(value, "input")]  # one token array
    if len(value) > MAX_INPUTS:
        raise _invalid("input", f"at most {MAX_INPUTS} inputs, got {len(value)}; split it")
    if all(isinstance(item, str) for item in value):
        return [_text(item, f"input[{i}]") for i, item in enumerate(value)]
    if all(isinstance(item, list) for item in value):
        return [_tokens(item, f"input[{i}]") for i, item in enumerate(value)]
    raise _invalid("input", _SHAPE)


def parse_embedding_request(raw: bytes) -> tuple[EmbeddingRequest, EncodingFormat]:
    """An `EmbeddingRequest` from a JSON body, and the encoding its answer asks for.

    Raises `RequestError` naming the offending parameter.
    """
    if not raw.strip():
        raise RequestError("the request body is empty; send a JSON embeddings request")
    body = parse_body(_Body, raw)
    request = EmbeddingRequest(
        model=body.model,
        input=_inputs(body.input),
        dimensions=body.dimensions,
        user=body.user,
        extra=dict(body.model_extra or {}),
    )
    return request, body.encoding_format


class EmbeddingsApi:
    """The embeddings endpoint."""

    def __init__(self, runtime: Runtime, identify: Identify) -> None:
        self._runtime = runtime
        self._identify = identify

    def routes(self) -> list[Route]:
        return [
            Route("/v1/embeddings", self.create, methods=["POST"]),
            Route("/embeddings", self.create, methods=["POST"]),
        ]

    async def create(self, request: Request) -> Response:
        tenant, key = self._identify(request)
        embedding, encoding = parse_embedding_request(await request.body())
        # Areion's own id names the call (ledger); the client's is kept beside it.
        request_id = new_request_id()
        note(request.scope, request_id=request_id, model=embedding.model)
        client_request_id = request.headers.get("x-request-id", "")[:128]
        options = CallOptions(
            tenant=tenant,
            request_id=request_id,
            client_request_id=client_request_id,
            cache=request.headers.get("x-areion-cache"),
            key=key,
            priority=request.headers.get("x-areion-priority") or None,
        )
        response = await self._runtime.embed(embedding, options)
        headers = {
            "x-areion-model": response.deployment,
            "x-areion-cost-usd": usd_text(response.cost_usd or 0.0),
            "x-areion-cache": response.cache or "miss",
            "x-request-id": request_id,
        }
        if client_request_id:
            headers["x-client-request-id"] = client_request_id
        cached = response.info.get("cached_inputs")
        if cached is not None:
            headers["x-areion-cache-hits"] = f"{cached}/{len(embedding.input)}"
        report = response.info.get("ratelimit")
        if isinstance(report, RateReport):
            headers.update(report.headers())
        return json_response(response.to_openai(encoding), headers=headers)

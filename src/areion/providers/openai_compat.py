"""Any server that speaks OpenAI chat completions: OpenAI, vLLM, Ollama, llama.cpp, sim.

Embeddings go to the same base URL's `/embeddings`. Areion asks for float vectors
(what every OpenAI-compatible server speaks) and reads base64 ones too; either way
they become float32 values, as OpenAI makes them, so a vector served again from the
embedding cache is the very one first served.
"""

from __future__ import annotations

import base64
import binascii
import time
from array import array
from collections.abc import AsyncIterator
from typing import Any

import orjson

from areion.config import ModelConfig
from areion.errors import UpstreamError
from areion.providers.base import HttpTransport, error_detail
from areion.types import (
    ChatRequest,
    ChatResponse,
    Choice,
    EmbeddingRequest,
    EmbeddingResponse,
    Message,
    StreamChunk,
    ToolCallDelta,
    Usage,
    unpack_vector,
)

__all__ = ["OpenAIProvider", "embedding_body", "parse_usage", "request_body"]


def request_body(request: ChatRequest, model: str, *, stream: bool) -> dict[str, Any]:
    """The OpenAI wire body for `request`, addressed to upstream `model`."""
    body: dict[str, Any] = dict(request.extra)
    body["model"] = model
    body["messages"] = [message.to_openai() for message in request.messages]
    if request.max_tokens is not None and "max_completion_tokens" not in body:
        body["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop is not None:
        body["stop"] = request.stop
    if request.tools is not None:
        body["tools"] = request.tools
    if request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    if request.user is not None:
        body["user"] = request.user
    if stream:
        body["stream"] = True
        # Ask for usage on the last chunk: without it a stream's cost is a guess.
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        body["stream_options"] = options
    else:
        body.pop("stream", None)
        body.pop("stream_options", None)
    return body


def embedding_body(request: EmbeddingRequest, model: str) -> dict[str, Any]:
    """The OpenAI wire body of an embeddings `request`, addressed to upstream `model`."""
    body: dict[str, Any] = dict(request.extra)
    body["model"] = model
    body["input"] = request.input
    body["encoding_format"] = "float"
    if request.dimensions is not None:
        body["dimensions"] = request.dimensions
    if request.user is not None:
        body["user"] = request.user
    return body


def _vector(raw: Any) -> list[float]:
    """An upstream's embedding (numbers, or base64 float32) as float32 values."""
    if isinstance(raw, str):
        return unpack_vector(base64.b64decode(raw, validate=True))
    if isinstance(raw, list):
        return array("f", raw).tolist()
    raise TypeError("an embedding is neither a list of numbers nor base64")


def parse_usage(data: dict[str, Any] | None) -> Usage | None:
    """Usage from an OpenAI `usage` object."""
    if not data:
        return None
    prompt_details = data.get("prompt_tokens_details") or {}
    completion_details = data.get("completion_tokens_details") or {}
    return Usage(
        prompt_tokens=int(data.get("prompt_tokens") or 0),
        completion_tokens=int(data.get("completion_tokens") or 0),
        cached_tokens=int(prompt_details.get("cached_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )


class OpenAIProvider:
    """Chat completions over HTTP to one OpenAI-compatible deployment."""

    def __init__(self, config: ModelConfig, *, deployment: str) -> None:
        self.deployment = deployment
        self.model = config.upstream_model
        base_url = (config.base_url or "").rstrip("/")
        self._url = base_url + "/chat/completions"
        self._embeddings_url = base_url + "/embeddings"
        self._headers = {
            "content-type": "application/json",
            **{name: value.get_secret_value() for name, value in config.headers.items()},
        }
        if config.api_key is not None and config.api_key.get_secret_value():
            self._headers["authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self._http = HttpTransport(config, deployment=deployment)

    @property
    def http(self) -> HttpTransport:
        """The deployment's HTTP connections (the runtime sets their trace hook)."""
        return self._http

    async def complete(self, request: ChatRequest) -> ChatResponse:
        body = orjson.dumps(request_body(request, self.model, stream=False))
        content = await self._http.post(self._url, body, self._headers)
        try:
            data = orjson.loads(content)
            choices = [
                Choice(
                    index=int(item.get("index") or 0),
                    message=Message.from_openai(item.get("message") or {}),
                    finish_reason=item.get("finish_reason"),
                )
                for item in data["choices"]
            ]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise UpstreamError(
                f"deployment {self.deployment} sent an answer that is not a chat completion "
                f"({type(error).__name__})"
            ) from None
        return ChatResponse(
            id=str(data.get("id") or ""),
            model=str(data.get("model") or self.model),
            created=int(data.get("created") or time.time()),
            choices=choices,
            usage=parse_usage(data.get("usage")),
            system_fingerprint=data.get("system_fingerprint"),
        )

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        body = orjson.dumps(embedding_body(request, self.model))
        content = await self._http.post(self._embeddings_url, body, self._headers)
        try:
            data = orjson.loads(content)
            items = sorted(data["data"], key=lambda item: int(item.get("index") or 0))
            vectors = [_vector(item["embedding"]) for item in items]
        except (
            orjson.JSONDecodeError,
            KeyError,
            TypeError,
            AttributeError,
            ValueError,
            binascii.Error,
        ) as error:
            raise UpstreamError(
                f"deployment {self.deployment} sent an answer that is not an embeddings list "
                f"({type(error).__name__})"
            ) from None
        if len(vectors) != len(request.input):
            raise UpstreamError(
                f"deployment {self.deployment} sent {len(vectors)} embeddings for "
                f"{len(request.input)} inputs"
            )
        return EmbeddingResponse(
            model=str(data.get("model") or self.model),
            vectors=vectors,
            usage=parse_usage(data.get("usage")),
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        body = orjson.dumps(request_body(request, self.model, stream=True))
        done = False
        async for lines in self._http.post_lines(self._url, body, self._headers):
            for line in lines:
                if done or not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True  # keep reading to the end, so the connection is reused
                    continue
                for chunk in self._chunks(payload):
                    yield chunk

    def _chunks(self, payload: bytes) -> list[StreamChunk]:
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise UpstreamError(
                f"deployment {self.deployment} sent a stream event that is not JSON",
                retryable=False,
            ) from None
        if "error" in data and "choices" not in data:
            raise UpstreamError(
                f"deployment {self.deployment} reported an error mid-stream: "
                f"{self._http.redact(error_detail(payload))[:500]}"
            )
        common_id = str(data.get("id") or "")
        model = str(data.get("model") or self.model)
        created = int(data.get("created") or 0)
        chunks = []
        for item in data.get("choices") or ():
            delta = item.get("delta") or {}
            raw_calls = delta.get("tool_calls")
            chunks.append(
                StreamChunk(
                    id=common_id,
                    model=model,
                    created=created,
                    index=int(item.get("index") or 0),
                    role=delta.get("role"),
                    content=delta.get("content"),
                    tool_calls=[
                        ToolCallDelta(
                            index=int(call.get("index") or 0),
                            id=call.get("id"),
                            name=(call.get("function") or {}).get("name"),
                            arguments=(call.get("function") or {}).get("arguments") or "",
                        )
                        for call in raw_calls
                    ]
                    if raw_calls
                    else None,
                    finish_reason=item.get("finish_reason"),
                )
            )
        raw_usage = data.get("usage")  # on the last chunk only, if at all
        usage = parse_usage(raw_usage) if raw_usage else None
        if usage is not None:
            if chunks:
                chunks[-1].usage = usage
            else:
                chunks.append(StreamChunk(id=common_id, model=model, created=created, usage=usage))
        return chunks

    async def aclose(self) -> None:
        await self._http.aclose()

"""POST /v1/completions: OpenAI's legacy text completions, answered by chat models.

Each prompt is asked as the one user message of a chat, through `Runtime.answer` with
the same `CallOptions` as chat completions (so limits, budgets, caches, routing and
accounting apply), and answered in the `text_completion` shape, streamed too. A list
of prompts is one model call per prompt: answered together, or streamed one after
another (a later prompt's failure is then an error event); the choices of prompt `i`
have indexes `i * n` to `i * n + n - 1`, as OpenAI numbers them. Each call has its own
id in the ledger: the request's (`x-request-id`) for the first prompt, then `<id>.1`,
`<id>.2`...

What a chat model cannot do is refused (400) rather than faked: `echo: true`,
`suffix`, `logprobs`, `best_of` above 1, and prompts given as token arrays. As in
OpenAI's API, `max_tokens` defaults to 16.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from areion.errors import AreionError, RequestError
from areion.pricing import usd_text
from areion.runtime import CallOptions, Runtime
from areion.server.calls import answer_headers, call_options
from areion.server.schema import error_body, invalid_parameter, json_object, json_response
from areion.server.sse import EventStream
from areion.streaming import ChatStream
from areion.types import ChatRequest, ChatResponse, Message, StreamChunk, Usage

__all__ = ["CompletionsApi"]

Identify = Callable[[Request], tuple[str, str | None]]

_DEFAULT_MAX_TOKENS = 16  # OpenAI's, for this API


class _Body(BaseModel):
    # Strict as OpenAI's API is; parameters not named here (seed, penalties, logit_bias)
    # pass on to the model, as on chat completions.
    model_config = ConfigDict(strict=True, extra="allow")

    model: str = Field(min_length=1)
    prompt: str | list[str]
    max_tokens: int | None = Field(default=_DEFAULT_MAX_TOKENS, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = None
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("str", "list[str]"):
            out += f".{part}" if out else part
    return out


def _parse(raw: bytes) -> tuple[_Body, list[str]]:
    """The body and its prompts; a `RequestError` naming what is wrong or unsupported."""
    if not raw.strip():
        raise RequestError("the request body is empty; send a JSON completion request")
    value = json_object(raw)
    prompt = value.get("prompt")
    if prompt == []:
        raise RequestError(
            "invalid parameter 'prompt': the list of prompts is empty", param="prompt"
        )
    if isinstance(prompt, list) and any(not isinstance(item, str) for item in prompt):
        raise RequestError(
            "invalid parameter 'prompt': token arrays are not supported; send the prompt as "
            "text (a string or a list of strings)",
            param="prompt",
        )
    try:
        body = _Body.model_validate(value)
    except ValidationError as error:
        raise invalid_parameter(error, _param) from None
    refused = {
        "echo": body.echo is True,
        "suffix": body.suffix is not None,
        "logprobs": body.logprobs is not None,
        "best_of": body.best_of not in (None, 1),
    }
    for name, bad in refused.items():
        if bad:
            raise RequestError(
                f"invalid parameter '{name}': not supported; Areion answers completions "
                f"with chat models, which cannot do it. Leave '{name}' out",
                param=name,
            )
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    return body, prompts


def _chats(body: _Body, prompts: Sequence[str]) -> list[ChatRequest]:
    extra: dict[str, Any] = {
        key: value for key, value in (body.model_extra or {}).items() if value is not None
    }
    if body.n is not None:
        extra["n"] = body.n
    return [
        ChatRequest(
            model=body.model,
            messages=[Message(role="user", content=prompt)],
            stream=body.stream,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=[body.stop] if isinstance(body.stop, str) else body.stop,
            user=body.user,
            extra=dict(extra),
        )
        for prompt in prompts
    ]


class CompletionsApi:
    """The handler of /v1/completions."""

    def __init__(self, runtime: Runtime, identity: Identify) -> None:
        self.runtime = runtime
        self._identity = identity

    def routes(self) -> list[Route]:
        return [
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/completions", self.completions, methods=["POST"]),
        ]

    async def completions(self, request: Request) -> Response:
        tenant, key = self._identity(request)
        body, prompts = _parse(await request.body())
        chats = _chats(body, prompts)
        base = call_options(request.scope, tenant, key, chats[0].model)
        assert base.request_id is not None
        # One model call per prompt, each with its own id in the ledger.
        options = [base] + [
            dataclasses.replace(base, request_id=f"{base.request_id}.{i}")
            for i in range(1, len(chats))
        ]
        completion_id = "cmpl-" + base.request_id.removeprefix("req_")
        n = chats[0].n
        if body.stream:
            first = await self.runtime.answer(chats[0], options[0])
            assert isinstance(first, ChatStream)
            include_usage = bool(body.stream_options and body.stream_options.get("include_usage"))
            later = list(zip(chats[1:], options[1:], strict=True))
            events = self._events(first, later, completion_id, n=n, include_usage=include_usage)
            return EventStream(first, events, headers=answer_headers(first, base))
        answers = await self._answer_all(chats, options)
        return json_response(
            _completion(answers, completion_id, n=n), headers=_headers(answers, base)
        )

    async def _answer_all(
        self, chats: Sequence[ChatRequest], options: Sequence[CallOptions]
    ) -> list[ChatResponse]:
        """Every prompt's answer, asked at once; the first failure fails the request (the
        calls still running are cancelled)."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self.runtime.answer(chat, option))
                    for chat, option in zip(chats, options, strict=True)
                ]
        except BaseExceptionGroup as failed:
            first = failed.exceptions[0]
            raise first if isinstance(first, AreionError) else failed from None
        answers = []
        for task in tasks:
            answer = task.result()
            assert isinstance(answer, ChatResponse)  # the requests do not stream
            answers.append(answer)
        return answers

    async def _events(
        self,
        first: ChatStream,
        later: Sequence[tuple[ChatRequest, CallOptions]],
        completion_id: str,
        *,
        n: int,
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        """The `text_completion` chunks of each prompt's stream in turn, then the usage
        of them all (if asked for), the cost in a comment line, and `[DONE]`; a failure
        after the first byte is an error event."""
        stream = first
        usage = Usage()
        spent = 0.0
        last: StreamChunk | None = None
        try:
            for position in range(len(later) + 1):
                if position:
                    chat, option = later[position - 1]
                    answer = await self.runtime.answer(chat, option)
                    assert isinstance(answer, ChatStream)
                    stream = answer
                async for chunk in stream:
                    last = chunk
                    if chunk.content or chunk.finish_reason is not None:
                        yield _chunk(chunk, completion_id, position * n + chunk.index)
                _add(usage, stream.usage)
                spent += stream.cost_usd or 0.0
        except AreionError as error:  # a later prompt's refusal, or a broken stream
            body = error_body(error.message, type=error.type, code=error.code)
            yield b"data: " + orjson.dumps(body) + b"\n\n"
            return
        finally:
            await stream.aclose()
        if include_usage and last is not None:
            data = {
                "id": completion_id,
                "object": "text_completion",
                "created": last.created,
                "model": last.model,
                "choices": [],
                "usage": usage.to_openai(),
            }
            yield b"data: " + orjson.dumps(data) + b"\n\n"
        yield f": x-areion-cost-usd={usd_text(spent)}\n\n".encode()
        yield b"data: [DONE]\n\n"


def _add(total: Usage, usage: Usage | None) -> None:
    if usage is not None:
        total.prompt_tokens += usage.prompt_tokens
        total.completion_tokens += usage.completion_tokens
        total.cached_tokens += usage.cached_tokens
        total.reasoning_tokens += usage.reasoning_tokens


def _chunk(chunk: StreamChunk, completion_id: str, index: int) -> bytes:
    data = {
        "id": completion_id,
        "object": "text_completion",
        "created": chunk.created,
        "model": chunk.model,
        "choices": [
            {
                "text": chunk.content or "",
                "index": index,
                "logprobs": None,
                "finish_reason": chunk.finish_reason,
            }
        ],
    }
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _completion(answers: Sequence[ChatResponse], completion_id: str, *, n: int) -> dict[str, Any]:
    usage = Usage()
    choices = []
    for position, answer in enumerate(answers):
        _add(usage, answer.usage)
        for choice in answer.choices:
            choices.append(
                {
                    "text": choice.message.text(),
                    "index": position * n + choice.index,
                    "logprobs": None,
                    "finish_reason": choice.finish_reason,
                }
            )
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": answers[0].created,
        "model": answers[0].model,
        "choices": choices,
        "usage": usage.to_openai(),
    }


def _headers(answers: Sequence[ChatResponse], options: CallOptions) -> dict[str, str]:
    """The first answer's headers; for several prompts, their total cost, and each
    deployment and cache outcome once."""
    headers = answer_headers(answers[0], options)
    if len(answers) > 1:
        headers["x-areion-cost-usd"] = usd_text(sum(a.cost_usd or 0.0 for a in answers))
        headers["x-areion-model"] = ",".join(dict.fromkeys(a.deployment for a in answers))
        headers["x-areion-cache"] = ",".join(dict.fromkeys(a.cache or "miss" for a in answers))
    return headers

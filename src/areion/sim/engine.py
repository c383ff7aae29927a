"""The simulated model: deterministic text, real queueing, paced output and injected faults.

The same prompt to the same profile always gives the same answer, so tests can
assert on it; timing and faults come from a seeded random source instead, so a
seeded engine replays the same sequence of faults for the same sequence of calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import random
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from areion.errors import RateLimitedError, RequestError, UnknownModelError, UpstreamError
from areion.sim.profiles import SimProfile, builtin_profiles
from areion.types import (
    ChatRequest,
    ChatResponse,
    Choice,
    Message,
    StreamChunk,
    ToolCall,
    ToolCallDelta,
    Usage,
)

__all__ = ["SimEngine", "SimLoad", "estimate_prompt_tokens"]

# Shortest real time between two streamed chunks; faster paces send several
# tokens per chunk so a tiny time_scale does not flood the event loop.
_MIN_CHUNK_INTERVAL = 0.005

_VOCABULARY = (
    "agent answer batch cache call context cost deploy draft edge fallback field frame gateway "
    "graph header index input latency layer limit load log model node output pace plan prompt "
    "queue quota record reply request route runtime sample schema signal slot state step stream "
    "system task tenant token tool trace value window worker a the of to and in is for with on by"
)
_WORDS = tuple(_VOCABULARY.split())


@dataclass(slots=True, kw_only=True)
class SimLoad:
    """What one simulated model is doing right now."""

    model: str
    """Profile name."""
    running: int = 0
    """Requests holding a slot."""
    waiting: int = 0
    """Requests queued for a slot."""
    kv_cache_usage: float = 0.0
    """Fraction (0..1) of the KV cache held by running requests."""
    max_running: int = 0
    """Slots of the model."""


@dataclass(slots=True, kw_only=True)
class _ModelState:
    """Live counters and the slot gate of one profile."""

    loop: asyncio.AbstractEventLoop
    """Loop the semaphore belongs to."""
    semaphore: asyncio.Semaphore
    """max_running slots."""
    running: int = 0
    """Requests holding a slot."""
    waiting: int = 0
    """Requests blocked on the semaphore."""
    kv_tokens: int = 0
    """Prompt and output tokens of the running requests."""


@dataclass(slots=True, kw_only=True)
class _Plan:
    """Everything decided about one request before it is admitted."""

    profile: SimProfile
    """The model answering."""
    prompt_tokens: int
    """Estimated input tokens."""
    pieces: list[str]
    """Text tokens of the answer (empty for a tool call)."""
    tool_call: ToolCall | None
    """The tool call the answer makes, if any."""
    completion_tokens: int
    """Output tokens."""
    finish_reason: str
    """`stop`, `length` or `tool_calls`."""
    ttft: float
    """Real seconds from admission to the first token."""
    per_token: float
    """Real seconds per output token after the first."""
    fail: bool
    """Fail with an injected 500 once admitted."""


class SimEngine:
    """Answers chat requests as the named profiles would, with live load counters."""

    def __init__(
        self,
        profiles: Mapping[str, SimProfile] | None = None,
        *,
        time_scale: float = 1.0,
        seed: int | None = None,
    ) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale!r}")
        self.profiles: dict[str, SimProfile] = dict(
            builtin_profiles() if profiles is None else profiles
        )
        self.time_scale = time_scale
        self._rng = random.Random(seed)
        self._states: dict[str, _ModelState] = {}

    def profile(self, model: str) -> SimProfile:
        """The profile named `model`; `UnknownModelError` lists the known ones."""
        found = self.profiles.get(model)
        if found is None:
            known = ", ".join(sorted(self.profiles)) or "(none)"
            raise UnknownModelError(
                f"sim has no model '{model}'; known models: {known}", param="model"
            )
        return found

    def load(self, model: str) -> SimLoad:
        """Running, waiting and KV-cache usage of one model."""
        profile = self.profile(model)
        state = self._states.get(model)
        if state is None:
            return SimLoad(model=model, max_running=profile.max_running)
        return SimLoad(
            model=model,
            running=state.running,
            waiting=state.waiting,
            kv_cache_usage=min(1.0, state.kv_tokens / profile.kv_cache_tokens),
            max_running=profile.max_running,
        )

    async def complete(self, request: ChatRequest, *, model: str | None = None) -> ChatResponse:
        """The whole answer, after the time the profile would take to generate it."""
        plan = self._plan(request, model)
        async with self._slot(plan):
            await asyncio.sleep(plan.ttft)
            if plan.fail:
                raise _injected_error(plan.profile)
            await asyncio.sleep(plan.per_token * max(0, plan.completion_tokens - 1))
        message = Message(
            role="assistant",
            content=None if plan.tool_call else "".join(plan.pieces),
            tool_calls=[plan.tool_call] if plan.tool_call else None,
        )
        return ChatResponse(
            id=_completion_id(),
            model=plan.profile.name,
            created=int(time.time()),
            choices=[Choice(message=message, finish_reason=plan.finish_reason)],
            usage=_usage(plan),
        )

    async def stream(
        self, request: ChatRequest, *, model: str | None = None
    ) -> AsyncGenerator[StreamChunk, None]:
        """Role chunk, paced content chunks, finish chunk, then a usage-only chunk."""
        plan = self._plan(request, model)
        ident, name, created = _completion_id(), plan.profile.name, int(time.time())

        def chunk(**fields: Any) -> StreamChunk:
            return StreamChunk(id=ident, model=name, created=created, **fields)

        async with self._slot(plan):
            first = time.monotonic() + plan.ttft
            await asyncio.sleep(plan.ttft)
            if plan.fail:
                raise _injected_error(plan.profile)
            yield chunk(role="assistant")
            if plan.tool_call is not None:
                call = plan.tool_call
                yield chunk(tool_calls=[ToolCallDelta(index=0, id=call.id, name=call.name)])
                for piece, due in _paced(_split(call.arguments), first, plan.per_token):
                    await _sleep_until(due)
                    yield chunk(tool_calls=[ToolCallDelta(index=0, arguments=piece)])
            else:
                for piece, due in _paced(plan.pieces, first, plan.per_token):
                    await _sleep_until(due)
                    yield chunk(content=piece)
            yield chunk(finish_reason=plan.finish_reason)
        yield chunk(usage=_usage(plan))

    def _plan(self, request: ChatRequest, model: str | None) -> _Plan:
        profile = self.profile(model or request.model)
        # Draw in a fixed order so a seeded engine replays the same faults and tails.
        fault = self._rng.random()
        tail = self._rng.random()
        if fault < profile.rate_limit_rate:
            raise RateLimitedError(
                f"sim model '{profile.name}' is rate limited (injected)",
                retry_after=profile.retry_after_s,
            )
        fail = fault < profile.rate_limit_rate + profile.error_rate
        slow = profile.slow_tail_multiplier if tail < profile.slow_tail_prob else 1.0
        scale = self.time_scale * slow
        prompt = request.prompt_text()
        digest = hashlib.sha256(f"{profile.name}\0{prompt}".encode()).digest()
        tool = _chosen_tool(request, profile.tool_rounds)
        pieces: list[str] = []
        call: ToolCall | None = None
        if tool is not None:
            arguments = orjson.dumps(_arguments(tool.get("parameters"))).decode()
            call = ToolCall(
                id="call_" + digest[:12].hex(), name=str(tool["name"]), arguments=arguments
            )
            completion = max(1, math.ceil((len(call.name) + len(arguments)) / 4))
            finish = "tool_calls"
        else:
            spread = int.from_bytes(digest[:4], "big") / 2**32
            natural = max(1, round(profile.output_tokens * (0.75 + 0.5 * spread)))
            limit = natural if request.max_tokens is None else min(natural, request.max_tokens)
            pieces = _text(digest, limit, natural)
            completion = len(pieces)
            finish = "length" if limit < natural else "stop"
        return _Plan(
            profile=profile,
            prompt_tokens=estimate_prompt_tokens(request),
            pieces=pieces,
            tool_call=call,
            completion_tokens=completion,
            finish_reason=finish,
            ttft=profile.ttft_ms / 1000 * scale,
            per_token=scale / profile.tokens_per_s,
            fail=fail,
        )

    def _state(self, profile: SimProfile) -> _ModelState:
        loop = asyncio.get_running_loop()
        state = self._states.get(profile.name)
        if state is not None and state.loop is not loop:
            # An asyncio.Semaphore binds to one loop; an idle gate can move to a new
            # one (each test has its own loop), a busy one cannot.
            if state.running or state.waiting:
                raise RuntimeError("a SimEngine cannot serve two event loops at once")
            state = None
        if state is None:
            state = _ModelState(loop=loop, semaphore=asyncio.Semaphore(profile.max_running))
            self._states[profile.name] = state
        return state

    @contextlib.asynccontextmanager
    async def _slot(self, plan: _Plan) -> AsyncIterator[None]:
        state = self._state(plan.profile)
        state.waiting += 1
        try:
            await state.semaphore.acquire()
        finally:
            state.waiting -= 1
        kv = plan.prompt_tokens + plan.completion_tokens
        state.running += 1
        state.kv_tokens += kv
        try:
            yield
        finally:
            state.running -= 1
            state.kv_tokens -= kv
            state.semaphore.release()


def _injected_error(profile: SimProfile) -> UpstreamError:
    return UpstreamError(f"sim model '{profile.name}' failed (injected error)", upstream_status=500)


def _completion_id() -> str:
    return "chatcmpl-sim" + secrets.token_hex(12)


def _usage(plan: _Plan) -> Usage:
    return Usage(
        prompt_tokens=plan.prompt_tokens, completion_tokens=plan.completion_tokens, cached_tokens=0
    )


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """Input tokens of `request` as the sim counts them."""
    # About four characters a token plus a few per message for the chat template;
    # close enough for load and cost shapes without a tokenizer on the hot path.
    chars = 0
    for message in request.messages:
        chars += len(message.text())
        for call in message.tool_calls or ():
            chars += len(call.name) + len(call.arguments)
    if request.tools:
        chars += len(orjson.dumps(request.tools))
    return math.ceil(chars / 4) + 3 * len(request.messages)


def _text(digest: bytes, count: int, natural: int) -> list[str]:
    """The first `count` tokens of the `natural`-token answer seeded by `digest`."""
    rng = random.Random(int.from_bytes(digest[4:12], "big"))
    pieces: list[str] = []
    start = True
    for index in range(count):
        word = rng.choice(_WORDS)
        end = rng.random() < 0.1 or index == natural - 1
        if start:
            word = word.capitalize()
        if end:
            word += "."
        pieces.append(word if index == 0 else " " + word)
        start = end
    return pieces


def _paced(pieces: list[str], first: float, per_token: float) -> list[tuple[str, float]]:
    """Pieces grouped into chunks, each with the monotonic time its last token is due."""
    if not pieces:
        return []
    size = len(pieces) if per_token <= 0 else max(1, math.ceil(_MIN_CHUNK_INTERVAL / per_token))
    out = []
    for start in range(0, len(pieces), size):
        group = pieces[start : start + size]
        out.append(("".join(group), first + (start + len(group) - 1) * per_token))
    return out


async def _sleep_until(due: float) -> None:
    delay = due - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def _split(arguments: str) -> list[str]:
    """Tool-call arguments in a few fragments, as real streams send them."""
    size = max(1, math.ceil(len(arguments) / 4))
    return [arguments[index : index + size] for index in range(0, len(arguments), size)]


def _chosen_tool(request: ChatRequest, rounds: int) -> dict[str, Any] | None:
    """The function the answer calls, or None for a text answer.

    The model calls tools for `rounds` turns after the user's last message, then
    answers in text, so agent loops against the sim terminate.
    """
    functions: list[dict[str, Any]] = [
        tool["function"]
        for tool in request.tools or ()
        if isinstance(tool, dict)
        and tool.get("type", "function") == "function"
        and isinstance(tool.get("function"), dict)
        and isinstance(tool["function"].get("name"), str)
    ]
    choice = request.tool_choice
    if not functions or choice == "none":
        return None
    done = 0
    for message in reversed(request.messages):
        if message.role == "user":
            break
        if message.role == "assistant" and message.tool_calls:
            done += 1
    if done >= rounds:
        return None
    chosen = functions[done % len(functions)]
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        named = [function for function in functions if function["name"] == wanted]
        if not named:
            raise RequestError(
                f"tool_choice names function {wanted!r}, which is not among the tools offered",
                param="tool_choice",
            )
        chosen = named[0]
    return chosen


def _arguments(schema: Any) -> dict[str, Any]:
    """Arguments that satisfy the required properties of a JSON schema object."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = schema.get("required")
    names = (
        [name for name in required if isinstance(name, str)] if isinstance(required, list) else []
    )
    return {name: _value(properties.get(name)) for name in names}


def _value(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return "sim"
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return _value(options[0])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((item for item in kind if item != "null"), "null")
    if kind in ("number", "integer"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "object":
        return _arguments(schema)
    if kind == "null":
        return None
    return "sim"

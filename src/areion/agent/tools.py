"""`@tool`: a Python function an agent can call, with its JSON Schema and validation.

The schema comes from the type hints (through a pydantic model built from the
signature) and the docstring (its first paragraph describes the tool, an `Args:`
section describes the parameters). Arguments are validated against the same model
before the function runs, so a model's bad arguments become a message it can act
on, never a crash inside the tool.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_type_hints, overload

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from areion.errors import ConfigError

__all__ = ["Tool", "ToolArgumentsError", "ToolContext", "ToolResult", "render_result", "tool"]


@dataclass(slots=True, kw_only=True, frozen=True)
class ToolContext:
    """What a tool may know about the call; declare a `context: ToolContext` parameter."""

    run_id: str
    """The run making the call."""
    call_id: str
    """The model's id of this call."""
    tenant: str
    """Who the run belongs to."""
    idempotency_key: str
    """Stable across retries and resumes of this call: pass it to the side effect."""


@dataclass(slots=True, kw_only=True, frozen=True)
class ToolResult:
    """What a tool returns when a call's cost is its own to say (a paid API's price for
    this request): the model reads `value`; `cost_usd` is booked in the ledger against
    the run and its agent, in place of the tool's declared `cost_usd`."""

    value: Any
    """The result the model reads (a string as it is, anything else as JSON)."""
    cost_usd: float
    """What this call cost, in USD."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cost_usd) and self.cost_usd >= 0):
            raise ValueError(
                f"ToolResult.cost_usd must be a finite amount >= 0, got {self.cost_usd}"
            )


class ToolArgumentsError(ValueError):
    """The model's arguments do not fit the tool's schema; the message says how."""


_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_ARG_LINE = re.compile(r"^\s+(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$")


def _doc_parts(doc: str | None) -> tuple[str, dict[str, str]]:
    """The docstring's first paragraph, and its `Args:` descriptions by name."""
    if not doc:
        return "", {}
    summary: list[str] = []
    params: dict[str, str] = {}
    summary_done = False
    in_args = False
    for line in inspect.cleandoc(doc).splitlines():
        if _ARGS_HEADER.match(line):
            in_args = summary_done = True
        elif in_args:
            match = _ARG_LINE.match(line)
            if match:
                params[match.group(1)] = match.group(2).strip()
            elif line.strip() and not line.startswith((" ", "\t")):
                in_args = False
        elif not summary_done:
            if line.strip():
                summary.append(line.strip())
            elif summary:
                summary_done = True
    return " ".join(summary), params


def _strip_titles(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {key: _strip_titles(value) for key, value in schema.items() if key != "title"}
    if isinstance(schema, list):
        return [_strip_titles(item) for item in schema]
    return schema


class Tool:
    """A function an agent can call. Calling the `Tool` itself calls the function."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        cache_ttl: float | None = None,
        idempotent: bool = True,
        requires_approval: bool = False,
        timeout: float = 30.0,
        cooldown_s: float | None = None,
        cost_usd: float | None = None,
    ) -> None:
        if cost_usd is not None and not (math.isfinite(cost_usd) and cost_usd >= 0):
            raise ConfigError(f"tool {fn.__name__}: cost_usd must be >= 0, got {cost_usd}")
        if cooldown_s is not None and not cooldown_s > 0:
            raise ConfigError(f"tool {fn.__name__}: cooldown_s must be > 0, got {cooldown_s}")
        if cache_ttl is not None and not idempotent:
            raise ConfigError(
                f"tool {fn.__name__}: cache_ttl needs an idempotent tool; a side effect "
                "must never be served from a cache"
            )
        self.fn = fn
        self.name = name or fn.__name__
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.name):
            raise ConfigError(f"tool name '{self.name}' must be 1-64 letters, digits, _ or -")
        summary, param_docs = _doc_parts(fn.__doc__)
        self.description = description or summary
        self.cache_ttl = cache_ttl
        self.idempotent = idempotent
        self.requires_approval = requires_approval
        self.timeout = timeout
        self.cooldown_s = cooldown_s
        self.cost_usd = cost_usd
        self.is_async = inspect.iscoroutinefunction(fn)
        hints = get_type_hints(fn)
        fields: dict[str, Any] = {}
        self.context_param: str | None = None
        for param in inspect.signature(fn).parameters.values():
            annotation = hints.get(param.name, Any)
            if annotation is ToolContext:
                self.context_param = param.name
                continue
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise ConfigError(f"tool {self.name}: *args and **kwargs cannot be described")
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (annotation, default)
        self._model: type[BaseModel] = create_model(
            f"{self.name}_arguments",
            __config__=ConfigDict(extra="forbid"),
            **fields,
        )
        parameters = _strip_titles(self._model.model_json_schema())
        for param_name, text in param_docs.items():
            prop = parameters.get("properties", {}).get(param_name)
            if prop is not None:
                prop["description"] = text
        parameters.pop("additionalProperties", None)
        self.parameters: dict[str, Any] = parameters
        functools.update_wrapper(self, fn)

    def schema(self) -> dict[str, Any]:
        """The OpenAI function-tool definition."""
        function: dict[str, Any] = {"name": self.name, "parameters": self.parameters}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}

    def validate(self, arguments: str) -> dict[str, Any]:
        """Parsed, validated keyword arguments from the model's JSON."""
        try:
            raw = orjson.loads(arguments or "{}")
        except orjson.JSONDecodeError as error:
            raise ToolArgumentsError(f"arguments are not valid JSON ({error})") from None
        if not isinstance(raw, dict):
            raise ToolArgumentsError("arguments must be a JSON object")
        try:
            parsed = self._model.model_validate(raw)
        except ValidationError as error:
            problems = [
                f"'{'.'.join(str(p) for p in item['loc']) or 'arguments'}': {item['msg']}"
                for item in error.errors()
            ]
            raise ToolArgumentsError("; ".join(problems)) from None
        return {name: getattr(parsed, name) for name in type(parsed).model_fields}

    async def invoke(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Run the function (sync ones in a worker thread), within the tool's timeout."""
        kwargs = dict(arguments)
        if self.context_param is not None:
            kwargs[self.context_param] = context
        async with asyncio.timeout(self.timeout):
            if self.is_async:
                return await self.fn(**kwargs)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, functools.partial(self.fn, **kwargs))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


def render_result(value: Any) -> str:
    """A tool's return value as the text the model reads."""
    if isinstance(value, ToolResult):
        value = value.value
    if isinstance(value, str):
        return value
    return orjson.dumps(value, default=str).decode()


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    cache_ttl: float | None = None,
    idempotent: bool = True,
    requires_approval: bool = False,
    timeout: float = 30.0,
    cooldown_s: float | None = None,
    cost_usd: float | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    cache_ttl: float | None = None,
    idempotent: bool = True,
    requires_approval: bool = False,
    timeout: float = 30.0,
    cooldown_s: float | None = None,
    cost_usd: float | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a function an agent tool: `@tool` or `@tool(cache_ttl=60, ...)`.

    `cache_ttl` memoizes results per tenant and arguments (pure tools only);
    `idempotent=False` marks a side effect: never cached, recorded before and after
    it runs, and given a stable idempotency key; `requires_approval` pauses the run
    until a human approves the call; `cooldown_s` is the least time between two calls
    of the same tenant with the same arguments (sooner, the model is told to wait);
    `cost_usd` is what one call costs (a paid API), booked in the ledger against the
    run and counted in its cost (a call that returns a `ToolResult` says its own).
    """

    def make(function: Callable[..., Any]) -> Tool:
        return Tool(
            function,
            name=name,
            description=description,
            cache_ttl=cache_ttl,
            idempotent=idempotent,
            requires_approval=requires_approval,
            timeout=timeout,
            cooldown_s=cooldown_s,
            cost_usd=cost_usd,
        )

    if fn is not None:
        return make(fn)
    return make

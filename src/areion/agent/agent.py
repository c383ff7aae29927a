"""`Agent`: what an agent is — instructions, a model, tools and limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from areion.agent.tools import Tool
from areion.errors import ConfigError

__all__ = ["Agent"]


@dataclass(slots=True, kw_only=True)
class Agent:
    """An agent definition; runs are started with `Runtime.run(agent, input)`."""

    name: str
    """Unique name; stored with every run so a run can be resumed with its agent."""
    model: str
    """Model group or route the agent calls."""
    instructions: str = ""
    """The system prompt."""
    tools: list[Tool] = field(default_factory=list)
    """Tools the model may call."""
    max_steps: int = 12
    """Model calls per run before it pauses."""
    max_cost_usd: float | None = None
    """Spend per run before it pauses (checked before each model call)."""
    max_tokens: int | None = None
    """Tokens (input + output) per run before it pauses."""
    max_parallel_tools: int = 8
    """Tool calls of one model turn that run at the same time."""
    max_repeats: int = 3
    """The same call (name and arguments) this many times is a loop: the model is told."""
    output_schema: dict[str, Any] | None = None
    """If set, the final answer must be JSON of this shape (one repair attempt, then fail)."""
    temperature: float | None = None
    """Sampling temperature for the agent's model calls."""
    max_steps_per_hour: int | None = None
    """Loop guard: model calls of this agent per tenant in any hour, over all its runs; a
    run that would exceed it pauses (resume it later)."""
    plan_cache: bool | float = False
    """Plan caching (L3): a finished run's plan (its tool calls, without their results)
    is kept, and a run on a similar task of the same tenant is offered it. True keeps
    plans for the cache's TTL; a number, for that many seconds."""

    def __post_init__(self) -> None:
        names = [t.name for t in self.tools]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ConfigError(f"agent {self.name}: duplicate tool names {sorted(duplicates)}")
        for item in self.tools:
            if not isinstance(item, Tool):
                raise ConfigError(
                    f"agent {self.name}: {item!r} is not a tool; decorate it with @tool"
                )
        if self.max_steps < 1:
            raise ConfigError(f"agent {self.name}: max_steps must be at least 1")
        if self.max_steps_per_hour is not None and self.max_steps_per_hour < 1:
            raise ConfigError(f"agent {self.name}: max_steps_per_hour must be at least 1")
        if not isinstance(self.plan_cache, bool) and not self.plan_cache > 0:
            raise ConfigError(
                f"agent {self.name}: plan_cache must be True, False or a TTL in seconds > 0,"
                f" not {self.plan_cache!r}"
            )

    @property
    def plan_ttl_s(self) -> float | None:
        """How long this agent's plans are kept; None: the plan cache's default."""
        if isinstance(self.plan_cache, bool):
            return None
        return float(self.plan_cache)

    def tool(self, name: str) -> Tool | None:
        for item in self.tools:
            if item.name == name:
                return item
        return None

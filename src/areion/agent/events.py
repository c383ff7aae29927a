"""Typed events of an agent run, streamed by `Runtime.stream()` and `/v1/runs/{id}/events`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from areion.types import Usage

__all__ = [
    "Event",
    "ModelDelta",
    "RunFailed",
    "RunFinished",
    "RunPaused",
    "RunStarted",
    "StepDone",
    "ToolCallEvent",
    "ToolResultEvent",
    "event_to_dict",
]


@dataclass(slots=True, kw_only=True)
class RunStarted:
    """The run began (or resumed)."""

    run_id: str
    """The run."""
    agent: str
    """The agent's name."""
    resumed: bool = False
    """True when continuing from a checkpoint."""
    kind: Literal["run_started"] = "run_started"


@dataclass(slots=True, kw_only=True)
class ModelDelta:
    """A piece of the model's text as it streams."""

    run_id: str
    """The run."""
    step: int
    """Model call number (1-based)."""
    content: str
    """The text piece."""
    kind: Literal["model_delta"] = "model_delta"


@dataclass(slots=True, kw_only=True)
class ToolCallEvent:
    """The model asked for a tool call."""

    run_id: str
    """The run."""
    step: int
    """Model call number."""
    call_id: str
    """The call's id."""
    name: str
    """Tool name."""
    arguments: str
    """JSON arguments."""
    kind: Literal["tool_call"] = "tool_call"


@dataclass(slots=True, kw_only=True)
class ToolResultEvent:
    """A tool call ended (or was refused)."""

    run_id: str
    """The run."""
    step: int
    """Model call number."""
    call_id: str
    """The call's id."""
    name: str
    """Tool name."""
    result: str
    """What the model will read."""
    error: str | None = None
    """Kind of failure, if it failed: tool_error, timeout, unknown_tool, invalid_arguments,
    repeated_call, rejected."""
    cached: bool = False
    """True when served from the tool-result cache."""
    kind: Literal["tool_result"] = "tool_result"


@dataclass(slots=True, kw_only=True)
class StepDone:
    """A model call and its tool calls are done and checkpointed."""

    run_id: str
    """The run."""
    step: int
    """Model call number."""
    usage: Usage
    """Tokens of this step's model call."""
    cost_usd: float
    """Cost of this step's model call."""
    total_cost_usd: float
    """Cost of the run so far."""
    kind: Literal["step_done"] = "step_done"


@dataclass(slots=True, kw_only=True)
class RunPaused:
    """The run stopped and can be resumed (after an approval or a raised limit)."""

    run_id: str
    """The run."""
    reason: str
    """Why, in words a person can act on."""
    pending_calls: list[str] = field(default_factory=list)
    """Tool calls waiting for approval."""
    kind: Literal["paused"] = "paused"


@dataclass(slots=True, kw_only=True)
class RunFinished:
    """The run produced its answer."""

    run_id: str
    """The run."""
    output: str
    """The final answer."""
    kind: Literal["finished"] = "finished"


@dataclass(slots=True, kw_only=True)
class RunFailed:
    """The run cannot continue."""

    run_id: str
    """The run."""
    error: str
    """What went wrong."""
    kind: Literal["failed"] = "failed"


Event = (
    RunStarted
    | ModelDelta
    | ToolCallEvent
    | ToolResultEvent
    | StepDone
    | RunPaused
    | RunFinished
    | RunFailed
)


def event_to_dict(event: Event) -> dict[str, Any]:
    """The event as JSON-ready data (the `kind` field tells which)."""
    return dataclasses.asdict(event)

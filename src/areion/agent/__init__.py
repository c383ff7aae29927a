"""Agents: tools, the loop, session memory, checkpoints and approvals."""

from areion.agent.agent import Agent
from areion.agent.events import (
    Event,
    ModelDelta,
    RunFailed,
    RunFinished,
    RunPaused,
    RunStarted,
    StepDone,
    ToolCallEvent,
    ToolResultEvent,
)
from areion.agent.loop import RunResult
from areion.agent.runner import RunNotFoundError
from areion.agent.tools import Tool, ToolArgumentsError, ToolContext, ToolResult, tool

__all__ = [
    "Agent",
    "Event",
    "ModelDelta",
    "RunFailed",
    "RunFinished",
    "RunNotFoundError",
    "RunPaused",
    "RunResult",
    "RunStarted",
    "StepDone",
    "Tool",
    "ToolArgumentsError",
    "ToolCallEvent",
    "ToolContext",
    "ToolResult",
    "ToolResultEvent",
    "tool",
]

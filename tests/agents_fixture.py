"""Agents the runs-API tests name by import path in their config."""

from __future__ import annotations

from areion import Agent, ToolContext, tool

REFUNDS: list[str] = []


@tool
def lookup(order_id: str) -> str:
    """Find an order."""
    return f"order {order_id}: 2 items, 30 EUR"


@tool(idempotent=False, requires_approval=True)
def refund(order_id: str, amount: float, context: ToolContext) -> str:
    """Refund an order."""
    REFUNDS.append(context.idempotency_key)
    return f"refunded {amount} on {order_id}"


support = Agent(name="support", model="fast", instructions="Help.", tools=[lookup, refund])


def make_echo() -> Agent:
    return Agent(name="echo", model="fast")


not_an_agent = 42


def make_looker() -> Agent:
    return Agent(name="looker", model="fast", instructions="Look it up.", tools=[lookup])


@tool(cost_usd=0.001)
def search(query: str) -> str:
    """Search the web (a paid API)."""
    return f"results for {query}"


def make_researcher() -> Agent:
    return Agent(name="researcher", model="fast", instructions="Search first.", tools=[search])

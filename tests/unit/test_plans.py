"""The plan cache (L3): plans extracted from transcripts, matched with the real MiniLM
embedder and the shipped verifier, partitioned by tenant and agent, bounded, expiring."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest

from areion.cache.embedding import MiniLMEmbedder
from areion.cache.plans import (
    FROM_RESULT,
    FROM_TASK,
    LONG_TEXT,
    PLAN_KEY,
    Plan,
    PlanCache,
    PlanCall,
    offered_plan,
)
from areion.errors import ConfigError
from tests.support import ManualClock

TASK = "Look up the status of order 1234 and email the customer about it"
PARAPHRASE = "Check where order 1234 is and send the customer an email about it"


@pytest.fixture(scope="module")
def embedder() -> Iterator[MiniLMEmbedder]:
    model = MiniLMEmbedder()
    yield model
    model.close()


@pytest.fixture
async def cache(embedder: MiniLMEmbedder) -> AsyncIterator[PlanCache]:
    plans = PlanCache(embedder)
    yield plans
    plans.close()


def calls(*items: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": orjson.dumps(args).decode()},
            }
            for call_id, name, args in items
        ],
    }


def result(call_id: str, text: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def order_transcript(task: str = TASK) -> list[dict[str, Any]]:
    body = "Dear customer, your order has shipped and should arrive within a few days."
    return [
        {"role": "user", "content": task},
        calls(("1", "find_order", {"order_id": 1234}), ("2", "find_ordr", {})),
        result("1", "order 1234: shipped; customer ann@example.com"),
        result("2", "error: there is no tool 'find_ordr'; available: find_order, send_email"),
        calls(("3", "send_email", {"to": "ann@example.com", "body": body, "format": "text"})),
        result("3", "sent"),
        {"role": "assistant", "content": "Order 1234 has shipped; I emailed the customer."},
    ]


def order_plan() -> Plan:
    plan = Plan.of_run(TASK, order_transcript(), "Order 1234 has shipped; I emailed the customer.")
    assert plan is not None
    return plan


# --- plans from transcripts ------------------------------------------------------------


def test_a_plan_keeps_the_calls_that_worked_with_argument_templates() -> None:
    plan = order_plan()
    assert plan.steps == [
        [PlanCall(tool="find_order", arguments={"order_id": FROM_TASK})],
        [
            PlanCall(
                tool="send_email",
                arguments={"to": FROM_RESULT, "body": LONG_TEXT, "format": "text"},
            )
        ],
    ]
    assert plan.answer == "plain text, about 8 words"
    rendered = plan.render()
    assert "1234" not in rendered and "ann@example.com" not in rendered
    assert "shipped" not in rendered  # no tool result leaks into the plan
    assert rendered.splitlines()[-1] == "3. answer: plain text, about 8 words"


def test_a_short_value_matches_whole_words_only() -> None:
    task = "What is the weather in Oslo in celsius?"
    transcript = [calls(("1", "weather", {"city": "oslo", "unit": "c"})), result("1", "4 C")]
    plan = Plan.of_run(task, transcript, '{"city": "Oslo", "temperature": 4}')
    assert plan is not None
    # "oslo" is the task's (any case); "c" is not a word of the task, only part of "celsius".
    assert plan.steps[0][0].arguments == {"city": FROM_TASK, "unit": "c"}
    assert plan.answer == "a JSON object with the keys city, temperature"


def test_a_run_without_successful_tool_calls_has_no_plan() -> None:
    transcript = [calls(("1", "broken", {})), result("1", "error: broken failed: boom")]
    assert Plan.of_run("do it", transcript, "could not") is None
    assert Plan.of_run("hi", [{"role": "assistant", "content": "hello"}], "hello") is None


# --- lookups ---------------------------------------------------------------------------


async def test_a_paraphrased_task_gets_the_plan(cache: PlanCache) -> None:
    entry = await cache.remember("acme", "support", TASK, order_plan())
    match = await cache.lookup("acme", "support", PARAPHRASE)
    assert match is not None
    assert (match.entry, match.task, match.plan, match.hits) == (entry, TASK, order_plan(), 1)
    assert match.score >= cache.threshold
    message = match.message()
    assert message["role"] == "system"
    assert "A plan that worked for a similar task" in message["content"]
    assert order_plan().render() in message["content"]
    hit = offered_plan([message, {"role": "user", "content": PARAPHRASE}])
    assert hit is not None and (hit.entry, hit.task) == (entry, TASK)
    again = await cache.lookup("acme", "support", PARAPHRASE)
    assert again is not None and again.hits == 2
    assert (cache.hits, cache.misses) == (2, 0)


@pytest.mark.parametrize(
    "task",
    [
        "Look up the status of order 9876 and email the customer about it",  # another number
        "Do not email the customer about order 1234",  # negated
        "Cancel order 1234 and refund the customer",  # another job
    ],
)
async def test_a_look_alike_task_misses(cache: PlanCache, task: str) -> None:
    await cache.remember("acme", "support", TASK, order_plan())
    assert await cache.lookup("acme", "support", task) is None
    assert cache.misses == 1


async def test_another_entity_misses(cache: PlanCache) -> None:
    plan = Plan(steps=[[PlanCall(tool="weather", arguments={"city": FROM_TASK})]], answer="")
    await cache.remember("acme", "travel", "What is the weather in Paris today?", plan)
    assert await cache.lookup("acme", "travel", "Tell me today's weather in Paris") is not None
    assert await cache.lookup("acme", "travel", "What is the weather in Berlin today?") is None


async def test_tenants_and_agents_never_see_each_others_plans(cache: PlanCache) -> None:
    await cache.remember("acme", "support", TASK, order_plan())
    assert await cache.lookup("globex", "support", TASK) is None
    assert await cache.lookup("acme", "billing", TASK) is None
    assert await cache.lookup("acme", "support", TASK) is not None


async def test_a_plan_needing_a_tool_the_agent_lost_is_not_offered(cache: PlanCache) -> None:
    await cache.remember("acme", "support", TASK, order_plan())
    assert await cache.lookup("acme", "support", TASK, tools=["find_order"]) is None
    found = await cache.lookup("acme", "support", TASK, tools=["find_order", "send_email", "x"])
    assert found is not None


async def test_plans_expire(cache: PlanCache) -> None:
    clock = cache.clock = ManualClock(time.time())  # embedding takes no time on this clock
    await cache.remember("acme", "support", TASK, order_plan(), ttl_s=0.2)
    assert await cache.lookup("acme", "support", PARAPHRASE) is not None
    clock.advance(0.3)
    assert await cache.lookup("acme", "support", PARAPHRASE) is None
    assert len(cache) == 0


async def test_invalidate_by_tenant_agent_and_age(cache: PlanCache) -> None:
    await cache.remember("acme", "support", TASK, order_plan())
    await cache.remember("acme", "billing", TASK, order_plan())
    await cache.remember("globex", "support", TASK, order_plan())
    assert await cache.invalidate("acme", "support", older_than_s=60) == 0  # too young
    assert await cache.invalidate("acme", "support") == 1
    assert await cache.lookup("acme", "support", TASK) is None
    assert await cache.lookup("acme", "billing", TASK) is not None
    assert await cache.invalidate("acme") == 1
    assert await cache.lookup("globex", "support", TASK) is not None
    assert len(cache) == 1


async def test_the_cache_is_bounded_least_recently_used_first(
    embedder: MiniLMEmbedder,
) -> None:
    cache = PlanCache(embedder, max_entries=2)
    plan = order_plan()
    order, tickets = (
        "Look up the status of order 1 and email the customer",
        "Summarize the open support tickets of this week",
    )
    await cache.remember("acme", "a", order, plan)
    await cache.remember("acme", "a", tickets, plan)
    assert await cache.lookup("acme", "a", "Check where order 1 is and email the customer")
    await cache.remember("acme", "a", "Translate the latest newsletter into French", plan)
    assert len(cache) == 2
    assert await cache.lookup("acme", "a", tickets) is None  # the least recently used
    assert await cache.lookup("acme", "a", order) is not None
    cache.close()


async def test_a_run_that_followed_its_plan_refreshes_the_entry(cache: PlanCache) -> None:
    clock = cache.clock = ManualClock(time.time())
    entry = await cache.remember("acme", "support", TASK, order_plan(), ttl_s=0.2)
    assert entry is not None
    again = await cache.remember(
        "acme", "support", PARAPHRASE, order_plan(), ttl_s=60, source=entry
    )
    assert again == entry and len(cache) == 1
    clock.advance(0.3)
    assert await cache.lookup("acme", "support", PARAPHRASE) is not None  # kept longer
    other = Plan(steps=[[PlanCall(tool="find_order", arguments={})]], answer="")
    assert await cache.remember("acme", "support", PARAPHRASE, other, source=entry) != entry
    assert len(cache) == 2


async def test_the_model_loads_on_first_use_only(embedder: MiniLMEmbedder) -> None:
    made: list[int] = []

    def factory() -> MiniLMEmbedder:
        made.append(1)
        return embedder

    cache = PlanCache(factory)
    assert made == []
    runs = embedder.runs
    assert await cache.lookup("acme", "support", TASK) is None
    assert made == [1]
    assert embedder.runs == runs  # an empty partition: the task is not even embedded
    await cache.remember("acme", "support", TASK, order_plan())
    assert await cache.lookup("acme", "support", PARAPHRASE) is not None
    assert made == [1]


def test_a_wrong_hit_rate_the_calibration_cannot_vouch_for_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_wrong_hit_rate"):
        PlanCache(max_wrong_hit_rate=1e-6)


def test_the_offered_plan_is_found_after_session_context() -> None:
    message: dict[str, Any] = {
        "role": "system",
        "content": "...",
        PLAN_KEY: {"entry": 3, "task": "t", "score": 1},
    }
    transcript: list[dict[str, Any]] = [
        {"role": "user", "content": "earlier turn"},
        {"role": "assistant", "content": "earlier answer"},
        message,
        {"role": "user", "content": "the task"},
    ]
    hit = offered_plan(transcript)
    assert hit is not None and (hit.entry, hit.task) == (3, "t")
    assert offered_plan(transcript[:2]) is None

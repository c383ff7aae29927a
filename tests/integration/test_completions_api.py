"""POST /v1/completions (legacy text completions) and GET /v1/models/{id}, driven by the
official `openai` SDK over loopback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from tests.scripted import Behaviour, ScriptedUpstream
from tests.support import serve_app

KEY = "sk-acme-completions-0123456789"
NARROW_KEY = "sk-acme-narrow-0123456789"  # may use `fast` only
PRICE = {"input": 0.15, "output": 0.60}


@pytest.fixture
def server() -> Iterator[tuple[ScriptedUpstream, str]]:
    up = ScriptedUpstream()
    with serve_app(up.app) as url:

        def model(name: str) -> dict[str, Any]:
            return {
                "name": name,
                "provider": "openai",
                "model": f"{name}-upstream",
                "base_url": url + "/v1",
                "price": PRICE,
            }

        config = {
            "models": [model("fast"), model("strong")],
            "store": "sqlite:///:memory:",
            "auth": {
                "keys": [
                    {"key": KEY, "tenant": "acme"},
                    {"key": NARROW_KEY, "tenant": "acme", "models": ["fast"]},
                ]
            },
        }
        with serve_app(create_app(Runtime(parse_config(config)))) as areion_url:
            yield up, areion_url


def client(url: str, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


async def test_a_completion(server: Any) -> None:
    up, url = server
    raw = await client(url).completions.with_raw_response.create(
        model="fast", prompt="Say hello", temperature=0, stop="\n", seed=3
    )
    completion = raw.parse()
    assert completion.object == "text_completion"
    [choice] = completion.choices
    assert (choice.text, choice.index, choice.finish_reason) == ("Hello from upstream.", 0, "stop")
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (11, 7)
    assert raw.headers["x-areion-model"] == "fast/fast-upstream"
    assert float(raw.headers["x-areion-cost-usd"]) == pytest.approx((11 * 0.15 + 7 * 0.6) / 1e6)
    sent = up.requests[0]
    assert sent["messages"] == [{"role": "user", "content": "Say hello"}]
    assert (sent["max_tokens"], sent["stop"], sent["seed"]) == (16, ["\n"], 3)  # OpenAI's 16


async def test_a_list_of_prompts_is_a_call_each_numbered_as_openai_does(server: Any) -> None:
    up, url = server
    raw = await client(url).completions.with_raw_response.create(
        model="fast", prompt=["one", "two"], n=2, max_tokens=5
    )
    completion = raw.parse()
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    assert completion.usage is not None and completion.usage.completion_tokens == 2 * 2 * 7
    assert sorted(r["messages"][0]["content"] for r in up.requests) == ["one", "two"]
    assert all(r["n"] == 2 for r in up.requests)
    # Both calls are paid: the header says what they cost together.
    one = (11 * 0.15 + 14 * 0.6) / 1e6
    assert float(raw.headers["x-areion-cost-usd"]) == pytest.approx(2 * one)


async def test_a_streamed_completion(server: Any) -> None:
    up, url = server
    up.default = Behaviour(text="one two three")
    stream = await client(url).completions.create(
        model="fast", prompt=["a", "b"], stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    by_index: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            by_index[choice.index] = by_index.get(choice.index, "") + choice.text
    assert by_index == {0: "one two three", 1: "one two three"}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 14
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes.count("stop") == 2
    assert up.calls == 2


async def test_what_a_chat_model_cannot_do_is_refused(server: Any) -> None:
    up, url = server
    for bad, param in (
        ({"echo": True}, "echo"),
        ({"suffix": "end"}, "suffix"),
        ({"logprobs": 2}, "logprobs"),
        ({"best_of": 3}, "best_of"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"max_tokens": "5"}, "max_tokens"),
    ):
        body = {"model": "fast", "prompt": "hi", **bad}
        with pytest.raises(openai.BadRequestError) as refused:
            await client(url).completions.create(**body)
        assert refused.value.body["param"] == param  # type: ignore[index]
    assert up.calls == 0


async def test_models_retrieve_shows_only_what_the_key_may_use(server: Any) -> None:
    _, url = server
    model = await client(url).models.retrieve("strong")
    assert (model.id, model.object) == ("strong", "model")
    assert (await client(url, NARROW_KEY).models.retrieve("fast")).id == "fast"
    with pytest.raises(openai.NotFoundError) as hidden:
        await client(url, NARROW_KEY).models.retrieve("strong")
    with pytest.raises(openai.NotFoundError) as missing:
        await client(url, NARROW_KEY).models.retrieve("nothing")
    # A model the key may not use looks exactly like one that does not exist.
    hidden_error: Any = hidden.value.body
    missing_error: Any = missing.value.body
    assert hidden_error["message"].replace("strong", "X") == missing_error["message"].replace(
        "nothing", "X"
    )
    assert "strong" not in missing_error["message"]
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.get("/v1/models/fast")
        assert r.status_code == 401

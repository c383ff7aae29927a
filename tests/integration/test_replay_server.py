"""Replay through the server: recorded answers and their exact recorded cost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from tests.support import serve_app
from tests.unit.test_replay import _write

PROMPT = "Which planet is largest?\nA) Mars\nB) Jupiter\nAnswer:"


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    data = _write(
        tmp_path / "bench.csv",
        ["gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat"],
        [
            {
                "id": "q.1",
                "task": "arc",
                "prompt": [PROMPT],
                "answers": {
                    "gpt-4-1106-preview": ("B", 0.00533, 1.0),
                    "mistralai/mixtral-8x7b-chat": ("A", 0.0003192, 0.0),
                },
            }
        ],
    )
    config = parse_config(
        {
            "models": [
                {
                    "name": "gpt4",
                    "provider": "replay",
                    "model": "gpt-4-1106-preview",
                    "data": str(data),
                },
                {
                    "name": "mixtral",
                    "provider": "replay",
                    "model": "mixtral-8x7b-chat",
                    "data": str(data),
                },
            ],
            "store": "sqlite:///:memory:",
        }
    )
    with serve_app(create_app(Runtime(config))) as base:
        yield base


def test_recorded_answers_and_costs(url: str) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    for model, answer, cost in (("gpt4", "B", 0.00533), ("mixtral", "A", 0.0003192)):
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": PROMPT}]
        )
        assert raw.parse().choices[0].message.content == answer
        assert float(raw.headers["x-areion-cost-usd"]) == pytest.approx(cost, rel=1e-9)
        usage = raw.parse().usage
        assert usage is not None and usage.prompt_tokens > 0  # counted with the tokenizer
    stream = client.chat.completions.create(
        model="gpt4", messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "B"


def test_unknown_prompt_is_a_clear_404(url: str) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(
            model="gpt4", messages=[{"role": "user", "content": "Something never recorded"}]
        )
    assert "Something never recorded" in str(error.value)
    assert "recording" in str(error.value)

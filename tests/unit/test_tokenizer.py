"""Offline token counts (cl100k_base): exact for short texts, bounded work for huge ones."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from areion import tokenizer
from areion.tokenizer import count_tokens, estimate_usage
from areion.types import ChatRequest, Message, ToolCall


def _request(*contents: str) -> ChatRequest:
    return ChatRequest(
        model="fast", messages=[Message(role="user", content=text) for text in contents]
    )


def test_known_counts() -> None:
    assert count_tokens("") == 0
    assert count_tokens("hello world") == 2
    assert count_tokens("The quick brown fox jumps over the lazy dog.") == 10


def test_special_token_text_is_counted_not_rejected() -> None:
    # A user can type "<|endoftext|>"; it is ordinary text, not a control token.
    assert count_tokens("<|endoftext|>") > 1


def test_count_is_deterministic_across_threads() -> None:
    text = "Ünïcödé and emoji 🚀 with code: def f(x): return x**2\n" * 20
    expected = count_tokens(text)
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(count_tokens(text))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 8


def test_estimate_is_marked_estimated() -> None:
    usage = estimate_usage(_request("hello world"), "hello world")
    assert usage.estimated is True
    assert usage.completion_tokens == 2
    # OpenAI's chat framing: 3 per message + 3 to prime the reply
    assert usage.prompt_tokens == 3 + 2 + 3
    assert usage.cached_tokens == 0


def test_longer_prompt_counts_more_tokens() -> None:
    short = estimate_usage(_request("Summarise this."), "")
    long = estimate_usage(_request("Summarise this. " + "Lorem ipsum dolor sit amet. " * 50), "")
    assert long.prompt_tokens > short.prompt_tokens + 200
    assert short.completion_tokens == long.completion_tokens == 0


def test_every_message_counts() -> None:
    one = estimate_usage(_request("hello world"), "")
    two = estimate_usage(_request("hello world", "hello world"), "")
    assert two.prompt_tokens - one.prompt_tokens == 3 + 2


def test_content_parts_are_counted_by_their_text() -> None:
    parts = ChatRequest(
        model="fast",
        messages=[
            Message(
                role="user",
                content=[
                    {"type": "text", "text": "hello"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    {"type": "text", "text": " world"},
                ],
            )
        ],
    )
    assert (
        estimate_usage(parts, "").prompt_tokens
        == estimate_usage(_request("hello world"), "").prompt_tokens
    )


def test_tool_calls_in_history_count() -> None:
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    with_call = ChatRequest(
        model="fast",
        messages=[Message(role="assistant", content=None, tool_calls=[call])],
    )
    without = ChatRequest(model="fast", messages=[Message(role="assistant", content=None)])
    extra = estimate_usage(with_call, "").prompt_tokens - estimate_usage(without, "").prompt_tokens
    assert extra == count_tokens("get_weather") + count_tokens('{"city": "Paris"}')
    assert extra > 0


class _Spy:
    """The real encoding, noting how many characters it was given to encode."""

    def __init__(self, encoding: Any) -> None:
        self.encoding = encoding
        self.chars = 0

    def encode(self, text: str, **options: Any) -> Any:
        self.chars += len(text)
        return self.encoding.encode(text, **options)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> _Spy:
    watched = _Spy(tokenizer._encoder())
    monkeypatch.setattr(tokenizer, "_encoding", watched)
    return watched


def test_a_huge_prompt_costs_a_bounded_count(spy: _Spy) -> None:
    # Admission counts a prompt on the event loop: 10 MB once stalled the server 12 s.
    usage = estimate_usage(_request("x" * 10_000_000), "")
    assert spy.chars <= 64_000
    assert usage.prompt_tokens > 1_000_000  # tiktoken: 8 x's to a token


def test_many_messages_share_the_bound(spy: _Spy) -> None:
    estimate_usage(_request(*["hello world, " * 200] * 5_000), "")
    assert spy.chars <= 64_000


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog, 42 times. " * 20_000,
        ("Plain English prose. " * 3_000 + "漢字かな交じり文と数字 1234567 " * 3_000) * 10,
        "".join(f"def f{i}(x):\n    return x ** {i} + {i * 7}\n\n" for i in range(40_000)),
    ],
)
def test_a_long_text_is_estimated_closely_at_a_bounded_cost(spy: _Spy, text: str) -> None:
    estimate = count_tokens(text)
    assert spy.chars <= 64_000
    exact = len(spy.encoding.encode(text, disallowed_special=()))
    assert abs(estimate - exact) <= 0.1 * exact


def test_count_each_is_exact_for_an_ordinary_request() -> None:
    texts = ["hello world", "The quick brown fox jumps over the lazy dog.", ""]
    assert tokenizer.count_each(texts) == [2, 10, 0]


def test_count_each_bounds_the_work_on_a_huge_request(monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[int] = []
    real = tokenizer._exact

    def counting(text: str) -> int:
        encoded.append(len(text))
        return real(text)

    monkeypatch.setattr(tokenizer, "_exact", counting)
    texts = ["lorem ipsum dolor sit amet " * 400] * 200  # 2.16M characters in 200 inputs
    counts = tokenizer.count_each(texts)
    assert len(counts) == 200
    # Each text is 5 words of 1-2 tokens, 400 times: the estimates are close.
    exact = real(texts[0])
    assert all(abs(count - exact) <= exact * 0.05 for count in counts)
    assert sum(encoded) <= 2 * 32_768 + 64 * 512  # not 2.16M characters encoded


def test_recent_counts_are_kept_within_their_characters() -> None:
    from areion.tokenizer import _Counts

    counts = _Counts(max_chars=250, min_chars=10)
    texts = [f"{i} " + "an agent's system prompt, sent with every call " * 2 for i in range(4)]
    assert [counts(t) for t in texts] == [tokenizer._encoded(t) for t in texts]
    # Each text is ~100 characters: only the two most recent are kept, the oldest forgotten.
    assert list(counts._counts) == texts[2:]
    assert counts(texts[2]) == tokenizer._encoded(texts[2])  # a kept one is used again...
    assert list(counts._counts) == [texts[3], texts[2]]  # ...and is now the most recent
    assert counts("short") == tokenizer._encoded("short") and "short" not in counts._counts

"""`OutputEstimate`: what a call reserves for its output, learned from its model."""

from __future__ import annotations

from areion.control.estimates import OutputEstimate


def test_the_default_stands_until_the_model_has_answered_enough() -> None:
    estimate = OutputEstimate(1024, min_samples=20)
    for _ in range(19):
        estimate.observe("fast", 40)
    assert estimate.tokens("fast", max_tokens=None) == 1024
    estimate.observe("fast", 40)
    assert estimate.tokens("fast", max_tokens=None) == 40
    assert estimate.tokens("strong", max_tokens=None) == 1024  # per model


def test_it_is_the_95th_percentile_per_answer_capped_by_max_tokens() -> None:
    estimate = OutputEstimate(1024, min_samples=20, refresh_every=1)
    for length in range(1, 101):  # 1..100 tokens
        estimate.observe("fast", length)
    assert estimate.tokens("fast", max_tokens=None) == 95
    assert estimate.tokens("fast", max_tokens=50) == 50
    assert estimate.tokens("fast", max_tokens=None, n=3) == 3 * 95
    estimate.observe("fast", 3 * 500, n=3)  # n answers: their length per answer
    assert estimate.tokens("fast", max_tokens=None) == 96


def test_it_follows_what_the_model_produces_now() -> None:
    estimate = OutputEstimate(1024, window=50, min_samples=20, refresh_every=1)
    for _ in range(50):
        estimate.observe("fast", 800)
    for _ in range(50):
        estimate.observe("fast", 30)  # the window has moved on: shorter answers now
    assert estimate.tokens("fast", max_tokens=None) == 30

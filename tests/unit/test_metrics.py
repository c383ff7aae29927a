"""Metrics (`areion.telemetry.metrics`): GenAI histograms, bounded label values."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from areion.telemetry import metrics as metrics_module
from areion.telemetry.metrics import OTHER, LabelValues, Metrics


def series(metrics: Metrics) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    text = metrics.exposition().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_label_values_are_the_known_then_a_few_spare_then_other() -> None:
    values = LabelValues(["fast"], spare=2)
    assert [values(v) for v in ("fast", "a", "b", "c", "a", "fast")] == [
        "fast",
        "a",
        "b",
        OTHER,
        "a",
        "fast",
    ]


def test_unknown_models_deployments_kinds_and_tenants_make_no_new_series() -> None:
    metrics = Metrics(models=["fast"], tenants=["acme"])
    deployment = metrics.for_deployment("fast", "fast/a", provider="openai")
    metrics.error("nope-0", "", "rate_limited")
    deployment.cost("acme", 0.01)
    for i in range(3000):
        metrics.error(f"nope-{i}", f"dep-{i}", f"kind-{i}")
        metrics.cognitive_error(f"agent-{i}", "unknown_tool")
        deployment.cost(f"tenant-{i}", 0.01)
        deployment.error(f"kind-{i}")
    before = series(metrics)
    for i in range(3000, 6000):
        metrics.error(f"nope-{i}", f"dep-{i}", f"kind-{i}")
        metrics.cognitive_error(f"agent-{i}", "unknown_tool")
        deployment.cost(f"tenant-{i}", 0.01)
        deployment.error(f"kind-{i}")
    assert series(metrics) == before
    models = {dict(labels).get("model") for _, labels in before} - {None}
    assert models == {"fast", OTHER}


def test_genai_histograms_carry_the_conventions_attributes() -> None:
    metrics = Metrics(models=["fast"])
    deployment = metrics.for_deployment("fast", "fast/a", provider="openai", embeds=True)
    deployment.chat.duration.observe(0.3)
    deployment.chat.input_tokens.observe(12)
    deployment.embeddings.input_tokens.observe(5)
    found = series(metrics)
    genai = (
        ("deployment", "fast/a"),
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "openai"),
        ("gen_ai_request_model", "fast"),
    )
    assert ("gen_ai_client_operation_duration_seconds_count", genai) in found
    assert ("gen_ai_client_operation_time_to_first_chunk_seconds_count", genai) in found
    tokens = (*genai, ("gen_ai_token_type", "input"))
    assert ("gen_ai_client_token_usage_bucket", (*tokens, ("le", "16.0"))) in found
    embeddings = tuple(
        (name, "embeddings" if name == "gen_ai_operation_name" else value) for name, value in tokens
    )
    assert ("gen_ai_client_token_usage_count", embeddings) in found


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


@pytest.mark.parametrize("plain_values", [True, False], ids=["floats", "value-methods"])
def test_an_answered_call_counts_as_prometheus_clients_own_methods_do(
    plain_values: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`answered` adds to the values' floats (or, in multiprocess mode, calls their own
    methods): the same text as the public methods, for chat and embeddings calls, failed
    ones, cached tokens and a tenant seen for the first time."""
    monkeypatch.setattr(metrics_module, "_PLAIN_VALUES", plain_values)
    fast, slow = Metrics(models=["fast"]), Metrics(models=["fast"])
    bound = fast.for_deployment("fast", "fast/a", provider="openai", embeds=True)
    slow.for_deployment("fast", "fast/a", provider="openai", embeds=True)
    calls = [
        ("chat", 0.0123, 12, 30, 0, "acme", 0.5, True),
        ("chat", 81.92, 4096, 1, 1024, "acme", 1e-9, True),
        ("chat", 0.3, 3, 0, 0, "zeta", 0.0, False),
        ("embeddings", 0.02, 16, None, 0, "acme", 0.25, True),
    ]
    for operation, latency, prompt, completion, cached, tenant, amount, ok in calls:
        bound.answered(
            bound.chat if operation == "chat" else bound.embeddings,
            latency_s=latency,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            tenant=tenant,
            amount=amount,
            ok=ok,
        )
        genai = (operation, "openai", "fast", "fast/a")
        if ok:
            slow.requests.labels("fast", "fast/a", "ok").inc()
        slow.duration.labels(*genai).observe(latency)
        slow.token_usage.labels(*genai, "input").observe(prompt)
        slow.tokens.labels("fast", "fast/a", "input").inc(prompt)
        if completion is not None:
            slow.token_usage.labels(*genai, "output").observe(completion)
            slow.tokens.labels("fast", "fast/a", "output").inc(completion)
        if cached:
            slow.tokens.labels("fast", "fast/a", "cached_input").inc(cached)
        slow.cost.labels("fast", "fast/a", slow.tenant(tenant)).inc(amount)
    answered = _samples(fast)
    assert answered == _samples(slow)
    assert (
        answered[
            (
                "areion_requests_total",
                (("deployment", "fast/a"), ("model", "fast"), ("outcome", "ok")),
            )
        ]
        == 3
    )


def test_bound_children_count_as_prometheus_clients_own_methods_do() -> None:
    """The call path's `BoundCounter`/`BoundHistogram` reach into prometheus_client's
    children; the same observations through the public methods give the same text."""
    amounts = [0.0, 0.01, 0.0100001, 0.3, 0.64, 5.12, 81.92, 1e9, 12, 16, 3]
    fast, slow = Metrics(models=["fast"]), Metrics(models=["fast"])
    bound = fast.for_deployment("fast", "fast/a", provider="openai")
    slow.for_deployment("fast", "fast/a", provider="openai")  # the same series, at zero
    for amount in amounts:
        bound.chat.duration.observe(amount)
        bound.chat.ttft.observe(amount)
        bound.chat.input_tokens.observe(amount)
        bound.ok.inc()
        bound.output_tokens.inc(amount)
        bound.cost("acme", amount)
        slow.duration.labels("chat", "openai", "fast", "fast/a").observe(amount)
        slow.ttft.labels("chat", "openai", "fast", "fast/a").observe(amount)
        slow.token_usage.labels("chat", "openai", "fast", "fast/a", "input").observe(amount)
        slow.requests.labels("fast", "fast/a", "ok").inc()
        slow.tokens.labels("fast", "fast/a", "output").inc(amount)
        slow.cost.labels("fast", "fast/a", slow.tenant("acme")).inc(amount)

    fast_samples, slow_samples = _samples(fast), _samples(slow)
    assert fast_samples == slow_samples
    assert fast_samples[
        (
            "gen_ai_client_operation_duration_seconds_count",
            (
                ("deployment", "fast/a"),
                ("gen_ai_operation_name", "chat"),
                ("gen_ai_provider_name", "openai"),
                ("gen_ai_request_model", "fast"),
            ),
        )
    ] == len(amounts)

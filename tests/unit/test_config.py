"""Loading `areion.yaml`: environment interpolation, validation messages, secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from areion.config import Config, default_config, load_config, parse_config
from areion.errors import ConfigError

OPENAI_SECRET = "sk-proj-test-0penai-Secret-4242"
ACME_SECRET = "acme-live-Secret-7777"
TEAM_SECRET = "ar-team-a-Secret-1234"

EXAMPLE = """\
# Two deployments of `fast` (OpenAI and an OpenAI-compatible vLLM at ACME), a local
# sim as the fallback, one tenant key.
models:
  - name: fast
    provider: openai
    model: gpt-4o-mini
    base_url: https://api.openai.com/v1
    api_key: ${OPENAI_API_KEY}
    price: {input: 0.15, output: 0.60, cached_input: 0.075}
  - name: fast
    provider: openai
    model: meta-llama/Llama-3.1-8B-Instruct
    base_url: ${ACME_BASE_URL:-http://vllm.acme.internal:8000/v1}
    api_key: ${ACME_KEY}
    max_concurrency: 64
    load_metrics_url: http://vllm.acme.internal:8000/metrics
    first_byte_timeout: 20
  - name: strong
    provider: sim
    model: sim-strong
fallbacks:
  fast: [strong]
auth:
  keys:
    - key: ${AREION_TEAM_A_KEY}
      tenant: team-a
store: sqlite:///${AREION_STATE_DIR:-/var/lib/areion}/areion.db
retry:
  max_attempts: 4
server:
  port: ${AREION_PORT:-9000}
"""


def _one_sim(**extra: Any) -> dict[str, Any]:
    return {"models": [{"name": "fast", "provider": "sim", **extra}]}


@pytest.fixture
def example_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_SECRET)
    monkeypatch.setenv("ACME_KEY", ACME_SECRET)
    monkeypatch.setenv("AREION_TEAM_A_KEY", TEAM_SECRET)
    for name in ("ACME_BASE_URL", "AREION_STATE_DIR", "AREION_PORT"):
        monkeypatch.delenv(name, raising=False)


def _error(data: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value.message


# --- interpolation ---------------------------------------------------------------


def test_variable_is_replaced_anywhere_in_a_string(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_HOST", "vllm-7.acme.internal")
    monkeypatch.setenv("ACME_KEY", ACME_SECRET)
    config = parse_config(
        {
            "models": [
                {
                    "name": "fast",
                    "provider": "openai",
                    "base_url": "http://${ACME_HOST}:8000/v1",
                    "api_key": "${ACME_KEY}",
                    "headers": {"x-route": "pool-${ACME_HOST}-a"},
                }
            ]
        }
    )
    model = config.models[0]
    assert model.base_url == "http://vllm-7.acme.internal:8000/v1"
    assert model.headers["x-route"].get_secret_value() == "pool-vllm-7.acme.internal-a"
    assert model.api_key is not None
    assert model.api_key.get_secret_value() == ACME_SECRET


def test_default_is_used_only_when_the_variable_is_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AREION_TEST_URL", raising=False)
    data = _one_sim(base_url="${AREION_TEST_URL:-http://localhost:8000/v1}")
    assert parse_config(data).models[0].base_url == "http://localhost:8000/v1"

    monkeypatch.setenv("AREION_TEST_URL", "http://gpu-box:9000/v1")
    assert parse_config(data).models[0].base_url == "http://gpu-box:9000/v1"


def test_empty_default_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AREION_TEST_MODEL", raising=False)
    config = parse_config(_one_sim(model="sim-fast${AREION_TEST_MODEL:-}"))
    assert config.models[0].model == "sim-fast"


def test_an_empty_variable_takes_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AREION_TEST_URL", "")
    config = parse_config(_one_sim(base_url="${AREION_TEST_URL:-http://localhost:8000/v1}"))
    assert config.models[0].base_url == "http://localhost:8000/v1"


def test_interpolated_number_is_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AREION_TEST_PORT", "8123")
    config = parse_config({**_one_sim(), "server": {"port": "${AREION_TEST_PORT}"}})
    assert config.server.port == 8123


def test_unset_variable_names_the_field_path_and_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AREION_TEST_MISSING_KEY", raising=False)
    data = {
        "models": [
            {"name": "fast", "provider": "sim"},
            {"name": "fast", "provider": "sim", "api_key": "${AREION_TEST_MISSING_KEY}"},
        ]
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert caught.value.param == "models[1].api_key"
    assert "models[1].api_key" in caught.value.message
    assert "AREION_TEST_MISSING_KEY" in caught.value.message
    # and says how to fix it
    assert "${AREION_TEST_MISSING_KEY:-default}" in caught.value.message


def test_unset_variable_in_a_nested_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AREION_TEST_TEAM_KEY", raising=False)
    data = {
        **_one_sim(),
        "auth": {"keys": [{"key": "${AREION_TEST_TEAM_KEY}", "tenant": "team-a"}]},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert caught.value.param == "auth.keys[0].key"
    assert "AREION_TEST_TEAM_KEY" in caught.value.message


# --- validation messages -----------------------------------------------------------


def test_negative_price_names_the_field() -> None:
    message = _error(_one_sim(price={"input": -1.0, "output": 0.6}))
    assert "models[0].price.input" in message
    assert "greater than or equal to 0" in message


def test_openai_provider_without_base_url() -> None:
    message = _error({"models": [{"name": "fast", "provider": "openai", "model": "gpt-4o"}]})
    assert "models[0]" in message
    assert "base_url" in message


def test_replay_provider_without_data() -> None:
    message = _error({"models": [{"name": "rb", "provider": "replay"}]})
    assert "models[0]" in message
    assert "data" in message


def test_unknown_provider_names_the_field() -> None:
    message = _error({"models": [{"name": "fast", "provider": "azure"}]})
    assert "models[0].provider" in message
    assert "'openai'" in message


def test_fallback_to_an_unknown_group() -> None:
    message = _error({**_one_sim(), "fallbacks": {"fast": ["strnog"]}})
    assert "fallbacks.fast" in message
    assert "'strnog' is not a model name" in message


def test_fallback_from_an_unknown_group() -> None:
    message = _error({**_one_sim(), "fallbacks": {"fsat": ["fast"]}})
    assert "fallbacks" in message
    assert "'fsat' is not a model name" in message


def test_group_cannot_fall_back_to_itself() -> None:
    message = _error({**_one_sim(), "fallbacks": {"fast": ["fast"]}})
    assert "fallbacks.fast" in message
    assert "itself" in message


def test_duplicate_deployment_ids() -> None:
    data = {
        "models": [
            {"name": "fast", "provider": "sim", "id": "gpu-1"},
            {"name": "strong", "provider": "sim", "id": "gpu-1"},
        ]
    }
    message = _error(data)
    assert "models" in message
    assert "unique" in message


def test_unsupported_store_url() -> None:
    message = _error({**_one_sim(), "store": "mysql://admin:hunter2@db.internal/areion"})
    assert "store" in message
    assert "'mysql://...'" in message
    assert "hunter2" not in message  # a URL may carry a password: only its scheme is shown
    assert "sqlite:///" in message and "postgresql://" in message


@pytest.mark.parametrize(
    "url", ["postgresql://areion@db.internal:5432/areion", "postgres://db.internal/areion?schema=a"]
)
def test_postgres_store_urls_are_accepted(url: str) -> None:
    assert Config.model_validate({**_one_sim(), "store": url}).store == url


def test_store_url_with_two_slashes_is_rejected_at_load() -> None:
    message = _error({**_one_sim(), "store": "sqlite://areion.db"})
    assert "store" in message


def test_unknown_top_level_key() -> None:
    message = _error({**_one_sim(), "fallback": {"fast": []}})
    assert "fallback:" in message
    assert "Extra inputs are not permitted" in message


def test_unknown_model_key_names_the_model() -> None:
    message = _error(_one_sim(api_base="http://x"))
    assert "models[0].api_base" in message


def test_first_byte_timeout_longer_than_total() -> None:
    message = _error(_one_sim(first_byte_timeout=30, total_timeout=10))
    assert "models[0]" in message
    assert "first_byte_timeout" in message


def test_empty_auth_key_is_rejected() -> None:
    message = _error({**_one_sim(), "auth": {"keys": [{"key": "", "tenant": "a"}]}})
    assert "auth.keys[0]" in message
    assert "empty" in message


def test_every_problem_is_reported_at_once() -> None:
    message = _error(
        {
            "models": [
                {"name": "fast", "provider": "sim", "price": {"input": -1, "output": 1}},
                {"name": "", "provider": "sim"},
            ]
        }
    )
    assert "models[0].price.input" in message
    assert "models[1].name" in message


def test_no_models() -> None:
    assert "models" in _error({"models": []})
    assert "models" in _error({})


def test_top_level_must_be_a_mapping() -> None:
    assert "mapping" in _error(["models"])


# --- files ---------------------------------------------------------------------------


def test_example_config_loads(tmp_path: Path, example_env: None) -> None:
    path = tmp_path / "areion.yaml"
    path.write_text(EXAMPLE, encoding="utf-8")

    config = load_config(path)

    assert isinstance(config, Config)
    assert [m.name for m in config.models] == ["fast", "fast", "strong"]
    openai, acme, sim = config.models
    assert openai.api_key is not None and openai.api_key.get_secret_value() == OPENAI_SECRET
    assert acme.api_key is not None and acme.api_key.get_secret_value() == ACME_SECRET
    assert acme.base_url == "http://vllm.acme.internal:8000/v1"
    assert acme.max_concurrency == 64
    assert acme.upstream_model == "meta-llama/Llama-3.1-8B-Instruct"
    assert sim.upstream_model == "sim-strong"
    assert openai.price is not None and openai.price.cached_input == pytest.approx(0.075)
    assert config.fallbacks == {"fast": ["strong"]}
    assert config.auth.keys[0].tenant == "team-a"
    assert config.auth.keys[0].key.get_secret_value() == TEAM_SECRET
    assert config.store == "sqlite:////var/lib/areion/areion.db"
    assert config.retry.max_attempts == 4
    assert config.breaker.failure_threshold == 5  # defaults fill what is left out
    assert config.server.port == 9000


def test_secrets_never_show_in_repr_or_str(tmp_path: Path, example_env: None) -> None:
    path = tmp_path / "areion.yaml"
    path.write_text(EXAMPLE, encoding="utf-8")
    config = load_config(path)

    for text in (repr(config), str(config), repr(config.models), str(config.auth)):
        assert OPENAI_SECRET not in text
        assert ACME_SECRET not in text
        assert TEAM_SECRET not in text
    # the rest of the config is still readable
    assert "vllm.acme.internal" in repr(config)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in caught.value.message


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "areion.yaml"
    path.write_text("models:\n  - name: fast\n   provider: sim\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in caught.value.message
    assert "YAML" in caught.value.message


def test_validation_error_from_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "areion.yaml"
    path.write_text("models:\n  - name: fast\n    provider: openai\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in caught.value.message
    assert "base_url" in caught.value.message


def test_empty_file_says_models_are_missing(tmp_path: Path) -> None:
    path = tmp_path / "areion.yaml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "models" in caught.value.message


# --- default ---------------------------------------------------------------------------


def test_default_config_runs_on_sim_models() -> None:
    config = default_config()
    assert [(m.name, m.provider, m.upstream_model) for m in config.models] == [
        ("fast", "sim", "sim-fast"),
        ("strong", "sim", "sim-strong"),
    ]
    assert config.fallbacks == {"fast": ["strong"]}
    assert config.auth.keys == []
    assert config.store.startswith("sqlite:///")


def test_variable_inside_a_yaml_flow_mapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `{key: ${ACME_KEY}}` is not valid YAML as written; the example uses it.
    monkeypatch.setenv("ACME_KEY", "k: with # yaml {chars}")
    path = tmp_path / "areion.yaml"
    path.write_text(
        "models:\n  - {name: fast, provider: sim, model: sim-fast}\n"
        "auth:\n  keys:\n    - {key: ${ACME_KEY}, tenant: acme}\n"
    )
    config = load_config(path)
    assert config.auth.keys[0].key.get_secret_value() == "k: with # yaml {chars}"
    assert config.auth.keys[0].tenant == "acme"


def test_header_values_are_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_KEY", ACME_SECRET)
    config = parse_config(
        {
            "models": [
                {
                    "name": "fast",
                    "provider": "sim",
                    "headers": {"authorization": "Bearer ${ACME_KEY}"},
                }
            ]
        }
    )
    assert ACME_SECRET not in repr(config) and ACME_SECRET not in str(config)


def test_tenants_may_sit_beside_auth_or_in_it_but_once() -> None:
    models = [{"name": "fast", "provider": "sim"}]
    config = parse_config(
        {
            "models": models,
            "tenants": [{"name": "acme", "rpm": 10}],
            "auth": {"tenants": [{"name": "globex", "rpm": 20}]},
        }
    )
    assert [(t.name, t.rpm) for t in config.all_tenants] == [("acme", 10), ("globex", 20)]
    with pytest.raises(ConfigError, match=r"tenants: acme also in auth\.tenants; list each"):
        parse_config(
            {
                "models": models,
                "tenants": [{"name": "acme"}],
                "auth": {"tenants": [{"name": "acme"}]},
            }
        )
    with pytest.raises(ConfigError, match=r"tenants\[0\]\.rpm: Input should be greater"):
        parse_config({"models": models, "tenants": [{"name": "acme", "rpm": 0}]})


def _local(**extra: Any) -> dict[str, Any]:
    return {"models": [{"name": "mini", "provider": "local"}], **extra}


def test_a_local_model_is_the_bundled_embedder() -> None:
    config = parse_config(_local())
    assert config.models[0].upstream_model == "all-MiniLM-L6-v2"
    with pytest.raises(ConfigError, match="serves only all-MiniLM-L6-v2"):
        parse_config({"models": [{"name": "mini", "provider": "local", "model": "bge-small"}]})


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (
            {
                "models": [
                    {"name": "mini", "provider": "local"},
                    {"name": "mini", "provider": "sim"},
                ]
            },
            "must all be local",
        ),
        ({"routes": [{"name": "auto", "candidates": ["mini", "chat"]}]}, "serves embeddings only"),
        ({"fallbacks": {"chat": ["mini"]}}, "not interchangeable"),
        ({"fallbacks": {"mini": ["chat"]}}, "not interchangeable"),
        ({"memory": {"summary_model": "mini"}}, "serves embeddings only"),
    ],
)
def test_local_models_stay_out_of_chat(extra: dict[str, Any], words: str) -> None:
    data: dict[str, Any] = {
        "models": [{"name": "mini", "provider": "local"}, {"name": "chat", "provider": "sim"}]
    }
    data.update(extra)
    with pytest.raises(ConfigError, match=words):
        parse_config(data)


def test_tracing_is_on_by_the_config_or_by_an_otlp_endpoint_in_the_environment() -> None:
    models = [{"name": "m", "provider": "sim"}]
    unset = parse_config({"models": models}).tracing
    assert not unset.active({})
    assert unset.active({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert unset.active({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    on = parse_config({"models": models, "tracing": {"enabled": True}}).tracing
    assert on.active({})
    off = parse_config({"models": models, "tracing": {"enabled": False}}).tracing
    assert not off.active({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    # The SDK's own switch wins over everything.
    assert not on.active({"OTEL_SDK_DISABLED": "true"})


def test_tracing_settings_are_checked_and_keep_headers_secret() -> None:
    models = [{"name": "m", "provider": "sim"}]
    with pytest.raises(ConfigError, match="sample_ratio"):
        parse_config({"models": models, "tracing": {"sample_ratio": 1.5}})
    with pytest.raises(ConfigError, match="tracing"):
        parse_config({"models": models, "tracing": {"endpont": "http://c:4318"}})
    tracing = parse_config(
        {"models": models, "tracing": {"headers": {"api-key": "sk-secret-123"}}}
    ).tracing
    assert "sk-secret-123" not in repr(tracing)
    assert tracing.headers["api-key"].get_secret_value() == "sk-secret-123"


def test_native_batch_is_for_providers_with_a_batch_api() -> None:
    with pytest.raises(ConfigError, match=r"native_batch: only providers 'openai' .* 'anthropic'"):
        parse_config({"models": [{"name": "s", "provider": "sim", "native_batch": True}]})
    anthropic = parse_config(
        {"models": [{"name": "c", "provider": "anthropic", "model": "m", "native_batch": True}]}
    )
    assert anthropic.models[0].native_batch
    config = parse_config(
        {"models": [{"name": "f", "provider": "openai", "base_url": "http://h/v1",
                     "native_batch": True, "price": {"input": 1, "output": 2}}]}
    )  # fmt: skip
    assert config.models[0].price is not None and config.models[0].price.batch == 0.5

"""Reading the load gauges out of a vLLM /metrics page."""

from __future__ import annotations

import time

import pytest

from areion.gateway.load import RemoteLoad, parse_vllm_metrics

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
QWEN = "Qwen/Qwen2.5-7B-Instruct"

# Shaped like vLLM >= 0.10 (V1 engine): `engine` and `model_name` labels, the KV gauge
# under its new name, plus counters and histograms that must be ignored.
VLLM_NEW = f"""\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{{generation="0"}} 12091.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="{LLAMA}"}} 12.0
vllm:num_requests_running{{engine="1",model_name="{LLAMA}"}} 5.0
vllm:num_requests_running{{engine="0",model_name="{QWEN}"}} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="{LLAMA}"}} 4.0
vllm:num_requests_waiting{{engine="1",model_name="{LLAMA}"}} 2.0
vllm:num_requests_waiting{{engine="0",model_name="{QWEN}"}} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="{LLAMA}"}} 0.61
vllm:kv_cache_usage_perc{{engine="1",model_name="{LLAMA}"}} 0.87
vllm:kv_cache_usage_perc{{engine="0",model_name="{QWEN}"}} 0.25
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{{engine="0",model_name="{LLAMA}"}} 1.234567e+06
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.1",model_name="{LLAMA}"}} 80.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",model_name="{LLAMA}"}} 100.0
vllm:time_to_first_token_seconds_count{{engine="0",model_name="{LLAMA}"}} 100.0
vllm:time_to_first_token_seconds_sum{{engine="0",model_name="{LLAMA}"}} 9.5
"""

# Shaped like vLLM 0.6-0.8 (V0 engine): the KV gauge is `gpu_cache_usage_perc`.
VLLM_OLD = f"""\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{model_name="{LLAMA}"}} 7.0
vllm:num_requests_running{{model_name="{QWEN}"}} 1.0
# HELP vllm:num_requests_swapped Number of requests swapped to CPU.
# TYPE vllm:num_requests_swapped gauge
vllm:num_requests_swapped{{model_name="{LLAMA}"}} 9.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{model_name="{LLAMA}"}} 11.0
vllm:num_requests_waiting{{model_name="{QWEN}"}} 2.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{{model_name="{LLAMA}"}} 0.98
vllm:gpu_cache_usage_perc{{model_name="{QWEN}"}} 0.4
# HELP vllm:cpu_cache_usage_perc CPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:cpu_cache_usage_perc gauge
vllm:cpu_cache_usage_perc{{model_name="{LLAMA}"}} 0.5
"""

# A transitional release exposes both names for the same cache.
VLLM_BOTH = f"""\
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage (deprecated).
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{{engine="0",model_name="{LLAMA}"}} 0.42
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="{LLAMA}"}} 0.42
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="{LLAMA}"}} 2.0
"""


def test_one_model_of_two_sums_its_engines() -> None:
    load = parse_vllm_metrics(VLLM_NEW, model=LLAMA)
    assert load.running == 17.0
    assert load.waiting == 6.0
    # the fullest engine's cache decides whether the deployment is about to queue
    assert load.kv_cache_usage == pytest.approx(0.87)


def test_the_other_model_is_not_mixed_in() -> None:
    load = parse_vllm_metrics(VLLM_NEW, model=QWEN)
    assert (load.running, load.waiting) == (3.0, 0.0)
    assert load.kv_cache_usage == pytest.approx(0.25)


def test_without_a_model_every_model_counts() -> None:
    load = parse_vllm_metrics(VLLM_NEW)
    assert load.running == 20.0
    assert load.waiting == 6.0
    assert load.kv_cache_usage == pytest.approx(0.87)


def test_unknown_model_reports_no_load() -> None:
    load = parse_vllm_metrics(VLLM_NEW, model="mistralai/Mistral-7B-Instruct-v0.3")
    assert (load.running, load.waiting, load.kv_cache_usage) == (0.0, 0.0, 0.0)


def test_older_gpu_cache_gauge_is_read() -> None:
    llama = parse_vllm_metrics(VLLM_OLD, model=LLAMA)
    assert (llama.running, llama.waiting) == (7.0, 11.0)
    assert llama.kv_cache_usage == pytest.approx(0.98)  # not the CPU cache's 0.5
    qwen = parse_vllm_metrics(VLLM_OLD, model=QWEN)
    assert (qwen.running, qwen.waiting) == (1.0, 2.0)
    assert qwen.kv_cache_usage == pytest.approx(0.4)


def test_both_kv_gauge_names_are_not_double_counted() -> None:
    load = parse_vllm_metrics(VLLM_BOTH, model=LLAMA)
    assert load.kv_cache_usage == pytest.approx(0.42)
    assert load.running == 2.0


def test_unlabelled_gauges_belong_to_the_only_model() -> None:
    # `areion sim` and single-model servers may omit `model_name`.
    text = (
        "# TYPE vllm:num_requests_running gauge\n"
        "vllm:num_requests_running 3\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        "vllm:num_requests_waiting 1\n"
    )
    load = parse_vllm_metrics(text, model="anything")
    assert (load.running, load.waiting) == (3.0, 1.0)


def test_reading_is_timestamped_now() -> None:
    before = time.monotonic()
    load = parse_vllm_metrics(VLLM_NEW, model=LLAMA)
    assert before <= load.updated <= time.monotonic()


def test_empty_page_is_an_idle_deployment() -> None:
    load = parse_vllm_metrics("")
    assert (load.running, load.waiting, load.kv_cache_usage) == (0.0, 0.0, 0.0)
    assert isinstance(load, RemoteLoad)


def test_garbage_is_a_value_error() -> None:
    # LoadProbe catches ValueError and keeps the last good reading.
    with pytest.raises(ValueError):
        parse_vllm_metrics("<html><body>502 Bad Gateway</body></html>")

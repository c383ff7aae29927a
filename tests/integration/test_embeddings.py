"""POST /v1/embeddings through the real server over loopback, driven by the openai SDK
and LangChain: OpenAI-compatible upstreams (retries, fallbacks, accounting), the local
MiniLM model, the embedding cache, budgets and rate limits. Each test checks what the
client sees and the ledger rows."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from areion import Runtime
from areion.config import parse_config
from areion.server import create_app
from areion.store import SQLiteStore
from areion.types import LedgerEntry
from tests.scripted import EMBEDDING_DIMENSIONS, Behaviour, ScriptedUpstream, scripted_vector
from tests.support import FirstChoice, ManualClock, eventually, serve_app

KEYS = {"acme": "sk-acme-embeddings-0123", "globex": "sk-globex-embeddings-0123"}
LIMITED_KEY = "sk-acme-limited-0123"
PRICE = {"input": 0.02, "output": 0.0}  # USD per 1M tokens, as text-embedding-3-small
BACKUP_PRICE = {"input": 0.13, "output": 0.0}
METRICS_KEY = "sk-metrics-embeddings-0123"

_clients: list[openai.AsyncOpenAI] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> Any:
    """Close the test's clients in its own event loop, before that loop is closed."""
    yield
    while _clients:
        await _clients.pop().close()


def async_client(url: str, key: str) -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    _clients.append(client)
    return client


@dataclass
class Stack:
    a: ScriptedUpstream
    b: ScriptedUpstream
    backup: ScriptedUpstream
    runtime: Runtime
    url: str
    db: Path
    clock: ManualClock

    def client(self, tenant: str = "acme", key: str | None = None) -> openai.AsyncOpenAI:
        return async_client(self.url, key or KEYS[tenant])

    async def rows(self, request_id: str, count: int = 1) -> list[LedgerEntry]:
        """The ledger rows of a request, once there are `count` of them (free rows are
        written within the ledger's flush interval)."""
        found: list[LedgerEntry] = []

        async def written() -> bool:
            nonlocal found
            store = SQLiteStore(str(self.db))
            try:
                found = await store.ledger(request_id=request_id)
            finally:
                await store.aclose()
            return len(found) >= count

        await eventually(written)
        assert len(found) == count, found
        return sorted(found, key=lambda row: row.cache)

    def metrics(self) -> str:
        headers = {"authorization": f"Bearer {METRICS_KEY}"}
        return httpx.get(self.url + "/metrics", headers=headers).text


def upstream_model(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "openai",
        "model": "text-embedding-3-small",
        "base_url": url + "/v1",
        "price": PRICE,
        **extra,
    }


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    a, b, backup = ScriptedUpstream("a"), ScriptedUpstream("b"), ScriptedUpstream("backup")
    with serve_app(a.app) as url_a, serve_app(b.app) as url_b, serve_app(backup.app) as url_c:
        db = tmp_path / "embeddings.db"
        config = parse_config(
            {
                "models": [
                    upstream_model("emb", url_a, id="emb-a"),
                    upstream_model("emb", url_b, id="emb-b"),
                    {
                        **upstream_model("emb-backup", url_c, id="emb-backup"),
                        "model": "text-embedding-3-large",
                        "price": BACKUP_PRICE,
                    },
                    {"name": "mini", "provider": "local"},
                    {"name": "chat", "provider": "sim", "model": "sim-fast"},
                ],
                "fallbacks": {"emb": ["emb-backup"]},
                "retry": {"max_attempts": 2, "backoff_base": 0, "backoff_max": 0},
                "store": f"sqlite:///{db}",
                "auth": {
                    "keys": [
                        *({"key": key, "tenant": tenant} for tenant, key in KEYS.items()),
                        {"key": LIMITED_KEY, "tenant": "acme", "name": "limited", "rpm": 2},
                    ],
                    "metrics_keys": [METRICS_KEY],
                },
                "tenants": [
                    # Room for short inputs at emb's price, not for a text of 200 words.
                    {"name": "globex", "budget_usd_per_day": 0.000004},
                ],
            }
        )
        runtime = Runtime(config)
        runtime.gateway.rng = FirstChoice()  # ties go to emb-a: which one answers is known
        clock = ManualClock(time.time())  # rate buckets refill only when the test says
        runtime.admission.clock = clock
        with serve_app(create_app(runtime)) as url:
            yield Stack(a, b, backup, runtime, url, db, clock)


def unpack(data: str) -> list[float]:
    raw = base64.b64decode(data)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def float32(vector: list[float]) -> list[float]:
    return list(struct.unpack(f"<{len(vector)}f", struct.pack(f"<{len(vector)}f", *vector)))


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


def cosine(u: list[float], v: list[float]) -> float:
    return sum(x * y for x, y in zip(u, v, strict=True)) / (norm(u) * norm(v))


# -- an OpenAI-compatible upstream --------------------------------------------------------


async def test_single_input_passes_through_and_is_booked(stack: Stack) -> None:
    raw = await stack.client().embeddings.with_raw_response.create(
        model="emb", input="the quick brown fox", encoding_format="float", user="u-1"
    )
    answer = raw.parse()
    assert answer.object == "list" and answer.model == "text-embedding-3-small"
    [item] = answer.data
    assert item.object == "embedding" and item.index == 0
    assert item.embedding == float32(scripted_vector("the quick brown fox", 8, salt="a"))
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == 4
    cost = 4 * PRICE["input"] / 1e6
    assert raw.headers["x-areion-model"] == "emb-a"
    assert raw.headers["x-areion-cache"] == "miss"
    assert float(raw.headers["x-areion-cost-usd"]) == pytest.approx(cost)
    # What the upstream was sent: its model id, the input, floats, the user.
    sent = stack.a.requests[-1]
    assert sent["model"] == "text-embedding-3-small" and sent["input"] == ["the quick brown fox"]
    assert sent["encoding_format"] == "float" and sent["user"] == "u-1"
    [row] = await stack.rows(raw.headers["x-request-id"])
    assert (row.tenant, row.model, row.deployment) == ("acme", "emb", "emb-a")
    assert row.upstream_model == "text-embedding-3-small"
    assert (row.prompt_tokens, row.completion_tokens, row.estimated) == (4, 0, False)
    assert row.cost_usd == pytest.approx(cost) and row.cache == ""


async def test_a_batch_comes_back_in_order_as_floats_and_as_base64(stack: Stack) -> None:
    texts = ["alpha beta", "gamma", "delta epsilon zeta"]
    client = stack.client()
    floats = await client.embeddings.create(model="emb", input=texts, encoding_format="float")
    assert [item.index for item in floats.data] == [0, 1, 2]  # the upstream sent them backwards
    for item, text in zip(floats.data, texts, strict=True):
        assert item.embedding == float32(scripted_vector(text, EMBEDDING_DIMENSIONS, salt="a"))
    assert floats.usage.prompt_tokens == 6
    # The same vectors as base64 (served from the embedding cache now): decoded, equal.
    packed = await client.embeddings.with_raw_response.create(
        model="emb", input=texts, encoding_format="base64"
    )
    assert packed.headers["x-areion-cache"] == "hit-embedding"
    strings = [item.embedding for item in packed.parse().data]
    assert all(isinstance(s, str) for s in strings)
    assert [unpack(s) for s in strings] == [item.embedding for item in floats.data]
    # The SDK's default asks for base64 and decodes it itself.
    default = await client.embeddings.create(
        model="emb", input=texts, extra_headers={"x-areion-cache": "no-store"}
    )
    assert [item.embedding for item in default.data] == [item.embedding for item in floats.data]
    assert stack.a.calls == 2  # the first and the no-store one; each text sent once
    assert stack.b.calls == 0


async def test_token_arrays_and_dimensions_pass_through(stack: Stack) -> None:
    raw = await stack.client().embeddings.with_raw_response.create(
        model="emb", input=[[1, 2, 3], [4, 5]], dimensions=3, encoding_format="float"
    )
    answer = raw.parse()
    assert [len(item.embedding) for item in answer.data] == [3, 3]
    assert answer.data[1].embedding == float32(scripted_vector([4, 5], 3, salt="a"))
    assert stack.a.requests[-1]["input"] == [[1, 2, 3], [4, 5]]
    assert stack.a.requests[-1]["dimensions"] == 3
    [row] = await stack.rows(raw.headers["x-request-id"])
    assert row.prompt_tokens == 5


async def test_a_failed_deployment_is_retried_on_another(stack: Stack) -> None:
    stack.a.then(Behaviour(status=500))
    raw = await stack.client().embeddings.with_raw_response.create(
        model="emb", input=["retried"], encoding_format="float"
    )
    assert raw.headers["x-areion-model"] == "emb-b"
    assert raw.parse().data[0].embedding == float32(scripted_vector("retried", 8, salt="b"))
    assert (stack.a.calls, stack.b.calls) == (1, 1)
    [row] = await stack.rows(raw.headers["x-request-id"])
    assert row.deployment == "emb-b" and row.cost_usd == pytest.approx(PRICE["input"] / 1e6)


async def test_the_fallback_group_answers_when_every_deployment_fails(stack: Stack) -> None:
    stack.a.then(Behaviour(status=500))
    stack.b.then(Behaviour(status=503))
    raw = await stack.client().embeddings.with_raw_response.create(
        model="emb", input=["one two three"], encoding_format="float"
    )
    assert raw.headers["x-areion-model"] == "emb-backup"
    assert raw.parse().model == "text-embedding-3-large"
    assert (stack.a.calls, stack.b.calls, stack.backup.calls) == (1, 1, 1)
    cost = 3 * BACKUP_PRICE["input"] / 1e6
    assert float(raw.headers["x-areion-cost-usd"]) == pytest.approx(cost)
    [row] = await stack.rows(raw.headers["x-request-id"])
    assert (row.deployment, row.model, row.prompt_tokens) == ("emb-backup", "emb", 3)
    assert row.cost_usd == pytest.approx(cost)
    assert 'areion_fallbacks_total{fallback="emb-backup",model="emb"} 1.0' in stack.metrics()


async def test_a_refusal_by_the_upstream_is_not_retried(stack: Stack) -> None:
    stack.a.then(Behaviour(status=400))
    with pytest.raises(openai.BadRequestError) as caught:
        await stack.client().embeddings.create(model="emb", input="x")
    assert "upstream refused the request" in caught.value.message
    assert (stack.a.calls, stack.b.calls, stack.backup.calls) == (1, 0, 0)


# -- the local model --------------------------------------------------------------------


async def test_the_local_model_embeds_with_no_upstream(stack: Stack) -> None:
    texts = [
        "How do I reset my password?",
        "How can I change my password?",
        "What is the capital of France?",
    ]
    client = stack.client()
    raw = await client.embeddings.with_raw_response.create(
        model="mini", input=texts, encoding_format="float"
    )
    answer = raw.parse()
    assert answer.model == "all-MiniLM-L6-v2"
    vectors = [item.embedding for item in answer.data]
    assert all(len(v) == 384 and norm(v) == pytest.approx(1.0, abs=1e-5) for v in vectors)
    same, paraphrase, unrelated = vectors[0], vectors[1], vectors[2]
    assert cosine(same, paraphrase) > cosine(same, unrelated) + 0.2
    assert raw.headers["x-areion-model"] == "mini/all-MiniLM-L6-v2"
    assert float(raw.headers["x-areion-cost-usd"]) == 0
    # The same text, computed again (not from the cache), is the same vector: to float32
    # rounding, as a batch of other lengths sums in another order.
    again = await client.embeddings.create(
        model="mini",
        input=[texts[0]],
        encoding_format="float",
        extra_headers={"x-areion-cache": "no-store"},
    )
    assert again.data[0].embedding == pytest.approx(same, abs=1e-6)
    [row] = await stack.rows(raw.headers["x-request-id"])
    assert (row.deployment, row.upstream_model) == ("mini/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")
    assert row.prompt_tokens == answer.usage.prompt_tokens > 0 and row.cost_usd == 0
    assert (stack.a.calls, stack.b.calls) == (0, 0)


async def test_local_dimensions_truncate_and_renormalize(stack: Stack) -> None:
    client = stack.client()
    full = await client.embeddings.create(
        model="mini", input="a red bicycle", encoding_format="float"
    )
    short = await client.embeddings.create(
        model="mini", input="a red bicycle", dimensions=64, encoding_format="float"
    )
    vector = short.data[0].embedding
    assert len(vector) == 64 and norm(vector) == pytest.approx(1.0, abs=1e-5)
    prefix = full.data[0].embedding[:64]
    assert vector == pytest.approx([v / norm(prefix) for v in prefix], abs=1e-6)
    packed = await client.embeddings.create(
        model="mini", input="a red bicycle", dimensions=64, encoding_format="base64"
    )
    assert unpack(str(packed.data[0].embedding)) == vector
    with pytest.raises(openai.BadRequestError) as caught:
        await client.embeddings.create(model="mini", input="x", dimensions=385)
    assert caught.value.body["param"] == "dimensions"  # type: ignore[index]
    assert "1 to 384" in caught.value.message


async def test_the_local_model_refuses_token_arrays_and_chat(stack: Stack) -> None:
    client = stack.client()
    with pytest.raises(openai.BadRequestError) as caught:
        await client.embeddings.create(model="mini", input=[[101, 2023]])
    assert caught.value.body["param"] == "input"  # type: ignore[index]
    assert "takes text, not token arrays" in caught.value.message
    with pytest.raises(openai.BadRequestError) as chat:
        await client.chat.completions.create(
            model="mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert "serves embeddings only" in chat.value.message
    with pytest.raises(openai.BadRequestError) as sim:
        await client.embeddings.create(model="chat", input="hi")
    assert "provider sim serves chat only" in sim.value.message
    with pytest.raises(openai.NotFoundError):
        await client.embeddings.create(model="nope", input="hi")
    store = SQLiteStore(str(stack.db))
    try:
        assert await store.ledger() == []  # nothing refused was booked
    finally:
        await store.aclose()


async def test_concurrent_local_requests_are_micro_batched(stack: Stack) -> None:
    client = stack.client()
    embedder: Any = stack.runtime.embedder
    batches = embedder.batches
    texts = [f"sentence number {i} about the weather" for i in range(32)]
    answers = await asyncio.gather(
        *(
            client.embeddings.create(model="mini", input=text, encoding_format="float")
            for text in texts
        )
    )
    assert all(len(answer.data[0].embedding) == 384 for answer in answers)
    # Fewer batches than requests: calls that arrived together went together (in one
    # ONNX Runtime run each in 8 bits, which runs each text on its own).
    assert embedder.batches - batches < len(texts)


def test_langchain_openai_embeddings(stack: Stack) -> None:
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model="mini",
        base_url=stack.url + "/v1",
        api_key=KEYS["acme"],  # type: ignore[arg-type]
        check_embedding_ctx_length=False,  # raw text: no tiktoken, nothing downloaded
        max_retries=0,
    )
    documents = embeddings.embed_documents(["The cat sat on the mat.", "Stock prices fell."])
    query = embeddings.embed_query("Where did the cat sit?")
    assert [len(v) for v in documents] == [384, 384]
    assert cosine(query, documents[0]) > cosine(query, documents[1])
    assert embeddings.embed_query("The cat sat on the mat.") == pytest.approx(documents[0])

    async def rows() -> list[LedgerEntry]:
        store = SQLiteStore(str(stack.db))
        try:
            return await store.ledger(tenant="acme")
        finally:
            await store.aclose()

    booked: list[LedgerEntry] = []

    async def three() -> bool:
        nonlocal booked
        booked = await rows()
        return len(booked) >= 3

    asyncio.run(eventually(three))
    # Two calls to the model (documents, query), the repeated text from the cache.
    assert sorted(row.cache for row in booked) == ["", "", "embedding"]


# -- the embedding cache ------------------------------------------------------------------


async def test_a_repeated_input_is_a_free_hit_that_is_booked(stack: Stack) -> None:
    client = stack.client()
    first = await client.embeddings.with_raw_response.create(
        model="emb", input="cache me please", encoding_format="float"
    )
    second = await client.embeddings.with_raw_response.create(
        model="emb", input="cache me please", encoding_format="float"
    )
    assert second.headers["x-areion-cache"] == "hit-embedding"
    assert second.headers["x-areion-cache-hits"] == "1/1"
    assert second.headers["x-areion-model"] == "cache:embedding"
    assert float(second.headers["x-areion-cost-usd"]) == 0
    assert second.parse().data[0].embedding == first.parse().data[0].embedding
    assert second.parse().usage.prompt_tokens == 0
    assert stack.a.calls == 1
    cost = 3 * PRICE["input"] / 1e6
    [row] = await stack.rows(second.headers["x-request-id"])
    assert (row.cache, row.deployment, row.cost_usd) == ("embedding", "cache:embedding", 0)
    assert row.saved_usd == pytest.approx(cost) and row.saved_s > 0
    assert row.upstream_model == "text-embedding-3-small"
    metrics = stack.metrics()
    assert 'areion_cache_requests_total{result="hit",tier="embedding"} 1.0' in metrics
    assert 'areion_cache_requests_total{result="miss",tier="embedding"} 1.0' in metrics


async def test_another_tenant_never_hits_it(stack: Stack) -> None:
    await stack.client("acme").embeddings.create(model="emb", input="shared text")
    other = await stack.client("globex").embeddings.with_raw_response.create(
        model="emb", input="shared text"
    )
    assert other.headers["x-areion-cache"] == "miss"
    assert stack.a.calls == 2


async def test_only_the_missing_inputs_go_to_the_upstream(stack: Stack) -> None:
    client = stack.client()
    await client.embeddings.create(model="emb", input=["red", "green"])
    raw = await client.embeddings.with_raw_response.create(
        model="emb", input=["green", "blue sky", "red", "blue sky"], encoding_format="float"
    )
    assert raw.headers["x-areion-cache"] == "partial-embedding"
    assert raw.headers["x-areion-cache-hits"] == "2/4"
    assert stack.a.requests[-1]["input"] == ["blue sky"]  # the repeat sent once
    answer = raw.parse()
    expected = [float32(scripted_vector(t, 8, salt="a")) for t in ("green", "blue sky", "red")]
    assert [item.embedding for item in answer.data] == [*expected, expected[1]]
    assert answer.usage.prompt_tokens == 2  # billed: "blue sky", once
    cost = 2 * PRICE["input"] / 1e6
    assert float(raw.headers["x-areion-cost-usd"]) == pytest.approx(cost)
    call, hit = await stack.rows(raw.headers["x-request-id"], count=2)  # by cache tier
    assert (call.cache, call.deployment, call.prompt_tokens) == ("", "emb-a", 2)
    assert call.cost_usd == pytest.approx(cost)
    assert (hit.cache, hit.cost_usd) == ("embedding", 0)
    assert hit.saved_usd == pytest.approx(2 * PRICE["input"] / 1e6)  # red, green: 1 token each


async def test_cache_control_headers(stack: Stack) -> None:
    client = stack.client()
    await client.embeddings.create(
        model="emb", input="x y", extra_headers={"x-areion-cache": "no-store"}
    )
    miss = await client.embeddings.with_raw_response.create(model="emb", input="x y")
    assert miss.headers["x-areion-cache"] == "miss"  # no-store wrote nothing
    refreshed = await client.embeddings.with_raw_response.create(
        model="emb", input="x y", extra_headers={"x-areion-cache": "refresh"}
    )
    assert refreshed.headers["x-areion-cache"] == "miss"
    assert stack.a.calls == 3
    hit = await client.embeddings.with_raw_response.create(model="emb", input="x y")
    assert hit.headers["x-areion-cache"] == "hit-embedding" and stack.a.calls == 3


# -- limits ----------------------------------------------------------------------------------


async def test_a_budget_refuses_a_call_that_does_not_fit(stack: Stack) -> None:
    client = stack.client("globex")
    # Estimated at the input price, of the prompt as other tokenizers may count it.
    fits = await client.embeddings.with_raw_response.create(model="emb", input="short")
    assert fits.status_code == 200
    long_text = " ".join(["budget"] * 200)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.embeddings.create(model="emb", input=long_text)
    assert caught.value.status_code == 402
    assert caught.value.body["code"] == "budget_exceeded"  # type: ignore[index]
    assert caught.value.body["type"] == "insufficient_quota"  # type: ignore[index]
    assert stack.a.calls == 1  # the refused call reached no upstream
    store = SQLiteStore(str(stack.db))
    try:
        booked = await store.ledger(tenant="globex")
    finally:
        await store.aclose()
    assert [row.request_id for row in booked] == [fits.headers["x-request-id"]]


async def test_rate_limits_apply(stack: Stack) -> None:
    client = stack.client(key=LIMITED_KEY)
    for text in ("one", "two"):
        raw = await client.embeddings.with_raw_response.create(model="mini", input=text)
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
    with pytest.raises(openai.RateLimitError) as caught:
        await client.embeddings.create(model="mini", input="three")
    assert caught.value.response.headers["retry-after"]
    assert "key 'limited'" in caught.value.message
    stack.clock.advance(60)
    again = await client.embeddings.create(model="mini", input="one")  # a cache hit counts too
    assert len(again.data) == 1


async def test_lanes_cap_a_group_s_concurrency(tmp_path: Path) -> None:
    upstream = ScriptedUpstream("capped")
    release = threading.Event()
    arrived = threading.Event()
    upstream.then(Behaviour(hold=release, arrived=arrived))
    with serve_app(upstream.app) as url:
        config = parse_config(
            {
                "models": [upstream_model("capped", url, max_concurrency=1)],
                "store": f"sqlite:///{tmp_path / 'lanes.db'}",
            }
        )
        with serve_app(create_app(Runtime(config))) as base:
            client = async_client(base, "-")
            first = asyncio.create_task(client.embeddings.create(model="capped", input="a"))
            await asyncio.to_thread(arrived.wait, 10)
            second = asyncio.create_task(client.embeddings.create(model="capped", input="b"))
            metrics = ""

            async def queued() -> bool:
                nonlocal metrics
                metrics = (await asyncio.to_thread(httpx.get, base + "/metrics")).text
                return 'areion_lane_queued{lane="interactive",model="capped"} 1.0' in metrics

            await eventually(queued)
            assert upstream.calls == 1  # the second waits for the first's slot
            release.set()
            await asyncio.gather(first, second)
            assert upstream.calls == 2


# -- the wire format --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": "emb"}, "input", "Field required"),
        ({"model": "emb", "input": ""}, "input", "empty string"),
        ({"model": "emb", "input": []}, "input", "must not be empty"),
        ({"model": "emb", "input": ["ok", ""]}, "input[1]", "empty string"),
        ({"model": "emb", "input": ["ok", 3]}, "input", "an array of strings"),
        ({"model": "emb", "input": [[1], []]}, "input[1]", "must not be empty"),
        ({"model": "emb", "input": [[1, -2]]}, "input[0][1]", "from 0 to"),
        ({"model": "emb", "input": ["x"] * 2049}, "input", "at most 2048 inputs"),
        ({"model": "emb", "input": "x" * 65_537}, "input", "at most 65536 characters"),
        ({"model": "emb", "input": list(range(8193))}, "input", "at most 8192 tokens"),
        ({"model": "emb", "input": "x", "encoding_format": "hex"}, "encoding_format", "float"),
        ({"model": "emb", "input": "x", "dimensions": 0}, "dimensions", "greater than"),
        ({"model": "emb", "input": "x", "dimensions": "8"}, "dimensions", "integer"),
    ],
)
def test_bad_bodies_are_refused_naming_the_field(
    stack: Stack, body: dict[str, Any], param: str, words: str
) -> None:
    reply = httpx.post(
        stack.url + "/v1/embeddings",
        json=body,
        headers={"authorization": f"Bearer {KEYS['acme']}"},
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert stack.a.calls == 0

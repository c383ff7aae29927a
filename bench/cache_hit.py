"""End-to-end latency of a cache hit through the server, next to a miss.

Three processes on loopback: the upstream (`bench/upstream.py`, a model that takes
`--latency-ms` to answer), `areion serve` with the exact and semantic tiers on, and
this client. For each of `--questions` topics the client asks a seed question
("How can I improve my Spanish speaking skills?"): a miss, which embeds the question,
searches, calls the upstream and stores the answer. Then, in interleaved rounds, it
asks

- the seed again, word for word: an exact hit (L1);
- a paraphrase ("How do I improve my Spanish speaking skills?"): a semantic hit (L2:
  embedding, vector search, verifier), when the verifier accepts it;
- a question never asked: a miss, the upstream's latency plus the cache's lookup.

Each call is classified by the `x-areion-cache` header it came back with, and p50/p99
are reported per outcome, one request at a time (`--concurrency 1`) and under load.
A semantic hit on a paraphrase asked for the first time is `hit-semantic`; one asked
before is `hit-semantic again` (the embedder may remember its vector: `embed_memo`).

`--variants` runs the same load against one server per cache.semantic setting, one after
the other in this run, so their figures compare side by side:

    .venv/bin/python bench/cache_hit.py --quick \
        --variants "embed_sessions=1,embed_memo=0;embed_sessions=2,embed_memo=0;embed_sessions=2"
    .venv/bin/python bench/cache_hit.py --quick --variants "verifier=lexical;verifier=pair"
Every seed question is padded with `--entries` filler entries (other questions) in the
same partition first, so the search runs over a realistic index, not a handful.

    .venv/bin/python bench/cache_hit.py            # about a minute
    .venv/bin/python bench/cache_hit.py --quick

Targets (the cache quality issue): p50 of a semantic hit through the server <= 7 ms
one request at a time, <= 10 ms at concurrency 8.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from _common import (
    LOOPBACK,
    ChildProcess,
    Summary,
    describe_environment,
    environment,
    fmt,
    free_port,
    run_main,
    table,
    upstream,
    write_json,
)

GROUP = "bench"
TARGET_P50_MS = 10.0  # at concurrency 8
TARGET_P50_ALONE_MS = 7.0  # at concurrency 1

_SUBJECTS = tuple(
    [
        "English",
        "Spanish",
        "French",
        "German",
        "Italian",
        "Portuguese",
        "Japanese",
        "Korean",
        "Mandarin",
        "Arabic",
        "Russian",
        "Hindi",
        "Turkish",
        "Dutch",
        "Swedish",
        "Polish",
        "Greek",
        "Hebrew",
        "Vietnamese",
        "Thai",
    ]
)
_SKILLS = ("speaking", "writing", "reading", "listening", "vocabulary", "grammar", "spelling")
_FILLER = (
    "What is the best way to cook {x} rice?",
    "Which laptop should I buy for {x} programming?",
    "Why is the sky blue over {x}?",
    "How long does it take to fly to {x}?",
    "What are good books about {x} history?",
)
_PLACES = tuple(
    [
        "Paris",
        "Tokyo",
        "Lima",
        "Cairo",
        "Oslo",
        "Delhi",
        "Quito",
        "Accra",
        "Hanoi",
        "Perth",
        "Dakar",
        "Sofia",
        "Minsk",
        "Riga",
        "Baku",
        "Doha",
        "Kyiv",
        "Lagos",
        "Nairobi",
        "Manila",
        "Seoul",
        "Rome",
        "Madrid",
        "Lisbon",
        "Dublin",
        "Prague",
        "Vienna",
    ]
)


def topics(count: int) -> list[tuple[str, str]]:
    """(seed question, paraphrase) pairs about distinct subjects."""
    pairs = [
        (
            f"How can I improve my {subject} {skill} skills?",
            f"How do I improve my {subject} {skill} skills?",
        )
        for subject, skill in itertools.product(_SUBJECTS, _SKILLS)
    ]
    random.Random(7).shuffle(pairs)
    if count > len(pairs):
        raise SystemExit(f"--questions: at most {len(pairs)}")
    return pairs[:count]


def fillers(count: int) -> list[str]:
    """`count` distinct questions on other subjects."""
    texts = (
        template.format(x=f"{place} {n}")
        for n in itertools.count()
        for template in _FILLER
        for place in _PLACES
    )
    return list(itertools.islice(texts, count))


def body(question: str) -> bytes:
    return orjson.dumps(
        {
            "model": GROUP,
            "messages": [
                {"role": "system", "content": "You are a helpful tutor."},
                {"role": "user", "content": question},
            ],
            "temperature": 0,
        }
    )


class Client:
    def __init__(self, url: str) -> None:
        import aiohttp

        self.url = url
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60),
            headers={"content-type": "application/json", "authorization": "Bearer dummy"},
        )

    async def ask(self, question: str) -> tuple[str, float]:
        """(x-areion-cache outcome, seconds) of one call."""
        started = time.perf_counter()
        async with self._session.post(self.url, data=body(question)) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {await response.text()}")
            outcome = response.headers.get("x-areion-cache", "?")
        return outcome, time.perf_counter() - started

    async def aclose(self) -> None:
        await self._session.close()


def write_config(workdir: Path, upstream_url: str, semantic: dict[str, Any]) -> Path:
    path = workdir / "areion-bench.yaml"
    config = {
        "models": [
            {
                "name": GROUP,
                "provider": "openai",
                "model": "upstream-model",
                "base_url": upstream_url,
                "api_key": "dummy",
            }
        ],
        "store": f"sqlite:///{workdir / 'areion.db'}",
        "server": {"access_log": False},
        "cache": {"semantic": {"enabled": True, **semantic}},
    }
    (workdir / "areion.db").unlink(missing_ok=True)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


async def gather_bounded(
    client: Client, questions: list[str], concurrency: int, limit_s: float
) -> list[tuple[str, float]]:
    gate = asyncio.Semaphore(concurrency)

    async def one(question: str) -> tuple[str, float]:
        async with gate:
            return await client.ask(question)

    return list(
        await asyncio.wait_for(asyncio.gather(*(one(q) for q in questions)), timeout=limit_s)
    )


def variants(text: str) -> list[dict[str, Any]]:
    """`key=value,...;key=value,...` -> one dict of cache.semantic settings per variant."""
    out: list[dict[str, Any]] = []
    for part in text.split(";"):
        settings: dict[str, Any] = {}
        for item in filter(None, (x.strip() for x in part.split(","))):
            key, _, value = item.partition("=")
            value = value.strip()
            settings[key.strip()] = int(value) if value.lstrip("-").isdigit() else value
        out.append(settings)
    return out


async def run(args: argparse.Namespace, workdir: Path) -> int:
    info = environment(["aiohttp", "onnxruntime", "hnswlib"])
    print(f"machine: {describe_environment(info)}; load average {os.getloadavg()}")
    results: dict[str, Any] = {"variants": {}}
    verdicts = []
    for settings in variants(args.variants):
        name = ",".join(f"{k}={v}" for k, v in settings.items()) or "defaults"
        print(f"\n=== cache.semantic: {name}")
        results["variants"][name] = found = await run_variant(args, workdir, settings)
        verdicts.append((name, found.get("verdict", "no semantic hits")))
    print(f"\nload average after: {os.getloadavg()}")
    for name, verdict in verdicts:
        print(f"{name}: {verdict}")
    if args.json:
        write_json(args.json, {"environment": info, "args": vars(args), **results})
    return 0


async def run_variant(
    args: argparse.Namespace, workdir: Path, settings: dict[str, Any]
) -> dict[str, Any]:
    levels = [int(level) for level in args.concurrency.split(",") if level.strip()]
    # Each level asks about topics of its own, so its first round's paraphrases are
    # asked for the first time (not remembered from an earlier level).
    every = topics(args.questions * len(levels))
    per_level = {
        level: every[i * args.questions : (i + 1) * args.questions]
        for i, level in enumerate(levels)
    }
    pairs = every
    with upstream(workdir, latency_ms=args.latency_ms) as (_, upstream_url):
        port = free_port()
        server = ChildProcess(
            "areion serve",
            [sys.executable, "-m", "areion.cli", "serve",
             "--config", str(write_config(workdir, upstream_url, settings)),
             "--host", LOOPBACK, "--port", str(port), "--log-level", "warning"],
            workdir / "areion.log",
        )  # fmt: skip
        client = Client(f"http://{LOOPBACK}:{port}/v1/chat/completions")
        try:
            server.wait_ready(f"http://{LOOPBACK}:{port}/healthz", timeout=60)
            print(
                f"setup: upstream latency {args.latency_ms:g} ms; {args.entries} filler + "
                f"{len(pairs)} seed entries in one partition; {args.rounds} rounds"
            )
            started = time.perf_counter()
            fill = fillers(args.entries)
            await gather_bounded(client, fill, 32, args.timeout * 10)
            await gather_bounded(client, [seed for seed, _ in pairs], 8, args.timeout)
            print(f"seeded in {time.perf_counter() - started:.1f} s")
            fresh = (f"What is a good gift for a {n}-year-old who likes chess?" for n in
                     itertools.count(1))  # fmt: skip
            results: dict[str, Any] = {"levels": {}}
            seen: set[str] = set()
            for level in levels:
                pairs = per_level[level]
                samples: dict[str, list[float]] = {}
                asked: dict[str, int] = {}
                for _ in range(args.rounds):
                    batch = [
                        *(seed for seed, _ in pairs),
                        *(paraphrase for _, paraphrase in pairs),
                        *(next(fresh) for _ in range(max(1, len(pairs) // 4))),
                    ]
                    random.shuffle(batch)
                    answers = await gather_bounded(client, batch, level, args.timeout)
                    for question, (outcome, seconds) in zip(batch, answers, strict=True):
                        again = outcome == "hit-semantic" and question in seen
                        samples.setdefault(outcome + " again" * again, []).append(seconds)
                    seen.update(batch)
                    asked["paraphrases"] = asked.get("paraphrases", 0) + len(pairs)
                summaries = {name: Summary.of(values) for name, values in samples.items()}
                rows = [
                    [name, s.n, fmt(s.p50), fmt(s.p90), fmt(s.p99)]
                    for name, s in sorted(summaries.items())
                ]
                print(f"\nconcurrency {level}")
                print(table(["outcome", "calls", "p50 ms", "p90 ms", "p99 ms"], rows))
                served = sum(s.n for k, s in summaries.items() if k.startswith("hit-semantic"))
                share = served / asked["paraphrases"]
                print(f"paraphrases answered by the semantic tier: {share:.0%}")
                results["levels"][level] = {
                    "summaries": {k: v.to_dict() for k, v in summaries.items()},
                    "paraphrase_hit_share": share,
                }
            verdict = []
            for level, target in ((1, TARGET_P50_ALONE_MS), (8, TARGET_P50_MS)):
                found = results["levels"].get(level)
                semantic = found and found["summaries"].get("hit-semantic")
                if semantic:
                    ok = "PASS" if semantic["p50"] <= target else "FAIL"
                    verdict.append(
                        f"first-asked semantic hit p50 at concurrency {level} "
                        f"{semantic['p50']:.2f} ms (target <= {target:g}): {ok}"
                    )
            results["verdict"] = "; ".join(verdict)
            return results
        finally:
            await client.aclose()
            server.stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer entries and rounds")
    parser.add_argument(
        "--questions", type=int, default=70, help="seed/paraphrase topics per level"
    )
    parser.add_argument("--entries", type=int, help="filler entries (default 2000, quick 200)")
    parser.add_argument("--rounds", type=int, help="rounds per level (default 5, quick 2)")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated levels")
    parser.add_argument("--latency-ms", type=float, default=300.0, help="upstream latency")
    parser.add_argument("--uvloop", action="store_true", help="run the client on uvloop")
    parser.add_argument("--timeout", type=float, default=120.0, help="cap on one batch, seconds")
    parser.add_argument("--json", metavar="FILE", help="save the results as JSON")
    parser.add_argument(
        "--variants",
        default="",
        help="cache.semantic settings per server, e.g. 'embed_sessions=1;embed_sessions=2'",
    )
    args = parser.parse_args()
    args.entries = args.entries if args.entries is not None else (200 if args.quick else 2000)
    args.rounds = args.rounds or (2 if args.quick else 5)
    return args


def main() -> int:
    return run_main(run, parse_args())


if __name__ == "__main__":
    raise SystemExit(main())

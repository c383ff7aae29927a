"""The control plane's hot path: what rate limits and budget admission add to a call.

In-process, no network: the same call goes through a terminal handler that answers
at once (admission off) and through the `Admission` stage in front of it (admission
on), every limit of the issue configured at once (key rpm/tpm, tenant rpm/tpm, day
and month budgets, model rpm/tpm): the prompt counted with the tokenizer, three
requests buckets and three tokens buckets taken atomically, two budget windows
reserved, the real usage settled. The contenders are interleaved in rounds so drift
hits all alike; each call is timed on its own.

With Redis (distributed mode), the same admission runs a third time over
`RedisCounters`: two scripts per call, `admit` (the take from six buckets and the
reservation in two windows, one round trip the call waits for) and `release` (three
gives and two settlements, sent before the call returns; its acknowledgement is
awaited in the background, off the answer's path). Its keys
carry a prefix of their own, deleted at the end.

    .venv/bin/python bench/admission.py            # about 10 s (30 s with Redis)
    .venv/bin/python bench/admission.py --quick
    .venv/bin/python bench/admission.py --redis redis://127.0.0.1:6379/0   # the default
    .venv/bin/python bench/admission.py --redis none                       # memory only

Targets: admission (memory) p50 - off p50 <= 50 µs; admission (redis) p50 -
admission (memory) p50 <= 300 µs.
"""

from __future__ import annotations

import argparse
import gc
import time
import uuid
from pathlib import Path

from _common import describe_environment, environment, fmt, percentile, run_main, table
from areion.config import AuthKey, LimitsConfig, ModelLimit, TenantConfig
from areion.control import Admission, PriceBound
from areion.pipeline import Call, Result
from areion.store.counters import Counters, MemoryCounters
from areion.types import ChatRequest, ChatResponse, Choice, Message, Usage

PROMPT = (
    "You are a helpful assistant for an online shop. Answer briefly and politely.",
    "My order 4711 arrived with a broken handle on the blue mug. Can I get a replacement "
    "sent to the same address, or should I return it first? I still have the box.",
)
_SERIAL = 0
BIG = 10**12  # limits that never refuse: the benchmark measures admission, not refusals


def answer() -> ChatResponse:
    return ChatResponse(
        id="chatcmpl-bench",
        model="m",
        created=0,
        choices=[Choice(message=Message(role="assistant", content="Sure."))],
        usage=Usage(prompt_tokens=60, completion_tokens=40),
        deployment="fast/m",
        cost_usd=0.00003,
    )


async def terminal(call: Call) -> Result:
    return answer()


def admission(counters: Counters) -> Admission:
    return Admission(
        counters,
        keys=[AuthKey(key="sk-bench-key", tenant="acme", name="web", rpm=BIG, tpm=BIG)],
        tenants=[
            TenantConfig(
                name="acme",
                rpm=BIG,
                tpm=BIG,
                budget_usd_per_day=1e9,
                budget_usd_per_month=1e9,
            )
        ],
        limits=LimitsConfig(models=[ModelLimit(model="fast", rpm=BIG, tpm=BIG)]),
        prices={"fast": PriceBound(0.15, 0.60)},
    )


def new_call() -> Call:
    # The system prompt is the same in every call, as an agent's is; the question is new.
    global _SERIAL
    _SERIAL += 1
    request = ChatRequest(
        model="fast",
        messages=[
            Message(role="system", content=PROMPT[0]),
            Message(role="user", content=f"{PROMPT[1]} (ticket {_SERIAL})"),
        ],
        max_tokens=256,
    )
    return Call(
        request=request,
        tenant="acme",
        request_id="req",
        started=time.perf_counter(),
        annotations={"key": "web"},
    )


async def batch(stage: Admission | None, n: int, out: list[float]) -> None:
    for _ in range(n):
        call = new_call()  # built outside the timing, as the runtime does before the stages
        start = time.perf_counter_ns()
        if stage is None:
            await terminal(call)
        else:
            await stage.handle(call, terminal)
        out.append((time.perf_counter_ns() - start) / 1000.0)


async def run(args: argparse.Namespace, workdir: Path) -> int:
    del workdir
    contenders: list[tuple[str, Admission | None]] = [
        ("off", None),
        ("admission (memory)", admission(MemoryCounters())),
    ]
    redis = None
    if args.redis != "none":
        from areion.store.redis import RedisShared

        prefix = f"areion-bench:{uuid.uuid4().hex}:"
        redis = RedisShared(f"{args.redis}{'&' if '?' in args.redis else '?'}prefix={prefix}")
        contenders.append(("admission (redis)", admission(redis.counters)))
    try:
        return await measure(args, contenders)
    finally:
        if redis is not None:
            await redis.delete_all()
            await redis.aclose()


async def measure(args: argparse.Namespace, contenders: list[tuple[str, Admission | None]]) -> int:
    for _, stage in contenders:
        if stage is not None:
            await batch(stage, 2000, [])  # warm: tokenizer loaded, policy cached, connected
    times: dict[str, list[float]] = {name: [] for name, _ in contenders}
    gc.disable()  # a collection inside one timed call would be noise, not admission
    try:
        for round_ in range(args.rounds):
            shift = round_ % len(contenders)  # each contender goes first in turn
            for name, stage in contenders[shift:] + contenders[:shift]:
                await batch(stage, args.batch, times[name])
            gc.collect()
    finally:
        gc.enable()
    rows = []
    for name, values in times.items():
        rows.append([name, len(values), fmt(percentile(values, 50)), fmt(percentile(values, 99))])
    print(f"environment: {describe_environment(environment(['redis', 'hiredis']))}")
    print(table(["path", "calls", "p50 µs", "p99 µs"], rows))
    off, memory = times["off"], times["admission (memory)"]
    added = percentile(memory, 50) - percentile(off, 50)
    print(
        f"admission adds {fmt(added)} µs at p50 "
        f"({fmt(percentile(memory, 50) / percentile(off, 50))}x the bare call); target <= 50 µs: "
        + ("met" if added <= 50 else "NOT met")
    )
    redis = times.get("admission (redis)")
    if redis is not None:
        added_p50 = percentile(redis, 50) - percentile(memory, 50)
        added_p99 = percentile(redis, 99) - percentile(memory, 99)
        print(
            f"redis counters add {fmt(added_p50)} µs at p50, {fmt(added_p99)} µs at p99 over "
            "memory counters (1 round trip per call, the release acknowledged after); "
            "target <= 300 µs at p50: " + ("met" if added_p50 <= 300 else "NOT met")
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--batch", type=int, default=2500)
    parser.add_argument("--quick", action="store_true", help="4 rounds of 1000 calls")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument(
        "--redis",
        default="redis://127.0.0.1:6379/0",
        help="Redis URL for the RedisCounters contender, or 'none'",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.batch = 4, 1000
    return run_main(run, args)


if __name__ == "__main__":
    raise SystemExit(main())

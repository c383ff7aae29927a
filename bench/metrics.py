"""What the metrics of issue 14 add to a model call, in-process, side by side in one run.

1. The Lanes stage on a group without a cap (it counts calls in flight per lane for
   the gauges) against calling the next stage directly.
2. Accounting's metric updates of one chat call: the `areion_*` counters and the
   duration histogram it had before (`before`), and with the GenAI token-usage
   histogram's two observations added (`now`).
3. A label value checked against its bound (`LabelValues`), as an unknown model's
   error is counted.

Interleaved in rounds; the best round of each is kept (the machine is shared).

    .venv/bin/python bench/metrics.py            # about 20 s
    .venv/bin/python bench/metrics.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

from areion.control.lanes import Lanes
from areion.pipeline import Call, Result
from areion.telemetry.metrics import LabelValues, Metrics
from areion.types import ChatRequest, ChatResponse, Choice, Message

ANSWER = ChatResponse(
    id="x", model="m", created=0, choices=[Choice(message=Message(role="assistant", content="ok"))]
)
CALL = Call(
    request=ChatRequest(model="m", messages=[Message(role="user", content="hi")]),
    tenant="acme",
    request_id="r",
    started=0.0,
)


async def answer(call: Call) -> Result:
    return ANSWER


async def per_call_ns(step: Callable[[], object], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        result = step()
        if asyncio.iscoroutine(result):
            await result
    return (time.perf_counter() - started) / n * 1e9


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, rounds = (20_000, 3) if args.quick else (100_000, 7)

    lanes = Lanes({"m": None})
    metrics = Metrics(models=["m"], tenants=["acme"])
    deployment = metrics.for_deployment("m", "m/x", provider="openai")
    models = LabelValues(["m"])

    def before() -> None:
        deployment.ok.inc()
        deployment.chat.duration.observe(0.2)
        deployment.input_tokens.inc(100)
        deployment.output_tokens.inc(50)
        deployment.cost("acme", 0.0001)

    def now() -> None:
        before()
        deployment.chat.input_tokens.observe(100)
        deployment.chat.output_tokens.observe(50)

    cases: dict[str, Callable[[], object]] = {
        "next stage directly": lambda: answer(CALL),
        "through Lanes (no cap)": lambda: lanes.handle(CALL, answer),
        "accounting metrics, before": before,
        "accounting metrics, now": now,
        "label bound, unknown model": lambda: models("gpt-unknown"),
    }
    results = {name: float("inf") for name in cases}
    for _ in range(rounds):
        for name, step in cases.items():
            results[name] = min(results[name], await per_call_ns(step, n))
    width = max(map(len, results))
    for name, ns in results.items():
        print(f"{name:<{width}}  {ns:8.0f} ns per call")
    lanes_cost = results["through Lanes (no cap)"] - results["next stage directly"]
    metrics_cost = results["accounting metrics, now"] - results["accounting metrics, before"]
    print(f"\nLanes on an uncapped group adds {lanes_cost / 1000:.2f} µs per call")
    print(f"GenAI token-usage histogram adds {metrics_cost / 1000:.2f} µs per call")
    ratio = results["accounting metrics, now"] / results["accounting metrics, before"]
    print(f"accounting metrics now / before: {ratio:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())

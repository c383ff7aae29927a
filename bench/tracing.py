"""What OpenTelemetry tracing adds to a model call in-process: off and on, side by side.

Two measurements, each with its contenders interleaved in rounds (the order rotating,
so drift hits all alike), each call timed on its own:

1. The request path's chain around a terminal that answers at once (as
   `bench/admission.py` measures admission), the terminal running the providers' trace
   hook as `HttpTransport.post` does:
     bare     the chain with no tracing code at all (no hook check): the reference
     off      what `Runtime` builds with tracing off: no stage, the hook `None`
     on       what it builds with tracing on: the `TracingStage` (a `chat {model}`
              span, current while the call runs, its gen_ai.* and areion.* attributes),
              the hook adding the `traceparent` header, the span handed to the
              `BatchSpanProcessor`, whose thread encodes the batches and POSTs them
              (OTLP HTTP/protobuf) to a local receiver in another process
2. `Runtime.chat` whole, with the in-process sim model at a tiny time scale and the
   exact cache off, a runtime with tracing off beside one with tracing on (exporting
   to the same receiver): what tracing adds to the real path, ledger write included.

The receiver counts the spans it decodes: every span made must arrive. Beside 1, the
CPU the export thread spends encoding a span (OTLP protobuf, the SDK's encoder): off
the call's path, but in the same process, under the same GIL.

    .venv/bin/python bench/tracing.py            # about 30 s
    .venv/bin/python bench/tracing.py --quick

Targets (measurement 1, p50): off - bare <= 2 µs; on - off <= 50 µs.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from _common import (
    ChildProcess,
    describe_environment,
    environment,
    fmt,
    free_port,
    percentile,
    run_main,
    table,
)
from areion.config import TracingConfig, parse_config
from areion.pipeline import Call, Handler, Result, compose
from areion.runtime import Runtime
from areion.telemetry.tracing import Tracing
from areion.types import ChatRequest, ChatResponse, Choice, Message, Usage

PROMPT = (
    "You are a helpful assistant for an online shop. Answer briefly and politely.",
    "My order 4711 arrived with a broken handle on the blue mug. Can I get a replacement?",
)
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
# The loop makes spans far faster than any server's traffic would; a queue that holds
# them all keeps every span (the default, 2048, drops what overflows), so the export
# thread's work (encoding, POSTing) is all done, in this process, while calls are timed.
os.environ.setdefault("OTEL_BSP_MAX_QUEUE_SIZE", "200000")

# The receiver: OTLP/HTTP on loopback, decoding each request to count its spans.
RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

spans = 0

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        global spans
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self):
        body = str(spans).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def answer() -> ChatResponse:
    return ChatResponse(
        id="chatcmpl-bench",
        model="m",
        created=0,
        choices=[Choice(message=Message(role="assistant", content="Sure."), finish_reason="stop")],
        usage=Usage(prompt_tokens=60, completion_tokens=40),
        deployment="fast/m",
        cost_usd=0.00003,
        cache="miss",
    )


class Terminal:
    """Answers at once, after the providers' trace hook, as `HttpTransport.post` runs it."""

    def __init__(self, propagate: Callable[[Mapping[str, str]], Mapping[str, str]] | None) -> None:
        self.propagate = propagate

    async def __call__(self, call: Call) -> Result:
        headers: Mapping[str, str] = HEADERS
        if self.propagate is not None:
            headers = self.propagate(headers)
        del headers
        return answer()


async def bare(call: Call) -> Result:
    return answer()


def new_call(serial: int) -> Call:
    request = ChatRequest(
        model="fast",
        messages=[
            Message(role="system", content=PROMPT[0]),
            Message(role="user", content=f"{PROMPT[1]} (ticket {serial})"),
        ],
        max_tokens=256,
        temperature=0.2,
    )
    return Call(request=request, tenant="acme", request_id="req", started=time.perf_counter())


async def batch(handler: Handler, n: int, out: list[float]) -> None:
    for serial in range(n):
        call = new_call(serial)  # built outside the timing, as the runtime does
        start = time.perf_counter_ns()
        await handler(call)
        out.append((time.perf_counter_ns() - start) / 1000.0)


async def timed(make: Callable[[], Awaitable[object]], n: int, out: list[float]) -> None:
    for _ in range(n):
        start = time.perf_counter_ns()
        await make()
        out.append((time.perf_counter_ns() - start) / 1000.0)


def received(port: int) -> int:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/count", timeout=10) as response:
        return int(response.read())


async def interleave(
    contenders: dict[str, Callable[[int, list[float]], Awaitable[None]]], rounds: int, n: int
) -> dict[str, list[float]]:
    for run in contenders.values():
        await run(min(n, 1000), [])  # warm
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    gc.disable()  # a collection inside one timed call would be noise
    try:
        for round_ in range(rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                await contenders[name](n, times[name])
            gc.collect()
    finally:
        gc.enable()
    return times


def report(times: dict[str, list[float]]) -> None:
    rows = [
        [name, len(values), fmt(percentile(values, 50)), fmt(percentile(values, 99))]
        for name, values in times.items()
    ]
    print(table(["path", "calls", "p50 µs", "p99 µs"], rows))


async def run(args: argparse.Namespace, workdir: Path) -> int:
    port = free_port()
    sink = ChildProcess(
        "receiver", [sys.executable, "-c", RECEIVER, str(port)], workdir / "receiver.log"
    )
    try:
        sink.wait_ready(f"http://127.0.0.1:{port}/count")
        return await measure(args, workdir, port)
    finally:
        sink.stop()


async def measure(args: argparse.Namespace, workdir: Path, port: int) -> int:
    endpoint = f"http://127.0.0.1:{port}"
    print(f"environment: {describe_environment(environment(['opentelemetry-sdk']))}")

    # 1. The chain, in-process.
    tracing = Tracing(TracingConfig(enabled=True, endpoint=endpoint), {})
    chains: dict[str, Handler] = {
        "bare": compose([], bare),
        "off": compose([], Terminal(None)),
        "on": compose([tracing.stage()], Terminal(tracing.propagate)),
    }

    def chain(handler: Handler) -> Callable[[int, list[float]], Awaitable[None]]:
        return lambda n, out: batch(handler, n, out)

    times = await interleave(
        {name: chain(handler) for name, handler in chains.items()}, args.rounds, args.batch
    )
    tracing.shutdown()  # exports what is left
    made = args.rounds * args.batch + min(args.batch, 1000)
    print(f"\n1. the request path's chain, a terminal answering at once ({args.rounds} rounds)")
    report(times)
    p50 = {name: percentile(values, 50) for name, values in times.items()}
    off_added, on_added = p50["off"] - p50["bare"], p50["on"] - p50["off"]
    print(
        f"tracing off adds {fmt(off_added)} µs at p50 over no tracing code; target <= 2 µs: "
        + ("met" if off_added <= 2 else "NOT met")
    )
    print(
        f"tracing on adds {fmt(on_added)} µs at p50 over off "
        f"({fmt(p50['on'] / p50['off'])}x); target <= 50 µs: "
        + ("met" if on_added <= 50 else "NOT met")
    )
    print(f"spans made {made}, received by the OTLP receiver {received(port)}")

    # What the export thread spends on each span (off the call's path, in this process).
    kept = InMemorySpanExporter()
    keeping = Tracing(TracingConfig(enabled=True), {}, exporter=kept)
    await batch(compose([keeping.stage()], Terminal(keeping.propagate)), 4096, [])
    keeping.flush()
    spans = kept.get_finished_spans()
    start = time.perf_counter()
    for first in range(0, len(spans), 512):  # the batch processor's batches
        encode_spans(spans[first : first + 512]).SerializePartialToString()
    encoding = (time.perf_counter() - start) / len(spans) * 1e6
    keeping.shutdown()
    print(
        f"the export thread encodes a span (OTLP protobuf) in {fmt(encoding)} µs of CPU, off "
        "the call's path but in this process (under the GIL)"
    )

    # 2. Runtime.chat whole, sim model, ledger in SQLite.
    def config(name: str, traced: bool) -> object:
        return parse_config(
            {
                "models": [
                    {"name": "fast", "provider": "sim", "model": "sim-fast", "time_scale": 1e-6}
                ],
                "store": f"sqlite:///{workdir / (name + '.db')}",
                "cache": {"exact": {"enabled": False}},
                "tracing": {"enabled": traced, "endpoint": endpoint},
            }
        )

    before = received(port)
    runtimes = {"off": Runtime(config("off", False)), "on": Runtime(config("on", True))}  # type: ignore[arg-type]

    def chat(rt: Runtime) -> Callable[[int, list[float]], Awaitable[None]]:
        async def one() -> object:
            request = ChatRequest(
                model="fast",
                messages=[Message(role="user", content=PROMPT[1])],
                max_tokens=16,
                temperature=0.2,
            )
            return await rt.chat(request, tenant="acme")

        return lambda n, out: timed(one, n, out)

    try:
        rounds, n = max(2, args.rounds // 2), max(200, args.batch // 5)
        times = await interleave({name: chat(rt) for name, rt in runtimes.items()}, rounds, n)
    finally:
        for rt in runtimes.values():
            await rt.aclose()
    print(f"\n2. Runtime.chat whole, sim model, SQLite ledger ({rounds} rounds)")
    report(times)
    added = percentile(times["on"], 50) - percentile(times["off"], 50)
    print(f"tracing on adds {fmt(added)} µs at p50 to Runtime.chat")
    made = rounds * n + min(n, 1000)
    print(f"spans made {made}, received by the OTLP receiver {received(port) - before}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="4 rounds of 1000 calls")
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.batch = 4, 1000
    return run_main(run, args)


if __name__ == "__main__":
    raise SystemExit(main())

"""The HTTP floor: Areion's own HTTP stack forwarding chat calls, and nothing else.

`areion serve`'s server (uvicorn on uvloop with httptools, in Areion's guarded
protocol: its deadlines and its corked writes) in front of Areion's upstream client
(`Http1Pool`), with a bare ASGI app between them that sends each request body to the
upstream as it came and answers with the upstream's answer: no parsing, routing,
pipeline, ledger or metrics. What it spends per call is what any Areion call spends
before Areion's own work starts, so `areion` minus `floor`, side by side, is the cost
of that work (`bench/server_latency.py` runs it as the `floor` contender,
`bench/hot_path.py --floor` alone).

    python bench/floor_server.py --port 9200 --upstream http://127.0.0.1:9100/v1
"""

from __future__ import annotations

import argparse
import asyncio

import uvicorn
from starlette.types import Receive, Scope, Send

from areion.config import ServerConfig
from areion.providers.http1 import Http1Pool
from areion.server.guard import guarded_protocol
from areion.server.worker import freeze_startup_heap

_JSON = [(b"content-type", b"application/json")]
_EVENTS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class Floor:
    """The ASGI app: `/healthz`, and any POST forwarded to `upstream` + its path's
    `/chat/completions`."""

    def __init__(self, upstream: str) -> None:
        self.url = upstream.rstrip("/") + "/chat/completions"
        self.headers = {"content-type": "application/json", "authorization": "Bearer floor"}
        self.pool: Http1Pool | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()  # startup
            await send({"type": "lifespan.startup.complete"})
            await receive()  # shutdown
            if self.pool is not None:
                self.pool.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": _JSON})
            await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if self.pool is None:
            self.pool = Http1Pool(
                asyncio.get_running_loop(), connect_timeout=10.0, read_timeout=60.0
            )
        answer = await self.pool.post(self.url, body, self.headers)
        if answer.headers.get("content-type", "").startswith("text/event-stream"):
            await send({"type": "http.response.start", "status": answer.status, "headers": _EVENTS})
            async for lines in answer.lines():
                chunk = b"\n".join(lines) + b"\n"
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        content = await answer.read()
        length = [(b"content-length", str(len(content)).encode())]
        await send(
            {"type": "http.response.start", "status": answer.status, "headers": _JSON + length}
        )
        await send({"type": "http.response.body", "body": content})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the upstream's base URL (…/v1)")
    args = parser.parse_args()
    # As `areion serve` sets up its process (cli.py), so the comparison is like for like.
    freeze_startup_heap()
    uvicorn.run(
        Floor(args.upstream),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        loop="auto",
        http=guarded_protocol(ServerConfig()),
        lifespan="on",
    )


if __name__ == "__main__":
    main()

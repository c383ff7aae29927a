"""A chat call's JSON answer (`JsonAnswer`), written whole.

It is sent as Starlette's `Response` sends one, with its headers encoded in one pass:
`Response` normalizes each header through a mutable header list (case,
content-length, charset), which these headers, all of them lowercase names this
server sets, do not need. Under `areion serve`, with no middleware between it and
the connection, it leaves in one write (`guard.send_whole`) instead of two ASGI
messages.
"""

from __future__ import annotations

import orjson
from starlette.types import Receive, Scope, Send

from areion.server.guard import send_whole

__all__ = ["JsonAnswer"]


class JsonAnswer:
    """A 200 answer of JSON `data`, with `headers` besides its content type and length."""

    __slots__ = ("body", "raw_headers")

    def __init__(self, data: object, headers: dict[str, str]) -> None:
        self.body = body = orjson.dumps(data)
        self.raw_headers = [
            (b"content-length", b"%d" % len(body)),
            (b"content-type", b"application/json"),
            *[(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()],
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if send_whole(send, 200, self.raw_headers, self.body):
            return
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body})

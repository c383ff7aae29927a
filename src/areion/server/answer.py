"""A chat call's JSON answer (`JsonAnswer`), written whole.

It is sent as Starlette's `Response` sends one, with its headers encoded in one pass:
`Response` normalizes each header through a mutable header list (case,
content-length, charset), which these headers, all of them lowercase names this
server sets, do not need. Under `areion serve`, with no middleware between it and
the connection but the request log (which it then tells, `access.sent_past`), it
leaves in one write (`guard.send_whole`) instead of two ASGI messages.
"""

from __future__ import annotations

import re

import orjson
from starlette.types import Receive, Scope, Send

from areion.server.access import inner_send, sent_past
from areion.server.guard import send_whole

__all__ = ["JsonAnswer"]


class JsonAnswer:
    """A 200 answer of JSON `data`, with `headers` besides its content type and length."""

    __slots__ = ("body", "headers")

    def __init__(self, data: object, headers: dict[str, str]) -> None:
        self.body = orjson.dumps(data)
        self.headers = headers

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers as an ASGI `http.response.start` message gives them."""
        return [
            (b"content-length", b"%d" % len(self.body)),
            (b"content-type", b"application/json"),
            *[
                (name.encode("latin-1"), value.encode("latin-1"))
                for name, value in self.headers.items()
            ],
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers, body = self.headers, self.body
        # Written whole when nothing wraps `send`, and no value holds a byte a header
        # may not (else uvicorn's `send` refuses it, as it should).
        if not _NOT_IN_A_HEADER.search("".join(headers.values())):
            lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
            head = b"content-length: %d\r\ncontent-type: application/json\r\n%b" % (
                len(body),
                lines.encode("latin-1"),
            )
            if send_whole(send, 200, head, body):
                return
            inner = inner_send(scope, send)  # past the request log, which is told
            if inner is not None and send_whole(inner, 200, head, body):
                sent_past(scope, 200, headers)
                return
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": body})


# What uvicorn refuses in a header value (its HEADER_VALUE_RE), as text.
_NOT_IN_A_HEADER = re.compile("[\x00-\x08\x0a-\x1f\x7f]")

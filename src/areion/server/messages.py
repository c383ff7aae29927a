"""POST /v1/messages: the Anthropic Messages API at Areion's ingress.

A Messages request is translated onto the internal `ChatRequest`
(`server/messages_wire.py`) and answered by `Runtime.answer` with the same
`CallOptions` chat completions builds, so admission, limits, budgets, caches,
routing, accounting, lanes and metrics all apply, and any configured model answers
it, an OpenAI-compatible one too. The answer goes back in Anthropic's shape, with the
same `x-areion-*` headers (and Anthropic's `request-id`). Every error on this route is
Anthropic-shaped (`{"type": "error", "error": {"type", "message"}}`) with the status
it would have anywhere else; every other route keeps OpenAI's shape.

The key comes as `x-api-key` (how the Anthropic SDKs send it) or as a bearer token;
`anthropic-version` is accepted and not needed: the shape served is 2023-06-01's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from areion.config import ModelConfig
from areion.errors import AreionError, RequestError
from areion.runtime import Runtime
from areion.server.access import note
from areion.server.calls import answer_headers, call_options, error_headers
from areion.server.messages_wire import (
    error_json,
    message_events,
    message_json,
    parse_messages_request,
)
from areion.server.schema import json_response
from areion.server.sse import EventStream
from areion.streaming import ChatStream

__all__ = ["MessagesApi"]

log = logging.getLogger("areion.server.messages")

Identify = Callable[[Request], tuple[str, str | None]]


class _MethodNotAllowedError(RequestError):
    status = 405
    code = "method_not_allowed"


class MessagesApi:
    """The handler of /v1/messages."""

    def __init__(self, runtime: Runtime, identity: Identify) -> None:
        self.runtime = runtime
        self._identity = identity

    def routes(self) -> list[Route]:
        # Every method, so that a wrong one is refused in Anthropic's shape too.
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        return [Route("/v1/messages", self.messages, methods=methods)]

    async def messages(self, request: Request) -> Response:
        try:
            if request.method != "POST":
                raise _MethodNotAllowedError(
                    f"method {request.method} is not allowed on /v1/messages; POST a message"
                )
            return await self._create(request)
        except AreionError as error:
            note(request.scope, error=error.code)
            return json_response(error_json(error), error.status, error_headers(error))
        except ClientDisconnect:
            raise
        except Exception:
            # Starlette's handler would answer in OpenAI's shape; this route never does.
            log.exception("unexpected error on %s /v1/messages", request.method)
            internal = AreionError("internal error")
            return json_response(error_json(internal), 500)

    async def _create(self, request: Request) -> Response:
        tenant, key = self._identity(request)
        chat = parse_messages_request(await request.body(), self._targets)
        options = call_options(request.scope, tenant, key, chat.model)
        answer = await self.runtime.answer(chat, options)
        assert options.request_id is not None
        headers = {**answer_headers(answer, options), "request-id": options.request_id}
        if isinstance(answer, ChatStream):
            return EventStream(answer, message_events(answer), headers=headers)
        return json_response(message_json(answer, options.request_id), headers=headers)

    def _targets(self, model: str) -> list[ModelConfig]:
        """The deployments `model` may reach: its group's, or every group its route may
        pick, and the fallbacks of each."""
        config = self.runtime.config
        route = next((route for route in config.routes if route.name == model), None)
        names = {model} if route is None else {*route.candidates}
        if route is not None and route.degraded_model is not None:
            names.add(route.degraded_model)
        for name in list(names):
            names.update(config.fallbacks.get(name, ()))
        return [deployment for deployment in config.models if deployment.name in names]

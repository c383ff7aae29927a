"""The OpenAI Responses API: `POST /v1/responses` and `GET /v1/responses/{id}`.

A request is translated onto a `ChatRequest` (`responses_input`) and answered by
`Runtime.answer` with the same `CallOptions` chat completions builds, so admission,
limits, budgets, caches, routing, accounting, lanes and every provider apply as they
do there; the answer goes back in the Responses shape (`responses_output`), with the
same `x-areion-*` headers. A streamed answer is sent by `EventStream`, so a client that
hangs up stops the upstream.

Unless the request says `store: false`, the response is kept in the store with its
turn of the conversation (input and output, as chat messages) before the client sees
it whole; `previous_response_id` then continues the conversation (its instructions
are not carried over, as in OpenAI's API). Responses belong to their tenant: another
tenant's id, like one never stored, is a 404 that says nothing more.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from areion.errors import AreionError, RequestError, StreamInterruptedError
from areion.pricing import usd_text
from areion.runtime import Runtime
from areion.server.calls import answer_headers, call_options
from areion.server.responses_input import ResponsesRequest, parse_responses_request
from areion.server.responses_output import ResponseEvents, ResponseShape, new_id, output_items
from areion.server.schema import clip, json_response
from areion.server.sse import EventStream
from areion.store.records import ResponseRecord
from areion.streaming import ChatStream, MessageAssembler
from areion.types import ChatResponse, Message

__all__ = ["ResponseNotFoundError", "ResponsesApi"]

Identify = Callable[[Request], tuple[str, str | None]]


class ResponseNotFoundError(RequestError):
    """No stored response of that id for the caller (never stored, `store: false`, or
    another tenant's)."""

    status = 404
    code = "not_found"


class ResponsesApi:
    """The Responses API's routes over `runtime`. `identity` gives a request's tenant and
    key label (as chat completions has them)."""

    def __init__(self, runtime: Runtime, identity: Identify) -> None:
        self.runtime = runtime
        self.identity = identity
        self._reasoning = _reasoning_models(runtime)

    def routes(self) -> list[Route]:
        return [
            Route("/v1/responses", self.create, methods=["POST"]),
            Route("/v1/responses/{response_id}", self.retrieve, methods=["GET"]),
        ]

    def _takes_reasoning(self, model: str) -> bool:
        # A name that is no model at all gets the runtime's 404, which lists the models.
        return model in self._reasoning or model not in self.runtime.models

    async def create(self, request: Request) -> Response:
        tenant, key = self.identity(request)
        asked = parse_responses_request(await request.body(), reasoning=self._takes_reasoning)
        history: list[Message] = []
        if asked.previous_response_id is not None:
            previous = await self.runtime.store.get_response(tenant, asked.previous_response_id)
            if previous is None:
                raise _not_found(asked.previous_response_id, param="previous_response_id")
            history = [Message.from_openai(message) for message in previous.conversation]
        chat = asked.chat_request(history)
        options = call_options(request.scope, tenant, key, chat.model)
        answer = await self.runtime.answer(chat, options)
        shape = ResponseShape(
            response_id=new_id("resp"), created_at=int(time.time()), echo=asked.echo
        )
        headers = answer_headers(answer, options)
        if isinstance(answer, ChatStream):
            return EventStream(answer, self._events(answer, asked, shape, tenant), headers)
        body = self._body(answer, shape)
        if asked.store:
            await self._put(tenant, asked, shape, answer.message.to_openai(), body)
        return json_response(body, headers=headers)

    async def retrieve(self, request: Request) -> Response:
        tenant, _ = self.identity(request)
        response_id = request.path_params["response_id"]
        found = await self.runtime.store.get_response(tenant, response_id)
        if found is None:
            raise _not_found(response_id)
        return json_response(found.record.body)

    @staticmethod
    def _body(answer: ChatResponse, shape: ResponseShape) -> dict[str, Any]:
        finish_reason = answer.choices[0].finish_reason
        return shape.body(
            model=answer.model,
            output=output_items(answer.message, finish_reason),
            finish_reason=finish_reason,
            usage=answer.usage,
            completed_at=int(time.time()),
        )

    async def _put(
        self,
        tenant: str,
        asked: ResponsesRequest,
        shape: ResponseShape,
        output: dict[str, Any],
        body: dict[str, Any],
    ) -> None:
        """Keep a response for `previous_response_id` and GET, before its client has it."""
        await self.runtime.store.put_response(
            ResponseRecord(
                response_id=shape.response_id,
                tenant=tenant,
                previous_response_id=asked.previous_response_id,
                model=asked.model,
                created=float(shape.created_at),
                messages=[*asked.turn_messages(), output],
                body=body,
            )
        )

    async def _events(
        self, stream: ChatStream, asked: ResponsesRequest, shape: ResponseShape, tenant: str
    ) -> AsyncIterator[bytes]:
        """The typed events of `stream`; a failure after the first byte ends it with
        `error` and `response.failed`, never a silent truncation."""
        events = ResponseEvents(shape, model=stream.upstream_model)
        for event in events.start():
            yield event
        output = MessageAssembler()
        try:
            async for chunk in stream:
                output.add(chunk)
                for event in events.chunk(chunk):
                    yield event
        except StreamInterruptedError as error:
            for event in events.failed(error.code, error.message):
                yield event
            return
        for event in events.finish(stream.finish_reason):
            yield event
        body = shape.body(
            model=stream.upstream_model,
            output=events.items,
            finish_reason=stream.finish_reason,
            usage=stream.usage,  # set once the stream has ended: accounting has run
            completed_at=int(time.time()),
        )
        if asked.store:
            try:
                await self._put(tenant, asked, shape, output.message(), body)
            except AreionError as error:
                # Paid for, but not kept: the client must not take it for continuable.
                for event in events.failed(error.code, f"the response was not stored: {error}"):
                    yield event
                return
        if stream.cost_usd is not None:
            yield f": x-areion-cost-usd={usd_text(stream.cost_usd)}\n\n".encode()
        yield events.completed(body)


def _not_found(response_id: str, *, param: str | None = None) -> ResponseNotFoundError:
    return ResponseNotFoundError(f"no response '{clip(response_id)}' found", param=param)


def _reasoning_models(runtime: Runtime) -> set[str]:
    """The names that may take `reasoning`: model groups whose every deployment is a
    reasoning model, and routes with such a group among their candidates."""
    deployments: dict[str, list[bool]] = {}
    for model in runtime.config.models:
        deployments.setdefault(model.name, []).append(model.reasoning)
    names = {name for name, flags in deployments.items() if all(flags)}
    routes = {
        route.name
        for route in runtime.config.routes
        if any(candidate in names for candidate in route.candidates)
    }
    return names | routes

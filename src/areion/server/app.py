"""The HTTP face: an OpenAI-compatible API over a `Runtime`.

The handlers are thin: authenticate, validate, call the runtime, serialize. Every
error leaves as an OpenAI-shaped body with the right status (Anthropic-shaped on
/v1/messages, `server/messages.py`); nothing a client sends can produce a 500.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from areion.control.keys import Identity, KeyRing
from areion.errors import AreionError, AuthenticationError, UnknownModelError
from areion.runtime import Runtime
from areion.server.access import AccessLog, note
from areion.server.admin import AdminApi, bearer_key
from areion.server.answer import JsonAnswer
from areion.server.batches import JobsApi
from areion.server.cache import CacheApi
from areion.server.calls import (
    answer_headers,
    call_options,
    error_headers,
    request_headers,
)
from areion.server.completions import CompletionsApi
from areion.server.dashboard import DashboardApi
from areion.server.embeddings import EmbeddingsApi
from areion.server.experiments import ExperimentsApi
from areion.server.guard import LimitBody, capped_body
from areion.server.messages import MessagesApi
from areion.server.ops import OpsApi
from areion.server.responses import ResponsesApi
from areion.server.runs import RunsApi
from areion.server.schema import (
    clip,
    error_body,
    json_response,
    parse_chat_request,
)
from areion.server.spend import SpendApi
from areion.server.sse import EventStream, chat_events
from areion.streaming import ChatStream

__all__ = ["create_app"]

log = logging.getLogger("areion.server")


def error_response(error: AreionError) -> Response:
    body = error_body(error.message, type=error.type, code=error.code, param=error.param)
    return json_response(body, error.status, error_headers(error))


_IDENTITY = "areion.identity"


def _presented_key(scope: Scope) -> str | None:
    """The key of `Authorization: Bearer <key>`, else of `x-api-key: <key>` (how the
    Anthropic SDKs send theirs)."""
    headers = request_headers(scope)
    key = bearer_key(headers.get(b"authorization", b"").decode("latin-1"))
    return key or headers.get(b"x-api-key", b"").decode("latin-1").strip() or None


def _own_keys(path: str) -> bool:
    """Whether the endpoint checks its own (admin or metrics) keys."""
    return path.startswith("/v1/admin/") or path in ("/healthz", "/metrics")


class _Authenticate:
    """Resolves each request's key before routing (a store lookup on a cache
    miss is async), so handlers read the identity without awaiting. The admin API,
    /healthz and /metrics check their own keys; a request there is not looked up
    among tenant keys."""

    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _own_keys(scope["path"]):
            key = _presented_key(scope)
            try:
                scope[_IDENTITY] = await self.keys.identify(key)
            except AuthenticationError as error:
                scope[_IDENTITY] = error
        await self.app(scope, receive, send)


_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})


class _ChatCall:
    """`POST /v1/chat/completions` (and `/chat/completions`), the hot path, in one ASGI
    layer: what `_Contain`, `LimitBody`, `_Authenticate` and the route do for any other
    request, it does for a chat call without their frames, closures and `Request`
    objects, which every resumption of the call's task would pass through again. Only
    the middleware the config asks for (the access log, the trace context) wraps it."""

    def __init__(self, api: _Api, keys: KeyRing, max_body_bytes: int) -> None:
        self.api = api
        self.keys = keys
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answering = False
        try:
            try:
                identity = scope[_IDENTITY] = await self.keys.identify(_presented_key(scope))
                raw = await capped_body(request_headers(scope), receive, self.max_body_bytes)
                response = await self.api.answer_chat(scope, identity.tenant, identity.key, raw)
            except AreionError as error:
                note(scope, error=error.code)
                response = error_response(error)
            answering = True
            await response(scope, receive, send)
        except ClientDisconnect:
            return  # the client left (or was timed out) mid-request: nobody to answer
        except Exception:
            if answering:  # cut short: uvicorn closes the connection
                raise
            await _internal_error(scope, receive, send)


async def _internal_error(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer to an error no handler took, before the answer started: logged, and a
    500 in OpenAI's shape on a connection that stays usable (`_Contain`)."""
    log.exception("unexpected error on %s %s", scope["method"], scope["path"])
    note(scope, error="internal_error")
    body = error_body("internal error", type="server_error", code="internal_error")
    await json_response(body, 500)(scope, receive, send)


class _Server(Starlette):
    """Starlette, but for a chat call, which goes straight to `_ChatCall` (wrapped in
    the middleware the config asks for) past Starlette's own layers."""

    def __init__(self, *, chat: ASGIApp, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._chat = chat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in _CHAT_PATHS and scope["method"] == "POST":
            scope["app"] = self
            await self._chat(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class _Api:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def identity(self, request: Request) -> tuple[str, str | None]:
        """The tenant and the key label of a request (open server: `default`, no key)."""
        found = request.scope.get(_IDENTITY)
        if isinstance(found, AuthenticationError):
            raise found
        if not isinstance(found, Identity):
            raise AuthenticationError(
                "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
            )
        return found.tenant, found.key

    def tenant(self, request: Request) -> str:
        return self.identity(request)[0]

    async def answer_chat(
        self, scope: Scope, tenant: str, key: str | None, raw: bytes
    ) -> Response | JsonAnswer:
        """The answer to the chat completion request `raw` of `tenant`."""
        chat, include_usage = parse_chat_request(raw)
        options = call_options(scope, tenant, key, chat.model)
        response = await self.runtime.answer(chat, options)
        headers = answer_headers(response, options)
        if isinstance(response, ChatStream):
            return EventStream(response, chat_events(response, include_usage), headers=headers)
        return JsonAnswer(response.to_openai(), headers)

    async def models(self, request: Request) -> Response:
        _, key = self.identity(request)
        return json_response(
            {"object": "list", "data": [_model(name) for name in self.runtime.models_for(key)]}
        )

    async def model(self, request: Request) -> Response:
        """One model, if the caller's key may use it; else 404, as for a model that does
        not exist: a key learns nothing of the models it may not use."""
        _, key = self.identity(request)
        name = request.path_params["model"]
        if name not in self.runtime.models_for(key):
            raise UnknownModelError(
                f"model '{clip(name)}' does not exist; GET /v1/models lists those you can use",
                param="model",
            )
        return json_response(_model(name))


def _model(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "areion"}


async def _areion_error(request: Request, exc: Exception) -> Response:
    """Every `AreionError` a handler raises, as its status and an OpenAI-shaped body."""
    assert isinstance(exc, AreionError)
    note(request.scope, error=exc.code)
    return error_response(exc)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    note(request.scope, error=_HTTP_CODES.get(exc.status_code, "http_error"))
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}"
        return json_response(
            error_body(message, type="invalid_request_error", code="not_found"), 404
        )
    if exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
        return json_response(
            error_body(message, type="invalid_request_error", code="method_not_allowed"), 405
        )
    return json_response(
        error_body(str(exc.detail), type="invalid_request_error", code=None), exc.status_code
    )


class _Contain:
    """The last word on an error no handler took: a logged 500 in OpenAI's shape, on a
    connection that stays usable. Starlette's own 500 handler re-raises once it has
    answered, and uvicorn then closes the connection without saying so in a
    `connection: close` header, so a client's next request on it failed. An error after
    the answer has started still closes the connection: the answer is cut short."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except ClientDisconnect:
            return  # the client left (or was timed out) mid-request: nobody to answer
        except Exception:
            if started:
                raise
            await _internal_error(scope, receive, send)


def create_app(runtime: Runtime) -> Starlette:
    """The ASGI app serving `runtime`; it closes the runtime on shutdown."""
    api = _Api(runtime)
    runs = RunsApi(runtime, api.tenant)
    cache = CacheApi(runtime, api.tenant)
    admin = AdminApi(runtime)
    jobs = JobsApi(runtime, api.identity, agents=runs.agents)
    dashboard = DashboardApi(runtime, api.identity, runs)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        runs.begin()
        jobs.begin()
        yield
        await jobs.aclose()
        await dashboard.aclose()
        await runs.aclose()
        await runtime.aclose()

    server = runtime.config.server
    # The request log outermost but for the trace: it sees every answer as sent, a
    # contained 500 and a 413 among them.
    middleware = [
        *([Middleware(AccessLog, format=server.log_format)] if server.access_log else []),
        Middleware(_Contain),
        Middleware(
            LimitBody,
            max_bytes=server.max_body_bytes,
            # An upload's cap, plus room for its multipart framing.
            paths={
                "/v1/files": (
                    runtime.config.jobs.max_file_bytes + 64 * 1024,
                    "jobs.max_file_bytes",
                )
            },
        ),
        Middleware(_Authenticate, keys=runtime.keys),
    ]
    chat_call = _ChatCall(api, runtime.keys, server.max_body_bytes)
    chat: ASGIApp = chat_call
    if server.access_log:
        chat = AccessLog(chat, format=server.log_format)
    if runtime.tracing is not None:
        from areion.telemetry.tracing import ContinueTrace

        # Outermost: a caller's traceparent is the parent of everything its request does.
        middleware.insert(0, Middleware(ContinueTrace, tracing=runtime.tracing))
        chat = ContinueTrace(chat, tracing=runtime.tracing)
    return _Server(
        chat=chat,
        routes=[
            # Their POSTs go to `_ChatCall` before routing (`_Server`); the routes answer
            # other methods 405.
            Route("/v1/chat/completions", chat_call, methods=["POST"]),
            Route("/chat/completions", chat_call, methods=["POST"]),
            Route("/v1/models", api.models, methods=["GET"]),
            *ResponsesApi(runtime, api.identity).routes(),
            Route("/v1/models/{model:path}", api.model, methods=["GET"]),
            *CompletionsApi(runtime, api.identity).routes(),
            *MessagesApi(runtime, api.identity).routes(),
            *EmbeddingsApi(runtime, api.identity).routes(),
            *OpsApi(runtime).routes(),
            *SpendApi(runtime, api.identity).routes(),
            *ExperimentsApi(runtime, api.identity).routes(),
            *runs.routes(),
            *cache.routes(),
            *admin.routes(),
            *jobs.routes(),
            *dashboard.routes(),
        ],
        middleware=middleware,
        exception_handlers={AreionError: _areion_error, HTTPException: _http_error},
        lifespan=lifespan,
    )

"""The Batches API: run a file of requests later, at the batch lane's pace.

`POST /v1/batches` reads the tenant's uploaded file, stores the batch with all its
lines in the job queue (`areion.jobs`) and wakes this process's worker; any worker of
the same store may run it. `GET /v1/batches/{id}` shows its progress
(`request_counts`, kept current as each line ends), `GET /v1/batches` lists the
tenant's batches newest first (`after`, `limit`), and `POST /v1/batches/{id}/cancel`
stops it: lines already answered stay in its output file. Batches belong to their
tenant: any other gets a 404.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from areion.agent.agent import Agent
from areion.config import JobsConfig
from areion.errors import RequestError
from areion.jobs.queue import JobQueue
from areion.jobs.records import BATCH_ENDPOINTS, TERMINAL, BatchRecord, LineRecord
from areion.jobs.windows import plan, window_of
from areion.runtime import Runtime
from areion.server.files import FilesApi, NoSuchFileError
from areion.server.schema import clip, json_response, parse_body, parse_chat_request
from areion.types import ChatRequest

__all__ = ["BatchNotFoundError", "BatchesApi", "JobsApi", "batch_object", "parse_line"]

Identify = Callable[[Request], tuple[str, str | None]]

_WINDOW_S = 24 * 3600.0  # OpenAI's one completion window


class BatchNotFoundError(RequestError):
    """No batch of that id for the caller."""

    status = 404
    code = "batch_not_found"


class _Create(BaseModel):
    # Parameters the SDK may add later (output_expires_after...) are taken and ignored.
    model_config = ConfigDict(strict=True, extra="allow")

    input_file_id: str = Field(min_length=1)
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    # Areion's: when the batch may start (Unix times), and in which of jobs.windows
    # ("none": no window, even when jobs.default_window names one).
    window: str | None = None
    not_before: float | None = Field(default=None, ge=0)
    deadline: float | None = Field(default=None, ge=0)


def _at(value: float | None) -> int | None:
    return None if value is None else int(value)


def batch_object(batch: BatchRecord) -> dict[str, Any]:
    """A batch in OpenAI's shape."""
    ended = batch.status in TERMINAL
    return {
        "id": batch.batch_id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": f"file-{batch.batch_id}-output" if ended and batch.completed else None,
        "error_file_id": f"file-{batch.batch_id}-errors" if ended and batch.failed else None,
        "created_at": int(batch.created),
        "in_progress_at": _at(batch.in_progress_at),
        "expires_at": _at(batch.expires_at),
        "finalizing_at": _at(batch.finalizing_at),
        "completed_at": _at(batch.completed_at),
        # An expired batch's time is kept in failed_at (one column for both ends).
        "failed_at": None if batch.status == "expired" else _at(batch.failed_at),
        "expired_at": _at(batch.failed_at) if batch.status == "expired" else None,
        "cancelling_at": _at(batch.cancelling_at),
        "cancelled_at": _at(batch.cancelled_at),
        "request_counts": {
            "total": batch.total,
            "completed": batch.completed,
            "failed": batch.failed,
        },
        "metadata": batch.metadata,
        # Areion's: when it may start, and why then.
        "not_before": batch.not_before,
        "deadline": batch.deadline,
        "schedule": batch.schedule,
    }


class BatchesApi:
    """`/v1/batches`: create, read, list, cancel."""

    def __init__(
        self,
        queue: Callable[[], JobQueue],
        identify: Identify,
        wake: Callable[[], None],
        *,
        jobs: JobsConfig,
    ) -> None:
        self.queue = queue
        self.identify = identify
        self.wake = wake
        self.jobs = jobs

    def routes(self) -> list[Route]:
        return [
            Route("/v1/batches", self.create, methods=["POST"]),
            Route("/v1/batches", self.list_batches, methods=["GET"]),
            Route("/v1/batches/{batch_id}", self.get, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", self.cancel, methods=["POST"]),
        ]

    async def create(self, request: Request) -> Response:
        tenant, key = self.identify(request)
        body: _Create = parse_body(_Create, await request.body())
        if body.endpoint not in BATCH_ENDPOINTS:
            raise RequestError(
                f"endpoint must be one of: {', '.join(BATCH_ENDPOINTS)}", param="endpoint"
            )
        if body.completion_window != "24h":
            raise RequestError("completion_window must be '24h'", param="completion_window")
        queue = self.queue()
        content = await queue.file_content(tenant, body.input_file_id)
        record = await queue.get_file(tenant, body.input_file_id)
        if content is None or record is None:
            raise NoSuchFileError(f"no file '{clip(body.input_file_id)}'", param="input_file_id")
        if record.purpose != "batch":
            raise RequestError(
                f"file '{record.file_id}' is a batch's {record.purpose}, not an input",
                param="input_file_id",
            )
        batch_id = f"batch_{uuid.uuid4().hex}"
        lines: list[LineRecord] = []
        # The file was checked line by line when it was uploaded.
        for raw in content.splitlines():
            if raw.strip():
                line = orjson.loads(raw)
                if line["url"] != body.endpoint:
                    raise RequestError(
                        f"line '{clip(line['custom_id'])}' asks {line['url']}, not the "
                        f"batch's endpoint {body.endpoint}",
                        param="endpoint",
                    )
                lines.append(
                    LineRecord(
                        batch_id=batch_id,
                        index=len(lines),
                        custom_id=line["custom_id"],
                        body=line["body"],
                    )
                )
        now = queue.clock()
        schedule = plan(
            now,
            window=window_of(self.jobs, body.window),
            not_before=body.not_before,
            deadline=body.deadline,
        )
        batch = BatchRecord(
            batch_id=batch_id,
            tenant=tenant,
            key=key,
            endpoint=body.endpoint,
            input_file_id=body.input_file_id,
            completion_window=body.completion_window,
            metadata=body.metadata,
            total=len(lines),
            created=now,
            # The completion window runs from when the batch may start (its window's slot).
            expires_at=schedule.start + _WINDOW_S,
            not_before=schedule.start,
            deadline=body.deadline,
            schedule=schedule.record(),
        )
        await queue.create_batch(batch, lines)
        self.wake()
        return json_response(batch_object(batch))

    async def _batch(self, request: Request) -> BatchRecord:
        tenant, _ = self.identify(request)
        batch_id = request.path_params["batch_id"]
        batch = await self.queue().get_batch(tenant, batch_id)
        if batch is None:
            raise BatchNotFoundError(f"no batch '{clip(batch_id)}'", param="batch_id")
        return batch

    async def get(self, request: Request) -> Response:
        return json_response(batch_object(await self._batch(request)))

    async def list_batches(self, request: Request) -> Response:
        tenant, _ = self.identify(request)
        after = request.query_params.get("after")
        raw_limit = request.query_params.get("limit", "20")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
            raise RequestError("limit must be an integer from 1 to 100", param="limit")
        limit = int(raw_limit)
        # One more than asked: whether there is a next page.
        batches = await self.queue().list_batches(tenant, after=after, limit=limit + 1)
        page = [batch_object(b) for b in batches[:limit]]
        return json_response(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(batches) > limit,
            }
        )

    async def cancel(self, request: Request) -> Response:
        tenant, _ = self.identify(request)
        batch_id = request.path_params["batch_id"]
        batch = await self.queue().cancel_batch(tenant, batch_id)
        if batch is None:
            raise BatchNotFoundError(f"no batch '{clip(batch_id)}'", param="batch_id")
        self.wake()
        return json_response(batch_object(batch))


def parse_line(raw: bytes) -> ChatRequest:
    """A batch line's body as the chat request it asks (as POST /v1/chat/completions)."""
    return parse_chat_request(raw)[0]


class JobsApi:
    """The Files and Batches APIs over the runtime's store, and this process's worker
    (`jobs.worker`), started with the app and stopped before the runtime closes."""

    def __init__(
        self, runtime: Runtime, identify: Identify, *, agents: dict[str, Agent] | None = None
    ) -> None:
        self.jobs = runtime.jobs
        # Deferred runs (POST /v1/runs with defer) name the server's configured agents.
        self.jobs.agents.update(agents or {})
        config = runtime.config.jobs
        self.files = FilesApi(
            lambda: self.jobs.queue,
            lambda request: identify(request)[0],
            max_bytes=config.max_file_bytes,
            max_lines=config.max_lines,
        )
        self.batches = BatchesApi(lambda: self.jobs.queue, identify, self.jobs.wake, jobs=config)

    def routes(self) -> list[Route]:
        return [*self.files.routes(), *self.batches.routes()]

    def begin(self) -> None:
        self.jobs.start()

    async def aclose(self) -> None:
        await self.jobs.aclose()

"""Anthropic's Message Batches API in `areion sim`, kept in memory.

`POST /v1/messages/batches` (`{requests: [{custom_id, params}]}`), `GET
/v1/messages/batches[/{id}]`, `GET /v1/messages/batches/{id}/results` (JSONL of
`{custom_id, result}`, the result `succeeded` with its message, `errored` with an
error response, or `canceled`) and `POST /v1/messages/batches/{id}/cancel`: enough of
Anthropic's shapes for the anthropic SDK and Areion's native batch path. A batch's
requests are answered in the background by the same engine as `/v1/messages`, a few
at a time. Unlike Anthropic, the sim tallies `request_counts` as requests end, not
only once the batch has ended, so that a test can see a batch under way; the counts
still always add up to the batch's requests.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["SimMessageBatches"]

AnswerMessage = Callable[[dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]
"""Messages params -> (HTTP status, an Anthropic message or error response)."""

_JSON = "application/json"
_IN_FLIGHT = 32  # requests of one batch answered at once


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=_JSON)


def _error(status: int, kind: str, message: str) -> Response:
    return _json({"type": "error", "error": {"type": kind, "message": message}}, status)


class SimMessageBatches:
    """The Message Batches of one sim process."""

    def __init__(self, answer: AnswerMessage) -> None:
        self.answer = answer
        self.batches: dict[str, dict[str, Any]] = {}
        self.results: dict[str, list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def routes(self) -> list[Route]:
        base = "/v1/messages/batches"
        return [
            Route(base, self.create, methods=["POST"]),
            Route(base, self.list_batches, methods=["GET"]),
            Route(base + "/{batch_id}", self.get, methods=["GET"]),
            Route(base + "/{batch_id}/results", self.results_of, methods=["GET"]),
            Route(base + "/{batch_id}/cancel", self.cancel, methods=["POST"]),
        ]

    async def create(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "invalid_request_error", "the request body is not JSON")
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return _error(400, "invalid_request_error", "requests: a non-empty list is required")
        seen: set[str] = set()
        for item in requests:
            custom_id = item.get("custom_id") if isinstance(item, dict) else None
            if not isinstance(custom_id, str) or not isinstance(item.get("params"), dict):
                return _error(400, "invalid_request_error", "each request needs custom_id, params")
            if custom_id in seen:
                return _error(400, "invalid_request_error", f"custom_id {custom_id!r} repeats")
            seen.add(custom_id)
        batch_id = "msgbatch_sim" + secrets.token_hex(12)
        created = datetime.now(UTC)
        batch: dict[str, Any] = {
            "id": batch_id, "type": "message_batch", "processing_status": "in_progress",
            "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0,
                               "canceled": 0, "expired": 0},
            "created_at": created.isoformat().replace("+00:00", "Z"),
            "expires_at": (created + timedelta(days=1)).isoformat().replace("+00:00", "Z"),
            "ended_at": None, "cancel_initiated_at": None, "archived_at": None,
            "results_url": None,
        }  # fmt: skip
        self.batches[batch_id] = batch
        task = asyncio.get_running_loop().create_task(
            self._run(batch, requests, str(request.base_url).rstrip("/"))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return _json(batch)

    async def _run(self, batch: dict[str, Any], requests: list[dict[str, Any]], base: str) -> None:
        results: list[tuple[int, bytes]] = []
        limit = asyncio.Semaphore(_IN_FLIGHT)
        counts = batch["request_counts"]

        async def one(index: int, item: dict[str, Any]) -> None:
            async with limit:
                if batch["processing_status"] == "in_progress":
                    status, body = await self.answer(item["params"])
                    if status == 200:
                        result: dict[str, Any] = {"type": "succeeded", "message": body}
                        kind = "succeeded"
                    else:
                        result, kind = {"type": "errored", "error": body}, "errored"
                else:
                    result, kind = {"type": "canceled"}, "canceled"
            line = orjson.dumps({"custom_id": item["custom_id"], "result": result})
            results.append((index, line))
            counts["processing"] -= 1
            counts[kind] += 1

        await asyncio.gather(*(one(i, item) for i, item in enumerate(requests)))
        self.results[batch["id"]] = [line for _, line in sorted(results)]
        batch["results_url"] = f"{base}/v1/messages/batches/{batch['id']}/results"
        batch["processing_status"], batch["ended_at"] = "ended", _now()

    async def get(self, request: Request) -> Response:
        found = self.batches.get(request.path_params["batch_id"])
        if found is None:
            return _error(404, "not_found_error", "no such message batch")
        return _json(found)

    async def list_batches(self, request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "20"))
        except ValueError:
            return _error(400, "invalid_request_error", "limit: an integer is required")
        # Newest first, as Anthropic lists them.
        data = list(reversed(self.batches.values()))[: max(1, min(limit, 1000))]
        return _json(
            {
                "data": data,
                "has_more": len(self.batches) > len(data),
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    async def results_of(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        if batch_id not in self.batches:
            return _error(404, "not_found_error", "no such message batch")
        lines = self.results.get(batch_id)
        if lines is None:
            return _error(400, "invalid_request_error", "the batch is still in progress")
        return Response(b"".join(line + b"\n" for line in lines), media_type="application/binary")

    async def cancel(self, request: Request) -> Response:
        found = self.batches.get(request.path_params["batch_id"])
        if found is None:
            return _error(404, "not_found_error", "no such message batch")
        if found["processing_status"] == "in_progress":
            found["processing_status"], found["cancel_initiated_at"] = "canceling", _now()
        return _json(found)

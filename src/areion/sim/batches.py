"""The OpenAI batch endpoints of `areion sim`: files and batches, kept in memory.

`POST /v1/files` (multipart, any purpose), `GET /v1/files/{id}`, `GET
/v1/files/{id}/content`, `POST /v1/batches`, `GET /v1/batches[/{id}]`, `POST
/v1/batches/{id}/cancel`: enough of OpenAI's shapes for a client (Areion's native batch
path, the openai SDK) to submit a batch, poll it and read its output and error files.
A batch's lines are answered in the background by the same engine as
`/v1/chat/completions`, a few at a time; a line's failure goes to the error file.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["SimBatches"]

Answer = Callable[[dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]
"""A chat completion body -> (HTTP status, response body)."""

_JSON = "application/json"
_IN_FLIGHT = 32  # lines of one batch answered at once


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=_JSON)


def _not_found(what: str) -> Response:
    error = {"message": f"no such {what}", "type": "invalid_request_error", "param": None,
             "code": "not_found"}  # fmt: skip
    return _json({"error": error}, 404)


def _bad(message: str) -> Response:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return _json({"error": error}, 400)


class SimBatches:
    """The files and batches of one sim process."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def routes(self) -> list[Route]:
        return [
            Route("/v1/files", self.create_file, methods=["POST"]),
            Route("/v1/files/{file_id}", self.get_file, methods=["GET"]),
            Route("/v1/files/{file_id}/content", self.file_content, methods=["GET"]),
            Route("/v1/batches", self.create_batch, methods=["POST"]),
            Route("/v1/batches", self.list_batches, methods=["GET"]),
            Route("/v1/batches/{batch_id}", self.get_batch, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", self.cancel, methods=["POST"]),
        ]

    def _file(self, content: bytes, *, purpose: str, filename: str) -> dict[str, Any]:
        file_id = "file-" + secrets.token_hex(12)
        record = {
            "id": file_id, "object": "file", "bytes": len(content),
            "created_at": int(time.time()), "filename": filename, "purpose": purpose,
            "status": "processed", "expires_at": None, "status_details": None,
        }  # fmt: skip
        self.files[file_id] = (record, content)
        return record

    async def create_file(self, request: Request) -> Response:
        async with request.form() as form:
            upload, purpose = form.get("file"), form.get("purpose")
            if not isinstance(upload, UploadFile) or not isinstance(purpose, str):
                return _bad("send multipart fields 'file' and 'purpose'")
            content = await upload.read()
            filename = upload.filename or "upload.jsonl"
        return _json(self._file(content, purpose=purpose, filename=filename))

    async def get_file(self, request: Request) -> Response:
        found = self.files.get(request.path_params["file_id"])
        return _not_found("file") if found is None else _json(found[0])

    async def file_content(self, request: Request) -> Response:
        found = self.files.get(request.path_params["file_id"])
        if found is None:
            return _not_found("file")
        return Response(found[1], media_type="application/octet-stream")

    async def create_batch(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _bad("the request body is not JSON")
        found = self.files.get(str(body.get("input_file_id")))
        if found is None:
            return _not_found("file")
        lines = [orjson.loads(raw) for raw in found[1].splitlines() if raw.strip()]
        batch_id = "batch_" + secrets.token_hex(12)
        now = int(time.time())
        batch: dict[str, Any] = {
            "id": batch_id, "object": "batch", "endpoint": body.get("endpoint"),
            "errors": None, "input_file_id": body["input_file_id"],
            "completion_window": body.get("completion_window"), "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": now,
            "in_progress_at": None, "expires_at": now + 86_400, "finalizing_at": None,
            "completed_at": None, "failed_at": None, "expired_at": None,
            "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }  # fmt: skip
        self.batches[batch_id] = batch
        task = asyncio.get_running_loop().create_task(self._run(batch, lines))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return _json(batch)

    async def _run(self, batch: dict[str, Any], lines: list[dict[str, Any]]) -> None:
        batch["status"], batch["in_progress_at"] = "in_progress", int(time.time())
        outputs: list[tuple[int, bytes]] = []
        errors: list[tuple[int, bytes]] = []
        limit = asyncio.Semaphore(_IN_FLIGHT)
        counts = batch["request_counts"]

        async def one(index: int, line: dict[str, Any]) -> None:
            async with limit:
                if batch["status"] != "in_progress":
                    return
                status, body = await self.answer(line.get("body") or {})
            out = {
                "id": "batch_req_" + secrets.token_hex(12),
                "custom_id": line.get("custom_id"),
                "response": {"status_code": status, "request_id": secrets.token_hex(8),
                             "body": body},
                "error": None,
            }  # fmt: skip
            (outputs if status == 200 else errors).append((index, orjson.dumps(out)))
            counts["completed" if status == 200 else "failed"] += 1

        await asyncio.gather(*(one(i, line) for i, line in enumerate(lines)))
        batch["finalizing_at"] = int(time.time())
        for key, kept, name in (
            ("output_file_id", outputs, "output"),
            ("error_file_id", errors, "errors"),
        ):
            if kept:
                content = b"".join(line + b"\n" for _, line in sorted(kept))
                purpose = "batch_output" if name == "output" else "batch_error"
                batch[key] = self._file(
                    content, purpose=purpose, filename=f"{batch['id']}_{name}.jsonl"
                )["id"]
        ended = "cancelled" if batch["status"] == "cancelling" else "completed"
        batch["status"], batch[f"{ended}_at"] = ended, int(time.time())

    async def get_batch(self, request: Request) -> Response:
        found = self.batches.get(request.path_params["batch_id"])
        return _not_found("batch") if found is None else _json(found)

    async def list_batches(self, request: Request) -> Response:
        data = sorted(self.batches.values(), key=lambda b: b["created_at"], reverse=True)
        return _json({"object": "list", "data": data, "has_more": False})

    async def cancel(self, request: Request) -> Response:
        found = self.batches.get(request.path_params["batch_id"])
        if found is None:
            return _not_found("batch")
        if found["status"] in ("validating", "in_progress"):
            found["status"], found["cancelling_at"] = "cancelling", int(time.time())
        return _json(found)

"""The Files API, as far as batches need it: upload a batch's input, read files back.

`POST /v1/files` takes a multipart upload (`file`, `purpose=batch`) of JSONL lines
`{custom_id, method, url, body}`; each line is checked as the request it will be (a
chat completion body, through the same validation as `POST /v1/chat/completions`), so
a bad line is a 400 naming it, before any batch is made. A file larger than
`jobs.max_file_bytes` is a 413. `GET /v1/files` lists the caller's (newest first,
`purpose` and `limit` to narrow it). Files belong to the tenant that uploaded them (or
whose batch made them): any other tenant gets a 404.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from areion.errors import AreionError, RequestError
from areion.jobs.queue import JobQueue
from areion.jobs.records import BATCH_ENDPOINTS, FileRecord
from areion.server.guard import BodyTooLargeError
from areion.server.schema import clip, json_response, parse_chat_request

__all__ = ["FilesApi", "NoSuchFileError", "file_object", "parse_lines"]

Tenant = Callable[[Request], str]


class NoSuchFileError(RequestError):
    """No file of that id for the caller."""

    status = 404
    code = "file_not_found"


def file_object(record: FileRecord) -> dict[str, Any]:
    """A file in OpenAI's shape."""
    return {
        "id": record.file_id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": int(record.created),
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def parse_lines(content: bytes, *, max_lines: int) -> list[tuple[str, dict[str, Any]]]:
    """The (custom_id, body) of each line of a batch input file, every one checked as
    the chat completion request it will be; a `RequestError` naming the first bad line."""
    lines: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"line {number}"
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise RequestError(f"{where} of the file is not JSON", param="file") from None
        if not isinstance(line, dict):
            raise RequestError(f"{where} of the file is not a JSON object", param="file")
        custom_id, method, url, body = (line.get(k) for k in ("custom_id", "method", "url", "body"))
        if not isinstance(custom_id, str) or not custom_id:
            raise RequestError(f"{where}: custom_id must be a non-empty string", param="file")
        if custom_id in seen:
            raise RequestError(
                f"{where}: custom_id '{clip(custom_id)}' is used by an earlier line; each "
                "line needs its own",
                param="file",
            )
        seen.add(custom_id)
        if method != "POST":
            raise RequestError(f"{where}: method must be POST", param="file")
        if url not in BATCH_ENDPOINTS:
            raise RequestError(
                f"{where}: url must be one of: {', '.join(BATCH_ENDPOINTS)}", param="file"
            )
        if not isinstance(body, dict):
            raise RequestError(f"{where}: body must be a JSON object", param="file")
        try:
            request, _ = parse_chat_request(orjson.dumps(body))
        except AreionError as error:
            raise RequestError(f"{where}: {error.message}", param="file") from None
        if request.stream:
            raise RequestError(f"{where}: a batch line cannot stream", param="file")
        lines.append((custom_id, body))
        if len(lines) > max_lines:
            raise RequestError(
                f"the file has more than {max_lines} lines (jobs.max_lines)", param="file"
            )
    if not lines:
        raise RequestError("the file has no lines", param="file")
    return lines


class FilesApi:
    """`/v1/files`: upload, describe, download."""

    def __init__(self, queue: Callable[[], JobQueue], tenant: Tenant, *, max_bytes: int,
                 max_lines: int) -> None:  # fmt: skip
        self.queue = queue
        self.tenant = tenant
        self.max_bytes = max_bytes
        self.max_lines = max_lines

    def routes(self) -> list[Route]:
        return [
            Route("/v1/files", self.create, methods=["POST"]),
            Route("/v1/files", self.list_files, methods=["GET"]),
            Route("/v1/files/{file_id}", self.get, methods=["GET"]),
            Route("/v1/files/{file_id}/content", self.content, methods=["GET"]),
        ]

    async def create(self, request: Request) -> Response:
        tenant = self.tenant(request)
        queue = self.queue()
        async with request.form(max_files=1, max_fields=8) as form:
            purpose = form.get("purpose")
            upload = form.get("file")
            if purpose != "batch":
                raise RequestError(
                    "purpose must be 'batch' (the only files Areion keeps)", param="purpose"
                )
            if not isinstance(upload, UploadFile):
                raise RequestError("send the file as the multipart field 'file'", param="file")
            content = await upload.read(self.max_bytes + 1)
            filename = upload.filename or "upload.jsonl"
        if len(content) > self.max_bytes:
            raise BodyTooLargeError(
                f"the file is larger than this server takes ({self.max_bytes} bytes, "
                "jobs.max_file_bytes)",
                param="file",
            )
        lines = parse_lines(content, max_lines=self.max_lines)
        record = FileRecord(
            file_id=f"file-{uuid.uuid4().hex}",
            tenant=tenant,
            purpose="batch",
            filename=clip(filename, 200),
            bytes=len(content),
            created=time.time(),
            lines=len(lines),
        )
        await queue.put_file(record, content)
        return json_response(file_object(record))

    async def list_files(self, request: Request) -> Response:
        tenant = self.tenant(request)
        purpose = request.query_params.get("purpose")
        raw_limit = request.query_params.get("limit", "100")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 10_000:
            raise RequestError("limit must be an integer from 1 to 10000", param="limit")
        files = await self.queue().list_files(tenant, purpose=purpose, limit=int(raw_limit))
        return json_response(
            {"object": "list", "data": [file_object(f) for f in files], "has_more": False}
        )

    async def _record(self, request: Request) -> FileRecord:
        tenant = self.tenant(request)
        file_id = request.path_params["file_id"]
        record = await self.queue().get_file(tenant, file_id)
        if record is None:
            raise NoSuchFileError(f"no file '{clip(file_id)}'", param="file_id")
        return record

    async def get(self, request: Request) -> Response:
        return json_response(file_object(await self._record(request)))

    async def content(self, request: Request) -> Response:
        record = await self._record(request)
        data = await self.queue().file_content(record.tenant, record.file_id)
        return Response(data or b"", media_type="application/octet-stream")

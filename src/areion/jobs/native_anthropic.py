"""Anthropic's Message Batches as a native batch API (`provider: anthropic`).

Each line's chat completion body becomes Messages params by the same translation as an
interactive call (`providers/anthropic.py`), and each result comes back as a chat
completion (`succeeded`) or an OpenAI-style error body (`errored`); `canceled` and
`expired` requests are left unanswered. Anthropic's `custom_id` allows only 64 letters,
digits, `-` and `_`, so a request's id is Areion's batch id and the line's index
(`<hex of the batch id>-<index>`) rather than the client's `custom_id`: stable across a
takeover, and it tells a batch of this job from any other.

A Message Batch has no metadata to find it by. So a worker that took over a job whose
predecessor may have submitted (its record says since when, but no batch id) looks at
the provider's batches created since then: one that has ended is this job's if its
results carry this job's ids; of those still running, the newest with as many requests
as this job would send is taken. A result that does not carry this job's ids is never
booked: had the guess been wrong, the lines stay pending and are run here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from areion.errors import AreionError, UpstreamError
from areion.gateway.deployments import Deployment
from areion.jobs.native import NativeHttp, NativeResult, Parse
from areion.jobs.records import LineRecord
from areion.providers.anthropic import messages_url, parse_response, request_body

__all__ = ["AnthropicBatchClient", "batch_params", "chat_result", "request_id"]

_SKEW_S = 60.0  # the provider's clock may be behind ours by this much
_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def _tag(job: str) -> str:
    return job.removeprefix("batch_")[:48]


def request_id(job: str, line: LineRecord) -> str:
    """The Message Batch `custom_id` of `line` of Areion's batch `job`."""
    return f"{_tag(job)}-{line.index}"


def batch_params(
    job: str, lines: Sequence[LineRecord], parse: Parse, model: str
) -> list[dict[str, Any]]:
    """The Message Batch requests of `lines`, asking upstream `model`. A line that is no
    valid chat request for Anthropic (or asks to stream) is left out: run here, it
    fails with the same error."""
    out = []
    for line in lines:
        try:
            request = parse(orjson.dumps(line.body))
            if request.stream:
                continue
            params = request_body(request, model, stream=False)
        except AreionError:
            continue
        out.append({"custom_id": request_id(job, line), "params": params})
    return out


def chat_result(result: dict[str, Any], *, model: str) -> tuple[int, dict[str, Any]] | None:
    """A Message Batch result as an HTTP status and a chat completion (or OpenAI-style
    error) body; None if the request was not answered (canceled or expired)."""
    kind = result.get("type")
    if kind == "succeeded":
        message = result.get("message")
        if not isinstance(message, dict):
            return None
        return 200, parse_response(message, model=model).to_openai()
    if kind == "errored":
        response = result.get("error") or {}
        # An ErrorResponse ({type: error, error: {type, message}}), or the error itself.
        inner = response.get("error")
        error: dict[str, Any] = inner if isinstance(inner, dict) else response
        error_type = str(error.get("type") or "api_error")
        message = str(error.get("message") or error_type)
        body = {"error": {"message": message, "type": error_type, "param": None, "code": None}}
        return _STATUS.get(error_type, 500), body
    return None


def _created(batch: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(batch.get("created_at"))).timestamp()
    except ValueError:
        return 0.0


class AnthropicBatchClient:
    """One Anthropic deployment's `/v1/messages/batches`."""

    def __init__(self, deployment: Deployment, parse: Parse) -> None:
        config = deployment.config
        headers = {
            "content-type": "application/json",
            "anthropic-version": config.anthropic_version,
        }
        if config.api_key is not None and config.api_key.get_secret_value():
            headers["x-api-key"] = config.api_key.get_secret_value()
        self.http = NativeHttp(deployment, messages_url(config.base_url) + "/batches", headers)
        self.model = config.upstream_model
        self.parse = parse

    async def aclose(self) -> None:
        await self.http.aclose()

    async def submit(self, lines: Sequence[LineRecord], *, job: str) -> str:
        requests = batch_params(job, lines, self.parse, self.model)
        if not requests:  # nothing is sent: the lines are run here
            raise UpstreamError(
                f"deployment '{self.http.deployment.id}': no line of the batch is a valid "
                "Messages request"
            )
        return str((await self.http.json("POST", "", json={"requests": requests}))["id"])

    async def find(
        self, job: str, lines: Sequence[LineRecord], *, since: float | None
    ) -> str | None:
        if since is None:
            return None
        listed = await self.http.json("GET", "", params={"limit": "100"})
        size = len(batch_params(job, lines, self.parse, self.model))
        running: str | None = None
        for batch in listed.get("data") or ():  # newest first
            if not isinstance(batch, dict) or _created(batch) < since - _SKEW_S:
                continue
            if batch.get("processing_status") == "ended":
                if any(str(r.get("custom_id")).startswith(_tag(job) + "-")
                       for r in await self._results(str(batch["id"]))):  # fmt: skip
                    return str(batch["id"])
            elif running is None and sum((batch.get("request_counts") or {}).values()) == size:
                running = str(batch["id"])
        return running

    async def poll(self, batch_id: str) -> dict[str, Any] | None:
        remote = await self.http.json("GET", f"/{batch_id}")
        return remote if remote.get("processing_status") == "ended" else None

    async def cancel(self, batch_id: str) -> None:
        await self.http.call("POST", f"/{batch_id}/cancel")

    async def _results(self, batch_id: str) -> list[dict[str, Any]]:
        # Read under the deployment's own base URL, not the batch's `results_url`: the
        # key is sent to no other host.
        out = []
        for raw in (await self.http.call("GET", f"/{batch_id}/results")).splitlines():
            value = orjson.loads(raw) if raw.strip() else None
            if isinstance(value, dict):
                out.append(value)
        return out

    async def results(
        self, remote: dict[str, Any], lines: Sequence[LineRecord]
    ) -> list[NativeResult]:
        """The answered requests of `remote` that are lines of `lines`, by their ids."""
        job = lines[0].batch_id if lines else ""
        pending = {request_id(job, line): line for line in lines}
        out: list[NativeResult] = []
        for item in await self._results(str(remote["id"])):
            line = pending.get(str(item.get("custom_id")))
            answer = chat_result(item.get("result") or {}, model=self.model)
            if line is None or answer is None:  # not this job's, ended already, unanswered
                continue
            del pending[str(item.get("custom_id"))]
            out.append(NativeResult(line=line, status=answer[0], body=answer[1]))
        return out

"""A provider's own batch API: a batch sent whole, polled, and booked line by line.

When every pending line of a batch asks one model group with a `native_batch`
deployment, the worker sends the lines to that provider's batch API through a
`NativeBatchClient`: `OpenAIBatchClient` for an OpenAI-compatible `/v1/files` +
`/v1/batches` (here), `AnthropicBatchClient` for Anthropic's Message Batches
(`jobs/native_anthropic.py`). Before it submits, the worker records in the job's
record (fenced) which deployment it is sending to and when; once submitted, the
provider's batch id. A worker that takes the job over polls the same provider batch;
one that finds no id recorded (its predecessor died between creating and recording
it) looks for the provider's batch first (OpenAI: by Areion's batch id in its
metadata; Anthropic: by the custom_ids, which carry it) and submits anew only if there
is none. Each result is mapped back to its line and ended with one ledger row at the
provider's batch price (`price.batch` of the deployment's list price, half by
default), exactly once (`JobQueue.end_line`). Lines the provider did not answer (its
batch expired, failed or was cancelled) are left pending: the worker runs them itself
(unless the job is being cancelled).

These lines are booked, not admitted: the provider's batch is one submission, so
the per-call limits, budgets and caches of the request path do not apply to them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson

from areion.errors import UpstreamError
from areion.gateway.deployments import Deployment
from areion.jobs.records import LineRecord
from areion.pricing import cost
from areion.providers.base import credentials
from areion.redact import redact
from areion.runtime import new_request_id
from areion.types import ChatRequest, LedgerEntry, Usage

__all__ = [
    "NativeBatchClient",
    "NativeHttp",
    "NativeResult",
    "OpenAIBatchClient",
    "Parse",
    "batch_entry",
]

ENDED = frozenset({"completed", "failed", "expired", "cancelled"})

Parse = Callable[[bytes], ChatRequest]
"""A batch line's body (JSON bytes) as a chat request; raises `RequestError` (400)."""


@dataclass(slots=True, kw_only=True)
class NativeResult:
    """One line the provider's batch answered, in OpenAI's chat completion shape."""

    line: LineRecord
    """The line of the job it answers."""
    status: int
    """Its HTTP status (200: answered)."""
    body: dict[str, Any]
    """A chat completion, or an OpenAI-style error body."""


class NativeBatchClient(Protocol):
    """One deployment's batch API, as the worker uses it."""

    async def submit(self, lines: Sequence[LineRecord], *, job: str) -> str:
        """Send `lines` as one provider batch made for Areion's batch `job`; its id."""
        ...

    async def find(
        self, job: str, lines: Sequence[LineRecord], *, since: float | None
    ) -> str | None:
        """The id of a provider batch already made for `job` (a submission may have
        begun at Unix time `since`; None: none was), or None."""
        ...

    async def poll(self, batch_id: str) -> dict[str, Any] | None:
        """The provider's batch once it has ended; None while it runs."""
        ...

    async def cancel(self, batch_id: str) -> None:
        """Ask the provider to stop the batch."""
        ...

    async def results(
        self, remote: dict[str, Any], lines: Sequence[LineRecord]
    ) -> list[NativeResult]:
        """What the ended batch `remote` answered of `lines`, each line at most once."""
        ...

    async def aclose(self) -> None: ...


class NativeHttp:
    """JSON and bytes over HTTP to one deployment, over a session of its own; failures
    (and non-200 answers) raise `UpstreamError`, with credentials redacted."""

    def __init__(self, deployment: Deployment, base_url: str, headers: dict[str, str]) -> None:
        config = deployment.config
        self.deployment = deployment
        self.base_url = base_url.rstrip("/")
        self.headers = {
            **headers,
            **{name: value.get_secret_value() for name, value in config.headers.items()},
        }
        self._secrets = credentials(config)
        self._timeout = aiohttp.ClientTimeout(total=config.total_timeout)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, path: str, **kwargs: Any) -> bytes:
        """The answer's body; `path` is under the base URL unless it is a URL itself."""
        url = path if path.startswith(("http://", "https://")) else self.base_url + path
        try:
            async with self._open().request(method, url, headers=self.headers, **kwargs) as answer:
                content = await answer.read()
                if answer.status != 200:
                    text = redact(content[:500].decode(errors="replace"), self._secrets)
                    raise UpstreamError(
                        f"deployment '{self.deployment.id}': {method} {path} answered "
                        f"{answer.status}: {text}",
                        upstream_status=answer.status,
                    )
                return content
        except (aiohttp.ClientError, TimeoutError) as error:
            raise UpstreamError(
                f"deployment '{self.deployment.id}': {method} {path} failed: "
                + redact(str(error) or type(error).__name__, self._secrets)
            ) from None

    async def json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The answer's JSON object."""
        try:
            value = orjson.loads(await self.call(method, path, **kwargs))
        except orjson.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            raise UpstreamError(f"deployment '{self.deployment.id}': {path} sent no JSON object")
        return value


class OpenAIBatchClient:
    """An OpenAI-compatible deployment's `/files` and `/batches`."""

    def __init__(self, deployment: Deployment) -> None:
        config = deployment.config
        headers = {}
        if config.api_key is not None and config.api_key.get_secret_value():
            headers["authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self.http = NativeHttp(deployment, config.base_url or "", headers)
        self.model = config.upstream_model

    async def aclose(self) -> None:
        await self.http.aclose()

    async def submit(self, lines: Sequence[LineRecord], *, job: str) -> str:
        """Upload the lines (JSONL) and create a batch of them."""
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        content = upstream_lines([(line.custom_id, line.body) for line in lines], self.model)
        form.add_field("file", content, filename=f"{job}.jsonl")
        uploaded = await self.http.json("POST", "/files", data=form)
        body = {
            "input_file_id": uploaded["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"areion_batch": job},
        }
        return str((await self.http.json("POST", "/batches", json=body))["id"])

    async def find(
        self, job: str, lines: Sequence[LineRecord], *, since: float | None
    ) -> str | None:
        """The provider's batch made for `job` (by its metadata), among its recent ones."""
        listed = await self.http.json("GET", "/batches", params={"limit": "100"})
        for batch in listed.get("data") or ():
            if isinstance(batch, dict) and (batch.get("metadata") or {}).get("areion_batch") == job:
                return str(batch["id"])
        return None

    async def poll(self, batch_id: str) -> dict[str, Any] | None:
        remote = await self.http.json("GET", f"/batches/{batch_id}")
        return remote if remote.get("status") in ENDED else None

    async def cancel(self, batch_id: str) -> None:
        await self.http.call("POST", f"/batches/{batch_id}/cancel")

    async def results(
        self, remote: dict[str, Any], lines: Sequence[LineRecord]
    ) -> list[NativeResult]:
        """The lines of the batch's output and error files, by custom_id."""
        pending = {line.custom_id: line for line in lines}
        out: list[NativeResult] = []
        for key in ("output_file_id", "error_file_id"):
            file_id = remote.get(key)
            if not isinstance(file_id, str):
                continue
            for raw in (await self.http.call("GET", f"/files/{file_id}/content")).splitlines():
                result = orjson.loads(raw) if raw.strip() else {}
                line = pending.pop(str(result.get("custom_id")), None)
                if line is None:  # ended already, or no line of this batch
                    continue
                response = result.get("response") or {}
                status = int(response.get("status_code") or 500)
                out.append(NativeResult(line=line, status=status, body=response.get("body") or {}))
        return out


def upstream_lines(lines: Sequence[tuple[str, dict[str, Any]]], model: str) -> bytes:
    """The JSONL the provider is sent: each (custom_id, body), asking `model`."""
    return b"".join(
        orjson.dumps(
            {
                "custom_id": custom_id,
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {**body, "model": model},
            }
        )
        + b"\n"
        for custom_id, body in lines
    )


def batch_entry(
    deployment: Deployment, *, tenant: str, body: dict[str, Any], submitted: float
) -> tuple[LedgerEntry, float]:
    """The ledger row of one answered line at the provider's batch price, and what the
    same call would have cost at list price."""
    raw = body.get("usage") or {}
    details = raw.get("prompt_tokens_details") or {}
    usage = Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0),
    )
    listed = cost(usage, deployment.price)
    now = time.time()
    entry = LedgerEntry(
        request_id=new_request_id(),
        tenant=tenant,
        model=deployment.group,
        deployment=deployment.id,
        upstream_model=deployment.config.upstream_model,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        cost_usd=listed * deployment.price.batch,
        estimated=False,
        latency_s=max(0.0, now - submitted),
        created=now,
    )
    return entry, listed

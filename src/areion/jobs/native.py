"""A provider's own batch API: a batch sent whole, polled, and booked line by line.

When every pending line of a batch asks one model group with a `native_batch`
deployment (an OpenAI-compatible `/v1/files` + `/v1/batches`), the worker uploads the
lines there (the group name replaced by the upstream model), creates the provider's
batch with Areion's batch id in its metadata, and remembers the provider's batch id in
the job's record (fenced). A worker that takes the job over polls the same provider
batch; one that finds no id recorded (its predecessor died between creating and
recording it) looks for the provider's batch by that metadata before it submits anew.
Each result line is mapped back to its `custom_id` and ended with one ledger row at
the provider's batch price (`price.batch` of the deployment's list price, half by
default), exactly once (`JobQueue.end_line`). Lines the provider did not answer (its
batch expired or failed) are left pending: the worker runs them itself.

These lines are booked, not admitted: the provider's batch is one submission, so
the per-call limits, budgets and caches of the request path do not apply to them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson

from areion.errors import UpstreamError
from areion.gateway.deployments import Deployment
from areion.pricing import cost
from areion.providers.base import credentials
from areion.redact import redact
from areion.runtime import new_request_id
from areion.types import LedgerEntry, Usage

__all__ = ["NativeClient", "batch_entry"]

ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


class NativeClient:
    """One deployment's `/files` and `/batches`, over a session of its own."""

    def __init__(self, deployment: Deployment) -> None:
        config = deployment.config
        self.deployment = deployment
        self.base_url = (config.base_url or "").rstrip("/")
        self.headers = {name: value.get_secret_value() for name, value in config.headers.items()}
        if config.api_key is not None and config.api_key.get_secret_value():
            self.headers["authorization"] = f"Bearer {config.api_key.get_secret_value()}"
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

    async def _call(self, method: str, path: str, **kwargs: Any) -> bytes:
        url = self.base_url + path
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

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        value = orjson.loads(await self._call(method, path, **kwargs))
        if not isinstance(value, dict):
            raise UpstreamError(f"deployment '{self.deployment.id}': {path} sent no JSON object")
        return value

    async def submit(self, content: bytes, *, job: str) -> dict[str, Any]:
        """Upload `content` (JSONL lines) and create a batch of it; the provider's batch."""
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename=f"{job}.jsonl")
        uploaded = await self._json("POST", "/files", data=form)
        body = {
            "input_file_id": uploaded["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"areion_batch": job},
        }
        return await self._json("POST", "/batches", json=body)

    async def find(self, job: str) -> dict[str, Any] | None:
        """The provider's batch made for `job` (by its metadata), among its recent ones."""
        listed = await self._json("GET", "/batches", params={"limit": "100"})
        for batch in listed.get("data") or ():
            if isinstance(batch, dict) and (batch.get("metadata") or {}).get("areion_batch") == job:
                return batch
        return None

    async def get(self, batch_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/batches/{batch_id}")

    async def cancel(self, batch_id: str) -> None:
        await self._call("POST", f"/batches/{batch_id}/cancel")

    async def content(self, file_id: str) -> bytes:
        return await self._call("GET", f"/files/{file_id}/content")


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

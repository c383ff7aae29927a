"""The batch worker: takes batches from the queue and answers their lines.

Each line goes through `Runtime.answer` in the `batch` lane (admission, budgets,
caches, routing, accounting), with the batch's tenant and key. Accounting hands the
call's ledger rows to the worker instead of writing them (`CallOptions.book`), and the
worker writes them with the line's answer in one transaction (`JobQueue.end_line`),
which only a pending line and the worker's current fencing token let through: a
worker killed at any moment has booked exactly the lines whose answers are stored,
and the worker that takes the batch over answers only the others. (A call cut off by
the kill was sent upstream but never answered nor booked; its line is asked again.)

The worker yields to interactive traffic: while a line's model group has interactive
calls in flight or queued in its lanes, it starts a line only when fewer than
`jobs.yield_concurrency` are in flight (the lanes already serve interactive calls
first; this keeps the batch's own work off the event loop they share).

A line refused for a while (a rate limit, a full lane, a provider throttling or
down) is tried again after the time the refusal names, up to `jobs.max_line_attempts`
times; any other error ends the line in the error file with its status and body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from areion.agent.agent import Agent
from areion.config import TenantConfig
from areion.errors import AreionError, RequestError, UpstreamError
from areion.gateway.deployments import Deployment
from areion.jobs.metrics import job_metrics
from areion.jobs.native import NativeBatchClient, OpenAIBatchClient, Parse, batch_entry
from areion.jobs.native_anthropic import AnthropicBatchClient
from areion.jobs.queue import JobQueue
from areion.jobs.records import RUNS_ENDPOINT, BatchRecord, LineRecord
from areion.runtime import CallOptions, Runtime, new_request_id
from areion.streaming import ChatStream
from areion.types import LedgerEntry

__all__ = ["BatchWorker", "Parse", "native_client", "worker_name"]

log = logging.getLogger(__name__)

_RETRIED = frozenset({429, 503})
_QUIET_S = 0.05  # no interactive call for this long: the batch takes its full pace again
_PACE_S = 0.005  # how often a yielding worker looks again


def worker_name() -> str:
    """This worker's name in leases: host, process and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _spend_capped(tenants: Sequence[TenantConfig], tenant: str) -> bool:
    """Whether `tenant` has a budget or a per-request cap: limits a provider's batch (one
    submission, not admitted line by line) would not check."""
    return any(
        t.name == tenant
        and any(
            cap is not None
            for cap in (
                t.budget_usd_per_day,
                t.budget_usd_per_month,
                t.max_usd_per_request,
                t.max_tokens_per_request,
            )
        )
        for t in tenants
    )


def native_client(deployment: Deployment, parse: Parse) -> NativeBatchClient:
    """The batch API client of `deployment`'s provider."""
    if deployment.config.provider == "anthropic":
        return AnthropicBatchClient(deployment, parse)
    return OpenAIBatchClient(deployment)


def output_line(line: LineRecord, request_id: str, status: int, body: dict[str, Any]) -> str:
    """A line of a batch's output or error file, in OpenAI's shape."""
    return orjson.dumps(
        {
            "id": f"batch_req_{request_id}",
            "custom_id": line.custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        }
    ).decode()


def _error_body(error: AreionError) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    }


class BatchWorker:
    """Runs due batches of one queue through one runtime, one batch at a time."""

    def __init__(
        self,
        runtime: Runtime,
        queue: JobQueue,
        parse: Parse,
        *,
        owner: str | None = None,
        agents: Callable[[str], Agent | None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.queue = queue
        self.parse = parse
        self.agents = agents or (lambda name: None)
        """The agent a deferred run names, by name."""
        self.owner = owner or worker_name()
        jobs = runtime.config.jobs
        self.ttl = jobs.lease_ttl_s
        self.concurrency = jobs.concurrency
        self.yield_concurrency = jobs.yield_concurrency
        self.poll_s = jobs.poll_s
        self.max_attempts = jobs.max_line_attempts
        self.max_lines = jobs.max_lines
        self.native_poll_s = jobs.native_poll_s
        self.metrics = job_metrics(runtime.metrics.registry)
        self.sleep: Callable[[float], Any] = asyncio.sleep
        """How the worker waits (a test's virtual loop makes it instant)."""
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        """Begin taking batches, in the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def wake(self) -> None:
        """Look for a due batch now (one was just created)."""
        self._wake.set()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                ran = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the store is down: look again later
                log.warning("the batch worker failed; it goes on", exc_info=True)
                ran = False
            if not ran:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def run_once(self) -> bool:
        """Claim one due batch and run it until it ends or is taken over; False if no
        batch was due."""
        batch = await self.queue.claim(self.owner, ttl=self.ttl)
        if batch is None:
            return False
        await _Run(self, batch).run()
        return True


class _Run:
    """One worker's hold on one batch."""

    def __init__(self, worker: BatchWorker, batch: BatchRecord) -> None:
        self.worker = worker
        self.queue = worker.queue
        self.batch = batch
        self.fence = batch.fence
        self.lost = False
        self.cancelling = batch.status == "cancelling"
        self.expired = False
        self._in_flight = 0
        self._interactive_seen = -math.inf
        self._pacing = asyncio.Lock()
        # Lines ended while a commit is in flight go into the next one (group commit).
        self._ending: list[tuple[LineRecord, list[LedgerEntry], asyncio.Future[bool]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def _end(self, line: LineRecord, entries: list[LedgerEntry]) -> bool:
        """End a line with its rows, in the next group commit; whether it was ended."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._ending.append((line, entries, future))
        if self._flushing is None or self._flushing.done():
            self._flushing = loop.create_task(self._flush())
        ended = await future
        if ended:
            self.worker.metrics.lines.labels(line.status).inc()
        return ended

    async def _flush(self) -> None:
        while self._ending:
            taken, self._ending = self._ending, []
            try:
                ended = await self.queue.end_lines(
                    [(line, rows) for line, rows, _ in taken], self.fence
                )
            except Exception as error:  # the store is down: each line's coroutine hears it
                for *_, future in taken:
                    future.set_exception(error)
                continue
            for (*_, future), ok in zip(taken, ended, strict=True):
                future.set_result(ok)

    async def run(self) -> None:
        renewer = asyncio.get_running_loop().create_task(self._renew())
        try:
            deployment = None if self.cancelling else await self._native_deployment()
            if deployment is not None:
                await self._native(deployment)
            await self._lines()
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        if self.lost:
            log.info("batch %s was taken over by another worker", self.batch.batch_id)
            return
        status = "cancelled" if self.cancelling else "expired" if self.expired else "completed"
        await self.queue.finish(self.batch.batch_id, self.fence, status)

    async def _renew(self) -> None:
        while True:
            await self.worker.sleep(self.worker.ttl / 3)
            try:
                batch = await self.queue.renew(self.batch.batch_id, self.fence, ttl=self.worker.ttl)
            except Exception:  # the store is down: the lease may run out; ends are fenced
                log.warning("renewing the lease of batch %s failed", self.batch.batch_id)
                continue
            if batch is None:
                self.lost = True
                return
            self.cancelling = self.cancelling or batch.status == "cancelling"

    async def _pace(self, group: str) -> None:
        """Yield to interactive traffic: while `group` has interactive calls in flight or
        queued (or had within _QUIET_S), start a line only when fewer than
        `jobs.yield_concurrency` are in flight. One waiter looks; the others queue."""
        lanes = self.worker.runtime.lanes
        if lanes is None or group not in lanes:
            return
        async with self._pacing:
            while True:
                stats = lanes.stats(group)
                now = time.monotonic()
                if stats.in_flight > stats.batch_in_flight or stats.queued_interactive:
                    self._interactive_seen = now
                quiet = now - self._interactive_seen > _QUIET_S
                if quiet or self._in_flight < self.worker.yield_concurrency or self._stopped():
                    return
                await self.worker.sleep(_PACE_S)

    def _stopped(self) -> bool:
        if not self.expired and self.queue.clock() >= self.batch.expires_at:
            # Its completion window has passed: the lines not yet begun are not.
            self.expired = True
        return self.lost or self.cancelling or self.expired

    async def _lines(self) -> None:
        limit = asyncio.Semaphore(self.worker.concurrency)
        metrics = self.worker.metrics
        while not self._stopped():
            lines = await self.queue.pending_lines(
                self.batch.batch_id, limit=max(256, 4 * self.worker.concurrency)
            )
            if not lines:
                return

            metrics.queued.set(len(lines))

            async def one(line: LineRecord) -> None:
                async with limit:
                    model = line.body.get("model")
                    await self._pace(model if isinstance(model, str) else "")
                    if not self._stopped():
                        metrics.running.inc()
                        self._in_flight += 1
                        try:
                            await self._line(line)
                        finally:
                            self._in_flight -= 1
                            metrics.running.dec()
                            metrics.queued.dec()

            await asyncio.gather(*(one(line) for line in lines))

    async def _native_deployment(self) -> Deployment | None:
        """The deployment whose own batch API takes this batch: the one it was sent to
        already, else a `native_batch` deployment of the one group all its lines ask
        (a group the batch's key may use)."""
        runtime = self.worker.runtime
        sent = self.batch.native.get("deployment")
        if isinstance(sent, str):
            return runtime.gateway.deployments.get(sent)
        if _spend_capped(runtime.config.all_tenants, self.batch.tenant):
            # A provider's batch is one submission, not admitted line by line: a tenant
            # with a budget or a per-request cap has its lines run here, each checked
            # before it is sent, so no limit is passed.
            return None
        lines = await self.queue.pending_lines(self.batch.batch_id, limit=self.worker.max_lines)
        models = {line.body.get("model") for line in lines}
        if len(models) != 1:
            return None
        model = models.pop()
        group = runtime.gateway.groups.get(model) if isinstance(model, str) else None
        if group is None or group.name not in runtime.models_for(self.batch.key):
            return None
        return next((d for d in group.deployments if d.config.native_batch), None)

    async def _native(self, deployment: Deployment) -> None:
        """Send the lines to the deployment's batch API (or find them sent), poll until
        the provider's batch ends, and end each line it answered with its ledger row."""
        client = native_client(deployment, self.worker.parse)
        try:
            info = dict(self.batch.native)
            if "batch_id" not in info:
                lines = await self.queue.pending_lines(
                    self.batch.batch_id, limit=self.worker.max_lines
                )
                since = info.get("submitting")
                try:
                    remote_id = await client.find(
                        self.batch.batch_id, lines,
                        since=float(since) if isinstance(since, (int, float)) else None,
                    )  # fmt: skip
                    if remote_id is None:
                        # Said before it is sent: a successor knows a batch may exist.
                        info = {"deployment": deployment.id, "submitting": time.time()}
                        if not await self.queue.set_native(self.batch.batch_id, self.fence, info):
                            self.lost = True
                            return
                        remote_id = await client.submit(lines, job=self.batch.batch_id)
                except UpstreamError as error:
                    # Nothing was sent (or nothing can be found): run the lines here.
                    log.warning("batch %s stays here: %s", self.batch.batch_id, error.message)
                    return
                info = {"deployment": deployment.id, "batch_id": remote_id,
                        "submitted": time.time()}  # fmt: skip
                if not await self.queue.set_native(self.batch.batch_id, self.fence, info):
                    self.lost = True
                    return
            remote = await self._poll(client, str(info["batch_id"]))
            if remote is not None:
                await self._book_native(client, deployment, remote, float(info["submitted"]))
        finally:
            await client.aclose()

    async def _poll(self, client: NativeBatchClient, remote_id: str) -> dict[str, Any] | None:
        """The provider's batch once it has ended (cancelled there too when this one is);
        None if this worker lost the job meanwhile."""
        cancelled = False
        while not self.lost:
            try:
                if self.cancelling and not cancelled:
                    await client.cancel(remote_id)
                    cancelled = True
                remote = await client.poll(remote_id)
            except UpstreamError as error:  # a provider briefly down: poll again later
                log.warning("polling batch %s failed: %s", remote_id, error.message)
            else:
                if remote is not None:
                    return remote
            await self.worker.sleep(self.worker.native_poll_s)
        return None

    async def _book_native(
        self, client: NativeBatchClient, deployment: Deployment, remote: dict[str, Any],
        submitted: float,
    ) -> None:  # fmt: skip
        lines = await self.queue.pending_lines(self.batch.batch_id, limit=self.worker.max_lines)
        metrics = self.worker.metrics
        ending: list[Awaitable[bool]] = []
        booked: list[tuple[float, float] | None] = []  # (cost, list price); None if failed
        for result in await client.results(remote, lines):
            line, status, body = result.line, result.status, result.body
            entries: list[LedgerEntry] = []
            request_id = new_request_id()
            priced: tuple[float, float] | None = None
            if status == 200:
                entry, listed = batch_entry(
                    deployment, tenant=self.batch.tenant, body=body, submitted=submitted
                )
                entries.append(entry)
                request_id, priced = entry.request_id, (entry.cost_usd, listed)
            line.status = "done" if status == 200 else "failed"
            line.output = output_line(line, request_id, status, body)
            ending.append(self._end(line, entries))
            booked.append(priced)
        ended = await asyncio.gather(*ending)
        # Counted only for the lines this worker ended: a line ended by another worker
        # was counted there.
        for ok, priced in zip(ended, booked, strict=True):
            if ok and priced is not None:
                spent, listed = priced
                metrics.saved.labels(self.batch.tenant).inc(listed - spent)
                deployment.metrics.cost(self.batch.tenant, spent)
        if not all(ended):
            self.lost = self.lost or (await self._fenced())

    async def _run_line(self, line: LineRecord) -> None:
        """A deferred run: start it, or resume it if a worker that had started it died
        (its checkpoints say where it is; its lease keeps a second driver out)."""
        runtime, tenant = self.worker.runtime, self.batch.tenant
        name, run_id = str(line.body.get("agent")), line.custom_id
        request_id = new_request_id()
        agent = self.worker.agents(name)
        status, body = 200, {}
        for attempt in range(1, self.worker.max_attempts + 1):
            try:
                if agent is None:
                    raise RequestError(
                        f"no agent '{name}' here: configure it (agents:) or defer it from "
                        "this process",
                        param="agent",
                    )
                known = await runtime.agents.get(run_id, tenant=tenant)
                if known is None:
                    result = await runtime.run(
                        agent, str(line.body.get("input") or ""), run_id=run_id,
                        session=line.body.get("session"), tenant=tenant,
                    )  # fmt: skip
                elif known.run.status == "running":
                    result = await runtime.resume(run_id, agent=agent, tenant=tenant)
                else:  # it ended before the worker that ran it could say so
                    result = None
            except AreionError as error:
                if error.status in (*_RETRIED, 409) and attempt < self.worker.max_attempts:
                    # 409: a dead driver's lease on the run has not run out yet.
                    await self.worker.sleep(float(getattr(error, "retry_after", None) or attempt))
                    continue
                status, body = error.status, _error_body(error)
                break
            snapshot = await runtime.agents.get(run_id, tenant=tenant)
            run = snapshot.run if snapshot is not None else None
            body = {
                "run_id": run_id,
                "status": result.status if result else (run.status if run else "unknown"),
                "output": result.output if result else (run.output if run else None),
            }
            break
        line.status = "done" if status == 200 else "failed"
        line.output = output_line(line, request_id, status, body)
        await self._end(line, [])

    async def _line(self, line: LineRecord) -> None:
        if self.batch.endpoint == RUNS_ENDPOINT:
            await self._run_line(line)
            return
        batch = self.batch
        entries: list[LedgerEntry] = []
        for attempt in range(1, self.worker.max_attempts + 1):
            entries.clear()
            request_id = new_request_id()
            options = CallOptions(
                tenant=batch.tenant,
                key=batch.key,
                request_id=request_id,
                priority="batch",
                tier="batch",
                book=entries.append,
            )
            try:
                request = self.worker.parse(orjson.dumps(line.body))
                if request.stream:
                    raise RequestError("a batch line cannot stream: drop 'stream'", param="stream")
                answer = await self.worker.runtime.answer(request, options)
            except AreionError as error:
                wait = getattr(error, "retry_after", None)
                if error.status in _RETRIED and attempt < self.worker.max_attempts:
                    await self.worker.sleep(wait if wait is not None else float(attempt))
                    if self._stopped():
                        return
                    continue
                line.status = "failed"
                line.output = output_line(line, request_id, error.status, _error_body(error))
                break
            assert not isinstance(answer, ChatStream)  # streams were refused above
            line.status = "done"
            line.output = output_line(line, request_id, 200, answer.to_openai())
            break
        if not await self._end(line, entries):
            # Ended already (by a worker this one's lease was taken from) or fenced out.
            self.lost = self.lost or (await self._fenced())

    async def _fenced(self) -> bool:
        batch = await self.queue.get_batch(None, self.batch.batch_id)
        return batch is None or batch.fence != self.fence

"""The runtime's jobs: its queue, its worker, and the agents deferred runs name.

`Runtime.jobs` makes it on first use; the server starts its worker with the app,
`Runtime.defer()` when it first defers a run. A deferred run is a job of one line
(endpoint `/v1/runs`) whose worker starts the run by its agent's name, or resumes it
when a worker that had started it died (the run's own checkpoints and lease say
where it is), so a run is started once.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from areion.agent.agent import Agent
from areion.agent.runner import new_run_id
from areion.errors import ConfigError, RequestError
from areion.jobs.queue import JobQueue, open_queue
from areion.jobs.records import RUNS_ENDPOINT, BatchRecord, DeferredRun, LineRecord
from areion.jobs.windows import plan, window_of
from areion.jobs.worker import BatchWorker
from areion.types import ChatRequest

if TYPE_CHECKING:
    from areion.runtime import Runtime

__all__ = ["Jobs", "NoQueueError"]

_WINDOW_S = 24 * 3600.0


class NoQueueError(RequestError):
    """The runtime's store keeps no job queue."""

    status = 501
    code = "batches_unavailable"


def _parse(raw: bytes) -> ChatRequest:
    # The HTTP boundary's validation, as POST /v1/chat/completions does it (the one
    # `parse_line` the Batches API owns). Imported here: the server imports the jobs,
    # not the other way round.
    from areion.server.batches import parse_line

    return parse_line(raw)


class Jobs:
    """One runtime's job queue and worker."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._queue: JobQueue | None
        try:
            self._queue = open_queue(runtime.store)
        except ConfigError:
            self._queue = None
        self.agents: dict[str, Agent] = {}
        """The agents deferred runs may name (the server's configured agents, and those
        `Runtime.defer` was given)."""
        self.worker: BatchWorker | None = None
        if self._queue is not None and runtime.config.jobs.worker:
            self.worker = BatchWorker(runtime, self._queue, _parse, agents=self.agents.get)

    @property
    def queue(self) -> JobQueue:
        """The queue; a 501 when the store keeps none."""
        if self._queue is None:
            raise NoQueueError(
                "batches and deferred runs need a SQLite or PostgreSQL store (store: in the config)"
            )
        return self._queue

    def start(self) -> None:
        """Start the worker (if `jobs.worker`), in the running loop."""
        if self.worker is not None:
            self.worker.start()

    def wake(self) -> None:
        """Have the worker look for a due job now."""
        if self.worker is not None:
            self.worker.wake()

    async def defer(
        self,
        agent: Agent,
        input: str,
        *,
        tenant: str = "default",
        session: str | None = None,
        run_id: str | None = None,
        window: str | None = None,
        not_before: float | None = None,
        deadline: float | None = None,
    ) -> DeferredRun:
        """Put a run of `agent` on `input` off until its window (see `jobs.windows`)."""
        queue = self.queue
        self.agents[agent.name] = agent
        now = queue.clock()
        chosen = plan(
            now,
            window=window_of(self.runtime.config.jobs, window),
            not_before=not_before,
            deadline=deadline,
        )
        run_id = run_id or new_run_id()
        job_id = f"batch_{uuid.uuid4().hex}"
        body = {"agent": agent.name, "input": input, "session": session}
        await queue.create_batch(
            BatchRecord(
                batch_id=job_id, tenant=tenant, endpoint=RUNS_ENDPOINT, input_file_id="",
                total=1, created=now, expires_at=max(now, chosen.start) + _WINDOW_S,
                not_before=chosen.start, deadline=deadline, schedule=chosen.record(),
            ),
            [LineRecord(batch_id=job_id, index=0, custom_id=run_id, body=body)],
        )  # fmt: skip
        self.start()
        self.wake()
        return DeferredRun(
            run_id=run_id, job_id=job_id, not_before=chosen.start, schedule=chosen.record()
        )

    async def aclose(self) -> None:
        if self.worker is not None:
            await self.worker.aclose()

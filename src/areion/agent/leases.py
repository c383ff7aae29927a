"""Who drives a run: a lease in `Shared`, renewed while the driver lives.

One driver at a time per run, across every replica: a driver takes the run's lease
before its first step and renews it every third of its time to live. A replica that
dies stops renewing; once the lease has run out, another replica may take the run over
(`RunsApi` adopts stale runs). The lease's fencing token goes with every checkpoint,
and the store refuses a checkpoint whose token is lower than the run's, so a driver
that stalled past its lease and woke up again cannot write over its successor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from areion.errors import BackendUnavailableError, RequestError
from areion.store.shared import Shared

__all__ = ["RunBusyError", "RunLease"]

log = logging.getLogger(__name__)


class RunBusyError(RequestError):
    """Another driver (on this replica or another) holds the run: it is in progress."""

    status = 409
    code = "run_in_progress"


class RunLease:
    """A driver's lease on one run, renewed in the background until released."""

    def __init__(self, shared: Shared, key: str, *, ttl_s: float) -> None:
        self._shared = shared
        self.key = key
        self._owner = os.urandom(8).hex()
        self._ttl_s = ttl_s
        self.fence = 0
        """The fencing token the driver's checkpoints carry."""
        self._renewer: asyncio.Task[None] | None = None

    async def take(self) -> bool:
        """Take the lease (and start renewing it); False if another driver holds it."""
        fence = await self._shared.acquire_lease(self.key, owner=self._owner, ttl_s=self._ttl_s)
        if fence is None:
            return False
        self.fence = fence
        self._renewer = asyncio.get_running_loop().create_task(self._renew())
        return True

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_s / 3)
            try:
                if not await self._shared.renew_lease(
                    self.key, owner=self._owner, ttl_s=self._ttl_s
                ):
                    # Lost (this process stalled past it): another replica may drive the
                    # run now; its fence stops this driver's next checkpoint.
                    log.warning("lost the lease of %s", self.key)
                    return
            except BackendUnavailableError:
                log.warning("could not renew the lease of %s; retrying", self.key)

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        with contextlib.suppress(BackendUnavailableError):  # else it runs out by itself
            await self._shared.release_lease(self.key, owner=self._owner)

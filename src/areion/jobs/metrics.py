"""The job queue's metrics, in the runtime's registry: lines by outcome, lines in
flight, and the dollars a provider's batch price saved against its list price."""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["JobMetrics", "job_metrics"]


class JobMetrics:
    """Counters of batch lines, shared by the workers of one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lines = Counter(
            "areion_batch_lines",
            "Batch lines ended, by outcome (done, failed).",
            ("outcome",),
            registry=registry,
        )
        self.running = Gauge(
            "areion_batch_lines_running",
            "Batch lines this process has in flight (self-run) or at a provider (native).",
            registry=registry,
        )
        self.queued = Gauge(
            "areion_batch_lines_queued",
            "Pending lines of the batches this process holds, at their last count.",
            registry=registry,
        )
        self.saved = Counter(
            "areion_batch_saved_usd",
            "What lines sent to a provider's batch API saved against its list price.",
            ("tenant",),
            registry=registry,
        )


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, JobMetrics] = weakref.WeakKeyDictionary()


def job_metrics(registry: CollectorRegistry) -> JobMetrics:
    """The job metrics of `registry`, made once (several workers may share a runtime)."""
    found = _BY_REGISTRY.get(registry)
    if found is None:
        found = _BY_REGISTRY[registry] = JobMetrics(registry)
    return found

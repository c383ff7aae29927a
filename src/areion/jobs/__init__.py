"""Deferred and batch jobs: the queue in the store, the workers that run it, windows."""

from areion.jobs.queue import JobQueue, open_queue
from areion.jobs.records import BatchRecord, FileRecord, LineRecord

__all__ = ["BatchRecord", "FileRecord", "JobQueue", "LineRecord", "open_queue"]

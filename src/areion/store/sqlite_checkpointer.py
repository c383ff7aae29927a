"""Moves committed pages from the WAL into the database file, off the write path.

By default SQLite checkpoints inside the commit that fills the WAL past 1000
pages: that commit copies the pages and fsyncs twice, and every caller in its
batch waits for it. Here a thread of its own, on a connection of its own, runs
PASSIVE checkpoints (which never block the writer) a short while after writes,
so the copying and the fsyncs happen on another core, without the GIL.

A passive checkpoint cannot rewind the WAL while writes keep landing, so the
writer keeps SQLite's own checkpoint as a backstop at a larger size
(`WRITER_AUTOCHECKPOINT_PAGES`): by then this thread has copied nearly every
page, the backstop copies the few recent ones, and the next write starts the
WAL over. The file therefore stays bounded under sustained load.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading

__all__ = ["WRITER_AUTOCHECKPOINT_PAGES", "Checkpointer"]

WRITER_AUTOCHECKPOINT_PAGES = 4000

# Checkpoints at most this often while writes keep coming: each costs two fsyncs,
# so one per commit would double the I/O of a lightly loaded store. Under heavy
# writes (the WAL past _BUSY_FRAMES pages) the next one starts right away, to stay
# ahead of the writer's backstop.
_PAUSE_S = 0.05
_BUSY_FRAMES = 1000


class Checkpointer:
    """A daemon thread that checkpoints the WAL after the writer signals writes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._main, name="areion-sqlite-checkpoint", daemon=True
        )
        self._thread.start()

    def written(self) -> None:
        """Called by the writer after a commit."""
        if not self._wake.is_set():
            self._wake.set()

    def stop(self) -> None:
        """End the thread (blocking; called from the writer thread)."""
        self._stop.set()
        self._wake.set()
        self._thread.join()

    def _main(self) -> None:
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error:
            return  # the writer's own backstop checkpoints still bound the WAL
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            while True:
                self._wake.wait()
                if self._stop.is_set():
                    return
                self._wake.clear()
                # A failure (the writer's backstop holding the checkpoint lock, say)
                # is harmless: the pages are still in the WAL for the next attempt.
                frames = 0
                with contextlib.suppress(sqlite3.Error):
                    _, frames, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                # Let writes accumulate before the next one; `stop` cuts this short.
                if frames < _BUSY_FRAMES and self._stop.wait(_PAUSE_S):
                    return
        finally:
            db.close()

"""The SQLite store's reader thread, on a connection of its own.

In WAL mode readers never wait for the writer, so reads get their own thread:
a `cache_get` or `load_run` does not queue behind a batch of checkpoints being
committed (at 1000 concurrent runs, a batch takes tens of milliseconds).
A read sees every transaction committed before it starts, so a caller that
awaited its write reads it back.
"""

from __future__ import annotations

import sqlite3

from areion.store.sqlite_thread import DbThread

__all__ = ["Reader"]


class Reader(DbThread):
    """Runs reads on a query-only connection to a database the writer created."""

    name = "areion-sqlite-reader"

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA query_only=ON")
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("PRAGMA cache_size=-32768")
        except BaseException:
            db.close()
            raise
        return db

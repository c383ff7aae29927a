"""State backends behind the `Store` protocol."""

from areion.errors import ConfigError
from areion.store.base import Store
from areion.store.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store", "open_store"]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(url: str) -> Store:
    """The store a URL names."""
    if url.startswith("sqlite://"):
        return SQLiteStore.from_url(url)
    if url.startswith(POSTGRES_SCHEMES):
        try:
            # Imported here: asyncpg is an extra, and SQLite needs none of it.
            from areion.store.postgres import PostgresStore
        except ModuleNotFoundError as error:
            if error.name != "asyncpg":
                raise
            raise ConfigError(
                "store: a postgresql:// store needs asyncpg, which is not installed: "
                "pip install 'areion[postgres]'"
            ) from error
        return PostgresStore.from_url(url)
    raise ConfigError(
        f"store: unsupported URL '{url}'; use sqlite:///path.db or postgresql://user@host/db"
    )

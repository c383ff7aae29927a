"""State backends behind the `Store` protocol."""

from areion.errors import ConfigError
from areion.store.base import Store
from areion.store.sqlite import SQLiteStore

__all__ = ["SQLiteStore", "Store", "open_store"]


def open_store(url: str) -> Store:
    """The store a URL names."""
    if url.startswith("sqlite://"):
        return SQLiteStore.from_url(url)
    raise ConfigError(f"store: unsupported URL '{url}'; use sqlite:///path.db")

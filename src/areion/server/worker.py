"""One process of `areion serve --workers N`: its app and HTTP protocol, built from the
config file the parent names in `AREION_WORKER_CONFIG`.

uvicorn starts each worker in a fresh interpreter and imports the app by name, so
what a worker needs travels as that one environment variable. Every worker has its own
runtime; they agree through the shared backends (the config's PostgreSQL store and
Redis `shared`), which is why the parent refuses `--workers` above 1 without them.
"""

from __future__ import annotations

import functools
import gc
import os

from starlette.applications import Starlette

from areion.config import Config, load_config

__all__ = ["CONFIG_ENV", "app"]  # and `protocol`, made on first access

CONFIG_ENV = "AREION_WORKER_CONFIG"


@functools.cache
def _config() -> Config:
    return load_config(os.environ[CONFIG_ENV])


def app() -> Starlette:
    """The worker's app (uvicorn calls it once, as a factory)."""
    from areion.runtime import Runtime
    from areion.server import create_app

    application = create_app(Runtime(_config()))
    # As in `areion serve`: what is built lives as long as the process.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    return application


def __getattr__(name: str) -> object:
    # `protocol` is made on first access (in the worker), not at import (in the parent).
    if name == "protocol":
        from areion.server.guard import guarded_protocol

        return guarded_protocol(_config().server)
    raise AttributeError(name)

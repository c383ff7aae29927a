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

# and `protocol`, made on first access
__all__ = ["CONFIG_ENV", "LOG_FORMAT_ENV", "LOG_LEVEL_ENV", "app", "freeze_startup_heap"]

CONFIG_ENV = "AREION_WORKER_CONFIG"
LOG_FORMAT_ENV = "AREION_WORKER_LOG_FORMAT"
LOG_LEVEL_ENV = "AREION_WORKER_LOG_LEVEL"


@functools.cache
def _config() -> Config:
    config = load_config(os.environ[CONFIG_ENV])
    log_format = os.environ.get(LOG_FORMAT_ENV)
    if log_format in ("text", "json"):  # the parent's --log-format
        server = config.server.model_copy(update={"log_format": log_format})
        config = config.model_copy(update={"server": server})
    return config


def app() -> Starlette:
    """The worker's app (uvicorn calls it once, as a factory)."""
    from areion.runtime import Runtime
    from areion.server import create_app
    from areion.server.access import configure_access_log

    configure_access_log(os.environ.get(LOG_LEVEL_ENV, "info"))
    application = create_app(Runtime(_config()))
    freeze_startup_heap()
    return application


def freeze_startup_heap() -> None:
    """For a process that is a server's own, once its app is built: everything built so
    far lives as long as the process. Freezing it keeps collections to per-request
    garbage, and collecting young objects less often cuts pauses (p99 latency) at a
    small cost in memory."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def __getattr__(name: str) -> object:
    # `protocol` is made on first access (in the worker), not at import (in the parent).
    if name == "protocol":
        from areion.server.guard import guarded_protocol

        return guarded_protocol(_config().server)
    raise AttributeError(name)

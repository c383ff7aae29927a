"""The servers `server_latency.py` measures: Areion with one and two workers, and peers.

Each `start_*` runs one server on a free loopback port in front of the same upstream
and returns it as a `Server`, or raises `Skipped` with the reason (and the command
that would install what is missing) when it cannot run here. `floor` is no peer but
Areion's HTTP stack alone (`floor_server.py`), the part of a call's cost no change to
Areion's own work can cut. Peers:

- `litellm`: LiteLLM's proxy (`litellm[proxy]`, the `bench` extra), started as
  `python -m litellm.proxy.proxy_cli` with a master key and one model pointing at
  the upstream; its logging at ERROR (so no access log, as Areion's is off). It runs
  on its own interpreter: `--litellm-python`, else $AREION_BENCH_LITELLM_PYTHON, else
  the venv `make bench-peers` makes in bench/peers/litellm, else this one. Its own
  venv because LiteLLM pins openai < 3 and the dev extra's Agents SDK needs openai 3.
- `portkey`: Portkey's gateway (npm `@portkey-ai/gateway`, pinned by
  `bench/peers/package.json`), run with node through `bench/peers/loopback.mjs`
  so it listens on 127.0.0.1 only; called with `x-portkey-provider: openai` and
  `x-portkey-custom-host: <upstream>/v1` (the base URL: it appends `/chat/completions`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from _common import BENCH_DIR, LOOPBACK, ChildProcess, free_port

GROUP = "bench"
UPSTREAM_MODEL = "bench-model"
LITELLM_KEY = "sk-areion-bench"
PEERS_DIR = BENCH_DIR / "peers"
PORTKEY_ENV = "AREION_BENCH_PORTKEY"  # the gateway's package folder, or its start script
LITELLM_PYTHON_ENV = "AREION_BENCH_LITELLM_PYTHON"  # the interpreter with litellm[proxy]
PORTKEY_PACKAGE = Path("node_modules") / "@portkey-ai" / "gateway"
PORTKEY_SCRIPT = Path("build") / "start-server.js"


class Skipped(Exception):
    """A contender that cannot run here; the message says why and how to fix it."""


@dataclass(slots=True, kw_only=True)
class Server:
    """A running contender: where to send the chat request, and the process doing the work."""

    name: str
    """The contender's name in the tables."""
    process: ChildProcess
    """Its CPU is read over the process tree (workers included)."""
    url: str
    """The chat completions URL."""
    model: str
    """The `model` of the request body."""
    headers: tuple[tuple[str, str], ...] = ()
    """Headers of its own (keys, provider routing)."""
    note: str = ""
    """What it is, for the setup line."""


def areion_config(workdir: Path, upstream_url: str, *, store: str, shared: str | None) -> Path:
    """An Areion config with one `openai` model at the upstream, the access log off."""
    config: dict[str, object] = {
        "models": [
            {
                "name": GROUP,
                "provider": "openai",
                "model": UPSTREAM_MODEL,
                "base_url": upstream_url,
                "api_key": "dummy",
            }
        ],
        "store": store,
        "server": {"access_log": False},
    }
    if shared is not None:
        config["shared"] = shared
    name = "areion-bench.yaml" if shared is None else "areion-bench-workers.yaml"
    path = workdir / name
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def start_areion(name: str, workdir: Path, config: Path, *, workers: int = 1) -> Server:
    port = free_port()
    command = [
        sys.executable, "-m", "areion.cli", "serve", "--config", str(config),
        "--host", LOOPBACK, "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    if workers > 1:
        command += ["--workers", str(workers)]
    process = ChildProcess(f"areion serve --workers {workers}", command, workdir / f"{name}.log")
    process.wait_ready(f"http://{LOOPBACK}:{port}/healthz")
    return Server(
        name=name,
        process=process,
        url=f"http://{LOOPBACK}:{port}/v1/chat/completions",
        model=GROUP,
        note=f"`areion serve --workers {workers}`",
    )


@contextlib.asynccontextmanager
async def shared_backends(postgres: str, redis: str) -> AsyncIterator[tuple[str, str]]:
    """A PostgreSQL schema and a Redis prefix of this run's own, as `store` and `shared`
    URLs; both are dropped at the end. Raises `Skipped` when either cannot be reached."""
    try:
        import asyncpg

        from areion.store.redis import RedisShared
    except ImportError as error:
        raise Skipped(
            f"{error.name} is not installed (pip install -e '.[postgres,redis]')"
        ) from None
    schema = f"areion_bench_{uuid.uuid4().hex[:10]}"
    shared = f"{redis}?prefix=areion-bench:{uuid.uuid4().hex}:"
    try:
        connection = await asyncpg.connect(postgres, timeout=5)
        await connection.close()
    except (OSError, asyncpg.PostgresError) as error:
        raise Skipped(f"PostgreSQL at {postgres} not reachable ({error}); see --postgres") from None
    cleaner = RedisShared(shared)
    try:
        try:
            await cleaner.delete_all()  # a round trip: is Redis there?
        except Exception as error:  # redis-py's ConnectionError and kin
            raise Skipped(f"Redis at {redis} not reachable ({error}); see --redis") from None
        yield f"{postgres}?schema={schema}", shared
    finally:
        with contextlib.suppress(Exception):
            await cleaner.delete_all()
        await cleaner.aclose()
        with contextlib.suppress(Exception):
            connection = await asyncpg.connect(postgres, timeout=5)
            try:
                await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await connection.close()


def find_litellm_python(option: str | None) -> str:
    """The interpreter that runs LiteLLM's proxy (see the module's docstring)."""
    given = option or os.environ.get(LITELLM_PYTHON_ENV)
    if given:
        return given
    own = PEERS_DIR / "litellm" / "bin" / "python"
    return str(own) if own.is_file() else sys.executable


def start_litellm(workdir: Path, upstream_url: str, *, python: str, ready_timeout: float) -> Server:
    probe = subprocess.run(
        [python, "-c", "import litellm.proxy.proxy_cli, fastapi, backoff, apscheduler"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        raise Skipped(
            f"litellm's proxy is not installed for {python}: {_last_line(probe.stderr)}"
            " (make bench-peers)"
        )
    config = workdir / "litellm.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {
                        "model_name": GROUP,
                        "litellm_params": {
                            "model": f"openai/{UPSTREAM_MODEL}",
                            "api_base": upstream_url,
                            "api_key": "dummy",
                        },
                    }
                ],
                "general_settings": {"master_key": LITELLM_KEY},
            }
        ),
        encoding="utf-8",
    )
    port = free_port()
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # its bundled cost map: no download
        "LITELLM_LOG": "ERROR",  # its logs and uvicorn's access log off, as Areion's are
    }
    process = ChildProcess(
        "litellm proxy",
        [python, "-m", "litellm.proxy.proxy_cli", "--config", str(config),
         "--host", LOOPBACK, "--port", str(port)],
        workdir / "litellm.log",
        env=env,
    )  # fmt: skip
    try:
        process.wait_ready(f"http://{LOOPBACK}:{port}/health/liveliness", timeout=ready_timeout)
    except RuntimeError as error:
        raise Skipped(f"the proxy did not start: {_last_line(str(error))}") from None
    return Server(
        name="litellm",
        process=process,
        url=f"http://{LOOPBACK}:{port}/v1/chat/completions",
        model=GROUP,
        headers=(("authorization", f"Bearer {LITELLM_KEY}"),),
        note="LiteLLM proxy (1 worker, no database)",
    )


def find_portkey(option: str | None) -> Path:
    """The gateway's start script: `--portkey`, else $AREION_BENCH_PORTKEY, else the
    package `npm install --prefix bench/peers` put in bench/peers/node_modules."""
    given = option or os.environ.get(PORTKEY_ENV)
    base = Path(given) if given else PEERS_DIR / PORTKEY_PACKAGE
    script = base if base.is_file() else base / PORTKEY_SCRIPT
    if not script.is_file():
        how = f"{given} has no {PORTKEY_SCRIPT}" if given else "not installed"
        raise Skipped(f"{how} (npm install --prefix bench/peers)")
    return script


def floor_command(port: int, upstream_url: str) -> list[str]:
    """The command line of `bench/floor_server.py` on `port`, in front of `upstream_url`."""
    return [
        sys.executable, str(BENCH_DIR / "floor_server.py"),
        "--host", LOOPBACK, "--port", str(port), "--upstream", upstream_url,
    ]  # fmt: skip


def start_floor(workdir: Path, upstream_url: str) -> Server:
    """Areion's HTTP stack alone (`bench/floor_server.py`): what a call costs before any
    of Areion's own work."""
    port = free_port()
    process = ChildProcess("http floor", floor_command(port, upstream_url), workdir / "floor.log")
    process.wait_ready(f"http://{LOOPBACK}:{port}/healthz")
    return Server(
        name="floor",
        process=process,
        url=f"http://{LOOPBACK}:{port}/v1/chat/completions",
        model=UPSTREAM_MODEL,
        note="Areion's HTTP stack forwarding each call, nothing else (bench/floor_server.py)",
    )


def start_portkey(
    workdir: Path, upstream_url: str, *, script: Path, node: str, ready_timeout: float
) -> Server:
    node_path = shutil.which(node)
    if node_path is None:
        raise Skipped(f"no `{node}` on PATH (Node.js >= 18 runs the gateway; see --node)")
    version = subprocess.run(
        [node_path, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    port = free_port()
    process = ChildProcess(
        "portkey gateway",
        [node_path, str(PEERS_DIR / "loopback.mjs"), str(script), f"--port={port}", "--headless"],
        workdir / "portkey.log",
    )
    try:
        process.wait_ready(f"http://{LOOPBACK}:{port}/", timeout=ready_timeout)
    except RuntimeError as error:
        raise Skipped(f"the gateway did not start: {_last_line(str(error))}") from None
    return Server(
        name="portkey",
        process=process,
        url=f"http://{LOOPBACK}:{port}/v1/chat/completions",
        model=UPSTREAM_MODEL,
        headers=(
            ("x-portkey-provider", "openai"),
            ("x-portkey-custom-host", upstream_url),  # the base URL, /v1 included
        ),
        note=f"Portkey gateway {_package_version(script)} on node {version}",
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else text[:200]


def _package_version(script: Path) -> str:
    import json

    for folder in script.parents:
        manifest = folder / "package.json"
        if manifest.is_file():
            try:
                return str(json.loads(manifest.read_text(encoding="utf-8")).get("version", "?"))
            except (OSError, ValueError):
                return "?"
    return "?"

"""`areion serve` is safe by default: no auth, no address beyond loopback, unless told.

The command runs as a real process, as a user starts it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support import free_port, wait_for_port

AREION = [sys.executable, "-m", "areion.cli"]


def write_config(folder: Path, **extra: object) -> Path:
    path = folder / "areion.yaml"
    config = {
        "models": [{"name": "fast", "provider": "sim", "model": "sim-fast"}],
        "store": f"sqlite:///{folder / 'areion.db'}",
        **extra,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def serve(folder: Path, port: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*AREION, "serve", "--host", "0.0.0.0", "--port", str(port), *args],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "AREION_LOG_LEVEL": "warning"},
    )


def started(process: subprocess.Popen[str], port: int) -> str:
    """The output of a server that came up and answered /healthz, once stopped."""
    try:
        wait_for_port(port, timeout=60)
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert health.status_code == 200
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    return output


def test_an_open_server_beyond_loopback_refuses_to_start_until_auth_is_on(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)  # no auth section
    process = serve(tmp_path, free_port())
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "refusing to serve 0.0.0.0 without authentication" in output
    assert "--allow-open" in output and "auth.keys" in output
    # A key in the store turns auth on: the same command now serves.
    made = subprocess.run(
        [*AREION, "keys", "create", "--tenant", "acme", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    port = free_port()
    assert "refusing" not in started(serve(tmp_path, port), port)


@pytest.mark.parametrize("how", ["flag", "config"])
def test_it_runs_open_when_told_to(tmp_path: Path, how: str) -> None:
    write_config(tmp_path, server={"allow_open": how == "config"})
    port = free_port()
    args = ["--allow-open"] if how == "flag" else []
    assert "refusing" not in started(serve(tmp_path, port, *args), port)

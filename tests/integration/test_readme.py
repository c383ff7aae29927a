"""Every Python snippet of the README runs as pasted: as a program of its own, against
`areion serve` on the embedded default (sim models), in a folder with an `areion.yaml`.

A snippet that talks to the server names http://127.0.0.1:8080 as the README says;
the test serves on a free port and points the snippet there, nothing else changes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SNIPPETS = re.findall(r"^```python\n(.*?)^```", README, flags=re.S | re.M)

# The config a snippet finds in its folder: the embedded default's models, and the
# agent and route names the README's snippets ask for.
CONFIG = """\
models:
  - {name: fast, provider: sim, model: sim-fast, time_scale: 0.01}
  - {name: strong, provider: sim, model: sim-strong, time_scale: 0.01}
  - {name: mini, provider: local}
fallbacks: {fast: [strong]}
store: sqlite:///areion.db
"""


def test_the_readme_has_snippets() -> None:
    assert len(SNIPPETS) >= 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    folder = tmp_path_factory.mktemp("readme-server")
    (folder / "areion.yaml").write_text(CONFIG)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "areion.cli", "serve", "--port", str(port),
         "--log-level", "warning"],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, timeout=60)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize(
    "snippet", SNIPPETS, ids=[f"{i}:{s.splitlines()[0][:40]}" for i, s in enumerate(SNIPPETS)]
)
def test_a_snippet_runs_as_pasted(snippet: str, server: int, tmp_path: Path) -> None:
    (tmp_path / "areion.yaml").write_text(CONFIG)
    program = tmp_path / "snippet.py"
    program.write_text(snippet.replace(":8080", f":{server}"))
    done = subprocess.run(
        [sys.executable, str(program)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, f"{snippet}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"

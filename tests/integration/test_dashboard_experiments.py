"""The dashboard's experiments page in a real headless Chromium: after a scripted
experiment (an agent's two prompts, outcomes posted by the application), an admin sees
each variant's figures and the verdict that GET /v1/experiments gives."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from areion import Runtime
from areion.server import create_app
from tests.agent_upstream import AgentUpstream
from tests.browser import browser, screenshot
from tests.integration.test_experiments_api import ACME, config, policy
from tests.support import serve_app


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    upstream = AgentUpstream(policy)
    with (
        serve_app(upstream.app) as url,
        serve_app(create_app(Runtime(config(url, tmp_path)))) as base,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        for i in range(24):
            answer = client.post(
                "/v1/runs",
                headers=ACME,
                json={"agent": "support", "input": "where?", "session": f"s{i}", "wait": True},
            )
            assert answer.status_code == 200, answer.text
            posted = client.post(
                "/v1/outcomes",
                headers=ACME,
                json={"run_id": answer.json()["id"], "success": i % 4 != 0},
            )
            assert posted.status_code == 201, posted.text
        yield base


def test_an_admin_sees_the_variants_and_the_verdict(served: str) -> None:
    report = httpx.get(
        served + "/v1/experiments", headers={"authorization": "Bearer admin-key"}
    ).json()
    [experiment] = report["data"]
    with browser() as chromium:
        context = chromium.new_context(viewport={"width": 1366, "height": 768})
        page = context.new_page()
        page.goto(served + "/dashboard#/experiments")
        page.get_by_label("API key").fill("admin-key")
        page.get_by_label("API key").press("Enter")
        page.wait_for_selector(".experiment")
        deadline = time.monotonic() + 30
        while page.evaluate("!window.areionView || window.areionView.page !== 'experiments'"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert page.evaluate("window.areionView.calls") == 1
        heading = page.locator(".experiment h2").inner_text()
        assert heading == f"{experiment['name']} {experiment['verdict']}"
        rows = page.locator(".experiment tbody tr").all_inner_texts()
        shown = {row.split("\t")[0]: row.split("\t") for row in rows}
        assert set(shown) == {v["name"] for v in experiment["variants"]} == {"control", "v2"}
        for variant in experiment["variants"]:
            cells = shown[variant["name"]]
            assert cells[1] == str(variant["units"]) and cells[2] == str(variant["tasks"])
            rate = variant["success_rate"]
            assert cells[3].startswith(f"{100 * rate['estimate']:.1f}%")
        screenshot(page, "admin-experiments-running")
        context.close()

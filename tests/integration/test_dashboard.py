"""The dashboard in a real headless Chromium against the real server: a tenant signs in
with its key, the overview shows what the spend API says after a scripted mix of
calls, another tenant's names never appear, a paused run is approved from its page and
finishes. Each page's screenshot is left in `test-artifacts/dashboard/`."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from areion import Runtime
from areion.config import load_config
from areion.server import create_app
from tests import agents_fixture
from tests.agent_upstream import AgentUpstream, call, model_turns, say, tool_results
from tests.browser import browser, screenshot
from tests.support import serve_app

ADMIN_KEY = "adm-secret-0123456789"
ACME_KEY = "acme-key-0123456789"
GLOBEX_KEY = "globex-key-0123456789"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
ACME = {"authorization": f"Bearer {ACME_KEY}"}
GLOBEX = {"authorization": f"Bearer {GLOBEX_KEY}"}
PRICE = {"input": 1.0, "output": 2.0}
PAGES = ("overview", "spend", "tasks", "runs", "limits", "experiments")


def policy(body: dict[str, Any]) -> dict[str, Any]:
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    turns = model_turns(body)
    if "refund" in user and body.get("tools"):
        if turns == 0:
            return call(("lookup", {"order_id": "o-7"}))
        if turns == 1:
            return call(("refund", {"order_id": "o-7", "amount": 30}))
        return say("done: " + tool_results(body)[-1])
    if "research" in user and body.get("tools"):
        if turns == 0:
            return call(("search", {"query": user}))
        return say("found: " + tool_results(body)[-1])
    return say(f"echo: {user}")


def write_config(tmp_path: Path, url: str) -> Path:
    model = {"provider": "openai", "model": "m", "base_url": url + "/v1", "price": PRICE}
    config = {
        "models": [{"name": "fast", **model}, {"name": "strong", **model}],
        "routes": [{"name": "auto", "candidates": ["fast", "strong"], "solver": False}],
        "store": f"sqlite:///{tmp_path / 'areion.db'}",
        "tenants": [
            {"name": "acme", "budget_usd_per_day": 5.0, "budget_usd_per_month": 100.0},
            {"name": "globex", "budget_usd_per_day": 7.0, "rpm": 600},
        ],
        "auth": {
            "admin_keys": [ADMIN_KEY],
            "keys": [
                {"key": ACME_KEY, "tenant": "acme", "name": "acme-web"},
                {"key": GLOBEX_KEY, "tenant": "globex", "name": "globex-etl"},
            ],
        },
        "agents": [
            {"name": "researcher", "path": "tests.agents_fixture:make_researcher"},
            {"name": "support", "path": "tests.agents_fixture:support"},
        ],
    }
    path = tmp_path / "areion.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Served:
    base: str
    http: httpx.Client


def _chat(http: httpx.Client, key: dict[str, str], **extra: Any) -> None:
    headers = {**key, **extra.pop("headers", {})}
    body = {"messages": [{"role": "user", "content": extra.pop("text", "hi")}], **extra}
    answer = http.post("/v1/chat/completions", json=body, headers=headers)
    assert answer.status_code == 200, answer.text


def _run(http: httpx.Client, key: dict[str, str], agent: str, text: str, **extra: Any) -> Any:
    body = {"agent": agent, "input": text, "wait": True, **extra}
    answer = http.post("/v1/runs", json=body, headers=key)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _spend(http: httpx.Client, key: dict[str, str], **params: str) -> dict[str, Any]:
    answer = http.get("/v1/spend", params=params, headers=key)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    upstream = AgentUpstream(policy)
    with serve_app(upstream.app) as url:
        config = write_config(tmp_path, url)
        with (
            serve_app(create_app(Runtime(load_config(config)))) as base,
            httpx.Client(base_url=base, timeout=30) as http,
        ):
            # The scripted mix: both tenants, two models and a route, an exact-cache hit,
            # end users, an agent's runs (with a paid tool), and a run left paused.
            for i in range(3):
                _chat(http, ACME, model="fast", text=f"q{i}", headers={"x-areion-user": "alice"})
            for i in range(2):
                _chat(http, ACME, model="auto", text=f"r{i}")
            for _ in range(2):
                _chat(http, ACME, model="fast", text="same", temperature=0)
            for i in range(4):
                _chat(http, GLOBEX, model="strong", text=f"g{i}", user="globex-user")
            _run(http, ACME, "researcher", "research dashboards")
            _run(http, GLOBEX, "researcher", "research globex", run_id="globex-run-1")
            paused = _run(http, ACME, "support", "please refund o-7", run_id="acme-refund")
            assert paused["status"] == "paused"
            expected = 3 + 2 + 2 + 4 + 3 + 3 + 2  # chats, two research runs, the paused run
            deadline = time.monotonic() + 60  # a generous cap: the machine may be busy
            while _spend(http, ADMIN)["total"]["calls"] < expected:
                assert time.monotonic() < deadline, "the ledger did not catch up"
                time.sleep(0.02)
            yield Served(base=base, http=http)


def usd(x: float) -> str:
    """The page's rendering of a dollar amount (app.js `usd`)."""
    digits = 2 if abs(x) >= 100 else 4 if abs(x) >= 1 else 6
    return f"${x:.{digits}f}"


def _signed_in(context: Any, base: str, key: str, *, clock: bool = False) -> Any:
    page = context.new_page()
    if clock:
        page.clock.install()  # the page's timers run only when the test moves its clock
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    page.goto(base + "/dashboard")
    page.get_by_label("API key").fill(key)
    page.get_by_label("API key").press("Enter")  # the keyboard signs in
    page.wait_for_selector("#spend-range")
    return page


def _until(page: Any, condition: str, timeout: float = 30.0) -> None:
    """Wait until `condition` (JavaScript) holds in the page. `page.evaluate` is not
    subject to the page's CSP (which forbids eval, so no `wait_for_function`)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(condition):
        assert time.monotonic() < deadline, f"the page never got to: {condition}"
        time.sleep(0.02)


def _view(page: Any, hash_: str) -> dict[str, Any]:
    """Go to a page and wait until it has rendered; its view record (page, calls)."""
    before = page.evaluate("window.areionView ? window.areionView.seq : 0")
    page.evaluate(f"location.hash = {hash_!r}")
    _until(page, f"window.areionView && window.areionView.seq > {before}")
    view: dict[str, Any] = page.evaluate("window.areionView")
    return view


def test_overview_shows_the_spend_api_figures_and_only_the_tenants_own(served: Served) -> None:
    acme_total = _spend(served.http, ACME, since=str(time.time() - 86400))["total"]
    acme_month = _spend(served.http, ACME)["total"]
    with browser() as chromium:
        context = chromium.new_context(viewport={"width": 1366, "height": 768})
        page = _signed_in(context, served.base, ACME_KEY)
        assert page.locator("#who").inner_text() == "tenant acme"
        assert page.locator("#spend-range").inner_text() == usd(acme_total["cost_usd"])
        assert page.locator("#calls").inner_text() == str(acme_total["calls"])
        assert acme_total["calls"] == 3 + 2 + 2 + 3 + 2
        assert page.locator("#cache-exact").inner_text() == f"{100 / acme_total['calls']:.1f}%"
        budgets = page.get_by_role("table").filter(has_text="against budgets")
        row = budgets.locator("tbody tr").all_inner_texts()
        assert row == [
            "\t".join(
                [
                    "acme",
                    usd(acme_total["cost_usd"]),
                    usd(5.0),
                    f"{100 * acme_total['cost_usd'] / 5.0:.1f}%",
                    usd(acme_month["cost_usd"]),
                    usd(100.0),
                    f"{100 * acme_month['cost_usd'] / 100.0:.1f}%",
                ]
            )
        ]
        routes = page.get_by_role("table").filter(has_text="Route decisions")
        assert routes.locator("tbody tr").all_inner_texts() == ["auto\tstrong\t2"]
        screenshot(page, "overview")
        # The range picker, by keyboard: the figures are those of the range chosen.
        before = page.evaluate("window.areionView.seq")
        page.locator("#range").focus()
        page.keyboard.press("End")  # the last option: 30 days
        _until(page, f"window.areionView.seq > {before}")
        assert page.locator("#range").input_value() == "30d"
        assert page.evaluate("location.hash") == "#/overview?range=30d"
        assert page.locator("#spend-range").inner_text() == usd(acme_month["cost_usd"])
        assert page.locator("#autorefresh").is_checked()
        # Every page: at most 3 API calls, and not a trace of the other tenant.
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url) if "/v1/" in r.url else None)
        for name in PAGES:
            requests.clear()
            view = _view(page, f"#/{name}")
            assert view["page"] == name and 1 <= view["calls"] <= 3, view
            assert len(requests) == view["calls"], requests
            text = page.locator("body").inner_text()
            assert "globex" not in text.lower(), f"{name} shows another tenant's name"
            if name == "experiments":  # they span every tenant: admins only
                assert "an admin key sees them" in page.locator("#no-experiments").inner_text()
            assert not page.locator("#page [role=alert]").count(), page.locator(
                "#page [role=alert]"
            ).inner_text()
            screenshot(page, f"tenant-{name}")
        spend = _view(page, "#/spend")
        assert spend["calls"] == 1
        assert page.locator("#spend-total").inner_text() == usd(acme_month["cost_usd"])
        by_model = _spend(served.http, ACME, group_by="model")["data"]
        rows = page.get_by_role("table").filter(has_text="Spend by model").locator("tbody tr")
        shown = {r.split("\t")[0]: r.split("\t")[4] for r in rows.all_inner_texts()}
        assert shown == {g["model"]: usd(g["cost_usd"]) for g in by_model}
        with page.expect_download() as download:
            page.locator("#csv").click()
        lines = Path(download.value.path()).read_text().splitlines()
        assert lines[0].startswith("model,calls,")
        assert len(lines) == 1 + len(by_model)
        _view(page, "#/limits")
        windows = page.get_by_role("table").filter(has_text="Budget windows")
        [window] = windows.locator("tbody tr").all_inner_texts()
        assert window.split("\t")[:3] == ["acme", usd(acme_total["cost_usd"]), usd(5.0)]
        assert "an admin key sees them" in page.locator("body").inner_text()  # no breakers
        # Runs, a page at a time: the cursor walks the tenant's two runs, newest first.
        _view(page, "#/runs?limit=1")
        first = page.locator("tbody tr").all_inner_texts()
        assert len(first) == 1 and first[0].startswith("acme-refund\tpaused")
        before = page.evaluate("window.areionView.seq")
        page.locator("#next").focus()
        page.keyboard.press("Enter")
        _until(page, f"window.areionView.seq > {before}")
        second = page.locator("tbody tr").all_inner_texts()
        assert len(second) == 1 and "\tfinished\tresearcher\t" in second[0]
        assert page.locator("#next").count() == 0 and page.locator("#first").count() == 1
        # By user: read from the ledger itself, so over a day at most (longer ranges are
        # not offered); the users are the tenant's own.
        _view(page, "#/spend?range=30d")
        before = page.evaluate("window.areionView.seq")
        page.locator("#by").select_option("user")
        _until(page, f"window.areionView.seq > {before}")
        assert page.locator("#range").input_value() == "24h"
        assert page.locator("#range option[value='30d']").is_disabled()
        rows = page.get_by_role("table").filter(has_text="Spend by user").locator("tbody tr")
        users = {r.split("\t")[0]: r.split("\t")[1] for r in rows.all_inner_texts()}
        assert users["alice"] == "3" and "globex-user" not in users
        # The other tenant's run, by its id: not found, and nothing of it shown.
        _view(page, "#/runs/globex-run-1")
        assert "no run" in page.locator("#page [role=alert]").inner_text()
        assert not [e for e in page.errors if not e.startswith("Failed to load resource")], (
            page.errors
        )
        context.close()


def test_an_admin_sees_every_tenant(served: Served) -> None:
    everyone = _spend(served.http, ADMIN, since=str(time.time() - 86400))["total"]
    with browser() as chromium:
        context = chromium.new_context(viewport={"width": 1366, "height": 768})
        page = _signed_in(context, served.base, ADMIN_KEY)
        assert page.locator("#who").inner_text() == "all tenants"
        assert page.locator("#spend-range").inner_text() == usd(everyone["cost_usd"])
        assert "TTFT" in page.locator("body").inner_text()  # process figures: admins only
        screenshot(page, "admin-overview")
        for name in PAGES:
            view = _view(page, f"#/{name}")
            assert 1 <= view["calls"] <= 3, view
            screenshot(page, f"admin-{name}")
        _view(page, "#/limits")
        breakers = page.get_by_role("table").filter(has_text="Circuit breakers")
        assert breakers.locator("tbody tr").count() == 2
        _view(page, "#/experiments")
        assert page.locator("#no-experiments").inner_text() == "no experiments"  # none set up
        _view(page, "#/runs")
        assert "globex-run-1" in page.locator("body").inner_text()
        assert not [e for e in page.errors if not e.startswith("Failed to load resource")], (
            page.errors
        )
        context.close()


def test_the_overview_refreshes_itself(served: Served) -> None:
    with browser() as chromium:
        context = chromium.new_context(viewport={"width": 1366, "height": 768})
        page = _signed_in(context, served.base, ACME_KEY, clock=True)
        calls = int(page.locator("#calls").inner_text())
        _chat(served.http, ACME, model="fast", text="one more")
        deadline = time.monotonic() + 60  # a generous cap: the machine may be busy
        while _spend(served.http, ACME)["total"]["calls"] < calls + 1:
            assert time.monotonic() < deadline, "the ledger did not catch up"
            time.sleep(0.02)
        before = page.evaluate("window.areionView.seq")
        page.clock.run_for(29_000)  # not yet: every 30 s
        assert page.evaluate("window.areionView.seq") == before
        page.clock.run_for(2_000)
        _until(page, f"window.areionView.seq > {before}")
        assert page.locator("#calls").inner_text() == str(calls + 1)
        # Turned off (by keyboard), it stays as it is.
        page.locator("#autorefresh").focus()
        page.keyboard.press("Space")
        assert not page.locator("#autorefresh").is_checked()
        before = page.evaluate("window.areionView.seq")
        page.clock.run_for(120_000)
        assert page.evaluate("window.areionView.seq") == before
        context.close()


def test_an_admin_rejects_another_tenants_call(served: Served) -> None:
    paused = _run(served.http, GLOBEX, "support", "please refund o-7", run_id="globex-refund")
    assert paused["status"] == "paused"
    agents_fixture.REFUNDS.clear()
    with browser() as chromium:
        context = chromium.new_context(viewport={"width": 1366, "height": 900})
        page = _signed_in(context, served.base, ADMIN_KEY)
        _view(page, "#/runs?status=paused")
        rows = page.locator("tbody tr").all_inner_texts()
        assert {r.split("\t")[1] for r in rows} == {"acme", "globex"}  # the tenant column
        page.get_by_role("link", name="globex-refund").click()
        page.wait_for_selector("text=Pending approvals")
        assert page.evaluate("location.hash") == "#/runs/globex-refund?tenant=globex"
        page.get_by_role("button", name="Reject").click()
        _until(
            page,
            "document.querySelector('#run-status') && "
            "document.querySelector('#run-status').innerText === 'finished'",
        )
        tools = page.get_by_role("table").filter(has_text="Tool calls").inner_text()
        assert "rejected in the dashboard" in tools
        assert agents_fixture.REFUNDS == []  # the refund never ran
        run = served.http.get("/v1/runs/globex-refund", headers=GLOBEX).json()
        assert run["status"] == "finished"
        # The acme run is still paused: the decision was globex's run's alone.
        still = served.http.get("/v1/runs/acme-refund", headers=ACME).json()
        assert still["status"] == "paused"
        screenshot(page, "admin-run-rejected")
        assert not [e for e in page.errors if not e.startswith("Failed to load resource")], (
            page.errors
        )
        context.close()


def test_approve_a_paused_run_from_its_page(served: Served) -> None:
    agents_fixture.REFUNDS.clear()
    with browser() as chromium:
        context = chromium.new_context(viewport={"width": 1366, "height": 900})
        page = _signed_in(context, served.base, ACME_KEY)
        _view(page, "#/runs?status=paused")
        [row] = page.locator("tbody tr").all_inner_texts()
        assert row.split("\t")[:3] == ["acme-refund", "paused", "support"]
        page.get_by_role("link", name="acme-refund").click()
        page.wait_for_selector("text=Pending approvals")
        assert page.locator("#run-status").inner_text() == "paused"
        assert "refund" in page.locator(".approval code").inner_text()
        screenshot(page, "run-paused")
        page.get_by_role("button", name="Approve").click()
        _until(
            page,
            "document.querySelector('#run-status') && "
            "document.querySelector('#run-status').innerText === 'finished'",
        )
        assert page.locator("#run-output").inner_text() == "done: refunded 30.0 on o-7"
        assert ["acme:acme-refund:" + agents_fixture_call_id(served)] == agents_fixture.REFUNDS
        tools = page.get_by_role("table").filter(has_text="Tool calls").inner_text()
        assert "refunded 30.0 on o-7" in tools and "order o-7: 2 items, 30 EUR" in tools
        costs = page.get_by_role("table").filter(has_text="Model calls and their cost")
        assert costs.locator("tbody tr").count() == 3  # lookup, refund, answer
        run = served.http.get("/v1/runs/acme-refund", headers=ACME).json()
        assert run["status"] == "finished"
        assert page.locator("#run-cost").inner_text() == usd(run["cost_usd"])
        screenshot(page, "run-finished")
        assert not [e for e in page.errors if not e.startswith("Failed to load resource")], (
            page.errors
        )
        context.close()


def agents_fixture_call_id(served: Served) -> str:
    """The call id of the approved refund, from the run's own record."""
    page = served.http.get("/v1/dashboard/runs/acme-refund", headers=ACME).json()
    [refund] = [c for c in page["tool_calls"] if c["name"] == "refund"]
    return str(refund["call_id"])


def test_bad_parameters_are_400s_naming_them(served: Served) -> None:
    http = served.http
    for path, param in (
        ("/v1/dashboard/overview?range=2h", "range"),
        ("/v1/dashboard/spend?by=password", "by"),
        ("/v1/dashboard/spend?by=user&range=7d", "range"),  # the ledger itself: a day at most
        ("/v1/dashboard/runs?status=sleeping", "status"),
        ("/v1/dashboard/runs?cursor=%%%", "cursor"),
        ("/v1/dashboard/runs?limit=0", "limit"),
        ("/v1/dashboard/overview?tenant=globex", "tenant"),
    ):
        answer = http.get(path, headers=ACME)
        assert 400 <= answer.status_code < 500, (path, answer.text)
        assert answer.json()["error"]["param"] == param
    assert http.get("/v1/dashboard/overview").status_code == 401
    assert http.get("/v1/dashboard/runs/x", headers=ADMIN).json()["error"]["param"] == "tenant"
    assert http.get("/dashboard/secrets.txt").status_code == 400
    page = http.get("/dashboard")
    assert (
        page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    )
    assert re.search(r"<script src=\"/dashboard/app.js\"", page.text)

"""The Files and Batches APIs with the openai SDK, against a real server whose models
are `areion sim` (a process): every line answered once, and booked once."""

from __future__ import annotations

import asyncio
import contextlib
import io
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from areion import Runtime
from areion.config import parse_config
from areion.jobs.native_anthropic import AnthropicBatchClient
from areion.jobs.records import LineRecord
from areion.server import create_app
from areion.server.batches import parse_line
from tests.integration.test_end_to_end import start, stop, wait_ready
from tests.pg import require_postgres
from tests.support import free_port, serve_app

KEYS = {"acme-key": "acme", "globex-key": "globex"}


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    port = free_port()
    process = start(["sim", "--port", str(port), "--time-scale", "0.01"])
    try:
        wait_ready(process, port)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def config(
    sim: str, db: Path, *, native: bool = False, provider: str = "openai", **jobs: object
) -> dict[str, object]:
    return {
        "models": [
            {
                "name": "fast",
                "provider": provider,
                "model": "sim-fast",
                "base_url": sim + "/v1",
                "price": {"input": 1.0, "output": 2.0, "batch": 0.5},
                "native_batch": native,
            }
        ],
        "auth": {
            "keys": [{"key": k, "tenant": t} for k, t in KEYS.items()],
            "metrics_keys": ["scrape-key"],
        },
        "store": f"sqlite:///{db}",
        "jobs": {"poll_s": 0.05, "native_poll_s": 0.05, **jobs},
    }


@pytest.fixture
def served(sim: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    db = tmp_path / "areion.db"
    with serve_app(create_app(Runtime(parse_config(config(sim, db))))) as url:
        yield url, db


def client(url: str, key: str = "acme-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def jsonl(count: int, *, model: str = "fast") -> bytes:
    return b"".join(
        orjson.dumps(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "messages": [{"role": "user", "content": f"question number {i}"}],
                    "max_tokens": 8,
                },
            }
        )
        + b"\n"
        for i in range(count)
    )


def wait_done(sdk: openai.OpenAI, batch_id: str, within: float = 120.0) -> openai.types.Batch:
    """Poll as a client does, until the batch has ended (a generous bound, not a timing
    claim)."""
    deadline = time.monotonic() + within
    while True:
        batch = sdk.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch.request_counts}"
        time.sleep(0.1)


def ledger(db: Path) -> list[tuple[str, str, float]]:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT request_id, tenant, cost_usd FROM ledger").fetchall()


def sent_to_sim(sim: str, batch_id: str) -> int:
    """How many batches Areion created at the sim for its batch `batch_id`."""
    listed = httpx.get(sim + "/v1/batches").json()["data"]
    return sum(1 for b in listed if (b["metadata"] or {}).get("areion_batch") == batch_id)


def message_batches_sent(sim: str, batch_id: str) -> list[dict[str, Any]]:
    """The Message Batches Areion created at the sim for its batch `batch_id` (their
    requests' custom_ids carry its id), with their results once ended."""
    tag = batch_id.removeprefix("batch_") + "-"
    found = []
    for b in httpx.get(sim + "/v1/messages/batches", params={"limit": 1000}).json()["data"]:
        if b["processing_status"] != "ended":
            continue
        results = httpx.get(f"{sim}/v1/messages/batches/{b['id']}/results").text.splitlines()
        parsed = [orjson.loads(r) for r in results]
        if any(r["custom_id"].startswith(tag) for r in parsed):
            found.append({**b, "results": parsed})
    return found


@pytest.mark.parametrize(
    ("native", "provider"),
    [(False, "openai"), (True, "openai"), (False, "anthropic"), (True, "anthropic")],
    ids=["self-run", "native", "anthropic-self-run", "anthropic-native"],
)
def test_a_thousand_lines_through_the_openai_sdk(
    sim: str, tmp_path: Path, native: bool, provider: str
) -> None:
    db = tmp_path / "areion.db"
    settings = config(sim, db, native=native, provider=provider)
    with serve_app(create_app(Runtime(parse_config(settings)))) as url:
        thousand_lines(url, db, sim, native=native, provider=provider)


def thousand_lines(url: str, db: Path, sim: str, *, native: bool, provider: str = "openai") -> None:
    sdk = client(url)
    upload = sdk.files.create(file=("questions.jsonl", io.BytesIO(jsonl(1000))), purpose="batch")
    assert upload.purpose == "batch" and upload.filename == "questions.jsonl"
    assert sdk.files.retrieve(upload.id).bytes == len(jsonl(1000))
    batch = sdk.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
    )
    assert batch.status == "validating" and batch.request_counts.total == 1000

    done = wait_done(sdk, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.completed == 1000 and done.request_counts.failed == 0
    assert done.metadata == {"job": "nightly"} and done.error_file_id is None
    assert done.output_file_id is not None
    lines = [orjson.loads(x) for x in sdk.files.content(done.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == sorted(f"line-{i}" for i in range(1000))
    assert all(line["response"]["status_code"] == 200 for line in lines)
    assert all(line["response"]["body"]["choices"][0]["message"]["content"] for line in lines)
    output = sdk.files.retrieve(done.output_file_id)
    assert output.purpose == "batch_output" and output.bytes == len(
        sdk.files.content(done.output_file_id).content
    )

    # One ledger row per line, of the line's call, in the batch's tenant, at the price
    # of the path it took: the list price run here, half of it at the provider's batch.
    with sqlite3.connect(db) as connection:
        rows = connection.execute(
            "SELECT request_id, tenant, prompt_tokens, completion_tokens, cost_usd, deployment "
            "FROM ledger"
        ).fetchall()
    assert len(rows) == 1000
    assert {r[0] for r in rows} == {line["response"]["request_id"] for line in lines}
    assert {r[1] for r in rows} == {"acme"} and {r[5] for r in rows} == {"fast/sim-fast"}
    share = 0.5 if native else 1.0
    for _, _, prompt, completion, cost, _ in rows:
        assert prompt > 0 and cost == pytest.approx((prompt + 2 * completion) / 1e6 * share)
    anthropic = provider == "anthropic"
    assert sent_to_sim(sim, batch.id) == (1 if native and not anthropic else 0)
    sent = message_batches_sent(sim, batch.id)
    assert len(sent) == (1 if native and anthropic else 0)
    if sent:  # each line sent once, as Messages params, and answered there
        (remote,) = sent
        assert remote["request_counts"]["succeeded"] == 1000 == len(remote["results"])
        assert {r["result"]["message"]["usage"]["input_tokens"] for r in remote["results"]} == {
            prompt for _, _, prompt, *_ in rows
        }

    scraped = httpx.get(url + "/metrics", headers={"authorization": "Bearer scrape-key"}).text
    assert 'areion_batch_lines_total{outcome="done"} 1000.0' in scraped
    saved = sum(cost for *_, cost, _ in rows)  # half the list price: as much again saved
    if native:
        (line,) = [x for x in scraped.splitlines() if x.startswith("areion_batch_saved_usd_total")]
        assert 'tenant="acme"' in line and float(line.split()[-1]) == pytest.approx(saved)
    else:
        assert "areion_batch_saved_usd_total{" not in scraped
    assert [b.id for b in sdk.batches.list()] == [batch.id]


def test_a_line_that_fails_goes_to_the_error_file(served: tuple[str, Path]) -> None:
    url, _ = served
    sdk = client(url)
    content = jsonl(2) + jsonl(1, model="no-such-model").replace(b"line-0", b"lost")
    upload = sdk.files.create(file=("mixed.jsonl", io.BytesIO(content)), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_done(sdk, batch.id)
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    assert done.error_file_id is not None
    (error,) = [orjson.loads(x) for x in sdk.files.content(done.error_file_id).text.splitlines()]
    assert error["custom_id"] == "lost" and error["response"]["status_code"] == 404
    assert "no-such-model" in error["response"]["body"]["error"]["message"]


def test_files_and_batches_are_the_tenants_own(served: tuple[str, Path]) -> None:
    url, _ = served
    acme, globex = client(url), client(url, "globex-key")
    upload = acme.files.create(file=("a.jsonl", io.BytesIO(jsonl(3))), purpose="batch")
    batch = acme.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with pytest.raises(openai.NotFoundError):
        globex.files.retrieve(upload.id)
    with pytest.raises(openai.NotFoundError):
        globex.files.content(upload.id)
    with pytest.raises(openai.NotFoundError):
        globex.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        globex.batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        globex.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert list(globex.batches.list()) == []
    done = wait_done(acme, batch.id)
    assert done.output_file_id is not None
    with pytest.raises(openai.NotFoundError):
        globex.files.content(done.output_file_id)
    assert [f.id for f in acme.files.list()] == [done.output_file_id, upload.id]
    assert [f.id for f in acme.files.list(purpose="batch")] == [upload.id]
    assert list(globex.files.list()) == []


def test_bad_files_are_refused_naming_what_is_wrong(sim: str, tmp_path: Path) -> None:
    app = create_app(Runtime(parse_config(config(sim, tmp_path / "a.db", max_file_bytes=4096))))
    with serve_app(app) as url:
        sdk = client(url)
        with pytest.raises(openai.APIStatusError) as too_large:
            sdk.files.create(file=("big.jsonl", io.BytesIO(jsonl(100))), purpose="batch")
        assert too_large.value.status_code == 413
        assert "jobs.max_file_bytes" in too_large.value.message
        cases = {
            b"not json\n": "line 1 of the file is not JSON",
            jsonl(1) + jsonl(1): "custom_id 'line-0' is used by an earlier line",
            jsonl(1).replace(b'"POST"', b'"GET"'): "method must be POST",
            jsonl(1).replace(b"/v1/chat/completions", b"/v1/embeddings"): "url must be one of",
            jsonl(1).replace(b'"max_tokens":8', b'"max_tokens":"8"'): "line 1: ",
            b"\n\n": "the file has no lines",
        }
        for content, message in cases.items():
            with pytest.raises(openai.BadRequestError) as refused:
                sdk.files.create(file=("x.jsonl", io.BytesIO(content)), purpose="batch")
            assert message in refused.value.message, refused.value.message
        with pytest.raises(openai.BadRequestError) as purpose:
            sdk.files.create(file=("x.jsonl", io.BytesIO(jsonl(1))), purpose="fine-tune")
        assert "purpose must be 'batch'" in purpose.value.message
        upload = sdk.files.create(file=("x.jsonl", io.BytesIO(jsonl(1))), purpose="batch")
        with pytest.raises(openai.BadRequestError) as window:
            sdk.batches.create(
                input_file_id=upload.id,
                endpoint="/v1/chat/completions",
                completion_window="1h",  # type: ignore[arg-type]
            )
        assert "completion_window" in window.value.message
        with pytest.raises(openai.NotFoundError):
            sdk.batches.retrieve("batch_nope")


def test_a_cancelled_batch_stops_and_keeps_what_was_answered(sim: str, tmp_path: Path) -> None:
    # No worker in this server: the batch waits until it is cancelled, then a server
    # with a worker ends it.
    db = tmp_path / "areion.db"
    with serve_app(create_app(Runtime(parse_config(config(sim, db, worker=False))))) as url:
        sdk = client(url)
        upload = sdk.files.create(file=("a.jsonl", io.BytesIO(jsonl(5))), purpose="batch")
        batch = sdk.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert sdk.batches.cancel(batch.id).status == "cancelling"
    with serve_app(create_app(Runtime(parse_config(config(sim, db))))) as url:
        sdk = client(url)
        done = wait_done(sdk, batch.id)
        assert done.status == "cancelled" and done.cancelled_at is not None
        assert done.request_counts.completed == 0 and done.output_file_id is None
    assert ledger(db) == []


def test_batches_on_a_postgresql_store(sim: str, tmp_path: Path) -> None:
    """The same API over the PostgreSQL store: what replicas share."""

    with contextlib.ExitStack() as stack:
        url = stack.enter_context(postgres_schema())
        settings = config(sim, tmp_path / "unused.db")
        settings["store"] = url
        served = stack.enter_context(serve_app(create_app(Runtime(parse_config(settings)))))
        sdk = client(served)
        upload = sdk.files.create(file=("q.jsonl", io.BytesIO(jsonl(200))), purpose="batch")
        batch = sdk.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = wait_done(sdk, batch.id)
        assert done.status == "completed" and done.request_counts.completed == 200
        assert done.output_file_id is not None
        lines = sdk.files.content(done.output_file_id).text.splitlines()
        ids = {orjson.loads(line)["response"]["request_id"] for line in lines}
        assert len(lines) == 200 and len(ids) == 200
        assert client(served, "globex-key").batches.list().data == []
        rows = asyncio.run(ledger_ids(url))
        assert sorted(rows) == sorted(ids)


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema for a synchronous test, dropped afterwards."""
    url = require_postgres()
    name = f"areion_test_{uuid.uuid4().hex[:12]}"
    try:
        yield f"{url}?schema={name}"
    finally:

        async def drop() -> None:
            import asyncpg

            admin = await asyncpg.connect(url)
            try:
                await admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            finally:
                await admin.close()

        asyncio.run(drop())


async def ledger_ids(url: str) -> list[str]:
    from areion.store.postgres import PostgresStore

    store = PostgresStore(url)
    try:
        return [entry.request_id for entry in await store.ledger(limit=10_000)]
    finally:
        await store.aclose()


def test_a_line_the_cache_answers_costs_nothing(sim: str, tmp_path: Path) -> None:
    db = tmp_path / "areion.db"
    settings = config(sim, db, concurrency=1)  # one line after another: the later ones hit
    with serve_app(create_app(Runtime(parse_config(settings)))) as url:
        sdk = client(url)
        same = jsonl(1).replace(b'"max_tokens":8', b'"max_tokens":8,"temperature":0')
        content = b"".join(same.replace(b"line-0", f"copy-{i}".encode()) for i in range(3))
        upload = sdk.files.create(file=("same.jsonl", io.BytesIO(content)), purpose="batch")
        batch = sdk.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = wait_done(sdk, batch.id)
        assert done.request_counts.completed == 3 and done.output_file_id is not None
        answers = sdk.files.content(done.output_file_id).text.splitlines()
        texts = {orjson.loads(a)["response"]["body"]["choices"][0]["message"]["content"]
                 for a in answers}  # fmt: skip
        assert len(texts) == 1
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT cache, cost_usd FROM ledger").fetchall()
    billed = [cost for cache, cost in rows if cache == ""]
    assert len(billed) == 1 and billed[0] > 0  # one call upstream
    assert sorted(rows) == sorted([("", billed[0]), ("exact", 0.0), ("exact", 0.0)])


def test_cancelling_a_native_batch_cancels_the_providers_and_books_what_it_answered(
    tmp_path: Path,
) -> None:
    port = free_port()
    slow = start(["sim", "--port", str(port), "--time-scale", "2.0"])  # a slow provider
    try:
        wait_ready(slow, port)
        sim = f"http://127.0.0.1:{port}"
        db = tmp_path / "areion.db"
        settings = config(sim, db, native=True, lease_ttl_s=1)
        with serve_app(create_app(Runtime(parse_config(settings)))) as url:
            sdk = client(url)
            upload = sdk.files.create(file=("q.jsonl", io.BytesIO(jsonl(300))), purpose="batch")
            batch = sdk.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            deadline = time.monotonic() + 60
            while not any(
                (b["metadata"] or {}).get("areion_batch") == batch.id
                and b["request_counts"]["completed"] >= 10
                for b in httpx.get(sim + "/v1/batches").json()["data"]
            ):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert sdk.batches.cancel(batch.id).status == "cancelling"
            done = wait_done(sdk, batch.id)
            assert done.status == "cancelled"
            (remote,) = [
                b for b in httpx.get(sim + "/v1/batches").json()["data"]
                if (b["metadata"] or {}).get("areion_batch") == batch.id
            ]  # fmt: skip
            assert remote["status"] == "cancelled"
            answered = remote["request_counts"]["completed"]
            assert 10 <= answered < 300 and done.request_counts.completed == answered
            assert done.output_file_id is not None
            lines = sdk.files.content(done.output_file_id).text.splitlines()
        assert len(lines) == answered == len(ledger(db))
    finally:
        stop(slow)


def test_cancelling_an_anthropic_native_batch_cancels_its_message_batch(tmp_path: Path) -> None:
    port = free_port()
    slow = start(["sim", "--port", str(port), "--time-scale", "2.0"])  # a slow provider
    try:
        wait_ready(slow, port)
        sim = f"http://127.0.0.1:{port}"
        db = tmp_path / "areion.db"
        settings = config(sim, db, native=True, provider="anthropic", lease_ttl_s=1)
        with serve_app(create_app(Runtime(parse_config(settings)))) as url:
            sdk = client(url)
            upload = sdk.files.create(file=("q.jsonl", io.BytesIO(jsonl(300))), purpose="batch")
            batch = sdk.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            deadline = time.monotonic() + 60
            # The sim tallies a Message Batch's requests as they end (Anthropic only once
            # the batch has ended): wait until some are answered there.
            while not any(
                b["request_counts"]["succeeded"] >= 10
                for b in httpx.get(sim + "/v1/messages/batches").json()["data"]
            ):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert sdk.batches.cancel(batch.id).status == "cancelling"
            done = wait_done(sdk, batch.id)
            assert done.status == "cancelled"
            (remote,) = message_batches_sent(sim, batch.id)
            assert remote["cancel_initiated_at"] is not None
            counts = remote["request_counts"]
            answered = counts["succeeded"]
            assert counts["canceled"] > 0 and 10 <= answered < 300
            assert done.request_counts.completed == answered
            assert done.output_file_id is not None
            lines = sdk.files.content(done.output_file_id).text.splitlines()
        # Only what the provider answered is in the output and the ledger, at its batch
        # price; the canceled requests were not run here either.
        rows = ledger(db)
        assert len(lines) == answered == len(rows)
        assert all(cost > 0 for *_, cost in rows)
    finally:
        stop(slow)


async def test_a_successor_finds_the_message_batch_its_predecessor_sent(
    sim: str, tmp_path: Path
) -> None:
    """A worker that died between sending a Message Batch and recording its id: the
    worker that takes the job over finds that batch (running, then ended) instead of
    sending the lines again, and books none of another job's results."""
    settings = config(sim, tmp_path / "a.db", native=True, provider="anthropic")
    runtime = Runtime(parse_config(settings))
    (deployment,) = runtime.gateway.deployments.values()
    job, other = f"batch_{uuid.uuid4().hex}", f"batch_{uuid.uuid4().hex}"
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    lines = [LineRecord(batch_id=job, index=i, custom_id=f"c {i}", body=body) for i in range(7)]
    others = [LineRecord(batch_id=other, index=i, custom_id=f"c {i}", body=body) for i in range(7)]
    sdk = AnthropicBatchClient(deployment, parse_line)
    try:
        since = time.time()
        assert await sdk.find(job, lines, since=None) is None  # no submission was begun
        sent = await sdk.submit(lines, job=job)
        assert await sdk.find(job, lines, since=since) == sent  # running: the one its size
        remote = await sdk.poll(sent)
        while remote is None:
            await asyncio.sleep(0.05)
            remote = await sdk.poll(sent)
        assert await sdk.find(job, lines, since=since) == sent  # ended: by its requests' ids
        assert await sdk.find(other, others, since=since) is None
        answered = await sdk.results(remote, lines)
        assert sorted(r.line.custom_id for r in answered) == sorted(x.custom_id for x in lines)
        assert {r.status for r in answered} == {200}
        assert all(r.body["usage"]["completion_tokens"] > 0 for r in answered)
        assert await sdk.results(remote, others) == []
    finally:
        await sdk.aclose()
        await runtime.aclose()


def test_a_budgeted_tenants_batch_is_run_here_within_its_budget(sim: str, tmp_path: Path) -> None:
    # A provider's batch is one submission, not admitted line by line: a tenant with a
    # budget has its lines run (and reserved) here, and the budget holds.
    db = tmp_path / "areion.db"
    settings = config(sim, db, native=True)
    settings["tenants"] = [{"name": "acme", "budget_usd_per_day": 0.0004}]
    with serve_app(create_app(Runtime(parse_config(settings)))) as url:
        sdk = client(url)
        upload = sdk.files.create(file=("q.jsonl", io.BytesIO(jsonl(40))), purpose="batch")
        batch = sdk.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = wait_done(sdk, batch.id)
    assert sent_to_sim(sim, batch.id) == 0
    assert done.request_counts.completed + done.request_counts.failed == 40
    assert done.request_counts.failed > 0  # the budget ran out before the lines did
    spent = sum(cost for _, _, cost in ledger(db))
    assert 0 < spent <= 0.0004


def test_a_tenant_with_a_per_request_cap_has_its_batch_run_here(sim: str, tmp_path: Path) -> None:
    # Each line is checked against the cap here; a provider's batch would check none.
    db = tmp_path / "areion.db"
    settings = config(sim, db, native=True)
    settings["tenants"] = [{"name": "acme", "max_tokens_per_request": 10_000}]
    with serve_app(create_app(Runtime(parse_config(settings)))) as url:
        sdk = client(url)
        upload = sdk.files.create(file=("q.jsonl", io.BytesIO(jsonl(5))), purpose="batch")
        batch = sdk.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        done = wait_done(sdk, batch.id)
    assert done.request_counts.completed == 5
    assert sent_to_sim(sim, batch.id) == 0

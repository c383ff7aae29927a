"""What only the PostgreSQL store has: its URL, its schema versions, and PostgreSQL
going away and coming back. (Its behaviour as a `Store` is in test_store_contract.)"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from areion.agent import Agent
from areion.config import parse_config
from areion.errors import BackendUnavailableError, ConfigError
from areion.runtime import Runtime
from areion.store import Store, open_store
from areion.store.records import (
    ApiKeyRecord,
    CacheEntryRecord,
    Checkpoint,
    ExperimentState,
    OutcomeRecord,
    ResponseRecord,
    RunRecord,
    SessionSummary,
    SessionTurn,
    ToolCallRecord,
)
from areion.telemetry.ledger import Ledger
from areion.types import ChatRequest, LedgerEntry, Message
from tests.pg import POSTGRES_URL, Proxy, fresh_schema, require_postgres, terminate_connections

pytest.importorskip("asyncpg")  # a dev dependency; the contract tests fail under CI without it

from areion.store.postgres import PostgresStore
from areion.store.postgres_pool import postgres_settings
from areion.store.postgres_schema import MIGRATIONS, VERSION, WRITE
from areion.store.rollups import SpendQuery
from areion.store.run_pages import RunPageQuery


def _entry(request_id: str, **fields: Any) -> LedgerEntry:
    values: dict[str, Any] = {
        "request_id": request_id, "tenant": "team-a", "model": "fast",
        "deployment": "fast/sim-fast", "upstream_model": "sim-fast", "prompt_tokens": 12,
        "completion_tokens": 34, "cached_tokens": 0, "cost_usd": 0.25, "estimated": False,
        "latency_s": 0.5, "created": 1.0,
    }  # fmt: skip
    values.update(fields)
    return LedgerEntry(**values)


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with fresh_schema() as found:
        yield found


def _application_name(url: str) -> str:
    return url.rpartition("application_name=")[2]


# -- the URL ---------------------------------------------------------------------------


def test_urls() -> None:
    settings = postgres_settings(
        "postgres://areion:secret@db.internal:6432/state?schema=replica_a&sslmode=disable"
        "&connect_timeout=1.5&command_timeout=2&pool_size=4"
    )
    assert settings.schema == "replica_a"
    assert (settings.connect_timeout, settings.command_timeout, settings.pool_size) == (1.5, 2, 4)
    # Areion's own parameters are taken out; the rest is asyncpg's (and the server's).
    assert settings.dsn == (
        "postgresql://areion:secret@db.internal:6432/state?sslmode=disable&application_name=areion"
    )
    plain = postgres_settings("postgresql://postgres@127.0.0.1/test?application_name=mine")
    assert plain.schema is None and plain.dsn.endswith("application_name=mine")
    assert (plain.connect_timeout, plain.command_timeout) == (3.0, 5.0)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("postgresql://h/db?schema=a;drop", "plain identifier"),
        ("postgresql://h/db?schema=", "plain identifier"),
        ("postgresql://h/db?command_timeout=soon", "command_timeout"),
        ("postgresql://h/db?pool_size=0", "pool_size"),
        ("mysql://h/db", "postgresql://"),
    ],
)
def test_bad_urls_are_config_errors(url: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        postgres_settings(url)


def test_open_store_dispatches_postgres_urls() -> None:
    for url in ("postgresql://postgres@127.0.0.1/test", "postgres://127.0.0.1/test"):
        assert isinstance(open_store(url), PostgresStore)  # nothing connects until used


def test_a_missing_asyncpg_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.startswith("areion.store.postgres")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'areion\[postgres\]'"):
        open_store("postgresql://postgres@127.0.0.1/test")


# -- the schema ------------------------------------------------------------------------


async def test_every_table_goes_in_the_schema_named_by_the_url(url: str) -> None:
    import asyncpg

    store = PostgresStore(url)
    await store.append_ledger([_entry("r")])
    schema = url.partition("schema=")[2].partition("&")[0]
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        tables = {
            row[0]
            for row in await admin.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
            )
        }
        versions = await admin.fetch(f'SELECT version FROM "{schema}".schema_version')
    finally:
        await admin.close()
        await store.aclose()
    assert {"ledger", "runs", "run_messages", "api_keys", "cache_entries"} <= tables
    assert [row[0] for row in versions] == [VERSION]


async def test_a_version_1_schema_gains_the_responses_table_and_keeps_its_rows(
    url: str,
) -> None:
    import asyncpg

    schema = url.partition("schema=")[2].partition("&")[0]
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        # A database made by the Areion before responses were stored.
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        await admin.execute(f'SET search_path = "{schema}"')
        await admin.execute(MIGRATIONS[0])
        await admin.execute("CREATE TABLE schema_version (version integer)")
        await admin.execute("INSERT INTO schema_version VALUES (1)")
        await admin.execute(
            "INSERT INTO ledger (request_id, tenant, model, deployment, upstream_model, "
            "prompt_tokens, completion_tokens, cached_tokens, cost_usd, estimated, latency_s, "
            "created) VALUES ('old', 'team-a', 'fast', 'd', 'u', 1, 2, 0, 0.5, false, 0.1, 1.0)"
        )
    finally:
        await admin.close()
    store = PostgresStore(url)
    try:
        assert [e.request_id for e in await store.ledger()] == ["old"]
        record = ResponseRecord(response_id="resp_1", tenant="team-a", previous_response_id=None,
                                model="fast", created=1.0, messages=[{"role": "user"}],
                                body={"id": "resp_1"})  # fmt: skip
        await store.put_response(record)
        found = await store.get_response("team-a", "resp_1")
        assert found is not None and found.record == record
    finally:
        await store.aclose()
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        assert await admin.fetchval(f'SELECT version FROM "{schema}".schema_version') == VERSION
    finally:
        await admin.close()


async def test_a_version_2_schema_gains_the_arrivals_table_and_keeps_its_rows(
    url: str,
) -> None:
    import asyncpg

    schema = url.partition("schema=")[2].partition("&")[0]
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        # A database made by the Areion before arrivals were counted.
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        await admin.execute(f'SET search_path = "{schema}"')
        for migration in MIGRATIONS[:2]:
            await admin.execute(migration)
        await admin.execute("CREATE TABLE schema_version (version integer)")
        await admin.execute("INSERT INTO schema_version VALUES (2)")
        await admin.execute(
            "INSERT INTO ledger (request_id, tenant, model, deployment, upstream_model, "
            "prompt_tokens, completion_tokens, cached_tokens, cost_usd, estimated, latency_s, "
            "created) VALUES ('old', 'team-a', 'fast', 'd', 'u', 1, 2, 0, 0.5, false, 0.1, 1.0)"
        )
    finally:
        await admin.close()
    store = PostgresStore(url)
    try:
        assert [e.request_id for e in await store.ledger()] == ["old"]
        await store.add_arrivals({540: 2})
        assert await store.arrivals(since=0) == {540: 2}
    finally:
        await store.aclose()
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        assert await admin.fetchval(f'SELECT version FROM "{schema}".schema_version') == VERSION
    finally:
        await admin.close()


async def test_a_schema_newer_than_this_areion_is_refused(url: str) -> None:
    import asyncpg

    first = PostgresStore(url)
    await first.ledger()  # creates the schema at this version
    await first.aclose()
    schema = url.partition("schema=")[2].partition("&")[0]
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await admin.execute(f'UPDATE "{schema}".schema_version SET version = {VERSION + 1}')
    finally:
        await admin.close()
    later = PostgresStore(url)
    try:
        with pytest.raises(ConfigError, match="newer than this Areion knows"):
            await later.ledger()
    finally:
        await later.aclose()


async def test_a_batch_sent_twice_is_applied_once(url: str) -> None:
    # What makes resending a batch after a lost connection safe: its id.
    store = PostgresStore(url)
    await store.ledger()  # migrated
    batch = uuid.uuid4()
    row = (
        "r", "team-a", "fast", "d", "u", 1, 2, 0, 0.5, False, 0.1, 1.0, "", 0.0, 0.0, False, "",
        "chat", "", "", "", "", "", "", "", "[]", "",
    )  # fmt: skip
    arguments = [batch, 0.0, None, None, None, None, None, None, None, [row], None, None]

    async def send(connection: Any) -> bool:
        return bool(await connection.fetchval(WRITE, *arguments))

    try:
        assert await store._connector.run(send) is True
        assert await store._connector.run(send) is False
        assert len(await store.ledger()) == 1
    finally:
        await store.aclose()


# -- PostgreSQL away -------------------------------------------------------------------


def _every_method(store: Store) -> dict[str, Callable[[], Awaitable[Any]]]:
    run = RunRecord(run_id="r", tenant="t", agent="a")
    key = ApiKeyRecord(key_id="key_1", digest=b"d" * 32, tenant="t", name="k")
    entry = CacheEntryRecord(
        tier="semantic", tenant="t", partition="p", model="m", text="q", vector=b"",
        payload=b"", created=0.0, expires=1e12,
    )  # fmt: skip
    call = ToolCallRecord(tenant="t", run_id="r", call_id="c", name="n", arguments="{}",
                          status="started")  # fmt: skip
    response = ResponseRecord(response_id="resp_1", tenant="t", previous_response_id=None,
                              model="m", created=0.0, messages=[], body={})  # fmt: skip
    return {
        "append_ledger": lambda: store.append_ledger([_entry("r")]),
        "ledger": lambda: store.ledger(),
        "spend_by_tenant": lambda: store.spend_by_tenant(since=0.0),
        "create_run": lambda: store.create_run(run, []),
        "checkpoint": lambda: store.checkpoint(Checkpoint(run=run)),
        "record_tool_call": lambda: store.record_tool_call(call),
        "load_run": lambda: store.load_run("r"),
        "stale_runs": lambda: store.stale_runs(updated_before=0.0),
        "run_events": lambda: store.run_events("r"),
        "session_turns": lambda: store.session_turns("t", "s"),
        "append_turns": lambda: store.append_turns(
            "t", "s", [SessionTurn(seq=0, role="user", content="x", tokens=1)]
        ),
        "session_summaries": lambda: store.session_summaries("t", "s"),
        "add_summary": lambda: store.add_summary(
            "t", "s", SessionSummary(first_seq=0, last_seq=0, text="x", tokens=1)
        ),
        "cache_get": lambda: store.cache_get("k"),
        "cache_put": lambda: store.cache_put("k", b"v", ttl=1.0),
        "add_cache_entry": lambda: store.add_cache_entry(entry),
        "cache_entries": lambda: store.cache_entries("semantic"),
        "drop_cache_entries": lambda: store.drop_cache_entries("semantic", "t"),
        "set_cache_threshold": lambda: store.set_cache_threshold("semantic", 1, 0.9),
        "create_key": lambda: store.create_key(key),
        "keys": lambda: store.keys(),
        "key_by_digest": lambda: store.key_by_digest(b"d" * 32),
        "revoke_key": lambda: store.revoke_key("k"),
        "put_response": lambda: store.put_response(response),
        "get_response": lambda: store.get_response("t", "resp_1"),
        "spend": lambda: store.spend(SpendQuery(group_by=("tenant",), since=0.0, until=1.0)),
        "run_stats": lambda: store.run_stats(since=0.0, until=1.0),
        "run_page": lambda: store.run_page(RunPageQuery(tenant="t")),
        "run_calls": lambda: store.run_calls("r", tenant="t", since=0.0, until=1.0),
        "add_arrivals": lambda: store.add_arrivals({60: 1}),
        "record_outcome": lambda: store.record_outcome(
            OutcomeRecord(tenant="t", kind="run", target="r", success=True)
        ),
        "has_request": lambda: store.has_request("t", "req_1"),
        "experiment_units": lambda: store.experiment_units("e", unit="session", runs=True),
        "experiment_state": lambda: store.experiment_state("e"),
        "set_experiment_state": lambda: store.set_experiment_state(ExperimentState(name="e")),
        "arrivals": lambda: store.arrivals(since=0),
    }


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens once it is closed


async def test_every_method_says_the_store_is_down_when_nobody_listens() -> None:
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{_closed_port()}/test")
    methods = _every_method(store)
    assert set(methods) == {
        name for name in dir(Store) if not name.startswith("_") and name != "aclose"
    }
    try:
        for name, call in methods.items():
            with pytest.raises(BackendUnavailableError) as caught:
                await call()
            assert caught.value.backend == "postgres", name
            assert "ledger and state store (PostgreSQL) is unavailable" in str(caught.value)
            assert caught.value.status == 503
    finally:
        await store.aclose()


async def test_a_server_that_never_answers_is_given_up_on_at_the_connect_timeout() -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepts the connection, never says a word

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = PostgresStore(f"postgresql://postgres@127.0.0.1:{port}/test", connect_timeout=0.2)
    try:
        with pytest.raises(BackendUnavailableError, match="no answer in time"):
            await store.append_ledger([_entry("r")])
        with pytest.raises(BackendUnavailableError):
            await store.ledger()
    finally:
        await store.aclose()
        server.close()
        for writer in held:
            writer.close()


async def test_the_store_recovers_when_its_connections_are_killed(url: str) -> None:
    store = PostgresStore(url)
    try:
        await store.append_ledger([_entry("before")])
        assert await terminate_connections(POSTGRES_URL, _application_name(url)) >= 1
        # The pool's connections are dead; the next calls work without a restart.
        await store.append_ledger([_entry("after")])
        assert sorted(e.request_id for e in await store.ledger()) == ["after", "before"]
    finally:
        await store.aclose()


async def test_a_write_on_a_connection_killed_unnoticed_lands_once(url: str) -> None:
    store = PostgresStore(url, pool_size=1)
    try:
        await store.append_ledger([_entry("before")])
        # Killed while this loop is blocked, so the pooled connection looks alive: the
        # write is sent on it, fails, and is sent again on a fresh one.
        killer = threading.Thread(
            target=asyncio.run,
            args=(terminate_connections(POSTGRES_URL, _application_name(url)),),
        )
        killer.start()
        killer.join()
        await store.append_ledger([_entry("after")])
        assert sorted(e.request_id for e in await store.ledger()) == ["after", "before"]
    finally:
        await store.aclose()


async def test_an_outage_refuses_calls_and_the_store_comes_back_by_itself(url: str) -> None:
    proxy = Proxy(POSTGRES_URL)
    await proxy.start()
    store = PostgresStore(proxy.url(url))
    ledger = Ledger(store)
    try:
        await ledger.write(_entry("before"))
        await proxy.stop()  # PostgreSQL "goes down"
        with pytest.raises(BackendUnavailableError):
            await store.append_ledger([_entry("lost")])
        with pytest.raises(BackendUnavailableError):
            await store.load_run("r")
        await ledger.write(_entry("kept"))  # a billed row is kept for a later flush...
        assert ledger.pending == 1
        await proxy.start()  # ... and PostgreSQL is back
        await ledger.flush()
        assert ledger.pending == 0
        assert sorted(e.request_id for e in await store.ledger()) == ["before", "kept"]
    finally:
        await ledger.aclose()
        await store.aclose()
        await proxy.stop()


async def test_a_flush_from_another_loop_uses_a_connection_of_its_own(url: str) -> None:
    store = PostgresStore(url)
    ledger = Ledger(store)
    try:
        await store.append_ledger([_entry("first")])  # the pool belongs to this loop
        ledger.record(_entry("at-exit"))
        ledger.flush_blocking()  # a finalizer's flush: another thread, another loop
        assert sorted(e.request_id for e in await store.ledger()) == ["at-exit", "first"]
    finally:
        await ledger.aclose()
        await store.aclose()


# -- the runtime on it -----------------------------------------------------------------


async def test_a_runtime_on_postgres_bills_calls_and_keeps_runs(url: str) -> None:
    config = parse_config(
        {
            "models": [{"name": "fast", "provider": "sim", "model": "sim-fast"}],
            "store": url,
        },
        source="test",
    )
    async with Runtime(config) as rt:
        assert isinstance(rt.store, PostgresStore)
        answer = await rt.chat(
            ChatRequest(model="fast", messages=[Message(role="user", content="Hi")]),
            tenant="acme",
        )
        result = await rt.run(Agent(name="plain", model="fast", max_steps=1), "Hello")
        rows = await rt.store.ledger(tenant="acme")
        assert len(rows) == 1 and rows[0].completion_tokens > 0 and answer.choices
        assert result.status == "finished"
        snapshot = await rt.store.load_run(result.run_id, tenant="default")
        assert snapshot is not None and snapshot.run.status == "finished"


def test_postgres_is_there_for_ci() -> None:
    # Under CI=true a missing server fails here (and in every test above) instead of
    # letting the PostgreSQL tests skip.
    assert require_postgres() == POSTGRES_URL

"""API keys in the store and the key ring (control/keys.py, store/sqlite.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from areion.config import parse_config
from areion.control.keys import (
    KeyConflictError,
    KeyNotFoundError,
    KeyRing,
    create_key,
    key_digest,
    revoke_key,
)
from areion.errors import AuthenticationError, RequestError
from areion.store import SQLiteStore
from areion.store.records import ApiKeyRecord

CONFIG_KEY = "sk-config-key-0123456789"
CONFIG = parse_config(
    {
        "models": [{"name": "fast", "provider": "sim"}, {"name": "strong", "provider": "sim"}],
        "auth": {"keys": [{"key": CONFIG_KEY, "tenant": "acme", "name": "web"}]},
    }
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(str(tmp_path / "areion.db"))
    yield store
    await store.aclose()


async def test_only_the_digest_is_stored(store: SQLiteStore, tmp_path: Path) -> None:
    key, record = await create_key(
        store, CONFIG, tenant="acme", name="batch", rpm=5, tpm=900, priority="batch",
        models=["fast"],
    )  # fmt: skip
    assert key.startswith("ak-") and len(key) > 40
    await store.aclose()
    raw = (tmp_path / "areion.db").read_bytes()
    wal = tmp_path / "areion.db-wal"
    if wal.exists():
        raw += wal.read_bytes()
    assert key.encode() not in raw
    with sqlite3.connect(tmp_path / "areion.db") as db:
        digest, name = db.execute("SELECT digest, name FROM api_keys").fetchone()
    assert digest == key_digest(key) and name == "batch"

    again = SQLiteStore(str(tmp_path / "areion.db"))
    try:
        [found] = await again.keys()
        assert found == record
        assert found.models == ("fast",) and found.priority == "batch" and found.rpm == 5
        assert await again.key_by_digest(key_digest(key)) == record
        assert await again.key_by_digest(key_digest(key + "x")) is None
    finally:
        await again.aclose()


async def test_names_are_unique_among_active_keys(store: SQLiteStore) -> None:
    _, first = await create_key(store, CONFIG, tenant="acme", name="ci")
    with pytest.raises(KeyConflictError, match="already named 'ci'"):
        await create_key(store, CONFIG, tenant="other", name="ci")
    with pytest.raises(KeyConflictError, match="in the config"):
        await create_key(store, CONFIG, tenant="acme", name="web")
    await revoke_key(store, "ci")
    _, second = await create_key(store, CONFIG, tenant="acme", name="ci")  # reusable now
    assert second.key_id != first.key_id
    assert [k.name for k in await store.keys(tenant="acme")] == ["ci", "ci"]


async def test_bad_fields_name_the_field(store: SQLiteStore) -> None:
    cases = [
        ({"tenant": "a b"}, "tenant"),
        ({"tenant": "acme", "name": "key_123"}, "name"),
        ({"tenant": "acme", "rpm": 0}, "rpm"),
        ({"tenant": "acme", "priority": "urgent"}, "priority"),
        ({"tenant": "acme", "models": ["nope"]}, "models"),
        ({"tenant": "acme", "models": []}, "models"),
    ]
    for fields, param in cases:
        with pytest.raises(RequestError) as caught:
            await create_key(store, CONFIG, **fields)  # type: ignore[arg-type]
        assert caught.value.param == param and caught.value.status == 400
    assert await store.keys() == []


async def test_revoke_by_id_or_name_once(store: SQLiteStore) -> None:
    _, a = await create_key(store, CONFIG, tenant="acme", name="a")
    _, b = await create_key(store, CONFIG, tenant="beta")
    assert b.name == b.key_id  # no name: the id is its label
    revoked = await revoke_key(store, a.key_id)
    assert revoked.key_id == a.key_id and revoked.revoked_at is not None
    with pytest.raises(KeyNotFoundError):
        await revoke_key(store, "a")  # already revoked
    assert await store.revoke_key(b.key_id, tenant="acme") is None  # another tenant's
    assert (await revoke_key(store, b.name)).key_id == b.key_id
    assert all(k.revoked_at is not None for k in await store.keys())


async def test_an_old_database_gets_the_keys_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # a database from before API keys
        db.execute("CREATE TABLE tool_cache (key TEXT PRIMARY KEY, value BLOB, expires REAL)")
    store = SQLiteStore(str(path))
    try:
        key, _ = await create_key(store, CONFIG, tenant="acme")
        assert await store.key_by_digest(key_digest(key)) is not None
    finally:
        await store.aclose()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_ring_caches_lookups_for_the_ttl(store: SQLiteStore) -> None:
    clock = Clock()
    ring = KeyRing(CONFIG.auth, store, ttl_s=5.0, clock=clock)
    key, record = await create_key(store, CONFIG, tenant="beta", name="etl", rpm=7)
    assert (await ring.identify(CONFIG_KEY)).tenant == "acme"
    identity = await ring.identify(key)
    assert (identity.tenant, identity.key) == ("beta", "etl")
    limits = ring.limits("etl")
    assert limits is not None and limits.rpm == 7
    with pytest.raises(AuthenticationError, match="missing"):
        await ring.identify(None)
    with pytest.raises(AuthenticationError, match="invalid"):
        await ring.identify("ak-nope")

    await revoke_key(store, "etl")  # by another process: this ring still trusts its lookup
    assert (await ring.identify(key)).tenant == "beta"
    clock.now += 5.1
    with pytest.raises(AuthenticationError, match="revoked"):
        await ring.identify(key)
    assert ring.limits("etl") is None

    # Revoked in this process: refused at once.
    key2, record2 = await create_key(store, CONFIG, tenant="beta", name="etl2")
    assert (await ring.identify(key2)).key == "etl2"
    ring.forget(await revoke_key(store, "etl2"))
    with pytest.raises(AuthenticationError, match="revoked"):
        await ring.identify(key2)
    assert isinstance(record, ApiKeyRecord) and record2.name == "etl2"


async def test_open_ring_closes_once_the_store_holds_a_key(store: SQLiteStore) -> None:
    clock = Clock()
    open_config = parse_config({"models": [{"name": "fast", "provider": "sim"}]})
    ring = KeyRing(open_config.auth, store, ttl_s=5.0, clock=clock)
    assert (await ring.identify(None)).tenant == "default"
    key, _ = await create_key(store, open_config, tenant="acme")
    assert (await ring.identify(None)).tenant == "default"  # checked once per TTL
    clock.now += 5.1
    with pytest.raises(AuthenticationError, match="missing"):
        await ring.identify(None)
    assert (await ring.identify(key)).tenant == "acme"


def test_admin_keys_compare_and_stay_apart() -> None:
    config = parse_config(
        {
            "models": [{"name": "fast", "provider": "sim"}],
            "auth": {"admin_keys": ["adm-0123456789"]},
        }
    )
    ring = KeyRing(config.auth, store=None)  # type: ignore[arg-type]
    assert ring.admin_enabled and ring.is_admin("adm-0123456789")
    assert not ring.is_admin("adm-012345678")
    with pytest.raises(Exception, match="admin_keys\\[0\\]: the same as a key"):
        parse_config(
            {
                "models": [{"name": "fast", "provider": "sim"}],
                "auth": {"keys": [{"key": "k-1", "tenant": "a"}], "admin_keys": ["k-1"]},
            }
        )

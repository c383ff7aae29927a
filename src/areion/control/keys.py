"""API keys: who a request's bearer key is, and the keys kept in the store.

Keys come from two places: the config (`auth.keys`) and the store (made by `areion
keys create` or `POST /v1/admin/keys`). Both are looked up by the SHA-256 digest of
the key, never by the key itself, which the store never holds: a new key is shown
once, at creation. A store lookup is trusted for `auth.key_cache_ttl_s` seconds
(default 5), so the hot path does not read SQLite per request: a key revoked by
another process is refused within that time, one revoked through this process at
once. Whatever was looked up, found or not, is cached, so a flood of wrong keys
reads the store at most once per key and TTL (the cache is bounded).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, get_args

from areion.config import AuthConfig, AuthKey, Config, Priority
from areion.errors import AuthenticationError, RequestError
from areion.store import Store
from areion.store.records import ApiKeyRecord

__all__ = [
    "KEY_PREFIX",
    "Identity",
    "KeyConflictError",
    "KeyLimits",
    "KeyNotFoundError",
    "KeyRing",
    "create_key",
    "key_digest",
    "key_json",
    "new_key",
    "revoke_key",
]

KEY_PREFIX = "ak-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}$")
_MAX_CACHED = 10_000

Clock = Callable[[], float]


class KeyLimits(Protocol):
    """What admission and the lanes read of a key: config keys and store keys alike."""

    @property
    def label(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def rpm(self) -> int | None: ...
    @property
    def tpm(self) -> int | None: ...
    @property
    def priority(self) -> Priority | None: ...
    @property
    def models(self) -> Sequence[str] | None: ...


class KeyConflictError(RequestError):
    """An active key already has that name."""

    status = 409
    code = "key_exists"


class KeyNotFoundError(RequestError):
    """No active key has that id or name."""

    status = 404
    code = "key_not_found"


@dataclass(slots=True, frozen=True)
class Identity:
    """Who a request is: its tenant, and the label of its key (None: open server)."""

    tenant: str
    key: str | None


OPEN = Identity("default", None)


def key_digest(key: str) -> bytes:
    """The SHA-256 digest a key is stored and looked up by."""
    return hashlib.sha256(key.encode()).digest()


def new_key() -> str:
    """A new random API key: `ak-` and 256 bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_json(record: ApiKeyRecord) -> dict[str, Any]:
    """A stored key as the API shows it: everything but the key and its digest."""
    return {
        "id": record.key_id,
        "object": "api_key",
        "name": record.name,
        "tenant": record.tenant,
        "rpm": record.rpm,
        "tpm": record.tpm,
        "priority": record.priority,
        "models": None if record.models is None else list(record.models),
        "created": record.created,
        "revoked_at": record.revoked_at,
    }


def _check_name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise RequestError(
            f"{what} {value!r} must be 1-64 letters, digits or _.:@- and start with a letter "
            "or digit",
            param=what,
        )
    return value


async def create_key(
    store: Store,
    config: Config,
    *,
    tenant: str,
    name: str | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    priority: str | None = None,
    models: Sequence[str] | None = None,
    clock: Clock = time.time,
) -> tuple[str, ApiKeyRecord]:
    """Make and store a new key; returns the key (shown once, never stored) and its record.

    Raises `RequestError` naming a bad field, `KeyConflictError` for a name in use."""
    _check_name(tenant, "tenant")
    key_id = "key_" + secrets.token_hex(8)
    if name is None:
        name = key_id
    else:
        _check_name(name, "name")
        if name.startswith("key_"):
            raise RequestError(
                f"name {name!r}: names starting with 'key_' are reserved for key ids",
                param="name",
            )
    if name in {key.label for key in config.auth.keys}:
        raise KeyConflictError(f"name {name!r} is taken by a key in the config", param="name")
    for field, value in (("rpm", rpm), ("tpm", tpm)):
        if value is not None and value < 1:
            raise RequestError(f"{field} must be at least 1, got {value}", param=field)
    if priority is not None and priority not in get_args(Priority):
        raise RequestError(
            f"priority {priority!r} is not one of: " + ", ".join(get_args(Priority)),
            param="priority",
        )
    if models is not None:
        known = {model.name for model in config.models} | {route.name for route in config.routes}
        unknown = [model for model in models if model not in known]
        if unknown or not models:
            raise RequestError(
                f"models: {', '.join(unknown) or 'an empty list'} "
                f"{'is not a model or route' if unknown else 'allows nothing'}; known: "
                + ", ".join(sorted(known)),
                param="models",
            )
    key = new_key()
    record = ApiKeyRecord(
        key_id=key_id,
        digest=key_digest(key),
        tenant=tenant,
        name=name,
        rpm=rpm,
        tpm=tpm,
        priority=priority,  # type: ignore[arg-type]  # checked against Priority above
        models=None if models is None else tuple(dict.fromkeys(models)),
        created=clock(),
    )
    try:
        await store.create_key(record)
    except ValueError as error:
        raise KeyConflictError(str(error), param="name") from None
    return key, record


async def revoke_key(store: Store, name_or_id: str, *, tenant: str | None = None) -> ApiKeyRecord:
    """Revoke the active key with this id or name; `KeyNotFoundError` if none."""
    record = await store.revoke_key(name_or_id, tenant=tenant)
    if record is None:
        raise KeyNotFoundError(f"no active key has the id or name {name_or_id!r}")
    return record


def _among(digest: bytes, digests: Sequence[bytes]) -> bool:
    """Whether `digest` is one of `digests`, compared in constant time against each."""
    found = False
    for other in digests:
        found |= hmac.compare_digest(other, digest)
    return found


class KeyRing:
    """Config keys and store keys, by digest and by label, for one process."""

    def __init__(
        self,
        auth: AuthConfig,
        store: Store,
        *,
        ttl_s: float | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._store = store
        self._ttl = auth.key_cache_ttl_s if ttl_s is None else ttl_s
        self._clock = clock
        self._config: dict[bytes, AuthKey] = {
            key_digest(key.key.get_secret_value()): key for key in auth.keys
        }
        self._config_labels: dict[str, KeyLimits] = {key.label: key for key in auth.keys}
        self._stored_labels: dict[str, ApiKeyRecord] = {}
        self._admin = tuple(key_digest(key.get_secret_value()) for key in auth.admin_keys)
        self._metrics = tuple(key_digest(key.get_secret_value()) for key in auth.metrics_keys)
        self._closed = bool(auth.keys or auth.admin_keys or auth.metrics_keys)
        self._checked = -float("inf")
        self._cache: dict[bytes, tuple[float, ApiKeyRecord | None]] = {}

    @property
    def admin_enabled(self) -> bool:
        return bool(self._admin)

    def is_admin(self, key: str) -> bool:
        """Whether `key` is an admin key (compared in constant time against each)."""
        return _among(key_digest(key), self._admin)

    def is_operator(self, key: str) -> bool:
        """Whether `key` may read /metrics and the health detail: an admin or metrics key."""
        digest = key_digest(key)
        return _among(digest, self._admin) | _among(digest, self._metrics)

    async def closed(self) -> bool:
        """Whether requests need a key: the config lists tenant, admin or metrics keys,
        or the store holds an active key (re-checked every TTL while it holds none; once
        it has, the server stays closed)."""
        if self._closed:
            return True
        now = self._clock()
        if now >= self._checked + self._ttl:
            self._checked = now  # before the await: one check per TTL, not one per request
            records = await self._store.keys()
            self._closed = any(record.revoked_at is None for record in records)
        return self._closed

    async def identify(self, key: str | None) -> Identity:
        """The tenant and key label of a bearer key; `AuthenticationError` if it is
        missing, unknown or revoked. An open server answers `default` for anything."""
        if not await self.closed():
            return OPEN
        if not key:
            raise AuthenticationError(
                "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
            )
        digest = key_digest(key)
        entry = self._config.get(digest)
        if entry is not None:
            return Identity(entry.tenant, entry.label)
        record = await self._stored(digest)
        if record is None:
            raise AuthenticationError("invalid API key")
        if record.revoked_at is not None:
            raise AuthenticationError(f"API key '{record.name}' was revoked")
        return Identity(record.tenant, record.name)

    def limits(self, label: str) -> KeyLimits | None:
        """The key with this label: a config key, or a store key this ring has looked up."""
        return self._config_labels.get(label) or self._stored_labels.get(label)

    def remember(self, record: ApiKeyRecord) -> None:
        """A key made in this process: known at once, and an open server closes."""
        self._put(record.digest, record)
        self._closed = True

    def forget(self, record: ApiKeyRecord) -> None:
        """A key revoked in this process: refused from the next request on."""
        self._put(record.digest, record)

    async def _stored(self, digest: bytes) -> ApiKeyRecord | None:
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        record = await self._store.key_by_digest(digest)
        self._put(digest, record)
        return record

    def _put(self, digest: bytes, record: ApiKeyRecord | None) -> None:
        self._cache.pop(digest, None)
        if len(self._cache) >= _MAX_CACHED:  # the oldest entry goes
            del self._cache[next(iter(self._cache))]
        self._cache[digest] = (self._clock() + self._ttl, record)
        if record is None:
            return
        if record.revoked_at is None:
            self._stored_labels[record.name] = record
        elif (held := self._stored_labels.get(record.name)) and held.key_id == record.key_id:
            del self._stored_labels[record.name]

"""The store seam: every piece of state that must outlive a process goes through it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from areion.store.records import (
    ApiKeyRecord,
    CacheEntryRecord,
    CacheTier,
    Checkpoint,
    ExperimentState,
    OutcomeRecord,
    ResponseRecord,
    RunRecord,
    RunSnapshot,
    SessionSummary,
    SessionTurn,
    StoredResponse,
    ToolCallRecord,
)
from areion.store.rollups import SpendQuery
from areion.store.run_pages import RunCall, RunPageQuery, RunRow
from areion.types import LedgerEntry

__all__ = ["Store"]


@runtime_checkable
class Store(Protocol):
    """Durable state shared by every replica that points at the same backend."""

    async def append_ledger(
        self, entries: Sequence[LedgerEntry], *, closing: Sequence[LedgerEntry] = ()
    ) -> None:
        """Write spend records, then give open rows (same request, tenant and deployment)
        the real figures in `closing`; all or none of it lands."""
        ...

    async def ledger(
        self, *, tenant: str | None = None, request_id: str | None = None, limit: int = 1000
    ) -> list[LedgerEntry]:
        """Recent spend records, newest first, filtered by tenant or request."""
        ...

    async def spend_by_tenant(self, *, since: float) -> dict[str, float]:
        """Each tenant's total recorded cost since `since` (Unix time)."""
        ...

    async def spend(self, query: SpendQuery) -> list[tuple[Any, ...]]:
        """The rows answering a spend query (`store.rollups.spend_sql`): the rollups for
        whole hours and days, the ledger for the rest; `rollups.merge` groups them."""
        ...

    async def run_stats(
        self, *, since: float, until: float, tenant: str | None = None
    ) -> list[tuple[str, str, float, int]]:
        """(agent, status, cost_usd, steps) of each run created in [since, until), of
        `tenant` if given."""
        ...

    async def run_page(self, query: RunPageQuery) -> list[RunRow]:
        """A page of runs (`store.run_pages`): newest (or costliest) first, after the
        cursor `query.after`, never by offset."""
        ...

    async def run_calls(
        self, run_id: str, *, tenant: str, since: float, until: float
    ) -> list[RunCall]:
        """`tenant`'s run's ledger rows booked in [since, until], oldest first."""
        ...

    # -- agent runs -------------------------------------------------------------

    async def create_run(self, run: RunRecord, messages: Sequence[dict[str, Any]]) -> None:
        """Insert a new run with its first messages; ValueError if its tenant already has
        a run of that id (another tenant's run of the same id is another run)."""
        ...

    async def checkpoint(self, checkpoint: Checkpoint) -> None:
        """Apply one step's delta atomically: all of it lands, or none."""
        ...

    async def record_tool_call(self, record: ToolCallRecord) -> None:
        """Insert or replace one tool-call record now (before a side effect runs)."""
        ...

    async def load_run(self, run_id: str, *, tenant: str | None = None) -> RunSnapshot | None:
        """A run with its transcript and tool calls; None if `tenant` has no run of that
        id. Without a tenant (an operator's read): the oldest run of that id."""
        ...

    async def stale_runs(self, *, updated_before: float, limit: int = 100) -> list[tuple[str, str]]:
        """(tenant, run_id) of runs still `running` whose last checkpoint is older than
        `updated_before` (Unix time), oldest first: runs whose driver may have died."""
        ...

    async def run_events(
        self, run_id: str, *, after: int = -1, tenant: str | None = None
    ) -> list[tuple[int, dict[str, Any]]]:
        """Stored events of a run with sequence numbers greater than `after` (the run
        `load_run` with the same arguments finds)."""
        ...

    # -- sessions ---------------------------------------------------------------

    async def session_turns(
        self, tenant: str, session: str, *, after: int = -1
    ) -> list[SessionTurn]:
        """A session's turns with sequence numbers greater than `after`, in order."""
        ...

    async def append_turns(self, tenant: str, session: str, turns: Sequence[SessionTurn]) -> None:
        """Add turns to a session."""
        ...

    async def session_summaries(self, tenant: str, session: str) -> list[SessionSummary]:
        """A session's summaries, oldest first."""
        ...

    async def add_summary(self, tenant: str, session: str, summary: SessionSummary) -> None:
        """Store a summary of turns `first_seq..last_seq`."""
        ...

    # -- memoized tool results ----------------------------------------------------

    async def cache_get(self, key: str) -> bytes | None:
        """A cached value that has not expired, or None."""
        ...

    async def cache_put(self, key: str, value: bytes, *, ttl: float) -> None:
        """Cache a value for `ttl` seconds."""
        ...

    # -- semantic tiers (answers, plans): entries shared by every replica ------------

    async def add_cache_entry(self, entry: CacheEntryRecord) -> int:
        """Store an entry (its `id` is ignored); returns the id the store gave it."""
        ...

    async def cache_entries(
        self, tier: CacheTier, *, after: int = 0, limit: int = 10_000
    ) -> list[CacheEntryRecord]:
        """Unexpired entries of `tier` with ids greater than `after`, in id order: how a
        replica loads a tier at start and catches up with entries others stored."""
        ...

    async def drop_cache_entries(
        self,
        tier: CacheTier,
        tenant: str,
        *,
        model: str | None = None,
        created_before: float | None = None,
        entry: int | None = None,
    ) -> list[int]:
        """Delete `tenant`'s entries of `tier`, narrowed to a model group, a creation
        time or one id; returns the ids deleted."""
        ...

    async def set_cache_threshold(self, tier: CacheTier, entry: int, threshold: float) -> None:
        """Keep an entry's threshold as feedback lifted it (nothing if it is gone)."""
        ...

    # -- API keys -------------------------------------------------------------------

    async def create_key(self, record: ApiKeyRecord) -> None:
        """Insert a key atomically; ValueError if an active key has its name (or its id
        or digest exists)."""
        ...

    async def keys(self, *, tenant: str | None = None) -> list[ApiKeyRecord]:
        """Every key, revoked ones included, oldest first; only `tenant`'s if given."""
        ...

    async def key_by_digest(self, digest: bytes) -> ApiKeyRecord | None:
        """The key whose SHA-256 digest this is, revoked or not; None if none is."""
        ...

    async def revoke_key(
        self, name_or_id: str, *, tenant: str | None = None, at: float | None = None
    ) -> ApiKeyRecord | None:
        """Revoke the active key with this id (else this name), of `tenant` if given;
        returns it, or None when no active key matches."""
        ...

    # -- Responses-API responses (previous_response_id) ------------------------------

    async def put_response(self, record: ResponseRecord) -> None:
        """Store a response; ValueError if its tenant already has one of that id, or has
        no response of its `previous_response_id` (a chain never leaves its tenant)."""
        ...

    async def get_response(self, tenant: str, response_id: str) -> StoredResponse | None:
        """`tenant`'s response of that id, with the conversation through it; None if the
        tenant has none of that id (whoever else has)."""
        ...

    # -- experiments ------------------------------------------------------------------

    async def record_outcome(self, outcome: OutcomeRecord) -> None:
        """Keep a task's outcome (a later one for the same target replaces it)."""
        ...

    async def has_request(self, tenant: str, request_id: str) -> bool:
        """Whether `tenant`'s ledger has a call of Areion's request id `request_id`."""
        ...

    async def experiment_units(
        self, name: str, *, unit: str, runs: bool, since: float = 0.0
    ) -> list[tuple[Any, ...]]:
        """The units of experiment `name` seen since `since`, one row per unit (the
        columns of `store.experiments_sql.UNIT_COLUMNS`): from the ledger rows its
        variants booked, with the runs (`runs`: agent experiments) and the outcomes."""
        ...

    async def experiment_state(self, name: str) -> ExperimentState | None:
        """What the verdict of experiment `name` last changed; None before any."""
        ...

    async def set_experiment_state(self, state: ExperimentState) -> None:
        """Record a verdict and what it changes (stopped variants, a promoted winner)."""

    # -- arrivals (the scaling signal's history) ------------------------------------

    async def add_arrivals(
        self, counts: Mapping[int, int], *, forget_before: int | None = None
    ) -> None:
        """Add request arrivals per minute (the Unix time of the minute's start -> how
        many arrived) to what every replica added; drop minutes before `forget_before`."""
        ...

    async def arrivals(self, *, since: int) -> dict[int, int]:
        """Every replica's arrivals per minute, for the minutes starting at `since` or
        later (minutes nobody saw a request in are absent)."""
        ...

    async def aclose(self) -> None:
        """Flush and release the backend."""
        ...

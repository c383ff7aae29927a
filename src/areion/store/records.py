"""The durable records of agent runs and sessions, as the store keeps them.

A run is checkpointed as deltas: each step appends its new messages and events
and updates the run's counters in one transaction (`Checkpoint`), so the cost of
a checkpoint does not grow with the length of the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ApiKeyRecord",
    "CacheEntryRecord",
    "CacheTier",
    "Checkpoint",
    "ExperimentState",
    "OutcomeKind",
    "OutcomeRecord",
    "ResponseRecord",
    "RunRecord",
    "RunSnapshot",
    "RunStatus",
    "SessionSummary",
    "SessionTurn",
    "StoredResponse",
    "ToolCallRecord",
    "ToolCallStatus",
]

RunStatus = Literal["running", "paused", "finished", "failed"]
CacheTier = Literal["semantic", "plan"]
KeyPriority = Literal["critical", "interactive", "batch"]
ToolCallStatus = Literal["pending_approval", "approved", "rejected", "started", "done"]


@dataclass(slots=True, kw_only=True)
class RunRecord:
    """The summary row of one agent run."""

    run_id: str
    """The run's id, unique within its tenant (another tenant may use the same id)."""
    tenant: str
    """Who owns the run; no other tenant can see it."""
    agent: str
    """Name of the agent."""
    session: str | None = None
    """Session whose memory the run reads and extends."""
    status: RunStatus = "running"
    """Where the run is."""
    input: str = ""
    """The task the run was given."""
    output: str | None = None
    """The final answer, once finished."""
    error: str | None = None
    """Why the run failed."""
    pause_reason: str | None = None
    """Why the run is paused (a limit, or an approval it waits for)."""
    steps: int = 0
    """Model calls made so far."""
    prompt_tokens: int = 0
    """Input tokens used so far."""
    completion_tokens: int = 0
    """Output tokens used so far."""
    cost_usd: float = 0.0
    """Spend so far."""
    message_count: int = 0
    """Messages in the run's transcript (the next message's sequence number)."""
    limits: dict[str, Any] = field(default_factory=dict)
    """Limits raised for this run on resume (max_steps, max_cost_usd, max_tokens)."""
    created: float = 0.0
    """Unix time the run started."""
    updated: float = 0.0
    """Unix time of the last checkpoint."""


@dataclass(slots=True, kw_only=True)
class ToolCallRecord:
    """What is known about one tool call of a run: the ledger of side effects."""

    tenant: str
    """Whose run made the call (run ids are unique within a tenant)."""
    run_id: str
    """The run that made the call."""
    call_id: str
    """The model's id of the call."""
    name: str
    """Tool name."""
    arguments: str
    """JSON arguments."""
    status: ToolCallStatus
    """`started` is written before a side-effecting tool runs, `done` after it."""
    idempotency_key: str = ""
    """Passed to side-effecting tools so the world can refuse a duplicate."""
    result: str | None = None
    """The result, once done."""
    reason: str | None = None
    """A rejection's reason."""
    updated: float = 0.0
    """Unix time of the last change."""


@dataclass(slots=True, kw_only=True)
class Checkpoint:
    """One step's changes to a run, written in one transaction."""

    run: RunRecord
    """The run's row after the step (replaces the stored row)."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    """Messages the step added, in the OpenAI wire shape; they get sequence numbers
    `run.message_count - len(messages)` onwards."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """Events the step emitted (model deltas excluded), for replay to late readers."""
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    """Tool-call records to insert or replace."""
    fence: int = 0
    """The writer's fencing token (from its lease on the run). A checkpoint whose fence
    is lower than the highest one the run has seen is refused with `FencedError`: the
    run was taken over by another replica. 0: no lease (one process owns the store)."""

    def first_message(self) -> int:
        """The sequence number of the first added message; ValueError if the delta does
        not fit its run (fewer messages than it adds, or another run's tool calls)."""
        run = self.run
        first = run.message_count - len(self.messages)
        if first < 0:
            raise ValueError(
                f"checkpoint of run {run.run_id!r}: message_count {run.message_count} "
                f"is less than the {len(self.messages)} messages it adds"
            )
        for call in self.tool_calls:
            if (call.tenant, call.run_id) != (run.tenant, run.run_id):
                raise ValueError(
                    f"checkpoint of run {run.run_id!r}: tool call {call.call_id!r} belongs to "
                    f"run {call.run_id!r} of tenant {call.tenant!r}"
                )
        return first


@dataclass(slots=True, kw_only=True)
class RunSnapshot:
    """Everything needed to resume a run."""

    run: RunRecord
    """The run's row."""
    messages: list[dict[str, Any]]
    """The whole transcript, in order."""
    tool_calls: dict[str, ToolCallRecord]
    """Tool-call records by call id."""


@dataclass(slots=True, kw_only=True)
class SessionTurn:
    """One message of a session's conversation, kept across runs."""

    seq: int
    """Position in the session (0-based, increasing)."""
    role: str
    """`user` or `assistant`."""
    content: str
    """The text."""
    tokens: int
    """Its token count, for the context budget."""


@dataclass(slots=True, kw_only=True)
class SessionSummary:
    """Older turns of a session, folded into a summary by a cheap model."""

    first_seq: int
    """First turn it covers."""
    last_seq: int
    """Last turn it covers."""
    text: str
    """The summary."""
    tokens: int
    """Its token count."""


@dataclass(slots=True, kw_only=True, frozen=True)
class ApiKeyRecord:
    """An API key made by `areion keys create` or the admin API; never the key itself."""

    key_id: str
    """Unique id (`key_` and 16 hex digits); safe to show and to log."""
    digest: bytes
    """SHA-256 of the key: what a request's bearer key is looked up by."""
    tenant: str
    """The tenant the key's calls belong to."""
    name: str
    """Unique among active keys; how limits and errors name the key (its label)."""
    rpm: int | None = None
    """Requests per minute of this key; None: no limit of its own."""
    tpm: int | None = None
    """Tokens (prompt + output) per minute of this key."""
    priority: KeyPriority | None = None
    """The lane of its requests when they send no x-areion-priority header."""
    models: tuple[str, ...] | None = None
    """The model names (groups or routes) it may ask for; None: all."""
    created: float = 0.0
    """Unix time it was made."""
    revoked_at: float | None = None
    """Unix time it was revoked; a revoked key is refused."""

    @property
    def label(self) -> str:
        return self.name


@dataclass(slots=True, kw_only=True)
class CacheEntryRecord:
    """One entry of a semantic tier (answers, or agents' plans), as the store keeps it.

    The store is the source of truth; each replica keeps its vector index in memory and
    loads and follows the entries from here (`Store.cache_entries`)."""

    tier: CacheTier
    """`semantic` (answers) or `plan` (agents' plans)."""
    tenant: str
    """Whose entry it is; no other tenant is ever served it."""
    partition: str
    """What it is looked up within: the context key (semantic) or the agent (plan)."""
    model: str
    """The model group it answers for (semantic), or the agent (plan): what
    `drop_cache_entries` narrows by."""
    text: str
    """The question or task it is looked up by."""
    vector: bytes
    """The text's embedding: float32 values, little-endian."""
    payload: bytes
    """The cached answer or plan (JSON bytes)."""
    created: float
    """Unix time it was stored."""
    expires: float
    """Unix time after which it is never served."""
    threshold: float | None = None
    """A threshold lifted by feedback on a wrong hit (None: the tier's own)."""
    id: int = 0
    """Assigned by the store on insert, unique within the store: every replica knows
    the entry by it."""


@dataclass(slots=True, kw_only=True)
class ResponseRecord:
    """A response of the Responses API (`POST /v1/responses` with `store` on): its own
    turn of the conversation, and the response object it was served as."""

    response_id: str
    """Areion's id of the response (`resp_...`), unique within its tenant."""
    tenant: str
    """Whose response it is; no other tenant can read or continue it."""
    previous_response_id: str | None
    """The response it continues (of the same tenant), or None for a first turn."""
    model: str
    """The model name the client asked for."""
    created: float
    """Unix time it was made."""
    messages: list[dict[str, Any]]
    """This turn's new chat messages (OpenAI wire shape): its input, then its output.
    The instructions are not among them: they are never carried to the next turn."""
    body: dict[str, Any]
    """The response object as it was served, for `GET /v1/responses/{id}`."""


@dataclass(slots=True, kw_only=True)
class StoredResponse:
    """A stored response, with the conversation it ends."""

    record: ResponseRecord
    """The response itself."""
    conversation: list[dict[str, Any]]
    """The messages of every response of its `previous_response_id` chain, oldest
    first, its own last: what a request continuing it starts from."""


OutcomeKind = Literal["run", "request", "session"]


@dataclass(slots=True, kw_only=True)
class OutcomeRecord:
    """Whether a task succeeded, as the application says (`POST /v1/outcomes`)."""

    tenant: str
    """Whose task."""
    kind: OutcomeKind
    """What `target` names: an agent run, a request, or a whole session."""
    target: str
    """The run id, Areion's request id, or the session."""
    success: bool
    """Whether it succeeded."""
    score: float | None = None
    """An optional grade, kept beside."""
    created: float = 0.0
    """Unix time it was posted; a later outcome for the same target replaces it."""


@dataclass(slots=True, kw_only=True)
class ExperimentState:
    """What an experiment's verdict has changed, shared by every replica."""

    name: str
    """The experiment."""
    verdict: str = "running"
    """The last verdict."""
    stopped: tuple[str, ...] = ()
    """Variants a guardrail stopped: their units go back to control."""
    promoted: str | None = None
    """The winner every unit now gets (`promote: true`)."""
    updated: float = 0.0
    """Unix time of the last verdict."""

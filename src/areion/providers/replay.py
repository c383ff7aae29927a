"""Answers from a recorded outcome table (RouterBench CSV format) instead of a model.

Each row holds one prompt and, per model, the answer that model gave, what the call
cost and the score the answer got. Replaying them gives real answers at their real
cost without calling anyone, which is what routing experiments need.

RouterBench stores prompts and answers as Python list literals (`"['text']"`); a
list of several strings is a multi-turn prompt. Both are decoded: the prompt key is
its strings joined with a newline, the way a request's user messages are joined.
"""

from __future__ import annotations

import ast
import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from areion.config import ModelConfig
from areion.csvdata import csv_files, csv_header, csv_rows
from areion.errors import ConfigError, ReplayMissError, UnknownModelError
from areion.types import ChatRequest, ChatResponse, Choice, Message, StreamChunk

_WHAT = "replay data"

__all__ = [
    "ReplayProvider",
    "ReplayRecord",
    "ReplayTable",
    "load_table",
    "normalize_prompt",
    "recorded_models",
    "request_prompts",
]

_RESPONSE_SUFFIX = "|model_response"
_COST_SUFFIX = "|total_cost"
_STREAM_PIECE = 20

_tables: dict[str, ReplayTable] = {}
_tables_lock = threading.Lock()
_path_locks: dict[str, threading.Lock] = {}


def normalize_prompt(text: str) -> str:
    """The lookup key of a prompt: stripped, with every whitespace run made one space."""
    return " ".join(text.split())


def request_prompts(request: ChatRequest) -> list[str]:
    """Texts a recorded prompt may equal: the user messages, then the whole conversation."""
    users = "\n".join(m.text() for m in request.messages if m.role == "user")
    return [users, request.prompt_text()]


@dataclass(slots=True, frozen=True, kw_only=True)
class ReplayRecord:
    """What one model did with one recorded prompt."""

    response: str
    """The text the model answered."""
    cost_usd: float | None
    """What the call cost; None when the recording leaves it blank."""
    score: float | None
    """The score the answer got (0..1); None when the recording leaves it blank."""


@dataclass(slots=True, kw_only=True)
class ReplayTable:
    """A loaded recording: prompts, and per model the record of each prompt."""

    path: str
    """The CSV file or folder it was read from."""
    models: list[str]
    """Model columns, in the order the files name them."""
    prompts: list[str] = field(default_factory=list)
    """Decoded prompt text of each row, in file order."""
    sample_ids: list[str] = field(default_factory=list)
    """`sample_id` of each row."""
    eval_names: list[str] = field(default_factory=list)
    """`eval_name` (task) of each row."""
    records: dict[str, list[ReplayRecord | None]] = field(default_factory=dict)
    """Model → record per row; None where that model has no answer for the row."""
    _index: dict[str, int] = field(default_factory=dict)
    """Normalized prompt → row."""

    def __len__(self) -> int:
        return len(self.prompts)

    def resolve_model(self, name: str) -> str:
        """The model column `name` denotes; `UnknownModelError` naming the known ones."""
        return _resolve_model(name, self.models, self.path)

    def row(self, prompt: str) -> int | None:
        """The row recording `prompt` (whitespace-insensitive), or None."""
        return self._index.get(normalize_prompt(prompt))

    def lookup(self, prompt: str, model: str) -> ReplayRecord | None:
        """What `model` answered to `prompt`, or None if the recording lacks it."""
        row = self.row(prompt)
        if row is None:
            return None
        return self.records[self.resolve_model(model)][row]

    def score(self, prompt: str, model: str) -> float | None:
        """The score `model`'s recorded answer to `prompt` got, or None."""
        record = self.lookup(prompt, model)
        return None if record is None else record.score

    def _add_key(self, text: str, row: int) -> None:
        # The first file and row win: a recording can repeat a prompt across tasks.
        self._index.setdefault(normalize_prompt(text), row)


def _resolve_model(name: str, models: list[str], path: str) -> str:
    # RouterBench names some columns `org/model` (`mistralai/mixtral-8x7b-chat`);
    # configs tend to write only the model part, so that matches when unambiguous.
    if name in models:
        return name
    wanted = name.rsplit("/", 1)[-1].lower()
    matches = [m for m in models if m.rsplit("/", 1)[-1].lower() == wanted]
    if len(matches) == 1:
        return matches[0]
    raise UnknownModelError(
        f"the replay recording at {path} has no model {name!r}; it has: {', '.join(models)}",
        param="model",
    )


def _decode(field_text: str) -> tuple[str, list[str]]:
    """Text of a RouterBench field, and its parts when it is a list literal."""
    stripped = field_text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            value = ast.literal_eval(stripped)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return field_text, []
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return "\n".join(value), value
    return field_text, []


def _number(text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _header_models(header: list[str]) -> list[str]:
    return [name[: -len(_RESPONSE_SUFFIX)] for name in header if name.endswith(_RESPONSE_SUFFIX)]


def recorded_models(path: str | Path) -> list[str]:
    """Model columns of a recording, from its headers only (cheap)."""
    models: list[str] = []
    for file in csv_files(Path(path), _WHAT):
        for model in _header_models(csv_header(file, _WHAT)):
            if model not in models:
                models.append(model)
    return models


def _read_table(path: Path) -> ReplayTable:
    files = csv_files(path, _WHAT)
    table = ReplayTable(path=str(path), models=[])
    for file in files:
        header = csv_header(file, _WHAT)
        if "prompt" not in header:
            raise ConfigError(f"replay data {file} has no 'prompt' column (not RouterBench format)")
        file_models = _header_models(header)
        for model in file_models:
            if model not in table.records:
                table.models.append(model)
                # Rows of earlier files have no answer from a model they do not name.
                table.records[model] = [None] * len(table.prompts)
        for raw in csv_rows(file, _WHAT):
            row = len(table.prompts)
            prompt, parts = _decode(raw.get("prompt") or "")
            table.prompts.append(prompt)
            table.sample_ids.append(raw.get("sample_id") or "")
            table.eval_names.append(raw.get("eval_name") or "")
            table._add_key(prompt, row)
            table._add_key(raw.get("prompt") or "", row)
            # Some multi-part prompts repeat one string; a client sends it once.
            if len(parts) > 1 and len(set(parts)) == 1:
                table._add_key(parts[0], row)
            for model, records in table.records.items():
                response = raw.get(model + _RESPONSE_SUFFIX)
                if model not in file_models or response is None:
                    records.append(None)
                    continue
                records.append(
                    ReplayRecord(
                        response=_decode(response)[0],
                        cost_usd=_number(raw.get(model + _COST_SUFFIX)),
                        score=_number(raw.get(model)),
                    )
                )
    return table


def load_table(path: str | Path) -> ReplayTable:
    """The recording at `path` (a CSV file or a folder of them), read once per process.

    Blocking; from async code call it in a thread. Concurrent first calls for one
    path read it once: the others wait for that read.
    """
    key = str(Path(path).resolve())
    table = _tables.get(key)
    if table is not None:
        return table
    with _tables_lock:
        lock = _path_locks.setdefault(key, threading.Lock())
    with lock:
        table = _tables.get(key)
        if table is None:
            table = _read_table(Path(path))
            _tables[key] = table
    return table


class ReplayProvider:
    """Answers with what one recorded model said, at what it cost."""

    def __init__(self, config: ModelConfig, *, deployment: str) -> None:
        if not config.data:
            raise ConfigError(f"deployment {deployment}: provider 'replay' needs data")
        self.deployment = deployment
        self.path = config.data
        self._key = str(Path(self.path).resolve())
        # Only the headers are read now: a wrong model fails at start, the table
        # itself loads on first use.
        try:
            self.model = _resolve_model(
                config.upstream_model, recorded_models(self.path), self.path
            )
        except UnknownModelError as error:
            raise ConfigError(f"deployment {deployment}: {error.message}") from None

    async def table(self) -> ReplayTable:
        """The loaded recording (read in a thread on first use)."""
        table = _tables.get(self._key)
        if table is None:
            table = await asyncio.to_thread(load_table, self.path)
        return table

    async def score(self, prompt: str, model: str | None = None) -> float | None:
        """The recorded score of `model`'s (default: this deployment's) answer to `prompt`."""
        table = await self.table()
        return table.score(prompt, model or self.model)

    async def _record(self, request: ChatRequest) -> ReplayRecord:
        table = await self.table()
        model = table.resolve_model(self.model)
        candidates = request_prompts(request)
        for text in candidates:
            row = table.row(text)
            if row is None:
                continue
            record = table.records[model][row]
            if record is None:
                raise ReplayMissError(
                    f"the replay recording at {self.path} has no answer from {model} "
                    f"to the prompt {_preview(text)}"
                )
            return record
        raise ReplayMissError(
            f"the prompt {_preview(candidates[0] or candidates[1])} is not in the replay "
            f"recording at {self.path}"
        )

    async def complete(self, request: ChatRequest) -> ChatResponse:
        record = await self._record(request)
        return ChatResponse(
            id=_completion_id(),
            model=self.model,
            created=int(time.time()),
            choices=[
                Choice(
                    message=Message(role="assistant", content=record.response),
                    finish_reason="stop",
                )
            ],
            cost_usd=record.cost_usd,
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        record = await self._record(request)
        completion_id, created = _completion_id(), int(time.time())

        def chunk(
            content: str | None = None, *, role: str | None = None, finish: str | None = None
        ) -> StreamChunk:
            return StreamChunk(
                id=completion_id,
                model=self.model,
                created=created,
                role=role,
                content=content,
                finish_reason=finish,
            )

        yield chunk("", role="assistant")
        text = record.response
        for start in range(0, len(text), _STREAM_PIECE):
            yield chunk(text[start : start + _STREAM_PIECE])
        last = chunk(finish="stop")
        # The recorded cost is exact: carry it, so a streamed replay is priced like a plain one.
        last.cost_usd = record.cost_usd
        yield last

    async def aclose(self) -> None:
        pass  # the table is shared by every replay deployment of the process


def _preview(text: str) -> str:
    short = normalize_prompt(text)
    return repr(short[:80] + ("..." if len(short) > 80 else ""))


def _completion_id() -> str:
    return "chatcmpl-replay-" + uuid.uuid4().hex[:24]

"""Outcome tables for router training and evaluation: what each model scored on each prompt.

Two CSV formats are read, from a file or a folder of files, told apart by their
columns:

- **RouterBench** (`<model>|model_response`, `<model>|total_cost`, a score column per
  model): real scores (0..1) and real costs. Parsed by the replay provider's reader
  (`areion.providers.replay.load_table`), so both read the recordings the same way.
- **RouteLLM** (`prompt`, then a True/False column per model, optionally
  `<model>_response`): no costs, so a call is priced at the model's list price
  (`areion.pricing`) for its tokens: the prompt counted with
  tiktoken (`areion.tokenizer`), the answer counted from `<model>_response` when the
  file has it, else taken as `DEFAULT_OUTPUT_TOKENS`.

A folder may hold a `contaminated_prompts.jsonl` (RouteLLM's list of evaluation
prompts that leaked into its router training data): those prompts are dropped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from areion.csvdata import csv_files, csv_header, csv_rows
from areion.errors import ConfigError
from areion.pricing import Price, default_price
from areion.providers.replay import load_table, normalize_prompt

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "OutcomeTable",
    "load_outcomes",
    "read_outcomes",
]

Format = Literal["routerbench", "routellm"]

# RouteLLM's MMLU recordings keep no answers: the prompt ends in "Answer:" and the
# models answer a letter, a few tokens with framing. Used only when a file has no
# `<model>_response` column.
DEFAULT_OUTPUT_TOKENS = 8

# Calls are priced at list prices from `areion.pricing`, by the lower-cased last part
# of the column name. For RouteLLM's MMLU models: gpt-4-1106-preview at OpenAI's list
# price ($10 input / $30 output per 1M tokens); Mixtral-8x7B-Instruct, which its
# authors do not sell, at $0.60 / $0.60, Together AI's serverless price (an
# assumption: RouteLLM's paper used $0.24 blended, which makes GPT-4 look dearer still).

_RESPONSE_SUFFIX = "|model_response"
_COST_SUFFIX = "|total_cost"
_ROUTELLM_RESPONSE_SUFFIX = "_response"
_CONTAMINATED = "contaminated_prompts.jsonl"
_WHAT = "outcome data"
_BOOLEANS = {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0}


@dataclass(slots=True, kw_only=True)
class OutcomeTable:
    """Per prompt and model: the score the answer got, what it cost, what it said."""

    models: list[str]
    """Model columns, in the order the files name them."""
    prompts: list[str] = field(default_factory=list)
    """Prompt text of each row."""
    groups: list[str] = field(default_factory=list)
    """The task of each row: RouterBench's `eval_name`, else the file's name."""
    scores: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 0)))
    """[rows, models]: the answer's score in 0..1; NaN where the recording has none."""
    costs: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 0)))
    """[rows, models]: USD the call cost (recorded or priced); NaN where unknown."""
    responses: list[list[str]] | None = None
    """[rows][models]: the answer texts, when every file recorded them."""
    sources: list[str] = field(default_factory=list)
    """The files read."""

    def __len__(self) -> int:
        return len(self.prompts)

    def model_index(self, name: str) -> int:
        """The column of model `name` (exact, else by its part after the last `/`)."""
        if name in self.models:
            return self.models.index(name)
        wanted = name.rsplit("/", 1)[-1].lower()
        matches = [i for i, m in enumerate(self.models) if m.rsplit("/", 1)[-1].lower() == wanted]
        if len(matches) == 1:
            return matches[0]
        raise ConfigError(
            f"the outcome data ({', '.join(self.sources)}) has no model {name!r}; "
            f"it has: {', '.join(self.models)}"
        )

    def select(
        self, rows: Sequence[int] | npt.NDArray[np.int64], models: Sequence[str] | None = None
    ) -> OutcomeTable:
        """A table of the given rows (and models, default all), in that order."""
        cols = [self.model_index(m) for m in models] if models is not None else None
        index = np.asarray(rows, dtype=np.int64)
        names = [self.models[c] for c in cols] if cols is not None else list(self.models)
        scores = self.scores[index]
        costs = self.costs[index]
        responses = None
        if self.responses is not None:
            responses = [self.responses[int(r)] for r in index]
        if cols is not None:
            scores, costs = scores[:, cols], costs[:, cols]
            if responses is not None:
                responses = [[row[c] for c in cols] for row in responses]
        return OutcomeTable(
            models=names,
            prompts=[self.prompts[int(r)] for r in index],
            groups=[self.groups[int(r)] for r in index],
            scores=scores,
            costs=costs,
            responses=responses,
            sources=list(self.sources),
        )

    def complete(self, models: Sequence[str] | None = None) -> OutcomeTable:
        """The rows where every one of `models` (default all) has a score and a cost."""
        return self.select(self.complete_rows(models), models)

    def complete_rows(self, models: Sequence[str] | None = None) -> npt.NDArray[np.int64]:
        """Indices of the rows `complete(models)` keeps."""
        cols = [self.model_index(m) for m in models] if models is not None else slice(None)
        scores, costs = self.scores[:, cols], self.costs[:, cols]
        known = ~(np.isnan(scores).any(axis=1) | np.isnan(costs).any(axis=1))
        return np.flatnonzero(known)


def load_outcomes(paths: str | Path | Sequence[str | Path]) -> OutcomeTable:
    """The outcome table of one or more CSV files or folders of them, merged.

    Models missing from a file get NaN scores and costs for its rows; `complete()`
    drops such rows.
    """
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not items:
        raise ConfigError("no outcome data given")
    files: list[Path] = []
    excluded: set[str] = set()
    for item in items:
        path = Path(item)
        files += csv_files(path, _WHAT)
        if path.is_dir():
            excluded |= _contaminated(path / _CONTAMINATED)
    return _merge([read_outcomes(file) for file in files], excluded)


def read_outcomes(file: str | Path) -> OutcomeTable:
    """The outcome table of one CSV file, in whichever format its header shows."""
    path = Path(file)
    header = csv_header(path, _WHAT)
    if "prompt" not in header:
        raise ConfigError(
            f"outcome data {path} has no 'prompt' column; expected RouterBench "
            "(prompt, <model>, <model>|model_response, <model>|total_cost) or RouteLLM "
            "(prompt, one True/False column per model) format"
        )
    if any(name.endswith((_RESPONSE_SUFFIX, _COST_SUFFIX)) for name in header):
        return _read_routerbench(path)
    return _read_routellm(path, header)


def _read_routerbench(path: Path) -> OutcomeTable:
    replay = load_table(path)
    if not replay.models:
        raise ConfigError(f"outcome data {path} has no '<model>|model_response' columns")
    n, m = len(replay), len(replay.models)
    scores = np.full((n, m), np.nan)
    costs = np.full((n, m), np.nan)
    responses = [[""] * m for _ in range(n)]
    for j, model in enumerate(replay.models):
        for i, record in enumerate(replay.records[model]):
            if record is None:
                continue
            if record.score is not None:
                scores[i, j] = record.score
            if record.cost_usd is not None:
                costs[i, j] = record.cost_usd
            responses[i][j] = record.response
    return OutcomeTable(
        models=list(replay.models),
        prompts=list(replay.prompts),
        groups=[name or path.stem for name in replay.eval_names],
        scores=scores,
        costs=costs,
        responses=responses,
        sources=[str(path)],
    )


def _read_routellm(path: Path, header: list[str]) -> OutcomeTable:
    rows = list(csv_rows(path, _WHAT))
    others = [name for name in header if name != "prompt"]
    answer_columns = {
        name[: -len(_ROUTELLM_RESPONSE_SUFFIX)]: name
        for name in others
        if name.endswith(_ROUTELLM_RESPONSE_SUFFIX)
    }
    # A model column is one whose every value reads as a boolean.
    models = [
        name
        for name in others
        if name not in answer_columns.values()
        and rows
        and all((row.get(name) or "").strip().lower() in _BOOLEANS for row in rows)
    ]
    if not models:
        raise ConfigError(
            f"outcome data {path} has no model columns: expected one True/False column "
            "per model beside 'prompt' (RouteLLM format)"
        )
    prices = [_list_price(model, path) for model in models]
    from areion.tokenizer import count_tokens

    n, m = len(rows), len(models)
    scores = np.empty((n, m))
    costs = np.empty((n, m))
    have_answers = all(model in answer_columns for model in models)
    responses: list[list[str]] | None = [] if have_answers else None
    prompts: list[str] = []
    for i, row in enumerate(rows):
        prompt = row.get("prompt") or ""
        prompts.append(prompt)
        prompt_tokens = count_tokens(prompt)
        answers: list[str] = []
        for j, model in enumerate(models):
            scores[i, j] = _BOOLEANS[(row.get(model) or "").strip().lower()]
            column = answer_columns.get(model)
            answer = (row.get(column) or "") if column else ""
            answers.append(answer)
            output_tokens = count_tokens(answer) if column else DEFAULT_OUTPUT_TOKENS
            price = prices[j]
            costs[i, j] = (prompt_tokens * price.input + output_tokens * price.output) / 1e6
        if responses is not None:
            responses.append(answers)
    return OutcomeTable(
        models=models,
        prompts=prompts,
        groups=[path.stem] * n,
        scores=scores,
        costs=costs,
        responses=responses,
        sources=[str(path)],
    )


def _list_price(model: str, path: Path) -> Price:
    price = default_price(model.rsplit("/", 1)[-1].lower())
    if price.input == 0 and price.output == 0:
        raise ConfigError(
            f"outcome data {path}: no list price for model {model!r}, so its calls cannot "
            "be priced; add it to the price table in areion.pricing"
        )
    return price


def _contaminated(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    prompts: set[str] = set()
    try:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            record = json.loads(line)
            text = record.get("eval_prompt") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise ConfigError(f"{path}:{number}: expected an object with 'eval_prompt'")
            prompts.add(normalize_prompt(text))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from None
    return prompts


def _merge(tables: list[OutcomeTable], excluded: set[str]) -> OutcomeTable:
    models: list[str] = []
    for table in tables:
        models += [m for m in table.models if m not in models]
    n = sum(len(t) for t in tables)
    merged = OutcomeTable(
        models=models,
        scores=np.full((n, len(models)), np.nan),
        costs=np.full((n, len(models)), np.nan),
        responses=[] if all(t.responses is not None for t in tables) else None,
    )
    start = 0
    for table in tables:
        cols = [models.index(m) for m in table.models]
        end = start + len(table)
        merged.scores[start:end, cols] = table.scores
        merged.costs[start:end, cols] = table.costs
        merged.prompts += table.prompts
        merged.groups += table.groups
        merged.sources += table.sources
        if merged.responses is not None and table.responses is not None:
            for answers in table.responses:
                row = [""] * len(models)
                for c, answer in zip(cols, answers, strict=True):
                    row[c] = answer
                merged.responses.append(row)
        start = end
    if excluded:
        keep = [i for i, p in enumerate(merged.prompts) if normalize_prompt(p) not in excluded]
        if len(keep) < len(merged):
            merged = merged.select(keep)
    return merged

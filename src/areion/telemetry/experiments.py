"""Experiments: units split between variants, judged against control.

Assignment is weighted rendezvous hashing: each variant draws an exponential clock
from a hash of (experiment, unit, variant) scaled by its weight, and the first to ring
wins. A variant wins with probability exactly weight / Σ weights; the draw depends on
no other variant, so the order variants are written in changes nothing, and changing
one weight moves units only to or from that variant. Every replica, and every restart,
computes the same answer with no shared state.

A unit is whoever must always get the same variant: a session, an end user, an agent
run or a single request. A call that lacks the unit's id (no session given, say) is a
unit of its own. The analysis is in telemetry/verdicts.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from areion.config import ExperimentConfig, VariantConfig
from areion.errors import ConfigError, RequestError

if TYPE_CHECKING:
    from areion.agent.agent import Agent

__all__ = [
    "Assignment",
    "ExperimentNotFoundError",
    "Experiments",
    "OutcomeTargetError",
    "Split",
    "assign",
]

_SCALE = float(1 << 64)


class ExperimentNotFoundError(RequestError):
    """No experiment of that name is configured."""

    status = 404
    code = "experiment_not_found"


class OutcomeTargetError(RequestError):
    """An outcome names a call the caller never made."""

    status = 404
    code = "outcome_target_not_found"


class Split:
    """One experiment's variants and weights, ready to assign units: each variant's
    hash state is made once, so a unit costs one short hash per variant."""

    __slots__ = ("_clocks", "experiment")

    def __init__(self, experiment: str, weights: Sequence[tuple[str, float]]) -> None:
        self.experiment = experiment
        self._clocks = [
            (name, hashlib.blake2b(f"{experiment}\x1f{name}\x1f".encode(), digest_size=8), 1.0 / w)
            for name, w in weights
            if w > 0
        ]
        if not self._clocks:
            raise ValueError(f"experiment {experiment!r}: no variant has a weight above 0")

    def variant(self, unit: str) -> str:
        """The variant `unit` gets: variant i with probability w_i / Σw."""
        data = unit.encode()
        best, best_clock = "", math.inf
        for name, state, scale in self._clocks:
            h = state.copy()
            h.update(data)
            uniform = (int.from_bytes(h.digest(), "big") + 0.5) / _SCALE
            clock = -math.log(uniform) * scale
            if clock < best_clock:
                best, best_clock = name, clock
        return best


def assign(experiment: str, unit: str, weights: Sequence[tuple[str, float]]) -> str:
    """The variant `unit` gets in `experiment`: variant i with probability w_i / Σw,
    the same on every replica, whatever the order of `weights`."""
    return Split(experiment, weights).variant(unit)


@dataclass(slots=True, kw_only=True, frozen=True)
class Assignment:
    """The variant a call or run is served by."""

    experiment: str
    """The experiment."""
    variant: VariantConfig
    """The variant, with what it changes."""
    instructions: str | None = None
    """Agent experiments: the variant's instructions (its file read at start-up)."""

    @property
    def label(self) -> str:
        """`experiment:variant`, as booked on ledger rows and runs."""
        return f"{self.experiment}:{self.variant.name}"

    def agent(self, agent: Agent) -> Agent:
        """`agent` as the variant runs it: its instructions, model and temperature."""
        variant = self.variant
        changes: dict[str, Any] = {}
        if self.instructions is not None:
            changes["instructions"] = self.instructions
        if variant.model or variant.route:
            changes["model"] = variant.model or variant.route
        if "temperature" in variant.params:
            changes["temperature"] = variant.params["temperature"]
        return dataclasses.replace(agent, **changes) if changes else agent


class _Live:
    """One experiment as it runs: its split, and what its verdict has changed."""

    __slots__ = ("config", "instructions", "promoted", "split", "stopped", "variants")

    def __init__(self, config: ExperimentConfig, instructions: dict[str, str]) -> None:
        self.config = config
        self.variants = {v.name: v for v in config.variants}
        self.instructions = instructions
        self.split = Split(config.name, [(v.name, v.weight) for v in config.variants])
        self.stopped: frozenset[str] = frozenset()
        self.promoted: str | None = None

    def assignment(self, unit: str) -> Assignment:
        if self.promoted is not None:
            name = self.promoted
        else:
            name = self.split.variant(unit)
            # A variant stopped by a guardrail sends its units back to control; the
            # others keep theirs.
            if name in self.stopped:
                name = self.config.control
        return Assignment(
            experiment=self.config.name,
            variant=self.variants[name],
            instructions=self.instructions.get(name),
        )


class Experiments:
    """The configured experiments, as the runtime applies them to calls and runs."""

    def __init__(self, configs: Iterable[ExperimentConfig], *, base: Path | None = None) -> None:
        self._agents: dict[str, _Live] = {}
        self._models: dict[str, _Live] = {}
        self._all: dict[str, _Live] = {}
        for config in configs:
            live = _Live(config, _instructions(config, base or Path.cwd()))
            self._all[config.name] = live
            scope = config.applies_to
            if scope.agent is not None:
                table, key = self._agents, scope.agent
            else:
                table, key = self._models, scope.model or scope.route or ""
            if key in table:
                raise ConfigError(
                    f"experiments.{config.name}: {key!r} is already in experiment "
                    f"{table[key].config.name!r}; a call or run is in one experiment at most"
                )
            table[key] = live

    def __bool__(self) -> bool:
        return bool(self._all)

    @property
    def configs(self) -> list[ExperimentConfig]:
        return [live.config for live in self._all.values()]

    def get(self, name: str) -> ExperimentConfig | None:
        live = self._all.get(name)
        return live.config if live else None

    def for_call(
        self, model: str, *, request_id: str, session: str | None, user: str | None
    ) -> Assignment | None:
        """The variant of a plain call to `model` (a model group or route), if one of the
        experiments applies to it."""
        live = self._models.get(model)
        if live is None:
            return None
        return live.assignment(_unit(live.config.unit, request_id, session, user))

    def for_run(
        self, agent: str, *, run_id: str, session: str | None, user: str | None
    ) -> Assignment | None:
        """The variant of a run of `agent`, if one of the experiments applies to it."""
        live = self._agents.get(agent)
        if live is None:
            return None
        unit = live.config.unit
        return live.assignment(_unit("request" if unit == "run" else unit, run_id, session, user))

    def settle(
        self, name: str, *, stopped: Iterable[str] = (), promoted: str | None = None
    ) -> None:
        """What the verdict has decided: variants stopped by a guardrail go back to
        control, and a promoted winner takes every unit."""
        live = self._all.get(name)
        if live is None:
            return
        live.stopped = frozenset(stopped) - {live.config.control}
        live.promoted = promoted if promoted in live.variants else None


def _unit(kind: str, own: str, session: str | None, user: str | None) -> str:
    if kind == "session" and session:
        return "s:" + session
    if kind == "user" and user:
        return "u:" + user
    return "r:" + own


def _instructions(config: ExperimentConfig, base: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for variant in config.variants:
        if variant.instructions is not None:
            found[variant.name] = variant.instructions
        elif variant.instructions_file is not None:
            path = base / variant.instructions_file
            try:
                found[variant.name] = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    f"experiments.{config.name}.variants.{variant.name}.instructions_file: "
                    f"cannot read {path}: {exc.strerror}"
                ) from exc
    return found

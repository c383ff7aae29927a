"""How each simulated model behaves: latency, output length, price, faults and capacity.

A profile says nothing about answer quality; it shapes the protocol-level behaviour
(time to first token, pacing, 429s and 500s, queueing) that a gateway must handle.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["SimProfile", "builtin_profiles", "load_profiles", "parse_profiles"]


@dataclass(slots=True, kw_only=True)
class SimProfile:
    """One simulated model."""

    name: str
    """Model id clients ask for."""
    ttft_ms: float = 150.0
    """Milliseconds from admission to the first token."""
    tokens_per_s: float = 150.0
    """Output pace after the first token."""
    output_tokens: int = 96
    """Typical answer length when the request sets no max_tokens (varies +-25% by prompt)."""
    price_input: float = 0.0
    """USD per 1M input tokens (informational)."""
    price_output: float = 0.0
    """USD per 1M output tokens (informational)."""
    error_rate: float = 0.0
    """Probability that a request fails with a 500."""
    rate_limit_rate: float = 0.0
    """Probability that a request is refused with a 429."""
    retry_after_s: float = 1.0
    """Retry-After sent with a 429."""
    slow_tail_prob: float = 0.0
    """Probability that a request is slow."""
    slow_tail_multiplier: float = 1.0
    """Factor applied to a slow request's latency."""
    max_running: int = 64
    """Requests generated at once; more wait in a queue."""
    kv_cache_tokens: int = 262_144
    """KV-cache capacity in tokens; usage is the tokens of running requests over this."""
    tool_rounds: int = 1
    """Rounds of tool calls (when tools are offered) before the model answers in text."""

    def __post_init__(self) -> None:
        _check(self)


_FIELDS = tuple(field.name for field in dataclasses.fields(SimProfile))
_INT_FIELDS = {"output_tokens", "max_running", "kv_cache_tokens", "tool_rounds"}
_PROBABILITIES = {"error_rate", "rate_limit_rate", "slow_tail_prob"}
_POSITIVE = {"tokens_per_s", "output_tokens", "max_running", "kv_cache_tokens"}


def _check(profile: SimProfile) -> None:
    if not isinstance(profile.name, str) or not profile.name:
        raise ValueError(f"name: must be a non-empty string, got {profile.name!r}")
    for name in _FIELDS[1:]:
        value = getattr(profile, name)
        # bool is an int subclass; `true` in YAML is never a sensible number here.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name}: must be a number, got {value!r}")
        if name in _INT_FIELDS and not isinstance(value, int):
            raise ValueError(f"{name}: must be a whole number, got {value!r}")
        if value < 0 or (name in _POSITIVE and value == 0):
            bound = "> 0" if name in _POSITIVE else ">= 0"
            raise ValueError(f"{name}: must be {bound}, got {value!r}")
        if name in _PROBABILITIES and value > 1:
            raise ValueError(f"{name}: must be a probability between 0 and 1, got {value!r}")
    if profile.slow_tail_multiplier < 1:
        raise ValueError(
            f"slow_tail_multiplier: must be >= 1, got {profile.slow_tail_multiplier!r}"
        )
    if profile.error_rate + profile.rate_limit_rate > 1:
        raise ValueError(
            "error_rate: error_rate + rate_limit_rate must not exceed 1, got "
            f"{profile.error_rate!r} + {profile.rate_limit_rate!r}"
        )


def builtin_profiles() -> dict[str, SimProfile]:
    """Fresh copies of the built-in profiles: `sim-fast`, `sim-strong` and `sim-flaky`."""
    fast = SimProfile(
        name="sim-fast",
        ttft_ms=150,
        tokens_per_s=150,
        output_tokens=96,
        price_input=0.15,
        price_output=0.60,
        slow_tail_prob=0.01,
        slow_tail_multiplier=4.0,
        max_running=64,
        kv_cache_tokens=262_144,
    )
    strong = SimProfile(
        name="sim-strong",
        ttft_ms=400,
        tokens_per_s=60,
        output_tokens=192,
        price_input=2.50,
        price_output=10.00,
        slow_tail_prob=0.02,
        slow_tail_multiplier=3.0,
        max_running=16,
        kv_cache_tokens=131_072,
    )
    flaky = dataclasses.replace(
        fast, name="sim-flaky", error_rate=0.2, rate_limit_rate=0.1, retry_after_s=1.0
    )
    return {profile.name: profile for profile in (fast, strong, flaky)}


def parse_profiles(
    data: Any, *, base: Mapping[str, SimProfile] | None = None, source: str = "profiles"
) -> dict[str, SimProfile]:
    """`base` (the built-ins by default) updated with a list of profile mappings.

    An entry named like an existing profile overrides only the fields it sets.
    A problem raises `ValueError` naming the entry and the field.
    """
    profiles = dict(builtin_profiles() if base is None else base)
    if data is None:
        return profiles
    if not isinstance(data, list):
        raise ValueError(f"{source}: must be a list of profile mappings, not {type(data).__name__}")
    for index, entry in enumerate(data):
        where = f"{source}[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be a mapping, not {type(entry).__name__}")
        unknown = sorted(str(key) for key in entry if key not in _FIELDS)
        if unknown:
            raise ValueError(
                f"{where}: unknown field {unknown[0]!r} (known fields: {', '.join(_FIELDS)})"
            )
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: name: required, a non-empty string")
        try:
            existing = profiles.get(name)
            if existing is not None:
                profile = dataclasses.replace(existing, **entry)
            else:
                profile = SimProfile(**entry)
        except ValueError as error:
            raise ValueError(f"{where} ({name}): {error}") from None
        profiles[name] = profile
    return profiles


def load_profiles(
    path: str | os.PathLike[str], *, base: Mapping[str, SimProfile] | None = None
) -> dict[str, SimProfile]:
    """`base` (the built-ins by default) plus the profiles of a YAML file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"cannot read sim profiles file {file}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{file}: not valid YAML: {error}") from None
    return parse_profiles(data, base=base, source=str(file))

"""A simulated model for local work and tests: protocol, latency, load and faults, not quality."""

from __future__ import annotations

from areion.sim.engine import SimEngine, SimLoad, estimate_prompt_tokens
from areion.sim.profiles import SimProfile, builtin_profiles, load_profiles, parse_profiles

__all__ = [
    "SimEngine",
    "SimLoad",
    "SimProfile",
    "builtin_profiles",
    "estimate_prompt_tokens",
    "load_profiles",
    "parse_profiles",
]

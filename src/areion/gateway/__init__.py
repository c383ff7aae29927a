"""Deployments, balancing, resilience and fallbacks."""

from areion.gateway.deployments import Deployment, ModelGroup, build_groups, pick_deployment
from areion.gateway.gateway import Gateway
from areion.gateway.load import LoadProbe, RemoteLoad, parse_vllm_metrics
from areion.gateway.resilience import BreakerState, CircuitBreaker, backoff_delay

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "Deployment",
    "Gateway",
    "LoadProbe",
    "ModelGroup",
    "RemoteLoad",
    "backoff_delay",
    "build_groups",
    "parse_vllm_metrics",
    "pick_deployment",
]

"""Metrics and the spend ledger."""

from areion.telemetry.ledger import Ledger
from areion.telemetry.metrics import DeploymentMetrics, Metrics

__all__ = ["DeploymentMetrics", "Ledger", "Metrics"]

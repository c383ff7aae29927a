"""The control plane: rate limits and budgets at admission, priority lanes before the model."""

from areion.control.admission import Admission
from areion.control.budgets import PriceBound, price_bound
from areion.control.lanes import LaneLimits, Lanes, OverloadedError

__all__ = ["Admission", "LaneLimits", "Lanes", "OverloadedError", "PriceBound", "price_bound"]

"""The control plane: rate limits and budgets, applied at admission."""

from areion.control.admission import Admission
from areion.control.budgets import PriceBound, price_bound

__all__ = ["Admission", "PriceBound", "price_bound"]

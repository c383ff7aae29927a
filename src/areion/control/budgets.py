"""Budgets: what a call may cost, and the tenant's day and month windows it must fit.

A call's cost is estimated before it runs, at the most expensive price it could
be billed at (the dearest deployment of its group, or of a route's candidates) for
its prompt tokens plus `max_tokens`. The estimate is reserved in the tenant's
windows in one atomic step and replaced by the real cost when the call ends, so
concurrent calls can never together spend more than a window holds.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterable
from dataclasses import dataclass

from areion.config import TenantConfig
from areion.errors import BudgetExceededError
from areion.pricing import PriceBound, price_bound
from areion.store.counters import BudgetState, Reservation

__all__ = [
    "IN_FLIGHT_RETRY_S",
    "BudgetWindow",
    "PriceBound",
    "Windows",
    "exceeded",
    "in_flight_only",
    "price_bound",
]

_DAY = 86_400


@dataclass(slots=True, frozen=True, kw_only=True)
class BudgetWindow:
    """One tenant's budget for one UTC day or month."""

    tenant: str
    period: str
    """`day` or `month`."""
    label: str
    """The window as people write it: `2025-01-31` or `2025-01`."""
    limit: float
    ends: float
    """Unix time at which the next window starts."""

    @property
    def key(self) -> str:
        return f"usd:{self.period}:{self.tenant}:{self.label}"

    def reservation(self, amount: float) -> Reservation:
        return Reservation(key=self.key, amount=amount, limit=self.limit)


class Windows:
    """The current budget windows of each tenant that has budgets."""

    def __init__(self, tenants: Iterable[TenantConfig]) -> None:
        self._tenants = {
            t.name: t
            for t in tenants
            if t.budget_usd_per_day is not None or t.budget_usd_per_month is not None
        }
        self._day = -1
        self._current: dict[str, tuple[BudgetWindow, ...]] = {}

    def __bool__(self) -> bool:
        return bool(self._tenants)

    @property
    def tenants(self) -> list[str]:
        return list(self._tenants)

    def of(self, tenant: str, now: float) -> tuple[BudgetWindow, ...]:
        """The tenant's windows at Unix time `now` (empty when it has no budget)."""
        day = int(now // _DAY)
        if day != self._day:  # computed once a day, not per call
            self._day = day
            self._current = {name: self._windows(t, day) for name, t in self._tenants.items()}
        return self._current.get(tenant, ())

    @staticmethod
    def _windows(tenant: TenantConfig, day: int) -> tuple[BudgetWindow, ...]:
        start = time.gmtime(day * _DAY)
        out: list[BudgetWindow] = []
        if tenant.budget_usd_per_day is not None:
            out.append(
                BudgetWindow(
                    tenant=tenant.name,
                    period="day",
                    label=time.strftime("%Y-%m-%d", start),
                    limit=tenant.budget_usd_per_day,
                    ends=(day + 1) * _DAY,
                )
            )
        if tenant.budget_usd_per_month is not None:
            year, month = start.tm_year, start.tm_mon
            following = (year + 1, 1) if month == 12 else (year, month + 1)
            out.append(
                BudgetWindow(
                    tenant=tenant.name,
                    period="month",
                    label=f"{year:04d}-{month:02d}",
                    limit=tenant.budget_usd_per_month,
                    ends=calendar.timegm((*following, 1, 0, 0, 0)),
                )
            )
        return tuple(out)

    @staticmethod
    def start(window: BudgetWindow) -> float:
        """Unix time at which `window` began."""
        if window.period == "day":
            return window.ends - _DAY
        year, month = (int(part) for part in window.label.split("-"))
        return calendar.timegm((year, month, 1, 0, 0, 0))


# When only calls in flight stand in the way, they settle within a call's time.
IN_FLIGHT_RETRY_S = 1.0


def in_flight_only(
    windows: tuple[BudgetWindow, ...],
    states: list[BudgetState],
    amount: float,
    *,
    held: float = 0.0,
) -> bool:
    """Whether a refused reservation would fit once the other calls in flight settle (at
    no cost): every window holds its spend, what this call already `held`, and `amount`."""
    return all(
        state.spent + held + amount <= window.limit
        for window, state in zip(windows, states, strict=True)
    )


def exceeded(
    windows: tuple[BudgetWindow, ...],
    states: list[BudgetState],
    amount: float,
    now: float,
    *,
    clause: str | None = None,
) -> BudgetExceededError:
    """The error for a refused reservation: it names the window that did not fit, and
    says when reservations of calls in flight are all that stands in the way.

    `clause` says what needed `amount` (default: "this call may cost up to $amount")."""
    for window, state in zip(windows, states, strict=True):
        if state.spent + state.reserved + amount > window.limit:
            break
    clause = clause or f"this call may cost up to ${amount:.6f}"
    headers = {"x-areion-budget": f"{window.period}:{window.label}"}
    if state.spent + amount <= window.limit:
        message = (
            f"Budget busy: tenant '{window.tenant}' has ${window.limit - state.spent:.6f} "
            f"left of its ${window.limit:.2f} budget per {window.period} ({window.label}), "
            f"but ${state.reserved:.6f} of it is reserved by calls in flight, and {clause}. "
            "Retry when they have settled (they are released at their real cost), or "
            "lower max_tokens."
        )
        return BudgetExceededError(
            message, budget=window.period, retry_after=IN_FLIGHT_RETRY_S, headers=headers
        )
    wait = window.ends - now
    message = (
        f"Budget exceeded: tenant '{window.tenant}' has a budget of ${window.limit:.2f} per "
        f"{window.period} ({window.label}); ${state.spent:.6f} is spent and "
        f"${state.reserved:.6f} reserved by calls in flight, and {clause}. The budget "
        f"renews in {wait / 3600:.1f} h; lower max_tokens or raise "
        f"budget_usd_per_{window.period} to go on now."
    )
    return BudgetExceededError(message, budget=window.period, retry_after=wait, headers=headers)

"""Budget burn over a day, recomputed from the recorded calls.

For every minute of the day, the usage of each budget's window ending then
(its daily, hourly or monthly period in the budget's time zone, or the last
``rolling_s`` seconds) as a fraction of its limit: the larger of tokens/limit
and cost/limit. Reservations are not in the history, so this is settled usage.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from engine.budget import period_bounds
from engine.policy.model import BudgetSpec, PolicySet
from engine.reporting.data import DayHistory

BURN_NOTE = ("Budget burn is recomputed from the recorded calls: for every minute, the usage in the budget's "
             "window ending then (its hourly, daily or monthly period in the budget's time zone, or the last "
             "rolling_s seconds) as a share of its limit, the larger of tokens and cost. Reservations are not "
             "recorded, so this is settled usage.")


@dataclass(frozen=True, slots=True)
class Burn:
    spec: BudgetSpec
    models: tuple[str, ...]
    hourly: tuple[float, ...]  # highest fraction reached in each hour of the day
    peak: float
    peak_at: float  # wall time (end of the minute) of the peak; the day's start when nothing was used
    peak_tokens: float
    peak_cost: float


def applies_to(spec: BudgetSpec, policy: PolicySet, seen: Iterable[str]) -> tuple[str, ...]:
    """The models whose calls spend from ``spec`` (global budgets also take models the policy lost)."""
    if spec.scope == "model":
        return (spec.target or "",)
    if spec.scope == "tier":
        return tuple(sorted(m for m, s in policy.models.items() if s.tier == spec.target))
    return tuple(sorted(set(policy.models) | set(seen)))


def _fraction(spec: BudgetSpec, tokens: float, cost: float) -> float:
    parts = [tokens / spec.tokens if spec.tokens else 0.0, cost / spec.cost_usd if spec.cost_usd else 0.0]
    return max(parts)


def burn(hist: DayHistory, spec: BudgetSpec, models: Sequence[str]) -> Burn:
    """How full ``spec`` was through ``hist``'s day."""
    lo, hi, first = math.ceil(hist.start / 60), math.ceil(hist.end / 60), hist.usage_from
    n = hi - first
    tok, cost = [0] * (n + 1), [0.0] * (n + 1)
    for m in models:
        for minute, (used, c) in hist.usage.get(m, {}).items():
            if first <= minute < hi:
                tok[minute - first + 1] += used
                cost[minute - first + 1] += c
    for i in range(1, n + 1):
        tok[i] += tok[i - 1]
        cost[i] += cost[i - 1]
    hourly = [0.0] * len(hist.hours)
    peak, peak_at, peak_tok, peak_cost = 0.0, hist.start, 0.0, 0.0
    ps: float = math.inf
    pe: float = -math.inf
    for minute in range(lo, hi):
        t = minute * 60.0 + 60.0
        if spec.period == "rolling":
            ps = t - (spec.rolling_s or 0.0)
        elif not ps <= t - 1e-3 < pe:
            ps, end = period_bounds(spec, t - 1e-3)
            pe = end if end is not None else math.inf
        start_minute = math.ceil(ps / 60)
        used_t, used_c = float(tok[minute - first + 1]), cost[minute - first + 1]
        if start_minute >= first:
            used_t -= tok[start_minute - first]
            used_c -= cost[start_minute - first]
        else:
            before = hist.usage_before.get((start_minute, first), {})
            used_t += sum(before.get(m, (0, 0.0))[0] for m in models)
            used_c += sum(before.get(m, (0, 0.0))[1] for m in models)
        f = _fraction(spec, used_t, used_c)
        hour = min(len(hourly) - 1, int((minute * 60.0 - hist.start) // 3600))
        if f > hourly[hour]:
            hourly[hour] = f
        if f > peak:
            peak, peak_at, peak_tok, peak_cost = f, t, used_t, used_c
    return Burn(spec, tuple(models), tuple(hourly), peak, peak_at, peak_tok, peak_cost)

"""What one strategy did with a set of requests: counts that add up, and the figures of the summary.

Definitions (the same for the engine, the baselines and replay):

* a *call* is one request; it *succeeds* when some attempt answers;
* *availability* = successful calls / calls;
* *tokens spent* = the prompt tokens of every attempt (a failed attempt's
  prompt was sent: providers bill a timeout or a truncated answer, and even a
  rejected one counts against token-per-minute limits) plus the output
  tokens received (a success's, or a truncated answer's partial output);
  *tokens per successful call* = tokens spent / successful calls;
* *cost* prices those same tokens at the attempted model's list price (an
  upper bound: a provider does not bill a 429);
* a *failover* is a call whose first attempt failed and that another model
  answered; *time to failover* runs from the call's arrival to the start of
  the attempt that answered (backoff, retries and waits included);
* *latency* of a call is arrival to answer, for successful calls.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from engine.policy.model import PolicySet

__all__ = ["Tally", "percentile", "prices"]


def prices(policy: PolicySet) -> dict[str, tuple[float, float]]:
    """USD per input and per output token, per model."""
    return {name: (spec.price.input_per_1m / 1e6, spec.price.output_per_1m / 1e6)
            for name, spec in policy.models.items()}


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The nearest-rank ``q``-quantile (0 < q <= 1) of sorted values, None when empty."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 1))
    return sorted_values[int(rank) - 1]


class Tally:
    """Counters of one strategy's run; :meth:`summary` turns them into the reported figures."""

    def __init__(self, name: str, label: str, prices: Mapping[str, tuple[float, float]]) -> None:
        self.name = name
        self.label = label
        self.prices = prices
        self.calls = 0
        self.successes = 0
        self.attempts = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.cost = 0.0
        self.failed_by: Counter[str] = Counter()
        self.tiers: dict[str, list[int]] = {}
        self.served: Counter[str] = Counter()
        self.failover_s: list[float] = []
        self.retried_same_model = 0
        self.latency_s: list[float] = []
        # filled from the engine's events (the baselines have none)
        self.breaker_trips: Counter[str] = Counter()
        self.breaker_closes: Counter[str] = Counter()
        self.budget_events: list[tuple[str, str, float]] = []  # (BudgetWarning|BudgetExhausted, budget, wall)
        self.fallback_decisions = 0
        self.anomalies: Counter[str] = Counter()
        self.quota_refusals = 0

    def spend(self, model: str, tokens_in: int, tokens_out: int) -> None:
        """One attempt on ``model`` spent these tokens."""
        self.attempts += 1
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out
        pin, pout = self.prices.get(model, (0.0, 0.0))
        self.cost += tokens_in * pin + tokens_out * pout

    def call(self, tier: str, ok: bool, model: str | None, latency_s: float, reason: str | None = None) -> None:
        """One call ended: answered by ``model`` after ``latency_s``, or failed for ``reason``."""
        self.calls += 1
        row = self.tiers.get(tier)
        if row is None:
            row = self.tiers[tier] = [0, 0]
        row[0] += 1
        if ok:
            self.successes += 1
            row[1] += 1
            self.served[model or "?"] += 1
            self.latency_s.append(latency_s)
        else:
            self.failed_by[reason or "unknown"] += 1

    def summary(self) -> dict[str, Any]:
        """The figures of this run as plain data (JSON-ready, deterministic)."""
        lat = sorted(self.latency_s)
        fo = sorted(self.failover_s)
        ok = self.successes
        return {
            "name": self.name,
            "label": self.label,
            "calls": self.calls,
            "successes": ok,
            "failures": self.calls - ok,
            "availability": ok / self.calls if self.calls else None,
            "failed_by": dict(sorted(self.failed_by.items())),
            "attempts": self.attempts,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "tokens_per_success": (self.tokens_in + self.tokens_out) / ok if ok else None,
            "cost_usd": round(self.cost, 6),
            "cost_per_success_usd": self.cost / ok if ok else None,
            "latency_p50_s": percentile(lat, 0.5),
            "latency_p95_s": percentile(lat, 0.95),
            "failovers": len(fo),
            "time_to_failover_p50_s": percentile(fo, 0.5),
            "time_to_failover_p95_s": percentile(fo, 0.95),
            "time_to_failover_max_s": fo[-1] if fo else None,
            "retried_same_model": self.retried_same_model,
            "tiers": {t: {"calls": c, "successes": s} for t, (c, s) in sorted(self.tiers.items())},
            "served_by": dict(self.served.most_common()),
            "breaker_trips": dict(sorted(self.breaker_trips.items())),
            "breaker_closes": dict(sorted(self.breaker_closes.items())),
            "budget_events": [{"event": k, "budget": b, "at": at} for k, b, at in self.budget_events],
            "fallback_decisions": self.fallback_decisions,
            "anomalies": dict(sorted(self.anomalies.items())),
            "quota_refusals": self.quota_refusals,
        }

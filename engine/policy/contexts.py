"""The names each kind of rule expression may use, with their types.

Model and tier metrics come from the rolling window the monitoring policy
sets; daily names come from a day of recorded history. ``errors_<class>``
names exist for every error class of the policy set.
"""

from __future__ import annotations

from collections.abc import Iterable

_N, _S = "number", "string"

#: Rolling metrics shared by models and tiers.
METRICS: dict[str, str] = {
    "calls": _N,  # calls that reported a result in the window
    "successes": _N,
    "errors": _N,  # calls that ended in any error class
    "failures": _N,  # errors whose class counts as a breaker failure
    "success_rate": _N,  # successes / calls, 0..1 (1 when no calls)
    "error_rate": _N,  # errors / calls, 0..1 (0 when no calls)
    "slow_calls": _N,
    "slow_rate": _N,  # 0..1
    "p50_ms": _N,
    "p95_ms": _N,
    "p99_ms": _N,
    "mean_ms": _N,
    "tokens_in": _N,
    "tokens_out": _N,
    "cost_usd": _N,
    "fallbacks": _N,  # calls that landed here as a fallback
    "fallback_rate": _N,  # fallbacks / calls, 0..1
}

MODEL_ONLY: dict[str, str] = {
    "model": _S,
    "tier": _S,
    "provider": _S,
    "in_flight": _N,
    "budget_used": _N,  # highest used fraction over the model's budgets, 0..
    "breaker_open": _N,  # 1 while the breaker is open or forced open, else 0
    "context_window": _N,
    "price_in": _N,  # USD per 1M input tokens
    "price_out": _N,
}

SCORE_ONLY: dict[str, str] = {"priority": _N}  # 0 for the first candidate, 1 for the next...

TIER_ONLY: dict[str, str] = {"tier": _S, "models": _N, "open_breakers": _N}

#: A day's aggregates, for recommendation rules.
DAILY: dict[str, str] = {
    **{k: v for k, v in METRICS.items()},
    "availability": _N,  # 1 - failures/calls over recorded attempts (caller errors excluded), 0..1
    "cost_per_success": _N,
    "tokens_per_success": _N,
    "breaker_opens": _N,
    "budget_warnings": _N,
    "budget_exhaustions": _N,
    "budget_used_max": _N,
    "anomalies": _N,
    "cost_change": _N,  # relative change from the previous day (0.1 = +10%)
    "calls_change": _N,
    "scope": _S,
    "model": _S,  # "" outside model scope
    "tier": _S,  # "" in global scope
}


def error_names(classes: Iterable[str]) -> dict[str, str]:
    return {f"errors_{c}": _N for c in classes}


def model_context(classes: Iterable[str]) -> dict[str, str]:
    return {**METRICS, **MODEL_ONLY, **error_names(classes)}


def score_context(classes: Iterable[str]) -> dict[str, str]:
    return {**model_context(classes), **SCORE_ONLY}


def tier_context(classes: Iterable[str]) -> dict[str, str]:
    return {**METRICS, **TIER_ONLY, **error_names(classes)}


def daily_context(classes: Iterable[str]) -> dict[str, str]:
    return {**DAILY, **error_names(classes)}

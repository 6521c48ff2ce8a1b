"""A day's aggregates as the names rule expressions use (:data:`engine.policy.contexts.DAILY`).

Availability, as the report and the ``availability`` name define it: the
share of recorded calls that did not fail through the model's fault,
``1 - failures / calls``, where ``failures`` are errors whose class counts
as a breaker failure (timeouts, 5xx, 429...). Caller errors (bad_request,
content_policy, context_window) would fail on any model and are left out.
This is attempt availability: a request rescued by a fallback still counts
its failed attempt. Request availability (:func:`request_availability`) is
served requests / requests: the history counts each request's first attempt
and keeps each request refused before any attempt as a ``RequestRefused``
event; the report's headline shows it beside attempt availability.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.reporting.data import Cell

AVAILABILITY_NOTE = (
    "Availability = 1 − failures / calls over recorded calls (attempts): failures are errors whose class "  # noqa: RUF001
    "counts against the model's breaker; caller errors (bad request, content policy, context window) are "
    "left out. A request rescued by a fallback still counts its failed attempt. Request availability = "
    "served requests / requests, where requests refused with NoModelAvailable before any attempt count as "
    "not served.")


def metrics(cell: Cell, classes: Iterable[str]) -> dict[str, Any]:
    """The METRICS names plus availability and per-success figures of ``cell``."""
    calls, ok = cell.calls, cell.successes
    errors = cell.errored
    p50 = p95 = p99 = mean = 0.0
    if calls:
        hist = cell.histogram()
        p50, p95, p99 = (q or 0.0 for q in hist.quantiles((0.5, 0.95, 0.99)))
        mean = hist.mean or 0.0
    out: dict[str, Any] = {
        "calls": calls, "successes": ok, "errors": errors, "failures": cell.failures,
        "success_rate": ok / calls if calls else 1.0,
        "error_rate": errors / calls if calls else 0.0,
        "slow_calls": cell.slow, "slow_rate": cell.slow / calls if calls else 0.0,
        "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "mean_ms": mean,
        "tokens_in": cell.tokens_in, "tokens_out": cell.tokens_out, "cost_usd": cell.cost,
        "fallbacks": cell.fallbacks, "fallback_rate": cell.fallbacks / calls if calls else 0.0,
        "availability": 1.0 - cell.failures / calls if calls else 1.0,
        "cost_per_success": cell.cost / ok if ok else 0.0,
        "tokens_per_success": (cell.tokens_in + cell.tokens_out) / ok if ok else 0.0,
    }
    for name in classes:
        out[f"errors_{name}"] = cell.errors.get(name, 0)
    for name, n in cell.errors.items():  # classes the history knows and the policy no longer does
        out.setdefault(f"errors_{name}", n)
    return out


def request_availability(cell: Cell, refused: int) -> float | None:
    """Served requests / requests: every successful attempt serves one request; requests are first attempts
    plus requests refused before any attempt. None when the history has no request counts (written before
    the engine kept them)."""
    requests = cell.requests + refused
    if not requests:
        return None
    return min(1.0, cell.successes / requests)

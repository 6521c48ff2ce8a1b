"""Rolling per-model and per-tier call metrics in time buckets.

A :class:`RollingMetrics` keeps the last ``window_s`` seconds in ``buckets``
fixed buckets (memory is bounded however many calls are recorded). Recording
is O(1) and touches only the newest bucket (this runs once per recorded
call). A running total of the older live buckets is kept per bucket, not per
call: when a new bucket starts, the one before is added to it and the buckets
that left the window are subtracted once. Reading
(:meth:`RollingMetrics.live`, :meth:`RollingMetrics.snapshot`) is that total
plus the newest bucket, without walking the buckets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from engine.histogram import LatencyHistogram

_INF = math.inf
_log = math.log
_ceil = math.ceil


class _Bucket:
    __slots__ = ("index", "calls", "successes", "errors", "failures", "slow", "latency",
                 "tokens_in", "tokens_out", "cost", "fallbacks", "requests")

    def __init__(self) -> None:
        self.index = -1
        self.latency = LatencyHistogram()
        self.errors: dict[str, int] = {}
        self.clear(-1)

    def clear(self, index: int) -> None:
        self.index = index
        self.calls = self.successes = self.failures = self.slow = 0
        self.tokens_in = self.tokens_out = self.fallbacks = self.requests = 0
        self.cost = 0.0
        self.errors.clear()
        self.latency.reset()

    def subtract(self, other: _Bucket) -> None:
        self.calls -= other.calls
        self.successes -= other.successes
        self.failures -= other.failures
        self.slow -= other.slow
        self.tokens_in -= other.tokens_in
        self.tokens_out -= other.tokens_out
        self.cost = max(0.0, self.cost - other.cost) if self.calls else 0.0
        self.fallbacks -= other.fallbacks
        self.requests -= other.requests
        for name, n in other.errors.items():
            left = self.errors.get(name, 0) - n
            if left > 0:
                self.errors[name] = left
            else:
                self.errors.pop(name, None)
        self.latency.subtract(other.latency)

    def add(self, other: _Bucket) -> None:
        """Add ``other``'s counts into this bucket (the inverse of :meth:`subtract`)."""
        self.calls += other.calls
        self.successes += other.successes
        self.failures += other.failures
        self.slow += other.slow
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.cost += other.cost
        self.fallbacks += other.fallbacks
        self.requests += other.requests
        for name, n in other.errors.items():
            self.errors[name] = self.errors.get(name, 0) + n
        self.latency.merge(other.latency)


class RollingMetrics:
    """Calls, outcomes, latency, tokens and cost over a sliding time window."""

    __slots__ = ("window_s", "width", "buckets", "retired", "_done", "_head",
                 "_current")

    def __init__(self, window_s: float = 300.0, buckets: int = 30) -> None:
        if window_s <= 0 or buckets < 1:
            raise ValueError("window_s must be > 0 and buckets >= 1")
        self.window_s = window_s
        self.width = window_s / buckets
        self.buckets = [_Bucket() for _ in range(buckets)]
        self._done = _Bucket()  # the sum of the live buckets before the newest
        self._head = -1  # the newest bucket's index
        self._current = self.buckets[0]  # the newest bucket
        self.retired = _Bucket()  # every bucket that left the window, summed: with the live ones, since creation

    def record(self, now: float, latency_ms: float, error: str | None, failed: bool, slow: bool,
               tokens_in: int, tokens_out: int, cost: float, fallback: bool, request: bool = False) -> None:
        """Add one attempt; ``request``: it was the first attempt of a request (see ``requests``)."""
        index = int(now // self.width)
        if index != self._head:
            if index < self._head:
                return  # a ``now`` before the newest bucket: the engine's time never goes back
            self._rotate(index)
        b = self._current
        b.calls += 1
        if error is None:
            b.successes += 1
        else:
            b.errors[error] = b.errors.get(error, 0) + 1
        if failed:
            b.failures += 1
        if slow:
            b.slow += 1
        h = b.latency  # LatencyHistogram.add written out: this runs once per recorded call
        if 0.0 < latency_ms < _INF:
            key = _ceil(_log(latency_ms) * h._inv_log_gamma)
            if key < h._key_min:
                key = h._key_min
            elif key > h._key_max:
                key = h._key_max
            hb = h._buckets
            hb[key] = hb.get(key, 0) + 1
            h._count += 1
            h._total += latency_ms
            if latency_ms < h._min:
                h._min = latency_ms
            if latency_ms > h._max:
                h._max = latency_ms
        else:
            h.add(latency_ms)  # zero, or a bad value it refuses
        b.tokens_in += tokens_in
        b.tokens_out += tokens_out
        b.cost += cost
        if fallback:
            b.fallbacks += 1
        if request:
            b.requests += 1

    @property
    def total_calls(self) -> int:
        """Calls recorded since creation, never reset by the window: the retired, older and newest buckets."""
        return self.retired.calls + self._done.calls + self._current.calls

    @property
    def total_errors(self) -> int:
        """Errors recorded since creation."""
        return sum(self.retired.errors.values()) + sum(self._done.errors.values()) + sum(
            self._current.errors.values())

    def _rotate(self, index: int) -> None:
        """Make ``index`` the newest bucket: the one before joins the total, expired ones leave it."""
        done, buckets = self._done, self.buckets
        if self._head >= 0 and self._current.calls:
            done.add(self._current)
        n = len(buckets)
        oldest = index - n + 1
        # every live bucket's index is in (head - n, head], so only the slots of head + 1 .. index can
        # hold one that left; they are visited in slot order, as a walk over all of them would
        step = index - self._head
        slots: Iterable[int] = ((index % n,) if step == 1 else range(n) if step >= n
                                else sorted([i % n for i in range(self._head + 1, index + 1)]))
        for slot in slots:
            bucket = buckets[slot]
            if 0 <= bucket.index < oldest:
                if bucket.calls:
                    done.subtract(bucket)
                    self.retired.add(bucket)
                bucket.clear(-1)
        if not done.calls:
            done.clear(-1)  # no float residue once the window is empty
        self._current = buckets[index % len(buckets)]
        self._current.clear(index)
        self._head = index

    def advance(self, now: float) -> tuple[int, int]:
        """Move the window to ``now`` without reading it; returns its version.

        The version is ``(total_calls, retired.calls)``: calls only join the
        window when recorded and only leave it in whole buckets that join
        ``retired``, so two equal versions of one instance mean the same calls
        in the window and an equal :meth:`live` sum (moving the newest bucket
        into the running total changes no sum).
        """
        index = int(now // self.width)
        if index > self._head:
            self._rotate(index)
        return self.total_calls, self.retired.calls

    def live(self, now: float) -> _Bucket:
        """The sum of the buckets inside the window at ``now`` (a new bucket)."""
        index = int(now // self.width)
        if index > self._head:
            self._rotate(index)
        total = _Bucket()
        total.add(self._done)
        total.add(self._current)
        return total

    def cumulative(self) -> _Bucket:
        """Every call since creation (counters that only grow, for metrics exporters): a new bucket."""
        out = _Bucket()
        out.add(self.retired)
        out.add(self._done)
        out.add(self._current)
        return out

    def snapshot(self, now: float, error_classes: Iterable[str] = ()) -> dict[str, Any]:
        return summarize([self.live(now)], error_classes)


def summarize(buckets: Iterable[_Bucket], error_classes: Iterable[str] = ()) -> dict[str, Any]:
    """Merge buckets (of one or many models) into rule-expression names."""
    hist = LatencyHistogram()
    calls = successes = failures = slow = tokens_in = tokens_out = fallbacks = requests = 0
    cost = 0.0
    errors: dict[str, int] = dict.fromkeys(error_classes, 0)
    for b in buckets:
        calls += b.calls
        successes += b.successes
        failures += b.failures
        slow += b.slow
        tokens_in += b.tokens_in
        tokens_out += b.tokens_out
        fallbacks += b.fallbacks
        requests += b.requests
        cost += b.cost
        for name, n in b.errors.items():
            errors[name] = errors.get(name, 0) + n
        hist.merge(b.latency)
    return _names(hist, calls, successes, failures, slow, tokens_in, tokens_out, fallbacks, requests, cost, errors)


def summarize_live(windows: Iterable[RollingMetrics], now: float, error_classes: Iterable[str] = ()) -> dict[str, Any]:
    """``summarize([w.live(now) for w in windows], error_classes)``, without building the live sums.

    Each window's running total and newest bucket are added in the order
    :meth:`RollingMetrics.live` adds them, and the float sums (cost, latency
    total) are taken per window first, so the result is the same to the bit.
    """
    hist = LatencyHistogram()
    calls = successes = failures = slow = tokens_in = tokens_out = fallbacks = requests = 0
    cost = latency_total = 0.0
    errors: dict[str, int] = dict.fromkeys(error_classes, 0)
    for w in windows:
        w.advance(now)
        done, b = w._done, w._current
        calls += done.calls + b.calls
        successes += done.successes + b.successes
        failures += done.failures + b.failures
        slow += done.slow + b.slow
        tokens_in += done.tokens_in + b.tokens_in
        tokens_out += done.tokens_out + b.tokens_out
        fallbacks += done.fallbacks + b.fallbacks
        requests += done.requests + b.requests
        cost += done.cost + b.cost
        for name, n in done.errors.items():
            errors[name] = errors.get(name, 0) + n
        for name, n in b.errors.items():
            errors[name] = errors.get(name, 0) + n
        latency_total += done.latency.total + b.latency.total
        hist.merge(done.latency)
        hist.merge(b.latency)
    hist.set_total(latency_total)
    return _names(hist, calls, successes, failures, slow, tokens_in, tokens_out, fallbacks, requests, cost, errors)


def _names(hist: LatencyHistogram, calls: int, successes: int, failures: int, slow: int, tokens_in: int,
           tokens_out: int, fallbacks: int, requests: int, cost: float, errors: dict[str, int]) -> dict[str, Any]:
    n_errors = sum(errors.values())
    p50, p95, p99 = hist.quantiles((0.5, 0.95, 0.99))
    out: dict[str, Any] = {
        "calls": calls,
        "successes": successes,
        "errors": n_errors,
        "failures": failures,
        "success_rate": successes / calls if calls else 1.0,
        "error_rate": n_errors / calls if calls else 0.0,
        "slow_calls": slow,
        "slow_rate": slow / calls if calls else 0.0,
        "p50_ms": p50 or 0.0,
        "p95_ms": p95 or 0.0,
        "p99_ms": p99 or 0.0,
        "mean_ms": hist.mean or 0.0,
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "cost_usd": cost,
        "fallbacks": fallbacks,
        "fallback_rate": fallbacks / calls if calls else 0.0,
        "requests": requests,
    }
    for name, n in errors.items():
        out[f"errors_{name}"] = n
    return out

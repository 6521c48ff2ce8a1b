"""A mergeable log-bucket latency histogram with bounded memory.

Buckets follow DDSketch: with ``gamma = (1 + a) / (1 - a)`` for a relative
accuracy ``a``, bucket ``i`` holds the values in ``(gamma**(i-1), gamma**i]``
(``i = ceil(log(x) / log(gamma))``) and reports ``2 * gamma**i / (gamma + 1)``,
which is within ``a`` (relative) of every value in the bucket. Zero has its
own bucket. Values in ``[MIN_MS, MAX_MS]`` get the guarantee; smaller positive
and larger values are clamped into the edge buckets (``min``/``max`` stay
exact), which bounds memory at about 1,700 buckets for the default accuracy.

Quantile definition (nearest rank): for ``n`` values and ``0 <= q <= 1`` the
``q``-quantile is the ``k``-th smallest value, ``k = max(1, ceil(q * n))``,
with ``q`` taken to nine decimal places (:func:`nearest_rank`). The estimate
is the representative of the bucket holding that value, clamped to
``[min, max]``, so it is within ``a`` of the exact nearest-rank quantile; the
ranks 1 and ``n`` return the exact ``min`` and ``max``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MAX_MS", "MIN_MS", "LatencyHistogram", "nearest_rank"]

#: Smallest positive value bucketed with the accuracy guarantee (1 ns).
MIN_MS = 1e-6
#: Largest value bucketed with the accuracy guarantee (about 11.6 days).
MAX_MS = 1e9

_INF = math.inf
_log = math.log
_ceil = math.ceil
_Q_SCALE = 1_000_000_000


def nearest_rank(q: float, n: int) -> int:
    """The 1-based rank ``max(1, ceil(q * n))`` of the ``q``-quantile of ``n`` values.

    ``q`` is rounded to nine decimals first, so ``nearest_rank(0.07, 100)`` is 7
    although ``0.07 * 100`` is ``7.000000000000001`` in binary floating point.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"expected a quantile in [0, 1], got {q!r}")
    scaled = round(q * _Q_SCALE)
    return max(1, -(-scaled * n // _Q_SCALE))


class LatencyHistogram:
    """Latencies in milliseconds, bucketed on a log scale; see the module docstring.

    ``add`` is O(1) and allocates no containers. Not thread-safe: guard it
    externally when shared.
    """

    __slots__ = (
        "_buckets",
        "_count",
        "_gamma",
        "_inv_log_gamma",
        "_key_max",
        "_key_min",
        "_max",
        "_min",
        "_total",
        "_zero",
        "relative_accuracy",
    )

    def __init__(self, relative_accuracy: float = 0.01) -> None:
        if not 0.0 < relative_accuracy < 0.5:
            raise ValueError(f"expected a relative accuracy in (0, 0.5), got {relative_accuracy!r}")
        self.relative_accuracy = relative_accuracy
        self._gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._inv_log_gamma = 1.0 / math.log(self._gamma)
        self._key_min = math.ceil(math.log(MIN_MS) * self._inv_log_gamma)
        self._key_max = math.ceil(math.log(MAX_MS) * self._inv_log_gamma)
        self._buckets: dict[int, int] = {}
        self.reset()

    def reset(self) -> None:
        """Forget every value."""
        self._buckets.clear()
        self._zero = 0
        self._count = 0
        self._total = 0.0
        self._min = _INF
        self._max = -_INF

    def add(self, ms: float) -> None:
        """Record one latency; ``ms`` must be finite and >= 0 (ValueError otherwise)."""
        if 0.0 < ms < _INF:  # the bucket written out: this runs once per recorded call
            key = _ceil(_log(ms) * self._inv_log_gamma)
            if key < self._key_min:
                key = self._key_min
            elif key > self._key_max:
                key = self._key_max
            buckets = self._buckets
            buckets[key] = buckets.get(key, 0) + 1
        elif ms == 0.0:
            self._zero += 1
        else:
            raise ValueError(f"expected a finite latency >= 0 ms, got {ms!r}")
        self._count += 1
        self._total += ms
        if ms < self._min:
            self._min = ms
        if ms > self._max:
            self._max = ms

    def key(self, ms: float) -> int | None:
        """The bucket of ``ms`` (``None`` for zero); raises ValueError for a bad value."""
        if not 0.0 <= ms < _INF:
            raise ValueError(f"expected a finite latency >= 0 ms, got {ms!r}")
        if ms == 0.0:
            return None
        key = math.ceil(math.log(ms) * self._inv_log_gamma)
        return self._key_min if key < self._key_min else self._key_max if key > self._key_max else key

    def merge(self, other: LatencyHistogram) -> None:
        """Add every value of ``other`` (same accuracy required) to this histogram."""
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError(
                f"expected relative accuracy {self.relative_accuracy!r}, got {other.relative_accuracy!r}"
            )
        buckets = self._buckets
        for key, n in list(other._buckets.items()):
            buckets[key] = buckets.get(key, 0) + n
        self._zero += other._zero
        self._count += other._count
        self._total += other._total
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    def set_total(self, total_ms: float) -> None:
        """Replace the sum of the values (after merges whose totals the caller summed in its own order)."""
        self._total = total_ms

    def subtract(self, other: LatencyHistogram) -> None:
        """Remove every value of ``other``, which must have been merged or added here.

        Used by rolling windows to retire an expired bucket from a running
        total. Afterwards ``min`` and ``max`` are bucket estimates (within the
        relative accuracy), no longer exact.
        """
        buckets = self._buckets
        for key, n in other._buckets.items():
            left = buckets.get(key, 0) - n
            if left > 0:
                buckets[key] = left
            else:
                buckets.pop(key, None)
        self._zero = max(0, self._zero - other._zero)
        self._count = max(0, self._count - other._count)
        self._total = max(0.0, self._total - other._total)
        if not self._count:
            self.reset()
            return
        if buckets:
            gamma = self._gamma
            low, high = min(buckets), max(buckets)
            self._min = 0.0 if self._zero else 2.0 * gamma**low / (gamma + 1.0)
            self._max = 2.0 * gamma**high / (gamma + 1.0)
        else:
            self._min = self._max = 0.0

    @property
    def count(self) -> int:
        """Number of values recorded."""
        return self._count

    @property
    def total(self) -> float:
        """Sum of the values recorded, in ms."""
        return self._total

    @property
    def min(self) -> float | None:
        """Smallest value recorded (exact), or ``None`` when empty."""
        return self._min if self._count else None

    @property
    def max(self) -> float | None:
        """Largest value recorded (exact), or ``None`` when empty."""
        return self._max if self._count else None

    @property
    def mean(self) -> float | None:
        """Arithmetic mean (exact up to float rounding), or ``None`` when empty."""
        return self._total / self._count if self._count else None

    def quantile(self, q: float) -> float | None:
        """Estimated nearest-rank ``q``-quantile (``0 <= q <= 1``), ``None`` when empty."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Iterable[float]) -> list[float | None]:
        """Several quantiles in one pass over the buckets."""
        ranks = [nearest_rank(q, self._count) for q in qs]
        if not self._count:
            return [None] * len(ranks)
        order = sorted(range(len(ranks)), key=ranks.__getitem__)
        out: list[float | None] = [None] * len(ranks)
        cumulative = self._zero
        keys = iter(sorted(self._buckets))
        key = self._key_min - 1
        for i in order:
            while cumulative < ranks[i]:
                key = next(keys)
                cumulative += self._buckets[key]
            rank = ranks[i]
            if rank == 1 or rank == self._count:  # the extremes are known exactly
                out[i] = self._min if rank == 1 else self._max
            else:
                out[i] = 0.0 if rank <= self._zero else self._value_of(key)
        return out

    def count_at_most(self, bounds_ms: Iterable[float]) -> list[int]:
        """For each bound, how many values are at most it (by bucket: within the relative accuracy).

        A bucket counts under a bound when it holds values up to the bound (the
        bucket of the bound itself counts whole, so a value equal to a bound is
        under it); these are the cumulative counts of a Prometheus histogram's
        ``le`` buckets.
        """
        keys = sorted(self._buckets.items())
        out: list[int] = []
        for bound in bounds_ms:
            if bound < 0:
                out.append(0)
                continue
            if bound == _INF:
                out.append(self._count)
                continue
            limit = self._key_min - 1 if bound == 0 else (self.key(min(bound, MAX_MS)) or self._key_min)
            out.append(self._zero + sum(n for k, n in keys if k <= limit))
        return out

    def _value_of(self, key: int) -> float:
        estimate = 2.0 * self._gamma**key / (self._gamma + 1.0)
        return min(max(estimate, self._min), self._max)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able, sparse form; :meth:`from_dict` reads it back."""
        return {
            "relative_accuracy": self.relative_accuracy,
            "count": self._count,
            "total": self._total,
            "min": self.min,
            "max": self.max,
            "zero": self._zero,
            "buckets": {str(k): self._buckets[k] for k in sorted(self._buckets)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyHistogram:
        """Rebuild a histogram from :meth:`to_dict` output; raises ``ValueError`` if inconsistent."""
        try:
            hist = cls(float(data["relative_accuracy"]))
            buckets = {int(k): int(v) for k, v in data["buckets"].items()}
            zero, count = int(data["zero"]), int(data["count"])
            total = float(data["total"])
            lo, hi = data["min"], data["max"]
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"expected a LatencyHistogram dict, got {exc!r}") from None
        if any(k < hist._key_min or k > hist._key_max or v <= 0 for k, v in buckets.items()):
            raise ValueError("expected bucket keys within range and counts > 0")
        if zero < 0 or count != zero + sum(buckets.values()):
            raise ValueError(f"expected count == zero + sum(buckets), got count={count}")
        if count and (lo is None or hi is None):
            raise ValueError("expected min and max for a non-empty histogram")
        hist._buckets.update(buckets)
        hist._zero, hist._count, hist._total = zero, count, total
        if count:
            hist._min, hist._max = float(lo), float(hi)
        return hist

    def __repr__(self) -> str:
        return (
            f"LatencyHistogram(count={self._count}, min={self.min!r}, max={self.max!r}, "
            f"relative_accuracy={self.relative_accuracy!r})"
        )

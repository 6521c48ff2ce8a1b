"""Rolling outcome windows for breakers and metrics.

Both windows record one outcome per call, ``(failed, slow)`` at ``now``, and
report ``calls``, ``failures``, ``slow_calls`` and the two rates (percent,
0-100; 0.0 when there are no calls) at ``now``. Memory is bounded by the
window's size, not by the call volume; ``record`` is O(1) amortized and
allocates no containers. Neither class is thread-safe: guard it externally
(the circuit breaker does).

:class:`CountWindow` holds the last ``size`` calls and ignores ``now``.

:class:`TimeWindow` splits time into buckets of ``width = seconds / buckets``
aligned on multiples of ``width`` (bucket ``b`` covers ``[b*width,
(b+1)*width)``). **Edge rule:** at time ``now`` a bucket is in the window while
its start is greater than ``now - seconds``; equivalently the window is the
current bucket plus the ``buckets - 1`` before it, and a call made at ``t``
stops counting exactly at ``now = (floor(t / width) + buckets) * width``. So a
call counts for at most ``seconds`` and at least ``seconds - width``.
Buckets that age out are subtracted lazily, when a later ``now`` is seen.
A ``now`` earlier than the latest one seen is served from the latest state; a
record at such a ``now`` still lands in its bucket if that bucket is in the
window, and is dropped otherwise.
"""

from __future__ import annotations

import math
from typing import Protocol

from engine.policy.model import BreakerSpec

__all__ = ["CountWindow", "OutcomeWindow", "TimeWindow", "window_for"]

_NEVER = -(2**62)  # epoch before any real bucket
_floor = math.floor


class OutcomeWindow(Protocol):
    """What breakers and metrics need from a rolling window."""

    def record(self, now: float, failed: bool, slow: bool) -> None: ...

    def add(self, now: float, failed: bool, slow: bool) -> tuple[int, int, int]: ...

    def counts(self, now: float) -> tuple[int, int, int]: ...

    def calls(self, now: float) -> int: ...

    def failures(self, now: float) -> int: ...

    def slow_calls(self, now: float) -> int: ...

    def failure_rate(self, now: float) -> float: ...

    def slow_call_rate(self, now: float) -> float: ...

    def reset(self) -> None: ...


class CountWindow:
    """The last ``size`` calls: a ring buffer of outcome codes with running totals."""

    __slots__ = ("_calls", "_failures", "_pos", "_ring", "_slow", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"expected a window size >= 1, got {size!r}")
        self.size = size
        self._ring = [0] * size  # bit 0: failed, bit 1: slow
        self.reset()

    def reset(self) -> None:
        """Forget every call."""
        self._calls = self._failures = self._slow = self._pos = 0

    def record(self, now: float, failed: bool, slow: bool) -> None:
        """Add one call, evicting the oldest once ``size`` calls are held."""
        self.add(now, failed, slow)

    def add(self, now: float, failed: bool, slow: bool) -> tuple[int, int, int]:
        """:meth:`record`, then ``counts(now)``, in one call (a breaker's result while closed)."""
        code = (1 if failed else 0) | (2 if slow else 0)
        pos = self._pos
        if self._calls == self.size:
            old = self._ring[pos]
            self._failures -= old & 1
            self._slow -= old >> 1
        else:
            self._calls += 1
        self._ring[pos] = code
        self._failures += code & 1
        self._slow += code >> 1
        pos += 1
        self._pos = 0 if pos == self.size else pos
        return self._calls, self._failures, self._slow

    def counts(self, now: float) -> tuple[int, int, int]:
        """``(calls, failures, slow_calls)`` in one call."""
        return self._calls, self._failures, self._slow

    def calls(self, now: float) -> int:
        return self._calls

    def failures(self, now: float) -> int:
        return self._failures

    def slow_calls(self, now: float) -> int:
        return self._slow

    def failure_rate(self, now: float) -> float:
        return 100.0 * self._failures / self._calls if self._calls else 0.0

    def slow_call_rate(self, now: float) -> float:
        return 100.0 * self._slow / self._calls if self._calls else 0.0

    def __repr__(self) -> str:
        return f"CountWindow(size={self.size}, calls={self._calls}, failures={self._failures})"


class TimeWindow:
    """The last ``seconds`` in ``buckets`` fixed buckets; see the module docstring."""

    __slots__ = (
        "_b_calls",
        "_b_failures",
        "_b_slow",
        "_calls",
        "_epoch",
        "_failures",
        "_latest",
        "_slow",
        "buckets",
        "seconds",
        "width",
    )

    def __init__(self, seconds: float, buckets: int) -> None:
        if not 0.0 < seconds < math.inf:
            raise ValueError(f"expected a finite window > 0 s, got {seconds!r}")
        if buckets < 1:
            raise ValueError(f"expected buckets >= 1, got {buckets!r}")
        self.seconds = float(seconds)
        self.buckets = buckets
        self.width = self.seconds / buckets
        self._b_calls = [0] * buckets
        self._b_failures = [0] * buckets
        self._b_slow = [0] * buckets
        self.reset()

    def reset(self) -> None:
        """Forget every call."""
        for i in range(self.buckets):
            self._b_calls[i] = self._b_failures[i] = self._b_slow[i] = 0
        self._calls = self._failures = self._slow = 0
        self._epoch = _NEVER
        self._latest = math.nan  # a ``now`` known to lie in the head bucket

    def _advance(self, now: float) -> int:
        """Age out buckets up to ``now``'s bucket; return that bucket's epoch."""
        if now == self._latest:
            return self._epoch
        epoch = math.floor(now / self.width)
        head = self._epoch
        if epoch > head:
            n = self.buckets
            if epoch - head >= n:
                if self._calls:
                    self.reset()
            else:
                while head < epoch:
                    head += 1
                    slot = head % n
                    self._calls -= self._b_calls[slot]
                    self._failures -= self._b_failures[slot]
                    self._slow -= self._b_slow[slot]
                    self._b_calls[slot] = self._b_failures[slot] = self._b_slow[slot] = 0
            self._epoch = epoch
        if epoch == self._epoch:
            self._latest = now
        return epoch

    def record(self, now: float, failed: bool, slow: bool) -> None:
        """Add one call at ``now``."""
        self.add(now, failed, slow)

    def add(self, now: float, failed: bool, slow: bool) -> tuple[int, int, int]:
        """:meth:`record`, then ``counts(now)``, in one call (a breaker's result while closed).

        After a record the window is at ``now``'s bucket, or ahead of a stale
        ``now``, where ``counts`` reads the totals as they are.
        """
        epoch = _floor(now / self.width)
        if epoch != self._epoch:  # another bucket than the head: age out first (or find it stale)
            epoch = self._advance(now)
            if epoch <= self._epoch - self.buckets:  # a stale ``now`` whose bucket has already left the window
                return self._calls, self._failures, self._slow
        slot = epoch % self.buckets
        self._b_calls[slot] += 1
        self._calls += 1
        if failed:
            self._b_failures[slot] += 1
            self._failures += 1
        if slow:
            self._b_slow[slot] += 1
            self._slow += 1
        return self._calls, self._failures, self._slow

    def counts(self, now: float) -> tuple[int, int, int]:
        """``(calls, failures, slow_calls)`` at ``now`` in one call."""
        if now != self._latest and _floor(now / self.width) != self._epoch:
            self._advance(now)
        return self._calls, self._failures, self._slow

    def calls(self, now: float) -> int:
        self._advance(now)
        return self._calls

    def failures(self, now: float) -> int:
        self._advance(now)
        return self._failures

    def slow_calls(self, now: float) -> int:
        self._advance(now)
        return self._slow

    def failure_rate(self, now: float) -> float:
        self._advance(now)
        return 100.0 * self._failures / self._calls if self._calls else 0.0

    def slow_call_rate(self, now: float) -> float:
        self._advance(now)
        return 100.0 * self._slow / self._calls if self._calls else 0.0

    def __repr__(self) -> str:
        return (
            f"TimeWindow(seconds={self.seconds!r}, buckets={self.buckets}, "
            f"calls={self._calls}, failures={self._failures})"
        )


def window_for(spec: BreakerSpec) -> CountWindow | TimeWindow:
    """The window a breaker spec asks for: ``window_size`` calls or ``window_s`` in buckets."""
    if spec.window == "time":
        return TimeWindow(spec.window_s, spec.window_buckets)
    return CountWindow(spec.window_size)

"""Test helpers shipped with the engine.

:class:`FakeClock` stands in for the engine's ``clock`` (a zero-argument
callable returning seconds) so tests drive time explicitly and never sleep.
:class:`FakeProvider` (from :mod:`engine.testing_provider`) is a real
OpenAI- and Anthropic-compatible HTTP server on a loopback port that injects
provider faults per model, to test policies against the official SDKs.
"""

from __future__ import annotations

import math
import threading

from engine.testing_provider import FakeProvider

__all__ = ["FakeClock", "FakeProvider"]

#: 2026-01-01T00:00:00Z as Unix epoch seconds.
DEFAULT_START = 1_767_225_600.0


class FakeClock:
    """A manually driven clock: ``clock()`` returns the current time in seconds.

    Time moves only when :meth:`advance`, :meth:`set` or :meth:`step_back` is
    called, and backwards only through :meth:`step_back` (a wall clock
    corrected by NTP or by hand, to test code against it). Reads are a single
    attribute load; writes hold a lock, so concurrent ``advance`` calls never
    lose an increment.
    """

    __slots__ = ("_lock", "_now")

    def __init__(self, start: float = DEFAULT_START) -> None:
        if not math.isfinite(start):
            raise ValueError(f"expected a finite start time, got {start!r}")
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        """The current time in seconds."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` (>= 0) and return the new time."""
        if not (0.0 <= seconds < math.inf):
            raise ValueError(f"expected a finite number of seconds >= 0, got {seconds!r}")
        with self._lock:
            self._now += seconds
            return self._now

    def step_back(self, seconds: float) -> float:
        """Move time backwards by ``seconds`` (>= 0), as a stepped wall clock does; return the new time."""
        if not (0.0 <= seconds < math.inf):
            raise ValueError(f"expected a finite number of seconds >= 0, got {seconds!r}")
        with self._lock:
            self._now -= seconds
            return self._now

    def set(self, t: float) -> None:
        """Jump to time ``t``; refuses to go backwards (use :meth:`step_back` for that)."""
        if not math.isfinite(t):
            raise ValueError(f"expected a finite time, got {t!r}")
        with self._lock:
            if t < self._now:
                raise ValueError(f"expected a time >= {self._now!r}, got {t!r}")
            self._now = float(t)

    def __repr__(self) -> str:
        return f"FakeClock({self._now!r})"

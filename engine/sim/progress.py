"""Progress of a long run on stderr: one updating line on a terminal, a line per tenth otherwise."""

from __future__ import annotations

import time
from datetime import datetime
from typing import TextIO
from zoneinfo import ZoneInfo

__all__ = ["Progress"]


class Progress:
    """``progress(sim_now, done)`` as the run goes; :meth:`close` ends the line."""

    def __init__(self, stream: TextIO, label: str, total: int, tz: ZoneInfo, *, tty: bool | None = None,
                 every_s: float = 0.25) -> None:
        self.stream = stream
        self.label = label
        self.total = max(total, 1)
        self.tz = tz
        self.tty = stream.isatty() if tty is None else tty
        self.every_s = every_s
        self.started = time.perf_counter()
        self._last = 0.0
        self._next_tenth = 1
        self._dirty = False

    def __call__(self, sim_now: float, done: int) -> None:
        if self.tty:
            wall = time.perf_counter()
            if wall - self._last >= self.every_s:
                self._last = wall
                self.stream.write("\r\033[K" + self._line(sim_now, done))
                self.stream.flush()
                self._dirty = True
        elif done * 10 >= self._next_tenth * self.total:
            while done * 10 >= self._next_tenth * self.total:
                self._next_tenth += 1
            self.stream.write(self._line(sim_now, done) + "\n")
            self.stream.flush()

    def _line(self, sim_now: float, done: int) -> str:
        pct = min(100, 100 * done // self.total)
        bar = "#" * (pct // 5) + "." * (20 - pct // 5)
        at = datetime.fromtimestamp(sim_now, self.tz).strftime("%H:%M")
        return (f"{self.label}: [{bar}] {pct:3d}% {done:,}/{self.total:,} calls, simulated {at}, "
                f"{time.perf_counter() - self.started:.1f} s")

    def close(self, message: str | None = None) -> None:
        if self._dirty:
            self.stream.write("\r\033[K")
        if message:
            self.stream.write(message + "\n")
        self.stream.flush()
        self._dirty = False

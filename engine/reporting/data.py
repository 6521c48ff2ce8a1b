"""Read one day of history: the only I/O the report does before rendering.

:func:`read_day` returns a :class:`DayHistory`: the day's ``minutes`` rows
merged into :class:`Cell` per (requested tier, model, hour of the day in the
report's time zone), per-minute usage of every model (reaching back far
enough for budget windows that started before the day), the previous day's
totals, the event log and the coalesced fallbacks.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from engine.budget import period_bounds
from engine.errors import StorageError
from engine.histogram import LatencyHistogram
from engine.policy.model import BudgetSpec
from engine.store.historydb import ACCURACY

Usage = dict[str, dict[int, tuple[int, float]]]  # model -> minute -> (tokens, cost)
#: The ``minutes`` columns :meth:`Cell.add_row` takes, in order.
ROW = ("calls, successes, failures, slow, fallbacks, tokens_in, tokens_out, cost, errors, lat_zero, lat_total, "
       "lat_min, lat_max, latency, requests, ttft_zero, ttft_total, ttft_min, ttft_max, ttft")


class Cell:
    """Merged aggregates of any set of ``minutes`` rows (a histogram kept as bucket counts)."""

    __slots__ = ("calls", "successes", "failures", "slow", "fallbacks", "tokens_in", "tokens_out", "cost",
                 "errors", "zero", "total", "lo", "hi", "buckets", "requests", "ttft_zero", "ttft_total", "ttft_lo",
                 "ttft_hi", "ttft_buckets")

    def __init__(self) -> None:
        self.calls = self.successes = self.failures = self.slow = self.fallbacks = self.requests = 0
        self.tokens_in = self.tokens_out = self.zero = 0
        self.cost = self.total = 0.0
        self.lo, self.hi = math.inf, -math.inf
        self.errors: dict[str, int] = {}
        self.buckets: dict[str, int] = {}  # bucket key (as JSON has it) -> count
        # time to first token of the streamed calls, the same kind of histogram
        self.ttft_zero, self.ttft_total = 0, 0.0
        self.ttft_lo, self.ttft_hi = math.inf, -math.inf
        self.ttft_buckets: dict[str, int] = {}

    def add_row(self, row: tuple[Any, ...]) -> None:
        """Add a row of :data:`ROW` columns (see :mod:`engine.store.historydb`)."""
        self.calls += row[0]
        self.successes += row[1]
        self.failures += row[2]
        self.slow += row[3]
        self.fallbacks += row[4]
        self.tokens_in += row[5]
        self.tokens_out += row[6]
        self.cost += row[7]
        if row[8] != "{}":
            errors = self.errors
            for name, n in json.loads(row[8]).items():
                errors[name] = errors.get(name, 0) + n
        self.zero += row[9]
        self.total += row[10]
        if row[11] < self.lo:
            self.lo = row[11]
        if row[12] > self.hi:
            self.hi = row[12]
        buckets = self.buckets
        for k, n in json.loads(row[13]).items():
            buckets[k] = buckets.get(k, 0) + n
        if len(row) > 14:
            self.requests += row[14]
        if len(row) > 15 and (row[15] or row[19] != "{}"):  # streamed calls in this row
            self.ttft_zero += row[15]
            self.ttft_total += row[16]
            if row[17] is not None and row[17] < self.ttft_lo:
                self.ttft_lo = row[17]
            if row[18] is not None and row[18] > self.ttft_hi:
                self.ttft_hi = row[18]
            ttft = self.ttft_buckets
            for k, n in json.loads(row[19]).items():
                ttft[k] = ttft.get(k, 0) + n

    def merge(self, other: Cell) -> None:
        for name in ("calls", "successes", "failures", "slow", "fallbacks", "tokens_in", "tokens_out", "cost",
                     "zero", "total", "requests", "ttft_zero", "ttft_total"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        self.ttft_lo, self.ttft_hi = min(self.ttft_lo, other.ttft_lo), max(self.ttft_hi, other.ttft_hi)
        for name, n in other.errors.items():
            self.errors[name] = self.errors.get(name, 0) + n
        for k, n in other.buckets.items():
            self.buckets[k] = self.buckets.get(k, 0) + n
        for k, n in other.ttft_buckets.items():
            self.ttft_buckets[k] = self.ttft_buckets.get(k, 0) + n

    @property
    def errored(self) -> int:
        return sum(self.errors.values())

    def histogram(self) -> LatencyHistogram:
        return LatencyHistogram.from_dict({
            "relative_accuracy": ACCURACY, "count": self.zero + sum(self.buckets.values()),
            "total": self.total, "min": self.lo if self.calls else None, "max": self.hi if self.calls else None,
            "zero": self.zero, "buckets": self.buckets})

    @property
    def streamed(self) -> int:
        """Calls with a time to first token (streamed)."""
        return self.ttft_zero + sum(self.ttft_buckets.values())

    def ttft_histogram(self) -> LatencyHistogram:
        """Time to first token of the streamed calls (empty without any)."""
        n = self.streamed
        return LatencyHistogram.from_dict({
            "relative_accuracy": ACCURACY, "count": n, "total": self.ttft_total,
            "min": self.ttft_lo if n else None, "max": self.ttft_hi if n else None,
            "zero": self.ttft_zero, "buckets": self.ttft_buckets})


def merged(cells: Iterable[Cell]) -> Cell:
    out = Cell()
    for c in cells:
        out.merge(c)
    return out


@dataclass
class DayHistory:
    day: date
    timezone: str
    start: float  # epoch seconds of local midnight
    end: float  # the next local midnight
    hours: list[float]  # epoch second of each hour start (23 or 25 on DST days)
    cells: dict[tuple[str, str, int], Cell] = field(default_factory=dict)  # (tier, model, hour)
    first_call: dict[str, float] = field(default_factory=dict)  # model -> wall time of its first minute
    usage: Usage = field(default_factory=dict)  # from `usage_from` to `end`
    usage_from: int = 0  # first minute in `usage`
    usage_before: dict[tuple[float, int], dict[str, tuple[int, float]]] = field(default_factory=dict)
    previous: dict[tuple[str, str], Cell] = field(default_factory=dict)  # yesterday's totals (no latency)
    events: list[tuple[float, str, str, dict[str, Any]]] = field(default_factory=list)
    fallbacks: list[tuple[str, str, str, str, str, int]] = field(default_factory=list)

    @property
    def has_calls(self) -> bool:
        return bool(self.cells)


def day_bounds(day: date, tz: ZoneInfo) -> tuple[float, float]:
    start = datetime.combine(day, time(0), tz).timestamp()
    return start, datetime.combine(day + timedelta(days=1), time(0), tz).timestamp()


def _minute(t: float) -> int:
    return math.ceil(t / 60.0)


def read_day(conn: sqlite3.Connection, day: date, timezone: str, budgets: Iterable[BudgetSpec] = ()) -> DayHistory:
    """Everything the report of ``day`` (in ``timezone``) needs; raises StorageError."""
    try:
        return _read(conn, day, timezone, tuple(budgets))
    except sqlite3.Error as exc:
        raise StorageError(f"cannot read history: {exc}") from exc


def _read(conn: sqlite3.Connection, day: date, timezone: str, budgets: tuple[BudgetSpec, ...]) -> DayHistory:
    start, end = day_bounds(day, ZoneInfo(timezone))
    hist = DayHistory(day, timezone, start, end, [start + 3600.0 * i for i in range(math.ceil((end - start) / 3600))])
    lo, hi = _minute(start), _minute(end)
    cells = hist.cells
    for minute, tier, model, *row in conn.execute(
            f"SELECT minute, tier, model, {ROW} FROM minutes WHERE minute >= ? AND minute < ?",  # noqa: S608
            (lo, hi)):
        key = (tier, model, int((minute * 60 - start) // 3600))
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = Cell()
        cell.add_row(row)
        if minute * 60.0 < hist.first_call.get(model, math.inf):
            hist.first_call[model] = minute * 60.0
        per = hist.usage.setdefault(model, {})
        tok, cost = per.get(minute, (0, 0.0))
        per[minute] = (tok + row[5] + row[6], cost + row[7])
    lookback = max([86400.0 + 3600.0] + [b.rolling_s or 0.0 for b in budgets if b.period == "rolling"])
    hist.usage_from = _minute(start - lookback)
    for minute, model, tok, cost in conn.execute(
            "SELECT minute, model, SUM(tokens_in + tokens_out), SUM(cost) FROM minutes "
            "WHERE minute >= ? AND minute < ? GROUP BY minute, model", (hist.usage_from, lo)):
        hist.usage.setdefault(model, {})[minute] = (tok, cost)
    for b in budgets:  # monthly windows reach further back than the minute data
        if b.period != "monthly":
            continue
        for t in (start, end - 1):
            ws = _minute(period_bounds(b, t)[0])
            if ws < hist.usage_from and (ws, hist.usage_from) not in hist.usage_before:
                hist.usage_before[(ws, hist.usage_from)] = {m: (tok, cost) for m, tok, cost in conn.execute(
                    "SELECT model, SUM(tokens_in + tokens_out), SUM(cost) FROM minutes "
                    "WHERE minute >= ? AND minute < ? GROUP BY model", (ws, hist.usage_from))}
    prev_lo = _minute(day_bounds(day - timedelta(days=1), ZoneInfo(timezone))[0])
    for tier, model, *sums in conn.execute(
            "SELECT tier, model, SUM(calls), SUM(successes), SUM(failures), SUM(fallbacks), SUM(tokens_in), "
            "SUM(tokens_out), SUM(cost) FROM minutes WHERE minute >= ? AND minute < ? GROUP BY tier, model",
            (prev_lo, lo)):
        c = hist.previous[(tier, model)] = Cell()
        c.calls, c.successes, c.failures, c.fallbacks, c.tokens_in, c.tokens_out, c.cost = sums
    hist.events = [(at, kind, subject, json.loads(data)) for at, kind, subject, data in conn.execute(
        "SELECT at, kind, subject, data FROM events WHERE at >= ? AND at < ? ORDER BY at, id", (start, end))]
    hist.fallbacks = list(conn.execute(
        "SELECT tier, from_model, to_model, to_tier, reason, SUM(count) FROM fallbacks "
        "WHERE minute >= ? AND minute < ? GROUP BY tier, from_model, to_model, to_tier, reason "
        "ORDER BY SUM(count) DESC, tier, from_model, to_model, reason", (lo, hi)))
    return hist


def has_calls(conn: sqlite3.Connection, day: date, timezone: str) -> bool:
    start, end = day_bounds(day, ZoneInfo(timezone))
    row = conn.execute("SELECT 1 FROM minutes WHERE minute >= ? AND minute < ? LIMIT 1",
                       (_minute(start), _minute(end))).fetchone()
    return row is not None


#: Calls this soon after a local midnight that end the history belong to the day before's traffic (requests
#: that were answered just after midnight): a day only minutes old is not worth a daily report.
STRAGGLERS_S = 15 * 60


def latest_day(conn: sqlite3.Connection, timezone: str) -> date | None:
    """The local day of the history's latest call (see :data:`STRAGGLERS_S`), or None without calls."""
    row = conn.execute("SELECT MAX(minute) FROM minutes WHERE calls > 0").fetchone()
    if row is None or row[0] is None:
        return None
    tz = ZoneInfo(timezone)
    day = datetime.fromtimestamp(row[0] * 60.0, tz).date()
    start = day_bounds(day, tz)[0]
    if row[0] * 60.0 - start < STRAGGLERS_S and has_calls(conn, day - timedelta(days=1), timezone):
        return day - timedelta(days=1)
    return day

"""Token and cost budgets: period arithmetic and a per-budget ledger.

Pure logic: every method takes ``now``, wall-clock UNIX epoch seconds (the
engine converts its own clock). Periods, in ``spec.timezone``:

- ``hourly``: the clock hour in ``spec.timezone`` (Asia/Kolkata hours start
  at :30 UTC); a repeated DST hour is two periods.
- ``daily``: local midnight to local midnight, so 23 or 25 hours on DST days.
- ``monthly``: the 1st, 00:00 local, to the next 1st.
- ``rolling``: no fixed period. Settled usage goes into one of
  :data:`ROLLING_BUCKETS` buckets of ``rolling_s / ROLLING_BUCKETS`` seconds
  and drops out when its bucket ends ``rolling_s`` later, so it counts for at
  least ``rolling_s`` and at most ``rolling_s + rolling_s / ROLLING_BUCKETS``.

Usage is ``settled + reserved``; a reservation counts until settled or until
``reservation_ttl_s`` has passed (dropped lazily, oldest first). A new
reservation is admitted while the budget is not exhausted, so concurrent
callers overshoot by at most what is in flight. Real usage counts in the
period in which it is *settled*; a period reset clears all reservations, so
settling one made before the reset just adds the real usage.

Events are queued and handed over by :meth:`BudgetLedger.drain_events`.
They are about what was really *spent* (settled usage): in a fixed period
the first time settled usage reaches ``warn_at`` queues one
``BudgetWarning`` and ``exhaust_at`` one ``BudgetExhausted``, which then
holds until the period resets. Reservations alone never emit: a budget that
is full only of in-flight reservations refuses new ones (``available`` is
false) but may free up when they settle lower. The first call in a new
period queues a ``BudgetReset`` if the old period saw any admitted
``reserve`` or any ``settle``. In a rolling budget each flag re-arms at a
bucket boundary where the settled fraction has aged below its threshold,
and any re-arm queues one ``BudgetReset``. Event ``tokens_used``/``cost_used``
and ``used_fraction`` are the settled figures; ``at`` is the ``now`` of the
call that noticed it.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from typing import Any, Final, TypeAlias
from zoneinfo import ZoneInfo

from engine.events import BudgetExhausted, BudgetReset, BudgetWarning
from engine.policy.model import BudgetSpec

__all__ = ["ROLLING_BUCKETS", "BudgetEvent", "BudgetLedger", "period_bounds"]

BudgetEvent: TypeAlias = BudgetWarning | BudgetExhausted | BudgetReset

#: Buckets a rolling window is divided into (one more slot holds the current one).
ROLLING_BUCKETS: Final = 60
_SLOTS: Final = ROLLING_BUCKETS + 1
_INF: Final = math.inf
_NO_EVENTS: tuple[BudgetEvent, ...] = ()
_FORMAT: Final = 1


def period_bounds(spec: BudgetSpec, now: float) -> tuple[float, float | None]:
    """Start and end (epoch seconds, end exclusive) of the period containing ``now``.

    A ``rolling`` budget has no fixed period: ``(now - rolling_s, None)``.
    """
    if spec.period == "rolling":
        return now - _rolling_s(spec), None
    tz = ZoneInfo(spec.timezone)
    # fromtimestamp rounds to whole microseconds, which can carry a time just
    # before a boundary over it: take the date of the microsecond at or before now
    local = datetime.fromtimestamp(math.floor(now * 1e6) / 1e6, tz)
    if local.timestamp() > now:
        local -= timedelta(microseconds=1)
    if spec.period == "hourly":  # by the offset in force at ``now``: right in repeated hours
        offset = local.utcoffset()
        shift = offset.total_seconds() if offset is not None else 0.0
        start = (now + shift) // 3600.0 * 3600.0 - shift
        return start, start + 3600.0
    day = local.date()
    first = day if spec.period == "daily" else day.replace(day=1)
    start, end = _midnight(first, tz), _midnight(_following(spec, first), tz)
    if end <= now:  # a fall-back across midnight re-enters the old date
        start, end = end, _midnight(_following(spec, _following(spec, first)), tz)
    return start, end


def _following(spec: BudgetSpec, first: date) -> date:
    if spec.period == "daily":
        return first + timedelta(days=1)
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def _midnight(day: date, tz: ZoneInfo) -> float:
    # fold=0: the first of a repeated midnight, the transition instant for a skipped one
    return datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()


def _rolling_s(spec: BudgetSpec) -> float:
    if spec.rolling_s is None or not spec.rolling_s > 0:
        raise ValueError(f"expected rolling_s > 0 for a rolling budget, got {spec.rolling_s!r}")
    return spec.rolling_s


class BudgetLedger:
    """Usage of one budget: settled and reserved tokens and cost; see the module docstring.

    ``available``, ``reserve`` and ``settle`` are O(1) amortised: the period
    check is one comparison with the cached period end. Not thread-safe.
    """

    __slots__ = (
        "_alarm", "_bucket", "_cost_limit", "_cost_res", "_cost_used", "_dead", "_dead_until", "_end", "_events",
        "_exhaust_at", "_exhausted_fired", "_next_expiry", "_next_id", "_res",
        "_ring_cost", "_ring_tok", "_rolling", "_start", "_tok_limit", "_tok_res",
        "_tok_used", "_touched", "_ttl", "_warn_at", "_warned", "_why_exhausted", "_why_reserved",
        "_width", "spec",
    )  # fmt: skip

    def __init__(self, spec: BudgetSpec, *, events: list[Any] | None = None) -> None:
        if spec.tokens is None and spec.cost_usd is None:
            raise ValueError(f"expected a tokens or cost_usd limit on budget {spec.name!r}, got neither")
        for limit in (spec.tokens, spec.cost_usd):
            if limit is not None and not limit > 0:
                raise ValueError(f"expected a limit > 0 on budget {spec.name!r}, got {limit!r}")
        self.spec = spec
        # a missing limit divides by infinity: that share of the fraction is 0.0
        self._tok_limit = _INF if spec.tokens is None else float(spec.tokens)
        self._cost_limit = _INF if spec.cost_usd is None else float(spec.cost_usd)
        self._warn_at, self._exhaust_at = spec.warn_at, spec.exhaust_at
        self._ttl = spec.reservation_ttl_s
        self._rolling = spec.period == "rolling"
        self._width = _rolling_s(spec) / ROLLING_BUCKETS if self._rolling else 0.0
        if not self._rolling:
            ZoneInfo(spec.timezone)  # fail now on an unknown zone
        self._ring_tok = [0] * _SLOTS if self._rolling else []
        self._ring_cost = [0.0] * _SLOTS if self._rolling else []
        self._bucket = -(1 << 62)
        self._start, self._end = -_INF, -_INF
        self._tok_used, self._cost_used = 0, 0.0
        self._res: dict[int, tuple[float, int, float]] = {}
        self._tok_res, self._cost_res, self._next_expiry = 0, 0.0, _INF
        self._next_id = 1
        self._touched = False
        self._arm(False, False)
        # the refusal of a fixed-period budget exhausted by spending, and until when it holds
        self._why_exhausted = f"budget {spec.name} exhausted"
        self._why_reserved = f"budget {spec.name} fully reserved by calls in flight"
        self._dead: tuple[str, float | None] = (self._why_exhausted, None)
        self._dead_until = -_INF
        self._events: list[BudgetEvent] = events if events is not None else []  # may be shared

    def available(self, now: float) -> bool:
        """True while the budget is not exhausted (a reservation would be admitted)."""
        if now >= self._next_expiry or now >= self._end:
            self._advance(now)
        return self._fraction() < self._exhaust_at

    def refusal(self, now: float) -> tuple[str, float | None] | None:
        """``None`` while available; else why not and :meth:`resets_at` (wall time).

        Why not is ``"budget <name> exhausted"`` when settled usage alone has
        reached ``exhaust_at``, else ``"budget <name> fully reserved by calls
        in flight"``. A fixed-period budget exhausted by spending stays so
        until its period ends (settling only adds usage; a new limit is a new
        ledger), so that answer is kept until then and costs one comparison.
        """
        if now < self._dead_until:
            return self._dead
        if now >= self._next_expiry or now >= self._end:
            self._advance(now)
        f = (self._tok_used + self._tok_res) / self._tok_limit  # _fraction() written out: the hot path
        c = (self._cost_used + self._cost_res) / self._cost_limit
        if (f if f >= c else c) < self._exhaust_at:
            return None
        if self._spent() < self._exhaust_at:
            return self._why_reserved, self._resets_at()
        out = (self._why_exhausted, self._resets_at())
        if not self._rolling:
            self._dead, self._dead_until = out, self._end
        return out

    def evaluate(self, now: float) -> None:
        """Re-judge the thresholds now: after a reload changed the limits, a
        budget already over its new ``warn_at``/``exhaust_at`` emits at once."""
        self._advance(now)
        self._check(now)

    def reserve(self, now: float, tokens: int, cost: float) -> int:
        """Reserve an estimate; returns its id (> 0), or 0 when exhausted (nothing reserved)."""
        if tokens < 0 or not cost >= 0.0:
            _bad_amounts(tokens, cost)
        if now >= self._next_expiry or now >= self._end:
            self._advance(now)
        if self._fraction() >= self._exhaust_at:
            return 0
        rid = self._next_id
        self._next_id = rid + 1
        expires = now + self._ttl
        self._res[rid] = (expires, tokens, cost)
        if expires < self._next_expiry:
            self._next_expiry = expires
        self._tok_res += tokens
        self._cost_res += cost
        self._touched = True  # reservations never emit: only spending does
        return rid

    def settle(self, now: float, reservation_id: int | None, tokens: int, cost: float) -> bool:
        """Record real usage, replacing the reservation if still outstanding (then True)."""
        if tokens < 0 or not cost >= 0.0:
            _bad_amounts(tokens, cost)
        if now >= self._next_expiry or now >= self._end:
            self._advance(now)
        found = reservation_id is not None and self._drop(reservation_id)
        self._tok_used += tokens
        self._cost_used += cost
        if self._rolling:
            slot = self._bucket % _SLOTS
            self._ring_tok[slot] += tokens
            self._ring_cost[slot] += cost
        self._touched = True
        f = self._tok_used / self._tok_limit  # _spent() written out: this runs once per recorded call
        c = self._cost_used / self._cost_limit
        if (f if f >= c else c) >= self._alarm:
            self._check(now)
        return found

    def drain_events(self) -> tuple[BudgetEvent, ...]:
        """Events queued since the last drain, oldest first; ``()`` when none."""
        if not self._events:
            return _NO_EVENTS
        out = tuple(self._events)
        self._events.clear()
        return out

    def used_fraction(self, now: float) -> float:
        """Max over the configured limits of (settled + reserved) / limit."""
        self._advance(now)
        return self._fraction()

    def spent_fraction(self, now: float) -> float:
        """Max over the configured limits of settled usage / limit (reservations left out)."""
        self._advance(now)
        return self._spent()

    def exhausted(self, now: float) -> bool:
        """True when ``used_fraction(now) >= spec.exhaust_at``."""
        return not self.available(now)

    def would_exceed(self, now: float, tokens: int, cost: float) -> bool:
        """True if adding ``tokens``/``cost`` would bring usage to ``exhaust_at`` or beyond.

        Advisory (e.g. to prefer another candidate): :meth:`reserve` only checks
        that the budget is not exhausted before the reservation.
        """
        self._advance(now)
        return self._fraction(tokens, cost) >= self._exhaust_at

    def resets_at(self, now: float) -> float | None:
        """When the budget frees up: the period end; for rolling, an estimate.

        Rolling: ``None`` unless exhausted, else the bucket boundary at which
        enough settled usage has aged out (assuming reservations stay), or
        ``None`` if reservations alone keep it exhausted.
        """
        self._advance(now)
        return self._resets_at()

    def snapshot(self, now: float) -> dict[str, Any]:
        """A JSON-able view of the current usage (``period_end`` is None for rolling)."""
        self._advance(now)
        fraction = self._fraction()
        spec = self.spec
        return {
            "name": spec.name, "period": spec.period, "period_start": self._start,
            "period_end": None if self._rolling else self._end, "resets_at": self._resets_at(),
            "tokens_used": self._tok_used, "tokens_reserved": self._tok_res,
            "tokens_limit": spec.tokens, "cost_used": self._cost_used,
            "cost_reserved": self._cost_res, "cost_limit": spec.cost_usd,
            "reservations": len(self._res), "used_fraction": fraction,
            "warned": self._warned, "exhausted": fraction >= self._exhaust_at,
        }  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The persistent state as plain JSON-able data (queued events excluded)."""
        spec, started = self.spec, math.isfinite(self._end)
        lo = self._bucket - ROLLING_BUCKETS
        ring = [[i, self._ring_tok[i % _SLOTS], self._ring_cost[i % _SLOTS]]
                for i in range(lo, self._bucket + 1)] if self._rolling and started else []  # fmt: skip
        return {
            "format": _FORMAT, "name": spec.name, "period": spec.period,
            "timezone": spec.timezone, "rolling_s": spec.rolling_s,
            "period_start": self._start if started else None,
            "period_end": self._end if started else None,
            "bucket": self._bucket if self._rolling and started else None,
            "buckets": [b for b in ring if b[1] or b[2]],
            "tokens_used": self._tok_used, "cost_used": self._cost_used,
            "warned": self._warned, "exhausted_fired": self._exhausted_fired,
            "touched": self._touched, "next_id": self._next_id,
            "reservations": [[rid, *r] for rid, r in self._res.items()],
        }  # fmt: skip

    @classmethod
    def from_dict(cls, spec: BudgetSpec, data: dict[str, Any], *,
                  events: list[Any] | None = None) -> BudgetLedger:
        """Restore a ledger saved by :meth:`to_dict` under a spec of the same period.

        Limits and thresholds may differ; raises ``ValueError`` if the format,
        period, time zone or rolling window differ or a field is malformed.
        """
        for key, want in (("format", _FORMAT), ("period", spec.period),
                          ("timezone", spec.timezone), ("rolling_s", spec.rolling_s)):  # fmt: skip
            if data.get(key) != want:
                raise ValueError(f"expected {key} {want!r} in saved budget, got {data.get(key)!r}")
        led = cls(spec, events=events)
        try:
            led._restore(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"expected a budget saved by to_dict, got {exc!r}") from exc
        return led

    def _restore(self, data: dict[str, Any]) -> None:
        if data["period_end"] is not None:
            self._start, self._end = float(data["period_start"]), float(data["period_end"])
            self._tok_used, self._cost_used = int(data["tokens_used"]), float(data["cost_used"])
        if self._rolling and data["bucket"] is not None:
            self._bucket = k = int(data["bucket"])
            for i, tok, cost in data["buckets"]:
                if 0 <= k - int(i) <= ROLLING_BUCKETS:
                    self._ring_tok[int(i) % _SLOTS] += int(tok)
                    self._ring_cost[int(i) % _SLOTS] += float(cost)
            self._tok_used, self._cost_used = sum(self._ring_tok), math.fsum(self._ring_cost)
        for rid, expires, tok, cost in data["reservations"]:
            self._res[int(rid)] = (float(expires), int(tok), float(cost))
            self._tok_res += int(tok)
            self._cost_res += float(cost)
            self._next_expiry = min(self._next_expiry, float(expires))
        self._arm(bool(data["warned"]), bool(data["exhausted_fired"]))
        self._touched, self._next_id = bool(data["touched"]), int(data["next_id"])

    def _advance(self, now: float) -> None:
        if now >= self._next_expiry:
            self._expire(now)
        if now >= self._end:
            if self._rolling:
                self._rotate(now)
            else:
                self._roll(now)

    def _fraction(self, tokens: int = 0, cost: float = 0.0) -> float:
        f = (self._tok_used + self._tok_res + tokens) / self._tok_limit
        c = (self._cost_used + self._cost_res + cost) / self._cost_limit
        return f if f >= c else c

    def _spent(self) -> float:
        """The settled part of the used fraction: what the events are about."""
        f = self._tok_used / self._tok_limit
        c = self._cost_used / self._cost_limit
        return f if f >= c else c

    def _arm(self, warned: bool, exhausted: bool) -> None:
        """Set the event flags and ``_alarm``, the fraction at which ``_check`` has work."""
        self._warned, self._exhausted_fired = warned, exhausted
        self._alarm = min(_INF if warned else self._warn_at, _INF if exhausted else self._exhaust_at)

    def _check(self, now: float) -> None:
        f = self._spent()
        spec, warn, exhaust = self.spec, f >= self._warn_at, f >= self._exhaust_at
        usage = (spec.name, f, self._tok_used, spec.tokens, self._cost_used, spec.cost_usd, self._start)
        if warn and not self._warned:
            self._events.append(BudgetWarning(now, *usage))
        if exhaust and not self._exhausted_fired:
            self._events.append(BudgetExhausted(now, *usage, self._resets_at()))
        self._arm(self._warned or warn, self._exhausted_fired or exhaust)

    def _drop(self, rid: int) -> bool:
        r = self._res.pop(rid, None)
        if r is None:
            return False
        self._tok_res -= r[1]
        self._cost_res -= r[2]
        if not self._res:  # no float residue once nothing is reserved
            self._tok_res, self._cost_res, self._next_expiry = 0, 0.0, _INF
        return True

    def _expire(self, now: float) -> None:
        # a full scan (reservations are the calls in flight): after a reload shortened the
        # TTL, carried reservations may expire later than newer ones
        dead = [rid for rid, r in self._res.items() if r[0] <= now]
        for rid in dead:
            self._drop(rid)
        self._next_expiry = min((r[0] for r in self._res.values()), default=_INF)

    def _roll(self, now: float) -> None:
        start, end = period_bounds(self.spec, now)
        if self._touched:
            self._events.append(BudgetReset(now, self.spec.name, start))
        self._start, self._end = start, _INF if end is None else end
        self._tok_used, self._cost_used = 0, 0.0
        self._res.clear()
        self._tok_res, self._cost_res, self._next_expiry = 0, 0.0, _INF
        self._touched = False
        self._arm(False, False)

    def _rotate(self, now: float) -> None:
        k, cur = math.floor(now / self._width), self._bucket
        if k > cur:
            for i in range(max(cur, k - _SLOTS) + 1, k + 1):
                self._ring_tok[i % _SLOTS] = 0
                self._ring_cost[i % _SLOTS] = 0.0
            self._tok_used, self._cost_used = sum(self._ring_tok), math.fsum(self._ring_cost)
            self._bucket = cur = k
            self._start = (k - ROLLING_BUCKETS) * self._width
            f, warned, exhausted = self._spent(), self._warned, self._exhausted_fired
            self._arm(warned and f >= self._warn_at, exhausted and f >= self._exhaust_at)
            if (warned, exhausted) != (self._warned, self._exhausted_fired):
                self._events.append(BudgetReset(now, self.spec.name, self._start))
        self._end = (cur + 1) * self._width

    def _resets_at(self) -> float | None:
        if not self._rolling:
            return self._end if math.isfinite(self._end) else None
        if self._fraction() < self._exhaust_at:
            return None
        tok, cost = self._tok_used, self._cost_used
        for i in range(self._bucket - ROLLING_BUCKETS, self._bucket + 1):
            tok -= self._ring_tok[i % _SLOTS]
            cost -= self._ring_cost[i % _SLOTS]
            if self._fraction(tok - self._tok_used, cost - self._cost_used) < self._exhaust_at:
                return (i + _SLOTS) * self._width
        return None


def _bad_amounts(tokens: int, cost: float) -> None:
    raise ValueError(f"expected tokens >= 0 and cost >= 0, got {tokens!r} and {cost!r}")

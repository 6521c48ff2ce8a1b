"""The wire half of :class:`engine.store.redis.budget.RedisLedger`: views, arguments, replies.

:class:`LedgerSync` holds what one client knows of a shared budget (the last
view the server sent, its own reservations and contributions, what it could
not send) and turns operations into :data:`engine.store.redis.lua.LEDGER` calls,
waited for (``_sync``) or pipelined (``_send``), and replies into views and
events. The engine-facing methods and the outage handling are in
:mod:`engine.store.redis.budget`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from engine.budget import ROLLING_BUCKETS, BudgetLedger, period_bounds
from engine.events import BudgetExhausted, BudgetReset, BudgetWarning, Event
from engine.policy.model import BudgetSpec
from engine.store.redis.link import ACK, Link, Unavailable, corrupt
from engine.store.redis.lua import split

log = logging.getLogger("engine.redis")

__all__ = ["GRACE_S", "MAX_FIELDS", "Aggregate", "LedgerSync", "Op", "View", "budget_key"]

_INF = math.inf
#: Seconds a finished period's keys stay on the server (for status), after its end.
GRACE_S = 3600
PRUNE_AT = 4096
#: Server reservations an aggregate drops when replayed; beyond, they expire by their TTL.
MAX_FIELDS = 256


def budget_key(prefix: str, spec: BudgetSpec) -> str:
    """The meta key of a budget: its name and period kind (another kind starts afresh)."""
    kind = f"rolling@{spec.rolling_s!r}" if spec.period == "rolling" else f"{spec.period}@{spec.timezone}"
    return f"{prefix}:b:{spec.name}:{kind}"


class View:
    """The server's state of a budget as one reply showed it."""

    __slots__ = ("at", "cost", "end", "exh", "key", "next_exp", "now", "nres", "rc", "resets", "rt", "start",
                 "tok", "touched", "warned")

    def __init__(self, r: list[Any], now: float, at: float, bounds: Callable[[str], tuple[float, float]]) -> None:
        self.tok, self.cost = int(float(r[1])), float(r[2])
        self.rt, self.rc = int(float(r[3])), float(r[4])
        self.warned, self.exh, self.touched = r[5] == b"1", r[6] == b"1", r[7] == b"1"
        self.nres = int(r[8])
        self.next_exp = float(r[9]) if r[9] else _INF
        self.resets = float(r[10]) if r[10] else None
        self.key = r[13].decode()
        self.start, self.end = bounds(self.key)
        self.now, self.at = now, at


class Op:
    """A settlement the server must apply exactly once: ``seq`` numbers it for the server's ack.

    ``key`` names its period (a fixed period's start or a rolling bucket);
    ``field``: reservation ids to drop, separated by spaces; ``count``: the
    settlements it stands for (an aggregate of an outage stands for many).
    """

    __slots__ = ("cost", "count", "field", "key", "now", "seq", "tokens")

    def __init__(self, now: float, field: str, tokens: int, cost: float, seq: int = 0, key: str = "",
                 count: int = 1) -> None:
        self.now, self.field, self.tokens, self.cost, self.seq = now, field, tokens, cost, seq
        self.key, self.count = key, count


class Aggregate:
    """What one ledger settled in one period while the server was unreachable: O(1) per period."""

    __slots__ = ("cost", "count", "fields", "now", "tokens")

    def __init__(self, now: float) -> None:
        self.now, self.tokens, self.cost, self.count = now, 0, 0.0, 0
        self.fields: list[str] = []


class LedgerSync:
    """One client's side of a shared budget; see the module docstring."""

    def __init__(self, link: Link, prefix: str, spec: BudgetSpec, events: list[Event], cache_s: float,
                 prev: LedgerSync | None = None) -> None:
        probe = BudgetLedger(spec)  # validates the spec exactly as a local ledger would
        self.spec = spec
        self._blank = probe.to_dict()
        self._link, self._events, self._cache_s = link, events, cache_s
        self._rolling = spec.period == "rolling"
        self._width = spec.rolling_s / ROLLING_BUCKETS if self._rolling and spec.rolling_s else 0.0
        self._tl = _INF if spec.tokens is None else float(spec.tokens)
        self._cl = _INF if spec.cost_usd is None else float(spec.cost_usd)
        self._base = budget_key(prefix, spec)
        self._label = self._base.rsplit(":", 1)[1]
        self._bounds = (_INF, -_INF)
        self._floor = (-_INF, -_INF)  # the latest period used: a period never goes back
        self._opno = 0
        # what this client knows beyond the server: carried over from the ledger this one replaces
        self._view: View | None = None
        self._rids: dict[int, tuple[str, int, float, float, str]] = {}  # rid -> field, tokens, cost, expires, period
        self._next_rid = 1
        self._mine: dict[str, list[Any]] = {}  # period start / bucket -> [tokens, cost] settled by this client
        self._backlog: dict[str, Aggregate] = {}  # settled while the server was unreachable, by period
        self._unacked: dict[int, Op] = {}  # numbered and sent (or to be resent), not confirmed yet
        self._restored: str | None = None  # the epoch for which _mine was re-pushed
        self._local: BudgetLedger | None = None
        if prev is not None:
            for name in ("_view", "_rids", "_next_rid", "_mine", "_backlog", "_unacked", "_restored", "_local",
                         "_floor"):
                setattr(self, name, getattr(prev, name))
            if self._local is not None:
                self._local = BudgetLedger.from_dict(spec, self._local.to_dict(), events=events)

    # -- server calls ----------------------------------------------------------

    def _keys(self) -> tuple[str, str]:
        return (self._base, ACK)

    def _args(self, op: str, now: float, seq: int = 0, rid: str = "", tokens: int = 0, cost: float = 0.0,
              quiet: int = 0, key: str = "") -> tuple[Any, ...]:
        """The script's arguments; ``key``: the period a replayed settlement belongs to (else ``now``'s)."""
        spec = self.spec
        if self._rolling:
            a5, a6 = repr(self._width), key or str(math.floor(now / self._width))
        else:
            start, end = self._bounds_at(float(key)) if key else self._period(now)
            a5, a6 = repr(start), repr(end)
        return (op, repr(now), "1" if self._rolling else "0", a5, a6, repr(float(spec.tokens or 0)),
                repr(float(spec.cost_usd or 0.0)), repr(spec.warn_at), repr(spec.exhaust_at),
                repr(spec.reservation_ttl_s), seq, rid, tokens, repr(float(cost)), quiet, GRACE_S, spec.name,
                self._label)

    def _sync(self, op: str, now: float, settle: Op | None = None) -> View | None:
        """Run ``op`` and wait for it: the fresh view, or None when the server is unreachable."""
        self._opno += 1
        sent, seq = time.monotonic(), settle.seq if settle is not None else 0
        args = self._args(op, now, seq, settle.field, settle.tokens, settle.cost) if settle else self._args(op, now)
        try:
            reply = self._link.call("ledger", self._keys(), args)
            return self._take(reply, now, sent, self._opno, seq)
        except Unavailable:
            return None
        except Exception as exc:  # a malformed reply: never let it escape a decision
            log.exception("redis ledger %s: unexpected failure", self.spec.name)
            self._link.fail(exc)
            return None

    def _send(self, op: str, now: float, settle: Op | None, **kw: Any) -> bool:
        """Pipeline ``op`` (its reply is handled later); False when the server is unreachable."""
        self._opno += 1
        opno, sent = self._opno, time.monotonic()
        if settle is not None:
            kw.update(seq=settle.seq, rid=settle.field, tokens=settle.tokens, cost=settle.cost)
        try:
            self._link.send("ledger", self._keys(), self._args(op, now, **kw),
                            self._handler(now, sent, opno, settle.seq if settle else 0))
        except Unavailable:
            return False
        return True

    def _handler(self, now: float, sent: float, opno: int, seq: int) -> Callable[[Any], None]:
        def handle(reply: Any) -> None:
            if reply is not None:
                self._take(reply, now, sent, opno, seq)
        return handle

    def _take(self, reply: bytes, now: float, sent: float, opno: int, seq: int) -> View:
        head, events = split(reply, 16)
        view = View(head, now, sent, self._key_bounds)
        if seq:
            self._unacked.pop(seq, None)
        if opno == self._opno:  # no later operation is in flight: this is the newest state
            self._view = view
        for ev in events:
            self._event(ev, view, now)
        return view

    def _event(self, ev: list[bytes], v: View, now: float) -> None:
        spec, kind, emit = self.spec, ev[0], self._link.emit
        if kind == b"corrupt":
            emit(self._events, corrupt(self._link.label, ev, self._corrupt_action))
            return
        if kind == b"reset":
            emit(self._events, BudgetReset(now, spec.name, float(ev[1])))
            return
        usage = (spec.name, self._spent(v), v.tok, spec.tokens, v.cost, spec.cost_usd, v.start)
        if kind == b"warn":
            emit(self._events, BudgetWarning(now, *usage))
        elif kind == b"exh":
            emit(self._events, BudgetExhausted(now, *usage, v.end if not self._rolling else v.resets))

    def _corrupt_action(self, key: str, field: str) -> str:
        if ":ack:" in key:
            return "this client's acknowledgement was reset (its next settlement is applied)"
        if not field:
            return "the key was deleted"
        if key.endswith(":r") or field in ("rt", "rc"):
            return "the reservations were recounted"
        if key.endswith(":k") or field == "bucket" or (self._rolling and field in ("tok", "cost")):
            return "the rolling window was recounted from its buckets (a corrupt bucket counts as 0)"
        if field in ("tok", "cost"):
            return "the period's usage restarts from 0"
        if field in ("cur", "end"):
            return "the current period was taken from this client"
        return "reset"

    # -- views -----------------------------------------------------------------

    def _fresh(self, now: float) -> View | None:
        v = self._view
        if v is None or self._local is not None or time.monotonic() - v.at > self._cache_s:
            return None
        if not v.now <= now < v.now + self._cache_s or now >= v.end or now >= v.next_exp:
            return None
        return v

    def _fraction(self, v: View, tokens: int = 0, cost: float = 0.0) -> float:
        f = (v.tok + v.rt + tokens) / self._tl
        c = (v.cost + v.rc + cost) / self._cl
        return f if f >= c else c

    def _spent(self, v: View, tokens: int = 0, cost: float = 0.0) -> float:
        f, c = (v.tok + tokens) / self._tl, (v.cost + cost) / self._cl
        return f if f >= c else c

    def _alarm(self, v: View) -> float:
        """The settled fraction at which the server would emit an event."""
        return min(_INF if v.warned else self.spec.warn_at, _INF if v.exh else self.spec.exhaust_at)

    def _resets(self, v: View, now: float) -> float | None:
        if self._rolling:
            return v.resets if self._fraction(v) >= self.spec.exhaust_at else None
        return self._period(now)[1]

    def _bounds_at(self, t: float) -> tuple[float, float]:
        """Start and end of the fixed period containing ``t`` (the last one computed is cached)."""
        start, end = self._bounds
        if not start <= t < end:
            s, e = period_bounds(self.spec, t)
            self._bounds = start, end = s, _INF if e is None else e
        return start, end

    def _period(self, now: float) -> tuple[float, float]:
        """The period an operation at ``now`` works on: ``now``'s, never one before the latest used
        (a clock stepped back stays in the period it had reached)."""
        start, end = self._bounds_at(now)
        if start < self._floor[0]:
            return self._floor
        self._floor = (start, end)
        return start, end

    def _key_bounds(self, key: str) -> tuple[float, float]:
        """Start and end of the period (rolling: the window) a reply's key names."""
        if self._rolling:
            k = float(key)
            return (k - ROLLING_BUCKETS) * self._width, (k + 1) * self._width
        return self._bounds_at(float(key))

    def _period_key(self, now: float) -> str:
        return repr(self._period(now)[0]) if not self._rolling else str(math.floor(now / self._width))

    def _remember(self, now: float, tokens: int, cost: float, key: str = "") -> None:
        """Count usage this client settled at ``now`` (in period ``key`` if given) for a data-loss re-push."""
        key = key or self._period_key(now)
        mine = self._mine.setdefault(key, [0, 0.0])
        mine[0] += tokens
        mine[1] += cost
        if len(self._mine) > (ROLLING_BUCKETS + 1 if self._rolling else 2):
            del self._mine[min(self._mine, key=float)]

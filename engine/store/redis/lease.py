"""A shared budget decided locally against a leased slice: no round trip per call.

A budget with ``lease:`` in its policy (see :class:`engine.policy.model.LeaseSpec`)
is a :class:`LeasedLedger` on a Redis store. Each process holds a *slice*
of the budget's headroom (``size`` x each limit), granted by the server with
one round trip (:data:`engine.store.redis.lua.LEDGER`'s ``lease``: a
reservation the server counts like any other). The process admits calls
while its slice has room, books its usage locally, and every ``sync_ms``
while it spends (or once less than half its slice is left) sends one
pipelined ``lease`` operation that reports the usage since the last one
(applied exactly once, numbered like every settlement) and replaces the
slice with a fresh one. Its reply is read at the next round trip, which
the next renewal provides, so a process at steady state never waits on
the server: one command per ``sync_ms`` per budget, whatever the call rate.
It waits (one round trip) only when its slice is used up before the
renewal's reply is in.

Near the end of a budget the server grants at most half the remaining
headroom, so slices shrink and the last of the budget goes to the processes
that ask; once there is no headroom a process refuses and asks again after
``sync_ms``.

**The bound on overspending** is that of the exact mode, the calls in
flight (their real usage beyond what they reserved), plus the usage a
process settled but had not reported when it died: at most about one
slice per process that died (its slice then returns to the budget after
``ttl_s``, with its last usage unreported). ``close()`` reports the usage
and returns the unused slice. A process that stops deciding keeps its last
usage until its next decision, ``PolicyEngine.tick()`` or ``close()``; the
server keeps its slice reserved until ``ttl_s`` passes.

**Events**: ``BudgetWarning`` and ``BudgetExhausted`` come from the server
when a report crosses the threshold, so each is emitted once per period
across the fleet, by the process whose report crossed it, up to ``sync_ms``
after the call that spent it. ``BudgetReset`` as in the exact mode.

When the server is unreachable, the ledger decides as the exact mode does
(a local ledger seeded with the last view, usage pushed once it is back);
the slice is given up.
"""

from __future__ import annotations

import math
import time
from typing import Any

from engine.budget import BudgetLedger
from engine.events import Event
from engine.policy.model import BudgetSpec, LeaseSpec
from engine.store.redis.budget import RedisLedger, _check_amounts
from engine.store.redis.budget_sync import Aggregate, LedgerSync, Op, View
from engine.store.redis.link import Link, Unavailable
from engine.store.redis.lua import split

__all__ = ["LeasedLedger"]

_INF = math.inf


class LeasedLedger(RedisLedger):
    """One shared budget decided against a leased slice; see the module docstring."""

    def __init__(self, link: Link, prefix: str, spec: BudgetSpec, events: list[Event], cache_s: float,
                 prev: LedgerSync | None = None) -> None:
        super().__init__(link, prefix, spec, events, cache_s, prev)
        lease = spec.lease if spec.lease is not None else LeaseSpec()
        self.lease = lease
        self._want_t = max(1, math.ceil(spec.tokens * lease.size)) if spec.tokens else 0
        self._want_c = spec.cost_usd * lease.size if spec.cost_usd else 0.0
        self._sync_s = lease.sync_ms / 1000.0
        self._gt, self._gc = 0, 0.0  # the slice as the server granted it
        self._slice_end = -_INF  # the slice is void from here (engine time): renewed before the server drops it
        self._ut, self._uc = 0, 0.0  # settled here, not reported yet
        self._ukey = ""  # the fixed period that usage was settled in (its start)
        self._uend = _INF  # when that period ends (a rolling budget's usage has none)
        self._st, self._sc = 0, 0.0  # reported by the renewal in flight
        self._res: dict[int, tuple[int, float]] = {}  # reservations of calls in flight, against the slice
        self._rt, self._rc = 0, 0.0
        self._due = -_INF  # the next periodic report
        self._flying = 0  # opno of the renewal in flight (0: none)
        self._dry_until = -_INF  # the server had no headroom: ask again from here
        self._last_now = 0.0
        if isinstance(prev, LeasedLedger) and prev._local is None:
            # a reload that kept the budget: the slice and what it knows carry over (a renewal in
            # flight is answered to the old ledger first)
            if prev._flying:
                link.flush()
            for name in ("_gt", "_gc", "_slice_end", "_ukey", "_uend", "_ut", "_uc", "_st", "_sc",
                         "_res", "_rt", "_rc", "_last_now", "_due", "_dry_until"):
                setattr(self, name, getattr(prev, name))
            prev._ut, prev._uc, prev._gt, prev._gc = 0, 0.0, 0, 0.0

    # -- the slice ---------------------------------------------------------------

    def _left(self) -> tuple[float, float]:
        """Tokens and cost left in the slice: what was granted less what is reported, settled and reserved."""
        return (self._gt - self._st - self._ut - self._rt, self._gc - self._sc - self._uc - self._rc)

    def _room(self, now: float) -> bool:
        """True while the slice has room for one more call at ``now``."""
        if now >= self._slice_end:  # expired, or its period ended
            return False
        left_t, left_c = self._left()
        return (not self._want_t or left_t > 0) and (not self._want_c or left_c > 0)

    def _low(self, now: float) -> bool:
        """True once less than half a slice is left (or none)."""
        if not self._room(now):
            return True
        left_t, left_c = self._left()
        return (bool(self._want_t) and left_t * 2 < self._want_t) or (bool(self._want_c) and left_c * 2 < self._want_c)

    def _lease_args(self, now: float, op: Op, want_t: int, want_c: float) -> tuple[Any, ...]:
        return (*self._args("lease", now, op.seq, op.field, op.tokens, op.cost), want_t, repr(float(want_c)),
                repr(float(self.lease.ttl_s)))

    def _report(self, now: float, wait: bool, want: bool = True) -> bool:
        """Report the usage since the last report and renew the slice (``want``: else give it back).

        Pipelined unless ``wait``; False when the server is unreachable (the
        ledger then decides on its local fallback).
        """
        if self._flying:
            if not wait:
                return True
            self._link.flush()  # the reply is most likely in already: read it
            if self._local is not None:
                return False
        self._roll(now)
        if self._local is not None:
            return False
        tokens, cost = self._ut, self._uc
        field = f"L:{self._link.client}"
        op = Op(now, field, tokens, cost, self._link.next_seq() if tokens or cost else 0, self._period_key(now))
        if tokens or cost:
            self._remember(now, tokens, cost)
        if op.seq:
            self._unacked[op.seq] = op
        self._ut, self._uc, self._ukey, self._uend = 0, 0.0, "", _INF
        self._st, self._sc = self._st + tokens, self._sc + cost
        want_t = self._want_t + self._rt if want and self._want_t else 0
        want_c = self._want_c + self._rc if want and self._want_c else 0.0
        self._opno += 1
        opno = self._opno
        self._flying = opno
        self._due = now + self._sync_s
        self._last_now = now
        sent = time.monotonic()
        args = self._lease_args(now, op, want_t, want_c)

        def handle(reply: Any) -> None:
            self._granted(reply, now, sent, opno, op, tokens, cost)

        try:
            if wait:
                reply = self._link.call("ledger", self._keys(), args)
                handle(reply)
            else:
                self._link.send("ledger", self._keys(), args, handle)
        except Unavailable:
            if self._flying == opno:  # not answered: lost
                self._granted(None, now, sent, opno, op, tokens, cost)
            self._fallback(now)
            return False
        return True

    def _granted(self, reply: Any, now: float, sent: float, opno: int, op: Op, tokens: int, cost: float) -> None:
        """A renewal's reply (None: lost; its usage is replayed from ``_unacked``)."""
        if self._flying == opno:
            self._flying = 0
        self._st, self._sc = max(self._st - tokens, 0), self._sc - cost
        if self._sc < 1e-12:  # a float residue
            self._sc = 0.0
        if reply is None:  # the slice is unusable from here; its size stays known, as the last view counts it
            self._slice_end = -_INF
            return
        self._take(reply, now, sent, opno, op.seq)
        head = split(reply, 16)[0]
        self._gt = int(float(head[14])) if head[14] else 0
        self._gc = float(head[15]) if head[15] else 0.0
        period_end = _INF if self._rolling else self._bounds_at(float(op.key))[1]
        self._slice_end = min(now + self.lease.ttl_s - self._sync_s, period_end)
        if not self._room(now):  # no headroom for this process (in any of the budget's limits): ask again later
            self._dry_until = now + self._sync_s

    def _tend(self, now: float) -> None:
        """Report when due: every ``sync_ms`` while spending, or once the slice runs low (lock held)."""
        if self._local is not None:
            return
        due = now >= self._due
        if self._flying:
            if not due:
                return
            self._link.flush()  # the last report's reply, sent sync_ms ago, is in: read it
            if self._flying or self._local is not None:
                return
        if (due and (self._ut or self._uc or self._low(now))) or (self._low(now) and now >= self._dry_until):
            self._report(now, False)

    def _ensure(self, now: float) -> bool:
        """True if the slice has room at ``now``, asking the server (one round trip) when it has not."""
        self._last_now = now
        self._tend(now)
        if self._local is not None:
            return False
        if self._room(now):
            return True
        if self._flying:
            self._link.flush()  # a renewal's reply may be waiting
            if self._room(now):
                return True
        if now >= self._dry_until and self._local is None:
            self._report(now, True)
        return self._local is None and self._room(now)

    # -- the engine's interface ------------------------------------------------

    def available(self, now: float) -> bool:
        return self.refusal(now) is None

    def refusal(self, now: float) -> tuple[str, float | None] | None:
        with self._link.lock:
            if self._local is None and self._ensure(now):
                return None
            if self._local is not None:
                return self._fallback(now).refusal(now)
            v = self._view
            name = self.spec.name
            if v is not None and self._spent(v, self._st + self._ut, self._sc + self._uc) >= self.spec.exhaust_at:
                return f"budget {name} exhausted", self._resets(v, now)
            return (f"budget {name} fully reserved by calls in flight and other processes' slices",
                    self._resets(v, now) if v is not None else None)

    def reserve(self, now: float, tokens: int, cost: float) -> int:
        _check_amounts(tokens, cost)
        with self._link.lock:
            # refusal() has just judged the slice for this decision: ask the server only if it is full now
            admitted = self._local is None and (self._room(now) or self._ensure(now))
            if self._local is not None:  # down, or went down while asking
                return super().reserve(now, tokens, cost)
            if not admitted:
                return 0
            rid = self._next_rid
            self._next_rid = rid + 1
            self._res[rid] = (tokens, cost)
            self._rt, self._rc = self._rt + tokens, self._rc + cost
            return rid

    def settle(self, now: float, reservation_id: int | None, tokens: int, cost: float) -> bool:
        _check_amounts(tokens, cost)
        with self._link.lock:
            if reservation_id is not None and reservation_id in self._rids:
                # reserved on the server, not against the slice (in the exact mode before a reload, or
                # during an outage): settled as the exact mode does, so that reservation goes with it
                return super().settle(now, reservation_id, tokens, cost)
            res = self._res.pop(reservation_id, None) if reservation_id is not None else None
            if res is not None:
                self._rt, self._rc = self._rt - res[0], self._rc - res[1]
                if not self._res:
                    self._rt, self._rc = 0, 0.0
            if self._local is not None:
                found = super().settle(now, reservation_id, tokens, cost)
                return found or res is not None
            if now >= self._uend:
                self._roll(now)
            if not (self._ut or self._uc) and (tokens or cost) and not self._rolling:
                # the period this usage belongs to: a call settled after its period ended is booked in
                # the next one, whatever period the slice (or a renewal still in flight) was for
                start, self._uend = self._period(now)
                self._ukey = repr(start)
            self._ut, self._uc = self._ut + tokens, self._uc + cost
            self._last_now = max(self._last_now, now)
            self._tend(now)
            return res is not None

    def _roll(self, now: float) -> None:
        """If the period of the unreported usage has ended, book the usage in it (pipelined, applied once)."""
        if now >= self._uend and (self._ut or self._uc) and self._ukey:
            self._close_period()

    def _close_period(self) -> None:
        """Book the unreported usage in the period it was settled in (pipelined, applied once)."""
        at = float(self._ukey)
        op = Op(at, "", self._ut, self._uc, self._link.next_seq(), self._ukey)
        self._unacked[op.seq] = op
        self._remember(at, op.tokens, op.cost, op.key)
        self._ukey, self._uend = "", _INF
        self._ut, self._uc, self._gt, self._gc, self._slice_end = 0, 0.0, 0, 0.0, -_INF
        if not self._send("settle", at, op, quiet=8 | 4, key=op.key):
            self._fallback(at)

    def _mine_view(self, now: float) -> View | None:
        """The server's view with this process's unreported usage and its own slice replaced by its calls
        in flight; None if there is none (then one round trip fetches it)."""
        self._tend(now)
        v = self._view
        if v is None or now >= v.end:
            if not self._report(now, True) or self._view is None:
                return None
            v = self._view
        return v

    def _fractions(self, v: View) -> tuple[float, float]:
        """(used, spent) with this process's part as it is now."""
        ut, uc = self._st + self._ut, self._sc + self._uc
        rt = v.rt - self._gt + self._rt
        rc = v.rc - self._gc + self._rc
        used = max((v.tok + ut + rt) / self._tl, (v.cost + uc + rc) / self._cl)
        spent = max((v.tok + ut) / self._tl, (v.cost + uc) / self._cl)
        return used, spent

    def used_fraction(self, now: float) -> float:
        with self._link.lock:
            v = self._mine_view(now) if self._local is None else None
            return self._fractions(v)[0] if v is not None else self._fallback(now).used_fraction(now)

    def spent_fraction(self, now: float) -> float:
        with self._link.lock:
            v = self._mine_view(now) if self._local is None else None
            return self._fractions(v)[1] if v is not None else self._fallback(now).spent_fraction(now)

    def would_exceed(self, now: float, tokens: int, cost: float) -> bool:
        with self._link.lock:
            v = self._mine_view(now) if self._local is None else None
            if v is None:
                return self._fallback(now).would_exceed(now, tokens, cost)
            used = self._fractions(v)[0]
            return used + max(tokens / self._tl, cost / self._cl) >= self.spec.exhaust_at

    def resets_at(self, now: float) -> float | None:
        with self._link.lock:
            v = self._mine_view(now) if self._local is None else None
            return self._resets(v, now) if v is not None else self._fallback(now).resets_at(now)

    def snapshot(self, now: float) -> dict[str, Any]:
        """The shared usage, exact: this process reports first (one round trip); its slice is shown apart."""
        with self._link.lock:
            if self._local is None and self._report(now, True) and self._view is not None:
                v = self._view
                used, _ = self._fractions(v)
                spec = self.spec
                return {
                    "name": spec.name, "period": spec.period, "period_start": v.start,
                    "period_end": None if self._rolling else v.end, "resets_at": self._resets(v, now),
                    "tokens_used": v.tok + self._ut, "tokens_reserved": v.rt - self._gt + self._rt,
                    "tokens_limit": spec.tokens, "cost_used": v.cost + self._uc,
                    "cost_reserved": v.rc - self._gc + self._rc, "cost_limit": spec.cost_usd,
                    "reservations": v.nres, "used_fraction": used, "warned": v.warned,
                    "exhausted": used >= spec.exhaust_at, "lease_tokens": self._gt, "lease_cost": self._gc,
                }  # fmt: skip
            return super().snapshot(now)

    def evaluate(self, now: float) -> None:
        """Re-judge the thresholds now (after a reload): the usage is reported and the slice renewed under
        the limits in force, so a slice leased under a higher limit is not spent on (one round trip)."""
        with self._link.lock:
            if self._local is None:
                self._report(now, True)
            super().evaluate(now)

    def tick(self, now: float) -> None:
        """Report usage that is due (an engine's ``tick``): a process that stops deciding still reports."""
        with self._link.lock:
            self._tend(now)

    def release(self) -> None:
        """Report the last usage and give the slice back (``close``; pipelined, read by the store's flush)."""
        with self._link.lock:
            if self._flying:
                self._link.flush()
            if self._local is None and (self._ut or self._uc or self._gt or self._gc):
                self._report(self._last_now, False, want=False)

    # -- outages -----------------------------------------------------------------

    def _fallback(self, now: float) -> BudgetLedger:
        if self._local is None:
            # the slice is given up; what was settled and not reported is pushed with the outage's backlog
            if self._ut or self._uc:
                key = self._ukey or self._period_key(now)
                agg = self._backlog.get(key)
                if agg is None:
                    agg = self._backlog[key] = Aggregate(now)
                agg.now = max(agg.now, now)
                agg.tokens += self._ut
                agg.cost += self._uc
                agg.count += 1
                self._remember(now, self._ut, self._uc, key)
            v = self._view
            if v is not None:  # decide locally on what the fleet had, this process's usage included
                v.tok, v.cost = v.tok + self._st + self._ut, v.cost + self._sc + self._uc
                v.rt, v.rc = max(v.rt - self._gt, 0), max(v.rc - self._gc, 0.0)
            self._ut, self._uc, self._gt, self._gc, self._slice_end = 0, 0.0, 0, 0.0, -_INF
            self._ukey, self._uend = "", _INF
            if self._res:  # calls in flight against the slice: the local ledger holds their reservations
                expires, key = now + self.spec.reservation_ttl_s, self._period_key(now)
                for rid, (tokens, cost) in self._res.items():
                    self._rids[rid] = ("", tokens, cost, expires, key)
                self._res, self._rt, self._rc = {}, 0, 0.0
        return super()._fallback(now)

    def recovered(self) -> None:
        super().recovered()
        self._gt, self._gc, self._slice_end, self._flying, self._st, self._sc = 0, 0.0, -_INF, 0, 0, 0.0
        self._dry_until = self._due = -_INF

    def forked(self) -> None:
        super().forked()
        self._gt, self._gc, self._slice_end, self._flying = 0, 0.0, -_INF, 0
        self._ut, self._uc, self._st, self._sc, self._rt, self._rc = 0, 0.0, 0, 0.0, 0, 0.0
        self._ukey, self._uend = "", _INF
        self._res = {}
        self._dry_until = self._due = -_INF

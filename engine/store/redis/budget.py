"""A budget ledger whose usage lives on a Redis server, shared by every process.

:class:`RedisLedger` has the methods of :class:`engine.budget.BudgetLedger`
that the engine calls, with the same semantics (periods, ``warn_at`` and
``exhaust_at``, one event per period, reservations with a TTL); the server
half is :data:`engine.store.redis.lua.LEDGER`, run atomically per operation.

What each call costs and how exact it is:

==========================  ===========================================================
``available``               one round trip; exact (server state at that instant)
``reserve``                 no wait: sent pipelined, admitted against the view the
                            ``available`` just before it fetched (at most ``cache_ms``
                            old, else one round trip); the server books it even if
                            another process filled the budget in between, so every
                            admitted call holds a reservation: processes together
                            overshoot by at most their in-flight reservations
``settle``                  applied at most once (an ack sequence per client); no
                            wait while the view says it crosses no threshold and
                            starts no period, else one round trip (so the event
                            comes with this call); a crossing the view did not
                            foresee (other processes' usage) is reported at this
                            process's next round trip
``spent_fraction`` et al.   the view of the last reply if at most ``cache_ms`` old
                            and still in the same period, else one round trip
``snapshot``, ``evaluate``  one round trip; exact
==========================  ===========================================================

Period resets happen on the server (keys carry the period start), so exactly
one process emits ``BudgetReset``, and one emits each ``BudgetWarning`` and
``BudgetExhausted`` per period. When the server cannot be reached, the
ledger decides on a local :class:`~engine.budget.BudgetLedger` seeded with
the last view; everything settled meanwhile is pushed when the server is
back. If it came back empty, the usage this process settled in the current
periods is pushed instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from engine.budget import BudgetLedger
from engine.store.redis.budget_sync import MAX_FIELDS, PRUNE_AT, Aggregate, LedgerSync, Op, budget_key
from engine.store.redis.link import Cmd

log = logging.getLogger("engine.redis")

__all__ = ["RedisLedger", "budget_key"]


class RedisLedger(LedgerSync):
    """One shared budget; see the module docstring for what is exact and what is cached."""

    # -- the engine's interface ----------------------------------------------

    def available(self, now: float) -> bool:
        """True while the budget is not exhausted; exact (one round trip)."""
        with self._link.lock:
            v = self._sync("peek", now)
            if v is None:
                return self._fallback(now).available(now)
            return self._fraction(v) < self.spec.exhaust_at

    def refusal(self, now: float) -> tuple[str, float | None] | None:
        """``None`` while available; else why not and when it resets (as :meth:`BudgetLedger.refusal`)."""
        if self.available(now):
            return None
        name = self.spec.name
        if self.spent_fraction(now) < self.spec.exhaust_at:
            return f"budget {name} fully reserved by calls in flight", self.resets_at(now)
        return f"budget {name} exhausted", self.resets_at(now)

    def reserve(self, now: float, tokens: int, cost: float) -> int:
        """Reserve an estimate; its id (> 0), or 0 when the budget is exhausted."""
        _check_amounts(tokens, cost)
        with self._link.lock:
            v = self._fresh(now) or self._sync("peek", now)
            if v is not None:
                if self._fraction(v) >= self.spec.exhaust_at:
                    return 0
                rid = self._next_rid
                field = f"{self._link.client}:{rid}"
                if self._send("hold", now, None, rid=field, tokens=tokens, cost=cost):
                    self._next_rid = rid + 1
                    if len(self._rids) >= PRUNE_AT:  # reservations of decisions never recorded
                        self._rids = {k: r for k, r in self._rids.items() if r[3] > now}
                    self._rids[rid] = (field, tokens, cost, now + self.spec.reservation_ttl_s, v.key)
                    v.rt, v.rc, v.touched = v.rt + tokens, v.rc + cost, True
                    return rid
            local = self._fallback(now)
            rid = local.reserve(now, tokens, cost)
            if rid:
                self._next_rid = max(self._next_rid, rid + 1)
                self._rids[rid] = ("", tokens, cost, now + self.spec.reservation_ttl_s, self._period_key(now))
            return rid

    def settle(self, now: float, reservation_id: int | None, tokens: int, cost: float) -> bool:
        """Record real usage, replacing the reservation if still outstanding (then True)."""
        _check_amounts(tokens, cost)
        with self._link.lock:
            res = self._rids.get(reservation_id) if reservation_id is not None else None
            try:
                return self._settle(now, reservation_id if res is not None else None, res, tokens, cost)
            finally:
                if res is not None:  # after a fallback was seeded: it mirrors the reservation
                    del self._rids[reservation_id]  # type: ignore[arg-type]

    def _settle(self, now: float, rid: int | None, res: tuple[str, int, float, float, str] | None, tokens: int,
                cost: float) -> bool:
        field = res[0] if res is not None else ""
        self._remember(now, tokens, cost)
        if self._local is None:
            op = Op(now, field, tokens, cost, self._link.next_seq(), self._period_key(now))
            self._unacked[op.seq] = op  # before sending: a failure may report it lost at once
            found = res is not None and now < res[3] and (self._rolling or res[4] == self._period_key(now))
            v = self._view
            if v is not None and now < v.end and self._spent(v, tokens, cost) < self._alarm(v):
                if self._send("settle", now, op):  # no threshold to cross, no period to start: no wait
                    v.tok, v.cost, v.touched = v.tok + tokens, v.cost + cost, True
                    if found and res is not None and field:
                        v.rt, v.rc = v.rt - res[1], v.rc - res[2]
                    return found
            elif self._sync("settle", now, op) is not None:
                return found
            # unconfirmed: it stays in _unacked and is replayed under its number (applied once)
            return self._fallback(now).settle(now, rid, tokens, cost)
        key = self._period_key(now)
        agg = self._backlog.get(key)
        if agg is None:
            agg = self._backlog[key] = Aggregate(now)
        agg.now = max(agg.now, now)
        agg.tokens += tokens
        agg.cost += cost
        agg.count += 1
        if field and len(agg.fields) < MAX_FIELDS:
            agg.fields.append(field)
        return self._fallback(now).settle(now, rid, tokens, cost)

    def used_fraction(self, now: float) -> float:
        """Max over the limits of (settled + reserved) / limit; the view if fresh."""
        with self._link.lock:
            v = self._fresh(now) or self._sync("peek", now)
            return self._fraction(v) if v is not None else self._fallback(now).used_fraction(now)

    def spent_fraction(self, now: float) -> float:
        """Max over the limits of settled / limit; the view if fresh."""
        with self._link.lock:
            v = self._fresh(now) or self._sync("peek", now)
            return self._spent(v) if v is not None else self._fallback(now).spent_fraction(now)

    def exhausted(self, now: float) -> bool:
        """True when ``used_fraction(now) >= spec.exhaust_at``."""
        return self.used_fraction(now) >= self.spec.exhaust_at

    def would_exceed(self, now: float, tokens: int, cost: float) -> bool:
        """True if adding ``tokens``/``cost`` would reach ``exhaust_at`` (advisory)."""
        with self._link.lock:
            v = self._fresh(now) or self._sync("peek", now)
            if v is None:
                return self._fallback(now).would_exceed(now, tokens, cost)
            return self._fraction(v, tokens, cost) >= self.spec.exhaust_at

    def resets_at(self, now: float) -> float | None:
        """When the budget frees up: the period end; for rolling, an estimate (None unless exhausted)."""
        with self._link.lock:
            v = self._fresh(now) or self._sync("peek", now)
            if v is None:
                return self._fallback(now).resets_at(now)
            return self._resets(v, now)

    def evaluate(self, now: float) -> None:
        """Re-judge the thresholds now (after a reload changed the limits)."""
        with self._link.lock:
            if self._sync("eval", now) is None:
                self._fallback(now).evaluate(now)

    def snapshot(self, now: float) -> dict[str, Any]:
        """A JSON-able view of the shared usage, exact (one round trip)."""
        with self._link.lock:
            v = self._sync("peek", now)
            if v is None:
                return self._fallback(now).snapshot(now)
            fraction, spec = self._fraction(v), self.spec
            return {
                "name": spec.name, "period": spec.period, "period_start": v.start,
                "period_end": None if self._rolling else v.end, "resets_at": self._resets(v, now),
                "tokens_used": v.tok, "tokens_reserved": v.rt, "tokens_limit": spec.tokens,
                "cost_used": v.cost, "cost_reserved": v.rc, "cost_limit": spec.cost_usd,
                "reservations": v.nres, "used_fraction": fraction, "warned": v.warned,
                "exhausted": fraction >= spec.exhaust_at,
            }  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The last known state in :meth:`BudgetLedger.to_dict` form (the server stays the truth)."""
        with self._link.lock:
            if self._local is not None:
                return self._local.to_dict()
            return self._as_dict(self._view.now if self._view is not None else time.time())

    # -- outages -----------------------------------------------------------------

    def _as_dict(self, now: float) -> dict[str, Any]:
        data = dict(self._blank)
        v = self._view
        live = [(rid, r) for rid, r in self._rids.items() if r[3] > now]
        ours: list[list[Any]] = [[rid, r[3], r[1], r[2]] for rid, r in live]
        if v is not None:
            data.update(period_start=v.start, period_end=v.end, tokens_used=v.tok, cost_used=v.cost,
                        warned=v.warned, exhausted_fired=v.exh, touched=v.touched)
            if self._rolling:
                k = round(v.end / self._width) - 1
                data.update(bucket=k, buckets=[[k, v.tok, v.cost]])
            theirs_tok = v.rt - sum(r[1] for _, r in live if r[0])  # booked on the server by others
            theirs_cost = v.rc - sum(r[2] for _, r in live if r[0])
            if theirs_tok > 0 or theirs_cost > 1e-12:  # other processes' reservations, as one that expires
                ours.append([0, now + self.spec.reservation_ttl_s, max(theirs_tok, 0), max(theirs_cost, 0.0)])
        data.update(next_id=self._next_rid, reservations=sorted(ours, key=lambda r: r[1]))
        return data

    def _fallback(self, now: float) -> BudgetLedger:
        """The local ledger that decides while the server is unreachable."""
        if self._local is None:
            try:
                self._local = BudgetLedger.from_dict(self.spec, self._as_dict(now), events=self._events)
            except ValueError:  # a view that does not restore: decide on this process's usage only
                log.exception("redis ledger %s: starting the local fallback empty", self.spec.name)
                self._local = BudgetLedger(self.spec, events=self._events)
        return self._local

    def replay(self, data_lost: bool, epoch: str | None) -> list[Cmd]:
        """What to send to reconcile, in order: settlements the server may lack (each period's outage
        aggregate numbered once), or all of ours in the current periods if it lost its data."""
        local = self._local
        flags = local.to_dict() if local is not None else None
        quiet = 4 | 8 | (1 if flags is not None and flags["warned"] else 0) \
            | (2 if flags is not None and flags["exhausted_fired"] else 0)
        if data_lost:
            if self._restored != epoch:  # everything this client settled in the current periods, once
                self._restored = epoch
                self._backlog.clear()
                self._unacked.clear()
                for key, (tok, cost) in sorted(self._mine.items(), key=lambda kv: float(kv[0])):
                    at = (float(key) + 0.5) * self._width if self._rolling else float(key)
                    op = Op(at, "", tok, cost, self._link.next_seq(), key)
                    self._unacked[op.seq] = op
            if self._view is not None:
                quiet |= (1 if self._view.warned else 0) | (2 if self._view.exh else 0)
        for key in sorted(self._backlog, key=float):  # settled since the last call: numbered now
            agg = self._backlog[key]
            op = Op(agg.now, " ".join(agg.fields), agg.tokens, agg.cost, self._link.next_seq(), key, agg.count)
            self._unacked[op.seq] = op
        self._backlog.clear()
        return [Cmd("ledger", self._keys(), self._args("settle", op.now, op.seq, op.field, op.tokens, op.cost, quiet,
                                                       op.key), self._replayed(op), op.seq)
                for op in sorted(self._unacked.values(), key=lambda op: op.seq)]

    def _replayed(self, op: Op) -> Callable[[Any], None]:
        def handle(reply: Any) -> None:
            if reply is None:
                return
            self._unacked.pop(op.seq, None)
            self._opno += 1
            self._take(reply, op.now, time.monotonic(), self._opno, 0)
        return handle

    def unconfirmed(self) -> int:
        """Settlements the server has not confirmed yet (sent and unanswered, or kept during an outage)."""
        return sum(op.count for op in self._unacked.values()) + sum(a.count for a in self._backlog.values())

    def backlog(self) -> int:
        """Commands a replay would send now: one per unconfirmed operation and per period settled offline."""
        return len(self._unacked) + len(self._backlog)

    def forked(self) -> None:
        """In a child process: what this client knew belongs to the parent."""
        self._view, self._local, self._restored = None, None, None
        self._rids, self._mine, self._backlog, self._unacked = {}, {}, {}, {}

    def recovered(self) -> None:
        """The server is back and reconciled: decide on it again."""
        self._local = None


def _check_amounts(tokens: int, cost: float) -> None:
    if tokens < 0 or not cost >= 0.0:
        raise ValueError(f"expected tokens >= 0 and cost >= 0, got {tokens!r} and {cost!r}")

"""A circuit breaker whose state, probes and rolling window live on a Redis server.

:class:`RedisBreaker` has the methods of :class:`engine.breaker.CircuitBreaker`
that the engine calls, with the same semantics; every transition runs in
:data:`engine.store.redis.lua_breaker.BREAKER`, atomically on the server, so exactly one
process performs (and emits the event of) each transition.

What each call costs and how exact it is:

=====================  ==============================================================
``try_acquire``        closed, disabled, metrics-only, forced-open, or open before
                       ``open_until``: from the cached state if at most ``cache_ms``
                       old (no round trip; from half that age on, a pipelined
                       refresh, read by the next round trip), so another process's open (or close) is
                       seen within ``cache_ms``; otherwise, and always when half-open
                       or due to half-open, one round trip: probe permits are exact
                       across processes
``on_result``          a success (an ordinary call, not slow) while the cached
                       window holds no failure and no slow call: batched, sent
                       as one ``ok`` command with the next refresh (within
                       ``cache_ms`` while the process decides; before any other
                       operation of the breaker; at ``tick`` and ``close``; at once with
                       ``cache_ms=0``), pipelined: it cannot cause a transition.
                       A batch is booked at the time of its last success (in a
                       time window, up to ``cache_ms`` later than the first).
                       Any other result (a
                       failure, a slow call, a probe, or any result once the window
                       holds a failure): one round trip, so a trip is decided and
                       reported by the ``record`` that causes it
``state``, ``retry_at``  the cached state if fresh, else one round trip
``force``, ``snapshot``, ``export``, ``restore``, ``reconfigure``: one round trip, exact
=====================  ==============================================================

The rolling window is shared: every process's results land in one window on
the server (for a count window, "the last N calls" in the order the server
received them). Times: the server compares wall-clock seconds the clients
send, so hosts need synchronised clocks; an engine clock below 1e9 (the
default ``time.monotonic``) is converted with a fixed offset to wall time.

When the server cannot be reached, the breaker decides on a local
:class:`~engine.breaker.CircuitBreaker` seeded with the last state it saw
(with an empty window); once the server is back, a local open (or a manual
``force``) made meanwhile is pushed, and the server's state wins otherwise.
"""

from __future__ import annotations

import math
import time
from typing import Any

from engine.breaker import CALL, REFUSED, BreakerState, CircuitBreaker, ForceTarget
from engine.events import Event
from engine.policy.model import BreakerSpec
from engine.store.redis.breaker_sync import BreakerSync
from engine.store.redis.link import Cmd, Link

__all__ = ["LOCAL_TICKETS", "RedisBreaker"]

#: Tickets of probes the local fallback admitted are offset by this (server tickets stay below).
LOCAL_TICKETS = 1 << 60
_INF = math.inf
_ADMITTING = ("closed", "disabled", "metrics_only")
_FORCED: dict[str | None, str] = {"open": "forced_open", "closed": "closed", None: "closed",
                                  "disabled": "disabled", "metrics_only": "metrics_only"}


class RedisBreaker(BreakerSync):
    """One model's shared breaker; see the module docstring."""

    def __init__(self, link: Link, prefix: str, name: str, spec: BreakerSpec, events: list[Event],
                 cache_s: float, offset: float, skew: list[float] | None = None) -> None:
        _check_permits(spec)
        super().__init__(link, prefix, name, spec, events, cache_s, offset, skew)

    # -- decisions -------------------------------------------------------------

    def try_acquire(self, now: float) -> int:
        """A ticket (CALL, or >= 2 for a probe) if the model may be called, else REFUSED."""
        with self._link.lock:
            self._refresh(now)
            v = self._cached(now)
            if v is not None:
                s = v.state
                if s in _ADMITTING:
                    return CALL
                if s == "forced_open" or (s == "open" and v.open_until is not None
                                          and self._wall(now) < v.open_until):
                    return REFUSED
            r = self._sync(now, "acquire")
            if r is not None:
                return int(float(r[1]))
            ticket = self._fallback(now).try_acquire(now)
            return ticket + LOCAL_TICKETS if ticket >= 2 else ticket

    def release(self, now: float, ticket: int) -> None:
        """Give back an unused ticket (frees the probe permit it held)."""
        if ticket < 2:
            return
        with self._link.lock:
            if ticket >= LOCAL_TICKETS:
                if self._local is not None:
                    self._local.release(now, ticket - LOCAL_TICKETS)
                return
            if self._sync(now, "release", ticket) is None and self._local is not None:
                self._local.release(now, ticket)

    def on_result(self, now: float, failed: bool | None, latency_ms: float, *, ticket: int) -> None:
        """Record a call's outcome (``failed=None``: an ignored error class)."""
        with self._link.lock:
            if ticket >= LOCAL_TICKETS:
                if self._local is not None:
                    self._local.on_result(now, failed, latency_ms, ticket=ticket - LOCAL_TICKETS)
                    return
                ticket = CALL
            if failed is None and ticket < 2:
                return  # an ordinary call of an ignored class: nothing to count
            slow = latency_ms > self.spec.slow_call_ms
            code = "-1" if failed is None else "1" if failed else "0"
            args = (ticket, code, "1" if slow else "0")
            if ticket < 2 and not failed and not slow and self._quiet(now):
                # cannot cause a transition: batched, sent within cache_ms (at once with cache_ms=0)
                self._ok += 1
                self._ok_now = now
                if self._cache_s <= 0.0 and not self._send_ok():
                    self._fallback(now).on_result(now, failed, latency_ms, ticket=CALL)
                return
            elif self._sync(now, "result", *args) is not None:
                return
            self._fallback(now).on_result(now, failed, latency_ms, ticket=CALL)

    def reconfigure(self, spec: BreakerSpec, now: float) -> None:
        """Apply a reloaded spec; the server resets the window if its kind or size changed."""
        _check_permits(spec)
        with self._link.lock:
            self._set_spec(spec)
            if self._local is not None:
                self._local.reconfigure(spec, now)
            self._sync(now, "sync")

    # -- manual control and queries --------------------------------------------

    def force(self, state: ForceTarget | None, now: float) -> None:
        """Manual override, exactly as :meth:`CircuitBreaker.force`; for every process."""
        if state not in _FORCED:
            raise ValueError(f"expected 'open', 'closed', 'disabled', 'metrics_only' or None, got {state!r}")
        args = (_FORCED[state], "released" if state is None else "forced")
        with self._link.lock:
            if self._sync(now, "force", *args) is not None:
                self._pending = None
                return
            self._pending = ("force", args)
            self._fallback(now).force(state, now)

    def state(self, now: float) -> BreakerState:
        """The state at ``now`` (the cached one if fresh and no transition is due)."""
        with self._link.lock:
            v = self._cached(now)
            if v is not None and v.state != "half_open" and (
                    v.open_until is None or self._wall(now) < v.open_until):
                return v.state
            if self._sync(now, "sync") is None:
                return self._fallback(now).state(now)
            assert self._view is not None
            return self._view.state

    def refusal(self, now: float) -> tuple[BreakerState, float | None]:
        """``(state(now), retry_at(now))``: what a refused ticket's reason reads."""
        until = self.retry_at(now)
        return self.state(now), until

    def retry_at(self, now: float) -> float | None:
        """None if a call would be admitted at ``now``, else the earliest time one may be."""
        with self._link.lock:
            v = self._cached(now)
            if v is None or v.state == "half_open" or (v.open_until is not None and self._wall(now) >= v.open_until):
                v = self._view if self._sync(now, "sync") is not None else None
            if v is None:
                return self._fallback(now).retry_at(now)
            if v.state == "forced_open":
                return _INF
            if v.state == "open" and v.open_until is not None:
                return self._engine(v.open_until, now)
            if v.state == "half_open" and v.us >= v.pm and v.mind is not None:
                return self._engine(v.mind, now)
            return None

    @property
    def open_until(self) -> float | None:
        """When an open breaker may half-open (``inf`` if forced open), in engine time; ``None`` otherwise.

        As :attr:`CircuitBreaker.open_until`, from the state last read (call :meth:`state` first for a
        fresh one, as the engine's ``metrics_snapshot`` does).
        """
        with self._link.lock:
            v = self._view
            if self._local is not None or v is None:
                return self._local.open_until if self._local is not None else None
            return self._until(v, self._last_now)

    def snapshot(self, now: float) -> dict[str, Any]:
        """State and shared window metrics at ``now`` (one round trip)."""
        with self._link.lock:
            if self._sync(now, "sync") is None:
                return self._fallback(now).snapshot(now)
            v = self._view
            assert v is not None
            c = v.calls
            return {"state": v.state, "calls": c, "failures": v.failures, "slow_calls": v.slow,
                    "failure_rate": 100.0 * v.failures / c if c else 0.0,
                    "slow_call_rate": 100.0 * v.slow / c if c else 0.0,
                    "open_until": self._until(v, now), "consecutive_opens": v.co, "probes_in_flight": v.fl}

    def export(self, now: float) -> dict[str, Any]:
        """The state worth keeping across a restart, in this engine's clock."""
        with self._link.lock:
            if self._sync(now, "sync") is None:
                return self._fallback(now).export(now)
            v = self._view
            assert v is not None
            until = self._engine(v.open_until, now) if v.state == "open" and v.open_until is not None else None
            return {"state": v.state, "open_until": until, "open_for": v.of, "consecutive_opens": v.co}

    def restore(self, data: dict[str, Any], now: float) -> None:
        """Take back an :meth:`export` for every process; events are not re-emitted."""
        with self._link.lock:
            args = self._restore_args(data, now)
            if self._sync(now, "restore", *args, events=False) is not None:
                self._pending = None
                return
            self._pending = ("restore", args)
            self._fallback(now).restore(data, now)

    # -- outages -----------------------------------------------------------------

    def _fallback(self, now: float) -> CircuitBreaker:
        """The local breaker that decides while the server is unreachable."""
        if self._local is None:
            local = CircuitBreaker(self.name, self.spec, events=self._events)
            v = self._view
            if v is not None:
                local.restore({"state": v.state, "open_for": v.of, "consecutive_opens": v.co,
                               "open_until": self._engine(v.open_until, now) if v.open_until else None}, now)
            self._local, self._seeded = local, v.state if v is not None else "closed"
        return self._local

    def replay(self, data_lost: bool) -> list[Cmd]:
        """A manual change made during the outage, or a local open the server should learn."""
        now = self._last_now
        if self._pending is not None:
            op, args = self._pending
        elif self._local is not None or (data_lost and self._view is not None):
            data = self._local.export(now) if self._local is not None else {
                "state": self._view.state if self._view else "closed", "open_for": self._view.of if self._view else 0.0,
                "consecutive_opens": self._view.co if self._view else 0,
                "open_until": self._engine(self._view.open_until, now) if self._view and self._view.open_until
                else None}
            changed = self._local is not None and data["state"] != self._seeded
            if data["state"] in ("closed", "half_open") or not (changed or data_lost):
                return []
            op, args = "adopt", self._restore_args(data, now)
        else:
            return []
        sent = time.monotonic()

        def handle(reply: Any) -> None:
            if reply is not None:
                self._pending = None
                self._take(reply, now, sent, False)
        return [Cmd("breaker", self._keys, self._args(now, op, *args), handle)]

    def flush_results(self) -> None:
        """Send the batched successes now (``tick``, ``close``; pipelined, read by the next round trip)."""
        with self._link.lock:
            if self._ok and self._local is None:
                self._send_ok()

    def recovered(self) -> None:
        """The server is back: decide on it again (from a fresh state)."""
        self._local = self._seeded = None
        self._view = None
        self._ok, self._refreshing = 0, 0.0

    forked = recovered

    def __repr__(self) -> str:
        return f"RedisBreaker({self.name!r})"


def _check_permits(spec: BreakerSpec) -> None:
    if spec.half_open_permits < 1:
        raise ValueError(f"expected half_open_permits >= 1, got {spec.half_open_permits}")

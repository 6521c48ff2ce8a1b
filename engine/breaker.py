"""The per-model circuit breaker: a pure state machine driven by explicit ``now``.

States: ``closed``, ``open``, ``half_open`` and the manual ``forced_open``,
``disabled`` (always admits, records nothing) and ``metrics_only`` (always
admits, records, never transitions).

**Tickets.** :meth:`CircuitBreaker.try_acquire` returns an ``int`` ticket:
``REFUSED`` (0, falsy) when the call may not go ahead, ``CALL`` (1) for an
ordinary call, and a unique value >= 2 for a half-open probe. Pass the ticket
back to :meth:`~CircuitBreaker.on_result` or :meth:`~CircuitBreaker.release`.
A result counts towards a half-open episode only when its ticket is a probe
still in flight in *that* episode; any other result (an ordinary call, a probe
of an earlier episode, an expired probe reporting late) causes no
transition: it updates the window metrics while closed or open, and is not
counted while half-open (see **Metrics**).

**Metrics.** As in Resilience4j, every transition except into open starts
fresh metrics: closed → open keeps the window that tripped it (results that
arrive while open are added to it); open → half-open starts an episode
window of ``half_open_permits`` calls that holds only this episode's probe
results (an expired probe as a failure), so ``snapshot`` while half-open
shows how the probes are doing; half-open → open keeps that episode window
(it agrees with the ``CircuitOpened`` event's metrics); half-open → closed
and every manual state start the policy's window empty. A result that is not
a probe of the running episode is not counted while half-open.

**Time.** Time-driven transitions happen lazily, at the first method call
with a ``now`` at or after the moment they are due: open becomes half-open
when ``now >= open_until``; a probe expires when ``now > admitted_at +
half_open_max_wait_s`` (a result reported exactly at that deadline is in
time) and counts as a failed probe result. Events carry ``at=now`` of the call
that observed the transition.

**Events.** Transitions append :mod:`engine.events` dataclasses to an internal
list; the caller collects them with :meth:`~CircuitBreaker.drain_events`
(``()`` without allocating when there are none).

**Threads.** Every state change runs under the breaker's lock, so no
interleaving admits more than ``half_open_permits`` probes per episode;
``try_acquire`` in an always-admitting state is a lock-free read.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any, Literal

from engine.events import CircuitClosed, CircuitHalfOpened, CircuitOpened, Event
from engine.locks import YieldingLock
from engine.policy.model import BreakerSpec
from engine.window import CountWindow, TimeWindow, window_for

__all__ = ["CALL", "REFUSED", "BreakerState", "CircuitBreaker", "ForceTarget"]

BreakerState = Literal["closed", "open", "half_open", "forced_open", "disabled", "metrics_only"]
ForceTarget = Literal["open", "closed", "disabled", "metrics_only"]

REFUSED = 0  #: ticket: the call may not go ahead
CALL = 1  #: ticket: an ordinary (non-probe) call
_FIRST_PROBE = 2
_INF = math.inf
_BLOCKING = ("open", "half_open", "forced_open")
_FORCED: dict[str | None, BreakerState] = {
    "open": "forced_open",
    "closed": "closed",
    None: "closed",
    "disabled": "disabled",
    "metrics_only": "metrics_only",
}


class CircuitBreaker:
    """One model's breaker, exactly as DESIGN.md's "Circuit breaker" paragraph says."""

    __slots__ = (
        "_consecutive_opens",
        "_events",
        "_fr_limit",
        "_in_flight",
        "_lock",
        "_min_calls",
        "_needed",
        "_next_deadline",
        "_open_for",
        "_open_until",
        "_p_calls",
        "_p_failures",
        "_p_slow",
        "_permits",
        "_probe_window",
        "_seq",
        "_slot_deadline",
        "_slot_ticket",
        "_slow_ms",
        "_sr_limit",
        "_state",
        "_trips_at_zero",
        "_used",
        "_window",
        "name",
        "spec",
    )

    def __init__(self, name: str, spec: BreakerSpec, *, events: list[Event] | None = None) -> None:
        """``events``: a list to append events to instead of an own queue (an
        engine shares one list among all its breakers and ledgers)."""
        if spec.half_open_permits < 1:
            raise ValueError(f"expected half_open_permits >= 1, got {spec.half_open_permits}")
        self.name = name
        self.spec = spec
        self._limits(spec)
        self._lock = YieldingLock()
        self._events: list[Event] = events if events is not None else []
        self._window: CountWindow | TimeWindow = window_for(spec)
        self._probe_window = False  # True while the window is a half-open episode's (see Metrics)
        minimum = spec.minimum_calls
        if spec.window == "count":
            minimum = min(minimum, spec.window_size)  # as Resilience4j: a full window suffices
        self._min_calls = max(1, minimum)
        self._permits = spec.half_open_permits
        self._needed = max(1, min(spec.minimum_calls, spec.half_open_permits))
        self._slot_ticket = [0] * self._permits  # 0: free
        self._slot_deadline = [_INF] * self._permits
        self._seq = 0
        self._state: BreakerState = "closed"
        self._open_until = _INF
        self._open_for = 0.0
        self._consecutive_opens = 0
        self._clear_episode()

    # -- decisions -----------------------------------------------------------

    def try_acquire(self, now: float) -> int:
        """A ticket if a decision may pick this model at ``now``, else ``REFUSED`` (0)."""
        state = self._state
        if state == "closed" or state == "disabled" or state == "metrics_only":
            return CALL
        if (state == "open" or state == "forced_open") and now < self._open_until:
            return REFUSED  # open and not yet due to half-open: nothing to change
        with self._lock:
            self._tick(now)
            state = self._state
            if state == "half_open":
                return self._admit(now)
            return REFUSED if state in _BLOCKING else CALL

    def refusal(self, now: float) -> tuple[BreakerState, float | None]:
        """``(state(now), retry_at(now))`` in one call: what a refused ticket's reason reads."""
        state = self._state
        if (state == "open" or state == "forced_open") and now < self._open_until:
            return state, self._open_until
        with self._lock:
            self._tick(now)
            return self._state, self._retry_at()

    def release(self, now: float, ticket: int) -> None:
        """Give back an unused ticket; frees the permit if it was a probe still in flight."""
        if ticket < _FIRST_PROBE:
            return
        with self._lock:
            self._tick(now)
            slot = self._probe_slot(ticket)
            if slot >= 0:
                self._free_slot(slot)
                self._used -= 1

    def on_result(self, now: float, failed: bool | None, latency_ms: float, *, ticket: int) -> None:
        """Record a call's outcome; ``failed=None`` is an ignored error class (not counted).

        A call is slow when ``latency_ms > spec.slow_call_ms``; a slow failure
        counts in both rates. ``latency_ms`` is trusted (validated upstream).
        """
        lock = self._lock
        if not lock.try_acquire(False):  # the uncontended path without a Python-level __enter__
            lock.acquire()
        try:
            self.on_result_held(now, failed, latency_ms, ticket)
        finally:
            lock.release()

    def on_result_held(self, now: float, failed: bool | None, latency_ms: float, ticket: int) -> None:
        """:meth:`on_result` without taking the breaker's lock.

        For an owner that already serialises every call on this breaker
        under a lock of its own (the engine: its breakers are used only with
        the engine's lock held); anyone else calls :meth:`on_result`.
        """
        state = self._state
        if state == "closed":  # the healthy path: no transition due, no probe
            if failed is not None:
                calls, failures, slow = self._window.add(now, failed, latency_ms > self._slow_ms)
                # _check_trip, written out; with no failed or slow call both rates are 0.0, under positive limits
                if calls >= self._min_calls and (failures or slow or self._trips_at_zero):
                    fr, sr = 100.0 * failures / calls, 100.0 * slow / calls
                    if fr >= self._fr_limit:
                        self._open(now, "failure_rate", fr, sr, calls, failures, slow)
                    elif sr >= self._sr_limit:
                        self._open(now, "slow_call_rate", fr, sr, calls, failures, slow)
            return
        is_slow = latency_ms > self._slow_ms
        self._tick(now)
        slot = self._probe_slot(ticket)
        if slot >= 0:
            self._probe_result(now, slot, failed, is_slow)
            return
        state = self._state
        if state == "disabled" or state == "half_open":
            return  # half-open metrics hold this episode's probes only
        if failed is not None:
            self._window.record(now, failed, is_slow)
            if state == "closed":
                self._check_trip(now)

    def reconfigure(self, spec: BreakerSpec, now: float) -> None:
        """Apply a reloaded spec, keeping the state.

        Thresholds, open durations and probe expiry apply from the next call;
        an open breaker keeps its current ``open_until``. The rolling window
        is kept unless its kind or size changed (then it starts empty). A
        change of ``half_open_permits`` while half-open restarts the episode
        with the new number (probes in flight become ordinary late results).
        """
        if spec.half_open_permits < 1:
            raise ValueError(f"expected half_open_permits >= 1, got {spec.half_open_permits}")
        with self._lock:
            old = self.spec
            self.spec = spec
            self._limits(spec)
            if (old.window, old.window_size, old.window_s, old.window_buckets) != (
                    spec.window, spec.window_size, spec.window_s, spec.window_buckets) and not self._probe_window:
                self._window = window_for(spec)  # an episode window keeps; the next close builds the new kind
            minimum = min(spec.minimum_calls, spec.window_size) if spec.window == "count" else spec.minimum_calls
            self._min_calls = max(1, minimum)
            self._needed = max(1, min(spec.minimum_calls, spec.half_open_permits))
            if spec.half_open_permits != self._permits:
                # new tickets must stay above every ticket handed out so far
                self._seq = (self._seq + 1) * self._permits // spec.half_open_permits + 1
                self._permits = spec.half_open_permits
                self._slot_ticket = [0] * self._permits
                self._slot_deadline = [_INF] * self._permits
                self._clear_episode()
                if self._state == "half_open":  # the restarted episode: fresh metrics of its size
                    self._window = CountWindow(self._permits)

    # -- manual control and queries ------------------------------------------

    def force(self, state: ForceTarget | None, now: float) -> None:
        """Manual override; every call starts fresh metrics and resets the backoff.

        ``"open"`` → forced open (never admits, emits ``CircuitOpened(reason="forced",
        open_until=inf)`` unless already forced open); ``"closed"`` and ``None``
        → normal closed operation; ``"disabled"``, ``"metrics_only"`` → those
        states. Leaving open, half-open or forced open for an admitting state
        emits ``CircuitClosed(reason="released")`` for ``None`` and
        ``CircuitClosed(reason="forced")`` otherwise. Probes in flight become
        ordinary late results.
        """
        if state not in _FORCED:
            expected = "'open', 'closed', 'disabled', 'metrics_only' or None"
            raise ValueError(f"expected {expected}, got {state!r}")
        target = _FORCED[state]
        with self._lock:
            old = self._state
            fr, sr = self._window.failure_rate(now), self._window.slow_call_rate(now)
            self._fresh_window()
            self._clear_episode()
            self._consecutive_opens = 0
            self._open_until = _INF
            self._state = target
            if target == "forced_open":
                if old != "forced_open":
                    self._emit_opened(now, "forced", fr, sr, {})
            elif old in _BLOCKING:
                reason = "released" if state is None else "forced"
                self._emit_closed(now, reason, fr, sr)

    def state(self, now: float) -> BreakerState:
        """The state at ``now`` (applying any transition that is due)."""
        with self._lock:
            self._tick(now)
            return self._state

    @property
    def open_until(self) -> float | None:
        """When an open breaker may half-open (``inf`` if forced open); ``None`` otherwise."""
        return self._open_until if self._state in ("open", "forced_open") else None

    def retry_at(self, now: float) -> float | None:
        """``None`` if a call would be admitted at ``now``, else the earliest time one may be.

        Open: ``open_until``; forced open: ``inf``; half-open with every permit
        used: the earliest deadline of a probe in flight (a lower bound).
        """
        with self._lock:
            self._tick(now)
            return self._retry_at()

    def _retry_at(self) -> float | None:
        state = self._state
        if state == "open" or state == "forced_open":
            return self._open_until
        if state == "half_open" and self._used >= self._permits:
            deadlines = (self._slot_deadline[i] for i, t in enumerate(self._slot_ticket) if t)
            return min(deadlines, default=None)
        return None

    def snapshot(self, now: float) -> dict[str, Any]:
        """State and window metrics at ``now`` as a plain dict."""
        with self._lock:
            self._tick(now)
            w = self._window
            return {
                "state": self._state,
                "calls": w.calls(now),
                "failures": w.failures(now),
                "slow_calls": w.slow_calls(now),
                "failure_rate": w.failure_rate(now),
                "slow_call_rate": w.slow_call_rate(now),
                "open_until": self.open_until,
                "consecutive_opens": self._consecutive_opens,
                "probes_in_flight": self._in_flight,
            }

    def export(self, now: float) -> dict[str, Any]:
        """The state worth keeping across a restart (JSON-able; times in this clock's seconds).

        Window contents are not kept: a restarted breaker judges fresh calls.
        Half-open becomes open-until-now on restore, so probes start afresh.
        """
        with self._lock:
            self._tick(now)
            return {"state": self._state, "open_until": self._open_until if self._state == "open" else None,
                    "open_for": self._open_for, "consecutive_opens": self._consecutive_opens}

    def restore(self, data: dict[str, Any], now: float) -> None:
        """Take back an :meth:`export`; events are not re-emitted."""
        state = data.get("state", "closed")
        with self._lock:
            self._consecutive_opens = int(data.get("consecutive_opens", 0))
            self._open_for = float(data.get("open_for", 0.0))
            self._clear_episode()
            if self._probe_window:
                self._fresh_window()
            if state in ("open", "half_open"):
                until = data.get("open_until")
                self._state = "open"
                self._open_until = float(until) if until is not None else now
            elif state in ("forced_open", "disabled", "metrics_only", "closed"):
                self._state = state
                self._open_until = _INF

    def drain_events(self) -> tuple[Event, ...]:
        """The events emitted since the last drain, oldest first."""
        if not self._events:
            return ()
        with self._lock:
            events = tuple(self._events)
            self._events.clear()
            return events

    # -- internals (called with the lock held) --------------------------------

    def _limits(self, spec: BreakerSpec) -> None:
        """The spec's thresholds, as the closed breaker's result path reads them."""
        self._slow_ms, self._fr_limit, self._sr_limit = spec.slow_call_ms, spec.failure_rate, spec.slow_call_rate
        self._trips_at_zero = not (spec.failure_rate > 0.0 and spec.slow_call_rate > 0.0)

    def _tick(self, now: float) -> None:
        if self._state == "open" and now >= self._open_until:
            self._half_open(now)
        if self._state == "half_open" and now > self._next_deadline:
            self._expire(now)

    def _check_trip(self, now: float) -> None:
        calls, failures, slow = self._window.counts(now)
        if calls < self._min_calls:
            return
        fr, sr = 100.0 * failures / calls, 100.0 * slow / calls
        if fr >= self.spec.failure_rate:
            self._open(now, "failure_rate", fr, sr, calls, failures, slow)
        elif sr >= self.spec.slow_call_rate:
            self._open(now, "slow_call_rate", fr, sr, calls, failures, slow)

    def _open(
        self, now: float, reason: str, fr: float, sr: float, calls: int, failures: int, slow: int
    ) -> None:
        spec = self.spec
        self._consecutive_opens += 1
        grown = spec.open_for_s if self._consecutive_opens == 1 else self._open_for * spec.backoff
        self._open_for = min(grown, spec.max_open_for_s)
        self._open_until = now + self._open_for
        self._state = "open"
        self._clear_episode()
        metrics = {"calls": calls, "failures": failures, "slow_calls": slow}
        self._emit_opened(now, reason, fr, sr, metrics)

    def _emit_opened(self, now: float, reason: str, fr: float, sr: float, metrics: dict[str, int]) -> None:
        metrics["consecutive_opens"] = self._consecutive_opens
        self._events.append(
            CircuitOpened(
                at=now,
                model=self.name,
                reason=reason,
                open_until=self._open_until,
                failure_rate=fr,
                slow_call_rate=sr,
                metrics=MappingProxyType(metrics),
            )
        )

    def _emit_closed(self, now: float, reason: str, fr: float, sr: float) -> None:
        self._events.append(
            CircuitClosed(at=now, model=self.name, reason=reason, failure_rate=fr, slow_call_rate=sr)
        )

    def _fresh_window(self) -> None:
        """Empty metrics of the policy's window kind (closed and manual states)."""
        if self._probe_window:
            self._window = window_for(self.spec)
            self._probe_window = False
        else:
            self._window.reset()

    def _half_open(self, now: float) -> None:
        self._state = "half_open"
        self._open_until = _INF
        self._clear_episode()
        self._window = CountWindow(self._permits)  # fresh metrics: this episode's probes
        self._probe_window = True
        self._events.append(CircuitHalfOpened(at=now, model=self.name, permits=self._permits))

    def _clear_episode(self) -> None:
        for i in range(self._permits):
            self._slot_ticket[i] = 0
        self._used = self._in_flight = 0
        self._p_calls = self._p_failures = self._p_slow = 0
        self._next_deadline = _INF

    def _admit(self, now: float) -> int:
        if self._used >= self._permits:
            return REFUSED
        slot = self._slot_ticket.index(0)  # a free slot exists: in flight <= used < permits
        ticket = _FIRST_PROBE + self._seq * self._permits + slot
        self._seq += 1
        deadline = now + self.spec.half_open_max_wait_s
        self._slot_ticket[slot] = ticket
        self._slot_deadline[slot] = deadline
        self._next_deadline = min(self._next_deadline, deadline)
        self._used += 1
        self._in_flight += 1
        return ticket

    def _probe_slot(self, ticket: int) -> int:
        """The slot of ``ticket`` if it is a probe in flight in this episode, else -1."""
        if ticket < _FIRST_PROBE or self._state != "half_open":
            return -1
        slot = (ticket - _FIRST_PROBE) % self._permits
        return slot if self._slot_ticket[slot] == ticket else -1

    def _free_slot(self, slot: int) -> None:
        self._slot_ticket[slot] = 0
        self._slot_deadline[slot] = _INF
        self._in_flight -= 1

    def _probe_result(self, now: float, slot: int, failed: bool | None, slow: bool) -> None:
        self._free_slot(slot)
        if failed is None:
            self._used -= 1  # an ignored class gives its permit back
            return
        self._count_probe(now, failed, slow, "half_open_failed")

    def _count_probe(self, now: float, failed: bool, slow: bool, reason: str) -> bool:
        """Count one probe result; decide the episode once enough are in. True if decided."""
        self._window.record(now, failed, slow)  # the episode window: what snapshot and the event show
        self._p_calls += 1
        self._p_failures += failed
        self._p_slow += slow
        calls = self._p_calls
        if calls < self._needed:
            return False
        fr = 100.0 * self._p_failures / calls
        sr = 100.0 * self._p_slow / calls
        if fr >= self.spec.failure_rate or sr >= self.spec.slow_call_rate:
            self._open(now, reason, fr, sr, calls, self._p_failures, self._p_slow)
        else:
            self._state = "closed"
            self._fresh_window()
            self._consecutive_opens = 0
            self._clear_episode()
            self._emit_closed(now, "probes_succeeded", fr, sr)
        return True

    def _expire(self, now: float) -> None:
        earliest = _INF
        for slot in range(self._permits):
            if not self._slot_ticket[slot]:
                continue
            deadline = self._slot_deadline[slot]
            if now > deadline:
                self._free_slot(slot)
                if self._count_probe(now, True, False, "probe_expired"):
                    return  # decided: the episode (and its deadlines) is gone
            elif deadline < earliest:
                earliest = deadline
        self._next_deadline = earliest

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state!r})"

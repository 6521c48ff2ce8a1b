"""The wire half of :class:`engine.store.redis.breaker.RedisBreaker`: cached view, arguments, replies.

:class:`BreakerSync` keeps the last state the server sent (``cache_ms``
decides how long it may answer for the server), converts the engine clock to
the wall-clock seconds the server compares, and turns operations into
:data:`engine.store.redis.lua.BREAKER` calls, waited for or pipelined, and replies
into views and events.
"""

from __future__ import annotations

import logging
import math
import time
from types import MappingProxyType
from typing import Any

from engine.breaker import BreakerState, CircuitBreaker
from engine.events import CircuitClosed, CircuitHalfOpened, CircuitOpened, Event
from engine.policy.model import BreakerSpec
from engine.store.redis.link import Link, Unavailable, corrupt
from engine.store.redis.lua import split

log = logging.getLogger("engine.redis")

__all__ = ["BreakerSync", "View"]

_INF = math.inf


class View:
    """The server's state of one breaker as one reply showed it (times are wall clock)."""

    __slots__ = ("at", "calls", "co", "failures", "fl", "mind", "of", "open_until", "pm", "slow", "state",
                 "us")

    def __init__(self, r: list[bytes], at: float) -> None:
        self.state: BreakerState = r[2].decode()  # type: ignore[assignment]
        self.open_until = float(r[3]) if r[3] else None
        self.of, self.co = float(r[4]), int(r[5])
        self.us, self.fl, self.pm = int(r[6]), int(r[7]), int(r[8])
        self.mind = float(r[9]) if r[9] else None
        self.calls, self.failures, self.slow = int(r[10]), int(r[11]), int(r[12])
        self.at = at


class BreakerSync:
    """One client's side of a shared breaker; see the module docstring."""

    def __init__(self, link: Link, prefix: str, name: str, spec: BreakerSpec, events: list[Event],
                 cache_s: float, offset: float, skew: list[float] | None = None) -> None:
        self.name = name
        self._link, self._events, self._cache_s, self._offset = link, events, cache_s, offset
        self._skew = skew if skew is not None else [0.0]  # engine time minus the clock's (the store's)
        self._keys = (f"{prefix}:k:{name}", f"{prefix}:k:{name}:w")
        self._view: View | None = None
        self._local: CircuitBreaker | None = None
        self._seeded: str | None = None
        self._pending: tuple[str, tuple[Any, ...]] | None = None  # a force/restore to replay
        self._last_now = 0.0
        self._ok = 0  # ordinary successes not sent yet (sent within cache_ms, or before any other operation)
        self._ok_now = 0.0  # the engine time of the last of them
        self._refreshing = 0.0  # time.monotonic() a pipelined refresh was sent at, unanswered (0: none)
        self._set_spec(spec)

    def _set_spec(self, spec: BreakerSpec) -> None:
        self.spec = spec
        minimum = min(spec.minimum_calls, spec.window_size) if spec.window == "count" else spec.minimum_calls
        needed = max(1, min(spec.minimum_calls, spec.half_open_permits))
        self._spec_args = (spec.window, str(spec.window_size), repr(float(spec.window_s)), str(spec.window_buckets),
                           str(max(1, minimum)), str(needed), repr(float(spec.failure_rate)),
                           repr(float(spec.slow_call_rate)), repr(float(spec.open_for_s)), repr(float(spec.backoff)),
                           repr(float(spec.max_open_for_s)), str(spec.half_open_permits),
                           repr(float(spec.half_open_max_wait_s)), self.name)

    # -- server calls ----------------------------------------------------------

    def _wall(self, now: float) -> float:
        """The clock's own wall time of engine time ``now`` (the server's time is shared by every process)."""
        now -= self._skew[0]
        return now if now >= 1e9 else now + self._offset

    def _engine(self, wall: float, now: float) -> float:
        skew = self._skew[0]
        return (wall if now - skew >= 1e9 else wall - self._offset) + skew

    def _until(self, v: View, now: float) -> float | None:
        if v.state == "forced_open":
            return _INF
        return self._engine(v.open_until, now) if v.state == "open" and v.open_until is not None else None

    def _restore_args(self, data: dict[str, Any], now: float) -> tuple[Any, ...]:
        until = data.get("open_until")
        return (str(data.get("state", "closed")), repr(self._wall(float(until))) if until is not None else "",
                repr(float(data.get("open_for", 0.0))), str(int(data.get("consecutive_opens", 0))))

    def _args(self, now: float, op: str, *extra: Any) -> tuple[Any, ...]:
        return (op, repr(self._wall(now)), *self._spec_args, *extra)

    def _cached(self, now: float) -> View | None:
        v = self._view
        if v is None or self._local is not None or time.monotonic() - v.at > self._cache_s:
            return None
        return v

    def _quiet(self, now: float) -> bool:
        """True when a success cannot cause a transition: the shared window holds no failure
        and no slow call, or the state never transitions on results."""
        v = self._cached(now)
        if v is None:
            return False
        return v.state in ("disabled", "metrics_only") or (v.state == "closed" and not v.failures and not v.slow)

    def _send_ok(self) -> bool:
        """Send the batched successes (pipelined): before any other operation, in the order they happened."""
        n, self._ok = self._ok, 0
        now = self._ok_now
        self._last_now = max(self._last_now, now)
        sent = time.monotonic()
        self._refreshing = sent

        def handle(reply: Any) -> None:
            if self._refreshing == sent:
                self._refreshing = 0.0
            if reply is not None:
                self._take(reply, now, sent, True)
        try:
            self._link.send("breaker", self._keys, self._args(now, "ok", n), handle)
        except Unavailable:  # the successes are lost with the outage; they could not trip the breaker
            return False
        return True

    def _refresh(self, now: float) -> None:
        """Keep the cached state fresh without waiting: from half of ``cache_ms`` on, one pipelined
        ``ok`` (carrying the batched successes) whose reply the next round trip reads; once the cache
        is stale, read it (it has most likely arrived)."""
        v = self._view
        if v is None or self._local is not None or self._cache_s <= 0.0:  # no cache: each decision asks
            return
        age = time.monotonic() - v.at
        if age * 2.0 > self._cache_s and not self._refreshing:
            self._ok_now = max(self._ok_now, now)
            self._send_ok()
        if age > self._cache_s and self._refreshing:
            self._link.flush()

    def _sync(self, now: float, op: str, *extra: Any, events: bool = True) -> list[bytes] | None:
        """Run ``op`` and wait: the reply's fields, or None when the server is unreachable."""
        if self._ok:
            self._send_ok()
        self._last_now = now
        sent = time.monotonic()
        try:
            reply = self._link.call("breaker", self._keys, self._args(now, op, *extra))
            head = self._take(reply, now, sent, events)
        except Unavailable:
            return None
        except Exception as exc:  # a malformed reply: never let it escape a decision
            log.exception("redis breaker %s: unexpected failure", self.name)
            self._link.fail(exc)
            return None
        return head

    def _send(self, now: float, op: str, extra: tuple[Any, ...]) -> bool:
        if self._ok:
            self._send_ok()
        self._last_now = now
        sent = time.monotonic()

        def handle(reply: Any) -> None:
            if reply is not None:
                self._take(reply, now, sent, True)
        try:
            self._link.send("breaker", self._keys, self._args(now, op, *extra), handle)
        except Unavailable:
            return False
        return True

    def _take(self, reply: bytes, now: float, sent: float, events: bool) -> list[bytes]:
        head, evs = split(reply, 13)
        view = View(head, sent)
        if self._view is None or sent >= self._view.at:
            self._view = view
        for ev in evs:
            if ev[0] == b"corrupt":  # reported even when the transitions are not (a restore)
                self._link.emit(self._events, corrupt(self._link.label, ev, self._corrupt_action))
            elif events:
                self._link.emit(self._events, self._event(ev, now))
        return head

    def _corrupt_action(self, key: str, field: str) -> str:
        if key == self._keys[1]:
            return "the window was reset (empty)"
        return "the breaker was reset: closed, with an empty window"

    def _event(self, ev: list[bytes], now: float) -> Event:
        kind = ev[0]
        if kind == b"half":
            return CircuitHalfOpened(at=now, model=self.name, permits=int(ev[1]))
        if kind == b"closed":
            return CircuitClosed(at=now, model=self.name, reason=ev[1].decode(), failure_rate=float(ev[2]),
                                 slow_call_rate=float(ev[3]))
        metrics = {k: int(x) for k, x in zip(("calls", "failures", "slow_calls"), ev[4:7], strict=True) if x != b""}
        metrics["consecutive_opens"] = int(ev[7])
        until = float(ev[8])
        return CircuitOpened(at=now, model=self.name, reason=ev[1].decode(),
                             open_until=until if math.isinf(until) else self._engine(until, now),
                             failure_rate=float(ev[2]), slow_call_rate=float(ev[3]),
                             metrics=MappingProxyType(metrics))

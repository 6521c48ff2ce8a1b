"""Drive many concurrent ``PolicyEngine.acall`` s through a fake clock, as a discrete-event simulation.

Each request becomes one ``engine.acall(tier, fn, sleep=..., rng=...)``
coroutine, started at its arrival time. Nothing awaits real I/O: ``fn(model)``
and ``sleep(s)`` return a :class:`Wait` that suspends the coroutine for that
much *simulated* time. The driver keeps a heap of suspended calls by wake-up
time, merges it with the sorted arrivals, sets the ``FakeClock`` to each
event's time and resumes the coroutine — no event loop, no threads. Calls
overlap as they would in production: a decision is made at the call's start
and recorded when its latency has passed, so breakers, in-flight limits and
budget reservations see real concurrency.

The engine's own code runs unchanged (``acall`` is ``call`` for coroutines);
``fn`` asks a world (:class:`engine.sim.world.World` or a replayed trace) how
the chosen model answers and counts what every attempt spent in a
:class:`~engine.sim.tally.Tally`.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Generator, Sequence
from typing import Any, Protocol

from engine.core import PolicyEngine
from engine.errors import NoModelAvailable
from engine.events import (
    AnomalyDetected,
    BudgetExhausted,
    BudgetWarning,
    CircuitClosed,
    CircuitOpened,
    Event,
    FallbackTriggered,
)
from engine.sim.tally import Tally
from engine.sim.workload import Request
from engine.testing import FakeClock

__all__ = ["Wait", "WorldLike", "run_engine"]

Progress = Callable[[float, int], None]
Answer = tuple["str | None", float, int, int]


class WorldLike(Protocol):
    def attempt(self, model: str, now: float, req: Request, k: int) -> Answer: ...


class Wait:
    """Suspend the awaiting call for ``delay`` simulated seconds, then return ``value`` or raise ``exc``."""

    __slots__ = ("delay", "value", "exc")

    def __init__(self, delay: float, value: Any = None, exc: BaseException | None = None) -> None:
        self.delay = delay
        self.value = value
        self.exc = exc

    def __await__(self) -> Generator[Wait, None, Any]:
        yield self
        if self.exc is not None:
            raise self.exc
        return self.value


class _Usage:
    __slots__ = ("prompt_tokens", "completion_tokens")

    def __init__(self, prompt: int, completion: int) -> None:
        self.prompt_tokens = prompt
        self.completion_tokens = completion


class _Response:
    """What a chat-completion SDK returns, as far as the engine reads it."""

    __slots__ = ("model", "usage")

    def __init__(self, model: str, usage: _Usage) -> None:
        self.model = model
        self.usage = usage


def _sleep(seconds: float) -> Wait:
    return Wait(seconds)


class _Call:
    """``fn(model)`` of one request: asks the world, counts the spend, remembers who answered."""

    __slots__ = ("req", "k", "first_failed", "answered_at", "model", "world", "clock", "tally", "make_exc")

    def __init__(self, req: Request, world: WorldLike, clock: FakeClock, tally: Tally,
                 make_exc: Callable[[str, int], Exception]) -> None:
        self.req = req
        self.k = 0
        self.first_failed: str | None = None
        self.answered_at = 0.0
        self.model: str | None = None
        self.world = world
        self.clock = clock
        self.tally = tally
        self.make_exc = make_exc

    def __call__(self, model: str) -> Wait:
        now = self.clock()
        kind, latency, tin, tout = self.world.attempt(model, now, self.req, self.k)
        self.k += 1
        self.tally.spend(model, tin, tout)
        if kind is None:
            self.model = model
            self.answered_at = now
            return Wait(latency, _Response(model, _Usage(tin, tout)))
        if self.first_failed is None:
            self.first_failed = model
        return Wait(latency, None, self.make_exc(kind, tout))


def _listener(tally: Tally) -> Callable[[Event], None]:
    def on(event: Event) -> None:
        kind = type(event)
        if kind is FallbackTriggered:
            tally.fallback_decisions += 1
        elif kind is CircuitOpened:
            tally.breaker_trips[event.model] += 1  # type: ignore[attr-defined]
        elif kind is CircuitClosed:
            tally.breaker_closes[event.model] += 1  # type: ignore[attr-defined]
        elif kind is BudgetWarning or kind is BudgetExhausted:
            tally.budget_events.append((kind.__name__, event.budget, event.at))  # type: ignore[attr-defined]
        elif kind is AnomalyDetected:
            tally.anomalies[event.rule] += 1  # type: ignore[attr-defined]

    return on


def _reason(exc: BaseException, classify: Callable[[BaseException], tuple[str, Any]]) -> str:
    if isinstance(exc, NoModelAvailable):
        return "no_model_available"
    try:
        return str(classify(exc)[0])
    except Exception:  # a classifier that fails here failed in the engine too
        return type(exc).__name__


def run_engine(engine: PolicyEngine, clock: FakeClock, world: WorldLike, requests: Sequence[Request],
               tally: Tally, *, seed: int, make_exc: Callable[[str, int], Exception],
               classifier: Callable[[BaseException], tuple[str, Any]] | None = None,
               progress: Progress | None = None, progress_every: int | None = None) -> None:
    """Run every request through ``engine.acall`` on ``clock``; counts go to ``tally``."""
    from engine.classify import classify as default_classify

    classify = classifier or default_classify
    unsubscribe = engine.subscribe(_listener(tally))
    jitter = random.Random(seed)  # noqa: S311 - backoff jitter, reproducible
    acall, set_clock, heappush, heappop = engine.acall, clock.set, heapq.heappush, heapq.heappop
    heap: list[tuple[float, int, Any, _Call]] = []
    seq = 0
    n = len(requests)
    every = progress_every or max(256, n // 200)
    i = 0
    done = 0
    try:
        while i < n or heap:
            if heap and (i >= n or heap[0][0] <= requests[i].arrival):
                wake, _, coro, call = heappop(heap)
                if wake > clock():
                    set_clock(wake)
            else:
                req = requests[i]
                i += 1
                if req.arrival > clock():
                    set_clock(req.arrival)
                call = _Call(req, world, clock, tally, make_exc)
                coro = acall(req.tier, call, sleep=_sleep, rng=jitter, classifier=classifier,
                             estimated_tokens=req.tokens_in + req.tokens_out)
            try:
                wait = coro.send(None)
            except StopIteration:
                _finished(tally, call, clock(), None, classify)
                done += 1
            except Exception as exc:  # the call failed: the engine gave up
                _finished(tally, call, clock(), exc, classify)
                done += 1
            else:
                seq += 1
                heappush(heap, (clock() + wait.delay, seq, coro, call))
                continue
            if progress is not None and done % every == 0:
                progress(clock(), done)
    finally:
        unsubscribe()
        for _, _, coro, _ in heap:  # an interrupted run: close what is still suspended
            coro.close()


def _finished(tally: Tally, call: _Call, now: float, exc: BaseException | None,
              classify: Callable[[BaseException], tuple[str, Any]]) -> None:
    req = call.req
    if exc is None:
        tally.call(req.tier, True, call.model, now - req.arrival)
        if call.first_failed is not None:
            if call.model != call.first_failed:
                tally.failover_s.append(call.answered_at - req.arrival)
            else:
                tally.retried_same_model += 1
    else:
        tally.call(req.tier, False, None, now - req.arrival, _reason(exc, classify))

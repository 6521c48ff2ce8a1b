"""The monitor's per-model and per-tier summaries, kept until a call joins or leaves the window, equal a recount."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import NoModelAvailable, Outcome, PolicyEngine
from engine.events import AnomalyDetected, AnomalyResolved, Event
from engine.metrics import RollingMetrics, summarize
from engine.monitor import Monitor, holds
from engine.testing import FakeClock
from tests.conftest import POLICIES

_ERRORS = [None, None, None, "server_error", "rate_limit", "timeout"]

_steps = st.lists(st.tuples(
    st.sampled_from(["L1", "L2", "L3", "L4"]),
    st.sampled_from(_ERRORS),
    st.floats(1, 30_000),  # latency, ms
    st.sampled_from([0.0, 0.0, 0.5, 3.0, 9.99, 10.0, 45.0, 301.0]),  # clock step, s (10 s buckets, 300 s window)
    st.booleans(),  # read the summaries after this step
), max_size=80)


def _recount(eng: PolicyEngine, now: float, which: int, name: str) -> dict[str, Any]:
    """What the summaries were before they were kept: every matching series summed afresh."""
    return summarize([m.live(now) for key, m in eng._metrics.items() if key[which] == name],
                     eng.policy.error_classes)


@settings(max_examples=60, deadline=None)
@given(steps=_steps)
def test_kept_summaries_equal_a_recount(steps: list[tuple[str, str | None, float, float, bool]]) -> None:
    clock = FakeClock()
    eng = PolicyEngine.from_path(POLICIES, clock=clock)
    for tier, error, latency, step, read in steps:
        try:
            d = eng.decide(tier, estimated_tokens=50)
        except NoModelAvailable:
            pass
        else:
            eng.record(d, Outcome(latency_ms=latency, input_tokens=40, output_tokens=10, error=error))
        clock.advance(step)
        if read:
            now = clock()
            with eng._lock:
                for model in eng.policy.models:
                    assert eng._summary(now, (1, model)) == _recount(eng, now, 1, model), model
                for t in eng.policy.tiers:
                    assert eng._summary(now, (0, t)) == _recount(eng, now, 0, t), t


@settings(max_examples=150, deadline=None)
@given(events=st.lists(st.tuples(st.sampled_from([0.0, 1.0, 9.5, 10.0, 25.0, 61.0, 200.0]), st.booleans()),
                       max_size=60))
def test_an_unchanged_version_means_an_unchanged_window(events: list[tuple[float, bool]]) -> None:
    m = RollingMetrics(60.0, 6)
    now, last = 0.0, None
    for step, call in events:
        now += step
        if call:
            m.record(now, 100.0 + now, None if step else "timeout", False, False, 1, 1, 0.1, False)
        version = m.advance(now)
        snap = summarize([m.live(now)], ["timeout"])
        if last is not None and last[0] == version:
            assert snap == last[1]
        last = (version, snap)


class _EveryTime(Monitor):
    """The evaluation before targets were skipped: every rule over the fresh names of every target."""

    __slots__ = ()

    def evaluate(self, now: float, targets: Any, version: Any, names: Any) -> list[Event]:
        self.next_at = now + self.spec.evaluate_every_s
        events: list[Event] = []
        found: dict[str, dict[str, Any]] = {"model": {}, "tier": {}}
        for scope in ("model", "tier"):
            if self.spec.anomalies and (scope == "model" or any(r.scope == "tier" for r in self.spec.anomalies)):
                for target in targets[scope]:
                    found[scope][target] = names(scope, target, version(scope, target)[1])
        for rule in self.spec.anomalies:
            for target, current in found[rule.scope].items():
                key = (rule.name, target)
                if holds(rule.when, current):
                    start = self.since.setdefault(key, now)
                    if key not in self.active and now - start >= rule.for_s:
                        self.active.add(key)
                        events.append(AnomalyDetected(now, rule.name, rule.scope, target, rule.severity,
                                                      rule.when.source, dict(current)))
                else:
                    self.since.pop(key, None)
                    if key in self.active:
                        self.active.discard(key)
                        events.append(AnomalyResolved(now, rule.name, rule.scope, target, rule.severity,
                                                      dict(current)))
        return events


def _seen(events: list[Event]) -> list[tuple[Any, ...]]:
    return [(e, dict(e.metrics)) if isinstance(e, (AnomalyDetected, AnomalyResolved)) else (e,) for e in events]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(steps=st.lists(st.tuples(
    st.sampled_from(["L1", "L2", "L2", "L4"]),
    st.sampled_from([None, "server_error", "server_error", "rate_limit"]),
    st.sampled_from([50.0, 800.0, 9_000.0]),
    st.sampled_from([0.5, 1.0, 2.0, 2.0, 7.0, 10.0, 31.0]),
), min_size=100, max_size=300))
def test_skipping_unchanged_targets_gives_the_same_events(steps: list[tuple[str, str | None, float, float]]) -> None:
    engines = []
    for reference in (False, True):
        clock = FakeClock()
        eng = PolicyEngine.from_path(POLICIES, clock=clock)
        if reference:
            old = eng._monitor
            eng._monitor = _EveryTime(old.spec, 0.0)
            eng._monitor.next_at = old.next_at
        seen: list[Event] = []
        eng.subscribe(seen.append)
        engines.append((eng, clock, seen))
    for tier, error, latency, step in steps:
        for eng, clock, _ in engines:
            try:
                d = eng.decide(tier, estimated_tokens=50)
            except NoModelAvailable:
                pass
            else:
                eng.record(d, Outcome(latency_ms=latency, input_tokens=40, output_tokens=10, error=error))
            clock.advance(step)
            eng.tick()
    (_, _, fast), (_, _, every) = engines
    assert _seen(fast) == _seen(every)

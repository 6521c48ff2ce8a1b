"""The monitor's per-model and per-tier summaries, kept until a call joins or leaves the window, equal a recount."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from engine import NoModelAvailable, Outcome, PolicyEngine
from engine.metrics import RollingMetrics, summarize
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

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.metrics import RollingMetrics

WINDOW, BUCKETS = 60.0, 6  # 10-second buckets


def test_calls_leave_the_window_with_their_bucket() -> None:
    m = RollingMetrics(WINDOW, BUCKETS)
    m.record(5.0, 100.0, None, False, False, 10, 2, 0.5, False)
    m.record(15.0, 300.0, "timeout", True, True, 20, 0, 0.25, True)
    snap = m.snapshot(16.0, ["timeout", "rate_limit"])
    assert (snap["calls"], snap["errors"], snap["errors_timeout"], snap["errors_rate_limit"]) == (2, 1, 1, 0)
    assert (snap["tokens_in"], snap["fallbacks"], snap["cost_usd"]) == (30, 1, 0.75)
    assert m.snapshot(60.0)["calls"] == 1  # the bucket [0, 10) left at t=60
    assert m.snapshot(70.0)["calls"] == 0
    assert m.snapshot(70.0)["success_rate"] == 1.0 and m.total_calls == 2


_events = st.lists(st.tuples(st.floats(0, 30), st.floats(1, 5000), st.sampled_from([None, "timeout", "auth"]),
                             st.integers(0, 500)), max_size=60)


@settings(max_examples=150, deadline=None)
@given(events=_events)
def test_running_total_equals_a_recount(events: list[tuple[float, float, str | None, int]]) -> None:
    m = RollingMetrics(WINDOW, BUCKETS)
    now, seen = 0.0, []
    for step, latency, error, tokens in events:
        now += step
        m.record(now, latency, error, error == "timeout", latency > 2000, tokens, 1, tokens / 1000, False)
        seen.append((now, latency, error, tokens))
        oldest = (int(now // 10) - BUCKETS + 1) * 10
        live = [e for e in seen if e[0] >= oldest]
        snap = m.snapshot(now, ["timeout", "auth"])
        assert snap["calls"] == len(live)
        assert snap["errors_timeout"] == sum(1 for e in live if e[2] == "timeout")
        assert snap["failures"] == snap["errors_timeout"]
        assert snap["slow_calls"] == sum(1 for e in live if e[1] > 2000)
        assert snap["tokens_in"] == sum(e[3] for e in live)
        if live:
            exact = sorted(e[1] for e in live)
            p50 = exact[max(0, -(-len(exact) // 2) - 1)]
            assert abs(snap["p50_ms"] - p50) <= 0.021 * p50


@settings(max_examples=100, deadline=None)
@given(events=_events)
def test_cumulative_counts_every_call_however_the_window_moves(
        events: list[tuple[float, float, str | None, int]]) -> None:
    m = RollingMetrics(WINDOW, BUCKETS)
    now = 0.0
    for step, latency, error, tokens in events:
        now += step * 7  # across many windows, and gaps longer than one
        m.record(now, latency, error, error is not None, False, tokens, 0, 0.0, False, request=True)
    total = m.cumulative()
    assert total.calls == m.total_calls == total.requests == len(events)
    assert sum(total.errors.values()) == m.total_errors

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.policy.model import BreakerSpec
from engine.window import CountWindow, OutcomeWindow, TimeWindow, window_for

T0 = 1_767_225_600.0


def metrics(w: OutcomeWindow, now: float) -> tuple[int, int, int, float, float]:
    return (
        w.calls(now),
        w.failures(now),
        w.slow_calls(now),
        w.failure_rate(now),
        w.slow_call_rate(now),
    )


WINDOWS: list[Callable[[], OutcomeWindow]] = [lambda: CountWindow(10), lambda: TimeWindow(60.0, 12)]


@pytest.mark.parametrize("make", WINDOWS, ids=["count", "time"])
def test_counts_and_percent_rates(make: Callable[[], OutcomeWindow]) -> None:
    w = make()
    assert metrics(w, T0) == (0, 0, 0, 0.0, 0.0)
    w.record(T0, failed=True, slow=True)  # a slow failure counts in both
    w.record(T0, failed=True, slow=False)
    w.record(T0, failed=False, slow=True)
    w.record(T0, failed=False, slow=False)
    assert metrics(w, T0 + 1) == (4, 2, 2, 50.0, 50.0)


@pytest.mark.parametrize("make", WINDOWS, ids=["count", "time"])
def test_reset_forgets_every_call(make: Callable[[], OutcomeWindow]) -> None:
    w = make()
    w.record(T0, True, True)
    w.reset()
    assert metrics(w, T0) == (0, 0, 0, 0.0, 0.0)
    w.record(T0, False, True)
    assert metrics(w, T0) == (1, 0, 1, 0.0, 100.0)


def test_count_window_keeps_only_the_last_n_calls() -> None:
    w = CountWindow(3)
    for failed in (True, True, False):
        w.record(T0, failed, False)
    assert metrics(w, T0) == (3, 2, 0, 200 / 3, 0.0)
    w.record(T0, False, True)  # evicts the first failure
    assert metrics(w, T0) == (3, 1, 1, 100 / 3, 100 / 3)
    w.record(T0, False, False)
    w.record(T0, False, False)
    assert metrics(w, T0) == (3, 0, 1, 0.0, 100 / 3)
    w.record(T0, False, False)
    assert metrics(w, T0) == (3, 0, 0, 0.0, 0.0)


def test_count_window_ignores_time() -> None:
    w = CountWindow(2)
    w.record(T0, True, False)
    assert w.calls(T0 + 1e9) == 1


def test_time_window_edge_bucket_start_must_be_after_now_minus_seconds() -> None:
    # width 2 s: a call at T0+1 sits in the bucket [T0, T0+2).
    w = TimeWindow(10.0, 5)
    w.record(T0 + 1.0, True, False)
    assert w.calls(T0 + 9.75) == 1  # bucket start T0 > T0 + 9.75 - 10
    assert w.calls(T0 + 10.0) == 0  # bucket start T0 is not > T0 + 10 - 10


def test_time_window_subtracts_buckets_one_by_one() -> None:
    w = TimeWindow(4.0, 4)  # width 1 s
    for i in range(4):
        w.record(T0 + i, failed=i % 2 == 0, slow=False)
    assert metrics(w, T0 + 3.5) == (4, 2, 0, 50.0, 0.0)
    assert metrics(w, T0 + 4.0) == (3, 1, 0, 100 / 3, 0.0)  # the call at T0 left
    assert metrics(w, T0 + 5.0) == (2, 1, 0, 50.0, 0.0)
    assert metrics(w, T0 + 7.0) == (0, 0, 0, 0.0, 0.0)


def test_time_window_long_gap_empties_it() -> None:
    w = TimeWindow(60.0, 12)
    for i in range(100):
        w.record(T0 + i * 0.1, True, True)
    assert w.calls(T0 + 10) == 100
    assert metrics(w, T0 + 86_400) == (0, 0, 0, 0.0, 0.0)
    w.record(T0 + 86_400, False, False)
    assert metrics(w, T0 + 86_400) == (1, 0, 0, 0.0, 0.0)


def test_time_window_late_record_lands_in_its_bucket_or_is_dropped() -> None:
    w = TimeWindow(10.0, 5)  # width 2 s
    w.record(T0 + 20.0, False, False)
    w.record(T0 + 13.0, True, False)  # stale but its bucket [T0+12, T0+14) is in the window
    w.record(T0 + 11.0, True, True)  # its bucket [T0+10, T0+12) left at T0 + 20: dropped
    assert metrics(w, T0 + 20.0) == (2, 1, 0, 50.0, 0.0)
    assert w.calls(T0 + 5.0) == 2  # a stale read is served from the latest state
    assert w.calls(T0 + 22.0) == 1  # the late call ages out with its bucket at T0 + 22


@pytest.mark.parametrize(
    "make",
    [
        lambda: CountWindow(0),
        lambda: TimeWindow(0.0, 3),
        lambda: TimeWindow(math.inf, 3),
        lambda: TimeWindow(10.0, 0),
    ],
)
def test_invalid_sizes_are_refused(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


# -- property tests against a naive reference model --------------------------

steps = st.lists(
    st.one_of(
        st.tuples(st.just("record"), st.booleans(), st.booleans()),
        st.tuples(
            st.just("advance"),
            st.one_of(
                st.floats(min_value=0.0, max_value=40.0), st.sampled_from([0.0, 0.5, 1.0, 2.5, 5.0, 60.0])
            ),
            st.just(False),
        ),
    ),
    max_size=150,
)


def reference_rates(kept: list[tuple[float, bool, bool]]) -> tuple[int, int, int, float, float]:
    calls = len(kept)
    failures = sum(1 for _, f, _ in kept if f)
    slow = sum(1 for _, _, s in kept if s)
    if not calls:
        return (0, 0, 0, 0.0, 0.0)
    return (calls, failures, slow, 100.0 * failures / calls, 100.0 * slow / calls)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=12), steps)
def test_count_window_matches_reference(size: int, ops: list[tuple[str, object, object]]) -> None:
    w, log, now = CountWindow(size), [], T0
    for op, a, b in ops:
        if op == "record":
            w.record(now, bool(a), bool(b))
            log.append((now, bool(a), bool(b)))
        else:
            now += float(a)  # type: ignore[arg-type]
        assert metrics(w, now) == reference_rates(log[-size:])


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([1.0, 5.0, 10.0, 60.0, 7.5]),
    st.integers(min_value=1, max_value=12),
    steps,
)
def test_time_window_matches_reference(
    seconds: float, buckets: int, ops: list[tuple[str, object, object]]
) -> None:
    w, log, now = TimeWindow(seconds, buckets), [], T0
    width = seconds / buckets

    def in_window(t: float) -> bool:  # the documented edge rule, on bucket numbers
        return math.floor(t / width) > math.floor(now / width) - buckets

    for op, a, b in ops:
        if op == "record":
            w.record(now, bool(a), bool(b))
            log.append((now, bool(a), bool(b)))
        else:
            now += float(a)  # type: ignore[arg-type]
        assert metrics(w, now) == reference_rates([e for e in log if in_window(e[0])])


def test_window_for_follows_the_breaker_spec() -> None:
    count = window_for(BreakerSpec(window="count", window_size=7))
    assert isinstance(count, CountWindow) and count.size == 7
    timed = window_for(BreakerSpec(window="time", window_s=30.0, window_buckets=6))
    assert isinstance(timed, TimeWindow) and (timed.seconds, timed.buckets, timed.width) == (30.0, 6, 5.0)

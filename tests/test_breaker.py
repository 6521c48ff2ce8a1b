from __future__ import annotations

import math
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.breaker import CALL, REFUSED, CircuitBreaker
from engine.events import CircuitClosed, CircuitHalfOpened, CircuitOpened
from engine.policy.model import BreakerSpec

T0 = 1_767_225_600.0
SPEC = BreakerSpec(
    window="count",
    window_size=10,
    minimum_calls=4,
    failure_rate=50.0,
    slow_call_rate=50.0,
    slow_call_ms=1000.0,
    open_for_s=10.0,
    backoff=2.0,
    max_open_for_s=35.0,
    half_open_permits=2,
    half_open_max_wait_s=5.0,
)
FAST, SLOW = 10.0, 1500.0


def make(**overrides: Any) -> CircuitBreaker:
    return CircuitBreaker("m", replace(SPEC, **overrides))


def call(b: CircuitBreaker, now: float, failed: bool | None, latency: float = FAST) -> int:
    ticket = b.try_acquire(now)
    assert ticket
    b.on_result(now, failed, latency, ticket=ticket)
    return ticket


def opened(
    at: float, until: float, reason: str = "failure_rate", fr: float = 100.0, sr: float = 0.0
) -> CircuitOpened:
    return CircuitOpened(
        at=at, model="m", reason=reason, open_until=until, failure_rate=fr, slow_call_rate=sr
    )


def half(at: float, permits: int = 2) -> CircuitHalfOpened:
    return CircuitHalfOpened(at=at, model="m", permits=permits)


def closed(at: float, reason: str = "probes_succeeded", fr: float = 0.0, sr: float = 0.0) -> CircuitClosed:
    return CircuitClosed(at=at, model="m", reason=reason, failure_rate=fr, slow_call_rate=sr)


def tripped(**overrides: Any) -> CircuitBreaker:
    """A breaker opened at T0 by failures only (open until T0 + 10)."""
    b = make(**overrides)
    while b.state(T0) == "closed":
        call(b, T0, True)
    assert b.drain_events() == (opened(T0, T0 + 10.0),)
    return b


def probes(b: CircuitBreaker, now: float, n: int) -> list[int]:
    tickets = [b.try_acquire(now) for _ in range(n)]
    assert all(t >= 2 for t in tickets)
    return tickets


# -- closed -------------------------------------------------------------------


def test_closed_admits_ordinary_calls_without_events() -> None:
    b = make()
    assert b.try_acquire(T0) == CALL
    assert b.state(T0) == "closed"
    assert b.drain_events() == ()


def test_trips_at_exactly_the_failure_rate_threshold() -> None:
    b = make()
    for failed in (True, False, True):
        call(b, T0, failed)
    assert b.drain_events() == ()
    call(b, T0 + 1, False)  # 2 of 4 = 50 %, threshold 50 %: >= trips
    assert b.drain_events() == (opened(T0 + 1, T0 + 11.0, fr=50.0),)
    assert b.state(T0 + 1) == "open"
    assert b.try_acquire(T0 + 1) == REFUSED


def test_just_below_the_threshold_stays_closed() -> None:
    b = make(failure_rate=50.1)
    for failed in (True, False, True, False):
        call(b, T0, failed)
    assert b.drain_events() == ()
    assert b.snapshot(T0)["failure_rate"] == 50.0


def test_no_trip_before_minimum_calls() -> None:
    b = make()
    for _ in range(3):
        call(b, T0, True)
    assert b.drain_events() == ()
    assert b.state(T0) == "closed"
    call(b, T0, False)  # the 4th call makes the rate count: 75 %
    assert b.drain_events() == (opened(T0, T0 + 10.0, fr=75.0),)


def test_count_window_smaller_than_minimum_calls_trips_when_full() -> None:
    b = make(window_size=3, minimum_calls=10)
    for _ in range(3):
        call(b, T0, True)
    assert b.drain_events() == (opened(T0, T0 + 10.0),)


def test_trips_on_slow_call_rate() -> None:
    b = make()
    for latency in (SLOW, FAST, FAST, SLOW):
        call(b, T0, False, latency)
    assert b.drain_events() == (opened(T0, T0 + 10.0, reason="slow_call_rate", fr=0.0, sr=50.0),)


def test_latency_equal_to_slow_call_ms_is_not_slow() -> None:
    b = make()
    for _ in range(4):
        call(b, T0, False, 1000.0)
    assert b.drain_events() == ()
    assert b.snapshot(T0)["slow_calls"] == 0


def test_slow_failure_counts_in_both_rates() -> None:
    b = make(failure_rate=100.0, slow_call_rate=100.0)
    call(b, T0, True, SLOW)
    call(b, T0, False, FAST)
    snap = b.snapshot(T0)
    assert (snap["calls"], snap["failures"], snap["slow_calls"]) == (2, 1, 1)
    assert (snap["failure_rate"], snap["slow_call_rate"]) == (50.0, 50.0)


def test_failure_rate_is_the_reason_when_both_rates_trip() -> None:
    b = make()
    for _ in range(4):
        call(b, T0, True, SLOW)
    (event,) = b.drain_events()
    assert event == opened(T0, T0 + 10.0, fr=100.0, sr=100.0)
    assert isinstance(event, CircuitOpened)
    assert dict(event.metrics) == {"calls": 4, "failures": 4, "slow_calls": 4, "consecutive_opens": 1}


def test_ignored_error_classes_are_not_counted() -> None:
    b = make()
    for _ in range(10):
        call(b, T0, None, SLOW)
    call(b, T0, True)
    snap = b.snapshot(T0)
    assert (snap["calls"], snap["failures"], snap["slow_calls"]) == (1, 1, 0)
    assert b.drain_events() == ()


def test_time_window_ages_out_failures() -> None:
    spec = {"window": "time", "window_s": 10.0, "window_buckets": 5}
    aged = make(**spec)
    for _ in range(3):
        call(aged, T0, True)
    call(aged, T0 + 10.0, True)  # the first three left with their bucket at T0 + 10
    assert aged.drain_events() == ()
    assert aged.snapshot(T0 + 10.0)["calls"] == 1

    fresh = make(**spec)
    for _ in range(3):
        call(fresh, T0, True)
    call(fresh, T0 + 9.9, True)
    assert fresh.drain_events() == (opened(T0 + 9.9, T0 + 19.9),)


# -- open and half-open ---------------------------------------------------------


def test_open_to_half_open_at_exactly_open_until() -> None:
    b = tripped()
    assert b.try_acquire(T0 + 9.999) == REFUSED
    assert b.drain_events() == ()
    assert b.try_acquire(T0 + 10.0) >= 2
    assert b.drain_events() == (half(T0 + 10.0),)
    assert b.state(T0 + 10.0) == "half_open"


def test_state_query_applies_the_due_transition() -> None:
    b = tripped()
    assert b.state(T0 + 10.0) == "half_open"
    assert b.drain_events() == (half(T0 + 10.0),)


def test_half_open_admits_exactly_the_permits() -> None:
    b = tripped(half_open_permits=3)
    tickets = probes(b, T0 + 10, 3)
    assert len(set(tickets)) == 3
    assert b.try_acquire(T0 + 10) == REFUSED
    assert b.try_acquire(T0 + 11) == REFUSED
    assert b.drain_events() == (half(T0 + 10, permits=3),)


def test_release_gives_a_permit_back_once() -> None:
    b = tripped()
    _, second = probes(b, T0 + 10, 2)
    b.release(T0 + 10, second)
    b.release(T0 + 10, second)  # a second release of the same ticket frees nothing
    b.release(T0 + 10, CALL)  # nor does releasing an ordinary ticket
    assert b.try_acquire(T0 + 10) >= 2
    assert b.try_acquire(T0 + 10) == REFUSED


def test_ignored_probe_result_frees_its_permit() -> None:
    b = tripped()
    first, second = probes(b, T0 + 10, 2)
    b.on_result(T0 + 11, None, FAST, ticket=first)
    assert b.snapshot(T0 + 11)["probes_in_flight"] == 1
    third = b.try_acquire(T0 + 11)
    assert third >= 2
    b.on_result(T0 + 11, False, FAST, ticket=second)
    b.on_result(T0 + 11, False, FAST, ticket=third)
    assert b.drain_events() == (half(T0 + 10), closed(T0 + 11))


def test_half_open_closes_with_fresh_metrics_and_reset_backoff() -> None:
    b = tripped()
    first, second = probes(b, T0 + 10, 2)
    b.on_result(T0 + 11, False, FAST, ticket=first)
    assert b.state(T0 + 11) == "half_open"
    b.on_result(T0 + 12, False, FAST, ticket=second)
    assert b.drain_events() == (half(T0 + 10), closed(T0 + 12))
    snap = b.snapshot(T0 + 12)
    assert snap["state"] == "closed"
    assert (snap["calls"], snap["failures"], snap["consecutive_opens"], snap["open_until"]) == (0, 0, 0, None)
    assert b.try_acquire(T0 + 12) == CALL


def test_half_open_decides_after_min_of_minimum_calls_and_permits() -> None:
    b = tripped(minimum_calls=1, window_size=1, half_open_permits=3)
    (ticket,) = probes(b, T0 + 10, 1)
    b.on_result(T0 + 10, False, FAST, ticket=ticket)
    assert b.drain_events() == (half(T0 + 10, permits=3), closed(T0 + 10))


def test_half_open_reopens_with_backoff_growth_and_cap() -> None:
    b = tripped()
    now, expected_open_for = T0 + 10.0, [20.0, 35.0, 35.0]  # 10 * 2, 10 * 4 capped, capped
    for open_for in expected_open_for:
        first, second = probes(b, now, 2)
        b.on_result(now, True, FAST, ticket=first)
        b.on_result(now, False, FAST, ticket=second)  # 50 % >= 50 %: re-open
        assert b.drain_events() == (half(now), opened(now, now + open_for, "half_open_failed", fr=50.0))
        assert b.try_acquire(now + open_for - 0.001) == REFUSED
        now += open_for
    assert b.snapshot(now - 1)["consecutive_opens"] == 4


def test_half_open_reopens_on_slow_probes() -> None:
    b = tripped()
    first, second = probes(b, T0 + 10, 2)
    b.on_result(T0 + 10, False, SLOW, ticket=first)
    b.on_result(T0 + 10, False, FAST, ticket=second)
    assert b.drain_events() == (half(T0 + 10), opened(T0 + 10, T0 + 30, "half_open_failed", fr=0.0, sr=50.0))


def counts(b: CircuitBreaker, now: float) -> tuple[str, int, int, float]:
    snap = b.snapshot(now)
    return snap["state"], snap["calls"], snap["failures"], snap["failure_rate"]


def test_half_open_starts_fresh_metrics_that_agree_with_the_reopening() -> None:
    # Resilience4j: OPEN -> HALF_OPEN starts new metrics; HALF_OPEN -> OPEN keeps the half-open ones
    b = tripped(minimum_calls=5, half_open_permits=4)  # five failures: 5 calls, 100 %
    assert counts(b, T0) == ("open", 5, 5, 100.0)
    assert counts(b, T0 + 10) == ("half_open", 0, 0, 0.0)
    tickets = probes(b, T0 + 10, 4)
    b.on_result(T0 + 10, False, FAST, ticket=tickets[0])
    assert counts(b, T0 + 10) == ("half_open", 1, 0, 0.0)
    for t in tickets[1:]:
        b.on_result(T0 + 11, True, FAST, ticket=t)
    (event,) = b.drain_events()[1:]
    assert event == opened(T0 + 11, T0 + 31, "half_open_failed", fr=75.0)
    assert isinstance(event, CircuitOpened)
    assert dict(event.metrics) == {"calls": 4, "failures": 3, "slow_calls": 0, "consecutive_opens": 2}
    assert counts(b, T0 + 11) == ("open", 4, 3, 75.0)  # what the event reports
    assert counts(b, T0 + 31) == ("half_open", 0, 0, 0.0)  # each episode starts afresh


def test_half_open_metrics_hold_this_episodes_probes_only() -> None:
    b = tripped()  # two permits, decided after two probe results
    first, second = probes(b, T0 + 10, 2)
    b.on_result(T0 + 11, True, FAST, ticket=CALL)  # admitted while closed, reporting now: not a probe
    b.on_result(T0 + 11, False, SLOW, ticket=CALL)
    assert counts(b, T0 + 11) == ("half_open", 0, 0, 0.0)
    b.on_result(T0 + 12, False, FAST, ticket=first)
    assert counts(b, T0 + 12) == ("half_open", 1, 0, 0.0)
    assert b.state(T0 + 15.5) == "open"  # the second probe expired: a failure, 1 of 2 = 50 %
    assert b.drain_events() == (half(T0 + 10), opened(T0 + 15.5, T0 + 35.5, "probe_expired", fr=50.0))
    assert counts(b, T0 + 15.5) == ("open", 2, 1, 50.0)
    # its late report arrives while open: added to the kept window of half_open_permits (2) calls,
    # from which the oldest result, the first probe's success, drops out (as in Resilience4j)
    b.on_result(T0 + 16, True, FAST, ticket=second)
    assert counts(b, T0 + 16) == ("open", 2, 2, 100.0)


def test_half_open_to_closed_starts_the_policy_window_afresh() -> None:
    spec = {"window": "time", "window_s": 10.0, "window_buckets": 5, "half_open_permits": 1, "minimum_calls": 1}
    b = tripped(**spec)
    (probe,) = probes(b, T0 + 10, 1)
    b.on_result(T0 + 10, True, FAST, ticket=probe)  # re-opened until T0 + 30
    (probe,) = probes(b, T0 + 30, 1)
    b.on_result(T0 + 30, False, FAST, ticket=probe)
    assert counts(b, T0 + 30) == ("closed", 0, 0, 0.0)
    for at in (T0 + 31, T0 + 32, T0 + 33):  # a time window again, not the one-permit probe window
        b.on_result(at, False, FAST, ticket=CALL)
    assert counts(b, T0 + 33) == ("closed", 3, 0, 0.0)
    assert counts(b, T0 + 42) == ("closed", 0, 0, 0.0)  # aged out with their buckets


def test_backoff_resets_after_a_close() -> None:
    b = tripped()
    first, second = probes(b, T0 + 10, 2)
    for t in (first, second):
        b.on_result(T0 + 10, True, FAST, ticket=t)
    first, second = probes(b, T0 + 30, 2)  # re-opened for 20 s
    for t in (first, second):
        b.on_result(T0 + 30, False, FAST, ticket=t)
    b.drain_events()
    for _ in range(4):
        call(b, T0 + 31, True)
    assert b.drain_events() == (opened(T0 + 31, T0 + 41),)  # 10 s again, not 40


def test_probe_expiry_counts_as_failure_and_reopens() -> None:
    b = tripped()
    probes(b, T0 + 10, 2)
    assert b.state(T0 + 15.0) == "half_open"  # deadline T0 + 15 not yet passed
    assert b.try_acquire(T0 + 15.0) == REFUSED
    assert b.try_acquire(T0 + 15.5) == REFUSED  # both expired: 100 % failures, re-open
    assert b.drain_events() == (half(T0 + 10), opened(T0 + 15.5, T0 + 35.5, "probe_expired"))


def test_result_exactly_at_the_deadline_is_in_time() -> None:
    b = tripped()
    first, second = probes(b, T0 + 10, 2)
    b.on_result(T0 + 15.0, False, FAST, ticket=first)
    b.on_result(T0 + 15.0, False, FAST, ticket=second)
    assert b.drain_events() == (half(T0 + 10), closed(T0 + 15.0))


def test_one_expired_probe_and_a_late_report_of_it() -> None:
    b = tripped(failure_rate=60.0)
    first, second = probes(b, T0 + 10, 2)
    b.on_result(T0 + 12, False, FAST, ticket=second)  # admitted at T0 + 10 too: in time
    b.on_result(T0 + 15.5, False, FAST, ticket=first)  # expired first: 1 of 2 failed = 50 %
    assert b.drain_events() == (half(T0 + 10), closed(T0 + 15.5, fr=50.0))
    assert b.snapshot(T0 + 15.5)["calls"] == 1  # the late report is an ordinary result


def test_retry_at_when_every_permit_is_in_flight_is_the_earliest_deadline() -> None:
    b = tripped()
    b.try_acquire(T0 + 10)
    assert b.retry_at(T0 + 11) is None  # one permit still free
    b.try_acquire(T0 + 12)
    assert b.retry_at(T0 + 12) == T0 + 15


def test_late_results_while_open_update_metrics_without_transition() -> None:
    b = tripped()
    for _ in range(6):
        b.on_result(T0 + 1, False, FAST, ticket=CALL)
    snap = b.snapshot(T0 + 1)
    assert (snap["state"], snap["calls"], snap["failures"], snap["failure_rate"]) == ("open", 10, 4, 40.0)
    assert b.drain_events() == ()
    assert b.try_acquire(T0 + 1) == REFUSED


def test_late_result_from_a_previous_episode_does_not_count() -> None:
    b = tripped(minimum_calls=1, window_size=1)  # an episode is decided by one result
    old, failing = probes(b, T0 + 10, 2)
    b.on_result(T0 + 10, True, FAST, ticket=failing)  # re-open until T0 + 30
    (new,) = probes(b, T0 + 30, 1)
    b.on_result(T0 + 30, False, FAST, ticket=old)  # a success, but of episode one
    b.on_result(T0 + 30, False, FAST, ticket=CALL)  # an ordinary call admitted while closed
    assert b.state(T0 + 30) == "half_open"
    b.on_result(T0 + 31, True, FAST, ticket=new)
    assert b.drain_events() == (
        half(T0 + 10, permits=2),
        opened(T0 + 10, T0 + 30, "half_open_failed"),
        half(T0 + 30, permits=2),
        opened(T0 + 31, T0 + 66, "half_open_failed"),  # 10 * 2 * 2 = 40, capped at 35
    )


# -- manual states ----------------------------------------------------------------


def test_forced_open_never_admits_until_released() -> None:
    b = make()
    call(b, T0, True)
    b.force("open", T0)
    b.force("open", T0 + 1)  # already forced open: no second event
    assert b.try_acquire(T0 + 1e6) == REFUSED
    assert (b.state(T0 + 1e6), b.open_until, b.retry_at(T0 + 1e6)) == ("forced_open", math.inf, math.inf)
    b.on_result(T0 + 2, True, FAST, ticket=CALL)
    assert b.snapshot(T0 + 2)["calls"] == 1  # fresh metrics at force, then recording
    b.force(None, T0 + 3)
    assert b.drain_events() == (
        opened(T0, math.inf, "forced", fr=100.0),
        closed(T0 + 3, "released", fr=100.0),
    )
    assert (b.state(T0 + 3), b.try_acquire(T0 + 3), b.snapshot(T0 + 3)["calls"]) == ("closed", CALL, 0)


def test_force_closed_resets_an_open_breaker() -> None:
    b = tripped()
    b.force("closed", T0 + 1)
    assert b.drain_events() == (closed(T0 + 1, "forced", fr=100.0),)
    snap = b.snapshot(T0 + 1)
    assert (snap["state"], snap["calls"], snap["consecutive_opens"]) == ("closed", 0, 0)


def test_force_closes_probes_in_flight_into_ordinary_results() -> None:
    b = tripped(minimum_calls=1, window_size=1)
    (probe,) = probes(b, T0 + 10, 1)
    b.force(None, T0 + 11)
    b.on_result(T0 + 11, True, FAST, ticket=probe)  # now an ordinary result in closed
    assert b.drain_events() == (
        half(T0 + 10),
        closed(T0 + 11, "released", fr=0.0),  # the rates of the window it leaves: the episode's, no result yet
        opened(T0 + 11, T0 + 21),
    )


def test_disabled_always_admits_and_records_nothing() -> None:
    b = tripped()
    b.force("disabled", T0 + 1)
    for _ in range(20):
        call(b, T0 + 2, True, SLOW)
    snap = b.snapshot(T0 + 2)
    assert (snap["state"], snap["calls"], snap["open_until"]) == ("disabled", 0, None)
    assert b.retry_at(T0 + 2) is None
    assert b.drain_events() == (closed(T0 + 1, "forced", fr=100.0),)


def test_metrics_only_records_but_never_transitions() -> None:
    b = make()
    b.force("metrics_only", T0)
    for _ in range(20):
        call(b, T0, True, SLOW)
    snap = b.snapshot(T0)
    assert (snap["state"], snap["calls"], snap["failure_rate"], snap["slow_call_rate"]) == (
        "metrics_only",
        10,
        100.0,
        100.0,
    )
    assert b.drain_events() == ()


def test_force_refuses_unknown_states() -> None:
    b = make()
    with pytest.raises(ValueError, match="half_open"):
        b.force("half_open", T0)  # type: ignore[arg-type]
    assert b.state(T0) == "closed"


def test_queries_in_each_state() -> None:
    b = make()
    assert (b.open_until, b.retry_at(T0)) == (None, None)
    for _ in range(4):
        call(b, T0, True)
    assert (b.open_until, b.retry_at(T0 + 1)) == (T0 + 10, T0 + 10)
    assert b.snapshot(T0 + 1) == {
        "state": "open",
        "calls": 4,
        "failures": 4,
        "slow_calls": 0,
        "failure_rate": 100.0,
        "slow_call_rate": 0.0,
        "open_until": T0 + 10,
        "consecutive_opens": 1,
        "probes_in_flight": 0,
    }
    assert len(b.drain_events()) == 1
    assert b.drain_events() == ()


def test_invalid_permits_are_refused() -> None:
    with pytest.raises(ValueError, match="half_open_permits"):
        make(half_open_permits=0)


# -- concurrency and random interleavings -------------------------------------------


@pytest.fixture
def fast_switching() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


@pytest.mark.usefixtures("fast_switching")
def test_threads_racing_in_half_open_get_exactly_the_permits() -> None:
    b = tripped(half_open_permits=3)
    admitted: list[int] = []
    start = threading.Barrier(8)

    def race() -> None:
        start.wait()
        got = [t for t in (b.try_acquire(T0 + 10) for _ in range(500)) if t]
        admitted.extend(got)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 3 and len(set(admitted)) == 3


ops = st.lists(
    st.one_of(
        st.just(("acquire", 0, None)),
        st.tuples(st.just("release"), st.integers(0, 7), st.none()),
        st.tuples(st.just("result"), st.integers(0, 7), st.sampled_from([True, False, None, "slow"])),
        st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 3.0, 10.0]), st.none()),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 5),
    st.sampled_from([1.0, 2.0, 5.0]),
    st.sampled_from([25.0, 50.0, 100.0]),
    ops,
)
def test_half_open_never_admits_more_than_its_permits(
    permits: int, minimum: int, max_wait: float, rate: float, steps: list[tuple[str, Any, Any]]
) -> None:
    b = make(
        half_open_permits=permits,
        minimum_calls=minimum,
        half_open_max_wait_s=max_wait,
        failure_rate=rate,
        open_for_s=2.0,
    )
    now = T0
    held: list[tuple[int, float]] = []  # tickets not yet resolved, with admission time
    seen: set[int] = set()
    episode_admitted = episode_freed = 0
    for op, arg, outcome in steps:
        if op == "advance":
            now += arg
        elif op == "acquire":
            ticket = b.try_acquire(now)
            if ticket:
                assert ticket not in seen or ticket == CALL
                seen.add(ticket)
                held.append((ticket, now))
                if ticket >= 2:
                    episode_admitted += 1
        elif held:
            ticket, admitted_at = held.pop(arg % len(held))
            in_time = ticket >= 2 and now <= admitted_at + max_wait
            if op == "release":
                b.release(now, ticket)
                episode_freed += in_time
            else:
                failed = outcome if outcome != "slow" else False
                b.on_result(now, failed, SLOW if outcome == "slow" else FAST, ticket=ticket)
                episode_freed += in_time and failed is None
        for event in b.drain_events():
            if isinstance(event, CircuitHalfOpened):
                episode_admitted = episode_freed = 0
                assert event.permits == permits
        assert episode_admitted - episode_freed <= permits
        assert b.snapshot(now)["probes_in_flight"] <= permits

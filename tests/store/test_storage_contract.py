"""The storage contract: every backend behaves alike behind ``engine.store.base``.

Each test takes a ``store`` built by one factory of :data:`STORES` and
asserts exact behaviour, so every backend must produce the same events,
tickets and numbers as the in-process objects. A backend joins by appending
one ``pytest.param(factory, id=...)``: a factory gets the pytest request (for
fixtures such as ``tmp_path`` or a server) and returns a fresh, empty store,
which the fixture closes after the test.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import engine.store.base
from engine import Outcome, PolicyEngine
from engine.budget import BudgetLedger
from engine.events import (
    BudgetExhausted,
    BudgetReset,
    BudgetWarning,
    CircuitClosed,
    CircuitHalfOpened,
    CircuitOpened,
    Event,
    FallbackTriggered,
)
from engine.policy.model import BreakerSpec, BudgetSpec
from engine.store.base import Store, open_store
from engine.testing import FakeClock
from tests.redis_server import redis_cluster, redis_server  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[2]
StoreFactory = Callable[[pytest.FixtureRequest], Store]


def memory_store(request: pytest.FixtureRequest) -> Store:
    return open_store("memory://")


def redis_store(request: pytest.FixtureRequest) -> Store:
    server = request.getfixturevalue("redis_server")
    request.getfixturevalue("monkeypatch").setitem(engine.store.base.BACKENDS, "redis",
                                                   "engine.store.redis.store:RedisStore")
    return open_store(server.uri())


def redis_cluster_store(request: pytest.FixtureRequest) -> Store:
    """A store on a three-master Redis Cluster (its keys on the master serving their slot)."""
    cluster = request.getfixturevalue("redis_cluster")
    request.getfixturevalue("monkeypatch").setitem(engine.store.base.BACKENDS, "redis+cluster",
                                                   "engine.store.redis.store:RedisStore")
    return open_store(cluster.uri())


def sqlite_store(request: pytest.FixtureRequest) -> Store:
    tmp_path = request.getfixturevalue("tmp_path")
    return open_store(f"sqlite:///{tmp_path}/history.db?flush_s=0.05")


STORES: list[Any] = [
    pytest.param(memory_store, id="memory"),
    pytest.param(sqlite_store, id="sqlite"),
    pytest.param(redis_store, id="redis"),
    pytest.param(redis_cluster_store, id="redis-cluster"),
]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    factory: StoreFactory = request.param
    made = factory(request)
    try:
        yield made
    finally:
        made.close()


T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAY = 86400.0
BREAKER = BreakerSpec(window="count", window_size=10, minimum_calls=4, failure_rate=50.0, slow_call_rate=50.0,
                      slow_call_ms=1000.0, open_for_s=10.0, backoff=2.0, max_open_for_s=35.0, half_open_permits=2,
                      half_open_max_wait_s=5.0)
BUDGET = BudgetSpec(name="b", scope="global", target=None, period="daily", tokens=1000, cost_usd=None,
                    reservation_ttl_s=60.0)
FAST, SLOW = 10.0, 1500.0


def opened(at: float, until: float, reason: str = "failure_rate", fr: float = 100.0, sr: float = 0.0) -> Event:
    return CircuitOpened(at=at, model="m", reason=reason, open_until=until, failure_rate=fr, slow_call_rate=sr)


def call(b: Any, now: float, failed: bool | None, latency: float = FAST) -> int:
    ticket: int = b.try_acquire(now)
    assert ticket
    b.on_result(now, failed, latency, ticket=ticket)
    return ticket


def tripped(store: Store, events: list[Event], **spec: Any) -> Any:
    """A breaker opened at T0 by four failures (open until T0 + 10)."""
    b = store.make_breaker("m", replace(BREAKER, **spec), events)
    for _ in range(4):
        call(b, T0, True)
    assert events == [opened(T0, T0 + 10.0)]
    events.clear()
    return b


# -- the store itself ---------------------------------------------------------------


def test_store_keeps_its_events_in_order(store: Store) -> None:
    assert isinstance(store.uri, str) and isinstance(store.keeps_history, bool)
    first, second = BudgetReset(T0, "b", T0), BudgetReset(T0 + 1, "b", T0 + 1)
    store.append_event(first)
    store.append_event(second)
    assert store.events()[-2:] == [first, second]


# -- breakers -----------------------------------------------------------------------


def test_breaker_trips_once_the_rate_is_reached(store: Store) -> None:
    events: list[Event] = []
    b = store.make_breaker("m", BREAKER, events)
    for _ in range(3):
        call(b, T0, True)
    assert b.state(T0) == "closed" and events == []  # below minimum_calls
    call(b, T0, True)
    assert b.state(T0) == "open"
    assert events == [opened(T0, T0 + 10.0)]
    assert events[0].metrics == {"calls": 4, "failures": 4, "slow_calls": 0, "consecutive_opens": 1}


def test_a_success_that_reaches_minimum_calls_can_trip(store: Store) -> None:
    events: list[Event] = []
    b = store.make_breaker("m", BREAKER, events)
    for _ in range(3):
        call(b, T0, True)
    call(b, T0, False)
    assert events == [opened(T0, T0 + 10.0, fr=75.0)]
    assert b.try_acquire(T0) == 0


def test_slow_calls_trip_on_the_slow_call_rate(store: Store) -> None:
    events: list[Event] = []
    b = store.make_breaker("m", BREAKER, events)
    for _ in range(4):
        call(b, T0, False, SLOW)
    assert events == [opened(T0, T0 + 10.0, reason="slow_call_rate", fr=0.0, sr=100.0)]


def test_ignored_errors_are_not_counted(store: Store) -> None:
    events: list[Event] = []
    b = store.make_breaker("m", BREAKER, events)
    for _ in range(10):
        call(b, T0, None)
    assert b.snapshot(T0)["calls"] == 0 and events == []


def test_open_breaker_refuses_until_open_until_then_admits_exactly_the_permits(store: Store) -> None:
    events: list[Event] = []
    b = tripped(store, events)
    assert b.try_acquire(T0 + 9.9) == 0
    assert b.retry_at(T0 + 9.9) == T0 + 10.0
    tickets = [b.try_acquire(T0 + 10.0) for _ in range(4)]
    assert tickets == [2, 5, 0, 0]
    assert events == [CircuitHalfOpened(at=T0 + 10.0, model="m", permits=2)]
    assert b.state(T0 + 10.0) == "half_open"
    assert b.retry_at(T0 + 10.0) == T0 + 15.0  # the earliest probe deadline
    assert b.snapshot(T0 + 10.0)["probes_in_flight"] == 2


def test_probes_that_succeed_close_with_a_fresh_window(store: Store) -> None:
    events: list[Event] = []
    b = tripped(store, events)
    t1, t2 = b.try_acquire(T0 + 10), b.try_acquire(T0 + 10)
    b.on_result(T0 + 11, False, FAST, ticket=t1)
    assert b.state(T0 + 11) == "half_open"
    b.on_result(T0 + 12, False, FAST, ticket=t2)
    assert events[1:] == [CircuitClosed(at=T0 + 12, model="m", reason="probes_succeeded")]
    snap = b.snapshot(T0 + 12)
    assert (snap["state"], snap["calls"], snap["consecutive_opens"]) == ("closed", 0, 0)


def test_half_open_starts_fresh_and_counts_only_its_probes(store: Store) -> None:
    # Resilience4j: every transition but into OPEN starts fresh metrics; a call admitted while closed that
    # reports during the half-open episode is not one of its probes and is not counted
    events: list[Event] = []
    b = store.make_breaker("m", BREAKER, events)
    late = b.try_acquire(T0)
    for _ in range(4):
        call(b, T0, True)
    snap = b.snapshot(T0 + 10.0)
    assert (snap["state"], snap["calls"], snap["failures"]) == ("half_open", 0, 0)
    b.on_result(T0 + 10.0, True, FAST, ticket=late)
    snap = b.snapshot(T0 + 10.0)
    assert (snap["state"], snap["calls"], snap["failures"]) == ("half_open", 0, 0)


def test_a_failed_probe_reopens_with_backoff_up_to_the_cap(store: Store) -> None:
    events: list[Event] = []
    b = tripped(store, events)
    now, until = T0 + 10.0, T0 + 10.0
    for grown in (20.0, 35.0, 35.0):  # open_for 10 -> 20 -> 40 capped at 35
        now = until
        t1, t2 = b.try_acquire(now), b.try_acquire(now)
        b.on_result(now, True, FAST, ticket=t1)
        b.on_result(now, False, FAST, ticket=t2)
        until = now + grown
        assert events[-1] == opened(now, until, reason="half_open_failed", fr=50.0)
        assert b.export(now)["open_until"] == until
    assert [type(e).__name__ for e in events] == ["CircuitHalfOpened", "CircuitOpened"] * 3


def test_a_probe_that_never_reports_expires_as_a_failure(store: Store) -> None:
    events: list[Event] = []
    b = tripped(store, events)
    t1, t2 = b.try_acquire(T0 + 10), b.try_acquire(T0 + 10)
    b.on_result(T0 + 15, False, FAST, ticket=t1)  # exactly at the deadline: in time
    assert b.state(T0 + 15) == "half_open"
    assert b.state(T0 + 15.5) == "open"  # t2 expired: 1 of 2 failed
    assert events[-1] == opened(T0 + 15.5, T0 + 35.5, reason="probe_expired", fr=50.0)
    b.on_result(T0 + 16, False, FAST, ticket=t2)  # late: an ordinary result, no transition
    assert b.state(T0 + 16) == "open"


def test_release_and_ignored_results_give_permits_back(store: Store) -> None:
    events: list[Event] = []
    b = tripped(store, events)
    t1, t2 = b.try_acquire(T0 + 10), b.try_acquire(T0 + 10)
    assert b.try_acquire(T0 + 10) == 0
    b.release(T0 + 10, t1)
    t3 = b.try_acquire(T0 + 10)
    assert t3 >= 2 and t3 not in (t1, t2)
    b.on_result(T0 + 10, None, FAST, ticket=t2)
    t4 = b.try_acquire(T0 + 10)
    assert t4 >= 2 and b.try_acquire(T0 + 10) == 0
    assert b.state(T0 + 10) == "half_open"


def test_force_sets_manual_states_with_their_events(store: Store) -> None:
    events: list[Event] = []
    b = store.make_breaker("m", BREAKER, events)
    b.force("open", T0)
    assert events == [CircuitOpened(at=T0, model="m", reason="forced", open_until=math.inf)]
    assert b.try_acquire(T0 + 1000) == 0 and b.retry_at(T0) == math.inf
    assert b.snapshot(T0)["open_until"] == math.inf
    b.force("open", T0 + 1)  # already forced open: no second event
    b.force(None, T0 + 2)
    assert events[1:] == [CircuitClosed(at=T0 + 2, model="m", reason="released")]
    b.force("disabled", T0 + 3)
    for _ in range(10):
        call(b, T0 + 3, True)
    assert b.state(T0 + 3) == "disabled" and b.snapshot(T0 + 3)["calls"] == 0
    b.force("metrics_only", T0 + 4)
    for _ in range(10):
        call(b, T0 + 4, True)
    assert b.state(T0 + 4) == "metrics_only" and b.snapshot(T0 + 4)["failures"] == 10
    b.force("open", T0 + 5)
    b.force("closed", T0 + 6)
    assert events[-1] == CircuitClosed(at=T0 + 6, model="m", reason="forced")
    with pytest.raises(ValueError, match="expected 'open'"):
        b.force("half_open", T0)


def test_time_window_forgets_old_calls(store: Store) -> None:
    events: list[Event] = []
    b = store.make_breaker("m", replace(BREAKER, window="time", window_s=10.0, window_buckets=5), events)
    for _ in range(3):
        call(b, T0, True)
    assert b.snapshot(T0 + 9.9)["calls"] == 3
    assert b.snapshot(T0 + 10.0)["calls"] == 0
    call(b, T0 + 10.0, True)  # one failure in a fresh window: below minimum_calls
    assert events == [] and b.state(T0 + 10.0) == "closed"


@pytest.mark.parametrize("window", ["count", "time"])
def test_many_successes_then_failures_keep_their_order_in_the_window(store: Store, window: str) -> None:
    """Successes may travel in batches (a shared store); the window still holds the calls in order."""
    events: list[Event] = []
    b = store.make_breaker("m", replace(BREAKER, window=window, window_s=100.0, window_buckets=10), events)
    for i in range(25):
        call(b, T0 + i * 0.01, False)
        if i in (7, 12):  # a read sends what is batched: 8, then 5 (3 fall out of a count window), then 12
            assert b.snapshot(T0 + i * 0.01)["calls"] == min(i + 1, 10 if window == "count" else 99)
    for _ in range(4):
        call(b, T0 + 1.0, True)
    if window == "count":  # the last 10: 6 successes, 4 failures (40%)
        assert events == [] and b.snapshot(T0 + 1.0)["calls"] == 10
        call(b, T0 + 1.0, True)  # 5 of 10
        assert events == [opened(T0 + 1.0, T0 + 11.0, fr=50.0)]
        assert events[0].metrics == {"calls": 10, "failures": 5, "slow_calls": 0, "consecutive_opens": 1}
    else:  # all 29 in the window: 4 failures (13.8%)
        assert events == [] and b.snapshot(T0 + 1.0)["calls"] == 29
        assert b.snapshot(T0 + 1.0)["failures"] == 4


def test_export_and_restore_round_trip_without_events(store: Store) -> None:
    events: list[Event] = []
    b = tripped(store, events)
    saved = b.export(T0 + 1)
    assert saved == {"state": "open", "open_until": T0 + 10.0, "open_for": 10.0, "consecutive_opens": 1}
    b.force(None, T0 + 2)
    events.clear()
    b.restore(saved, T0 + 3)
    assert events == [] and b.state(T0 + 3) == "open" and b.retry_at(T0 + 3) == T0 + 10.0


def test_reconfigure_keeps_the_state_and_applies_new_thresholds(store: Store) -> None:
    events: list[Event] = []
    b = store.make_breaker("m", BREAKER, events)
    for _ in range(3):
        call(b, T0, False)
    b.reconfigure(replace(BREAKER, minimum_calls=2, failure_rate=20.0), T0)
    call(b, T0, True)  # 1 of 4 = 25% >= 20%
    assert events == [opened(T0, T0 + 10.0, fr=25.0)]
    b.reconfigure(replace(BREAKER, window="time"), T0 + 1)  # a new window kind starts empty
    assert b.state(T0 + 1) == "open" and b.snapshot(T0 + 1)["calls"] == 0


def test_a_refusing_breaker_says_its_state_and_when_it_may_admit(store: Store) -> None:
    events: list[Event] = []
    b = tripped(store, events)
    assert b.try_acquire(T0 + 1.0) == 0
    assert b.refusal(T0 + 1.0) == ("open", T0 + 10.0)
    b.force("open", T0 + 2.0)
    assert b.try_acquire(T0 + 2.0) == 0
    assert b.refusal(T0 + 2.0) == ("forced_open", math.inf)


# -- budgets ------------------------------------------------------------------------


def test_reservations_count_until_settled(store: Store) -> None:
    events: list[Event] = []
    led = store.make_ledger(BUDGET, events)
    assert led.available(T0)
    rid = led.reserve(T0, 300, 0.0)
    assert rid > 0
    assert (led.used_fraction(T0), led.spent_fraction(T0)) == (0.3, 0.0)
    assert led.settle(T0 + 1, rid, 250, 0.0) is True
    assert (led.used_fraction(T0 + 1), led.spent_fraction(T0 + 1)) == (0.25, 0.25)
    snap = led.snapshot(T0 + 1)
    assert {k: snap[k] for k in ("tokens_used", "tokens_reserved", "reservations", "period_start", "period_end",
                                 "resets_at", "warned", "exhausted")} == {
        "tokens_used": 250, "tokens_reserved": 0, "reservations": 0, "period_start": T0,
        "period_end": T0 + DAY, "resets_at": T0 + DAY, "warned": False, "exhausted": False}
    assert events == []


def test_one_warning_and_one_exhaustion_per_period(store: Store) -> None:
    events: list[Event] = []
    led = store.make_ledger(BUDGET, events)
    led.settle(T0, None, 900, 0.0)
    assert events == [BudgetWarning(T0, "b", 0.9, 900, 1000, 0.0, None, T0)]
    led.settle(T0 + 1, None, 50, 0.0)
    assert len(events) == 1
    led.settle(T0 + 2, None, 60, 0.0)
    assert events[1:] == [BudgetExhausted(T0 + 2, "b", 1.01, 1010, 1000, 0.0, None, T0, T0 + DAY)]
    assert not led.available(T0 + 3) and led.exhausted(T0 + 3)
    assert led.reserve(T0 + 3, 10, 0.0) == 0
    assert led.resets_at(T0 + 3) == T0 + DAY


def test_a_new_period_starts_empty_with_one_reset_event(store: Store) -> None:
    events: list[Event] = []
    led = store.make_ledger(BUDGET, events)
    rid = led.reserve(T0, 100, 0.0)
    led.settle(T0, None, 1000, 0.0)
    events.clear()
    assert led.available(T0 + DAY)
    assert events == [BudgetReset(T0 + DAY, "b", T0 + DAY)]
    assert led.used_fraction(T0 + DAY) == 0.0
    assert led.settle(T0 + DAY, rid, 40, 0.0) is False  # a reset drops reservations
    assert led.snapshot(T0 + DAY)["tokens_used"] == 40


def test_a_reservation_expires_after_its_ttl(store: Store) -> None:
    events: list[Event] = []
    led = store.make_ledger(BUDGET, events)
    rid = led.reserve(T0, 1000, 0.0)
    assert not led.available(T0 + 59.9)
    assert led.available(T0 + 60.0)  # expired at exactly ttl
    assert led.settle(T0 + 61, rid, 10, 0.0) is False
    assert led.snapshot(T0 + 61)["tokens_used"] == 10


def test_cost_budgets_judge_the_larger_fraction(store: Store) -> None:
    events: list[Event] = []
    led = store.make_ledger(replace(BUDGET, cost_usd=2.0), events)
    led.settle(T0, None, 100, 1.5)
    assert led.used_fraction(T0) == 0.75
    assert led.snapshot(T0)["cost_used"] == 1.5
    led.settle(T0, None, 0, 0.5)
    assert [type(e) for e in events] == [BudgetWarning, BudgetExhausted]


def test_rolling_budget_frees_up_as_usage_ages_out(store: Store) -> None:
    events: list[Event] = []
    t = 1_750_000_020.0  # a multiple of 10: buckets of 600 s / 60 start on whole seconds
    led = store.make_ledger(replace(BUDGET, period="rolling", rolling_s=600.0), events)
    led.settle(t, None, 1000, 0.0)
    assert not led.available(t + 1)
    assert led.resets_at(t + 1) == t + 610.0
    assert led.snapshot(t + 1)["period_end"] is None
    assert led.available(t + 610.0)
    assert [type(e) for e in events] == [BudgetWarning, BudgetExhausted, BudgetReset]


def test_saved_usage_must_fit_the_spec(store: Store) -> None:
    events: list[Event] = []
    hourly = BudgetLedger(replace(BUDGET, period="hourly"))
    with pytest.raises(ValueError, match="period"):
        store.make_ledger(BUDGET, events, hourly.to_dict())


def test_to_dict_restores_into_a_local_ledger(store: Store) -> None:
    events: list[Event] = []
    led = store.make_ledger(BUDGET, events)
    led.settle(T0, None, 420, 0.0)
    led.available(T0)
    copy = BudgetLedger.from_dict(BUDGET, led.to_dict())
    assert copy.snapshot(T0)["tokens_used"] == 420


def test_evaluate_emits_once_a_lowered_limit_is_already_passed(store: Store) -> None:
    events: list[Event] = []
    led = store.make_ledger(BUDGET, events)
    led.settle(T0, None, 800, 0.0)
    lowered = store.make_ledger(replace(BUDGET, tokens=850), events, led.to_dict())
    lowered.evaluate(T0 + 1)
    assert events == [BudgetWarning(T0 + 1, "b", 800 / 850, 800, 850, 0.0, None, T0)]


def test_a_refusing_budget_says_why_and_when_it_resets(store: Store) -> None:
    led = store.make_ledger(BUDGET, [])
    assert led.refusal(T0) is None
    rid = led.reserve(T0, 1000, 0.0)
    assert led.refusal(T0) == ("budget b fully reserved by calls in flight", T0 + DAY)
    led.settle(T0, rid, 1000, 0.0)
    assert led.refusal(T0 + 1.0) == ("budget b exhausted", T0 + DAY)
    assert led.refusal(T0 + DAY - 1.0) == ("budget b exhausted", T0 + DAY)
    assert led.refusal(T0 + DAY) is None


# -- through the engine -------------------------------------------------------------


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(ROOT / "policies", target)
    return target


def test_engine_decides_records_and_falls_back_through_the_store(store: Store, policies: Path) -> None:
    clock = FakeClock()
    eng = PolicyEngine.from_path(policies, clock=clock, store=store)
    seen: list[Event] = []
    eng.subscribe(seen.append)
    first = eng.decide("L2", estimated_tokens=1000)
    eng.record(first, Outcome(latency_ms=800.0, input_tokens=600, output_tokens=300))
    state = eng.state(first.model)
    assert state["breaker"]["state"] == "closed"
    assert all(b["tokens_used"] == 900 or b["cost_used"] > 0 for b in state["budgets"])
    eng.force(first.model, "open")
    second = eng.decide("L2")
    assert second.model != first.model and second.is_fallback
    assert any(isinstance(e, FallbackTriggered) for e in seen)
    assert any(isinstance(e, CircuitOpened) and e.reason == "forced" for e in seen)
    eng.record(second, Outcome(latency_ms=500.0, error="timeout"))
    eng.force(first.model, None)
    assert eng.decide("L2").model == first.model

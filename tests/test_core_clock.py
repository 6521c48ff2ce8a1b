"""The engine's time when its clock steps backwards (an epoch clock corrected by NTP or by hand).

Engine time never runs backwards: it carries on from where it was and keeps
elapsing at the clock's rate, so open durations, windows, probe deadlines and
anomaly schedules are unaffected; budget periods follow the clock's own
calendar and never go back to an earlier period.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from engine import NoModelAvailable, Outcome, PolicyEngine
from engine.calling import call
from engine.events import AnomalyDetected, BudgetReset, CircuitHalfOpened, CircuitOpened, Event
from engine.testing import FakeClock

OK = Outcome(800.0, 1000, 200)
FAIL = Outcome(100.0, error="server_error")
MINI = "gpt-4.1-mini"
HOUR = 3600.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def eng(policy_dir: Path, clock: FakeClock) -> PolicyEngine:
    return PolicyEngine.from_path(policy_dir, clock=clock)


def trip(eng: PolicyEngine, clock: FakeClock, model: str = MINI, step: float = 0.0) -> int:
    """Fail ``model``'s calls, ``step`` seconds apart, until its breaker opens; the number of calls."""
    n = 0
    while eng.state(model)["breaker"]["state"] == "closed":
        eng.record(eng.decide("L2", model=model), FAIL)
        clock.advance(step)
        n += 1
    return n


def test_an_open_breaker_keeps_its_open_time_across_a_backward_step(eng: PolicyEngine, clock: FakeClock) -> None:
    events: list[Event] = []
    eng.subscribe(events.append)
    trip(eng, clock)
    (opened,) = [e for e in events if isinstance(e, CircuitOpened)]
    assert opened.open_until == clock.now + 30.0
    clock.step_back(HOUR)
    with pytest.raises(NoModelAvailable) as info:
        eng.decide("L2", model=MINI)
    assert info.value.retry_at == opened.open_until  # still 30 s after it opened
    clock.advance(29.5)
    with pytest.raises(NoModelAvailable):
        eng.decide("L2", model=MINI)
    clock.advance(0.5)
    probe = eng.decide("L2", model=MINI)  # 30 s of the clock's time later, not 3,630
    assert [type(e) for e in events][-1] is CircuitHalfOpened
    assert probe.at == opened.open_until
    eng.record(probe, OK)


def test_the_time_window_keeps_judging_after_a_backward_step(eng: PolicyEngine, clock: FakeClock) -> None:
    eng.record(eng.decide("L2"), OK)
    clock.step_back(HOUR)
    assert trip(eng, clock, step=0.1) == 9  # failing every call opens its breaker: results are not stale
    breaker = eng.state(MINI)["breaker"]
    assert (breaker["calls"], breaker["failures"]) == (10, 9)
    d = eng.decide("L2")
    assert d.model == "gemini-2.5-flash" and d.is_fallback
    eng.record(d, OK)
    assert eng.state(MINI)["metrics"]["calls"] == 10  # the rolling metrics kept every call too


def test_anomaly_rules_keep_running_after_a_backward_step(eng: PolicyEngine, clock: FakeClock) -> None:
    events: list[Event] = []
    eng.subscribe(events.append)
    eng.force("mistral-small-latest", "metrics_only")
    clock.advance(5.0)
    eng.tick()
    clock.step_back(HOUR)
    for _ in range(450):  # 45 s of a 429 storm: the rule holds for its 30 s
        eng.record(eng.decide("L2", model="mistral-small-latest"), Outcome(10.0, error="rate_limit"))
        clock.advance(0.1)
    assert [e.rule for e in events if isinstance(e, AnomalyDetected)] == ["rate-limit-storm"]


def test_decision_times_never_run_backwards(eng: PolicyEngine, clock: FakeClock) -> None:
    times, ahead = [], []
    for step in (0.0, 10.0, HOUR, 0.5):
        clock.step_back(step)  # just after the engine's last reading: no time is lost
        d = eng.decide("L2")
        times.append(d.at)
        ahead.append(d.at - clock.now)
        clock.advance(0.25)
        eng.record(d, OK)
    assert [b - a for a, b in itertools.pairwise(times)] == [0.25, 0.25, 0.25]  # the clock's rate, never back
    assert ahead == [0.0, 10.0, 10.0 + HOUR, 10.5 + HOUR]  # engine time runs ahead by what was stepped back


def test_call_waits_for_a_recovery_in_engine_time_after_a_backward_step(eng: PolicyEngine,
                                                                       clock: FakeClock) -> None:
    for m in eng.policy.tiers["L2"].candidates + eng.policy.tiers["L3"].candidates:
        for _ in range(10):
            eng.record(eng.decide("L2", model=m), FAIL)  # all open until now + 30 s
    clock.advance(28.5)
    eng.tick()  # the engine saw the clock then (the time between its last reading and a step is not counted)
    clock.step_back(HOUR)
    asked: list[float] = []

    def sleep(seconds: float) -> None:
        asked.append(seconds)
        clock.advance(seconds)

    assert call(eng, "L2", lambda model: model, sleep=sleep) == MINI  # max_wait_s is 2
    assert asked == [pytest.approx(1.5)]


def test_a_budget_period_never_goes_back_and_resets_at_the_clocks_boundary(policy_dir: Path) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    midnight = datetime(2026, 1, 2, tzinfo=berlin).timestamp()  # gpt-5-daily resets at Berlin midnight
    clock = FakeClock(midnight + 10 * 60)  # 00:10 on 2 January
    eng = PolicyEngine.from_path(policy_dir, clock=clock)
    events: list[Event] = []
    eng.subscribe(events.append)
    eng.record(eng.decide("L4"), Outcome(100.0, 1000, 0))
    clock.step_back(HOUR)  # 23:10 on 1 January by the clock
    eng.record(eng.decide("L4"), Outcome(100.0, 500, 0))
    budget = eng.state("gpt-5")["budgets"][0]
    assert (budget["period_start"], budget["tokens_used"]) == (midnight, 1500)  # still 2 January's
    clock.advance(HOUR + 30 * 60)  # 00:40 on 2 January by the clock: the same period
    assert eng.state("gpt-5")["budgets"][0]["tokens_used"] == 1500
    assert not [e for e in events if isinstance(e, BudgetReset)]
    clock.set(midnight + 24 * HOUR)  # the clock's next midnight: a new period, as the calendar says
    eng.record(eng.decide("L4"), Outcome(100.0, 7, 0))
    budget = eng.state("gpt-5")["budgets"][0]
    assert (budget["period_start"], budget["tokens_used"]) == (midnight + 24 * HOUR, 7)


def test_a_restart_after_a_backward_step_keeps_the_open_time(policy_dir: Path, clock: FakeClock) -> None:
    eng = PolicyEngine.from_path(policy_dir, clock=clock)
    trip(eng, clock)
    clock.step_back(HOUR)
    eng.tick()
    saved = eng.export_state()  # wall times: the clock's own
    again = PolicyEngine.from_path(policy_dir, clock=clock)
    again.restore_state(saved)
    assert again.state(MINI)["breaker"]["open_until"] == clock.now + 30.0


# -- stores that turn engine time into wall time follow a backward step ----------------------------------


def test_the_history_files_events_at_the_clocks_own_time_after_a_step_back(policy_dir: Path, tmp_path: Path) -> None:
    import sqlite3

    clock = FakeClock()
    db = tmp_path / "history.db"
    eng = PolicyEngine.from_path(policy_dir, clock=clock, store=f"sqlite:///{db}")
    eng.state(MINI)
    clock.step_back(86400.0)  # a day back: the clock is corrected by hand
    trip(eng, clock)
    wall = clock.now  # FakeClock counts epoch seconds
    eng.close()
    with sqlite3.connect(db) as conn:
        opened = conn.execute("select at from events where kind = 'CircuitOpened'").fetchall()
        minutes = conn.execute("select min(minute), max(minute) from minutes").fetchone()
    assert len(opened) == 1
    assert abs(opened[0][0] - wall) < 1.0  # on the clock's day, with the calls that opened it
    assert minutes[0] <= wall // 60 <= minutes[1]

"""PolicyEngine.decide / record: selection, fallback, budgets, validation, events, threads."""

from __future__ import annotations

import copy
import math
import re
import threading
from pathlib import Path

import pytest

from engine import (
    BudgetExhausted,
    BudgetWarning,
    CircuitHalfOpened,
    CircuitOpened,
    Decision,
    FallbackTriggered,
    NoModelAvailable,
    Outcome,
    PolicyEngine,
)
from engine.events import AnomalyDetected, AnomalyResolved, Event
from engine.testing import FakeClock
from tests.conftest import POLICIES

OK = Outcome(latency_ms=800.0, input_tokens=1000, output_tokens=200)
L2 = ["gpt-4.1-mini", "gemini-2.5-flash", "claude-haiku-4-5", "mistral-small-latest"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def eng(clock: FakeClock) -> PolicyEngine:
    return PolicyEngine.from_path(POLICIES, clock=clock)


def trip(eng: PolicyEngine, clock: FakeClock, model: str, n: int = 10) -> None:
    for _ in range(n):
        d = eng.decide("L2", model=model)
        eng.record(d, Outcome(100.0, error="server_error"))
        clock.advance(0.1)


def test_first_candidate_in_priority_order(eng: PolicyEngine) -> None:
    d = eng.decide("L2")
    assert (d.model, d.tier, d.is_fallback, d.reasons) == ("gpt-4.1-mini", "L2", False, ())
    eng.record(d, OK)
    state = eng.state("gpt-4.1-mini")
    assert state["metrics"]["calls"] == 1 and state["metrics"]["tokens_in"] == 1000
    assert state["metrics"]["cost_usd"] == pytest.approx((1000 * 0.40 + 200 * 1.60) / 1e6)
    assert state["in_flight"] == 0 and state["breaker"]["state"] == "closed"


def test_open_breaker_falls_back_with_reasons_and_event(eng: PolicyEngine, clock: FakeClock) -> None:
    events: list[Event] = []
    eng.subscribe(events.append)
    trip(eng, clock, "gpt-4.1-mini")
    opened = [e for e in events if isinstance(e, CircuitOpened)]
    assert [(e.model, e.reason, e.failure_rate) for e in opened] == [("gpt-4.1-mini", "failure_rate", 100.0)]
    d = eng.decide("L2")
    assert d.model == "gemini-2.5-flash" and d.is_fallback
    assert d.reasons[0][0] == "gpt-4.1-mini" and d.reasons[0][1].startswith("breaker open until")
    assert isinstance(events[-1], FallbackTriggered)
    assert (events[-1].from_model, events[-1].to_model) == ("gpt-4.1-mini", "gemini-2.5-flash")


def test_no_call_reaches_an_open_model_until_half_open(eng: PolicyEngine, clock: FakeClock) -> None:
    trip(eng, clock, "gpt-4.1-mini")
    chosen = []
    for _ in range(290):  # 29 s of traffic while open (open_for_s: 30)
        d = eng.decide("L2")
        chosen.append(d.model)
        eng.record(d, OK)
        clock.advance(0.1)
    assert "gpt-4.1-mini" not in chosen
    clock.advance(1.1)
    events: list[Event] = []
    eng.subscribe(events.append)
    probes = [eng.decide("L2") for _ in range(5)]
    assert [p.model for p in probes] == ["gpt-4.1-mini"] * 3 + ["gemini-2.5-flash"] * 2  # 3 permits
    assert isinstance(events[0], CircuitHalfOpened)


def test_state_while_half_open_shows_the_probes_and_agrees_with_the_reopening(eng: PolicyEngine,
                                                                             clock: FakeClock) -> None:
    def breaker() -> tuple[str, int, int, float]:
        b = eng.state("gpt-4.1-mini")["breaker"]
        return b["state"], b["calls"], b["failures"], b["failure_rate"]

    events: list[Event] = []
    eng.subscribe(events.append)
    trip(eng, clock, "gpt-4.1-mini")
    assert breaker() == ("open", 10, 10, 100.0)  # the window that tripped it
    clock.advance(31)
    assert breaker() == ("half_open", 0, 0, 0.0)  # fresh metrics for the probes
    probes = [eng.decide("L2", model="gpt-4.1-mini") for _ in range(3)]
    eng.record(probes[0], OK)
    assert breaker() == ("half_open", 1, 0, 0.0)
    for d in probes[1:]:
        eng.record(d, Outcome(100.0, error="server_error"))
    reopened = [e for e in events if isinstance(e, CircuitOpened)][-1]
    assert (reopened.reason, reopened.metrics["calls"], reopened.metrics["failures"]) == ("half_open_failed", 3, 2)
    assert breaker() == ("open", 3, 2, reopened.failure_rate)


def test_degrades_across_tiers_and_never_repeats_a_model(eng: PolicyEngine) -> None:
    for m in L2:
        eng.force(m, "open")
    d = eng.decide("L2")
    assert (d.model, d.tier, d.is_fallback) == ("claude-sonnet-4-5", "L3", True)  # L3 ranks by score
    assert [m for m, _ in d.reasons] == L2


def test_no_model_available_lists_every_candidate(eng: PolicyEngine, clock: FakeClock) -> None:
    for m in ["claude-sonnet-4-5", "gpt-4.1", "gemini-2.5-pro"]:
        eng.force(m, "open")
    trip_models = ["gpt-5", "claude-opus-4-1", "o3"]
    for m in trip_models:
        for _ in range(5):
            d = eng.decide("L4", model=m)
            eng.record(d, Outcome(50.0, error="timeout"))
    with pytest.raises(NoModelAvailable) as info:
        eng.decide("L4")
    names = [m for m, _ in info.value.candidates]
    assert names == trip_models + ["claude-sonnet-4-5", "gpt-4.1", "gemini-2.5-pro"]
    assert info.value.retry_at == pytest.approx(clock() + 30.0)
    assert "forced_open" in info.value.candidates[-1][1]


def test_max_in_flight(tmp_path: Path, policy_dir: Path, clock: FakeClock) -> None:
    models = policy_dir / "models.yaml"
    models.write_text(models.read_text().replace("max_in_flight: 128", "max_in_flight: 2", 1))
    eng = PolicyEngine.from_path(policy_dir, clock=clock)
    held = [eng.decide("L2") for _ in range(3)]
    assert [d.model for d in held] == ["gpt-4.1-mini", "gpt-4.1-mini", "gemini-2.5-flash"]
    assert held[2].reasons == (("gpt-4.1-mini", "at max_in_flight (2)"),)
    eng.record(held[0], OK)
    assert eng.decide("L2").model == "gpt-4.1-mini"


def test_budget_warns_then_exhausts_then_falls_back(policy_dir: Path, clock: FakeClock) -> None:
    budgets = policy_dir / "budgets.yaml"
    budgets.write_text(budgets.read_text().replace("tokens: 8000000", "tokens: 10000"))
    eng = PolicyEngine.from_path(policy_dir, clock=clock)
    events: list[Event] = []
    eng.subscribe(events.append)
    for _ in range(9):
        eng.record(eng.decide("L4"), Outcome(1000.0, 900, 100))
    assert [type(e) for e in events] == [BudgetWarning]
    eng.record(eng.decide("L4"), Outcome(1000.0, 900, 100))
    assert [type(e) for e in events] == [BudgetWarning, BudgetExhausted]
    d = eng.decide("L4")
    assert d.model == "claude-opus-4-1" and d.reasons == (("gpt-5", "budget gpt-5-daily exhausted"),)


def test_skipped_candidates_read_the_same_reasons_until_their_budgets_reset(policy_dir: Path,
                                                                            clock: FakeClock) -> None:
    budgets = policy_dir / "budgets.yaml"
    budgets.write_text(budgets.read_text().replace("tokens: 8000000", "tokens: 10000")
                       .replace("tokens: 2000000", "tokens: 10000"))
    eng = PolicyEngine.from_path(policy_dir, clock=clock)
    eng.record(eng.decide("L4", model="gpt-5"), Outcome(1000.0, 9000, 1000))
    eng.record(eng.decide("L4", model="claude-opus-4-1"), Outcome(1000.0, 9000, 1000))
    events: list[Event] = []
    eng.subscribe(events.append)
    reasons = (("gpt-5", "budget gpt-5-daily exhausted"), ("claude-opus-4-1", "budget opus-daily exhausted"))
    for _ in range(50):
        d = eng.decide("L4", estimated_tokens=300)
        assert (d.model, d.is_fallback, d.reasons) == ("o3", True, reasons)
        eng.record(d, Outcome(100.0, 12, 3))
        clock.advance(60.0)
    fallbacks = [e for e in events if isinstance(e, FallbackTriggered)]
    assert len(fallbacks) == 50 and fallbacks[-1].reason == "budget gpt-5-daily exhausted"
    ends = eng.state("gpt-5")["budgets"][0]["period_end"]
    clock.set(ends - eng.export_state()["wall_offset"] - 0.001)
    assert eng.decide("L4").reasons == reasons
    clock.advance(0.001)  # the budgets' day is over: both are back
    d = eng.decide("L4")
    assert (d.model, d.reasons) == ("gpt-5", ())


def test_reservations_stop_concurrent_overshoot(policy_dir: Path, clock: FakeClock) -> None:
    budgets = policy_dir / "budgets.yaml"
    budgets.write_text(budgets.read_text().replace("tokens: 8000000", "tokens: 10000"))
    eng = PolicyEngine.from_path(policy_dir, clock=clock)
    held = [eng.decide("L4", estimated_tokens=4000) for _ in range(4)]
    assert [d.model for d in held] == ["gpt-5", "gpt-5", "gpt-5", "claude-opus-4-1"]
    snap = eng.state("gpt-5")["budgets"][0]
    assert snap["tokens_reserved"] == 12000
    assert held[3].reasons == (("gpt-5", "budget gpt-5-daily fully reserved by calls in flight"),)


@pytest.mark.parametrize(
    ("outcome", "message"),
    [
        (Outcome(-1.0), "latency_ms must be a finite number >= 0"),
        (Outcome(math.nan), "latency_ms must be a finite number >= 0"),
        (Outcome(math.inf), "latency_ms must be a finite number >= 0"),
        (Outcome(10.0, input_tokens=-5), "input_tokens must be an integer >= 0"),
        (Outcome(10.0, output_tokens=1.5), "output_tokens must be an integer >= 0"),  # type: ignore[arg-type]
        (Outcome(10.0, error="timout"), "unknown error class 'timout' (did you mean 'timeout'?)"),
        (Outcome(10.0, retry_after_s=-1), "retry_after_s must be None or a finite number >= 0"),
        # values too large for a float, or for the cost and history arithmetic, are refused too
        (Outcome(10**400), "latency_ms must be a finite number >= 0, got an integer of 401 digits"),
        (Outcome(10.0, input_tokens=10**400), "input_tokens must be an integer >= 0 and < 2**53"),
        (Outcome(10.0, output_tokens=2**53), "output_tokens must be an integer >= 0 and < 2**53"),
        (Outcome(10.0, retry_after_s=10**400), "retry_after_s must be None or a finite number >= 0"),
        (Outcome(True), "latency_ms must be a finite number >= 0, got True"),  # type: ignore[arg-type]
        (Outcome("800"), "latency_ms must be a finite number >= 0, got '800'"),  # type: ignore[arg-type]
        (Outcome(10.0, input_tokens=False), "input_tokens must be an integer"),  # type: ignore[arg-type]
        (Outcome(10.0, error=["timeout"]), "error must be None or the name of an error class, got"),  # type: ignore[arg-type]
        (Outcome(10.0, error=3), "error must be None or the name of an error class, got 3"),  # type: ignore[arg-type]
    ],
)
def test_bad_outcome_is_refused_and_state_untouched(eng: PolicyEngine, outcome: Outcome, message: str) -> None:
    d = eng.decide("L2")
    before = eng.state(d.model)
    with pytest.raises(ValueError, match=re.escape(message)):
        eng.record(d, outcome)
    assert eng.state(d.model) == before
    eng.record(d, OK)  # the decision is still open and can be recorded properly


def test_an_estimate_too_large_is_refused_and_state_untouched(eng: PolicyEngine) -> None:
    before = eng.state("gpt-5")
    for bad in (10**400, 2**53):
        with pytest.raises(ValueError, match=re.escape("estimated_tokens must be an integer >= 0 and < 2**53")):
            eng.decide("L4", estimated_tokens=bad)
    assert eng.state("gpt-5") == before
    d = eng.decide("L4", estimated_tokens=2**53 - 1)  # the largest estimate taken
    assert eng.state("gpt-5")["budgets"][0]["tokens_reserved"] == 2**53 - 1
    eng.record(d, OK)


def test_double_and_foreign_records(eng: PolicyEngine, clock: FakeClock) -> None:
    d = eng.decide("L2")
    eng.record(d, OK)
    with pytest.raises(ValueError, match="already recorded"):
        eng.record(d, OK)
    other = PolicyEngine.from_path(POLICIES, clock=clock)
    with pytest.raises(ValueError, match="not made by this engine"):
        other.record(d, OK)
    forged = Decision("gpt-5", "L4", False, (), 999, 0.0, "x", "L4")
    with pytest.raises(ValueError, match="not made by this engine"):
        eng.record(forged, OK)
    assert eng.state("gpt-4.1-mini")["metrics"]["calls"] == 1


def test_a_tampered_decision_is_refused_and_state_untouched(eng: PolicyEngine) -> None:
    d = eng.decide("L2")
    other = eng.decide("L2", model="gemini-2.5-flash")
    before = {m: eng.state(m) for m in L2}
    forgeries = [d._replace(model="gemini-2.5-flash"), d._replace(model="gpt-5"), d._replace(tier="L4"),
                 d._replace(requested_tier="L3"), d._replace(is_fallback=True), d._replace(estimated_tokens=9),
                 d._replace(id=other.id), other._replace(model=d.model), d._replace(id=[d.id])]
    for forged in forgeries:
        with pytest.raises(ValueError, match="does not match the decision this engine handed out"):
            eng.record(forged, OK)
    assert {m: eng.state(m) for m in L2} == before
    assert before["gpt-4.1-mini"]["in_flight"] == before["gemini-2.5-flash"]["in_flight"] == 1
    eng.record(copy.copy(d), OK)  # an equal copy is the same decision
    eng.record(other, Outcome(100.0, error="timeout"))
    mini, flash = eng.state("gpt-4.1-mini"), eng.state("gemini-2.5-flash")
    assert (mini["in_flight"], mini["metrics"]["calls"], mini["metrics"]["errors"]) == (0, 1, 0)
    assert (flash["in_flight"], flash["metrics"]["calls"], flash["metrics"]["errors"]) == (0, 1, 1)
    with pytest.raises(ValueError, match="already recorded"):
        eng.record(d, OK)


def test_unknown_tier_and_model(eng: PolicyEngine) -> None:
    with pytest.raises(KeyError, match="unknown tier 'L9'"):
        eng.decide("L9")
    with pytest.raises(KeyError, match="unknown model"):
        eng.state("gpt-9")
    with pytest.raises(ValueError, match="estimated_tokens"):
        eng.decide("L2", estimated_tokens=-1)


def test_listener_that_raises_never_breaks_a_decision(eng: PolicyEngine, clock: FakeClock,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Event] = []

    def bad(event: Event) -> None:
        raise RuntimeError("listener bug")

    eng.subscribe(bad)
    eng.subscribe(seen.append)
    trip(eng, clock, "gpt-4.1-mini")
    assert eng.decide("L2").model == "gemini-2.5-flash"
    assert any(isinstance(e, CircuitOpened) for e in seen)
    assert "listener bug" in caplog.text


def test_every_listener_sees_one_order_even_when_a_listener_calls_the_engine(eng: PolicyEngine,
                                                                            clock: FakeClock) -> None:
    first: list[Event] = []
    second: list[Event] = []

    def contain(event: Event) -> None:  # an operator's hook: one open breaker takes its sibling out too
        first.append(event)
        if isinstance(event, CircuitOpened) and event.model == "gpt-4.1-mini":
            eng.force("gemini-2.5-flash", "open")
            assert eng.state("gemini-2.5-flash")["breaker"]["state"] == "forced_open"

    eng.subscribe(contain)
    eng.subscribe(second.append)
    trip(eng, clock, "gpt-4.1-mini")
    opened = [(e.model, e.reason) for e in second if isinstance(e, CircuitOpened)]
    assert opened == [("gpt-4.1-mini", "failure_rate"), ("gemini-2.5-flash", "forced")]
    assert first == second


def test_the_events_of_one_decision_come_in_the_order_they_happened(policy_dir: Path, clock: FakeClock) -> None:
    budgets = policy_dir / "budgets.yaml"
    budgets.write_text(budgets.read_text().replace("tokens: 8000000", "tokens: 10000"))
    eng = PolicyEngine.from_path(policy_dir, clock=clock)
    held = eng.decide("L4", model="gpt-5")
    for _ in range(5):  # the reasoning profile judges five calls
        eng.record(eng.decide("L4", model="gpt-5"), Outcome(100.0, error="server_error"))
    eng.record(held, Outcome(100.0, 9000, 1000))  # a late result spends the whole budget
    clock.advance(31)
    events: list[Event] = []
    eng.subscribe(events.append)
    d = eng.decide("L4")  # gpt-5 half-opens, then its budget refuses it: a fallback
    assert d.reasons == (("gpt-5", "budget gpt-5-daily exhausted"),)
    assert [type(e) for e in events] == [CircuitHalfOpened, FallbackTriggered]


def test_unsubscribe(eng: PolicyEngine, clock: FakeClock) -> None:
    seen: list[Event] = []
    stop = eng.subscribe(seen.append)
    stop()
    trip(eng, clock, "gpt-4.1-mini")
    assert seen == []


def test_anomaly_rules_run_on_schedule_with_for_duration(eng: PolicyEngine, clock: FakeClock) -> None:
    events: list[Event] = []
    eng.subscribe(events.append)
    eng.force("gpt-4.1-mini", "metrics_only")  # keep the failing model in use
    start = clock()
    for _ in range(450):  # 45 s of failing calls, 10 per second
        eng.record(eng.decide("L2"), Outcome(100.0, error="rate_limit"))
        clock.advance(0.1)
    detected = [e for e in events if isinstance(e, AnomalyDetected)]
    # rate-limit-storm (for: 30s) fires once; error-spike (for: 1m) not yet
    assert [(e.rule, e.target, e.severity) for e in detected] == [
        ("rate-limit-storm", "gpt-4.1-mini", "critical")]
    # rules first run at +10 s (evaluate_every_s); the condition must then hold for 30 s
    assert 40.0 <= detected[0].at - start <= 50.0
    for _ in range(3000):  # healthy traffic until the 5-minute window forgets the storm
        eng.record(eng.decide("L2"), OK)
        clock.advance(0.1)
    resolved = [e.rule for e in events if isinstance(e, AnomalyResolved)]
    assert "rate-limit-storm" in resolved


def test_performance_report_grades_health(eng: PolicyEngine, clock: FakeClock) -> None:
    eng.force("gpt-4.1-mini", "metrics_only")
    for i in range(100):
        eng.record(eng.decide("L2"), Outcome(100.0, error="timeout") if i % 2 else OK)
    report = eng.performance_report()
    assert report["models"]["gpt-4.1-mini"]["health"] == "unhealthy"  # error_rate 0.5 > 0.25
    assert report["models"]["gpt-4.1-mini"]["metrics"]["errors_timeout"] == 50
    assert report["tiers"]["L2"]["health"] == "healthy"  # other candidates are healthy
    assert report["tiers"]["L2"]["metrics"]["calls"] == 100
    eng.force("gpt-4.1-mini", "open")
    assert eng.performance_report()["models"]["gpt-4.1-mini"]["health"] == "unhealthy"


def test_score_strategy_prefers_the_healthier_model(eng: PolicyEngine, clock: FakeClock) -> None:
    assert eng.decide("L3").model == "claude-sonnet-4-5"
    eng.force("claude-sonnet-4-5", "metrics_only")
    for _ in range(20):
        eng.record(eng.decide("L3", model="claude-sonnet-4-5"), Outcome(9000.0, error="timeout"))
    clock.advance(1.0)  # the ranking refreshes once a second
    d = eng.decide("L3")
    assert d.model == "gpt-4.1"


def test_threads_keep_every_count_exact(eng: PolicyEngine) -> None:
    threads, per = 8, 5000
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for n in range(per):
                d = eng.decide("L2", estimated_tokens=100)
                eng.record(d, Outcome(50.0, 80, 20, error="timeout" if (n + i) % 97 == 0 else None))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    report = eng.performance_report()
    assert report["tiers"]["L2"]["metrics"]["calls"] == threads * per
    assert sum(report["models"][m]["metrics"]["calls"] for m in L2) == threads * per
    assert all(eng.state(m)["in_flight"] == 0 for m in L2)
    assert report["tiers"]["L2"]["metrics"]["tokens_in"] == threads * per * 80


def test_half_open_never_admits_more_than_its_permits_under_threads(eng: PolicyEngine,
                                                                    clock: FakeClock) -> None:
    trip(eng, clock, "gpt-4.1-mini")
    clock.advance(31)
    admitted: list[Decision] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        for _ in range(30):  # 240 decisions in all: within the other candidates' max_in_flight
            d = eng.decide("L2")
            if d.model == "gpt-4.1-mini":
                with lock:
                    admitted.append(d)

    pool = [threading.Thread(target=work) for _ in range(8)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert len(admitted) == 3


def test_forced_open_everywhere_has_no_recovery_time(eng: PolicyEngine) -> None:
    for tier in ("L3", "L4"):
        for m in eng.policy.tiers[tier].candidates:
            eng.force(m, "open")
    with pytest.raises(NoModelAvailable) as info:
        eng.decide("L4")
    assert info.value.retry_at is None
    assert len(info.value.candidates) == 6


def test_a_retry_keeps_the_fallback_status_and_emits_nothing_new(eng: PolicyEngine) -> None:
    for m in L2:
        eng.force(m, "open")
    events: list[Event] = []
    eng.subscribe(events.append)
    first = eng.decide("L2")
    assert (first.model, first.tier, first.is_fallback) == ("claude-sonnet-4-5", "L3", True)
    eng.record(first, Outcome(100.0, error="timeout"))
    again = eng.decide("L2", retry_of=first)
    assert (again.model, again.tier, again.is_fallback, again.requested_tier) == (
        "claude-sonnet-4-5", "L3", True, "L2")
    assert [type(e) for e in events] == [FallbackTriggered]


def test_a_pinned_model_keeps_its_place_in_the_chain(eng: PolicyEngine) -> None:
    d = eng.decide("L2", model="gpt-4.1")  # an L3 model that L2 degrades to
    assert (d.tier, d.is_fallback) == ("L3", True)
    d2 = eng.decide("L2", model="gemini-2.5-flash")
    assert (d2.tier, d2.is_fallback) == ("L2", False)


def test_a_full_model_hints_a_short_retry(tmp_path: Path, policy_dir: Path, clock: FakeClock) -> None:
    models = policy_dir / "models.yaml"
    text = re.sub(r"max_in_flight: \d+(\n    breaker: reasoning)", r"max_in_flight: 1\1", models.read_text())
    models.write_text(text)
    routing = policy_dir / "routing.yaml"
    routing.write_text(routing.read_text().replace("degrade_to: [L3]         # a deep", "# a deep"))
    eng = PolicyEngine.from_path(policy_dir, clock=clock)
    held = [eng.decide("L4") for _ in range(3)]  # each L4 model now takes one call at a time
    with pytest.raises(NoModelAvailable) as info:
        eng.decide("L4")
    assert info.value.retry_at == pytest.approx(clock() + 0.05)

    def free_one(seconds: float) -> None:  # while call() waits, a call in flight finishes
        clock.advance(seconds)
        if held:
            eng.record(held.pop(0), OK)

    assert eng.call("L4", lambda model: model, sleep=free_one) == "gpt-5"


def test_only_a_full_model_hints_a_retry(policy_dir: Path, clock: FakeClock) -> None:
    eng = PolicyEngine.from_path(policy_dir, clock=clock)
    with pytest.raises(NoModelAvailable) as info:
        eng.decide("L2", min_context=10_000_000)  # no model is that large: nothing will recover
    assert info.value.retry_at is None


def test_transitions_seen_by_reads_are_delivered_at_once(eng: PolicyEngine, clock: FakeClock) -> None:
    trip(eng, clock, "gpt-4.1-mini")
    seen: list[Event] = []
    eng.subscribe(seen.append)
    clock.advance(31)
    eng.performance_report()  # reads the breaker: open -> half-open is due
    assert [type(e) for e in seen] == [CircuitHalfOpened]

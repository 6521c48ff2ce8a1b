"""What a reload keeps and what it changes (the engine side; the watcher is tested in test_reload)."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from engine import Decision, NoModelAvailable, Outcome, PolicyEngine
from engine.events import BudgetExhausted, CircuitOpened, Event, PolicyReloaded, ReloadFailed
from engine.testing import FakeClock

OK = Outcome(800.0, 1000, 200)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def eng(policy_dir: Path, clock: FakeClock) -> PolicyEngine:
    return PolicyEngine.from_path(policy_dir, clock=clock)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def remove_mistral(policy_dir: Path) -> None:
    """Take mistral-small-latest out of the set: its model entry, its L2 slot and its breaker override."""
    models = policy_dir / "models.yaml"
    text = models.read_text()
    models.write_text(text[: text.index("  mistral-small-latest:")] + text[text.index("  # --- L3"):])
    edit(policy_dir / "routing.yaml", ", mistral-small-latest]", "]")
    breakers = policy_dir / "breakers.yaml"
    breakers.write_text(breakers.read_text()[: breakers.read_text().index("overrides:")])


def test_valid_edit_takes_effect_and_reports(eng: PolicyEngine, policy_dir: Path) -> None:
    events: list[Event] = []
    eng.subscribe(events.append)
    before = eng.policy.revision
    edit(policy_dir / "breakers.yaml", "failure_rate: 0.5", "failure_rate: 0.25")
    assert eng.reload() is True
    assert eng.policy.models["gpt-4.1"].breaker.failure_rate == 25
    [event] = events
    assert isinstance(event, PolicyReloaded) and event.previous == before
    status = eng.reload_status()
    assert (status["revision"], status["successes"], status["failures"]) == (eng.policy.revision, 1, 0)


def test_unchanged_content_is_not_swapped(eng: PolicyEngine) -> None:
    events: list[Event] = []
    eng.subscribe(events.append)
    policy = eng.policy
    assert eng.reload() is False
    assert eng.policy is policy and events == []


def test_invalid_edit_never_takes_effect(eng: PolicyEngine, policy_dir: Path) -> None:
    events: list[Event] = []
    eng.subscribe(events.append)
    policy = eng.policy
    edit(policy_dir / "routing.yaml", "[gpt-5, claude-opus-4-1, o3]", "[gpt-5, claude-opus-4-1, o4]")
    assert eng.reload() is False
    assert eng.policy is policy
    [event] = events
    assert isinstance(event, ReloadFailed) and event.kept == policy.revision
    assert [p.code for p in event.problems] == ["unreachable-model", "unknown-model"]  # o3 left its tier
    assert re.search(r"routing\.yaml:\d+:\d+: unknown-model", eng.reload_status()["last_error"][1])
    assert eng.decide("L4").model == "gpt-5"  # the last good set still decides


def test_breaker_state_and_metrics_carry_over(eng: PolicyEngine, policy_dir: Path, clock: FakeClock) -> None:
    eng.force("gpt-4.1-mini", "open")
    for _ in range(5):
        eng.record(eng.decide("L2"), OK)
    edit(policy_dir / "report.yaml", "top_models: 10", "top_models: 12")
    assert eng.reload() is True
    assert eng.state("gpt-4.1-mini")["breaker"]["state"] == "forced_open"
    assert eng.state("gemini-2.5-flash")["metrics"]["calls"] == 5
    assert eng.decide("L2").model == "gemini-2.5-flash"


def test_changed_threshold_applies_from_the_next_call(eng: PolicyEngine, policy_dir: Path) -> None:
    for _ in range(10):  # 3 failures in 10 calls: 30%, under 50%
        for outcome in (OK, OK, OK):
            eng.record(eng.decide("L2", model="gpt-4.1-mini"), outcome)
    for _ in range(3):
        eng.record(eng.decide("L2", model="gpt-4.1-mini"), Outcome(10.0, error="timeout"))
    assert eng.state("gpt-4.1-mini")["breaker"]["state"] == "closed"
    edit(policy_dir / "breakers.yaml", "failure_rate: 0.5", "failure_rate: 0.05")
    eng.reload()
    assert eng.state("gpt-4.1-mini")["breaker"]["state"] == "closed"  # no transition on reload
    eng.record(eng.decide("L2", model="gpt-4.1-mini"), Outcome(10.0, error="timeout"))
    assert eng.state("gpt-4.1-mini")["breaker"]["state"] == "open"


def test_budget_usage_carries_over_and_a_lowered_limit_exhausts_at_once(
        eng: PolicyEngine, policy_dir: Path) -> None:
    events: list[Event] = []
    eng.subscribe(events.append)
    for _ in range(5):
        eng.record(eng.decide("L4"), Outcome(1000.0, 900, 100))  # 5,000 tokens on gpt-5
    edit(policy_dir / "budgets.yaml", "tokens: 8000000", "tokens: 4000")
    assert eng.reload() is True
    snap = eng.state("gpt-5")["budgets"][0]
    assert (snap["tokens_used"], snap["tokens_limit"]) == (5000, 4000)
    assert any(isinstance(e, BudgetExhausted) and e.budget == "gpt-5-daily" for e in events)
    assert eng.decide("L4").model == "claude-opus-4-1"


def test_removed_model_is_dropped_and_its_open_decision_still_records(
        eng: PolicyEngine, policy_dir: Path) -> None:
    held = eng.decide("L2", model="mistral-small-latest")
    remove_mistral(policy_dir)
    assert eng.reload() is True, eng.reload_status()
    assert "mistral-small-latest" not in eng.policy.models
    with pytest.raises(KeyError):
        eng.state("mistral-small-latest")
    eng.record(held, OK)  # accepted: its usage goes to the budgets that remain
    with pytest.raises(ValueError, match="already recorded"):
        eng.record(held, OK)


def remove_and_re_add_mistral(eng: PolicyEngine, policy_dir: Path) -> None:
    """Two reloads: mistral-small-latest leaves the set, then comes back as it was."""
    saved = {name: (policy_dir / name).read_text() for name in ("models.yaml", "routing.yaml", "breakers.yaml")}
    remove_mistral(policy_dir)
    assert eng.reload() is True
    for name, text in saved.items():
        (policy_dir / name).write_text(text)
    assert eng.reload() is True
    assert "mistral-small-latest" in eng.policy.models


def test_decisions_of_an_earlier_incarnation_never_touch_the_re_added_model(
        eng: PolicyEngine, policy_dir: Path) -> None:
    held = [eng.decide("L2", model="mistral-small-latest") for _ in range(50)]
    remove_and_re_add_mistral(eng, policy_dir)
    state = eng.state("mistral-small-latest")
    assert (state["in_flight"], state["max_in_flight"]) == (0, 64)  # a new model: nothing in flight
    for d in held:
        eng.record(d, Outcome(100.0, 10, 10, error="timeout"))
    state = eng.state("mistral-small-latest")
    assert (state["in_flight"], state["metrics"]["calls"], state["breaker"]["calls"]) == (0, 0, 0)
    assert state["breaker"]["state"] == "closed"
    now = [eng.decide("L2", model="mistral-small-latest") for _ in range(64)]
    with pytest.raises(NoModelAvailable, match=re.escape("at max_in_flight (64)")):
        eng.decide("L2", model="mistral-small-latest")  # max_in_flight still limits
    for d in now:
        eng.record(d, OK)
    assert eng.state("mistral-small-latest")["in_flight"] == 0


def test_probes_of_an_earlier_incarnation_never_decide_the_new_ones_episode(
        eng: PolicyEngine, policy_dir: Path, clock: FakeClock) -> None:
    def trip_and_probe() -> list[Decision]:
        for _ in range(10):
            eng.record(eng.decide("L2", model="mistral-small-latest"), Outcome(10.0, error="timeout"))
        clock.advance(31)
        probes = [eng.decide("L2", model="mistral-small-latest") for _ in range(3)]
        assert eng.state("mistral-small-latest")["breaker"]["probes_in_flight"] == 3
        return probes

    old = trip_and_probe()
    remove_and_re_add_mistral(eng, policy_dir)
    new = trip_and_probe()
    for d in old:  # successes, but of the removed incarnation's episode
        eng.record(d, OK)
    breaker = eng.state("mistral-small-latest")["breaker"]
    assert (breaker["state"], breaker["probes_in_flight"]) == ("half_open", 3)
    for d in new:
        eng.record(d, OK)
    assert eng.state("mistral-small-latest")["breaker"]["state"] == "closed"


def test_pending_reservation_settles_into_the_carried_ledger(eng: PolicyEngine, policy_dir: Path) -> None:
    held = eng.decide("L4", estimated_tokens=3000)
    edit(policy_dir / "report.yaml", "top_models: 10", "top_models: 9")
    eng.reload()
    assert eng.state("gpt-5")["budgets"][0]["tokens_reserved"] == 3000
    eng.record(held, Outcome(100.0, 1000, 500))
    snap = eng.state("gpt-5")["budgets"][0]
    assert (snap["tokens_used"], snap["tokens_reserved"]) == (1500, 0)


def test_engine_without_files_cannot_reload(clock: FakeClock) -> None:
    from engine import load_policies
    from tests.conftest import POLICIES

    eng = PolicyEngine(load_policies(POLICIES), clock=clock)
    with pytest.raises(RuntimeError, match="not loaded from files"):
        eng.reload()


def test_a_new_window_kind_starts_an_empty_window(eng: PolicyEngine, policy_dir: Path) -> None:
    for _ in range(4):
        eng.record(eng.decide("L2", model="gpt-4.1-mini"), Outcome(10.0, error="timeout"))
    assert eng.state("gpt-4.1-mini")["breaker"]["failures"] == 4
    edit(policy_dir / "breakers.yaml", "window: time ", "window: count")
    assert eng.reload() is True
    breaker = eng.state("gpt-4.1-mini")["breaker"]
    assert (breaker["state"], breaker["failures"], breaker["calls"]) == ("closed", 0, 0)
    assert eng.policy.models["gpt-4.1-mini"].breaker.window == "count"


def test_fewer_half_open_permits_apply_to_the_running_episode(eng: PolicyEngine, policy_dir: Path,
                                                              clock: FakeClock) -> None:
    for _ in range(10):
        eng.record(eng.decide("L2", model="gpt-4.1-mini"), Outcome(10.0, error="timeout"))
    clock.advance(31)
    first = eng.decide("L2", model="gpt-4.1-mini")  # a probe of the old episode (3 permits)
    edit(policy_dir / "breakers.yaml", "half_open_permits: 3 ", "half_open_permits: 1 ")
    assert eng.reload() is True
    probe = eng.decide("L2", model="gpt-4.1-mini")  # the restarted episode has one permit
    with pytest.raises(Exception, match="no model available"):
        eng.decide("L2", model="gpt-4.1-mini")
    eng.record(first, OK)  # a late result of the old episode does not decide the new one
    assert eng.state("gpt-4.1-mini")["breaker"]["state"] == "half_open"
    eng.record(probe, OK)
    assert eng.state("gpt-4.1-mini")["breaker"]["state"] == "closed"


def test_a_fresh_ledger_after_a_period_change_keeps_other_reservations(eng: PolicyEngine, policy_dir: Path) -> None:
    old = eng.decide("L4", estimated_tokens=5000)  # reserved in the daily ledger (ids start at 1)
    edit(policy_dir / "budgets.yaml", "    period: daily\n    tokens: 8000000",
         "    period: hourly\n    tokens: 8000000")
    assert eng.reload() is True
    new = eng.decide("L4", estimated_tokens=5000)  # reserved in the fresh hourly ledger, id 1 again
    assert new.model == "gpt-5"
    eng.record(old, Outcome(100.0, 3000, 0))  # settles into nothing of the new ledger's
    budget = eng.state("gpt-5")["budgets"][0]
    assert (budget["tokens_reserved"], budget["tokens_used"]) == (5000, 0)


def test_usage_of_a_removed_model_still_reaches_the_budgets_that_remain(eng: PolicyEngine, policy_dir: Path) -> None:
    held = eng.decide("L2", model="mistral-small-latest")
    remove_mistral(policy_dir)
    assert eng.reload() is True
    eng.record(held, Outcome(100.0, 3000, 1000))
    monthly = next(b for b in eng.state("gpt-5")["budgets"] if b["name"] == "everything-monthly")
    assert monthly["cost_used"] == pytest.approx((3000 * 0.10 + 1000 * 0.30) / 1e6)


def test_a_removed_models_usage_announces_what_it_exhausts_at_once(eng: PolicyEngine, policy_dir: Path) -> None:
    edit(policy_dir / "budgets.yaml", "cost_usd: 20000", "cost_usd: 0.0007")
    assert eng.reload() is True
    held = eng.decide("L2", model="mistral-small-latest")
    remove_mistral(policy_dir)
    assert eng.reload() is True
    events: list[Event] = []
    eng.subscribe(events.append)
    eng.record(held, Outcome(100.0, 3000, 1000))  # $0.0006 of $0.0007: past the 80 % warning
    assert [(type(e).__name__, getattr(e, "budget", None)) for e in events] == [
        ("BudgetWarning", "everything-monthly")]


def test_active_anomalies_of_a_removed_model_resolve(eng: PolicyEngine, policy_dir: Path, clock: FakeClock) -> None:
    events: list[Event] = []
    eng.subscribe(events.append)
    eng.force("mistral-small-latest", "metrics_only")
    for _ in range(450):
        eng.record(eng.decide("L2", model="mistral-small-latest"), Outcome(10.0, error="rate_limit"))
        clock.advance(0.1)
    assert [e.rule for e in events if type(e).__name__ == "AnomalyDetected"] == ["rate-limit-storm"]
    remove_mistral(policy_dir)
    assert eng.reload() is True
    resolved = [(e.rule, e.target) for e in events if type(e).__name__ == "AnomalyResolved"]
    assert ("rate-limit-storm", "mistral-small-latest") in resolved


def test_a_shorter_reservation_ttl_expires_carried_reservations(eng: PolicyEngine, policy_dir: Path,
                                                               clock: FakeClock) -> None:
    eng.decide("L4", estimated_tokens=800)  # never recorded
    edit(policy_dir / "budgets.yaml", "reservation_ttl_s: 300", "reservation_ttl_s: 60")
    assert eng.reload() is True
    clock.advance(30)
    eng.decide("L4", estimated_tokens=100)  # expires at +90 under the new TTL
    clock.advance(280)  # +310: the carried one (TTL 300) is gone, the new one too
    assert eng.state("gpt-5")["budgets"][0]["tokens_reserved"] == 0


def test_a_retry_whose_model_a_reload_removed_falls_back(eng: PolicyEngine, policy_dir: Path,
                                                         clock: FakeClock) -> None:
    class TooMany(Exception):
        status_code = 429

    calls: list[str] = []

    def client(model: str) -> str:
        calls.append(model)
        if model == "mistral-small-latest":
            raise TooMany("slow down")
        return model

    def sleep_and_reload(seconds: float) -> None:  # the reload lands during the backoff
        clock.advance(seconds)
        if "  mistral-small-latest:" in (policy_dir / "models.yaml").read_text():
            remove_mistral(policy_dir)
            assert eng.reload() is True

    for m in ("gpt-4.1-mini", "gemini-2.5-flash", "claude-haiku-4-5"):
        eng.force(m, "open")
    assert eng.call("L2", client, sleep=sleep_and_reload) == "claude-sonnet-4-5"
    assert calls == ["mistral-small-latest", "claude-sonnet-4-5"]


@pytest.mark.parametrize("target", ["gone.yaml", "budgets.yaml"])  # dangling, and a link to itself (a loop)
def test_a_file_replaced_by_a_broken_link_never_takes_effect(eng: PolicyEngine, policy_dir: Path,
                                                             target: str) -> None:
    """Skipped as if absent, the link used to take every budget away with it."""
    events: list[Event] = []
    eng.subscribe(events.append)
    policy = eng.policy
    budgets = {b.name for b in policy.budgets}
    assert "opus-daily" in budgets
    (policy_dir / "budgets.yaml").unlink()
    (policy_dir / "budgets.yaml").symlink_to(target)
    assert eng.reload() is False
    assert eng.policy is policy and eng.reload_status()["revision"] == policy.revision
    assert {b.name for b in eng.policy.budgets} == budgets
    assert "opus-daily" in {b["name"] for b in eng.state("claude-opus-4-1")["budgets"]}
    [event] = events
    assert isinstance(event, ReloadFailed) and [p.code for p in event.problems] == ["file-unreadable"]
    [line] = eng.reload_status()["last_error"]
    assert line.startswith(f"{policy_dir / 'budgets.yaml'}:1:1: file-unreadable: expected a readable policy file")


def test_a_rejected_storage_uri_never_shows_its_password(eng: PolicyEngine, policy_dir: Path) -> None:
    events: list[Event] = []
    eng.subscribe(events.append)
    (policy_dir / "storage.yaml").write_text("kind: storage\nversion: 1\nuri: rediss://admin:hunter2@cache:6380/0\n")
    assert eng.reload() is False
    [event] = events
    assert isinstance(event, ReloadFailed)
    status = eng.reload_status()
    for shown in (str(status), repr(status), str(event), repr(event), event.describe()):
        assert "hunter2" not in shown
    assert status["last_error"] == [f"{policy_dir / 'storage.yaml'}:3:6: invalid-format: expected a string matching "
                                    "^(memory|sqlite|redis|redis\\+cluster)://, got 'rediss://***@cache:6380/0'"]


# -- reloads called from listeners, and reloads racing a record ------------------------------------------


def test_a_listener_may_reload_the_engine_it_listens_to(eng: PolicyEngine, policy_dir: Path) -> None:
    nested: list[bool] = []

    def listener(event: Event) -> None:
        if isinstance(event, PolicyReloaded) and not nested:
            nested.append(eng.reload())  # e.g. re-check after an automated edit

    eng.subscribe(listener)
    edit(policy_dir / "monitoring.yaml", "kind: monitoring", "# edited\nkind: monitoring")
    worker = threading.Thread(target=eng.reload, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "reload() deadlocked in its own listener"
    assert nested == [False]  # the nested reload ran and found nothing new


def test_a_listener_reloading_on_another_threads_event_never_deadlocks(eng: PolicyEngine, policy_dir: Path) -> None:
    # The reloading thread delivers the events other threads queued meanwhile; a listener that reloads on one
    # of them must not find the reload lock still held by the thread delivering.
    in_listener, tripped = threading.Event(), threading.Event()
    reloads: list[bool] = []

    def listener(event: Event) -> None:
        if isinstance(event, PolicyReloaded) and not in_listener.is_set():
            in_listener.set()
            tripped.wait(10)  # a slow listener: the other thread's events queue behind it
        elif isinstance(event, CircuitOpened):
            reloads.append(eng.reload())

    eng.subscribe(listener)
    edit(policy_dir / "monitoring.yaml", "kind: monitoring", "# edited\nkind: monitoring")
    reloader = threading.Thread(target=eng.reload, daemon=True)
    reloader.start()
    assert in_listener.wait(10)

    def trip() -> None:
        while eng.state("gpt-4.1-mini")["breaker"]["state"] == "closed":
            eng.record(eng.decide("L2", model="gpt-4.1-mini"), Outcome(100.0, error="server_error"))

    tripper = threading.Thread(target=trip, daemon=True)
    tripper.start()
    tripper.join(10)
    assert not tripper.is_alive()
    tripped.set()
    reloader.join(10)
    assert not reloader.is_alive(), "the reloading thread deadlocked delivering another thread's event"
    assert reloads == [False]


def test_a_record_racing_a_reload_that_removes_its_error_class_is_refused_untouched(
        eng: PolicyEngine, policy_dir: Path) -> None:
    errors = policy_dir / "errors.yaml"
    text = errors.read_text()
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("  overloaded:"))
    end = next((i for i in range(start + 1, len(lines))  # the next class, or the next top-level key
                if lines[i].strip() and not lines[i].startswith("    ")), len(lines))
    without = "".join(lines[:start] + lines[end:])
    d = eng.decide("L2", model="gpt-4.1-mini", estimated_tokens=1000)
    before = eng.state("gpt-4.1-mini")

    class Racing(Outcome):  # checked against the classes in force, then a reload lands before record locks
        __slots__ = ()

        def problem(self, classes: object) -> str | None:
            found = Outcome.problem(self, classes)  # type: ignore[arg-type]
            if errors.read_text() != without:  # the first check only: then the reload lands
                errors.write_text(without)
                assert eng.reload()
            return found

    with pytest.raises(ValueError, match="overloaded"):
        eng.record(d, Racing(500.0, error="overloaded"))
    after = eng.state("gpt-4.1-mini")
    assert after["in_flight"] == before["in_flight"] == 1
    assert after["budgets"] == before["budgets"]  # the reservation is still held, nothing settled
    eng.record(d, Outcome(500.0, error="server_error"))  # the decision is still open and can be recorded
    assert eng.state("gpt-4.1-mini")["in_flight"] == 0

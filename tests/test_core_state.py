"""export_state / restore_state: what a restarted engine takes back from its store."""

from __future__ import annotations

import json

from engine import Outcome, PolicyEngine
from engine.testing import FakeClock
from tests.conftest import POLICIES


def test_round_trip_restores_budgets_and_breakers() -> None:
    clock = FakeClock()
    eng = PolicyEngine.from_path(POLICIES, clock=clock)
    for _ in range(10):
        eng.record(eng.decide("L2", model="gpt-4.1-mini"), Outcome(10.0, error="timeout"))
    eng.force("o3", "disabled")
    for _ in range(3):
        eng.record(eng.decide("L4"), Outcome(1000.0, 900, 100))
    held = eng.decide("L4", estimated_tokens=500)
    saved = json.loads(json.dumps(eng.export_state()))  # what a store would write
    assert saved["breakers"]["gpt-4.1-mini"]["state"] == "open"

    clock.advance(5)
    again = PolicyEngine.from_path(POLICIES, clock=clock)
    again.restore_state(saved)
    breaker = again.state("gpt-4.1-mini")["breaker"]
    assert breaker["state"] == "open" and breaker["open_until"] == saved["breakers"]["gpt-4.1-mini"]["open_until"]
    assert again.state("o3")["breaker"]["state"] == "disabled"
    budget = again.state("gpt-5")["budgets"][0]
    assert (budget["tokens_used"], budget["tokens_reserved"]) == (3000, 500)
    assert again.decide("L2").model == "gemini-2.5-flash"
    clock.advance(26)  # the restored breaker half-opens at its saved time
    assert again.decide("L2").model == "gpt-4.1-mini"
    assert held.owner is eng


def test_state_from_another_policy_shape_is_skipped(policy_dir: object) -> None:
    clock = FakeClock()
    eng = PolicyEngine.from_path(POLICIES, clock=clock)
    eng.record(eng.decide("L4"), Outcome(1000.0, 900, 100))
    saved = eng.export_state()
    saved["budgets"]["gpt-5-daily"]["period"] = "hourly"  # no longer fits
    saved["budgets"]["gone"] = {}
    saved["breakers"]["gone-model"] = {"state": "open"}
    fresh = PolicyEngine.from_path(POLICIES, clock=clock)
    fresh.restore_state(saved)  # logged and skipped, never raised
    budgets = {b["name"]: b["tokens_used"] for b in fresh.state("gpt-5")["budgets"]}
    assert budgets == {"gpt-5-daily": 0, "everything-monthly": 1000}


def test_a_storage_policy_picks_the_store(policy_dir: object, tmp_path: object) -> None:
    from pathlib import Path

    from engine.store.sqlite import SQLiteStore

    assert isinstance(policy_dir, Path) and isinstance(tmp_path, Path)
    db = tmp_path / "h.db"
    (policy_dir / "storage.yaml").write_text(f"kind: storage\nversion: 1\nuri: sqlite:///{db}\n")
    eng = PolicyEngine.from_path(policy_dir, clock=FakeClock())
    try:
        assert isinstance(eng.store, SQLiteStore)
        eng.record(eng.decide("L1"), Outcome(100.0, 10, 2))
    finally:
        eng.close()
    assert db.exists()
    explicit = PolicyEngine.from_path(policy_dir, clock=FakeClock(), store="memory://")
    assert explicit.store.uri == "memory://"  # the argument wins over the policy


def test_a_bad_storage_uri_is_a_located_problem(policy_dir: object) -> None:
    from pathlib import Path

    from engine import check

    assert isinstance(policy_dir, Path)
    (policy_dir / "storage.yaml").write_text("kind: storage\nversion: 1\nuri: postgres://db\n")
    _, problems = check(policy_dir)
    assert [(p.line, p.col, p.code) for p in problems] == [(3, 6, "invalid-format")]

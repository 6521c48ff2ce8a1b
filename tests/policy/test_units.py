"""One unit for rates: fractions from 0 to 1 in every kind, the old percent a located problem."""

from __future__ import annotations

import shutil
from pathlib import Path

from engine import Outcome, PolicyEngine
from engine.events import CircuitOpened, Event
from engine.policy.loader import check, load_policies
from engine.testing import FakeClock
from tests.conftest import POLICIES


def test_breaker_fractions_become_the_breakers_percent_thresholds() -> None:
    policy = load_policies(POLICIES)
    assert policy.models["gpt-4.1-mini"].breaker.failure_rate == 50.0  # failure_rate: 0.5
    assert policy.models["gpt-4.1-mini"].breaker.slow_call_rate == 80.0  # slow_call_rate: 0.8
    assert policy.models["mistral-small-latest"].breaker.failure_rate == 40.0  # 0.4 * 100 is 40.000000000000006


def test_a_breaker_at_0_4_trips_at_exactly_40_percent(tmp_path: Path) -> None:
    shutil.copytree(POLICIES, tmp_path, dirs_exist_ok=True)
    clock = FakeClock()
    eng = PolicyEngine.from_path(tmp_path, clock=clock)
    events: list[Event] = []
    eng.subscribe(events.append)
    for i in range(10):  # minimum_calls is 10: 4 failures of 10 is 40%
        d = eng.decide("L2", model="mistral-small-latest")
        eng.record(d, Outcome(100.0, error="server_error") if i < 4 else Outcome(100.0))
        clock.advance(0.1)
    assert [(e.model, e.reason, e.failure_rate) for e in events if isinstance(e, CircuitOpened)] == [
        ("mistral-small-latest", "failure_rate", 40.0)]


def test_the_old_percent_is_a_located_problem_saying_what_to_write(tmp_path: Path) -> None:
    shutil.copytree(POLICIES, tmp_path, dirs_exist_ok=True)
    breakers = tmp_path / "breakers.yaml"
    breakers.write_text(breakers.read_text().replace("failure_rate: 0.5 ", "failure_rate: 50  "))
    line = next(i for i, t in enumerate(breakers.read_text().splitlines(), 1) if "failure_rate: 50" in t)
    policy, problems = check(tmp_path)
    assert policy is None
    assert [p.format() for p in problems] == [
        f"{breakers}:{line}:17: rate-unit: failure_rate is a fraction from 0 to 1: write 0.5 for 50%, got 50"]


def test_shipped_schemas_and_policies_agree_on_fractions() -> None:
    text = (POLICIES / "breakers.yaml").read_text()
    assert "failure_rate: 0.5" in text and "slow_call_rate: 0.8" in text
    assert "percentage" not in (POLICIES.parent / "schemas" / "breakers.schema.json").read_text()

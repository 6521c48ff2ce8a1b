"""Events as JSON: to_dict/to_json with wall-clock UTC times beside the engine clock."""

from __future__ import annotations

import json

import pytest

from engine import NoModelAvailable, Outcome, PolicyEngine
from engine.events import BudgetExhausted, CircuitOpened, Event, FallbackTriggered, ReloadFailed, utc_iso
from engine.testing import FakeClock
from tests.conftest import POLICIES

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z, the FakeClock's default


def _trip(eng: PolicyEngine, clock: FakeClock, model: str) -> None:
    for _ in range(10):
        eng.record(eng.decide("L2", model=model), Outcome(100.0, error="server_error"))
        clock.advance(0.1)


def test_every_delivered_event_dumps_to_json_with_its_utc_time() -> None:
    clock = FakeClock()
    eng = PolicyEngine.from_path(POLICIES, clock=clock)
    events: list[Event] = []
    eng.subscribe(events.append)
    _trip(eng, clock, "gpt-4.1-mini")
    eng.decide("L2")
    opened = next(e for e in events if isinstance(e, CircuitOpened))
    data = json.loads(opened.to_json())
    assert data["event"] == "CircuitOpened" and data["model"] == "gpt-4.1-mini"
    assert data["at"] == opened.at and data["time"] == utc_iso(opened.at)  # a FakeClock reads epoch seconds
    assert data["time"].startswith("2026-01-01T00:00:0") and data["time"].endswith("Z")
    assert data["open_until_time"] == utc_iso(opened.open_until)
    assert isinstance(data["metrics"], dict)
    fell = json.loads(events[-1].to_json())
    assert (fell["event"], fell["from_model"], fell["to_model"]) == ("FallbackTriggered", "gpt-4.1-mini",
                                                                   "gemini-2.5-flash")


def test_a_monotonic_engine_stamps_wall_time_on_its_events() -> None:
    eng = PolicyEngine.from_path(POLICIES)  # time.monotonic: engine times are not epoch seconds
    events: list[Event] = []
    eng.subscribe(events.append)
    eng.force("gpt-4.1-mini", "open")
    eng.decide("L2")
    fell = next(e for e in events if isinstance(e, FallbackTriggered))
    assert fell.at < 1e9 < (fell.wall_time or 0)
    assert fell.to_dict()["time"][:4] >= "2026"


def test_an_event_built_by_hand_has_no_wall_time_but_still_dumps() -> None:
    e = CircuitOpened(12.5, "m", "forced", float("inf"))
    assert e.to_dict()["time"] is None and e.to_dict()["open_until"] is None  # inf is not JSON
    json.loads(e.to_json())
    budget = BudgetExhausted(START, "daily", 1.0, 10, 10, 0.0, None, START - 60, START + 3600)
    data = budget.to_dict()
    assert (data["time"], data["resets_at_time"]) == ("2026-01-01T00:00:00.000Z", "2026-01-01T01:00:00.000Z")


def test_reload_failed_dumps_its_problems_as_located_lines(tmp_path: pytest.TempPathFactory) -> None:
    import shutil
    from pathlib import Path

    d = Path(str(tmp_path)) / "p"
    shutil.copytree(POLICIES, d)
    eng = PolicyEngine.from_path(d, clock=FakeClock())
    events: list[Event] = []
    eng.subscribe(events.append)
    (d / "models.yaml").write_text((d / "models.yaml").read_text() + "\nbogus: [\n")
    eng.reload()
    failed = next(e for e in events if isinstance(e, ReloadFailed))
    data = json.loads(failed.to_json())
    assert data["problems"] and all(p.startswith(str(d / "models.yaml")) for p in data["problems"])


def test_reasons_and_no_model_available_show_wall_clock_times() -> None:
    eng = PolicyEngine.from_path(POLICIES)  # monotonic clock: a t= figure would mean nothing to people
    for _ in range(10):
        eng.record(eng.decide("L2", model="gpt-4.1-mini"), Outcome(100.0, error="server_error"))
    for m in eng.policy.models:
        if m != "gpt-4.1-mini":
            eng.force(m, "open")
    with pytest.raises(NoModelAvailable) as info:
        eng.decide("L2")
    reasons = dict(info.value.candidates)
    assert "t=" not in reasons["gpt-4.1-mini"] and reasons["gpt-4.1-mini"].startswith("breaker open until 20")
    assert info.value.retry_at is not None and info.value.retry_at_wall == pytest.approx(
        eng.wall_time(info.value.retry_at))
    assert "earliest recovery at 20" in str(info.value)


def test_reload_status_gives_utc_times() -> None:
    eng = PolicyEngine.from_path(POLICIES, clock=FakeClock())
    status = eng.reload_status()
    assert status["loaded_time"] == "2026-01-01T00:00:00.000Z" and status["last_error_time"] is None

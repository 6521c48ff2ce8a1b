"""Request-level availability: requests beside attempts in the engine, its history, report and status."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine import NoModelAvailable, Outcome, PolicyEngine, RequestRefused
from engine.events import Event
from engine.store.sqlite import SQLiteStore
from engine.testing import FakeClock
from tests.conftest import POLICIES, ROOT

SIMULATE = "import sys; from engine.cli.sim import main_simulate; sys.exit(main_simulate(sys.argv[1:]))"


class Unavailable(Exception):
    status_code = 503


def _engine(path: Path, clock: FakeClock) -> PolicyEngine:
    return PolicyEngine.from_path(POLICIES, clock=clock, store=SQLiteStore(f"sqlite:///{path}?flush_s=3600"))


def test_a_request_rescued_by_a_fallback_is_one_request_of_three_attempts(tmp_path: Path) -> None:
    clock = FakeClock()
    eng = _engine(tmp_path / "h.db", clock)

    def fn(model: str) -> dict[str, Any]:
        if model == "gpt-4.1-mini":
            raise Unavailable("down")
        return {"usage": {"prompt_tokens": 10, "completion_tokens": 5}}

    eng.call("L2", fn, sleep=lambda s: None)
    metrics = eng.performance_report()["tiers"]["L2"]["metrics"]
    assert (metrics["requests"], metrics["calls"], metrics["successes"]) == (1, 3, 1)  # a same-model retry first
    eng.close()
    with sqlite3.connect(tmp_path / "h.db") as conn:
        assert conn.execute("SELECT SUM(requests), SUM(calls), SUM(successes) FROM minutes").fetchone() == (1, 3, 1)


def test_a_refused_request_is_an_event_and_a_history_row(tmp_path: Path) -> None:
    clock = FakeClock()
    eng = _engine(tmp_path / "h.db", clock)
    events: list[Event] = []
    eng.subscribe(events.append)
    for m in eng.policy.models:
        eng.force(m, "open")
    with pytest.raises(NoModelAvailable):
        eng.decide("L1")
    refused = [e for e in events if isinstance(e, RequestRefused)]
    assert [(e.tier, len(e.candidates)) for e in refused] == [("L1", 10)]  # L1, then L2 and L3
    with pytest.raises(NoModelAvailable):  # a fallback decision after a failure is not a new request
        eng.decide("L1", exclude=("gpt-4.1-nano",), reason="timeout")
    assert len([e for e in events if isinstance(e, RequestRefused)]) == 1
    eng.close()
    with sqlite3.connect(tmp_path / "h.db") as conn:
        rows = conn.execute("SELECT kind, subject FROM events WHERE kind = 'RequestRefused'").fetchall()
    assert rows == [("RequestRefused", "L1")]


def test_a_call_that_waits_for_a_recovery_is_one_request(tmp_path: Path) -> None:
    clock = FakeClock()
    eng = PolicyEngine.from_path(POLICIES, clock=clock)
    events: list[Event] = []
    eng.subscribe(events.append)
    for m in eng.policy.models:
        if m != "gpt-4.1-nano":
            eng.force(m, "open")
    for _ in range(10):  # gpt-4.1-nano's breaker opens for 30 s; the call waits up to max_wait_s (2 s)
        eng.record(eng.decide("L1"), Outcome(100.0, error="server_error"))
    clock.advance(29.0)
    result = eng.call("L1", lambda m: {"m": m}, sleep=clock.advance)
    assert result == {"m": "gpt-4.1-nano"}
    assert len([e for e in events if isinstance(e, RequestRefused)]) == 1  # the first look found none
    tier = eng.performance_report()["tiers"]["L1"]["metrics"]
    assert (tier["requests"], tier["successes"]) == (10, 1)  # the ten manual decisions, then the call's none


def _report(store: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", "report", "--policies", str(POLICIES), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_the_report_headline_shows_request_availability_beside_attempts(tmp_path: Path) -> None:
    clock = FakeClock(1_767_340_800.0)  # 2026-01-02T08:00:00Z
    db = tmp_path / "h.db"
    eng = _engine(db, clock)
    eng.force("gpt-4.1-mini", "open")
    for _ in range(3):
        eng.record(eng.decide("L2"), Outcome(100.0, 10, 5))
    d = eng.decide("L1")
    eng.record(d, Outcome(100.0, error="timeout"))
    eng.record(eng.decide("L1", exclude=(d.model,), reason="timeout"), Outcome(100.0, 10, 5))
    for m in eng.policy.models:
        eng.force(m, "open")
    with pytest.raises(NoModelAvailable):
        eng.decide("L3")
    eng.close()
    result = _report(db, tmp_path, "--store", f"sqlite:///{db}", "--out", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    md = (tmp_path / "r" / "260102-DAILY-REPORT.md").read_text()  # no --date: the store's latest day
    assert "**5 requests, 80.00% served (5 attempts, 80.00% available)" in md
    assert "| Requests served | 80.00% of 5 requests (1 refused) |" in md


def test_report_and_status_without_a_store_find_the_history_simulate_wrote(tmp_path: Path) -> None:
    sim = subprocess.run([sys.executable, "-c", SIMULATE, "--start-hour", "23", "--hours", "1", "--scale", "0.02",
                          "--no-report"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert sim.returncode == 0, sim.stderr
    assert "    policy-engine status --policies" in sim.stdout
    requests = int(next(x for x in sim.stdout.splitlines() if x.startswith("  calls ")).split()[1].replace(",", ""))
    status = subprocess.run([sys.executable, "-m", "engine", "status", "--policies", str(POLICIES), "--format",
                             "json"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert status.returncode == 0, status.stderr
    assert "reading memory/simulate/default-seed1-260101.db" in status.stderr
    recorded = json.loads(status.stdout)["recorded"]
    assert recorded["requests"] == requests  # simulate's console and status count the same requests
    console = next(x for x in sim.stdout.splitlines() if x.startswith("  availability "))
    served = float(console.split()[1].rstrip("%"))
    assert recorded["request_availability"] * 100 == pytest.approx(served, abs=5e-4)
    report = _report(tmp_path, tmp_path, "--out", str(tmp_path / "r"))
    assert report.returncode == 0, report.stderr
    # the run ends at midnight, and calls answered just after it belong to 2026-01-01's report
    assert report.stdout.split()[0].endswith("260101-DAILY-REPORT.md")
    headline = (tmp_path / "r" / "260101-DAILY-REPORT.md").read_text().split("**")[1]
    assert f"{served:.2f}% served" in headline


def test_without_any_history_they_say_which_path_to_pass(tmp_path: Path) -> None:
    result = _report(tmp_path, tmp_path)
    assert result.returncode == 1
    assert "no history database under ./memory" in result.stderr and "--store sqlite:///" in result.stderr

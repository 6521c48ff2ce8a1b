"""The history store and the daily report.

* decide + record with the SQLite history on, beside memory-only, in the same run
  (per pair, and sustained over 200,000 pairs so the background writer's share
  of the GIL is in the figure too);
* the daily report of a day of 1,000,000 recorded calls: in process
  (read + build + render + write both formats) and as a whole
  ``policy-engine report`` process.

The day is written through ``SQLiteStore.record_call`` exactly as an engine
records: 694 calls a minute spread over every tier's candidates (90% on the
first, fallbacks on the others), log-normal latencies, a few errors, a breaker
episode an hour and one FallbackTriggered event per fallback.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from benchmarks.conftest import ROOT
from engine import CircuitClosed, CircuitOpened, FallbackTriggered, Outcome, PolicyEngine, load_policies
from engine.reporting.build import build_report
from engine.reporting.data import read_day
from engine.reporting.render import write
from engine.store.historydb import connect
from engine.store.sqlite import SQLiteStore

OK = Outcome(latency_ms=812.0, input_tokens=1200, output_tokens=310)
CALLS = 1_000_000
PAIRS = 200_000
DAY = datetime(2026, 1, 2, tzinfo=ZoneInfo("Europe/Berlin"))
POLICIES = ROOT / "policies"


# -- decide + record ---------------------------------------------------------------------------
@pytest.fixture
def sqlite_engine(tmp_path: Path) -> PolicyEngine:
    # flushing every 0.2 s (not the default 1 s) so the writer runs within pytest-benchmark's second
    eng = PolicyEngine.from_path(POLICIES, store=SQLiteStore(f"sqlite:///{tmp_path / 'h.db'}?flush_s=0.2"))
    yield eng  # type: ignore[misc]
    eng.close()


def test_decide_record_memory(benchmark: pytest.FixtureRequest) -> None:
    eng = PolicyEngine.from_path(POLICIES)
    benchmark(lambda: eng.record(eng.decide("L2"), OK))


def test_decide_record_sqlite(benchmark: pytest.FixtureRequest, sqlite_engine: PolicyEngine) -> None:
    eng = sqlite_engine
    benchmark(lambda: eng.record(eng.decide("L2"), OK))


def _sustained(eng: PolicyEngine) -> float:
    start = time.perf_counter()
    for _ in range(PAIRS):
        eng.record(eng.decide("L2"), OK)
    return (time.perf_counter() - start) / PAIRS * 1e6


def test_sustained_memory(benchmark: pytest.FixtureRequest) -> None:
    eng = PolicyEngine.from_path(POLICIES)
    us = benchmark.pedantic(lambda: _sustained(eng), rounds=5)
    benchmark.extra_info["us_per_pair"] = round(us, 3)


def test_sustained_sqlite(benchmark: pytest.FixtureRequest, sqlite_engine: PolicyEngine) -> None:
    us = benchmark.pedantic(lambda: _sustained(sqlite_engine), rounds=5)
    benchmark.extra_info["us_per_pair"] = round(us, 3)
    assert sqlite_engine.store.flushes >= 5  # type: ignore[attr-defined]  # the writer's work is in the figure


# -- the report of a busy day ------------------------------------------------------------------
def _write_day(path: Path) -> None:
    policy = load_policies(POLICIES)
    rng = random.Random(1)  # noqa: S311
    store = SQLiteStore(f"sqlite:///{path}")
    start = DAY.timestamp()
    per_minute = math.ceil(CALLS / 1440)
    tiers = list(policy.tier_order)
    classes = ("timeout", "rate_limit", "server_error", "bad_request")
    done = 0
    for minute in range(1440):
        t0 = start + minute * 60
        if minute % 60 == 7:
            model = policy.tiers[tiers[minute // 60 % 4]].candidates[0]
            store.append_event(CircuitOpened(t0, model, "failure_rate", t0 + 30, 60.0, 0.0))
            store.append_event(CircuitClosed(t0 + 45, model, "probes_succeeded"))
        for i in range(min(per_minute, CALLS - done)):
            tier = tiers[i % 4]
            cands = policy.tiers[tier].candidates
            r = rng.random()
            pick = 0 if r < 0.9 else 1 if r < 0.97 else len(cands) - 1
            model = cands[pick]
            spec = policy.models[model]
            error = classes[int(r * 1000) % 4] if rng.random() < 0.02 else None
            latency = rng.lognormvariate(6.5 + pick * 0.3 + tiers.index(tier) * 0.6, 0.5)
            tin, tout = rng.randint(200, 4000), rng.randint(50, 1200)
            store.record_call(t0 + i * 0.08, tier, model, latency, error, error is not None and error != "bad_request",
                              latency > spec.breaker.slow_call_ms, tin, tout if error is None else 0,
                              spec.price.cost(tin, tout if error is None else 0), pick > 0)
            if pick:
                store.append_event(FallbackTriggered(t0 + i * 0.08, tier, cands[0], model, tier, "timeout"))
        done += per_minute
    store.close()


@pytest.fixture(scope="module")
def busy_day(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("busy") / "history.db"
    _write_day(path)
    with connect(path, create=False) as conn:
        assert conn.execute("SELECT sum(calls) FROM minutes").fetchone() == (CALLS,)
    return path


def test_report_1m_calls_in_process(benchmark: pytest.FixtureRequest, busy_day: Path, tmp_path: Path) -> None:
    policy = load_policies(POLICIES)

    def report() -> list[Path]:
        with connect(busy_day, create=False) as conn:
            hist = read_day(conn, DAY.date(), policy.report.timezone, policy.budgets)
        return write(build_report(hist, policy), tmp_path, ("markdown", "html"))

    paths = benchmark.pedantic(report, rounds=5)
    assert [p.name for p in paths] == ["260102-DAILY-REPORT.md", "260102-DAILY-REPORT.html"]
    assert "**1,000,000 calls" in paths[0].read_text()


def test_report_1m_calls_as_a_process(benchmark: pytest.FixtureRequest, busy_day: Path, tmp_path: Path) -> None:
    code = "import sys; from engine.cli.report import main_report; sys.exit(main_report(sys.argv[1:]))"
    args = [sys.executable, "-c", code, "--policies", str(POLICIES), "--store", f"sqlite:///{busy_day}",
            "--date", DAY.date().isoformat(), "--out", str(tmp_path)]
    result = benchmark.pedantic(lambda: subprocess.run(args, capture_output=True, text=True, check=False),
                                rounds=3)
    assert result.returncode == 0, result.stderr

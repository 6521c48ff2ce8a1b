"""``policy-engine test``: the shipped tests as a whole process, and one scripted simulated day."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks.conftest import ROOT
from engine.policytest.suite import run

DAY = textwrap.dedent("""\
    kind: policy_test
    version: 1
    policies: {policies}
    tests:
      - name: a day of traffic through every tier with an L2 outage
        start: 2026-03-02T00:00
        timezone: Europe/Berlin
        given:
          - {{at: 0s, tier: L1, repeat: 2880, every: 30s, tokens: 800}}
          - {{at: 1s, tier: L2, repeat: 21600, every: 4s, tokens: 1500,
              outcomes: {{gpt-4.1-mini: server_error}}}}
          - {{at: 2s, tier: L3, repeat: 1440, every: 60s, tokens: 3000}}
          - {{at: 3s, tier: L4, repeat: 720, every: 120s, tokens: 6000}}
        expect:
          - {{at: "23:59", emitted: [{{event: CircuitOpened, model: gpt-4.1-mini}}]}}
          - {{at: "23:59", recommended: [heavy-fallback], target: L2}}
    """)


def test_shipped_policy_tests_process(benchmark: pytest.FixtureRequest) -> None:
    """`policy-engine test policies/` as a whole process (interpreter start included)."""
    cmd = [sys.executable, "-m", "engine", "test", "policies/"]

    def once() -> None:
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)

    benchmark.pedantic(once, rounds=7, warmup_rounds=1)


def test_one_scripted_day(benchmark: pytest.FixtureRequest, tmp_path: Path) -> None:
    """One test of a simulated day: 26,640 calls, anomaly rules every 10 s, the day's recommendations."""
    case = tmp_path / "day_test.yaml"
    case.write_text(DAY.format(policies=ROOT / "policies"))

    def once() -> None:
        out = run([str(case)])
        assert out.results[0].passed and out.results[0].calls >= 20_000, out.results[0].failures

    benchmark.pedantic(once, rounds=5, warmup_rounds=1)

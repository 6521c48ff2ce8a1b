"""``policy-engine explain`` as a whole process, beside ``validate-policies`` in the same run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks.conftest import ROOT


def test_explain_process(benchmark: pytest.FixtureRequest) -> None:
    """`policy-engine explain L2 --tokens 1800` (interpreter start included)."""
    cmd = [sys.executable, "-m", "engine", "explain", "L2", "--tokens", "1800", "--at", "2026-03-02T09:00"]

    def once() -> None:
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)

    benchmark.pedantic(once, rounds=15, warmup_rounds=2)


def test_validate_process_peer(benchmark: pytest.FixtureRequest) -> None:
    """Peer: `policy-engine validate policies/` in the same run."""
    cmd = [sys.executable, "-m", "engine", "validate", "policies"]

    def once() -> None:
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)

    benchmark.pedantic(once, rounds=15, warmup_rounds=2)

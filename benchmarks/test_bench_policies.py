"""Policy loading and rule expressions, each beside its peer in the same run."""

from __future__ import annotations

import subprocess
import sys

import pytest
import simpleeval

from benchmarks.conftest import ROOT
from engine import load_policies
from engine.policy.expressions import FUNCTIONS, compile_expression

NAMES = {"success_rate": "number", "p95_ms": "number", "error_rate": "number", "calls": "number"}
SOURCE = "calls >= 20 and (error_rate > 0.2 or success_rate * 100 - p95_ms / 1000 < 90)"
VALUES = {"success_rate": 0.97, "p95_ms": 2400.0, "error_rate": 0.03, "calls": 120}


def test_validate_policies_process(benchmark: pytest.FixtureRequest) -> None:
    """`validate-policies policies/` as a whole process (interpreter start included)."""
    cmd = [sys.executable, "-c", "from engine.cli.main import validate_entry; validate_entry()", "policies"]

    def once() -> None:
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)

    benchmark.pedantic(once, rounds=15, warmup_rounds=2)


def test_python_startup_process(benchmark: pytest.FixtureRequest) -> None:
    """Peer: a bare interpreter start, the floor under any CLI."""
    benchmark.pedantic(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True),
                       rounds=15, warmup_rounds=2)


def test_load_policies_in_process(benchmark: pytest.FixtureRequest) -> None:
    benchmark(load_policies, ROOT / "policies")


def test_compiled_expression(benchmark: pytest.FixtureRequest) -> None:
    expr = compile_expression(SOURCE, NAMES)
    assert expr(VALUES) is False
    benchmark(expr, VALUES)


def test_simpleeval_cached_parse(benchmark: pytest.FixtureRequest) -> None:
    """Peer: simpleeval walking a tree parsed once."""
    evaluator = simpleeval.SimpleEval(names=VALUES, functions=dict(FUNCTIONS))
    parsed = evaluator.parse(SOURCE)
    assert evaluator.eval(SOURCE, parsed) is False
    benchmark(evaluator.eval, SOURCE, parsed)


def test_simpleeval_reparse(benchmark: pytest.FixtureRequest) -> None:
    """Peer: simpleeval parsing on every evaluation."""
    assert simpleeval.simple_eval(SOURCE, names=VALUES, functions=dict(FUNCTIONS)) is False
    benchmark(simpleeval.simple_eval, SOURCE, names=VALUES, functions=dict(FUNCTIONS))

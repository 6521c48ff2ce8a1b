"""decide + record against pybreaker, in the same run.

pybreaker's peer is one breaker-protected call of a no-op function: the
least a breaker library does per call. The engine's pair picks among four
L2 candidates (breaker, in-flight limit and budgets checked for each one it
considers), records latency, tokens and cost into rolling metrics and settles
budgets.
"""

from __future__ import annotations

import threading
import time

import pybreaker
import pytest

from benchmarks.conftest import ROOT
from engine import Outcome, PolicyEngine

OK = Outcome(latency_ms=812.0, input_tokens=1200, output_tokens=310)
THREADS, PER_THREAD = 8, 25_000


def _engine() -> PolicyEngine:
    return PolicyEngine.from_path(ROOT / "policies")


def test_engine_decide_record_l2(benchmark: pytest.FixtureRequest) -> None:
    eng = _engine()

    def pair() -> None:
        eng.record(eng.decide("L2"), OK)

    benchmark(pair)


def test_engine_decide_record_l4_with_budgets(benchmark: pytest.FixtureRequest) -> None:
    """L4's first model spends from three budgets; reservations on. Small real
    counts keep the budgets from running out (and the chain from changing)
    during the measurement."""
    eng = _engine()
    small = Outcome(latency_ms=812.0, input_tokens=12, output_tokens=3)

    def pair() -> None:
        d = eng.decide("L4", estimated_tokens=15)
        eng.record(d, small)
        assert d.model == "gpt-5"

    benchmark(pair)


def _exhaust(eng: PolicyEngine, *budgets: str) -> None:
    """Spend ``budgets`` to the end of their period (as a burst of real calls would)."""
    for name in budgets:
        model = {"gpt-5-daily": "gpt-5", "opus-daily": "claude-opus-4-1", "o3-hourly": "o3"}[name]
        eng.record(eng.decide("L4", model=model), Outcome(latency_ms=812.0, input_tokens=9_000_000,
                                                          output_tokens=0))
        assert eng.state(model)["budgets"][0]["exhausted"]


SMALL = Outcome(latency_ms=812.0, input_tokens=12, output_tokens=3)


def test_engine_l4_estimate_300_healthy(benchmark: pytest.FixtureRequest) -> None:
    """The peer of the degraded rows: L4's first candidate, an estimate of 300 reserved."""
    eng = _engine()

    def pair() -> None:
        eng.record(eng.decide("L4", estimated_tokens=300), SMALL)

    benchmark(pair)
    assert eng.decide("L4").model == "gpt-5"


def test_engine_l4_estimate_300_two_exhausted(benchmark: pytest.FixtureRequest) -> None:
    """Degraded: gpt-5 and claude-opus-4-1 have spent their daily budgets; o3 serves, two reasons."""
    eng = _engine()
    _exhaust(eng, "gpt-5-daily", "opus-daily")

    def pair() -> None:
        eng.record(eng.decide("L4", estimated_tokens=300), SMALL)

    benchmark(pair)
    assert eng.decide("L4").model == "o3"


def test_engine_l4_estimate_300_degraded_to_l3(benchmark: pytest.FixtureRequest) -> None:
    """Degraded across tiers: all three L4 models exhausted; L3's first candidate serves."""
    eng = _engine()
    _exhaust(eng, "gpt-5-daily", "opus-daily", "o3-hourly")

    def pair() -> None:
        eng.record(eng.decide("L4", estimated_tokens=300), SMALL)

    benchmark(pair)
    assert eng.decide("L4").tier == "L3"


def test_engine_l2_first_breaker_open(benchmark: pytest.FixtureRequest) -> None:
    """Degraded by an outage: L2's first candidate forced open; the second serves."""
    eng = _engine()
    eng.force("gpt-4.1-mini", "open")

    def pair() -> None:
        eng.record(eng.decide("L2"), OK)

    benchmark(pair)


def test_pybreaker_call(benchmark: pytest.FixtureRequest) -> None:
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)

    def work() -> int:
        return 1

    benchmark(breaker.call, work)


def _threaded(pair: object) -> float:
    barrier = threading.Barrier(THREADS + 1)

    def run() -> None:
        barrier.wait()
        for _ in range(PER_THREAD):
            pair()  # type: ignore[operator]

    pool = [threading.Thread(target=run) for _ in range(THREADS)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    return THREADS * PER_THREAD / (time.perf_counter() - start)


def test_engine_8_threads(benchmark: pytest.FixtureRequest) -> None:
    eng = _engine()
    rate = benchmark.pedantic(lambda: _threaded(lambda: eng.record(eng.decide("L2"), OK)), rounds=3)
    benchmark.extra_info["pairs_per_s"] = round(rate)


def test_pybreaker_8_threads(benchmark: pytest.FixtureRequest) -> None:
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    rate = benchmark.pedantic(lambda: _threaded(lambda: breaker.call(int)), rounds=3)
    benchmark.extra_info["calls_per_s"] = round(rate)


def test_litellm_router_mocked_call_in_its_own_interpreter(benchmark: pytest.FixtureRequest) -> None:
    """Peer named by the design: LiteLLM's Router routing a mocked call across four deployments.

    Runs in the interpreter named by LITELLM_PYTHON (see benchmarks/litellm_router.py),
    in this same benchmark session, and reports its own median and p99.
    """
    import json
    import os
    import subprocess

    python = os.environ.get("LITELLM_PYTHON")
    if not python:
        pytest.skip("set LITELLM_PYTHON to an interpreter with litellm installed")
    script = str(ROOT / "benchmarks" / "litellm_router.py")
    result: dict[str, float] = {}

    def run() -> None:
        out = subprocess.run([python, script, "500"], capture_output=True, text=True, check=True, timeout=600)
        result.update(json.loads(out.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(result)

"""decide + record against a Redis server on loopback, beside the in-memory engine.

Each Redis row runs the default policy set on a ``redis-server`` that the
fixture starts on a free loopback port (skipped when it or the ``redis``
package is missing) and reports, besides pytest-benchmark's table, the p99
and the round trips and commands per pair (from the store's counters, which
``tests/store/test_redis.py`` checks against the server's ``INFO commandstats``)::

    python -m pytest benchmarks/test_bench_redis.py --benchmark-only -s

LiteLLM's Router is the peer the issue names (about 4 ms per mocked routed
call on this machine); its row runs only where ``litellm`` is installed.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import engine.store.base
from benchmarks.conftest import ROOT
from engine import Outcome, PolicyEngine
from tests.redis_server import RedisServer, redis_server  # noqa: F401 - a fixture

OK = Outcome(latency_ms=812.0, input_tokens=12, output_tokens=3)
ROUNDS, WARMUP = 5_000, 500


@pytest.fixture
def redis_engine(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[PolicyEngine]:  # noqa: F811
    monkeypatch.setitem(engine.store.base.BACKENDS, "redis", "engine.store.redis.store:RedisStore")
    eng = PolicyEngine.from_path(ROOT / "policies", store=redis_server.uri())
    yield eng
    eng.close()


LEASE = "  lease: {size: 0.01, ttl_s: 30, sync_ms: 100}\n"


def leased_policies(directory: Path) -> Path:
    """The shipped policy set with every budget leased (``defaults.lease``)."""
    shutil.copytree(ROOT / "policies", directory, ignore=shutil.ignore_patterns("tests"))
    budgets = directory / "budgets.yaml"
    text = budgets.read_text()
    assert "defaults:\n" in text
    budgets.write_text(text.replace("defaults:\n", "defaults:\n" + LEASE, 1))
    return directory


@pytest.fixture
def leased_engine(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                  tmp_path: Path) -> Iterator[PolicyEngine]:
    monkeypatch.setitem(engine.store.base.BACKENDS, "redis", "engine.store.redis.store:RedisStore")
    eng = PolicyEngine.from_path(leased_policies(tmp_path / "policies"), store=redis_server.uri())
    yield eng
    eng.close()


def _measure(benchmark: Any, eng: PolicyEngine, pair: Callable[[], None], label: str) -> None:
    stats = getattr(eng.store, "stats", None)
    before = stats() if stats else {"round_trips": 0, "commands": 0}
    benchmark.pedantic(pair, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP)
    after = stats() if stats else {"round_trips": 0, "commands": 0}
    data = sorted(benchmark.stats.stats.data)
    pairs = ROUNDS + WARMUP
    info = {"median_us": 1e6 * data[len(data) // 2], "p99_us": 1e6 * data[int(len(data) * 0.99) - 1],
            "round_trips_per_pair": (after["round_trips"] - before["round_trips"]) / pairs,
            "commands_per_pair": (after["commands"] - before["commands"]) / pairs}
    benchmark.extra_info.update(info)
    print(f"\n{label}: median {info['median_us']:.1f} us, p99 {info['p99_us']:.1f} us, "
          f"{info['round_trips_per_pair']:.3f} round trips and {info['commands_per_pair']:.2f} commands per pair")


def test_memory_decide_record_l2(benchmark: Any) -> None:
    eng = PolicyEngine.from_path(ROOT / "policies")
    _measure(benchmark, eng, lambda: eng.record(eng.decide("L2"), OK), "memory L2")


def test_memory_decide_record_l4_reserved(benchmark: Any) -> None:
    eng = PolicyEngine.from_path(ROOT / "policies")

    def pair() -> None:
        d = eng.decide("L4", estimated_tokens=15)
        eng.record(d, OK)
        assert d.model == "gpt-5"

    _measure(benchmark, eng, pair, "memory L4 reserved")


def test_redis_decide_record_l2(benchmark: Any, redis_engine: PolicyEngine) -> None:
    """gpt-4.1-mini: its breaker and one budget (the global monthly one), no reservation."""
    eng = redis_engine

    def pair() -> None:
        eng.record(eng.decide("L2"), OK)

    _measure(benchmark, eng, pair, "redis L2")


def test_redis_decide_record_l4_reserved(benchmark: Any, redis_engine: PolicyEngine) -> None:
    """gpt-5: two budgets, each reserved at decide and settled at record."""
    eng = redis_engine

    def pair() -> None:
        d = eng.decide("L4", estimated_tokens=15)
        eng.record(d, OK)
        assert d.model == "gpt-5"

    _measure(benchmark, eng, pair, "redis L4 reserved")


def test_redis_leased_decide_record_l2(benchmark: Any, leased_engine: PolicyEngine) -> None:
    """As test_redis_decide_record_l2 with the budget leased: decided against the slice in the process."""
    eng = leased_engine
    _measure(benchmark, eng, lambda: eng.record(eng.decide("L2"), OK), "redis leased L2")


def test_redis_leased_decide_record_l4_reserved(benchmark: Any, leased_engine: PolicyEngine) -> None:
    """As test_redis_decide_record_l4_reserved with both budgets leased."""
    eng = leased_engine

    def pair() -> None:
        d = eng.decide("L4", estimated_tokens=15)
        eng.record(d, OK)
        assert d.model == "gpt-5"

    _measure(benchmark, eng, pair, "redis leased L4 reserved")


# LiteLLM's Router, the peer the issue names, runs in its own interpreter: see
# test_bench_engine.py::test_litellm_router_mocked_call_in_its_own_interpreter.

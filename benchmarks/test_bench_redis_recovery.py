"""Recovery of the Redis store after outages of 5, 30 and 120 s of traffic.

Each case runs the default policy set (``decide("L4", estimated_tokens=15)``
+ ``record``: gpt-5, two budgets reserved and settled) against a
``redis-server`` of its own on loopback, with the store's default options
(``timeout_ms`` 100, ``retry_ms`` 500 doubling up to ``max_retry_ms`` 2000).
The outage is the server frozen with SIGSTOP: first the outage's traffic,
700 calls a second (the rate of the incident: 17,753 settlements
unconfirmed after 25 s) on an engine clock advancing through 5, 30 or
120 s, then 4 s of real time at 100 calls a second so that the retries have
backed off to their longest, as after a long outage. Then SIGCONT, and
decisions go on at about 500 a second until the store is back on the server.

Reported per case (``-s`` prints them, and they are in the benchmark's
``extra_info``; pytest-benchmark's own time is the whole case, outage
included): settlements made during the outage, the backlog (commands a
replay would send at SIGCONT), seconds from SIGCONT until decisions are back
on the server, the slowest and 99th-percentile ``decide()`` meanwhile, and
whether the server's usage then equals what was recorded::

    python -m pytest benchmarks/test_bench_redis_recovery.py --benchmark-only -s
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

import engine.store.base
from benchmarks.conftest import ROOT
from engine import Outcome, PolicyEngine
from engine.testing import FakeClock
from tests.redis_server import RedisServer, fresh_redis  # noqa: F401 - a fixture

OK = Outcome(latency_ms=812.0, input_tokens=12, output_tokens=3)
RATE = 700  # calls per second of outage
T0 = 1_767_225_600.0


@pytest.mark.parametrize("outage_s", [5, 30, 120])
def test_redis_recovery_after_an_outage(benchmark: Any, fresh_redis: RedisServer,  # noqa: F811
                                        monkeypatch: pytest.MonkeyPatch, outage_s: int) -> None:
    monkeypatch.setitem(engine.store.base.BACKENDS, "redis", "engine.store.redis.store:RedisStore")
    clock = FakeClock(T0)
    eng = PolicyEngine.from_path(ROOT / "policies", clock=clock, store=fresh_redis.uri())
    store: Any = eng.store
    calls = 0

    def pair(advance: float) -> float:
        nonlocal calls
        start = time.perf_counter()
        d = eng.decide("L4", estimated_tokens=15)
        took = time.perf_counter() - start
        eng.record(d, OK)
        assert d.model == "gpt-5"
        calls += 1
        clock.advance(advance)
        return took

    out: dict[str, Any] = {}

    def run() -> None:
        for _ in range(100):
            pair(0.01)
        assert fresh_redis.proc is not None
        fresh_redis.proc.send_signal(signal.SIGSTOP)
        try:
            before = calls
            for _ in range(outage_s * RATE):
                pair(1.0 / RATE)
            until = time.monotonic() + 4.0
            while time.monotonic() < until:
                pair(0.01)
                time.sleep(0.01)
            out["settlements"] = 2 * (calls - before)  # two budgets per call
            out["backlog"] = store.stats()["backlog"]
        finally:
            fresh_redis.proc.send_signal(signal.SIGCONT)
        start, took = time.monotonic(), []
        while store.link.disrupted and time.monotonic() - start < 30.0:
            took.append(pair(0.002))
            time.sleep(0.002)
        out["recovery_s"] = time.monotonic() - start
        took.append(pair(0.002))
        store.link.flush()
        took.sort()
        out["max_decide_ms"] = 1000 * took[-1]
        out["p99_decide_ms"] = 1000 * took[int(len(took) * 0.99) - 1] if len(took) > 1 else 1000 * took[0]
        out["decides"] = len(took)

    try:
        benchmark.pedantic(run, rounds=1, iterations=1)
        used = eng.state("gpt-5")["budgets"]
        out["exact"] = any(b["name"] == "gpt-5-daily" and b["tokens_used"] == 15 * calls for b in used)
        out["recovered"] = not store.link.disrupted
    finally:
        eng.close()
    benchmark.extra_info.update(out)
    print(f"\noutage {outage_s} s: {out['settlements']:,} settlements, backlog {out['backlog']} commands; "
          f"back on the server after {out['recovery_s']:.2f} s; slowest decide {out['max_decide_ms']:.2f} ms "
          f"(p99 {out['p99_decide_ms']:.2f} ms, {out['decides']} decides); usage exact: {out['exact']}")
    assert out["recovered"] and out["exact"]

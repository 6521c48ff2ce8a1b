"""Memory of the live engine stays flat however many calls are recorded.

10,000,000 decide+record pairs across all tiers with a fake clock advancing
5 ms per call (about 14 hours of traffic), resident memory read from
/proc/self/statm after every million. Run alone: it takes about a minute.
"""

from __future__ import annotations

import gc
import os

import pytest

from benchmarks.conftest import ROOT
from engine import NoModelAvailable, Outcome, PolicyEngine
from engine.testing import FakeClock

TOTAL = int(os.environ.get("MEMORY_BENCH_CALLS", "10000000"))
STEP = 1_000_000
TIERS = ("L1", "L2", "L3", "L4")
OUTCOMES = (Outcome(420.0, 900, 120), Outcome(1800.0, 2400, 600), Outcome(30000.0, error="timeout"))


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_memory_flat_after_10m_calls(benchmark: pytest.FixtureRequest) -> None:
    clock = FakeClock()
    eng = PolicyEngine.from_path(ROOT / "policies", clock=clock)
    samples: list[float] = []
    refused = [0]

    def run() -> None:
        done = 0
        while done < TOTAL:
            for i in range(STEP):
                clock.advance(0.005)
                try:
                    d = eng.decide(TIERS[i & 3])
                except NoModelAvailable:  # budgets run dry under this much traffic: that is real too
                    refused[0] += 1
                    continue
                eng.record(d, OUTCOMES[(i % 97 == 0 and 2) or i & 1])
            done += STEP
            gc.collect()
            samples.append(rss_mib())

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info["rss_mib_per_million"] = [round(s, 1) for s in samples]
    benchmark.extra_info["peak_rss_mib"] = round(max(samples), 1)
    benchmark.extra_info["refused_no_model"] = refused[0]
    # flat: after the first million, growth stays within 2 MiB
    assert max(samples) - samples[0] < 2.0, samples

"""``policy-engine simulate`` of a full day and ``replay`` of the Azure conv trace, as whole processes.

Targets (issue 6): a full simulated day (>= 400k calls through the engine)
in <= 60 s, with availability >= 99.9% and tokens per successful call >= 10%
below naive retry on the default scenario; replay of the Azure conv trace
(19k calls) through two policy sets in <= 5 s. The monitor variant runs the
same day with anomaly rules evaluated hourly instead of every 10 s, to show
what the monitoring schedule costs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.conftest import ROOT

SIMULATE = "import sys; from engine.cli.sim import main_simulate; sys.exit(main_simulate(sys.argv[1:]))"
REPLAY = "import sys; from engine.cli.sim import main_replay; sys.exit(main_replay(sys.argv[1:]))"
AZURE_CONV = ROOT.parent / "shared" / "traces" / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv"


def _policies(tmp_path: Path, name: str, file: str, old: str, new: str) -> Path:
    dest = tmp_path / name
    shutil.copytree(ROOT / "policies", dest)
    text = (dest / file).read_text(encoding="utf-8")
    assert old in text
    (dest / file).write_text(text.replace(old, new), encoding="utf-8")
    return dest


def _simulate(cwd: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", SIMULATE, "--json", "-q", *args],
                          capture_output=True, text=True, timeout=300, cwd=cwd, check=False)
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def _record(benchmark: Any, d: dict[str, Any]) -> None:
    e, naive = d["engine"], d["naive_retry"]
    benchmark.extra_info.update(
        calls=d["requests"], availability_engine=e["availability"],
        availability_no_fallback=d["no_fallback"]["availability"], availability_naive=naive["availability"],
        tokens_per_success_engine=round(e["tokens_per_success"], 1),
        tokens_per_success_naive=round(naive["tokens_per_success"], 1),
        token_saving=round(d["targets"]["token_saving_vs_naive"]["value"], 4), report=d["report"])


def test_simulate_full_day(benchmark: Any, tmp_path: Path) -> None:
    """The default scenario, whole day, SQLite history and daily report, from a fresh interpreter."""
    d = benchmark.pedantic(lambda: _simulate(tmp_path), rounds=2, iterations=1)
    _record(benchmark, d)
    assert d["requests"] >= 400_000
    assert d["targets"]["availability"]["met"] and d["targets"]["token_saving_vs_naive"]["met"]


@pytest.mark.parametrize("every", ["10s", "3600s"])
def test_simulate_full_day_in_memory(benchmark: Any, tmp_path: Path, every: str) -> None:
    """The same day without history and report, anomaly rules every 10 s (the default) or every hour:
    the difference is what the monitoring schedule costs."""
    policies = _policies(tmp_path, "p", "monitoring.yaml", "evaluate_every_s: 10",
                         f"evaluate_every_s: {every[:-1]}")
    d = benchmark.pedantic(lambda: _simulate(tmp_path, "--policies", str(policies), "--history", "none",
                                             "--no-report"), rounds=1, iterations=1)
    _record(benchmark, d)
    assert d["requests"] >= 400_000


@pytest.mark.skipif(not AZURE_CONV.is_file(), reason="../shared/traces is not here")
def test_replay_azure_conv_compare(benchmark: Any, tmp_path: Path) -> None:
    """19,366 calls through the default policies and a variant with a small gpt-5 budget."""
    small = _policies(tmp_path, "small-gpt5", "budgets.yaml", "tokens: 8000000", "tokens: 300000")

    def once() -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-c", REPLAY, str(AZURE_CONV), "--policies",
                               str(ROOT / "policies"), "--compare", str(small), "--json", "-q"],
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        data: dict[str, Any] = json.loads(done.stdout)
        return data

    d = benchmark.pedantic(once, rounds=3, iterations=1)
    a, b = d["runs"]
    benchmark.extra_info.update(calls=d["calls"], fallbacks=[a["fallback_decisions"], b["fallback_decisions"]])
    assert d["calls"] == 19_366 and a["calls"] == b["calls"] == 19_366

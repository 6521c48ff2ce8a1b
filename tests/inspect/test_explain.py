"""``policy-engine explain``: the chain, each verdict and its rule, the answer, what would change it."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from engine import Outcome, PolicyEngine
from engine.inspect.explain import explain
from engine.policy.loader import load_policies
from engine.testing import FakeClock
from tests.conftest import POLICIES, ROOT

AT = datetime(2026, 3, 2, 9, 0, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", "explain", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def history(tmp_path: Path) -> str:
    """A history store whose saved state has gpt-4.1-mini's breaker open and o3's hourly budget spent."""
    uri = f"sqlite:///{tmp_path / 'h.db'}"
    clock = FakeClock(AT)
    eng = PolicyEngine.from_path(POLICIES, clock=clock, store=uri)
    for _ in range(10):
        eng.record(eng.decide("L2", model="gpt-4.1-mini"), Outcome(100.0, error="server_error"))
        clock.advance(1)
    eng.record(eng.decide("L4", model="o3"), Outcome(100.0, input_tokens=1_500_000))
    eng.close()
    return uri


def test_a_healthy_tier_picks_its_first_candidate_and_names_the_next() -> None:
    out = explain(load_policies(POLICIES), "L2", at=AT, tokens=1800)
    assert out.chosen == "gpt-4.1-mini" and not out.is_fallback
    assert [c.model for c in out.chain] == ["gpt-4.1-mini", "gemini-2.5-flash", "claude-haiku-4-5",
                                            "mistral-small-latest", "claude-sonnet-4-5", "gpt-4.1",
                                            "gemini-2.5-pro"]  # then L2's degrade_to: L3
    assert [c.tier for c in out.chain][3:5] == ["L2", "L3"]
    assert all(c.available for c in out.chain)
    assert out.changes == ["if gpt-4.1-mini became unavailable (its breaker opens or it spends $20,000.00 more on "
                           "everything-monthly), the answer would be gemini-2.5-flash"]


def test_saved_state_gives_the_verdicts_their_rules(history: str) -> None:
    doc = run("L2", "--at", "2026-03-02T09:00:20", "--store", history, "--json")
    assert doc.returncode == 0, doc.stderr
    out = json.loads(doc.stdout)
    first = out["chain"][0]
    assert (first["model"], first["available"], first["breaker"]) == ("gpt-4.1-mini", False, "open")
    assert first["verdict"] == "breaker open until 2026-03-02 09:00:39"
    assert first["reopens_at"] == "2026-03-02 09:00:39"
    assert out["chosen"] == "gemini-2.5-flash" and out["is_fallback"] is True
    assert out["changes"][0] == "gpt-4.1-mini would be tried again from 2026-03-02 09:00:39, when its breaker " \
                                "half-opens"
    l4 = json.loads(run("L4", "--at", "2026-03-02T09:00:20", "--store", history, "--json").stdout)
    o3 = next(c for c in l4["chain"] if c["model"] == "o3")
    hourly = next(b for b in o3["budgets"] if b["name"] == "o3-hourly")
    assert (hourly["exhausted"], hourly["tokens_left"], hourly["resets_at"]) == (True, 0, "2026-03-02 10:00:00")
    assert o3["verdict"] == "budget o3-hourly exhausted"


def test_text_output_marks_the_answer_and_scores(history: str) -> None:
    out = run("L3", "--at", "2026-03-02T09:00:20", "--store", history, "--tokens", "300000")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "tier L3 at 2026-03-02 09:00:20 (Europe/Berlin), a call of 300,000 tokens: score order"
    assert lines[1].startswith("-> 1. ")
    assert "score 100.00" in lines[2]
    assert "note: a call of 300,000 tokens exceeds its context window of 200,000" in out.stdout
    assert "what would change the answer:" in lines


def test_usage_errors() -> None:
    bad = run("L9")  # no name is close enough for a suggestion
    assert bad.returncode == 2 and "unknown tier 'L9'; expected one of L1, L2, L3, L4" in \
        bad.stderr
    assert run("L2", "--at", "tomorrow").returncode == 2
    assert run("L2", "--store", "redis://localhost/0").returncode == 2


def test_a_missing_history_store_exits_1(tmp_path: Path) -> None:
    out = run("L2", "--store", f"sqlite:///{tmp_path / 'none.db'}")
    assert out.returncode == 1 and f"no history database at {tmp_path / 'none.db'}" in out.stderr

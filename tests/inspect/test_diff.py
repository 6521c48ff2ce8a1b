"""``policy-engine diff``: changes in meaning, never in text; the effect with --replay."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.inspect.diff import diff
from engine.policy.loader import load_policies
from tests.conftest import POLICIES, ROOT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", "diff", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def new(tmp_path: Path) -> Path:
    target = tmp_path / "new"
    shutil.copytree(POLICIES, target, ignore=shutil.ignore_patterns("tests"))
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_reformatting_and_moving_entries_change_nothing(new: Path) -> None:
    models = new / "models.yaml"
    text = models.read_text()
    head, o3 = text.split("  o3:\n")
    models.write_text(head.replace("# ---", "#"))  # comments dropped, o3 moved to a file of its own
    (new / "more-models.yaml").write_text("kind: models\nversion: 1\nmodels:\n  o3:\n" + o3)
    edit(new / "breakers.yaml", "  window_s: 60", "  window_s: 60.0")
    assert diff(load_policies(POLICIES), load_policies(new)) == []
    out = run(str(POLICIES), str(new))
    assert out.returncode == 0 and "mean the same" in out.stdout


def test_a_profile_change_shows_on_every_model_it_changes_and_orders_are_explained(new: Path) -> None:
    edit(new / "breakers.yaml", "    slow_call_ms: 180000", "    slow_call_ms: 240000")
    edit(new / "breakers.yaml", "    failure_rate: 0.4", "    failure_rate: 0.3")
    edit(new / "routing.yaml", "[gpt-4.1-mini, gemini-2.5-flash, claude-haiku-4-5, mistral-small-latest]",
         "[gemini-2.5-flash, gpt-4.1-mini, claude-haiku-4-5]")
    edit(new / "budgets.yaml", "    tokens: 8000000", "    tokens: 6000000")
    edit(new / "errors.yaml", "auth:           {breaker: failure, fallback: any, retry: false}",
         "auth:           {breaker: failure, fallback: none, retry: false}")
    edit(new / "monitoring.yaml", "error_rate > 0.2\"", "error_rate > 0.25\"")
    got = [c.text() for c in diff(load_policies(POLICIES), load_policies(new))]
    assert got == [
        "~ breakers.claude-opus-4-1.slow_call_ms: 180000 -> 240000",
        "~ breakers.gpt-5.slow_call_ms: 180000 -> 240000",
        "~ breakers.mistral-small-latest.failure_rate: 0.4 -> 0.3",
        "~ breakers.o3.slow_call_ms: 180000 -> 240000",
        "~ tiers.L2.candidates: [gpt-4.1-mini, gemini-2.5-flash, claude-haiku-4-5, mistral-small-latest] -> "
        "[gemini-2.5-flash, gpt-4.1-mini, claude-haiku-4-5] (removed mistral-small-latest; moved gemini-2.5-flash "
        "2 -> 1, gpt-4.1-mini 1 -> 2; first choice gpt-4.1-mini -> gemini-2.5-flash)",
        "~ budgets.gpt-5-daily.tokens: 8000000 -> 6000000",
        "~ errors.auth.fallback: 'any' -> 'none'",
        "~ anomalies.error-spike.when: 'calls >= 20 and error_rate > 0.2' -> 'calls >= 20 and error_rate > 0.25'",
    ]


def test_added_and_removed_entries_and_json(new: Path) -> None:
    edit(new / "budgets.yaml", "  o3-hourly:\n    applies_to: {model: o3}\n    period: hourly\n    tokens: 1500000\n",
         "")
    edit(new / "recommendations.yaml", "rules:\n", "rules:\n  always:\n    scope: global\n    when: \"calls > 0\"\n"
         "    severity: info\n    message: \"{calls} calls\"\n")
    out = run(str(POLICIES), str(new), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [(c["kind"], c["section"], c["entry"]) for c in doc["changes"]] == [
        ("removed", "budgets", "o3-hourly"), ("added", "recommendations", "always")]
    text = run(str(POLICIES), str(new)).stdout
    assert "  - budgets.o3-hourly: {scope: 'model', target: 'o3', period: 'hourly', tokens: 1500000" in text


def test_replay_of_a_trace_shows_the_effect_side_by_side(new: Path, tmp_path: Path) -> None:
    edit(new / "routing.yaml", "[gpt-4.1-mini, gemini-2.5-flash, claude-haiku-4-5, mistral-small-latest]",
         "[mistral-small-latest, gpt-4.1-mini, gemini-2.5-flash, claude-haiku-4-5]")
    trace = tmp_path / "trace.csv"
    trace.write_text("timestamp,tier,input_tokens,output_tokens\n" + "".join(
        f"2026-03-02T09:{m:02d}:00+01:00,L2,1000,200\n" for m in range(30)))
    out = run(str(POLICIES), str(new), "--replay", str(trace), "--json")
    assert out.returncode == 0, out.stderr
    runs = json.loads(out.stdout)["replay"]["runs"]
    assert [r["label"] for r in runs] == ["policies", "new"]
    assert [r["calls"] for r in runs] == [30, 30]
    assert runs[1]["cost_per_success_usd"] < runs[0]["cost_per_success_usd"]  # mistral is the cheapest model
    text = run(str(POLICIES), str(new), "--replay", str(trace)).stdout
    assert "effect on " in text and "cost per successful call" in text and "availability" in text


def test_usage_and_invalid_sets(new: Path, tmp_path: Path) -> None:
    assert run(str(POLICIES), str(tmp_path / "nope")).returncode == 2
    (new / "routing.yaml").write_text("kind: routing\nversion: 1\ntiers: {}\n")
    bad = run(str(POLICIES), str(new))
    assert bad.returncode == 1 and "too-few-items" in bad.stderr


def test_replay_without_a_trace_simulates_the_shipped_workload_through_both(new: Path) -> None:
    edit(new / "routing.yaml", "[gpt-4.1-nano, gemini-2.5-flash-lite, gpt-4o-mini]",
         "[gpt-4o-mini, gpt-4.1-nano, gemini-2.5-flash-lite]")
    out = run(str(POLICIES), str(new), "--replay", "--hours", "1", "--json")
    assert out.returncode == 0, out.stderr
    runs = json.loads(out.stdout)["replay"]["runs"]
    assert runs[0]["calls"] == runs[1]["calls"] > 1000  # the same arrivals through both sets
    served = [r["served_by"].get("gpt-4o-mini", 0) for r in runs]
    assert served[1] > 10 * max(served[0], 1)  # L1's first choice is now gpt-4o-mini
    assert runs[1]["cost_per_success_usd"] > runs[0]["cost_per_success_usd"]  # and it costs more than nano

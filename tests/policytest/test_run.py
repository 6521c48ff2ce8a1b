"""Policy tests run in process: each kind of step and expectation, passing and failing."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from engine.policytest.suite import Outcome, run
from tests.conftest import POLICIES


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target, ignore=shutil.ignore_patterns("tests"))
    (target / "tests").mkdir()
    return target


def write(policies: Path, body: str, name: str = "case_test.yaml") -> Path:
    path = policies / "tests" / name
    path.write_text("kind: policy_test\nversion: 1\ntests:\n" + textwrap.indent(textwrap.dedent(body), "  "))
    return path


def failures(out: Outcome) -> list[tuple[int, str, str]]:
    assert not out.problems, [p.format() for p in out.problems]
    return [(f.line, f.expected, f.actual) for r in out.results for f in r.failures]


def test_a_true_expectation_passes_and_a_false_one_fails_at_its_line(policies: Path) -> None:
    write(policies, """\
        - name: breaker
          start: 2026-03-02T09:00
          timezone: Europe/Berlin
          given:
            - {at: 0s, model: gpt-4.1-mini, outcome: server_error, repeat: 10}
          expect:
            - {at: 10s, breaker: gpt-4.1-mini, state: open}
            - {at: 10s, breaker: gpt-4.1-mini, state: closed}
            - {at: 10s, decide: L2, model: gpt-4.1-mini}
        """)
    out = run([str(policies / "tests")])
    assert failures(out) == [
        (11, "closed", "open"),
        (12, "model gpt-4.1-mini",
         "model gemini-2.5-flash (skipped: gpt-4.1-mini: breaker open until 2026-03-02T08:00:39.000Z)"),
    ]
    events = out.results[0].failures[0].events
    assert events[-1].startswith("09:00:09 CircuitOpened(model=gpt-4.1-mini, reason=failure_rate, open_until=09:00:39")


def test_is_fallback_and_reason_and_no_model(policies: Path) -> None:
    write(policies, """\
        - name: all open
          given:
            - {at: 0s, force: claude-sonnet-4-5, state: open}
            - {at: 0s, force: gpt-4.1, state: open}
            - {at: 0s, force: gemini-2.5-pro, state: open}
          expect:
            - {at: 1s, decide: L3, model: null}
            - {at: 1s, decide: L3, model: gpt-4.1}
            - {at: 1s, decide: L2, is_fallback: true}
            - {at: 1s, decide: L2, reason: "nothing like this"}
        """)
    got = failures(run([str(policies / "tests")]))
    assert [line for line, _, _ in got] == [11, 12, 13]
    assert got[0][2].startswith("no model available: claude-sonnet-4-5: breaker forced_open")
    assert got[1] == (12, "is_fallback True", "is_fallback False (gpt-4.1-mini)")
    assert got[2] == (13, "a skip reason containing 'nothing like this'", "reasons: none")


def test_budget_event_and_not_emitted_expectations(policies: Path) -> None:
    write(policies, """\
        - name: o3
          start: 2026-03-02T10:00
          timezone: Europe/Berlin
          given:
            - {at: 0s, model: o3, tokens: 1400000}
          expect:
            - {at: 1s, budget: o3-hourly, used_at_least: 0.9, warned: true, exhausted: false}
            - {at: 1s, budget: o3-hourly, used_below: 0.5}
            - {at: 1s, emitted: [{event: BudgetExhausted, budget: o3-hourly}]}
            - {at: 1s, not_emitted: [{event: BudgetWarning, budget: o3-hourly}]}
        """)
    got = failures(run([str(policies / "tests")]))
    assert [(line, exp) for line, exp, _ in got] == [
        (11, "used < 0.5"), (12, "BudgetExhausted(budget=o3-hourly) emitted"),
        (13, "no BudgetWarning(budget=o3-hourly)")]
    assert got[2][2].startswith("emitted: 10:00:00 BudgetWarning(budget=o3-hourly, used_fraction=0.9333")


def test_anomaly_and_recommendation_expectations_can_fail(policies: Path) -> None:
    write(policies, """\
        - name: quiet
          start: 2026-03-02T09:00
          timezone: Europe/Berlin
          given:
            - {at: 0s, tier: L2, repeat: 120}
          expect:
            - {at: 3m, anomaly: error-spike, active: true}
            - {at: 3m, recommended: [heavy-fallback]}
            - {at: 3m, not_recommended: [heavy-fallback]}
        """)
    got = failures(run([str(policies / "tests")]))
    assert got == [(10, "active", "not active"), (11, "heavy-fallback recommended", "recommended: none")]


def test_reload_trace_clock_times_and_run_filter(policies: Path) -> None:
    other = policies.parent / "other"
    shutil.copytree(policies, other, ignore=shutil.ignore_patterns("tests"))
    routing = other / "routing.yaml"
    routing.write_text(routing.read_text().replace(
        "[gpt-4.1-mini, gemini-2.5-flash, claude-haiku-4-5, mistral-small-latest]",
        "[mistral-small-latest, gpt-4.1-mini, gemini-2.5-flash, claude-haiku-4-5]"))
    write(policies, """\
        - name: reload
          start: 2026-03-02T09:00
          given:
            - {at: "09:30", reload: ../../other}
          expect:
            - {at: "09:29", decide: L2, model: gpt-4.1-mini}
            - {at: "09:30", decide: L2, model: mistral-small-latest}
            - {at: "09:30", emitted: [{event: PolicyReloaded}]}
        - name: trace
          given:
            - at: 1m
              trace:
                - "0s L2 server_error 800 1000"
                - "1s L2 server_error"
                - "2s L2 ok"
          expect:
            - {at: 2m, emitted: [{event: CircuitOpened}]}
        """)
    out = run([str(policies / "tests")])
    got = failures(out)
    assert [r.case.name for r in out.results] == ["reload", "trace"]
    assert got == [(20, "CircuitOpened() emitted", "not emitted")]  # 2 failures of 3 calls: below minimum_calls
    assert out.results[1].calls == 3
    only = run([str(policies / "tests")], pattern="::rel")
    assert [r.case.name for r in only.results] == ["reload"] and only.selected == 1


def test_a_step_the_set_cannot_run_is_a_located_failure(policies: Path) -> None:
    write(policies, """\
        - name: typo
          given:
            - {at: 0s, model: gpt-5.1, outcome: ok}
          expect:
            - {at: 1s, breaker: gpt-5, state: closed}
        """)
    got = failures(run([str(policies / "tests")]))
    assert got == [(6, "a step the policy set can run", "line 6: unknown model 'gpt-5.1'")]


def test_invalid_test_files_are_located_problems(policies: Path) -> None:
    write(policies, """\
        - name: bad
          given:
            - {at: 0s, modle: gpt-5}
          expect:
            - {at: soon, breaker: gpt-5, state: open}
        """)
    out = run([str(policies / "tests")])
    assert [(Path(p.file).name, p.line, p.col, p.code) for p in out.problems] == [
        ("case_test.yaml", 6, 9, "missing-key")]
    assert "expected one of model, tier, reload, force, trace in this given entry (did you mean 'model'?)" in \
        out.problems[0].message
    write(policies, """\
        - name: bad
          expect:
            - {at: soon, breaker: gpt-5, state: opened}
        """)
    out = run([str(policies / "tests")])
    assert {(p.line, p.code) for p in out.problems} >= {(6, "invalid-value")}
    assert out.results == []


def test_coverage_counts_what_the_tests_exercised(policies: Path) -> None:
    write(policies, """\
        - name: one breaker
          given:
            - {at: 0s, model: o3, outcome: timeout, repeat: 5}
          expect:
            - {at: 10s, breaker: o3, state: open}
        """)
    cov = run([str(policies / "tests")]).coverage
    assert cov.hit["breakers"] == {"o3"} and len(cov.total["breakers"]) == 13
    assert cov.hit["candidates"] == {"L4/o3"}
    assert cov.hit["budgets"] == set() and cov.percent("breakers") == pytest.approx(100 / 13)

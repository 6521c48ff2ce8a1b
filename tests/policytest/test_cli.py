"""``policy-engine test`` as a process: the shipped tests, output formats, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from tests.conftest import POLICIES, ROOT


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", "test", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_the_shipped_policy_tests_pass_and_cover_the_whole_default_set() -> None:
    out = run("policies/", "--min-coverage", "100")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 failed" in out.stdout
    assert "coverage 100%:" in out.stdout


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target, ignore=shutil.ignore_patterns("tests"))
    (target / "tests").mkdir()
    (target / "tests" / "mixed_test.yaml").write_text(
        "kind: policy_test\nversion: 1\ntests:\n"
        "  - name: passes\n"
        "    given: [{at: 0s, model: o3, outcome: timeout, repeat: 5}]\n"
        "    expect: [{at: 10s, breaker: o3, state: open}]\n"
        "  - name: fails\n"
        "    expect:\n"
        "      - {at: 10s, breaker: o3, state: open}\n")
    return target


def test_a_failure_prints_file_line_expected_and_actual_and_exits_3(suite: Path) -> None:
    out = run(str(suite))
    assert out.returncode == 3
    test_file = suite / "tests" / "mixed_test.yaml"
    assert f"FAIL {test_file}::fails\n  {test_file}:9: breaker o3 at 2026-01-01 00:00:10\n" \
           "    expected: open\n    actual:   closed\n" in out.stdout
    assert out.stdout.rstrip().endswith("1 passed, 1 failed of 2 selected")


def test_run_selects_tests_and_a_pattern_matching_none_is_a_usage_error(suite: Path) -> None:
    assert run(str(suite), "--run", "::passes$").returncode == 0
    none = run(str(suite), "--run", "nothing-like-this")
    assert none.returncode == 2 and "no test matches --run 'nothing-like-this'" in none.stderr
    bad = run(str(suite), "--run", "(")
    assert bad.returncode == 2 and "--run: not a regular expression" in bad.stderr


def test_json_and_junit_output(suite: Path, tmp_path: Path) -> None:
    doc = json.loads(run(str(suite), "--format", "json").stdout)
    assert (doc["passed"], doc["failed"]) == (1, 1)
    failed = next(t for t in doc["tests"] if not t["passed"])
    assert failed["failures"][0] == {"line": 9, "what": "breaker o3 at 2026-01-01 00:00:10", "expected": "open",
                                     "actual": "closed", "events": []}
    assert doc["coverage"]["breakers"]["exercised"] == ["o3"]
    xml_file = tmp_path / "junit.xml"
    out = run(str(suite), "--format", "junit", "-o", str(xml_file))
    assert out.returncode == 3
    root = ET.parse(xml_file).getroot()  # noqa: S314 - our own output
    suite_el = root.find("testsuite")
    assert suite_el is not None and suite_el.get("tests") == "2" and suite_el.get("failures") == "1"
    failure = root.find(".//testcase[@name='fails']/failure")
    assert failure is not None and failure.get("message") == \
        "breaker o3 at 2026-01-01 00:00:10: expected open, got closed"


def test_coverage_below_the_minimum_exits_4(suite: Path) -> None:
    out = run(str(suite), "--run", "passes", "--min-coverage", "50")
    assert out.returncode == 4
    assert "coverage 4.8% is below --min-coverage 50%" in out.stderr  # 2 of 42: o3's breaker, L4/o3


def test_an_invalid_test_file_exits_1_with_located_problems(suite: Path) -> None:
    bad = suite / "tests" / "bad_test.yaml"
    bad.write_text("kind: policy_test\nversion: 1\ntests:\n  - name: x\n    expect:\n"
                   "      - {at: 1s, breaker: o3, state: opened}\n")
    out = run(str(bad))
    assert out.returncode == 1
    assert out.stderr.splitlines()[0].startswith(f"{bad}:6:38: invalid-value: expected one of 'closed', 'open'")
    assert "no test ran" in out.stderr


def test_an_invalid_policy_set_exits_1(suite: Path) -> None:
    (suite / "routing.yaml").write_text("kind: routing\nversion: 1\ntiers: {}\n")
    out = run(str(suite))
    assert out.returncode == 1
    assert f"{suite / 'routing.yaml'}:3:8: too-few-items" in out.stderr


def test_junit_to_a_file_still_prints_the_summary(suite: Path, tmp_path: Path) -> None:
    out = run(str(suite), "--format", "junit", "-o", str(tmp_path / "j.xml"))
    assert out.stdout.rstrip().endswith("1 passed, 1 failed of 2 selected")
    assert (tmp_path / "j.xml").read_text().startswith("<?xml")

"""Severities: every code is an error or a warning; warnings leave a set loadable."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine import PolicyEngine
from engine.errors import PolicyError
from engine.policy.loader import check, load_policies
from engine.policy.problems import CODES, SEVERITIES, WARNINGS, Problem
from engine.testing import FakeClock
from tests.conftest import POLICIES

DOCS = Path(__file__).parents[2] / "docs" / "codes.md"


def test_every_code_has_a_severity_and_docs_list_it() -> None:
    assert set(SEVERITIES) == set(CODES)
    assert WARNINGS <= set(CODES)
    text = DOCS.read_text()
    for code, severity in SEVERITIES.items():
        assert f"| `{code}` | {severity} |" in text, code


def test_problem_format_marks_a_warning() -> None:
    w = Problem("m.yaml", 3, 4, "unreachable-model", "model 'x' is not a candidate")
    e = Problem("m.yaml", 3, 4, "unknown-model", "unknown model 'x'")
    assert w.format() == "m.yaml:3:4: unreachable-model: model 'x' is not a candidate (warning)"
    assert e.format() == "m.yaml:3:4: unknown-model: unknown model 'x'"
    assert w.to_dict()["severity"] == "warning" and e.to_dict()["severity"] == "error"


@pytest.fixture
def orphaned(tmp_path: Path) -> Path:
    """The default set with o3 in no tier, and a breaker profile no model uses."""
    shutil.copytree(POLICIES, tmp_path, dirs_exist_ok=True)
    routing = tmp_path / "routing.yaml"
    routing.write_text(routing.read_text().replace("[gpt-5, claude-opus-4-1, o3]", "[gpt-5, claude-opus-4-1]"))
    breakers = tmp_path / "breakers.yaml"
    breakers.write_text(breakers.read_text().replace("profiles:\n", "profiles:\n  spare:\n    minimum_calls: 3\n"))
    return tmp_path


def test_warnings_alone_load_and_are_on_the_set(orphaned: Path) -> None:
    policy, problems = check(orphaned)
    assert policy is not None
    assert [(p.code, p.severity) for p in problems] == [("unused-profile", "warning"),
                                                         ("unreachable-model", "warning")]
    assert list(load_policies(orphaned).warnings) == problems
    eng = PolicyEngine.from_path(orphaned, clock=FakeClock())  # no PolicyError
    assert eng.decide("L4").model == "gpt-5"


def test_an_error_still_raises_with_the_warnings(orphaned: Path) -> None:
    (orphaned / "extra.yaml").write_text("kind: routing\nversion: 1\ntiers:\n  L9: {candidates: [nope]}\n")
    with pytest.raises(PolicyError) as exc:
        load_policies(orphaned)
    assert {p.code for p in exc.value.problems} >= {"unknown-model", "unreachable-model"}


def test_a_reload_with_only_warnings_takes_effect(tmp_path: Path) -> None:
    shutil.copytree(POLICIES, tmp_path, dirs_exist_ok=True)
    eng = PolicyEngine.from_path(tmp_path, clock=FakeClock())
    routing = tmp_path / "routing.yaml"
    routing.write_text(routing.read_text().replace("[gpt-5, claude-opus-4-1, o3]", "[o3, gpt-5]"))
    assert eng.reload() is True
    assert eng.decide("L4").model == "o3"
    assert [p.code for p in eng.policy.warnings] == ["unreachable-model"]  # claude-opus-4-1

"""The real CLI, run as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import POLICIES, ROOT


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def run_validate(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    code = "from engine.cli.main import validate_entry; validate_entry()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_valid_default_set() -> None:
    out = run_validate(str(POLICIES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "8 files, 13 models, 4 tiers: valid" in out.stdout


def test_default_path_is_policies_in_cwd() -> None:
    out = run_validate()
    assert out.returncode == 0
    assert out.stdout.startswith("policies: ")


def test_invalid_set_lists_every_problem(policy_dir: Path) -> None:
    (policy_dir / "report.yaml").write_text("kind: report\nversion: 1\ntop_models: 0\ncolour: red\n")
    (policy_dir / "extra.yaml").write_text("kind: modles\nversion: 1\n")
    out = run("validate", str(policy_dir))
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    extra, report = policy_dir / "extra.yaml", policy_dir / "report.yaml"
    assert lines == [
        f"{extra}:1:7: unknown-kind: expected one of breakers, budgets, errors, models, monitoring, "
        "recommendations, report, routing, storage, got a string 'modles' (did you mean 'models'?)",
        f"{report}:3:13: out-of-range: expected a number >= 1, got 0",
        f"{report}:4:1: unknown-key: unknown key 'colour'; expected one of: formats, kind, output_dir, "
        "templates_dir, timezone, top_models, version",
    ]
    assert out.stderr.strip() == "3 problems found"


def test_json_format(policy_dir: Path) -> None:
    ok = json.loads(run("validate", "--format", "json", str(policy_dir)).stdout)
    assert ok["valid"] is True and ok["problems"] == [] and len(ok["revision"]) == 64
    (policy_dir / "routing.yaml").write_text(
        (policy_dir / "routing.yaml").read_text().replace("degrade_to: [L3]         # a deep", "degrade_to: [L4]  # a"))
    out = run("validate", "--format", "json", str(policy_dir))
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["valid"] is False
    assert [(p["code"], p["path"]) for p in report["problems"]] == [("fallback-cycle", "/tiers/L4/degrade_to/0")]
    assert "L4 -> L4" in report["problems"][0]["message"]


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run("validate", "--format", "xml").returncode == 2
    assert run().returncode == 2
    assert run("frobnicate").returncode == 2
    out = run_validate(cwd=tmp_path)  # no PATH and no ./policies
    assert out.returncode == 2 and "no ./policies" in out.stderr


def test_missing_path_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    out = run_validate(str(tmp_path / "absent"))
    assert out.returncode == 1
    assert out.stdout.startswith(f"{tmp_path / 'absent'}:1:1: file-unreadable:")


def test_a_dangling_policy_link_makes_the_set_invalid(policy_dir: Path) -> None:
    (policy_dir / "budgets.yaml").unlink()
    (policy_dir / "budgets.yaml").symlink_to("budgets-v2.yaml")
    out = run_validate(str(policy_dir))
    assert out.returncode == 1, out.stdout
    assert out.stdout.splitlines() == [
        f"{policy_dir / 'budgets.yaml'}:1:1: file-unreadable: expected a readable policy file, got a dangling "
        "symbolic link to 'budgets-v2.yaml' (fix the link or remove it)"]
    assert out.stderr.strip() == "1 problem found"

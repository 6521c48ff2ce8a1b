"""The real CLI, run as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


# -- values from files, file names and databases reach the terminal escaped --------------------------
HOSTILE = "\x1b]0;owned\x07\x1b[2J\nfake.yaml:1:1: yaml-syntax: forged\x9b"


def _no_controls(text: str) -> None:
    assert not any((ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F for c in text), repr(text)


def test_a_file_name_cannot_forge_problem_lines_or_drive_the_terminal(policy_dir: Path, tmp_path: Path) -> None:
    (policy_dir / f"x{HOSTILE}.yaml").write_text("kind: modles\nversion: 1\n")
    out = run_validate(str(policy_dir))
    assert out.returncode == 1
    _no_controls(out.stdout)
    assert out.stdout.splitlines() == [
        f"{policy_dir}/x\\x1b]0;owned\\x07\\x1b[2J\\nfake.yaml:1:1: yaml-syntax: forged\\x9b.yaml:1:7: "
        "unknown-kind: expected one of breakers, budgets, errors, models, monitoring, recommendations, report, "
        "routing, storage, got a string 'modles' (did you mean 'models'?)"]
    data = json.loads(run("validate", "--format", "json", str(policy_dir)).stdout)  # JSON stays exact
    assert [p["file"] for p in data["problems"]] == [str(policy_dir / f"x{HOSTILE}.yaml")]
    valid = tmp_path / f"set{HOSTILE}"
    (policy_dir / f"x{HOSTILE}.yaml").unlink()
    policy_dir.rename(valid)
    out = run_validate(str(valid))
    assert out.returncode == 0, out.stdout + out.stderr
    _no_controls(out.stdout)
    assert out.stdout.startswith(f"{tmp_path}/set\\x1b]0;owned\\x07\\x1b[2J\\nfake.yaml:1:1: yaml-syntax: "
                                 "forged\\x9b: 8 files, 13 models, 4 tiers: valid")


def _history_with_a_hostile_model(path: Path) -> None:
    """A history written by an engine, in which a model of the given name served calls."""
    from engine import Outcome, PolicyEngine
    from engine.store.sqlite import SQLiteStore
    from engine.testing import FakeClock

    clock = FakeClock(1767340800.0)  # 2026-01-02 08:00 UTC
    store = SQLiteStore(f"sqlite:///{path}?flush_s=3600")
    eng = PolicyEngine.from_path(POLICIES, clock=clock, store=store)
    eng.record(eng.decide("L2"), Outcome(800.0, 100, 50))
    store.record_call(clock(), "L2", f"m{HOSTILE}", 900.0, None, False, False, 100, 50, 0.001, False)
    clock.advance(10)
    eng.close()


def test_status_shows_names_from_the_history_escaped(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    _history_with_a_hostile_model(db)
    out = run("status", "--policies", str(POLICIES), "--store", f"sqlite:///{db}")
    assert out.returncode == 0, out.stderr
    _no_controls(out.stdout)
    [row] = [line for line in out.stdout.splitlines() if line.startswith("m\\x1b")]
    assert row.startswith("m\\x1b]0;owned\\x07\\x1b[2J\\nfake.yaml:1:1: yaml-syntax: forged\\x9b  ?  ")
    data = json.loads(run("status", "--policies", str(POLICIES), "--store", f"sqlite:///{db}", "--format",
                          "json").stdout)
    assert f"m{HOSTILE}" in [m["model"] for m in data["models"]]  # JSON stays exact
    out = run("status", "--policies", str(POLICIES), "--store", f"sqlite:///{tmp_path}/h{HOSTILE}.db")
    assert out.returncode == 1
    _no_controls(out.stderr)
    assert len(out.stderr.splitlines()) == 1 and "no history database at" in out.stderr


def test_report_paths_from_the_report_policy_are_printed_escaped(tmp_path: Path, policy_dir: Path) -> None:
    db = tmp_path / "history.db"
    _history_with_a_hostile_model(db)
    out_dir = tmp_path / f"out{HOSTILE}"
    report = policy_dir / "report.yaml"
    text = report.read_text().replace("output_dir: memory/reports", f"output_dir: {json.dumps(str(out_dir))}")
    report.write_text(text)  # a JSON string is a YAML double-quoted string: the controls arrive as written
    out = run("report", "--policies", str(policy_dir), "--store", f"sqlite:///{db}", "--date", "2026-01-02")
    assert out.returncode == 0, out.stderr
    _no_controls(out.stdout)
    shown = f"{tmp_path}/out\\x1b]0;owned\\x07\\x1b[2J\\nfake.yaml:1:1: yaml-syntax: forged\\x9b"
    assert out.stdout.splitlines() == [f"{shown}/260102-DAILY-REPORT.md", f"{shown}/260102-DAILY-REPORT.html"]
    assert (out_dir / "260102-DAILY-REPORT.md").is_file()


# -- credentials in URIs are never echoed ------------------------------------------------------------
SECRET = "hunter2"  # noqa: S105 - the password that must never be shown


@pytest.mark.parametrize(("command", "store", "shown"), [
    ("report", f"redis://u:{SECRET}@h/0", "redis://***@h/0"),
    ("status", f"rediss://u:{SECRET}@h/0", "rediss://***@h/0"),
    ("status", f"postgres://u:{SECRET}@db:5432/app", "postgres://***@db:5432/app"),
    ("report", f"postgres://u:{SECRET}@db:5432/app", "postgres://***@db:5432/app"),
])
def test_a_store_argument_error_does_not_echo_the_password(command: str, store: str, shown: str) -> None:
    out = run(command, "--policies", str(POLICIES), "--store", store)
    assert out.returncode == 2
    assert SECRET not in out.stdout + out.stderr
    assert f"got {shown!r}" in out.stderr


def test_a_redis_scheme_in_capitals_is_the_shared_status_and_is_redacted() -> None:
    # URI schemes ignore case (RFC 3986): Redis:// is read as the shared store, not refused as a usage error
    out = run("status", "--store", f"Redis://u:{SECRET}@127.0.0.1:1/0")  # nothing listens on port 1
    assert out.returncode == 1, out.stderr
    assert SECRET not in out.stdout + out.stderr
    assert "cannot read 'Redis://***@127.0.0.1:1/0'" in out.stderr


def test_a_missing_sqlite_history_does_not_echo_the_password(tmp_path: Path) -> None:
    out = run("status", "--policies", str(POLICIES), "--store", f"sqlite://u:{SECRET}@{tmp_path}/h.db")
    assert out.returncode == 1
    assert SECRET not in out.stdout + out.stderr
    assert "no history database (store sqlite://***@" in out.stderr


def test_a_storage_uri_failing_its_schema_is_shown_without_the_password(policy_dir: Path) -> None:
    (policy_dir / "storage.yaml").write_text(f"kind: storage\nversion: 1\nuri: rediss://admin:{SECRET}@cache:6380/0\n")
    out = run_validate(str(policy_dir))
    assert out.returncode == 1
    assert SECRET not in out.stdout + out.stderr
    assert out.stdout.splitlines() == [
        f"{policy_dir / 'storage.yaml'}:3:6: invalid-format: expected a string matching "
        "^(memory|sqlite|redis|redis\\+cluster)://, "
        "got 'rediss://***@cache:6380/0'"]
    out = run("validate", "--format", "json", str(policy_dir))
    assert out.returncode == 1
    assert SECRET not in out.stdout + out.stderr
    assert [p["code"] for p in json.loads(out.stdout)["problems"]] == ["invalid-format"]


def _orphan_model(policy_dir: Path) -> int:
    """Take o3 out of tier L4, so it is a candidate of no tier (a warning); its line in models.yaml."""
    routing = policy_dir / "routing.yaml"
    routing.write_text(routing.read_text().replace("[gpt-5, claude-opus-4-1, o3]", "[gpt-5, claude-opus-4-1]"))
    return (policy_dir / "models.yaml").read_text().splitlines().index("  o3:") + 1


def test_warnings_print_but_exit_0_and_strict_fails(policy_dir: Path) -> None:
    line = _orphan_model(policy_dir)
    out = run("validate", str(policy_dir))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[0] == (
        f"{policy_dir / 'models.yaml'}:{line}:3: unreachable-model: model 'o3' is not a candidate of any tier; "
        "add it to a tier's candidates or remove it (warning)")
    assert "tiers: valid, 1 warning (revision" in out.stdout
    strict = run("validate", "--strict", str(policy_dir))
    assert strict.returncode == 1
    assert strict.stderr.strip() == "1 warning found, and --strict makes warnings fail"


def test_json_carries_severity(policy_dir: Path) -> None:
    _orphan_model(policy_dir)
    (policy_dir / "extra.yaml").write_text("kind: report\nversion: 1\ntop_models: 0\n")
    out = run("validate", "--format", "json", str(policy_dir))
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    assert doc["valid"] is False and doc["errors"] == 1 and doc["warnings"] == 0
    # errors stop the set before cross-file checks: only schema problems, all errors
    assert {p["severity"] for p in doc["problems"]} == {"error"}
    (policy_dir / "extra.yaml").unlink()
    doc = json.loads(run("validate", "--format", "json", str(policy_dir)).stdout)
    assert doc["valid"] is True and doc["errors"] == 0 and doc["warnings"] == 1
    assert [(p["code"], p["severity"]) for p in doc["problems"]] == [("unreachable-model", "warning")]

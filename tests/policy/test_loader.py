from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import PolicyError, check, load_policies
from engine.policy.model import BreakerSpec
from engine.policy.yamlread import MAX_BYTES
from tests.conftest import POLICIES


def test_default_set_is_valid_and_complete() -> None:
    policy = load_policies(POLICIES)
    assert policy.tier_order == ("L1", "L2", "L3", "L4")
    assert len(policy.tiers["L2"].candidates) == 4
    assert policy.tiers["L3"].strategy == "score" and policy.tiers["L3"].score is not None
    assert policy.models["o3"].breaker.slow_call_ms == 180_000  # the reasoning profile
    assert policy.models["mistral-small-latest"].breaker.failure_rate == 40  # an override
    assert policy.models["gpt-4.1"].breaker == BreakerSpec(
        window="time", window_size=50, window_s=60, window_buckets=12, minimum_calls=10,
        failure_rate=50, slow_call_rate=80, slow_call_ms=30000, open_for_s=30, backoff=2.0,
        max_open_for_s=600, half_open_permits=3, half_open_max_wait_s=120)
    assert policy.error_classes["overloaded"].breaker == "failure"
    assert policy.error_classes["context_window"].fallback == "larger_context"
    names = {b.name for b in policy.budgets_for("claude-sonnet-4-5")}
    assert names == {"sonnet-rolling", "l3-daily-cost", "everything-monthly"}
    assert policy.monitoring.anomalies[1].for_s == 30.0
    assert policy.models["gpt-5"].price.cost(1_000_000, 100_000) == pytest.approx(2.25)


def test_compiled_score_uses_metrics() -> None:
    score = load_policies(POLICIES).tiers["L3"].score
    assert score is not None
    assert score({"success_rate": 1.0, "p95_ms": 2000, "error_rate": 0.0}) == pytest.approx(98.0)


def test_policy_set_is_immutable() -> None:
    policy = load_policies(POLICIES)
    with pytest.raises(TypeError):
        policy.models["x"] = policy.models["o3"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        policy.revision = "x"  # type: ignore[misc]


def test_revision_tracks_content(policy_dir: Path) -> None:
    first = load_policies(policy_dir).revision
    assert load_policies(policy_dir).revision == first
    path = policy_dir / "report.yaml"
    path.write_text(path.read_text().replace("top_models: 10", "top_models: 11"))
    assert load_policies(policy_dir).revision != first


def test_every_problem_is_reported_across_files(policy_dir: Path) -> None:
    models = policy_dir / "models.yaml"
    models.write_text(models.read_text().replace("context_window: 128000", "context_window: big", 1))
    report = policy_dir / "report.yaml"
    report.write_text(report.read_text().replace("top_models: 10", "top_modles: 10"))
    with pytest.raises(PolicyError) as info:
        load_policies(policy_dir)
    found = [(Path(p.file).name, p.code) for p in info.value.problems]
    assert found == [("models.yaml", "wrong-type"), ("report.yaml", "unknown-key")]
    assert "did you mean 'top_models'" in str(info.value)


def test_semantic_problems_point_at_the_reference(policy_dir: Path) -> None:
    routing = policy_dir / "routing.yaml"
    text = routing.read_text().replace("[gpt-5, claude-opus-4-1, o3]", "[gpt5, claude-opus-4-1, o3]")
    routing.write_text(text)
    _, problems = check(policy_dir)
    lines = text.splitlines()
    row = next(i for i, line in enumerate(lines) if "gpt5" in line) + 1
    got = [(Path(p.file).name, p.line, p.code) for p in problems]
    assert ("routing.yaml", row, "unknown-model") in got
    gpt5 = (policy_dir / "models.yaml").read_text().splitlines().index("  gpt-5:") + 1
    assert ("models.yaml", gpt5, "unreachable-model") in got  # gpt-5 is now in no tier
    assert any("did you mean 'gpt-5'" in p.message for p in problems)


def test_missing_path_and_empty_directory(tmp_path: Path) -> None:
    _, problems = check(tmp_path / "nope")
    assert [p.code for p in problems] == ["file-unreadable"]
    _, problems = check(tmp_path)
    assert [p.code for p in problems] == ["no-policy-files"]


def test_single_files_form_one_set(policy_dir: Path) -> None:
    files = sorted(policy_dir.glob("*.yaml"))
    assert check(files)[1] == []
    _, problems = check([policy_dir / "models.yaml"])
    # without breakers.yaml the 'reasoning' profile of the L4 models is unknown
    assert sorted(p.code for p in problems) == ["missing-routing"] + ["unknown-profile"] * 3


# -- hostile input: the loader only ever raises PolicyError, and quickly -----

_yaml_atoms = st.sampled_from(
    ["kind: models", "kind: routing", "version: 1", "version: 2", "models:", "tiers:", "  L1:",
     "    candidates: [a, b]", "  gpt-5:", "    tier: L1", "    price: {input_per_1m: 1}", "- x",
     "&a [1, 2]", "*a", "<<: *a", "!!python/object:os.system x", "{", "]", "'", '"', "\t", "%YAML 1.1",
     "---", "...", "? x", ": y", "a: &b {c: *b}", "when: '1 +'", "score: __import__('os')"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_yaml_atoms, max_size=12), noise=st.binary(max_size=64), which=st.sampled_from(
    ["models.yaml", "routing.yaml", "extra.yaml"]))
def test_mutated_documents_only_raise_policy_error(
    policy_dir: Path, lines: list[str], noise: bytes, which: str
) -> None:
    (policy_dir / which).write_bytes("\n".join(lines).encode() + noise)
    start = time.perf_counter()
    try:
        load_policies(policy_dir)
    except PolicyError as exc:
        assert exc.problems and all(p.line >= 1 and p.col >= 1 for p in exc.problems)
    assert time.perf_counter() - start < 1.0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20)),
    lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=10), c, max_size=4)),
    max_leaves=30,
), kind=st.sampled_from(["models", "routing", "budgets", "breakers", "monitoring", "recommendations"]))
def test_random_documents_only_raise_policy_error(policy_dir: Path, data: object, kind: str) -> None:
    import yaml

    body = {"kind": kind, "version": 1, "models": data, "tiers": data, "budgets": data, "rules": data}
    (policy_dir / f"{kind}.yaml").write_text(yaml.safe_dump(body))
    start = time.perf_counter()
    try:
        load_policies(policy_dir)
    except PolicyError as exc:
        assert exc.problems
    assert time.perf_counter() - start < 1.0


def _sparse(path: Path, size: int) -> None:
    """A file of ``size`` bytes that takes no disk space (and no time to make)."""
    with path.open("wb") as f:
        f.truncate(size)


def test_a_huge_file_is_refused_without_being_read(policy_dir: Path) -> None:
    _sparse(policy_dir / "huge.yaml", 3 << 30)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        _, problems = check(policy_dir)
        elapsed, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(Path(p.file).name, p.line, p.col, p.code, p.message) for p in problems] == [
        ("huge.yaml", 1, 1, "file-too-large", f"expected at most {MAX_BYTES} bytes, got {3 << 30}")]
    assert peak < 16 << 20, f"{peak} bytes allocated to check a 3 GiB file"
    assert elapsed < 2.0


def test_thousands_of_unknown_names_validate_fast_and_keep_their_suggestions(tmp_path: Path) -> None:
    """A did-you-mean compared every unknown name with every known one: 200 KB took 12 s."""
    n = 900
    models = ["kind: models", "version: 1", "models:"]
    budgets = ["kind: budgets", "version: 1", "budgets:"]
    typos = ("vendor-modle-{:05d}", "vendor-model{:05d}", "vndor-model-{:05d}", "vendor-model-{:05d}x")
    for i in range(n):
        models += [f"  vendor-model-{i:05d}:", "    tier: L1", "    provider: acme", "    context_window: 128000",
                   "    price: {input_per_1m: 0.1, output_per_1m: 0.4}"]
        budgets += [f"  budget-{i:05d}:", f"    applies_to: {{model: {typos[i % 4].format(i)}}}",
                    "    period: daily", "    tokens: 1000"]
    budgets += ["  far-off:", "    applies_to: {model: qqqqqqqq}", "    period: daily", "    tokens: 1000"]
    (tmp_path / "models.yaml").write_text("\n".join(models) + "\n")
    (tmp_path / "budgets.yaml").write_text("\n".join(budgets) + "\n")
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) > 200_000
    start = time.perf_counter()
    _, problems = check(tmp_path)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{elapsed:.2f} s"
    unknown = [p.message for p in problems if p.code == "unknown-model"]
    assert unknown == [f"unknown model {typos[i % 4].format(i)!r} (did you mean 'vendor-model-{i:05d}'?)"
                       for i in range(n)] + ["unknown model 'qqqqqqqq'"]


def _dangling(path: Path) -> str:
    path.symlink_to("gone.yaml")
    return "a dangling symbolic link to 'gone.yaml' (fix the link or remove it)"


def _loop(path: Path) -> str:
    path.symlink_to(path.name)
    return "a symbolic link that loops (fix the link or remove it)"


def _directory(path: Path) -> str:
    path.mkdir()
    return "a directory (directories inside a policy directory are not searched)"


def _pipe(path: Path) -> str:
    os.mkfifo(path)  # opening it for reading would block until a writer came
    return "a named pipe"


def _no_permission(path: Path) -> str:
    path.write_text("kind: report\nversion: 1\n")
    path.chmod(0)
    return "a file this process may not read (permission denied)"


@pytest.mark.parametrize("make", [
    _dangling, _loop, _directory, _pipe,
    pytest.param(_no_permission, marks=pytest.mark.skipif(os.geteuid() == 0, reason="root reads anything")),
])
def test_a_policy_file_that_cannot_be_read_is_a_located_problem(policy_dir: Path, make: Any) -> None:
    """It was skipped silently: the set was judged valid with one file fewer."""
    (policy_dir / "budgets.yaml").unlink()
    got = make(policy_dir / "budgets.yaml")
    policy, problems = check(policy_dir)
    assert policy is None
    assert [p.format() for p in problems] == [
        f"{policy_dir / 'budgets.yaml'}:1:1: file-unreadable: expected a readable policy file, got {got}"]
    with pytest.raises(PolicyError, match="file-unreadable"):
        load_policies(policy_dir)
    if make is not _directory:  # named on its own, the same (a directory named so is searched)
        _, alone = check(policy_dir / "budgets.yaml")
        assert [p.format() for p in alone] == [p.format() for p in problems]


def test_a_policy_file_without_read_permission_is_a_located_problem(policy_dir: Path) -> None:
    """The same through the real CLI, in a process that obeys file modes (root drops the capabilities
    that override them with ``setpriv``), so it runs as root too."""
    import shutil
    import subprocess
    import sys

    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]
    budgets = policy_dir / "budgets.yaml"
    got = _no_permission(budgets)
    try:
        done = subprocess.run([*prefix, sys.executable, "-m", "engine", "validate", str(policy_dir)],
                              capture_output=True, text=True, timeout=120, check=False)
    finally:
        budgets.chmod(0o644)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        f"{budgets}:1:1: file-unreadable: expected a readable policy file, got {got}"]

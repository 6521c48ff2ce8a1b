"""The package's layering (README "Layout") is a contract that a violation breaks, chain named."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import PACKAGE

ROOT = Path(__file__).resolve().parent.parent


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    # lint-imports reads [tool.importlinter] from the pyproject.toml in cwd and imports the package from there
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"}, timeout=120)


def test_every_layering_contract_is_kept() -> None:
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_a_forbidden_import_breaks_a_contract_with_its_chain_named(tmp_path: Path) -> None:
    shutil.copytree(PACKAGE, tmp_path / "engine", ignore=shutil.ignore_patterns("__pycache__", "data"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    model = tmp_path / "engine" / "policy" / "model.py"
    # policy loading must not reach the runtime, not even through another module of its own
    model.write_text(model.read_text() + "\nfrom engine.policy import contexts as _c  # noqa\n")
    contexts = tmp_path / "engine" / "policy" / "contexts.py"
    contexts.write_text(contexts.read_text() + "\nimport engine.store.base as _b  # noqa\n")
    done = _lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "policy loading imports no runtime" in done.stdout and "BROKEN" in done.stdout
    assert "engine.policy.contexts -> engine.store.base" in done.stdout

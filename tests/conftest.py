from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A writable copy of the default policy set."""
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target

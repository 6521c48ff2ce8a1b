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


@pytest.fixture
def provider():  # type: ignore[no-untyped-def]
    """A fake OpenAI/Anthropic provider on a free loopback port (engine.testing.FakeProvider)."""
    from engine.testing import FakeProvider

    with FakeProvider() as fp:
        yield fp

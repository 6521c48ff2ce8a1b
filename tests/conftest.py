from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import engine

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
# The package under test: the checkout's engine/, or an installed build when the suite runs from a copy of the
# repository without engine/ (.ci/run tests the compiled wheel that way).
PACKAGE = Path(engine.__file__).resolve().parent

if (ROOT / "engine").is_dir():
    if PACKAGE != ROOT / "engine":
        raise pytest.UsageError(f"the tests beside {ROOT / 'engine'} would test the engine in {PACKAGE}")
    if engine.COMPILED:
        raise pytest.UsageError(
            f"compiled modules left in {PACKAGE} by a mypyc build shadow its sources: remove {ROOT}/engine/*.so and "
            f"{ROOT}/*__mypyc*.so (build with HATCH_BUILD_CLEAN_HOOKS_AFTER=true, README \"Compiled build\")")


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

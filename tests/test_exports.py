from __future__ import annotations

import engine


def test_all_is_sorted_and_complete() -> None:
    assert engine.__all__ == sorted(engine.__all__)
    for name in engine.__all__:
        assert hasattr(engine, name), name
    public = {n for n in vars(engine) if not n.startswith("_") and n[0].isupper()}
    assert public <= set(engine.__all__)


def test_every_code_is_documented() -> None:
    import re

    from tests.conftest import ROOT

    documented = re.findall(r"^\| `([a-z0-9-]+)` \|", (ROOT / "docs" / "codes.md").read_text(), re.M)
    assert documented == list(engine.CODES)


def test_compiled_says_whether_the_leaf_modules_are_the_mypyc_build() -> None:
    import engine.breaker
    import engine.core
    import engine.window

    assert engine.COMPILED is (not engine.breaker.__file__.endswith(".py"))
    assert engine.COMPILED is (not engine.window.__file__.endswith(".py"))
    assert engine.core.__file__.endswith(".py")  # the engine itself stays Python in both builds

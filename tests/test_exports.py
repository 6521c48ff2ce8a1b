from __future__ import annotations

import engine


def test_all_is_sorted_and_complete() -> None:
    assert engine.__all__ == sorted(engine.__all__)
    for name in engine.__all__:
        assert hasattr(engine, name), name
    public = {n for n in vars(engine) if not n.startswith("_") and n[0].isupper()}
    assert public <= set(engine.__all__)

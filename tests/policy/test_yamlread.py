from __future__ import annotations

import time

import pytest

from engine.policy.yamlread import MAX_BYTES, YamlProblem, read


def problem(raw: bytes | str) -> tuple[int, int, str]:
    data = raw.encode() if isinstance(raw, str) else raw
    with pytest.raises(YamlProblem) as info:
        read("p.yaml", data)
    p = info.value.problem
    assert p.file == "p.yaml" and p.message
    return p.line, p.col, p.code


def test_values_and_positions() -> None:
    doc = read("p.yaml", b"a: 1\nb:\n  - x\n  - {c: 2.5}\n")
    assert doc.data == {"a": 1, "b": ["x", {"c": 2.5}]}
    assert doc.where(("b", 1, "c")) == (4, 9)
    assert doc.where(("b", 1, "c"), key=True) == (4, 6)
    assert doc.where(("a",), key=True) == (1, 1)
    assert doc.where(("b", 0)) == (3, 5)
    assert doc.where(("b", 7, "missing")) == (3, 3)  # nearest ancestor: the list


def test_keys_stay_names_values_resolve() -> None:
    doc = read("p.yaml", b"on: yes\n3: 1e6\nn: ~\nd: 2026-01-01\ns: '1'\n")
    assert doc.data == {"on": True, "3": 1e6, "n": None, "d": "2026-01-01", "s": "1"}


def test_merge_keys() -> None:
    doc = read("p.yaml", b"base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n")
    assert doc.data["use"] == {"x": 1, "y": 3}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a: 1\nb: 2\na: 3\n", (3, 1, "duplicate-key")),
        ("x:\n  k: 1\n  k: 2\n", (3, 3, "duplicate-key")),
        ("", (1, 1, "empty-file")),
        ("# nothing here\n\n", (1, 1, "empty-file")),
        ("a: 1\n---\nb: 2\n", (2, 1, "multiple-documents")),
        ("a: [1\n", (1, 4, "yaml-syntax")),  # at the bracket left open
        ("a: b: c\n", (1, 5, "yaml-syntax")),
        ("a: *nope\n", (1, 4, "yaml-syntax")),
        ("a: !!python/object/apply:os.system [ls]\n", (1, 4, "bad-yaml-tag")),
        ("a: !custom 1\n", (1, 4, "bad-yaml-tag")),
        ("a: &x [1, *x]\n", (1, 11, "recursive-alias")),
        ("? [1, 2]\n: x\n", (1, 3, "wrong-type")),
        ("a: 0x\n", None),  # a plain string, not a problem
    ],
)
def test_problems(raw: str, expected: tuple[int, int, str] | None) -> None:
    if expected is None:
        assert read("p.yaml", raw.encode()).data == {"a": "0x"}
    else:
        assert problem(raw) == expected


def test_duplicate_key_names_the_first_place() -> None:
    with pytest.raises(YamlProblem, match="first defined at line 1 column 1"):
        read("p.yaml", b"a: 1\na: 2\n")


def test_not_utf8_points_at_the_byte() -> None:
    assert problem(b"a: 1\nb: caf\xe9\n") == (2, 7, "not-utf8")


def test_bom_is_accepted() -> None:
    assert read("p.yaml", b"\xef\xbb\xbfa: 1\n").data == {"a": 1}


def test_size_cap() -> None:
    assert problem(b"#" * (MAX_BYTES + 1)) == (1, 1, "file-too-large")


def _fast(raw: str | bytes) -> tuple[int, int, str]:
    start = time.perf_counter()
    result = problem(raw)
    assert time.perf_counter() - start < 1.0  # a hang guard, not a benchmark
    return result


def test_deep_nesting_is_refused_without_recursion() -> None:
    assert _fast("[" * 200_000 + "]" * 200_000)[2] == "too-deep"
    assert _fast("a:\n" + "".join("  " * i + "- \n" for i in range(1, 100)))[2] == "too-deep"


def test_alias_bomb_is_refused() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    prev = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
        prev = name
    assert _fast("\n".join(lines) + "\n")[2] == "too-many-nodes"


def test_wide_but_legal_aliases_are_fine() -> None:
    doc = read("p.yaml", b"x: &x {a: 1}\nl: [*x, *x, *x]\n")
    assert doc.data["l"] == [{"a": 1}] * 3

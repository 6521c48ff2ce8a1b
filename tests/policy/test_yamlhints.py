"""YAML syntax errors in words: where the mistake is and what to write."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.policy.yamlread import YamlProblem, read


def problem(text: str) -> tuple[int, int, str]:
    with pytest.raises(YamlProblem) as exc:
        read("p.yaml", text.encode())
    p = exc.value.problem
    assert p.code == "yaml-syntax"
    return p.line, p.col, p.message


def test_a_tab_in_the_indentation_is_named_with_the_fix() -> None:
    line, col, message = problem("a:\n  b: 1\n\tc: 2\n")
    assert (line, col) == (3, 1)
    assert message.startswith("a tab character in the indentation of line 3: YAML indents with spaces only")


def test_a_key_one_space_off_is_blamed_not_the_line_after_it() -> None:
    line, col, message = problem("m:\n  x:\n    a: 1\n   b: 2\n    c: 3\n")
    assert (line, col) == (4, 4)
    assert message.startswith("line 4 ('b') is indented 3 spaces, which lines up with no key above it")


def test_a_dedented_last_key() -> None:
    line, _, message = problem("m:\n  x:\n    a: 1\n   b: 2\n")
    assert line == 4 and "is indented 3 spaces" in message


def test_an_unclosed_bracket_points_at_the_bracket() -> None:
    line, col, message = problem("a: [1, 2\nb: 3\n")
    assert (line, col) == (1, 4)
    assert message.startswith("the '[' opened here is not closed where the list ends: add ']'")


def test_an_unclosed_brace() -> None:
    assert problem("a: {x: 1\nb: 3\n")[2].startswith("the '{' opened here is not closed where the mapping ends")


def test_a_quote_left_open_mid_file_is_found_where_it_opened() -> None:
    line, col, message = problem('a:\n  w: "x > 1\n  s: 2\nb:\n  w: "y"\n')
    assert (line, col) == (2, 6)
    assert "is not closed on that line" in message


def test_a_line_indented_under_a_value() -> None:
    line, col, message = problem("a: 1\n  b: 2\n")
    assert (line, col) == (2, 3)
    assert "reads as the rest of the value of 'a' ('1')" in message


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=" \t\n:-[]{}'\"#ab1,", max_size=40))
def test_any_text_gives_a_problem_or_a_document(text: str) -> None:
    try:
        read("p.yaml", text.encode())
    except YamlProblem as exc:
        assert exc.problem.message and exc.problem.line >= 1

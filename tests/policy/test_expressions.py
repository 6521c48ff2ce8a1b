from __future__ import annotations

import math

import pytest
import simpleeval
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.policy.expressions import FUNCTIONS, ExprError, compile_expression

NAMES = {"calls": "number", "error_rate": "number", "p95_ms": "number", "tier": "string", "model": "string"}


def ev(source: str, values: dict[str, object]) -> object:
    return compile_expression(source, NAMES)(values)


VALUES = {"calls": 40, "error_rate": 0.25, "p95_ms": 1800.0, "tier": "L2", "model": "gpt-5"}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("calls >= 20 and error_rate > 0.2", True),
        ("calls * 2 + 1", 81),
        ("p95_ms / 1000 - error_rate * 4", 0.8),
        ("calls // 3 % 5", 3),
        ("1 < calls < 50", True),
        ("0 < error_rate < 0.1", False),
        ("tier in ('L1', 'L2')", True),
        ("model not in ['gpt-5']", False),
        ("'gpt' in model", True),
        ("'big' if calls > 10 else 'small'", "big"),
        ("not calls", False),
        ("error_rate or calls", 0.25),
        ("0 and calls", 0),
        ("max(calls, 100) + min(1, 2, 3) + abs(-2) + round(2.567, 1)", 105.6),
        ("int(p95_ms) + float(1)", 1801.0),
        ("-calls + +1", -39),
        ("True + False", 1),
        ("tier == 'L2' and model != 'x'", True),
        ("None == None", True),
    ],
)
def test_evaluates_like_python(source: str, expected: object) -> None:
    assert ev(source, VALUES) == expected


@pytest.mark.parametrize(
    ("source", "code"),
    [
        ("calls.__class__", "expr-forbidden"),
        ("().__class__.__bases__[0].__subclasses__()", "expr-forbidden"),
        ("'{0.__class__}'.format(calls)", "expr-forbidden"),
        ("__import__('os').system('true')", "expr-forbidden"),
        ("_secret", "expr-forbidden"),
        ("calls[0]", "expr-forbidden"),
        ("lambda: 1", "expr-forbidden"),
        ("[x for x in (1, 2)]", "expr-forbidden"),
        ("{x: 1 for x in (1, 2)}", "expr-forbidden"),
        ("f'{calls}'", "expr-forbidden"),
        ("(x := 1)", "expr-forbidden"),
        ("2 ** 10", "expr-forbidden"),
        ("calls << 2", "expr-forbidden"),
        ("calls & 1", "expr-forbidden"),
        ("~calls", "expr-forbidden"),
        ("calls is None", "expr-forbidden"),
        ("{'a': 1}", "expr-forbidden"),
        ("(1, 2)", "expr-forbidden"),
        ("max(*[1, 2])", "expr-forbidden"),
        ("round(calls, ndigits=2)", "expr-forbidden"),
        ("b'bytes'", "expr-forbidden"),
        ("1j", "expr-forbidden"),
        ("min", "expr-forbidden"),
        ("getattr(calls, 'real')", "expr-unknown-function"),
        ("open('/etc/passwd')", "expr-unknown-function"),
        ("eval('1')", "expr-unknown-function"),
        ("type(calls)", "expr-unknown-function"),
        ("clals > 1", "expr-unknown-name"),
        ("'a' * 100000", "expr-type"),
        ("tier * 3", "expr-type"),
        ("tier + 'x'", "expr-type"),
        ("tier < 3", "expr-type"),
        ("-tier", "expr-type"),
        ("abs(tier)", "expr-type"),
        ("max(1)", "expr-type"),
        ("1 in calls", "expr-type"),
        ("9" * 20, "expr-too-large"),
        ("'" + "a" * 300 + "'", "expr-too-large"),
        ("1 + " * 300 + "1", "expr-too-large"),
        ("x" * 1001, "expr-too-large"),
        ("(" * 40 + "1" + ")" * 40 + " + -" * 40 + "1", "expr-too-large"),
        ("calls >", "expr-syntax"),
        ("", "expr-syntax"),
        ("   ", "expr-syntax"),
        ("calls = 1", "expr-syntax"),
        ("import os", "expr-syntax"),
    ],
)
def test_refused_at_load(source: str, code: str) -> None:
    with pytest.raises(ExprError) as info:
        compile_expression(source, NAMES)
    assert info.value.code == code, info.value.message


def test_unknown_name_suggests_the_close_one() -> None:
    with pytest.raises(ExprError, match=r"unknown name 'error_rat' \(did you mean 'error_rate'\?\)"):
        compile_expression("error_rat > 0.1", NAMES)


def test_records_the_names_used_and_the_source() -> None:
    expr = compile_expression("calls > 1 and tier == 'L1'", NAMES)
    assert expr.names == frozenset({"calls", "tier"})
    assert expr.source == "calls > 1 and tier == 'L1'"


def test_compiled_function_cannot_reach_builtins() -> None:
    expr = compile_expression("calls + 1", NAMES)
    assert expr.fn.__globals__["__builtins__"] == {}


# -- property: compiled evaluation equals simpleeval's on random expressions --

_num_leaf = st.one_of(
    st.sampled_from(["calls", "error_rate", "p95_ms"]),
    st.integers(-1000, 1000).map(str),
    st.floats(-1e6, 1e6, allow_nan=False).map(repr),
    st.sampled_from(["True", "False"]),
)


def _num(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binop = st.tuples(children, st.sampled_from(["+", "-", "*", "/", "//", "%"]), children)
    return st.one_of(
        binop.map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        children.map(lambda c: f"(-{c})"),
        st.tuples(children, children).map(lambda t: f"max({t[0]}, {t[1]})"),
        st.tuples(children, children).map(lambda t: f"min({t[0]}, {t[1]})"),
        children.map(lambda c: f"abs({c})"),
        st.tuples(children, children, children).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
    )


_numbers = st.recursive(_num_leaf, _num, max_leaves=8)
_str_leaf = st.one_of(st.sampled_from(["tier", "model"]), st.sampled_from(["'L1'", "'L2'", "'gpt'", "''"]))
_compare = st.one_of(
    st.tuples(_numbers, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), _numbers).map(" ".join),
    st.tuples(_numbers, st.sampled_from(["<", ">="]), _numbers, st.sampled_from(["<", "<="]), _numbers).map(" ".join),
    st.tuples(_str_leaf, st.sampled_from(["==", "!=", "in", "not in", "<"]), _str_leaf).map(" ".join),
    st.tuples(_str_leaf, st.sampled_from(["in", "not in"])).map(lambda t: f"{t[0]} {t[1]} ('L1', 'gpt-5')"),
)
_bools = st.recursive(
    st.one_of(_compare, _numbers),
    lambda c: st.one_of(
        st.tuples(c, st.sampled_from(["and", "or"]), c).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        c.map(lambda x: f"(not {x})"),
    ),
    max_leaves=4,
)
_values = st.fixed_dictionaries(
    {
        "calls": st.integers(0, 10_000),
        "error_rate": st.floats(0, 1),
        "p95_ms": st.floats(0, 1e6, allow_nan=False),
        "tier": st.sampled_from(["L1", "L2", "L3"]),
        "model": st.sampled_from(["gpt-5", "o3", "gpt-4.1"]),
    }
)


def _outcome(fn: object, *args: object) -> tuple[str, object]:
    try:
        value = fn(*args)  # type: ignore[operator]
    except Exception as exc:  # the exception type is the observable outcome
        return ("raise", type(exc).__name__)
    if isinstance(value, float) and math.isnan(value):
        return ("nan", None)
    return ("value", value)


@settings(max_examples=400, deadline=None)
@given(source=_bools, values=_values)
def test_compiled_equals_simpleeval(source: str, values: dict[str, object]) -> None:
    compiled = compile_expression(source, NAMES)
    reference = simpleeval.EvalWithCompoundTypes(names=values, functions=dict(FUNCTIONS))
    parsed = reference.parse(source)
    assert _outcome(compiled, values) == _outcome(reference.eval, source, parsed)

"""Rule expressions: checked once at load, compiled once into a fast callable.

The language is the part of simpleeval's that a rule needs: numbers, strings,
``True``/``False``/``None``, arithmetic (``+ - * / // %``), comparisons
(chained too), ``and``/``or``/``not``, ``x if c else y``, ``in``/``not in``
against a string or a literal tuple or list, and calls of ``min``, ``max``,
``abs``, ``round``, ``int`` and ``float``. Everything else is refused at load
time with a located problem: attribute access, subscripts, imports, lambdas,
comprehensions, f-strings, walrus, names starting with ``_``, exponentiation,
shifts and bit operations, arithmetic on strings (string repetition), and
literals, strings or expressions above the size caps.

A checked expression is compiled into a Python function of one mapping
(``names -> value``). Names are typed (number or string) by their context, so
the checks above hold for every input; simpleeval remains the semantic
reference and a property test compares the two.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.policy.model import Expression

MAX_SOURCE = 1000
MAX_NODES = 200
MAX_DEPTH = 32
MAX_STRING = 256
MAX_NUMBER = 10**15

NUM, STR, NONE = "number", "string", "none"

FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "float": float,
    "int": int,
    "max": max,
    "min": min,
    "round": round,
}
_ARITY = {"abs": (1, 1), "float": (1, 1), "int": (1, 1), "max": (2, 8), "min": (2, 8), "round": (1, 2)}

#: Words people write for a metric under another name (looked up when no name is close).
SYNONYMS: dict[str, str] = {
    "latency": "p95_ms", "latency_ms": "p95_ms", "p50": "p50_ms", "p95": "p95_ms", "p99": "p99_ms",
    "median_ms": "p50_ms", "avg_ms": "mean_ms", "average_ms": "mean_ms", "cost": "cost_usd", "spend": "cost_usd",
    "failure_rate": "error_rate", "failure_ratio": "error_rate", "errors_429": "errors_rate_limit",
    "requests": "calls", "count": "calls", "uptime": "availability", "inflight": "in_flight",
    "concurrency": "in_flight", "budget": "budget_used", "rank": "priority", "position": "priority",
    "tokens": "tokens_out", "price": "price_out",
}

_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod)
_ORDER = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_EQ = (ast.Eq, ast.NotEq)
_MEMBER = (ast.In, ast.NotIn)
_FORBIDDEN_OPS = {
    ast.Pow: "exponentiation (**) is not allowed",
    ast.LShift: "shifts are not allowed",
    ast.RShift: "shifts are not allowed",
    ast.BitOr: "bit operations are not allowed",
    ast.BitAnd: "bit operations are not allowed",
    ast.BitXor: "bit operations are not allowed",
    ast.MatMult: "matrix multiplication is not allowed",
    ast.Invert: "bit operations are not allowed",
    ast.Is: "'is' is not allowed; use ==",
    ast.IsNot: "'is not' is not allowed; use !=",
}
_FORBIDDEN_NODES = {
    ast.Attribute: "attribute access is not allowed",
    ast.Subscript: "subscripts are not allowed",
    ast.Lambda: "lambdas are not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.NamedExpr: "assignment expressions are not allowed",
    ast.Starred: "star arguments are not allowed",
    ast.Dict: "dict literals are not allowed",
    ast.Set: "set literals are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
    ast.Slice: "slices are not allowed",
}


@dataclass(frozen=True, slots=True)
class ExprError(Exception):
    """A problem with an expression; ``offset`` is a 0-based column in the source."""

    code: str
    message: str
    offset: int = 0

    def __str__(self) -> str:
        return self.message


class _Checker:
    def __init__(self, names: Mapping[str, str]) -> None:
        self.names = names
        self.count = 0
        self.used: set[str] = set()

    def fail(self, node: ast.AST | None, code: str, message: str) -> ExprError:
        return ExprError(code, message, getattr(node, "col_offset", 0))

    def check(self, node: ast.AST, depth: int = 0) -> frozenset[str]:
        """The set of types ``node`` may evaluate to; raises ExprError."""
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(node, "expr-too-large", f"expected at most {MAX_NODES} syntax nodes")
        if depth > MAX_DEPTH:
            raise self.fail(node, "expr-too-large", f"expected at most {MAX_DEPTH} levels of nesting")
        for kind, why in _FORBIDDEN_NODES.items():
            if isinstance(node, kind):
                raise self.fail(node, "expr-forbidden", why)
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            raise self.fail(node, "expr-forbidden", f"{type(node).__name__} is not allowed")
        result: frozenset[str] = method(node, depth + 1)
        return result

    def numeric(self, node: ast.AST, depth: int, what: str) -> None:
        types = self.check(node, depth)
        if types - {NUM}:
            got = " or ".join(sorted(types - {NUM}))
            raise self.fail(node, "expr-type", f"{what}: expected a number, got a {got}")

    def _Constant(self, node: ast.Constant, depth: int) -> frozenset[str]:
        v = node.value
        if v is None:
            return frozenset({NONE})
        if isinstance(v, bool):
            return frozenset({NUM})
        if isinstance(v, (int, float)):
            if abs(v) > MAX_NUMBER:
                raise self.fail(node, "expr-too-large", f"expected a number of at most {MAX_NUMBER:.0e}, got {v!r:.40}")
            return frozenset({NUM})
        if isinstance(v, str):
            if len(v) > MAX_STRING:
                raise self.fail(node, "expr-too-large",
                                f"expected a string of at most {MAX_STRING} characters, got {len(v)}")
            return frozenset({STR})
        raise self.fail(node, "expr-forbidden", f"{type(v).__name__} literals are not allowed")

    def _Name(self, node: ast.Name, depth: int) -> frozenset[str]:
        if node.id.startswith("_"):
            raise self.fail(node, "expr-forbidden", f"names starting with '_' are not allowed, got {node.id!r}")
        if node.id not in self.names:

            if node.id in FUNCTIONS:
                raise self.fail(node, "expr-forbidden", f"function {node.id!r} can only be called")
            raise self.fail(node, "expr-unknown-name", f"unknown name {node.id!r}{self.hint(node.id)}")
        self.used.add(node.id)
        return frozenset({self.names[node.id]})

    def hint(self, name: str) -> str:
        """A did-you-mean: the closest name, else a known synonym, else the names there are."""
        from engine.policy.problems import did_you_mean

        close = did_you_mean(name, self.names)
        if close:
            return close
        synonym = SYNONYMS.get(name.casefold())
        if synonym is not None and synonym in self.names:
            return f" (did you mean {synonym!r}?)"
        plain = sorted(n for n in self.names if not n.startswith("errors_"))
        errors = "errors_<class>, " if len(plain) < len(self.names) else ""
        return f"; the names here are {errors}{', '.join(plain)}"

    def _UnaryOp(self, node: ast.UnaryOp, depth: int) -> frozenset[str]:
        if type(node.op) in _FORBIDDEN_OPS:
            raise self.fail(node, "expr-forbidden", _FORBIDDEN_OPS[type(node.op)])
        if isinstance(node.op, ast.Not):
            self.check(node.operand, depth)
        else:
            self.numeric(node.operand, depth, "unary minus or plus")
        return frozenset({NUM})

    def _BinOp(self, node: ast.BinOp, depth: int) -> frozenset[str]:
        if type(node.op) in _FORBIDDEN_OPS:
            raise self.fail(node, "expr-forbidden", _FORBIDDEN_OPS[type(node.op)])
        what = "arithmetic (strings cannot be added or repeated)"
        self.numeric(node.left, depth, what)
        self.numeric(node.right, depth, what)
        return frozenset({NUM})

    def _BoolOp(self, node: ast.BoolOp, depth: int) -> frozenset[str]:
        types: frozenset[str] = frozenset()
        for value in node.values:
            types |= self.check(value, depth)
        return types

    def _Compare(self, node: ast.Compare, depth: int) -> frozenset[str]:
        left = self.check(node.left, depth)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            if type(op) in _FORBIDDEN_OPS:
                raise self.fail(comp, "expr-forbidden", _FORBIDDEN_OPS[type(op)])
            if isinstance(op, _MEMBER):
                right = self._container(comp, depth)
                if right == {STR} and left != {STR}:
                    raise self.fail(comp, "expr-type", f"'in' a string needs a string on its left, got "
                                    f"{'/'.join(sorted(left))}")
            else:
                right = self.check(comp, depth)
                if isinstance(op, _ORDER) and not (left == right and len(left) == 1 and NONE not in left):
                    raise self.fail(comp, "expr-type",
                                    f"ordering comparison needs two numbers or two strings, got "
                                    f"{'/'.join(sorted(left))} and {'/'.join(sorted(right))}")
            left = right
        return frozenset({NUM})

    def _container(self, node: ast.AST, depth: int) -> frozenset[str]:
        if isinstance(node, (ast.Tuple, ast.List)):
            self.count += 1
            if len(node.elts) > 64:
                raise self.fail(node, "expr-too-large", "expected at most 64 items in a literal list")
            for elt in node.elts:
                if not isinstance(elt, ast.Constant):
                    raise self.fail(elt, "expr-forbidden", "a literal list may hold only literals")
                self.check(elt, depth + 1)
            return frozenset({"list"})
        types = self.check(node, depth)
        if types != {STR}:
            raise self.fail(node, "expr-type", "'in' needs a string or a literal list on its right")
        return types

    def _IfExp(self, node: ast.IfExp, depth: int) -> frozenset[str]:
        self.check(node.test, depth)
        return self.check(node.body, depth) | self.check(node.orelse, depth)

    def _Call(self, node: ast.Call, depth: int) -> frozenset[str]:
        if not isinstance(node.func, ast.Name):
            raise self.fail(node, "expr-forbidden", "only the built-in functions may be called")
        name = node.func.id
        if name.startswith("_"):
            raise self.fail(node, "expr-forbidden", f"names starting with '_' are not allowed, got {name!r}")
        if name not in FUNCTIONS:
            from engine.policy.problems import did_you_mean

            raise self.fail(node, "expr-unknown-function",
                            f"unknown function {name!r}{did_you_mean(name, FUNCTIONS)}; "
                            f"expected one of {', '.join(sorted(FUNCTIONS))}")
        if node.keywords:
            raise self.fail(node, "expr-forbidden", "keyword arguments are not allowed")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise self.fail(node, "expr-forbidden", "star arguments are not allowed")
        lo, hi = _ARITY[name]
        if not lo <= len(node.args) <= hi:
            raise self.fail(node, "expr-type", f"{name}() takes {lo} to {hi} arguments, got {len(node.args)}")
        for arg in node.args:
            self.numeric(arg, depth, f"argument of {name}()")
        if name == "round" and len(node.args) == 2 and not (
                isinstance(node.args[1], ast.Constant) and type(node.args[1].value) is int):
            raise self.fail(node.args[1], "expr-type", "round()'s digits must be a whole-number literal")
        return frozenset({NUM})

    def _Tuple(self, node: ast.Tuple, depth: int) -> frozenset[str]:
        raise self.fail(node, "expr-forbidden", "a literal list is allowed only on the right of 'in'")

    _List = _Tuple


class _Rewrite(ast.NodeTransformer):
    """Turn names into ``_n["name"]`` and function calls into their fixed table."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Load):
            key = ast.Constant(node.id)
            return ast.copy_location(ast.Subscript(ast.Name("_n", ast.Load()), key, ast.Load()), node)
        return node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        fname = node.func.id  # type: ignore[attr-defined]
        node.args = [self.visit(a) for a in node.args]
        node.func = ast.copy_location(ast.Name("_f_" + fname, ast.Load()), node.func)
        return node


_GLOBALS: dict[str, Any] = {"__builtins__": {}, **{"_f_" + k: v for k, v in FUNCTIONS.items()}}


def parse(source: str) -> ast.expr:
    if not isinstance(source, str) or not source.strip():
        raise ExprError("expr-syntax", "expected an expression, got an empty string")
    if len(source) > MAX_SOURCE:
        raise ExprError("expr-too-large", f"expected at most {MAX_SOURCE} characters, got {len(source)}")
    text = source.strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ExprError("expr-syntax", f"invalid syntax: {exc.msg}", max((exc.offset or 1) - 1, 0)) from None
    except (RecursionError, MemoryError, ValueError):
        raise ExprError("expr-too-large", "expression is nested too deeply") from None
    return tree.body


def compile_expression(source: str, names: Mapping[str, str]) -> Expression:
    """Check ``source`` against a context of typed ``names`` and compile it.

    ``names`` maps each name the expression may use to ``"number"`` or
    ``"string"``. Raises :class:`ExprError` with a stable problem code.
    """
    body = parse(source)
    checker = _Checker(names)
    checker.check(body)
    tree = ast.Expression(
        ast.Lambda(
            ast.arguments([], [ast.arg("_n")], None, [], [], None, []),
            _Rewrite().visit(body),
        )
    )
    ast.fix_missing_locations(tree)
    fn = eval(compile(tree, "<policy expression>", "eval"), dict(_GLOBALS))  # noqa: S307 - checked AST
    return Expression(source=source, names=frozenset(checker.used), fn=fn)


#: Context names that hold a fraction from 0 to 1 (besides every name ending in ``_rate``).
FRACTION_NAMES = frozenset({"availability"})
_SYMBOL = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}


def _fraction_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name) and (node.id.endswith("_rate") or node.id in FRACTION_NAMES):
        return node.id
    return None


def _number(node: ast.AST) -> float | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    return None


def unit_warnings(source: str) -> list[ExprError]:
    """``expr-rate-unit`` warnings of a checked expression: a rate compared with a number above 1.

    ``error_rate > 20`` was meant as 20% and can never hold, since rates are fractions from 0 to 1.
    """
    found: list[ExprError] = []
    for node in ast.walk(parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        left = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            for name_node, num_node in ((left, right), (right, left)):
                name, number = _fraction_name(name_node), _number(num_node)
                if name is not None and number is not None and 1 < number <= 100 and type(op) in _SYMBOL:
                    text = ast.unparse(ast.Compare(left, [op], [right]))
                    found.append(ExprError(
                        "expr-rate-unit",
                        f"{name} is a fraction from 0 to 1, so {text!r} compares it with a percent: "
                        f"write {round(number / 100, 9):g} for {number:g}%",
                        getattr(num_node, "col_offset", 0)))
            left = right
    return found


def check_template(template: str, names: Mapping[str, str]) -> ExprError | None:
    """Check a message template's ``{name}`` / ``{name:spec}`` placeholders."""
    from engine.policy.templating import TemplateError, placeholders

    try:
        for name, _spec in placeholders(template):
            if name not in names:
                from engine.policy.problems import did_you_mean

                return ExprError("template-unknown-name",
                                 f"unknown name {{{name}}} in template{did_you_mean(name, names)}")
    except TemplateError as exc:
        return ExprError("template-syntax", str(exc))
    return None

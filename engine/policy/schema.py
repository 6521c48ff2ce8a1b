"""JSON Schema validation of policy documents, with located problems.

Each policy file declares ``kind`` and ``version``; the kind picks
``schemas/<kind>.schema.json`` (draft 2020-12). jsonschema's errors are
turned into stable problem codes that point at the offending key or value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from engine.policy.problems import Problem, did_you_mean
from engine.policy.resources import resource_dir
from engine.policy.yamlread import Document
from engine.text import redact_uri

KINDS: tuple[str, ...] = (
    "breakers",
    "budgets",
    "errors",
    "models",
    "monitoring",
    "recommendations",
    "report",
    "routing",
    "storage",
)

_CODES = {
    "type": "wrong-type",
    "enum": "invalid-value",
    "const": "invalid-value",
    "minimum": "out-of-range",
    "maximum": "out-of-range",
    "exclusiveMinimum": "out-of-range",
    "exclusiveMaximum": "out-of-range",
    "pattern": "invalid-format",
    "minLength": "too-few-items",
    "maxLength": "too-many-items",
    "minItems": "too-few-items",
    "maxItems": "too-many-items",
    "minProperties": "too-few-items",
    "maxProperties": "too-many-items",
    "uniqueItems": "duplicate-item",
}
_JSON_TYPES = {
    dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
    int: "an integer", float: "a number", type(None): "null",
}


@cache
def schema(kind: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((resource_dir("schemas") / f"{kind}.schema.json").read_text("utf-8"))
    return data


@cache
def validator(kind: str) -> Draft202012Validator:
    return Draft202012Validator(schema(kind))


def _got(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    what = _JSON_TYPES.get(type(value), type(value).__name__)
    return f"{what} {text}" if not isinstance(value, (dict, list)) else what


def _expected_type(t: Any) -> str:
    names = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
             "number": "a number", "boolean": "true or false", "null": "null"}
    ts = t if isinstance(t, list) else [t]
    return " or ".join(names.get(str(x), str(x)) for x in ts)


def _shown(value: Any, kind: str) -> Any:
    """A value as a problem may show it: a URI's credentials redacted (any string of a storage file)."""
    if isinstance(value, str) and "@" in value and (kind == "storage" or "://" in value):
        return redact_uri(value)
    return value


def _message(err: ValidationError, kind: str) -> str:
    v, val, inst = err.validator, _any(err.validator_value), _shown(_any(err.instance), kind)
    if v == "type":
        return f"expected {_expected_type(val)}, got {_got(inst)}"
    if v == "enum":
        opts = ", ".join(repr(o) for o in val)
        return f"expected one of {opts}, got {_got(inst)}{did_you_mean(str(inst), map(str, val))}"
    if v == "const":
        return f"expected {val!r}, got {_got(inst)}"
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[str(v)]
        unit = " (a fraction from 0 to 1: 0.5 is 50%)" if _any(err.schema).get("x-unit") == "fraction" else ""
        return f"expected a number {op} {val}{unit}, got {inst!r}"
    if v == "pattern":
        return f"expected a string matching {val}, got {inst!r}"
    if v in ("minItems", "minProperties"):
        return f"expected at least {val} item{'s' if val != 1 else ''}, got {len(inst)}"
    if v in ("maxItems", "maxProperties"):
        return f"expected at most {val} item{'s' if val != 1 else ''}, got {len(inst)}"
    if v == "minLength":
        return f"expected at least {val} character{'s' if val != 1 else ''}, got {len(inst)}"
    if v == "maxLength":
        return f"expected at most {val} characters, got {len(inst)}"
    if v == "uniqueItems":
        return "expected every item once, got a repeated item"
    raw, text = _any(err.instance), str(err.message)
    if isinstance(raw, str) and raw != inst:  # jsonschema's own message holds the value as given
        text = text.replace(repr(raw), repr(inst)).replace(raw, inst)
    return text


_PERCENT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*$")


def _belongs_below(schema: dict[str, Any], key: str) -> str:
    """A hint when ``key``, unknown here, is a setting one level down: it lost its indentation."""
    for name, sub in schema.get("properties", {}).items():
        if not isinstance(sub, dict):
            continue
        entries = sub.get("additionalProperties")
        if isinstance(entries, dict) and key in entries.get("properties", {}):
            return f"; {key!r} is a setting of each entry of {name!r}: indent it under the entry it belongs to"
        if key in sub.get("properties", {}):
            return f"; {key!r} is a setting under {name!r}: indent it there"
    return ""


def _moved_key(doc: Document, err: ValidationError, path: tuple[Any, ...]) -> str | None:
    """A setting that lost its indentation and now names an entry: ``max_in_flight: 128`` one level
    up reads as a model named 'max_in_flight'. Says which key changed meaning, and where it belongs."""
    if err.validator != "type" or len(path) < 2 or _any(err.validator_value) != "object":
        return None
    name, parent_path = path[-1], path[:-1]
    if not isinstance(name, str) or name not in _any(err.schema).get("properties", {}):
        return None
    parent: Any = doc.data
    for step in parent_path:
        parent = parent[step]
    names = list(parent)
    above = next((n for n in reversed(names[: names.index(name)]) if isinstance(parent[n], dict)), None)
    where = ".".join(map(str, parent_path))
    fix = (f"indent it under {above!r}, with that entry's other keys" if above
           else "indent it under the entry it belongs to")
    return (f"{name!r} is a setting of each entry of {where!r}, but it is indented as an entry itself, so it "
            f"became an entry named {name!r} with the value {_got(_any(err.instance))} (an entry must be a "
            f"mapping): {fix}")


def _rate_unit(err: ValidationError, key: str) -> str | None:
    """The ``rate-unit`` message for a fraction written as a percent (``50`` or ``"50%"``), else None."""
    if _any(err.schema).get("x-unit") != "fraction":
        return None
    inst = _any(err.instance)
    if err.validator in ("maximum", "exclusiveMaximum") and isinstance(inst, (int, float)) and 1 < inst <= 100:
        percent, got = float(inst), repr(inst)
    elif err.validator == "type" and isinstance(inst, str) and (m := _PERCENT.match(inst)):
        percent, got = float(m.group(1)), f"the string {inst!r}"
    else:
        return None
    return f"{key} is a fraction from 0 to 1: write {round(percent / 100, 9):g} for {percent:g}%, got {got}"


def _any(value: object) -> Any:
    """jsonschema's stubs type error fields as ``Any | Unset``; they are set on real errors."""
    return value


def _problems(doc: Document, err: ValidationError) -> Iterator[Problem]:
    kind = str(doc.data.get("kind"))
    path = tuple(err.absolute_path)
    instance, schema = _any(err.instance), _any(err.schema)
    if err.validator == "additionalProperties" and isinstance(instance, dict):
        known = set(schema.get("properties", {}))
        for key in instance:
            if key not in known:
                allowed = ", ".join(sorted(known))
                yield doc.problem(path + (key,), "unknown-key",
                                  f"unknown key {key!r}{did_you_mean(key, known)}; expected one of: {allowed}"
                                  f"{_belongs_below(schema, key)}", key=True)
    elif err.validator == "required" and isinstance(instance, dict):
        for key in _any(err.validator_value):
            if key not in instance:
                yield doc.problem(path, "missing-key", f"missing required key {key!r}", key=True)
    elif "propertyNames" in err.schema_path:
        yield doc.problem(path + (instance,), _CODES.get(str(err.validator), "schema-violation"),
                          f"name {instance!r}: {_message(err, kind)}", key=True)
    elif err.validator == "uniqueItems" and isinstance(instance, list):
        seen: list[Any] = []
        for i, item in enumerate(instance):
            if item in seen:
                yield doc.problem(path + (i,), "duplicate-item", f"expected every item once, got {item!r} again")
                break
            seen.append(item)
    elif path == ("version",) and err.validator == "const":
        yield doc.problem(path, "unsupported-version",
                          f"expected version {err.validator_value}, got {_got(_shown(err.instance, kind))}")
    elif (shape := _moved_key(doc, err, path)) is not None:
        yield doc.problem(path, "wrong-type", shape, key=True)
    elif err.validator == "not" and _any(err.validator_value) == {"const": True}:
        yield doc.problem(path, "invalid-value", f"expected a mapping of settings or false, got {_got(instance)}")
    elif path and (unit := _rate_unit(err, str(path[-1]))) is not None:
        yield doc.problem(path, "rate-unit", unit)
    else:
        yield doc.problem(path, _CODES.get(str(err.validator), "schema-violation"), _message(err, kind))


def _kind_problem(doc: Document) -> Problem | None:
    data = doc.data
    if not isinstance(data, dict):
        return doc.problem((), "wrong-type", f"expected a mapping with 'kind' and 'version', got {_got(data)}")
    if "kind" not in data:
        return doc.problem((), "missing-key",
                           f"missing required key 'kind'; expected one of: {', '.join(KINDS)}", key=True)
    kind = data["kind"]
    if kind not in KINDS:
        return doc.problem(("kind",), "unknown-kind",
                           f"expected one of {', '.join(KINDS)}, got {_got(kind)}{did_you_mean(str(kind), KINDS)}")
    return None


def validate_kind(doc: Document, kind: str) -> list[Problem]:
    """Every problem of ``doc`` against ``schemas/<kind>.schema.json``: for file kinds that are not
    part of a policy set (policy tests)."""
    problems: dict[Problem, None] = {}
    for err in validator(kind).iter_errors(doc.data):
        problems.update(dict.fromkeys(_problems(doc, err)))
    return list(problems)


def validate(doc: Document) -> list[Problem]:
    """Every schema problem of one document (its kind picks the schema)."""
    first = _kind_problem(doc)
    if first is not None:
        return [first]
    problems: dict[Problem, None] = {}
    for err in validator(doc.data["kind"]).iter_errors(doc.data):
        problems.update(dict.fromkeys(_problems(doc, err)))
    return list(problems)

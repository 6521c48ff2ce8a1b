"""Located validation problems and the stable codes they carry.

Every problem the loader or the checks find is a :class:`Problem`: where
(file, line, column, JSON path), a stable ``code`` and a message in the form
"expected X, got Y", with a "did you mean" where a name is close. Lines and
columns are 1-based, as editors show them. The codes are listed in
``docs/codes.md`` and in :data:`CODES`; tools may rely on them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: Every problem code, with a one-line meaning. Stable: codes are never reused.
CODES: dict[str, str] = {
    # reading the file
    "file-unreadable": "the file or directory could not be read",
    "file-too-large": "the file is larger than the size cap",
    "not-utf8": "the file is not valid UTF-8",
    "empty-file": "the file holds no YAML document",
    "yaml-syntax": "the YAML does not parse",
    "multiple-documents": "a policy file holds exactly one YAML document",
    "duplicate-key": "a mapping names the same key twice",
    "too-deep": "the document nests deeper than the cap",
    "too-many-nodes": "the document (with aliases expanded) is larger than the cap",
    "recursive-alias": "an alias refers to a node that contains it",
    "bad-yaml-tag": "a YAML tag other than the standard scalar, sequence and mapping ones",
    "no-policy-files": "the directory holds no .yaml or .yml file",
    # the schema
    "unknown-kind": "kind names no known policy file kind",
    "unsupported-version": "the file's format version is not supported",
    "missing-key": "a required key is absent",
    "unknown-key": "a key the schema does not define",
    "wrong-type": "a value has the wrong type",
    "invalid-value": "a value is not one of the allowed ones",
    "out-of-range": "a number is outside its allowed range",
    "invalid-format": "a string does not match the required form",
    "too-few-items": "a list or mapping has fewer items than required",
    "too-many-items": "a list or mapping has more items than allowed",
    "duplicate-item": "a list names the same item twice",
    "schema-violation": "any other schema rule",
    # across files
    "duplicate-definition": "two files define the same model, tier, profile, budget or rule",
    "duplicate-singleton": "a file kind that may appear once appears twice",
    "unknown-model": "a reference to a model that is not defined",
    "unknown-tier": "a reference to a tier that is not defined",
    "unknown-profile": "a reference to a breaker profile that is not defined",
    "unknown-timezone": "a time zone name that the IANA database does not know",
    "missing-routing": "no routing file: no tier has candidates",
    "fallback-cycle": "tiers degrade to each other in a cycle",
    "unreachable-model": "a model that no tier lists as a candidate",
    "no-candidates": "a tier with no enabled candidate model",
    "duplicate-candidate": "a tier lists the same model twice",
    "threshold-order": "warn_at must be below exhaust_at, open_for_s at most max_open_for_s, etc.",
    "missing-field": "a value that must be given in this case is absent",
    # expressions
    "expr-syntax": "an expression does not parse",
    "expr-forbidden": "an expression uses syntax that is not allowed",
    "expr-unknown-name": "an expression uses a name that does not exist in its context",
    "expr-unknown-function": "an expression calls a function that does not exist",
    "expr-too-large": "an expression, literal or string is larger than allowed",
    "expr-type": "an expression applies an operator to values of the wrong type",
    "template-unknown-name": "a message template names a value that does not exist",
    "template-syntax": "a message template is malformed",
}


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a policy set, with its location."""

    file: str
    line: int
    col: int
    code: str
    message: str
    path: tuple[str | int, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.code not in CODES:  # a programming error, caught by the tests
            raise ValueError(f"unknown problem code {self.code!r}")

    def format(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.code}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "code": self.code,
            "message": self.message,
            "path": "/" + "/".join(str(p) for p in self.path),
        }


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(name), sorted(set(choices)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def sort_problems(problems: Iterable[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.file, p.line, p.col, p.code, p.message))

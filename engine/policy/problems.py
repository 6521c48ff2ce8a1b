"""Located validation problems and the stable codes they carry.

Every problem the loader or the checks find is a :class:`Problem`: where
(file, line, column, JSON path), a stable ``code`` and a message in the form
"expected X, got Y", with a "did you mean" where a name is close. Lines and
columns are 1-based, as editors show them. The codes are listed in
``docs/codes.md`` and in :data:`CODES`; tools may rely on them.

Each code has a severity (:data:`SEVERITIES`): an ``error`` makes the set
invalid, a ``warning`` (a model no tier lists, a profile no model uses, a rate
compared with a number in the wrong unit) is reported but the set still loads.
"""

from __future__ import annotations

import bisect
import difflib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.text import printable

#: Every problem code, with a one-line meaning. Stable: codes are never reused.
CODES: dict[str, str] = {
    # reading the file
    "file-unreadable": "a policy file or directory could not be read: missing, a dangling or looping symbolic "
                       "link, no permission, or not a regular file (a directory, pipe or device named *.yaml)",
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
    "unknown-error-class": "an error matching rule names an error class that is not defined",
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
    # units
    "rate-unit": "a rate or threshold written in percent where the policy takes a fraction from 0 to 1",
    "expr-rate-unit": "an expression compares a rate (a fraction from 0 to 1) with a number above 1",
    # warnings about what the set leaves unused
    "unused-profile": "a breaker profile that no model uses",
}

#: The codes that are warnings: reported, but the set still loads (``--strict`` makes them fail).
WARNINGS: frozenset[str] = frozenset({"unreachable-model", "unused-profile", "expr-rate-unit"})

#: Every code's severity: ``error`` or ``warning``.
SEVERITIES: dict[str, str] = {code: "warning" if code in WARNINGS else "error" for code in CODES}


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

    @property
    def severity(self) -> str:
        """``error`` (the set is invalid) or ``warning`` (reported; the set still loads)."""
        return SEVERITIES[self.code]

    @property
    def is_error(self) -> bool:
        return self.code not in WARNINGS

    def format(self) -> str:
        """``file:line:col: code: message``, one line, `` (warning)`` appended to a warning: control
        characters in the file name and the message are shown escaped (``\\x1b``, ``\\n``), so the
        text is safe for a terminal."""
        tail = " (warning)" if self.code in WARNINGS else ""
        return f"{printable(self.file)}:{self.line}:{self.col}: {self.code}: {printable(self.message)}{tail}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "path": "/" + "/".join(str(p) for p in self.path),
        }


#: A "did you mean" compares the unknown name with at most this many names: with all of them when
#: there are no more, else with those sharing the most three-letter pieces with the unknown one,
#: then the longest prefix plus suffix ...
COMPARED = 6
#: ... drawn from the names holding one of its pieces that at most this many names hold ...
COMMON = 64
#: ... and from this many neighbours on each side of it in the names sorted by prefix and in the
#: names sorted by suffix (a typo leaves one end or the other intact).
NEIGHBOURS = 3


def _pieces(name: str) -> set[str]:
    """The three-letter pieces of ``name``, its ends marked."""
    padded = f"\0{name}\0"
    return {padded[i:i + 3] for i in range(len(padded) - 2)}


def _ends(a: str, b: str) -> int:
    """How many leading plus trailing characters ``a`` and ``b`` share (none counted twice)."""
    most = min(len(a), len(b))
    head = 0
    while head < most and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < most - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    return head + tail


class Suggester:
    """The closest of a fixed set of names to an unknown one, with bounded work per lookup.

    difflib compares a pair of names in up to tens of microseconds, so
    comparing each of N unknown names with each of N known ones took minutes
    for a few thousand. A suggester compares at most ``COMPARED`` names per
    lookup, picked cheaply from indexes built once, and remembers each
    answer, so a policy set with thousands of broken references still
    validates in a fraction of a second.
    """

    __slots__ = ("_answers", "_backward", "_forward", "_longest", "_names", "_pieces")

    def __init__(self, choices: Iterable[str]) -> None:
        self._names = sorted(set(map(str, choices)))
        self._longest = max(map(len, self._names), default=0)
        self._answers: dict[str, str | None] = {}
        self._pieces: dict[str, list[str]] = {}
        self._forward: list[tuple[str, str]] = []
        self._backward: list[tuple[str, str]] = []
        if len(self._names) > COMPARED:
            for name in self._names:
                for piece in _pieces(name.casefold()):
                    self._pieces.setdefault(piece, []).append(name)
            self._forward = sorted((n.casefold(), n) for n in self._names)
            self._backward = sorted((n.casefold()[::-1], n) for n in self._names)

    def closest(self, name: str) -> str | None:
        """The closest name (difflib ratio at least 0.6), or ``None``."""
        name = str(name)
        if name not in self._answers:
            if len(name) * 0.6 > 1.4 * self._longest:  # no name could reach a ratio of 0.6
                pool = []
            elif self._forward:
                pool = self._near(name)
            else:
                pool = self._names
            close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
            self._answers[name] = close[0] if close else None
        return self._answers[name]

    def hint(self, name: str) -> str:
        """`` (did you mean 'x'?)`` for the closest name, or an empty string."""
        close = self.closest(name)
        return f" (did you mean {close!r}?)" if close is not None else ""

    def _near(self, name: str) -> list[str]:
        key = name.casefold()
        shared: Counter[str] = Counter()
        for piece in _pieces(key):
            holders = self._pieces.get(piece, ())
            if len(holders) <= COMMON:
                shared.update(holders)
        pool = {n for n, _ in shared.most_common(2 * COMPARED)}
        for table, probe in ((self._forward, key), (self._backward, key[::-1])):
            i = bisect.bisect_left(table, (probe,))
            pool.update(n for _, n in table[max(0, i - NEIGHBOURS): i + NEIGHBOURS])
        return sorted(pool, key=lambda n: (-shared[n], -_ends(key, n.casefold()), n))[:COMPARED]


def did_you_mean(name: str, choices: Iterable[str] | Suggester) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string.

    Pass a :class:`Suggester` when many names are looked up in the same choices.
    """
    suggester = choices if isinstance(choices, Suggester) else Suggester(choices)
    return suggester.hint(name)


def sort_problems(problems: Iterable[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.file, p.line, p.col, p.code, p.message))

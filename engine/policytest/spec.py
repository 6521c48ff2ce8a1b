"""Read policy test files (``*_test.yaml``, kind ``policy_test``) into checked test cases.

A file is parsed with positions (:mod:`engine.policy.yamlread`) and validated
against ``schemas/policy_test.schema.json``; every problem is located like a
policy problem. Times are resolved here: ``at`` is seconds or a duration after
the test's start (``90``, ``30s``, ``1h30m``) or a local clock time of the
start's day (``09:30``), and the start is a local time in the test's zone.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.policy.loader import read_file
from engine.policy.problems import Problem, did_you_mean
from engine.policy.schema import validate_kind
from engine.policy.yamlread import Document, YamlProblem, read

KIND = "policy_test"
SUFFIXES = ("_test.yaml", "_test.yml")
DEFAULT_START = "2026-01-01T00:00:00"

GIVEN_KEYS = ("model", "tier", "reload", "force", "trace")
EXPECT_KEYS = ("decide", "breaker", "budget", "emitted", "not_emitted", "anomaly", "recommended",
               "not_recommended")

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_CLOCK = re.compile(r"^([0-2][0-9]):([0-5][0-9])(?::([0-5][0-9]))?$")


@dataclass(frozen=True, slots=True)
class Step:
    """One scripted step or expectation: when (seconds after the start), where (line), and what."""

    at: float
    line: int
    kind: str  # a key of GIVEN_KEYS or EXPECT_KEYS ("emitted" covers not_emitted, ...)
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TestCase:
    file: str
    name: str
    line: int
    start: float  # UNIX epoch seconds
    timezone: str
    given: tuple[Step, ...]
    expect: tuple[Step, ...]
    base: Path  # the test file's directory: relative paths start here

    @property
    def id(self) -> str:
        return f"{self.file}::{self.name}"


@dataclass(slots=True)
class TestFile:
    path: str
    policies: Path
    cases: list[TestCase] = field(default_factory=list)


def duration(value: float | str) -> float:
    """Seconds of a schema-valid duration: a number, or ``1h30m``-style parts."""
    if isinstance(value, (int, float)):
        return float(value)
    return sum(float(n) * _UNIT[u] for n, u in _PART.findall(value))


def test_files(paths: list[str]) -> tuple[list[Path], list[Problem]]:
    """The test files named by ``paths``: files as given, directories searched for ``*_test.yaml``."""
    found: list[Path] = []
    problems: list[Problem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.name.endswith(SUFFIXES) and p.is_file())
            if not inside:
                problems.append(Problem(str(path), 1, 1, "file-unreadable",
                                        "expected policy test files (*_test.yaml) in this directory or below, "
                                        "found none"))
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            problems.append(Problem(str(path), 1, 1, "file-unreadable", "no such file or directory"))
    return found, problems


def load(path: Path) -> tuple[TestFile | None, list[Problem]]:
    """One test file's cases, or the problems that keep it from running."""
    file = str(path)
    try:
        doc = read(file, read_file(path))
    except YamlProblem as exc:
        return None, [exc.problem]
    data = doc.data
    if not isinstance(data, dict) or data.get("kind") != KIND:
        got = data.get("kind") if isinstance(data, dict) else None
        return None, [doc.problem(("kind",), "unknown-kind",
                                  f"expected a policy test file with kind: {KIND}, got {got!r}")]
    problems = _discriminate(doc) or validate_kind(doc, KIND)
    if problems:
        return None, problems
    policies = (path.parent / data.get("policies", "..")).resolve()
    out = TestFile(file, policies)
    for i, raw in enumerate(data["tests"]):
        case = _case(doc, path, i, raw, problems)
        if case is not None:
            out.cases.append(case)
    names = [c.name for c in out.cases]
    for i, case in enumerate(out.cases):
        if case.name in names[:i]:
            problems.append(doc.problem(("tests", i, "name"), "duplicate-definition",
                                        f"test {case.name!r} is already defined in this file; names are unique "
                                        f"per file: rename one"))
    return (None if problems else out), problems


def _discriminate(doc: Document) -> list[Problem]:
    """A located problem for each step or expectation that says none of what it is."""
    problems = []
    tests = doc.data.get("tests")
    if not isinstance(tests, list):
        return []
    for i, test in enumerate(tests):
        if not isinstance(test, dict):
            continue
        for section, keys in (("given", GIVEN_KEYS), ("expect", EXPECT_KEYS)):
            items = test.get(section)
            for j, item in enumerate(items if isinstance(items, list) else ()):
                if isinstance(item, dict) and not any(k in item for k in keys):
                    unknown = next((k for k in item if k != "at"), "")
                    problems.append(doc.problem(
                        ("tests", i, section, j), "missing-key",
                        f"expected one of {', '.join(keys)} in this {section} entry"
                        f"{did_you_mean(str(unknown), keys) if unknown else ''}", key=True))
    return problems


def _case(doc: Document, path: Path, i: int, raw: dict[str, Any], problems: list[Problem]) -> TestCase | None:
    where = ("tests", i)
    tz_name = raw.get("timezone", "UTC")
    try:
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(doc.problem(where + ("timezone",), "unknown-timezone",
                                    f"expected an IANA time zone such as UTC or Europe/Berlin, got {tz_name!r}"))
        return None
    start_text = raw.get("start", DEFAULT_START)
    try:
        local = datetime.fromisoformat(start_text.replace(" ", "T"))
    except ValueError:
        problems.append(doc.problem(where + ("start",), "invalid-format",
                                    f"expected a date and time such as 2026-01-01T09:00, got {start_text!r}"))
        return None
    start = local.replace(tzinfo=tz).timestamp()
    midnight = local.replace(hour=0, minute=0, second=0, tzinfo=tz).timestamp()

    def at(section: str, j: int, value: float | str, key: str = "at") -> float:
        if isinstance(value, str) and (m := _CLOCK.match(value)):
            t = datetime.fromtimestamp(midnight, tz).replace(hour=int(m.group(1)), minute=int(m.group(2)),
                                                             second=int(m.group(3) or 0)).timestamp() - start
            if t < 0:
                problems.append(doc.problem(where + (section, j, key), "out-of-range",
                                            f"expected a time at or after the test's start {local:%H:%M:%S}, "
                                            f"got {value!r}"))
            return max(t, 0.0)
        return duration(value)

    def steps(section: str, keys: tuple[str, ...]) -> tuple[Step, ...]:
        out = []
        for j, item in enumerate(raw.get(section, ())):
            kind = next(k for k in keys if k in item)
            data = dict(item)
            if "since" in data:
                data["since"] = at(section, j, data["since"], "since")
            line, _ = doc.where(where + (section, j))
            out.append(Step(at(section, j, item["at"]), line, kind, data))
        return tuple(out)

    line, _ = doc.where(where)
    return TestCase(str(path), raw["name"], line, start, tz_name, steps("given", GIVEN_KEYS),
                    steps("expect", EXPECT_KEYS), path.parent)


def relative(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)

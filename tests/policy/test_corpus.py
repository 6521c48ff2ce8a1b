"""Exact-trace corpus of invalid policy files (in the style of cfgv's tests).

Layout
------
``tests/policy/corpus/base/``
    A small, complete and VALID policy set, one file per kind, each named
    ``<kind>.yaml``. ``test_base_is_valid`` keeps it valid.

``tests/policy/corpus/invalid/<case>.yaml``
    One invalid policy file per case. Its header comments declare what
    ``engine.policy.loader.check`` must report, exactly:

    ``# expect: <line>:<col> <code>``
        a problem located in the case file itself;
    ``# expect: <base-file.yaml>:<line>:<col> <code>``
        a problem located in a base file (e.g. an unreachable-model that the
        case causes in ``models.yaml``);
    ``# expect-message: <text>``
        (any number) ``<text>`` must appear in some problem's message, e.g.
        ``did you mean 'max_in_flight'``;
    ``# keep-base: true``
        do not remove the base file of the case's kind (see below);
    ``# remove-base: <base-file.yaml>``
        (any number) also remove that base file (e.g. ``routing.yaml`` for
        missing-routing);
    ``# xfail: <reason>``
        the expectation states what the engine SHOULD report, and the engine
        currently does not: a suspected engine bug. The case is a strict
        xfail, so it starts failing (and must be un-marked) once fixed.

    Every case must declare at least one ``# expect:`` line.

How a case runs
---------------
The base set is copied into a fresh ``tmp_path``. The case's kind is read
from its text with ``^kind:\\s*(\\S+)``; when that names the kind of a base
file, the base file ``<kind>.yaml`` is REMOVED, so the case stands in for it
-- unless the case says ``# keep-base: true``, which is how a case adds a
second file of a kind (duplicate-definition, duplicate-singleton). Then the
case is written as ``<case>.yaml`` and ``check(tmp_path)`` runs. The sorted
list of ``(file basename, line, col, code)`` must equal the expected list.

Files are checked in name order, so "first defined" / "defined again" depend
on names: cases that add a second file of a kind are named ``semantic-...``,
which sorts after every base file name.

Lines and columns are 1-based and point where the offending key or value
starts, as an editor shows it.

Cases that cannot be plain text files (non-UTF-8 bytes, NUL, a BOM, huge or
deeply nested input, alias bombs) are generated in ``HOSTILE`` below and run
the same way; each also must be answered in well under a second.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.policy.loader import check
from engine.policy.problems import CODES, Problem

CORPUS = Path(__file__).parent / "corpus"
BASE = CORPUS / "base"
INVALID = CORPUS / "invalid"
BASE_FILES = {p.name for p in BASE.glob("*.yaml")}

_KIND = re.compile(r"^kind:\s*(\S+)", re.MULTILINE)
_EXPECT = re.compile(
    r"^#\s*expect:\s*(?:(?P<file>[^\s:]+\.ya?ml):)?(?P<line>\d+):(?P<col>\d+)\s+(?P<code>[a-z0-9-]+)\s*$"
)
_MESSAGE = re.compile(r"^#\s*expect-message:\s*(?P<text>.+?)\s*$")
_KEEP = re.compile(r"^#\s*keep-base:\s*(?P<flag>true|false)\s*$")
_REMOVE = re.compile(r"^#\s*remove-base:\s*(?P<file>\S+)\s*$")
_XFAIL = re.compile(r"^#\s*xfail:\s*(?P<reason>.+?)\s*$")

Trace = tuple[str, int, int, str]


class TraceMismatch(AssertionError):
    """The engine's problems differ from a case's declared expectation.

    xfail cases are expected to fail with exactly this (``raises=``), so any
    other failure -- a crash, a timeout, an empty message -- still fails.
    """


@dataclass
class Case:
    name: str
    data: bytes
    expected: list[Trace]
    messages: list[str] = field(default_factory=list)
    keep_base: bool = False
    remove: list[str] = field(default_factory=list)
    xfail: str | None = None

    @property
    def filename(self) -> str:
        return f"{self.name}.yaml"

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")

    def removed_base_files(self) -> set[str]:
        removed = set(self.remove)
        m = _KIND.search(self.text)
        if m and not self.keep_base and f"{m.group(1)}.yaml" in BASE_FILES:
            removed.add(f"{m.group(1)}.yaml")
        return removed


def parse_case(name: str, data: bytes) -> Case:
    """A case from its bytes: the expectations come from its header comments."""
    case = Case(name, data, [])
    for line in case.text.splitlines():
        if m := _EXPECT.match(line):
            case.expected.append((m["file"] or case.filename, int(m["line"]), int(m["col"]), m["code"]))
        elif m := _MESSAGE.match(line):
            case.messages.append(m["text"])
        elif m := _KEEP.match(line):
            case.keep_base = m["flag"] == "true"
        elif m := _REMOVE.match(line):
            case.remove.append(m["file"])
        elif m := _XFAIL.match(line):
            case.xfail = m["reason"]
        elif line.lstrip().startswith("# expect"):
            raise AssertionError(f"{name}: malformed expectation line {line!r}")
    case.expected.sort()
    return case


def run_case(case: Case, tmp: Path) -> tuple[list[Problem], float]:
    """Lay out base + case in ``tmp``; check it; return the problems and seconds taken."""
    shutil.copytree(BASE, tmp, dirs_exist_ok=True)
    for name in case.removed_base_files():
        assert name in BASE_FILES, f"{case.name}: no base file {name!r} to remove"
        (tmp / name).unlink()
    (tmp / case.filename).write_bytes(case.data)
    start = time.perf_counter()
    policy, problems = check(tmp)
    elapsed = time.perf_counter() - start
    if any(p.severity == "error" for p in problems):
        assert policy is None
    else:  # warnings alone: the set loads and carries them
        assert policy is not None and list(policy.warnings) == problems
    return problems, elapsed


def trace(problems: list[Problem]) -> list[Trace]:
    return sorted((Path(p.file).name, p.line, p.col, p.code) for p in problems)


def assert_case(case: Case, problems: list[Problem]) -> None:
    assert case.expected, f"{case.name}: declares no '# expect:' line"
    for p in problems:
        assert p.message.strip(), f"empty message: {p}"
        assert p.code in CODES
    shown = "\n".join(p.format() for p in problems)
    if trace(problems) != case.expected:
        got = trace(problems)
        raise TraceMismatch(f"expected {case.expected}\ngot      {got}\nengine reported:\n{shown}")
    messages = [p.message for p in problems]
    for text in case.messages:
        if not any(text in m for m in messages):
            raise TraceMismatch(f"no message contains {text!r}:\n{shown}")


# -- the text cases ---------------------------------------------------------

CASES = [parse_case(p.stem, p.read_bytes()) for p in sorted(INVALID.glob("*.yaml"))]


def _param(case: Case) -> object:
    marks = [pytest.mark.xfail(strict=True, raises=TraceMismatch, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.name, marks=marks)


def test_base_is_valid() -> None:
    assert BASE_FILES == {f"{k}.yaml" for k in (
        "models", "routing", "breakers", "budgets", "errors", "monitoring", "recommendations", "report")}
    policy, problems = check(BASE)
    assert [p.format() for p in problems] == []
    assert policy is not None
    assert set(policy.tiers) == {"L1", "L2"}


def test_corpus_is_large_enough() -> None:
    assert len(CASES) + len(HOSTILE) >= 45


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_invalid_case(case: Case, tmp_path: Path) -> None:
    problems, _ = run_case(case, tmp_path)
    assert_case(case, problems)


# -- generated (binary / hostile) cases ------------------------------------


def _deep_flow(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels + b"\n"


def _billion_laughs() -> bytes:
    lines = [b'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        refs = ", ".join([f"*{prev}"] * 10)
        lines.append(f"{cur}: &{cur} [{refs}]".encode())
    return b"\n".join(lines) + b"\n"


def _many_nodes(items: int) -> bytes:
    return b"kind: report\nversion: 1\nextra:\n" + b"  - 0\n" * items


# name -> (bytes, expected traces as "<line>:<col> <code>" in the case file,
#          xfail reason or None)
HOSTILE: dict[str, tuple[Callable[[], bytes], list[str], str | None]] = {
    # The bad byte 0xe9 (latin-1 'e acute') is the 8th character of line 5.
    "not-utf8": (lambda: b"kind: models\nversion: 1\nmodels:\n  gpt-4.1-nano:\n    caf\xe9: 1\n",
                 ["5:8 not-utf8"], None),
    # Line 1 is "# caf\u00e9 " then the bad byte: an editor shows it at column 8
    # (the two-byte UTF-8 'e acute' is one character).
    "not-utf8-after-multibyte": (lambda: "# café ".encode() + b"\xff\nkind: report\n",
                                 ["1:8 not-utf8"], None),
    # A UTF-8 BOM is not a character an editor counts: the bad byte is at 1:6.
    "not-utf8-after-bom": (lambda: b"\xef\xbb\xbfkind:\xff report\n", ["1:6 not-utf8"], None),
    "bom-only": (lambda: b"\xef\xbb\xbf", ["1:1 empty-file"], None),
    "zero-bytes": (lambda: b"", ["1:1 empty-file"], None),
    "too-large": (lambda: b"kind: report\nversion: 1\n" + b"# padding padding padding\n" * 45_000,
                  ["1:1 file-too-large"], None),
    # A NUL byte is valid UTF-8 but not allowed in YAML: it is the 9th
    # character of line 2.
    "nul-byte": (lambda: b"kind: report\nversion:\x00 1\n", ["2:9 yaml-syntax"], None),
    # 100,000 nested flow lists: the 33rd '[' is one level too deep.
    "deep-100000": (lambda: _deep_flow(100_000), ["1:33 too-deep"], None),
    # Block mappings nested 40 deep: the mapping on line 33 is level 33.
    "deep-block": (lambda: b"".join(b"  " * i + b"k:\n" for i in range(40)) + b"  " * 40 + b"v\n",
                   ["33:65 too-deep"], None),
    # Nodes with aliases expanded: a=11, b=111, c=1,111, d=11,111, together
    # 12,344 (12,350 with the root mapping and the keys a..e). Each *d on
    # line 5 adds 11,111: 45,683 after the 3rd, so the 4th (column 20) is the
    # first to pass 50,000.
    "billion-laughs": (_billion_laughs, ["5:20 too-many-nodes"], None),
    # 30,000 list items make about 30,000 nodes, well under the 50,000-node
    # cap: the only problem is the unknown key.
    "many-nodes-under-cap": (lambda: _many_nodes(30_000), ["3:1 unknown-key"], None),
}


def _hostile_param(name: str) -> object:
    make, expected, xfail = HOSTILE[name]
    header = "".join(f"# expect: {e}\n" for e in expected).encode()
    marks = [pytest.mark.xfail(strict=True, raises=TraceMismatch, reason=xfail)] if xfail else []
    return pytest.param(name, make, header, id=name, marks=marks)


@pytest.mark.parametrize(("name", "make", "header"), [_hostile_param(n) for n in HOSTILE])
def test_hostile_case(name: str, make: Callable[[], bytes], header: bytes, tmp_path: Path) -> None:
    data = make()
    case = parse_case(name, header)  # expectations only; the file is ``data`` as is
    case.data = data
    problems, elapsed = run_case(case, tmp_path)
    assert elapsed < 1.0, f"check took {elapsed:.2f} s"  # a hang guard, not a benchmark
    assert_case(case, problems)


# -- the command line ------------------------------------------------------

CLI_CASE = "semantic-unknown-model-candidate"


def _cli_commands(path: Path) -> list[list[str]]:
    cmds = [
        [sys.executable, "-m", "engine", "validate", "--format", "json", str(path)],
        [sys.executable, "-c", "from engine.cli.main import validate_main; raise SystemExit(validate_main())",
         "--format", "json", str(path)],
    ]
    script = shutil.which("validate-policies")
    if script:
        cmds.append([script, "--format", "json", str(path)])
    return cmds


def test_cli_matches_api(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == CLI_CASE)
    bad = tmp_path / "bad"
    problems, _ = run_case(case, bad)
    assert problems
    api = [p.to_dict() for p in problems]
    for cmd in _cli_commands(bad):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 1, (cmd, done.stdout, done.stderr)
        out = json.loads(done.stdout)
        assert out["valid"] is False
        assert out["problems"] == api, cmd
    good = tmp_path / "good"
    shutil.copytree(BASE, good)
    for cmd in _cli_commands(good):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, (cmd, done.stdout, done.stderr)
        out = json.loads(done.stdout)
        assert out["valid"] is True and out["problems"] == []


# -- every message, read ---------------------------------------------------
MESSAGES = CORPUS / "messages.txt"


def test_every_message_of_the_corpus_is_the_reviewed_one(tmp_path: Path) -> None:
    """Every problem every case produces, word for word, as reviewed in ``corpus/messages.txt``.

    A changed or new message shows up here as a diff to read (``UPDATE_GOLDEN=1`` writes the
    file anew; read the diff before committing it).
    """
    lines = []
    for case in CASES:
        where = tmp_path / case.name
        where.mkdir()
        problems, _ = run_case(case, where)
        for p in problems:
            text = p.format().replace(f"{where}/", "")
            if p.code == "yaml-syntax":  # the parser's own words differ between libyaml and pure Python
                text = re.sub(r" \([^()]*\)$", " (...)", text)
            lines.append(f"{case.name}: {text}")
    got = "\n".join(lines) + "\n"
    if os.environ.get("UPDATE_GOLDEN"):
        MESSAGES.write_text(got)
    assert got == MESSAGES.read_text(), "corpus messages changed (UPDATE_GOLDEN=1 to accept, then read the diff)"

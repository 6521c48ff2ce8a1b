"""Load a policy directory (or files) into one checked, immutable PolicySet.

The pipeline, shared by the engine, hot reload and ``validate-policies``:
read each ``*.yaml``/``*.yml`` file (size cap, UTF-8), parse it with
positions (:mod:`engine.policy.yamlread`), validate it against the JSON Schema of
its kind (:mod:`engine.policy.schema`), then compile the schema-valid documents
together with every cross-file check (:mod:`engine.policy.compile`). Every problem
of every file is collected; nothing is returned unless there are none.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from engine.errors import PolicyError
from engine.policy.compile import Compiler
from engine.policy.model import PolicySet
from engine.policy.problems import Problem, sort_problems
from engine.policy.schema import validate
from engine.policy.yamlread import MAX_BYTES, Document, YamlProblem, read

SUFFIXES = (".yaml", ".yml")


def _too_large(file: str, size: str) -> YamlProblem:
    return YamlProblem(Problem(file, 1, 1, "file-too-large", f"expected at most {MAX_BYTES} bytes, got {size}"))


def read_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of one policy file; a file over MAX_BYTES is refused before it is read.

    The size is checked on the open file first, and at most ``MAX_BYTES + 1`` bytes
    are ever read (a file growing meanwhile is caught too), so a huge or sparse
    file costs neither time nor memory. Raises YamlProblem (``file-too-large``)
    or OSError.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_BYTES:
            raise _too_large(str(path), str(size))
        raw = f.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise _too_large(str(path), f"more than {MAX_BYTES} (it grew while being read)")
    return raw


def file_stamp(path: str | os.PathLike[str]) -> bytes:
    """What identifies the content of one policy file, for telling that it changed.

    A digest of its first ``MAX_BYTES + 1`` bytes and its size; for a file over
    the cap (whose content is not read in full) also its inode and modification
    time. Never reads more than ``MAX_BYTES + 1`` bytes. Raises OSError.
    """
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        head = f.read(MAX_BYTES + 1)
    stamp = hashlib.sha256(head).digest() + str(st.st_size).encode()
    if len(head) > MAX_BYTES or st.st_size > MAX_BYTES:
        stamp += f":{st.st_ino}:{st.st_mtime_ns}".encode()
    return stamp


def policy_files(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[Problem]]:
    """The policy files named by ``paths`` (directories are expanded, not recursively)."""
    files: list[Path] = []
    problems: list[Problem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.suffix in SUFFIXES and not p.name.startswith(".") and p.is_file())
            if not found:
                problems.append(Problem(str(path), 1, 1, "no-policy-files",
                                        "expected .yaml or .yml policy files in this directory, found none"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            problems.append(Problem(str(path), 1, 1, "file-unreadable", "no such file or directory"))
    return files, problems


def check(paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> tuple[PolicySet | None, list[Problem]]:
    """Load and check; returns the set (or ``None``) and every problem, sorted."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files, problems = policy_files(paths)
    digest = hashlib.sha256()
    docs: list[Document] = []
    for path in files:
        name = str(path)
        try:
            raw = read_file(path)
        except OSError as exc:
            problems.append(Problem(name, 1, 1, "file-unreadable", exc.strerror or str(exc)))
            continue
        except YamlProblem as exc:
            problems.append(exc.problem)
            continue
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(raw).digest())
        try:
            doc = read(name, raw)
        except YamlProblem as exc:
            problems.append(exc.problem)
            continue
        found = validate(doc)
        problems.extend(found)
        if not found:
            docs.append(doc)
    if problems:  # cross-file checks on a partial set would only add noise
        return None, sort_problems(problems)
    compiler = Compiler(docs)
    policy = compiler.build(digest.hexdigest(), ", ".join(map(str, paths)), tuple(map(str, files)))
    return policy, sort_problems(compiler.problems)


def load_policies(paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> PolicySet:
    """The checked PolicySet of ``paths``; raises PolicyError with every problem."""
    policy, problems = check(paths)
    if policy is None or problems:
        raise PolicyError(problems)
    return policy

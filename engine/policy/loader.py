"""Load a policy directory (or files) into one checked, immutable PolicySet.

The pipeline, shared by the engine, hot reload and ``validate-policies``:
read each ``*.yaml``/``*.yml`` file (size cap, UTF-8), parse it with
positions (:mod:`engine.policy.yamlread`), validate it against the JSON Schema of
its kind (:mod:`engine.policy.schema`), then compile the schema-valid documents
together with every cross-file check (:mod:`engine.policy.compile`). Every problem
of every file is collected; nothing is returned unless there are none.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
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


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class _NotRegular(OSError):
    """An entry that is not a regular file (a directory, pipe, socket or device)."""

    def __init__(self, mode: int) -> None:
        self.what = next((what for test, what in _KINDS if test(mode)), "something other than a regular file")
        super().__init__(errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL, self.what)


def unreadable(path: str | os.PathLike[str], exc: OSError) -> Problem:
    """The ``file-unreadable`` problem of a policy file that ``exc`` kept from being read."""
    file = str(path)
    got = f"an error: {exc.strerror or exc}"
    if isinstance(exc, _NotRegular):
        got = exc.what + (" (directories inside a policy directory are not searched)" if exc.errno == errno.EISDIR
                          else "")
    elif exc.errno == errno.ENOENT and os.path.islink(path):
        try:
            got = f"a dangling symbolic link to {os.readlink(path)!r} (fix the link or remove it)"
        except OSError:
            got = "a dangling symbolic link (fix the link or remove it)"
    elif exc.errno == errno.ENOENT:
        got = "no such file (removed while the set was read?)"
    elif exc.errno == errno.ELOOP:
        got = "a symbolic link that loops (fix the link or remove it)"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        got = "a file this process may not read (permission denied)"
    return Problem(file, 1, 1, "file-unreadable", f"expected a readable policy file, got {got}")


def _open(path: str | os.PathLike[str]) -> tuple[int, os.stat_result]:
    """A descriptor of ``path`` and its status; raises OSError, _NotRegular for anything but a regular file.

    Opened non-blocking, so that a named pipe cannot hang the loader.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _NotRegular(st.st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of one policy file; raises YamlProblem when it cannot or must not be read.

    The size is checked on the open file first, and at most ``MAX_BYTES + 1`` bytes
    are ever read (a file growing meanwhile is caught too), so a huge or sparse
    file costs neither time nor memory (``file-too-large``). A dangling or looping
    symbolic link, a file without read permission, a directory, pipe or device
    is ``file-unreadable``.
    """
    try:
        fd, st = _open(path)
        with os.fdopen(fd, "rb") as f:
            if st.st_size > MAX_BYTES:
                raise _too_large(str(path), str(st.st_size))
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise YamlProblem(unreadable(path, exc)) from None
    if len(raw) > MAX_BYTES:
        raise _too_large(str(path), f"more than {MAX_BYTES} (it grew while being read)")
    return raw


def file_stamp(path: str | os.PathLike[str]) -> bytes:
    """What identifies the content of one policy file, for telling that it changed.

    A digest of its first ``MAX_BYTES + 1`` bytes and its size; for a file over
    the cap (whose content is not read in full) also its inode and modification
    time. Never reads more than ``MAX_BYTES + 1`` bytes. Raises OSError.
    """
    fd, st = _open(path)
    with os.fdopen(fd, "rb") as f:
        head = f.read(MAX_BYTES + 1)
    stamp = hashlib.sha256(head).digest() + str(st.st_size).encode()
    if len(head) > MAX_BYTES or st.st_size > MAX_BYTES:
        stamp += f":{st.st_ino}:{st.st_mtime_ns}".encode()
    return stamp


def policy_files(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[Problem]]:
    """The policy files named by ``paths`` (directories are expanded, not recursively).

    Every ``*.yaml``/``*.yml`` entry of a directory counts (names starting with a
    dot excepted), whatever it is: a dangling symbolic link or a directory so named
    is reported when it is read, never skipped, so a set is never judged without it.
    """
    files: list[Path] = []
    problems: list[Problem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            try:
                found = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and not p.name.startswith("."))
            except OSError as exc:
                problems.append(Problem(str(path), 1, 1, "file-unreadable",
                                        f"expected a policy directory that can be listed, got an error: "
                                        f"{exc.strerror or exc}"))
                continue
            if not found:
                problems.append(Problem(str(path), 1, 1, "no-policy-files",
                                        "expected .yaml or .yml policy files in this directory, found none"))
            files.extend(found)
        elif path.exists() or path.is_symlink():
            files.append(path)  # anything but a readable file is reported when it is read
        else:
            problems.append(Problem(str(path), 1, 1, "file-unreadable", "no such file or directory"))
    return files, problems


def check(paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> tuple[PolicySet | None, list[Problem]]:
    """Load and check; returns the set (``None`` when a problem is an error) and every problem, sorted.

    Problems of severity ``warning`` leave the set valid: it is returned with them, and also
    carries them as ``PolicySet.warnings``.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files, problems = policy_files(paths)
    digest = hashlib.sha256()
    docs: list[Document] = []
    for path in files:
        name = str(path)
        try:
            raw = read_file(path)
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
    """The checked PolicySet of ``paths``; raises PolicyError with every problem when one is an error.

    Warnings do not stop loading: the set carries them as ``PolicySet.warnings``.
    """
    policy, problems = check(paths)
    if policy is None:
        raise PolicyError(problems)
    return policy

"""Read one YAML policy file into plain data plus the location of every node.

The reader builds the document from the parser's event stream with an
explicit stack instead of PyYAML's recursive composer, so hostile input is
refused early and cheaply: a size cap before parsing, a nesting-depth cap and
an expanded-node cap (which stops alias bombs) while parsing, duplicate keys
with both places, recursive aliases, and non-standard tags. It uses libyaml's
parser when PyYAML was built with it.

Mapping keys are always taken as strings (so ``on:`` or ``3:`` stay names);
values resolve as YAML 1.1 scalars, as PyYAML's safe loader does, except that
timestamps stay strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml import SafeLoader as _PyLoader

from engine.policy.problems import Problem
from engine.policy.yamlhints import explain, marks

try:  # libyaml's parser, when available: an order of magnitude faster
    from yaml import CSafeLoader as _Loader

    _LIBYAML = True
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = _PyLoader  # type: ignore[assignment,misc]
    _LIBYAML = False

MAX_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 50_000

Path = tuple[str | int, ...]
_STD = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_STD + t for t in ("str", "int", "float", "bool", "null", "timestamp")}
_RESOLVER = yaml.resolver.Resolver()
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


@dataclass(slots=True)
class Document:
    """A parsed policy file: its data, and where each value and key starts."""

    file: str
    data: Any
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """Line and column (1-based) of the node at ``path``, or its nearest ancestor."""
        table = self.keys if key else self.values
        while path not in table and path not in self.values and path:
            path = path[:-1]
        return table.get(path) or self.values.get(path) or (1, 1)

    def problem(self, path: Path, code: str, message: str, *, key: bool = False) -> Problem:
        line, col = self.where(path, key=key)
        return Problem(self.file, line, col, code, message, path)


class YamlProblem(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.format())
        self.problem = problem


def _pos(mark: Any) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def decode(file: str, raw: bytes) -> str:
    """UTF-8 text of ``raw`` (a BOM is dropped); raises YamlProblem otherwise."""
    if len(raw) > MAX_BYTES:
        raise YamlProblem(
            Problem(file, 1, 1, "file-too-large",
                    f"expected at most {MAX_BYTES} bytes, got {len(raw)}")
        )
    body = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw  # a BOM is not text
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = body[: exc.start]
        line = before.count(b"\n") + 1
        line_start = body[before.rfind(b"\n") + 1: exc.start]
        col = len(line_start.decode("utf-8", "replace")) + 1  # columns count characters
        raise YamlProblem(
            Problem(file, line, col, "not-utf8",
                    f"expected UTF-8 text, got byte 0x{body[exc.start]:02x}")
        ) from None


class _Frame:
    __slots__ = ("value", "path", "pos", "size", "anchor", "key", "key_pos", "merges")

    def __init__(self, value: Any, path: Path, pos: tuple[int, int], anchor: str | None) -> None:
        self.value = value
        self.path = path
        self.pos = pos
        self.size = 1
        self.anchor = anchor
        self.key: str | None = None
        self.key_pos: tuple[int, int] | None = None
        self.merges: list[tuple[Any, tuple[int, int]]] = []


class _Builder:
    def __init__(self, file: str) -> None:
        self.doc = Document(file, None)
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[Any, int] | None] = {}
        self.nodes = 0
        self.done = False

    def fail(self, pos: tuple[int, int], code: str, message: str, path: Path = ()) -> None:
        raise YamlProblem(Problem(self.doc.file, pos[0], pos[1], code, message, path))

    def child_path(self) -> Path:
        if not self.stack:
            return ()
        top = self.stack[-1]
        if isinstance(top.value, list):
            return top.path + (len(top.value),)
        return top.path + (top.key,)  # type: ignore[operator]

    def scalar(self, ev: yaml.ScalarEvent) -> None:
        pos = _pos(ev.start_mark)
        top = self.stack[-1] if self.stack else None
        if top is not None and isinstance(top.value, dict) and top.key is None:
            self.take_key(ev, pos, top)
            return
        tag = ev.tag if ev.tag not in (None, "!") else None
        if tag is None:
            tag = _RESOLVER.resolve(yaml.ScalarNode, ev.value, ev.implicit)  # type: ignore[no-untyped-call]
            if tag == _STD + "str" and ev.implicit[0] and _FLOAT_12.match(ev.value):
                tag = _STD + "float"  # YAML 1.2 floats such as 1e6 and 2.5e-3
        if tag not in _SCALAR_TAGS:
            self.fail(pos, "bad-yaml-tag",
                      f"expected a plain scalar, got tag {tag!r}", self.child_path())
        if tag == _STD + "timestamp":
            value: Any = ev.value
        else:
            node = yaml.ScalarNode(tag, ev.value, ev.start_mark, ev.end_mark, ev.style)  # type: ignore[arg-type]
            try:
                value = _CONSTRUCTOR.yaml_constructors[tag](_CONSTRUCTOR, node)
            except (ValueError, yaml.YAMLError) as exc:
                self.fail(pos, "yaml-syntax", f"bad {tag.rsplit(':', 1)[-1]} value: {exc}")
        self.add(value, pos, 1, ev.anchor)

    def take_key(self, ev: yaml.ScalarEvent, pos: tuple[int, int], top: _Frame) -> None:
        if ev.tag not in (None, "!", _STD + "str"):
            self.fail(pos, "bad-yaml-tag", f"expected a plain string key, got tag {ev.tag!r}",
                      top.path)
        key = ev.value
        if key == "<<" and ev.implicit[0]:
            top.key, top.key_pos = "<<", pos
            return
        path = top.path + (key,)
        if key in top.value:
            first = self.doc.keys[path]
            self.fail(pos, "duplicate-key",
                      f"duplicate key {key!r}: first defined at line {first[0]} column {first[1]}",
                      path)
        top.key, top.key_pos = key, pos
        self.doc.keys[path] = pos

    def add(self, value: Any, pos: tuple[int, int], size: int, anchor: str | None, *, new: int = -1) -> None:
        """Attach a finished node; ``new`` is how many nodes it adds (``size`` unless its children
        were counted already, as a closing container's were)."""
        self.nodes += size if new < 0 else new
        if self.nodes > MAX_NODES:
            self.fail(pos, "too-many-nodes",
                      f"expected at most {MAX_NODES} nodes with aliases expanded")
        if anchor is not None:
            self.anchors[anchor] = (value, size)
        if not self.stack:
            self.doc.data = value
            self.doc.values[()] = pos
            return
        top = self.stack[-1]
        if isinstance(top.value, list):
            self.doc.values[top.path + (len(top.value),)] = pos
            top.value.append(value)
        elif top.key == "<<":
            top.merges.append((value, pos))
            top.key = None
        else:
            self.doc.values[top.path + (top.key,)] = pos  # type: ignore[operator]
            top.value[top.key] = value
            top.key = None
        top.size += size

    def start(self, ev: Any, container: Any) -> None:
        pos = _pos(ev.start_mark)
        top = self.stack[-1] if self.stack else None
        if top is not None and isinstance(top.value, dict) and top.key is None:
            self.fail(pos, "wrong-type", "expected a string key, got a mapping or list",
                      top.path)
        if len(self.stack) >= MAX_DEPTH:
            self.fail(pos, "too-deep", f"expected at most {MAX_DEPTH} levels of nesting",
                      self.child_path())
        want = _STD + ("map" if isinstance(container, dict) else "seq")
        if ev.tag not in (None, "!", want):
            self.fail(pos, "bad-yaml-tag", f"expected no tag, got {ev.tag!r}", self.child_path())
        if ev.anchor is not None:
            self.anchors[ev.anchor] = None  # open: an alias to it now is recursive
        self.stack.append(_Frame(container, self.child_path(), pos, ev.anchor))

    def end(self) -> None:
        frame = self.stack.pop()
        for merged, pos in frame.merges:
            for src in merged if isinstance(merged, list) else [merged]:
                if not isinstance(src, dict):
                    self.fail(pos, "wrong-type", "expected a mapping to merge with '<<'",
                              frame.path)
                for k, v in src.items():
                    frame.value.setdefault(k, v)
        self.add(frame.value, frame.pos, frame.size, frame.anchor, new=1)

    def alias(self, ev: yaml.AliasEvent) -> None:
        pos = _pos(ev.start_mark)
        if ev.anchor is None or ev.anchor not in self.anchors:
            self.fail(pos, "yaml-syntax", f"found undefined alias {ev.anchor!r}")
        entry = self.anchors[ev.anchor]  # type: ignore[index]  # checked above
        if entry is None:
            self.fail(pos, "recursive-alias",
                      f"alias *{ev.anchor} refers to a node that contains it")
        value, size = entry  # type: ignore[misc]
        top = self.stack[-1] if self.stack else None
        if top is not None and isinstance(top.value, dict) and top.key is None:
            self.fail(pos, "wrong-type", "expected a string key, got an alias", top.path)
        self.add(value, pos, size, None)


def parse(file: str, text: str) -> Document:
    """Parse one YAML document from ``text``; raises YamlProblem on the first problem.

    Newer libyaml builds (PyYAML >= 6.0.4) refuse nesting past 1000 levels while
    *scanning*, which runs up to 1024 characters ahead of the events this reader
    sees, so such a file would get libyaml's ``yaml-syntax`` at column 1001 before
    our own depth check could say ``too-deep`` at the 33rd level. When libyaml
    gives that error, the file is parsed again with PyYAML's pure-Python parser,
    which has no such cap, so the code and position are the same on every
    supported PyYAML.
    """
    try:
        return _parse(file, text, _Loader)
    except YamlProblem as exc:
        if not _LIBYAML or not exc.problem.message.endswith(_LIBYAML_DEPTH):
            raise
    return _parse(file, text, _PyLoader)


# the end of libyaml's own nesting-limit message ("while increasing flow level ...")
_LIBYAML_DEPTH = "exceeded maximum nesting depth"


def _parse(file: str, text: str, loader_class: Any) -> Document:
    builder = _Builder(file)
    loader = loader_class(text)
    try:
        documents = 0
        while True:
            ev = loader.get_event()
            if isinstance(ev, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    builder.fail(_pos(ev.start_mark), "multiple-documents",
                                 "expected one YAML document, got a second one")
            elif isinstance(ev, yaml.ScalarEvent):
                builder.scalar(ev)
            elif isinstance(ev, yaml.MappingStartEvent):
                builder.start(ev, {})
            elif isinstance(ev, yaml.SequenceStartEvent):
                builder.start(ev, [])
            elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                builder.end()
            elif isinstance(ev, yaml.AliasEvent):
                builder.alias(ev)
            elif isinstance(ev, yaml.StreamEndEvent):
                break
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, ...)
        head = text[: exc.position]
        line, col = head.count("\n") + 1, exc.position - (head.rfind("\n") + 1) + 1
        raise YamlProblem(Problem(file, line, col, "yaml-syntax",
                                  f"expected printable text, got character {exc.character!r}")) from None
    except yaml.MarkedYAMLError as exc:
        here, opened = marks(exc)
        line, col, what = explain(text, exc.context, exc.problem, here, opened)
        raise YamlProblem(Problem(file, line, col, "yaml-syntax", what)) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(Problem(file, 1, 1, "yaml-syntax", str(exc))) from None
    finally:
        loader.dispose()
    if documents == 0 or builder.doc.data is None:
        raise YamlProblem(Problem(file, 1, 1, "empty-file", "expected a YAML mapping, got nothing"))
    return builder.doc


def read(file: str, raw: bytes) -> Document:
    """Decode and parse the bytes of one policy file."""
    return parse(file, decode(file, raw))

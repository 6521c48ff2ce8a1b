"""YAML syntax errors in words, with a hint of what to write.

libyaml reports ``did not find expected key`` or ``found character '\\t' that
cannot start any token``; a person editing a policy needs to read "line 18 is
indented 3 spaces, which lines up with no key above it". :func:`explain`
looks at the parser's error and the text around it and returns where the
mistake most likely is and a sentence saying what is wrong and what would be
right. The parser's own words follow in parentheses, for searching.
"""

from __future__ import annotations

import re
from typing import Any

_QUOTED_START = re.compile(r"""^\s*(?:-\s+)?(?:[^\s#'"][^#'"]*?:\s+)?(["'])""")


def _at(lines: list[str], line: int) -> str:
    """Line ``line`` (1-based), or "" past either end."""
    return lines[line - 1] if 0 < line <= len(lines) else ""


def _odd(lines: list[str], line: int) -> int:
    """``line``, or the content line before it when that one's indentation matches no line above
    it while ``line``'s does: a key indented one space off breaks the parse only at the next line."""
    content = [i for i in range(1, min(line, len(lines) + 1)) if _content(lines[i - 1])]
    if len(content) >= 2:
        prev = content[-1]
        before = {_indent(lines[i - 1]) for i in content[:-1]}
        if _indent(lines[prev - 1]) not in before and _indent(_at(lines, line)) in before:
            return prev
    return line


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _tab(lines: list[str], upto: int) -> tuple[int, int] | None:
    """The first tab in the indentation of a line up to ``upto`` (1-based line, column)."""
    for i, line in enumerate(lines[:upto], 1):
        lead = line[: len(line) - len(line.lstrip(" \t"))]
        if "\t" in lead:
            return i, lead.index("\t") + 1
    return None


def _open_quote(lines: list[str], upto: int) -> tuple[int, int, str] | None:
    """The last line up to ``upto`` whose value opens a quote it does not close on that line."""
    found = None
    for i, line in enumerate(lines[:upto], 1):
        m = _QUOTED_START.match(line)
        if not m:
            continue
        quote, start = m.group(1), m.end(1)
        rest = line[start:]
        closed = (rest.replace("''", "").find("'") >= 0) if quote == "'" else bool(re.search(r'(?<!\\)"', rest))
        if not closed:
            found = (i, start, quote)
    return found


def _sibling_indents(lines: list[str], upto: int) -> list[int]:
    """Indentations of the content lines before line ``upto`` (nearest first)."""
    return [_indent(line) for line in reversed(lines[: upto - 1]) if _content(line)]


def explain(text: str, context: str | None, problem: str | None,
            mark: tuple[int, int], context_mark: tuple[int, int] | None) -> tuple[int, int, str]:
    """Line, column and message of a YAML syntax error (``mark``/``context_mark`` are 1-based)."""
    lines = text.split("\n")
    parser = " ".join(s for s in (context, problem) if s) or "invalid YAML"
    line, col = mark
    if "maximum nesting depth" in parser:  # the reader parses such a file again with the pure-Python parser
        return line, col, parser
    tab = _tab(lines, line)
    if tab is not None and ("tab" in parser or "\\t" in parser or "cannot start any token" in parser
                            or "expected key" in parser or "not allowed here" in parser):
        return (*tab, f"a tab character in the indentation of line {tab[0]}: YAML indents with spaces "
                      f"only; replace the tab with spaces ({parser})")
    if problem and "end of stream" in problem and context and "quoted scalar" in context and context_mark:
        q = '"' if _at(lines, context_mark[0])[context_mark[1] - 1:context_mark[1]] == '"' else "'"
        return (*context_mark, f"the {q} opened here is never closed: add a closing {q} at the end of the "
                               f"value ({parser})")
    quote = _open_quote(lines, line)
    if quote is not None and ("expected key" in parser or "not allowed here" in parser
                              or "quoted scalar" in parser or "expected <block end>" in parser):
        qline, qcol, q = quote
        return (qline, qcol, f"the {q} opened at line {qline} is not closed on that line, so the lines after it "
                             f"are read as part of the string: add a closing {q} at the end of the value "
                             f"({parser})")
    if context and "flow" in context and context_mark is not None:
        opener = _at(lines, context_mark[0])[context_mark[1] - 1:context_mark[1]] or "["
        closer = {"[": "]", "{": "}"}.get(opener, "]")
        what = "list" if opener == "[" else "mapping"
        return (*context_mark, f"the '{opener}' opened here is not closed where the {what} ends: add '{closer}' "
                               f"after its last item, and ',' between items ({parser})")
    if "expected key" in parser or "expected <block end>" in parser or "expected '-' indicator" in parser:
        return _indentation(lines, line, col, parser)
    if problem and "mapping values are not allowed" in problem:
        return _mapping_value(lines, line, col, parser)
    if problem and "could not find expected ':'" in problem:
        return (line, col, f"line {line} has no 'key: value' form where a key was expected: add the ':' "
                           f"or quote the text ({parser})")
    return line, col, parser


def _closer(lines: list[str], line: int, here: int) -> int | None:
    """The content line between ``line`` and an earlier line of the same indentation that is indented
    less than both: it closed the mapping ``line`` belongs to."""
    lowest = None
    for i in range(line - 1, 0, -1):
        text = lines[i - 1]
        if not _content(text):
            continue
        indent = _indent(text)
        if indent == here:
            return lowest
        if indent < here:
            lowest = i if lowest is None or indent < _indent(lines[lowest - 1]) else lowest
            if indent == 0:
                return None if lowest == i and i == 1 else _same_before(lines, i, here, lowest)
    return None


def _same_before(lines: list[str], start: int, here: int, lowest: int) -> int | None:
    """``lowest`` when a line above ``start`` has indentation ``here`` (in the mapping it closed)."""
    for i in range(start - 1, 0, -1):
        if _content(lines[i - 1]) and _indent(lines[i - 1]) == here:
            return lowest
    return None


def _mapping_value(lines: list[str], line: int, col: int, parser: str) -> tuple[int, int, str]:
    if _odd(lines, line) != line:
        return _indentation(lines, line, col, parser)
    here = _at(lines, line)
    before = [(i, text) for i, text in enumerate(lines[: line - 1], 1) if _content(text)]
    if before and _content(here):
        prev_no, prev = before[-1]
        key, _, value = prev.strip().partition(":")
        if _indent(here) > _indent(prev) and value.strip() and not value.strip().startswith("#"):
            return (line, _indent(here) + 1,
                    f"line {line} is indented more than line {prev_no}, so it reads as the rest of the value "
                    f"of {key!r} ({value.strip()!r}): start it in column {_indent(prev) + 1}, like "
                    f"{key!r}, or move it under a key that has no value ({parser})")
    return (line, col, f"a second ': ' on line {line}: put each key on its own line, indented under its "
                       f"parent, or quote a value that contains ': ' ({parser})")


def _indentation(lines: list[str], line: int, col: int, parser: str) -> tuple[int, int, str]:
    if not _content(_at(lines, line)):
        return line, col, f"the indentation here lines up with no key above it ({parser})"
    line = _odd(lines, line)
    here = _indent(lines[line - 1])
    closer = _closer(lines, line, here)
    if closer is not None:
        ckey = lines[closer - 1].strip().split(":", 1)[0]
        key = lines[line - 1].strip().split(":", 1)[0]
        return (closer, _indent(lines[closer - 1]) + 1,
                f"line {closer} ({ckey!r}) is indented {_indent(lines[closer - 1])} spaces, which ends the "
                f"mapping that line {line} ({key!r}, indented {here}) still belongs to: indent {ckey!r} like "
                f"the keys of the entry it belongs to, or move it below that mapping ({parser})")
    above = _sibling_indents(lines, line)
    shown = sorted({i for i in above if i != here})
    near = ", ".join(str(i) for i in shown[:6])
    key = lines[line - 1].strip().split(":", 1)[0]
    return (line, here + 1,
            f"line {line} ({key!r}) is indented {here} space{'s' if here != 1 else ''}, which lines up with "
            f"no key above it: keys of one mapping start in the same column (the lines above are indented "
            f"{near} spaces); indent it like the keys it belongs with ({parser})")


def marks(exc: Any) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """The 1-based problem and context marks of a PyYAML MarkedYAMLError."""
    pm, cm = exc.problem_mark or exc.context_mark, exc.context_mark
    here = (pm.line + 1, pm.column + 1) if pm is not None else (1, 1)
    return here, ((cm.line + 1, cm.column + 1) if cm is not None else None)

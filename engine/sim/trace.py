"""The recorded-trace format that ``policy-engine replay`` reads, and its reader and writer.

A trace is CSV (with a header row) or JSONL (one JSON object per line), one
line per call attempt. Fields:

=================  =========  =====================================================
``timestamp``      required   ISO 8601 (without a zone: UTC) or UNIX epoch seconds
``tier``           see note   the tier the executor asked for
``model``          see note   the model that answered or failed this attempt
``input_tokens``   required   integer >= 0
``output_tokens``  required   integer >= 0
``outcome``        optional   ``ok`` (default) or an error class of the policy set
                              (``rate_limit``, ``server_error``, ``timeout``, ...);
                              ``error`` is accepted instead (empty: ok)
``latency_ms``     optional   number >= 0
``request_id``     optional   lines with the same id are the attempts of one call
=================  =========  =====================================================

Note: a line needs a ``tier`` or a ``model`` (a model alone stands for its
home tier). Blank lines are skipped; in JSONL, lines starting with ``#`` too.
A malformed line is reported with its line number (:class:`LineProblem`);
the caller decides whether it is fatal (``--strict``).

The trace is read as a stream (a pipe or FIFO works: the format is sniffed
from lines that are then parsed, not read twice), one line at a time: a
line over :data:`MAX_LINE_BYTES` (64 KiB) is a malformed line, skipped to
its end without being held in memory; one before the first record (the
header, or a file such as ``/dev/zero`` with no line end) means the input
is not a trace. A JSON line nested deeper than :data:`MAX_JSON_DEPTH` is a
malformed line too.

The two shared traces and the engine's own history convert to this format:
see :mod:`engine.sim.convert`.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from engine.text import printable

__all__ = ["FIELDS", "FORMATS", "MAX_JSON_DEPTH", "MAX_LINE_BYTES", "MAX_TIMESTAMP", "MAX_YEAR", "LineProblem",
           "Trace", "TraceError", "TraceLine", "TraceLines", "check_timestamp", "csv_rows", "detect_format",
           "parse_lines", "read_trace", "write_csv"]

FIELDS = ("timestamp", "request_id", "tier", "model", "input_tokens", "output_tokens", "outcome", "latency_ms")
FORMATS = ("auto", "trace-csv", "trace-jsonl", "azure", "llmperf", "history")
#: Timestamps are bounded to the years 1970-9998: the replay's budget periods (a month, in any time zone) and
#: the daily report (the day after) must still fall within year 9999, the last a date can have.
MAX_YEAR = 9998
MAX_TIMESTAMP = datetime(MAX_YEAR, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
#: An epoch value above this (year 5138) is far more likely milliseconds than seconds.
MILLISECONDS_HINT = 1e11
#: The longest line a trace may have, line end included: one call is a few hundred bytes.
MAX_LINE_BYTES = 64 * 1024
#: How deeply a JSONL line may nest arrays and objects (a trace line is one flat object).
MAX_JSON_DEPTH = 64
SQLITE_MAGIC = b"SQLite format 3\x00"
_CHUNK = 64 * 1024
_BOM = b"\xef\xbb\xbf"
AZURE_HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
LLMPERF_HEADER = ("error_code", "error_msg")


class TraceError(Exception):
    """The trace cannot be read at all (missing file, unknown format, no header)."""


@dataclass(frozen=True, slots=True)
class TraceLine:
    line: int
    timestamp: float
    tier: str | None
    model: str | None
    input_tokens: int
    output_tokens: int
    outcome: str | None  # None: ok
    latency_ms: float | None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class LineProblem:
    line: int
    message: str

    def format(self, path: str) -> str:
        """``path:line: message`` for a terminal: control characters in the path and message shown escaped."""
        return f"{printable(path)}:{self.line}: {printable(self.message)}"


@dataclass
class Trace:
    path: str
    format: str
    lines: list[TraceLine]
    problems: list[LineProblem]
    read: int  # lines holding a record (blank and comment lines not counted)


def _timestamp(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("timestamp: expected ISO 8601 or epoch seconds, got a boolean")
    epoch = True
    if isinstance(value, (int, float)):
        t = float(value)
    else:
        text = str(value).strip()
        if not text:
            raise ValueError("timestamp: missing")
        try:
            t = float(text)
        except ValueError:
            epoch = False
            try:
                dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"timestamp: expected ISO 8601 or epoch seconds, got {text!r}") from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            try:
                t = dt.timestamp()
            except (OverflowError, ValueError):
                t = -1.0
    return check_timestamp(t, value, epoch=epoch)


def check_timestamp(t: float, value: Any, *, epoch: bool = False) -> float:
    """``t`` if it lies in the years 1970-9998, else a ValueError (for an ``epoch`` number, with a hint when it
    looks like epoch milliseconds)."""
    if not math.isfinite(t) or not 0 <= t <= MAX_TIMESTAMP:
        ms = epoch and math.isfinite(t) and MILLISECONDS_HINT < t <= MAX_TIMESTAMP * 1000
        hint = "; it looks like milliseconds: divide by 1000" if ms else ""
        raise ValueError(f"timestamp: expected a time in the years 1970-{MAX_YEAR}, got {value!r}{hint}")
    return t


def _count(rec: dict[str, Any], key: str) -> int:
    value = rec.get(key)
    if value is None or value == "":
        raise ValueError(f"{key}: missing")
    if isinstance(value, bool):
        raise ValueError(f"{key}: expected an integer >= 0, got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}: expected an integer >= 0, got {value!r}") from None
    if not f.is_integer() or f < 0:
        raise ValueError(f"{key}: expected an integer >= 0, got {value!r}")
    return int(f)


def _text(rec: dict[str, Any], key: str) -> str | None:
    value = rec.get(key)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _record(line: int, rec: dict[str, Any]) -> TraceLine:
    tier, model = _text(rec, "tier"), _text(rec, "model")
    if tier is None and model is None:
        raise ValueError("expected a tier or a model, got neither")
    outcome = _text(rec, "outcome") if "outcome" in rec else _text(rec, "error")
    if outcome is not None and outcome.lower() in ("ok", "success"):
        outcome = None
    latency = rec.get("latency_ms")
    lat: float | None = None
    if latency is not None and latency != "":
        try:
            lat = float(latency)
        except (TypeError, ValueError):
            raise ValueError(f"latency_ms: expected a number >= 0, got {latency!r}") from None
        if isinstance(latency, bool) or not math.isfinite(lat) or lat < 0:
            raise ValueError(f"latency_ms: expected a number >= 0, got {latency!r}")
    rid = rec.get("request_id")
    return TraceLine(line, _timestamp(rec.get("timestamp")), tier, model, _count(rec, "input_tokens"),
                     _count(rec, "output_tokens"), outcome, lat, None if rid in (None, "") else str(rid))


def csv_rows(reader: Any) -> Iterator[tuple[int, Any]]:
    """The rows of a ``csv.reader``/``DictReader`` with their line numbers; a row the CSV module
    refuses (a field over its 128 KiB limit, a NUL byte, ...) comes as its problem's text instead."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a DictReader's own line_num is only set on success
            yield getattr(reader, "reader", reader).line_num, f"malformed CSV: {exc}"
            continue
        yield reader.line_num, row


class TraceLines:
    """The lines of a byte stream as text, read a chunk at a time (memory stays bounded whatever the input).

    Lines end at ``\\n``, ``\\r\\n`` or ``\\r`` (as in text mode); a UTF-8 BOM is dropped. A line over
    :data:`MAX_LINE_BYTES` comes out as a blank line and is recorded in :attr:`problems` (its rest is read and
    discarded); if no other non-blank line came before it, the input is not a trace: TraceError. Text that
    is not UTF-8 is a TraceError naming the line. ``head``: bytes already read from ``raw``.
    """

    def __init__(self, raw: BinaryIO, name: str, head: bytes = b"") -> None:
        self.raw, self.name, self.head = raw, name, head
        self.problems: list[LineProblem] = []
        self.line = 0  # the number of the line last returned
        self._records = 0  # non-blank lines returned
        self._lines = self._split()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        data = next(self._lines)
        self.line += 1
        if data is None:
            if not self._records:  # nothing but blank lines before: not a trace
                raise TraceError(f"{self.name}:{self.line}: a line longer than {MAX_LINE_BYTES // 1024} KiB before "
                                 "any record: not a trace (CSV or JSONL, one line per call)")
            self.problems.append(LineProblem(self.line, f"line too long: over {MAX_LINE_BYTES:,} bytes (64 KiB), "
                                                        "the most a trace line may have"))
            return "\n"
        if self.line == 1 and data.startswith(_BOM):
            data = data[len(_BOM):]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TraceError(f"{self.name}:{self.line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column "
                             f"{len(data[:exc.start].decode('utf-8', 'replace')) + 1})") from exc
        if text.strip():
            self._records += 1
        return text

    def _split(self) -> Iterator[bytes | None]:
        """Raw lines with their line end; None for a line over the limit."""
        carry, skipping = self.head, False
        drop_lf = False  # a line over the limit ended in \r at the end of a chunk: a \n next is its line end
        while True:
            chunk = self.raw.read(_CHUNK)
            if not chunk:
                break
            if drop_lf:
                drop_lf = False
                if chunk.startswith(b"\n"):
                    chunk = chunk[1:]
                    if not chunk:
                        continue
            parts = (carry + chunk).splitlines(keepends=True)
            # the last part is complete only with its \n: one ending in \r may go on with a \n
            carry = b"" if parts[-1].endswith(b"\n") else parts.pop()
            for part in parts:
                if skipping:  # the end of a line over the limit
                    skipping = False
                    continue
                yield part if len(part) <= MAX_LINE_BYTES else None
            if len(carry) > MAX_LINE_BYTES:
                if not skipping:
                    yield None
                # a carry ending in \r is a whole line (CR line ends): what follows is the next line, not its rest
                drop_lf = carry.endswith(b"\r")
                skipping = not drop_lf
                carry = b""
        if carry and not skipping:
            yield carry if len(carry) <= MAX_LINE_BYTES else None


def _csv_records(text: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    reader = csv.reader(text)
    header: list[str] | None = None
    for line, row in csv_rows(reader):
        if isinstance(row, str):
            yield line, row
            continue
        if not row or all(not c.strip() for c in row):
            continue
        if header is None:
            header = [c.strip() for c in row]
            continue
        if len(row) != len(header):
            yield line, f"expected {len(header)} fields as in the header, got {len(row)}"
            continue
        yield line, dict(zip(header, row, strict=True))


def _jsonl_records(text: Iterable[str]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for line, raw in enumerate(text, 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        if s.count("[") + s.count("{") > MAX_JSON_DEPTH and _json_depth(s) > MAX_JSON_DEPTH:
            yield line, f"JSON nested deeper than {MAX_JSON_DEPTH} levels: a trace line is one flat JSON object"
            continue
        try:
            rec = json.loads(s)
        except json.JSONDecodeError as exc:
            yield line, f"not valid JSON: {exc.msg} (column {exc.colno})"
            continue
        except RecursionError:  # a depth check's miss; never a traceback
            yield line, f"JSON nested deeper than {MAX_JSON_DEPTH} levels: a trace line is one flat JSON object"
            continue
        yield line, rec if isinstance(rec, dict) else f"expected a JSON object, got {type(rec).__name__}"


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def _json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text`` (brackets within strings do not count)."""
    depth = deepest = 0
    for m in _JSON_TOKENS.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def parse_lines(records: Iterable[tuple[int, dict[str, Any] | str]]) -> tuple[list[TraceLine], list[LineProblem], int]:
    lines, problems, n = [], [], 0
    for line, rec in records:
        n += 1
        if isinstance(rec, str):
            problems.append(LineProblem(line, rec))
            continue
        try:
            lines.append(_record(line, rec))
        except ValueError as exc:
            problems.append(LineProblem(line, str(exc)))
    return lines, problems, n


def detect_format(path: Path, first_line: str) -> str:
    """``trace-csv``, ``trace-jsonl``, ``azure`` or ``llmperf``, from the first line and the name."""
    head = first_line.lstrip("\ufeff").strip()
    if head.startswith("{") or path.suffix.lower() in (".jsonl", ".ndjson"):
        return "trace-jsonl"
    try:
        cells = tuple(c.strip() for c in next(csv.reader([head]), []))
    except csv.Error:  # e.g. a field over the CSV module's limit: read as our CSV, reported line by line
        cells = ()
    if cells[:3] == AZURE_HEADER:
        return "azure"
    if cells[:2] == LLMPERF_HEADER:
        return "llmperf"
    return "trace-csv"


def read_trace(path: str | Path, fmt: str = "auto", *, seed: int = 1) -> Trace:
    """Read a trace (our format, or a shared trace converted on the fly); raises TraceError.

    The file is opened once and read as a stream: it may be a pipe or a FIFO.
    """
    p = Path(path)
    if fmt not in FORMATS:
        raise TraceError(f"unknown trace format {fmt!r}; expected one of {', '.join(FORMATS)}")
    try:
        raw = p.open("rb")
    except OSError as exc:
        raise TraceError(f"{p}: cannot read the trace: {exc.strerror or exc}") from exc
    with raw:
        try:
            return _read(p, raw, fmt, seed)
        except OSError as exc:
            raise TraceError(f"{p}: cannot read the trace: {exc.strerror or exc}") from exc


def _read(p: Path, raw: BinaryIO, fmt: str, seed: int) -> Trace:
    head = raw.read(len(SQLITE_MAGIC)) if fmt in ("auto", "history") else b""
    if head == SQLITE_MAGIC:
        if not p.is_file():
            raise TraceError(f"{p}: an SQLite history database, which is read from a file, not a pipe: "
                             "give its path")
        from engine.sim import convert as sim_convert

        try:
            lines, problems, n = sim_convert.history(p, seed=seed)
        except ValueError as exc:
            raise TraceError(str(exc)) from exc
        return Trace(str(p), "history", lines, problems, n)
    if fmt == "history":
        raise TraceError(f"{p}: not an SQLite history database")
    stream = TraceLines(raw, str(p), head)
    blank = 0  # the blank lines before the first record: counted, not kept (memory stays bounded)
    for first in stream:
        if first.strip():
            break
        blank += 1
    else:
        raise TraceError(f"{p}: the trace is empty")
    # the lines the sniff read, fed to the parser again (the blank ones as empty lines: line numbers stay right)
    lines_in = itertools.chain(itertools.repeat("\n", blank), (first,), stream)
    if fmt == "auto":
        fmt = detect_format(p, first)
    if fmt in ("azure", "llmperf"):
        from engine.sim import convert as sim_convert

        convert = sim_convert.azure if fmt == "azure" else sim_convert.llmperf
        lines, problems, n = convert(lines_in, name=p.name, seed=seed)
    elif fmt == "trace-jsonl":
        lines, problems, n = parse_lines(_jsonl_records(lines_in))
    else:
        lines, problems, n = parse_lines(_csv_records(lines_in))
        missing = [f for f in ("timestamp", "input_tokens", "output_tokens") if f not in first.split(",")]
        if missing and not lines:
            raise TraceError(f"{p}: the CSV header names no {', '.join(missing)}: expected the columns "
                             f"{', '.join(FIELDS)}")
    if stream.problems:  # lines over the limit: read as blank, counted and reported here
        problems = sorted([*problems, *stream.problems], key=lambda pr: pr.line)
        n += len(stream.problems)
    return Trace(str(p), fmt, lines, problems, n)


def write_csv(lines: Iterable[TraceLine], out: TextIO) -> int:
    """Write lines in the trace CSV format; returns how many."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(FIELDS)
    n = 0
    for ln in lines:
        w.writerow([f"{ln.timestamp:.6f}", ln.request_id or "", ln.tier or "", ln.model or "", ln.input_tokens,
                    ln.output_tokens, ln.outcome or "ok", "" if ln.latency_ms is None else f"{ln.latency_ms:.3f}"])
        n += 1
    return n

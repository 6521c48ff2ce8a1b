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

The two shared traces and the engine's own history convert to this format:
see :mod:`engine.sim.convert`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

__all__ = ["FIELDS", "FORMATS", "MAX_TIMESTAMP", "MAX_YEAR", "LineProblem", "Trace", "TraceError", "TraceLine",
           "check_timestamp", "csv_rows", "detect_format", "parse_lines", "read_trace", "write_csv"]

FIELDS = ("timestamp", "request_id", "tier", "model", "input_tokens", "output_tokens", "outcome", "latency_ms")
FORMATS = ("auto", "trace-csv", "trace-jsonl", "azure", "llmperf", "history")
#: Timestamps are bounded to the years 1970-9998: the replay's budget periods (a month, in any time zone) and
#: the daily report (the day after) must still fall within year 9999, the last a date can have.
MAX_YEAR = 9998
MAX_TIMESTAMP = datetime(MAX_YEAR, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
#: An epoch value above this (year 5138) is far more likely milliseconds than seconds.
MILLISECONDS_HINT = 1e11
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
        return f"{path}:{self.line}: {self.message}"


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
        try:
            rec = json.loads(s)
        except json.JSONDecodeError as exc:
            yield line, f"not valid JSON: {exc.msg} (column {exc.colno})"
            continue
        yield line, rec if isinstance(rec, dict) else f"expected a JSON object, got {type(rec).__name__}"


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


def _is_sqlite(p: Path) -> bool:
    try:
        with p.open("rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def read_trace(path: str | Path, fmt: str = "auto", *, seed: int = 1) -> Trace:
    """Read a trace (our format, or a shared trace converted on the fly); raises TraceError."""
    p = Path(path)
    if fmt in ("auto", "history") and _is_sqlite(p):
        from engine.sim import convert as sim_convert

        try:
            lines, problems, n = sim_convert.history(p, seed=seed)
        except ValueError as exc:
            raise TraceError(str(exc)) from exc
        return Trace(str(p), "history", lines, problems, n)
    if fmt == "history":
        raise TraceError(f"{p}: not an SQLite history database")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise TraceError(f"{p}: cannot read the trace: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise TraceError(f"{p}: not UTF-8 text (byte {exc.start})") from exc
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if not first:
        raise TraceError(f"{p}: the trace is empty")
    if fmt == "auto":
        fmt = detect_format(p, first)
    if fmt in ("azure", "llmperf"):
        from engine.sim import convert as sim_convert

        convert = sim_convert.azure if fmt == "azure" else sim_convert.llmperf
        lines, problems, n = convert(io.StringIO(text), name=p.name, seed=seed)
        return Trace(str(p), fmt, lines, problems, n)
    if fmt == "trace-jsonl":
        lines, problems, n = parse_lines(_jsonl_records(io.StringIO(text)))
    elif fmt == "trace-csv":
        records = _csv_records(io.StringIO(text, newline=""))
        lines, problems, n = parse_lines(records)
        missing = [f for f in ("timestamp", "input_tokens", "output_tokens") if f not in first.split(",")]
        if missing and not lines:
            raise TraceError(f"{p}: the CSV header names no {', '.join(missing)}: expected the columns "
                             f"{', '.join(FIELDS)}")
    else:
        raise TraceError(f"unknown trace format {fmt!r}; expected one of {', '.join(FORMATS)}")
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

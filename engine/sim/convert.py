"""Convert the shared traces and the engine's own history into the replay trace format.

``policy-engine replay`` reads these three directly (detected by their header
or, for the history, the SQLite magic); this module also writes them out as
a trace CSV::

    policy-engine convert ../shared/traces/azure-llm-2023/AzureLLMInferenceTrace_conv.csv -o conv.csv
    policy-engine convert ../shared/traces/llmperf-2023/llmperf_requests.csv -o llmperf.csv
    policy-engine convert memory/history.db -o yesterday.csv

* **Azure LLM trace** (``TIMESTAMP, ContextTokens, GeneratedTokens``): one
  call per row at its timestamp (UTC), tier drawn from the workload's
  ``tier_mix`` for the file (``code`` -> L1; ``conv`` -> L2 93.5%, L3 5%,
  L4 1.5%) with ``--seed``; no model, outcome or latency (the replay draws
  latencies from the workload's LLMPerf runs).
* **LLMPerf** (``llmperf_requests.csv``): one call per row on the model
  :data:`LLMPERF_MODELS` maps its run to, 550 prompt tokens, the output it
  got; HTTP 429 -> ``rate_limit``, too few output tokens (-100) and any
  other error -> ``server_error``; latency = end-to-end. LLMPerf kept 5
  requests in flight and no timestamps, so each run's request *i* is put at
  (sum of the run's earlier latencies) / 5 after 2023-12-01 00:00 UTC.
* **The engine's history** (SQLite ``minutes``: per-minute aggregates per
  tier and model): each recorded attempt becomes a line spread evenly over
  its minute with the row's mean tokens (failed attempts: the mean prompt,
  no output), outcomes in the recorded proportions, latencies from the
  row's histogram (failed attempts take its lowest quantiles). The history keeps attempts, not calls: the failed
  attempts of a (minute, tier) are attached, round-robin, as earlier
  attempts of that minute's fallback-served successes (one ``request_id``);
  failed attempts without a fallback success in their minute stay calls of
  their own. A reconstruction, not a record: for exact calls record a trace
  with ``policy-engine simulate --record-trace``.

  A row is checked before it is expanded: its counts must be integers >= 0,
  ``errors`` a JSON object of such counts, ``successes`` plus the errors and
  ``fallbacks`` each at most ``calls``, and ``calls`` at most
  :data:`MAX_ROW_CALLS` (one model's attempts for one tier in one minute); a
  row that is not is a malformed line (its row number, its minute, tier and
  model). A history of more than :data:`MAX_HISTORY_CALLS` attempts in all is
  refused (a ValueError saying so) rather than reconstructed.
"""

from __future__ import annotations

import csv
import json
import random
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from engine.sim.trace import LineProblem, TraceLine, check_timestamp, csv_rows
from engine.sim.workload import load_workload

__all__ = ["LLMPERF_MODELS", "MAX_HISTORY_CALLS", "MAX_ROW_CALLS", "SQLITE_MAGIC", "azure", "history", "llmperf"]

SQLITE_MAGIC = b"SQLite format 3\x00"
LLMPERF_IN_FLIGHT = 5
LLMPERF_START = datetime(2023, 12, 1, tzinfo=UTC).timestamp()
#: Which model of the default policies each LLMPerf run stands for (as in the shipped workload,
#: plus the failure runs: Lepton's 429 storm on an L2 fallback, Bedrock's truncations on Anthropic models).
LLMPERF_MODELS = {
    "anyscale_13b": "gemini-2.5-flash-lite", "anyscale_70b": "gemini-2.5-flash", "anyscale_7b": "gpt-4o-mini",
    "bedrock_13b": "claude-haiku-4-5", "bedrock_70b": "claude-sonnet-4-5",
    "fireworks_13b": "gemini-2.5-pro", "fireworks_70b": "claude-sonnet-4-5", "fireworks_7b": "gpt-4o-mini",
    "groq_70b": "gpt-4.1-nano",
    "lepton_13b": "gemini-2.5-flash", "lepton_70b": "gemini-2.5-flash", "lepton_7b": "gemini-2.5-flash",
    "perplexity_70b": "gpt-4.1",
    "replicate_13b": "claude-opus-4-1", "replicate_70b": "gpt-5", "replicate_7b": "o3",
    "together_13b": "mistral-small-latest", "together_70b": "gpt-4.1-mini", "together_7b": "claude-haiku-4-5",
}
Converted = tuple[list[TraceLine], list[LineProblem], int]
#: The columns of the history's ``minutes`` table the conversion reads (latency columns are optional).
HISTORY_COLUMNS = ("minute", "tier", "model", "calls", "successes", "fallbacks", "tokens_in", "tokens_out", "errors")
#: The most attempts one history row (one model, one tier, one minute: 1,667 a second) may hold to be converted.
MAX_ROW_CALLS = 100_000
#: The most attempts a whole history may hold to be converted (each becomes a trace line held in memory).
MAX_HISTORY_CALLS = 10_000_000


def _azure_time(text: str) -> float:
    date_part, _, frac = text.strip().partition(".")
    dt = datetime.fromisoformat(date_part).replace(tzinfo=UTC)
    return check_timestamp(dt.timestamp() + (float("0." + frac) if frac else 0.0), text)


def azure(stream: Iterable[str], *, name: str = "", seed: int = 1) -> Converted:
    """Rows of an Azure LLM inference trace; tiers drawn for the ``code`` or ``conv`` file."""
    mix = load_workload().tier_mix
    source = "code" if "code" in name.lower() else "conv"
    tiers = [t for t, _ in mix[source]]
    weights = [w for _, w in mix[source]]
    rng = random.Random(f"{seed}:{source}")  # noqa: S311 - a reproducible assignment, not cryptography
    reader = csv.reader(stream)
    lines, problems, n = [], [], 0
    for line_num, row in csv_rows(reader):
        if line_num == 1 or not row:
            continue
        n += 1
        if isinstance(row, str):
            problems.append(LineProblem(line_num, row))
            continue
        tier = rng.choices(tiers, weights)[0]
        try:
            if len(row) != 3:
                raise ValueError(f"expected 3 fields (TIMESTAMP, ContextTokens, GeneratedTokens), got {len(row)}")
            tin, tout = int(row[1]), int(row[2])
            if tin < 0 or tout < 0:
                raise ValueError(f"token counts must be >= 0, got {tin}, {tout}")
            lines.append(TraceLine(reader.line_num, _azure_time(row[0]), tier, None, tin, tout, None, None))
        except ValueError as exc:
            problems.append(LineProblem(reader.line_num, str(exc)))
    return lines, problems, n


def _llmperf_outcome(code: str) -> str | None:
    if not code.strip():
        return None
    return "rate_limit" if float(code) == 429 else "server_error"


def llmperf(stream: Iterable[str], *, name: str = "", seed: int = 1) -> Converted:
    """Rows of ``llmperf_requests.csv``, one call each, on the model of their run."""
    reader = csv.DictReader(stream)
    rows, problems, n = [], [], 0
    for line_num, row in csv_rows(reader):
        n += 1
        if isinstance(row, str):
            problems.append(LineProblem(line_num, row))
            continue
        try:
            model = LLMPERF_MODELS[row["run"]]
            rows.append((row["run"], int(row["seq"]), reader.line_num, model, _llmperf_outcome(row["error_code"]),
                         float(row["end_to_end_latency_s"]), int(float(row["number_input_tokens"])),
                         int(float(row["number_output_tokens"]))))
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(LineProblem(reader.line_num, f"not an LLMPerf request row: {type(exc).__name__}: {exc}"))
    rows.sort()
    lines = []
    offset: dict[str, float] = {}
    for run, _, line, model, outcome, e2e, tin, tout in rows:
        at = offset.get(run, 0.0)
        offset[run] = at + e2e / LLMPERF_IN_FLIGHT
        lines.append(TraceLine(line, LLMPERF_START + at, None, model, tin, 0 if outcome else tout, outcome,
                               e2e * 1000.0))
    lines.sort(key=lambda ln: ln.timestamp)
    return lines, problems, n


def _latencies(row: sqlite3.Row, n: int) -> list[float | None]:
    """``n`` evenly spaced quantiles of a ``minutes`` row's latency histogram (None: no known codec)."""
    try:
        from engine.store.historydb import decode_latency

        keys = row.keys()
        if "lat_zero" in keys:  # schema 1: zero count, total, min, max, then the buckets as JSON
            hist = decode_latency(row["lat_zero"], row["lat_total"], row["lat_min"], row["lat_max"],
                                  row["latency"])
        else:
            hist = decode_latency(row["latency"])  # type: ignore[call-arg]
        return [None if q is None else float(q) for q in hist.quantiles(tuple((i + 0.5) / n for i in range(n)))]
    except Exception:  # no codec, or one this reader does not know: latencies are drawn at replay instead
        return [None] * n


def _split(total: int, n: int) -> list[int]:
    base, extra = divmod(total, n) if n else (0, 0)
    return [base + (1 if i < extra else 0) for i in range(n)]


def history(path: Path, *, seed: int = 1) -> Converted:
    """Calls reconstructed from the per-minute aggregates of an engine history database."""
    try:
        # quoted: a path holding ? or # would otherwise end the file name there (and lose mode=ro)
        conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
        try:
            conn.row_factory = sqlite3.Row
            rows = conn.execute("SELECT * FROM minutes ORDER BY minute, tier, model").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ValueError(f"{path}: not an engine history database: {exc}") from exc
    missing = sorted(set(HISTORY_COLUMNS) - set(rows[0].keys())) if rows else []
    if missing:
        raise ValueError(f"{path}: the history's minutes table has no {', '.join(missing)} column")
    lines: list[TraceLine] = []
    problems: list[LineProblem] = []
    groups: dict[tuple[int, str], list[tuple[int, _Row]]] = {}
    total = 0
    for i, row in enumerate(rows, 1):
        checked = _check_row(row)
        if isinstance(checked, str):
            problems.append(LineProblem(i, checked))
            continue
        total += checked.calls
        if total > MAX_HISTORY_CALLS:
            raise ValueError(f"{path}: the history holds more than {MAX_HISTORY_CALLS:,} attempts (by row {i:,}), "
                             "more than a conversion holds in memory; convert a copy with fewer minutes")
        groups.setdefault((checked.minute, checked.tier), []).append((i, checked))
    for (minute, tier), members in groups.items():
        lines.extend(_minute_lines(minute, tier, members))
    lines.sort(key=lambda ln: ln.timestamp)
    return lines, problems, len(rows)


@dataclass(frozen=True, slots=True)
class _Row:
    """A ``minutes`` row whose counts were checked (:func:`_check_row`)."""

    row: sqlite3.Row
    minute: int
    tier: str
    model: str
    calls: int
    successes: int
    fallbacks: int
    tokens_in: int
    tokens_out: int
    errors: dict[str, int]


def _nonneg(value: Any) -> int | None:
    """``value`` if it is an integer >= 0 (SQLite may hold any type in any column), else None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _check_row(row: sqlite3.Row) -> _Row | str:
    """The row's values, checked; else what is wrong with it, naming its minute, tier and model."""
    where = f"minute {row['minute']!r} tier {row['tier']!r} model {row['model']!r}"
    minute = _nonneg(row["minute"])
    if minute is None:
        return f"{where}: minute: expected an integer >= 0 (minutes since 1970), got {row['minute']!r}"
    try:
        check_timestamp(minute * 60.0, minute * 60)
    except ValueError as exc:
        return f"{where}: {exc}"
    if not isinstance(row["tier"], str) or not isinstance(row["model"], str):
        return f"{where}: tier and model: expected text"
    counts: dict[str, int] = {}
    for key in ("calls", "successes", "fallbacks", "tokens_in", "tokens_out"):
        value = _nonneg(row[key])
        if value is None:
            return f"{where}: {key}: expected an integer >= 0, got {row[key]!r}"
        counts[key] = value
    calls = counts["calls"]
    if calls > MAX_ROW_CALLS:
        return (f"{where}: calls: {calls:,} attempts in one minute, over the {MAX_ROW_CALLS:,} a history row may "
                "hold to be converted")
    try:
        errs = json.loads(row["errors"] or "{}")
    except (ValueError, TypeError):
        errs = None
    if not isinstance(errs, dict) or not all(_nonneg(v) is not None for v in errs.values()):
        return f"{where}: errors: expected a JSON object of error class -> count >= 0, got {row['errors']!r:.200}"
    errors = {str(k): int(v) for k, v in errs.items()}
    failed = sum(errors.values())
    if counts["successes"] + failed > calls:
        return (f"{where}: {counts['successes']:,} successes and {failed:,} errors, more than its "
                f"{calls:,} calls")
    if counts["fallbacks"] > calls:
        return f"{where}: {counts['fallbacks']:,} fallbacks, more than its {calls:,} calls"
    return _Row(row, minute, row["tier"], row["model"], calls, counts["successes"], counts["fallbacks"],
                counts["tokens_in"], counts["tokens_out"], errors)


def _minute_lines(minute: int, tier: str, members: Iterable[tuple[int, _Row]]) -> list[TraceLine]:
    ok: list[tuple[int, str, int, int, float | None, bool]] = []
    failed: list[tuple[int, str, str, int, float | None]] = []
    for i, r in members:
        model, calls, successes, fallbacks = r.model, r.calls, r.successes, r.fallbacks
        lats = _latencies(r.row, calls) if calls else []
        tin, tout = r.tokens_in, r.tokens_out
        ins, outs = _split(tin, successes), _split(tout, successes)
        mean_in = tin // successes if successes else 0
        k = 0  # failures (mostly fast rejections) take the row's lowest latencies, successes the rest
        for cls, count in sorted(r.errors.items()):
            for _ in range(count):
                failed.append((i, model, cls, mean_in, lats[k] if k < len(lats) else None))
                k += 1
        for j in range(successes):
            ok.append((i, model, ins[j], outs[j], lats[k + j] if k + j < len(lats) else None, j < fallbacks))
    calls = len(ok) + len(failed)
    if not calls:
        return []
    fallback_ok = [j for j, o in enumerate(ok) if o[5]]
    out: list[TraceLine] = []
    step = 60.0 / calls
    for j, (i, model, tin, tout, lat, _) in enumerate(ok):
        out.append(TraceLine(i, minute * 60.0 + (j + 0.5) * step, tier, model, tin, tout, None, lat,
                             f"h{minute}-{tier}-{j}"))
    mean_prompt = sum(o[2] for o in ok) // len(ok) if ok else 0
    for j, (i, model, cls, tin, lat) in enumerate(failed):
        if fallback_ok:
            owner = fallback_ok[j % len(fallback_ok)]
            rid, at = f"h{minute}-{tier}-{owner}", minute * 60.0 + (owner + 0.5) * step - 0.001 * (1 + j // len(
                fallback_ok))
        else:
            rid, at = f"h{minute}-{tier}-f{j}", minute * 60.0 + (len(ok) + j + 0.5) * step
        out.append(TraceLine(i, max(at, minute * 60.0), tier, model, tin or mean_prompt, 0, cls, lat, rid))
    return out

"""Print what ``simulate`` and ``replay`` found: side-by-side tables and the lines under them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from engine.sim.replay import ReplayResult
from engine.sim.simulate import TARGET_AVAILABILITY, TARGET_TOKEN_SAVING, SimResult
from engine.text import printable

__all__ = ["format_replay", "format_simulation", "simulation_dict", "table", "targets"]

Summary = Mapping[str, Any]


def _n(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _pct(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _usd(x: float | None) -> str:
    return "-" if x is None else f"${x:.6f}"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"


def hhmmss(at: float, tz: ZoneInfo, with_date: bool = False) -> str:
    return datetime.fromtimestamp(at, tz).strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def table(rows: Sequence[tuple[str, Sequence[str]]], headers: Sequence[str], indent: str = "  ") -> list[str]:
    """A left label column and right-aligned value columns."""
    width = max(len(label) for label, _ in rows)
    cols = [max(len(headers[i]), *(len(v[i]) for _, v in rows)) for i in range(len(headers))]
    out = [indent + " " * width + "".join(f"  {h:>{w}}" for h, w in zip(headers, cols, strict=True))]
    for label, values in rows:
        out.append(indent + f"{label:<{width}}" + "".join(f"  {v:>{w}}" for v, w in zip(values, cols, strict=True)))
    return out


def _failed_by(s: Summary) -> str:
    items = s["failed_by"].items()
    return "; ".join(f"{k} {v:,}" for k, v in items) or "none"


def budget_lines(s: Summary, tz: ZoneInfo, with_date: bool = False) -> str:
    by: dict[str, list[str]] = {}
    for e in s["budget_events"]:
        word = "warned" if e["event"] == "BudgetWarning" else "exhausted"
        by.setdefault(e["budget"], []).append(f"{word} {hhmmss(e['at'], tz, with_date)}")
    return "; ".join(f"{b} {', '.join(v)}" for b, v in by.items()) or "none"


def _counts(d: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in d.items()) or "none"


def targets(r: SimResult) -> dict[str, Any]:
    e, base, naive = r.engine, r.no_fallback, r.naive
    avail = e["availability"]
    saving = None
    if e["tokens_per_success"] and naive["tokens_per_success"]:
        saving = 1 - e["tokens_per_success"] / naive["tokens_per_success"]
    return {
        "availability": {"value": avail, "target": TARGET_AVAILABILITY, "baseline": base["availability"],
                         "met": avail is not None and avail >= TARGET_AVAILABILITY},
        "token_saving_vs_naive": {"value": saving, "target": TARGET_TOKEN_SAVING,
                                  "met": saving is not None and saving >= TARGET_TOKEN_SAVING},
    }


def simulation_dict(r: SimResult) -> dict[str, Any]:
    """Everything the summary shows, as JSON-ready data (no wall-clock timings: reproducible)."""
    o = r.options
    return {
        "scenario": r.scenario.name, "seed": o.seed, "date": o.day.isoformat(), "start_hour": o.start_h,
        "hours": o.hours, "scale": o.scale, "timezone": r.timezone, "policies": r.policy_path,
        "revision": r.policy.revision, "workload": r.workload.path, "requests": r.requests,
        "incidents": r.incidents, "notes": r.notes, "primaries": r.primaries,
        "engine": r.engine, "no_fallback": r.no_fallback, "naive_retry": r.naive,
        "targets": targets(r), "history": r.history, "report": r.report, "report_note": r.report_note,
        "report_error": r.report_error,
    }


def format_simulation(r: SimResult) -> str:
    o, tz = r.options, ZoneInfo(r.timezone)
    e, base, naive = r.engine, r.no_fallback, r.naive
    end_h = o.start_h + o.hours
    lines = [
        f"simulate: scenario {r.scenario.name}, seed {o.seed}, {o.day.isoformat()} "
        f"{int(o.start_h):02d}:{round(o.start_h % 1 * 60):02d}-{int(end_h):02d}:{round(end_h % 1 * 60):02d} "
        f"{r.timezone}, {r.requests:,} calls",
        f"  policies: {r.policy_path} (revision {r.policy.revision[:12]}), {len(r.policy.models)} models, "
        f"{len(r.policy.tiers)} tiers",
        f"  workload: {r.workload.describe()}",
        "  incidents:" + ("" if r.incidents else " none"),
        *(f"    {line}" for line in r.incidents),
        *(f"  note: {n}" for n in r.notes),
        "",
    ]
    cols = (e, base, naive)
    rows = [
        ("calls", [_n(s["calls"]) for s in cols]),
        ("succeeded", [_n(s["successes"]) for s in cols]),
        ("availability", [_pct(s["availability"]) for s in cols]),
        ("model attempts", [_n(s["attempts"]) for s in cols]),
        ("tokens per successful call", [_n(s["tokens_per_success"]) for s in cols]),
        ("cost per successful call", [_usd(s["cost_per_success_usd"]) for s in cols]),
        ("p95 call latency", [_s(s["latency_p95_s"]) for s in cols]),
    ]
    lines += table(rows, [s["label"] for s in cols])
    lines += [
        "",
        f"  failed calls: engine {_failed_by(e)}; no-fallback {_failed_by(base)}; naive {_failed_by(naive)}",
        f"  failovers: {e['failovers']:,} calls answered by another model after a failure (time to failover "
        f"p50 {_s(e['time_to_failover_p50_s'])}, p95 {_s(e['time_to_failover_p95_s'])}, "
        f"max {_s(e['time_to_failover_max_s'])}); {e['retried_same_model']:,} recovered by a same-model retry",
        f"  fallback decisions: {e['fallback_decisions']:,}",
        f"  breaker trips: {_counts(e['breaker_trips'])} (closed again: {_counts(e['breaker_closes'])})",
        f"  budgets: {budget_lines(e, tz)}",
        f"  anomalies: {_counts(e['anomalies'])}",
        f"  provider quota refusals: engine {e['quota_refusals']:,}, no-fallback {base['quota_refusals']:,}, "
        f"naive {naive['quota_refusals']:,}",
        "  per tier (engine): " + ", ".join(
            f"{t} {_pct(v['successes'] / v['calls'] if v['calls'] else None)} of {v['calls']:,}"
            for t, v in e["tiers"].items()),
        f"  served by (engine): {_counts(e['served_by'])}",
        "",
    ]
    tg = targets(r)
    a, s = tg["availability"], tg["token_saving_vs_naive"]
    lines.append(f"  target: availability >= {_pct(a['target'], 1)} with the engine: "
                 f"{'met' if a['met'] else 'NOT met'} ({_pct(a['value'])}; no-fallback {_pct(a['baseline'])})")
    lines.append(f"  target: tokens per successful call >= {_pct(s['target'], 0)} below naive retry: "
                 f"{'met' if s['met'] else 'NOT met'} ({_pct(s['value'], 1)} below: {_n(e['tokens_per_success'])}"
                 f" vs {_n(naive['tokens_per_success'])})")
    lines.append(f"  history: {r.history}")
    lines.append("  report: " + (", ".join(r.report) if r.report else r.report_note))
    lines.extend(reopen_commands(r))
    return "\n".join(lines)


def reopen_commands(r: SimResult) -> list[str]:
    """The exact ``status`` and ``report`` commands that reopen this run's history (none without a file)."""
    import shlex

    history = r.history
    if history.startswith("sqlite://"):
        uri = history
    elif history.endswith(".db") and "://" not in history and not history.startswith(("in memory", "off")):
        uri = f"sqlite:///{history}"
    else:
        return []
    common = f"--policies {shlex.quote(r.policy_path)} --store {shlex.quote(uri)}"
    return ["  reopen it with:",
            f"    policy-engine status {common}",
            f"    policy-engine report {common} --date {r.options.day.isoformat()}",
            f"    policy-engine serve {common}"]


# -- replay ------------------------------------------------------------------------------------
def _replay_rows(s: Sequence[Mapping[str, Any]], tz: ZoneInfo, with_date: bool) -> list[tuple[str, list[str]]]:

    def col(fn: Any) -> list[str]:
        return [fn(x) for x in s]

    def n(x: float | None) -> str:
        return "-" if x is None else f"{x:,.0f}"

    rows = [
        ("calls", col(lambda x: n(x["calls"]))),
        ("succeeded", col(lambda x: n(x["successes"]))),
        ("availability", col(lambda x: "-" if x["availability"] is None else f"{100 * x['availability']:.3f}%")),
        ("model attempts", col(lambda x: n(x["attempts"]))),
        ("fallback decisions", col(lambda x: n(x["fallback_decisions"]))),
        ("failovers", col(lambda x: n(x["failovers"]))),
        ("time to failover p95", col(lambda x: "-" if x["time_to_failover_p95_s"] is None
                                     else f"{x['time_to_failover_p95_s']:.2f} s")),
        ("breaker trips", col(lambda x: n(sum(x["breaker_trips"].values())))),
    ]
    budgets = sorted({e["budget"] for x in s for e in x["budget_events"] if e["event"] == "BudgetExhausted"})
    for b in budgets:
        rows.append((f"budget {b} exhausted", col(lambda x, b=b: ", ".join(
            hhmmss(e["at"], tz, with_date) for e in x["budget_events"]
            if e["budget"] == b and e["event"] == "BudgetExhausted") or "-")))
    if not budgets:
        rows.append(("budget exhaustions", col(lambda x: "none")))
    rows += [
        ("tokens per successful call", col(lambda x: n(x["tokens_per_success"]))),
        ("cost per successful call", col(lambda x: "-" if x["cost_per_success_usd"] is None
                                         else f"${x['cost_per_success_usd']:.6f}")),
        ("p95 latency", col(lambda x: "-" if x["latency_p95_s"] is None else f"{x['latency_p95_s']:.2f} s")),
    ]
    return rows


def format_replay(r: ReplayResult) -> str:
    tz = ZoneInfo(r.timezone)
    reqs = r.prepared.requests
    skipped = len(r.prepared.problems)
    span = ""
    with_date = False
    if reqs:
        first, last = reqs[0].arrival, reqs[-1].arrival
        with_date = hhmmss(first, tz, True)[:10] != hhmmss(last, tz, True)[:10]
        span = f", {hhmmss(first, tz, True)} to {hhmmss(last, tz, with_date)} {r.timezone}"
    if r.trace.format == "history":
        source = f"{r.prepared.lines_used:,} recorded attempts in {r.trace.read:,} per-minute rows"
    else:
        source = f"{r.prepared.lines_used:,} of {r.trace.read:,} lines"
    lines = [
        f"replay: {printable(r.trace.path)} ({r.trace.format}): {len(reqs):,} calls from {source}"
        + (f"; {skipped:,} malformed line{'s' if skipped != 1 else ''} SKIPPED (see stderr)" if skipped else "")
        + span,
        *(f"  {label}: {printable(path)}" for label, path in zip(r.labels, r.paths, strict=True)),
        "",
    ]
    lines += table(_replay_rows(r.summaries, tz, with_date), r.labels)
    lines.append("")
    for label, x in zip(r.labels, r.summaries, strict=True):
        trips = ", ".join(f"{m} {k}" for m, k in x["breaker_trips"].items()) or "none"
        failed = ", ".join(f"{c} {k:,}" for c, k in x["failed_by"].items()) or "none"
        lines.append(f"  {label}: failed calls: {failed}; breaker trips: {trips}")
    return "\n".join(lines)


def compare_table(labels: Sequence[str], summaries: Sequence[Mapping[str, Any]], timezone: str) -> list[str]:
    """Two or more runs' summaries side by side (the rows of ``replay --compare``), one column a run."""
    tz = ZoneInfo(timezone)
    ats = [e["at"] for s in summaries for e in s["budget_events"]]
    with_date = bool(ats) and hhmmss(min(ats), tz, True)[:10] != hhmmss(max(ats), tz, True)[:10]
    return table(_replay_rows(summaries, tz, with_date), labels)

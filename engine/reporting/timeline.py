"""The event log of a day as timeline entries, and the counts rules need."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any
from zoneinfo import ZoneInfo

from engine.reporting import fmt
from engine.reporting.model import TimelineEntry

#: Longest timeline shown; the rest is summarised in one line.
MAX_ENTRIES = 300
#: Events the timeline leaves out (one per budget period: noise).
QUIET = frozenset({"BudgetReset"})

Event = tuple[float, str, str, Mapping[str, Any]]


def _pct(x: Any) -> str:
    return f"{float(x):.0f}%" if isinstance(x, (int, float)) else fmt.DASH


def _budget(d: Mapping[str, Any]) -> str:
    parts = [f"{fmt.pct(d.get('used_fraction'), 0)} used"]
    if d.get("tokens_limit"):
        parts.append(f"{fmt.tokens(d.get('tokens_used'))} of {fmt.tokens(d['tokens_limit'])} tokens")
    if d.get("cost_limit"):
        parts.append(f"{fmt.usd(d.get('cost_used'))} of {fmt.usd(d['cost_limit'])}")
    return ", ".join(parts)


def entry(at: float, kind: str, subject: str, d: Mapping[str, Any], tz: ZoneInfo) -> TimelineEntry:
    """One event in words."""
    when = fmt.clock(at, tz, seconds=True)
    if kind == "CircuitOpened":
        until = d.get("open_until")
        detail = (f"{d.get('reason', '?')}: failure rate {_pct(d.get('failure_rate'))}, "
                  f"slow calls {_pct(d.get('slow_call_rate'))}"
                  + (f"; open until {fmt.clock(until, tz, True)}" if isinstance(until, (int, float)) else ""))
        return TimelineEntry(when, "breaker opened", subject, detail, "critical")
    if kind == "CircuitHalfOpened":
        return TimelineEntry(when, "breaker half-open", subject, f"{d.get('permits', '?')} probe calls admitted",
                             "info")
    if kind == "CircuitClosed":
        return TimelineEntry(when, "breaker closed", subject, str(d.get("reason", "")), "ok")
    if kind == "BudgetWarning":
        return TimelineEntry(when, "budget warning", subject, _budget(d), "warning")
    if kind == "BudgetExhausted":
        resets = d.get("resets_at")
        detail = _budget(d) + (f"; resets {fmt.clock(resets, tz)}" if isinstance(resets, (int, float)) else "")
        return TimelineEntry(when, "budget exhausted", subject, detail, "critical")
    if kind == "AnomalyDetected":
        return TimelineEntry(when, f"anomaly ({d.get('severity', 'warning')})", str(d.get("target", subject)),
                             f"{d.get('rule', '?')}: {d.get('expression', '')}", str(d.get("severity", "warning")))
    if kind == "AnomalyResolved":
        return TimelineEntry(when, "anomaly resolved", str(d.get("target", subject)), str(d.get("rule", "")), "ok")
    if kind == "PolicyReloaded":
        added, removed = d.get("added_models") or [], d.get("removed_models") or []
        detail = "; ".join(filter(None, [f"added {', '.join(added)}" if added else "",
                                         f"removed {', '.join(removed)}" if removed else ""])) or "policies changed"
        return TimelineEntry(when, "policies reloaded", subject[:12], detail, "info")
    if kind == "ReloadFailed":
        problems = d.get("problems") or []
        first = str(problems[0]) if problems else "invalid policy set"
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return TimelineEntry(when, "reload failed", f"kept {subject[:12]}", first + more, "warning")
    return TimelineEntry(when, kind, subject, "", "info")


def timeline(events: Iterable[Event], tz: ZoneInfo) -> tuple[tuple[TimelineEntry, ...], int]:
    """Entries in time order (at most MAX_ENTRIES) and how many were left out."""
    shown = [e for e in events if e[1] not in QUIET]
    entries = tuple(entry(at, kind, subject, d, tz) for at, kind, subject, d in shown[:MAX_ENTRIES])
    return entries, max(0, len(shown) - MAX_ENTRIES)


def counts(events: Iterable[Event]) -> Counter[tuple[str, str]]:
    """(kind, subject) -> how many; anomaly subjects are their target."""
    out: Counter[tuple[str, str]] = Counter()
    for _, kind, subject, d in events:
        out[(kind, str(d.get("target", subject)) if kind.startswith("Anomaly") else subject)] += 1
    return out

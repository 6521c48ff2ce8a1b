"""Report sections built from a :class:`engine.reporting.build.Day`: rankings, budgets, charts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from engine.reporting import charts as chart_mod
from engine.reporting import fmt, rules
from engine.reporting.data import Cell, DayHistory, merged
from engine.reporting.model import BudgetRow, Chart, FallbackRow, HourRow, TierRanking, TtftRow
from engine.store.historydb import fallback_reason

if TYPE_CHECKING:
    from engine.reporting.build import Day

_PERIOD = {"hourly": "hourly", "daily": "daily", "monthly": "monthly"}


def rankings(day: Day, names: Mapping[str, Mapping[str, Any]], notes: Mapping[str, str]) -> tuple[TierRanking, ...]:
    out = []
    top = day.policy.report.top_models
    for tier in day.tiers:
        members = day.models_in(tier)
        spec = day.policy.tiers.get(tier)
        own = spec.score if spec is not None and spec.strategy == "score" else None
        expr = own or rules.default_score(tuple(day.policy.error_classes))
        called = [(m, names[m], notes[m]) for m in members if m in names and names[m]["calls"]]
        ranked = rules.rank(called, expr)
        idle = [m for m in members if m not in names or not names[m]["calls"]]
        more = len(ranked) - top
        out.append(TierRanking(tier, expr.source, "the tier's score" if own else "the report's default score",
                               ranked[:top], ", ".join(idle), f"{more} more not shown" if more > 0 else ""))
    return tuple(out)


def _applies(day: Day, scope: str, target: str | None, n: int) -> str:
    if scope == "model":
        return f"model {target}"
    if scope == "tier":
        return f"tier {target} ({fmt.plural(n, 'model')})"
    return "all models"


def _limit(tokens: float | None, cost: float | None) -> str:
    parts = ([f"{fmt.tokens(tokens)} tokens"] if tokens else []) + ([fmt.usd(cost)] if cost else [])
    return " · ".join(parts) or fmt.DASH


def budget_rows(day: Day) -> tuple[BudgetRow, ...]:
    rows = []
    for b in day.burns:
        s = b.spec
        warned = day.events[("BudgetWarning", s.name)]
        exhausted = [at for at, kind, subject, _ in day.hist.events if kind == "BudgetExhausted" and subject == s.name]
        period = (f"rolling {(s.rolling_s or 0) / 3600:g} h" if s.period == "rolling"
                  else f"{_PERIOD[s.period]} ({s.timezone})")
        if exhausted or b.peak >= s.exhaust_at:
            status = "exhausted"
        elif warned or b.peak >= s.warn_at:
            status = "warning"
        else:
            status = "ok"
        used = _limit(b.peak_tokens if s.tokens else None, b.peak_cost if s.cost_usd else None) if b.peak else fmt.DASH
        rows.append(BudgetRow(
            s.name, _applies(day, s.scope, s.target, len(b.models)), period, _limit(s.tokens, s.cost_usd), used,
            fmt.pct(b.peak), min(100, round(b.peak * 100)),
            fmt.clock(b.peak_at - 60, day.tz) if b.peak else fmt.DASH, str(warned),
            fmt.clock(exhausted[0], day.tz) if exhausted else fmt.DASH, status))
    return tuple(rows)


def fallback_rows(hist: DayHistory, limit: int = 25) -> tuple[FallbackRow, ...]:
    return tuple(FallbackRow(tier, f"{src or fmt.DASH} → {dst}" + (f" ({to_tier})" if to_tier != tier else ""),
                             fallback_reason(reason), fmt.count(n))
                 for tier, src, dst, to_tier, reason, n in hist.fallbacks[:limit])


def _labels(day: Day) -> list[str]:
    return [fmt.clock(h, day.tz) for h in day.hist.hours]


def charts(day: Day) -> tuple[Chart, ...]:
    labels = _labels(day)
    hours = range(len(labels))
    has = bool(day.total.calls)
    cells = day.by_tier_hour
    tiers = [t for t in day.tiers if t in day.by_tier]

    def per_tier(value: Any) -> list[tuple[str, list[float | None]]]:
        return [(t, [value(cells.get((t, h))) for h in hours]) for t in tiers] if has else []

    def p95(c: Any) -> float | None:
        return (c.histogram().quantile(0.95) or 0.0) if c is not None and c.calls else None

    calls = chart_mod.line_chart("calls", "Calls per hour", "calls", labels,
                                 per_tier(lambda c: float(c.calls) if c else 0.0), fmt.count,
                                 integer=True)
    errors = chart_mod.line_chart("errors", "Errors per hour", "errors", labels,
                                  per_tier(lambda c: float(c.errored) if c else 0.0), fmt.count,
                                  integer=True)
    latency = chart_mod.line_chart("p95", "p95 latency per hour", "ms", labels, per_tier(p95), fmt.ms)
    used = [b for b in day.burns if b.peak > 0]
    refs = sorted({(b.spec.warn_at, f"warn {fmt.pct(b.spec.warn_at, 0)}", "warn") for b in used}
                  | {(b.spec.exhaust_at, f"limit {fmt.pct(b.spec.exhaust_at, 0)}", "limit") for b in used})
    series = [(f"{b.spec.name} ({b.spec.target or 'all'})" if b.spec.scope != "global" else f"{b.spec.name} (all)",
               list(b.hourly)) for b in used]
    budget = chart_mod.line_chart("budgets", "Budget burn per model (highest share of the limit in each hour)",
                                  "share of limit", labels, series, lambda v: fmt.pct(v, 0), refs=refs,
                                  empty="No budgeted model was called on this day.")
    return calls, errors, latency, budget


def hour_rows(day: Day) -> tuple[tuple[str, ...], tuple[HourRow, ...]]:
    tiers = tuple(t for t in day.tiers if t in day.by_tier)
    rows = []
    for h, label in enumerate(_labels(day)):
        here = [day.by_tier_hour.get((t, h)) for t in tiers]
        if not any(c is not None and c.calls for c in here):
            continue
        total = merged(c for c in here if c is not None)
        cells = tuple(fmt.DASH if c is None else fmt.count(c.calls) + (
            f" ({fmt.plural(c.errored, 'error')})" if c.errored else "") for c in here)
        rows.append(HourRow(label, cells, fmt.count(total.calls), fmt.ms(total.histogram().quantile(0.95))))
    return tiers, tuple(rows)


def ttft_rows(day: Day) -> tuple[TtftRow, ...]:
    """TTFT p50/p95 of every tier asked for with streamed calls, each followed by its models that had some.

    A day without streamed calls has none (an empty tuple)."""
    cells: dict[tuple[str, str], list[Cell]] = {}
    for (tier, model, _), cell in day.hist.cells.items():
        cells.setdefault((tier, model), []).append(cell)
    pairs = {key: c for key, c in ((k, merged(v)) for k, v in cells.items()) if c.streamed}
    rows = []
    for tier in day.tiers:
        total = day.by_tier.get(tier)
        if total is None or not total.streamed:
            continue
        models = sorted(m for t, m in pairs if t == tier)
        for scope, name, cell in [("tier", tier, total)] + [("model", m, pairs[(tier, m)]) for m in models]:
            p50, p95 = cell.ttft_histogram().quantiles((0.5, 0.95))
            rows.append(TtftRow(scope, name, tier, fmt.count(cell.streamed),
                                fmt.pct(cell.streamed / cell.calls) if cell.calls else fmt.DASH,
                                fmt.ms(p50), fmt.ms(p95)))
    return tuple(rows)

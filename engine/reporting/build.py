"""From a day of history and a policy set to the report's view model (pure: no I/O).

Tiers are the tier the executor asked for: a call that degraded to another
tier's model counts under the tier requested. Models are ranked within their
home tier (``models.yaml``); a model the policies no longer know is placed in
the tier it was asked for most.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from engine.policy.model import PolicySet
from engine.reporting import budgets as burn_mod
from engine.reporting import fmt, rules, sections, stats, timeline
from engine.reporting.data import Cell, DayHistory, merged
from engine.reporting.model import CostRow, Report, Summary, TierRow

Names = dict[str, Any]

TIER_NOTE = ("Tiers are the tier the executor asked for: a call that degraded to another tier's model counts "
             "under the tier asked for. Models are ranked within their home tier (models.yaml); a model the "
             "policies no longer know is ranked in the tier it was asked for most.")


@dataclass
class Day:
    """The day's cells grouped every way the report needs them."""

    hist: DayHistory
    policy: PolicySet
    tz: ZoneInfo
    tiers: list[str]
    home: dict[str, str]  # model -> tier it is ranked in
    by_tier: dict[str, Cell]
    by_model: dict[str, Cell]
    by_tier_hour: dict[tuple[str, int], Cell]
    total: Cell
    prev_tier: dict[str, Cell]
    prev_model: dict[str, Cell]
    events: Counter[tuple[str, str]]
    burns: list[burn_mod.Burn]

    @classmethod
    def of(cls, hist: DayHistory, policy: PolicySet) -> Day:
        group: dict[str, dict[Any, list[Cell]]] = {"tier": {}, "model": {}, "hour": {}}
        asked: dict[str, Counter[str]] = {}
        for (tier, model, hour), cell in hist.cells.items():
            group["tier"].setdefault(tier, []).append(cell)
            group["model"].setdefault(model, []).append(cell)
            group["hour"].setdefault((tier, hour), []).append(cell)
            asked.setdefault(model, Counter())[tier] += cell.calls
        prev_tier: dict[str, Cell] = {}
        prev_model: dict[str, Cell] = {}
        for (tier, model), cell in hist.previous.items():
            prev_tier.setdefault(tier, Cell()).merge(cell)
            prev_model.setdefault(model, Cell()).merge(cell)
        home = {m: s.tier for m, s in policy.models.items()}
        for model, counts in asked.items():
            home.setdefault(model, sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0])
        tiers = set(group["tier"]) | set(home.values())
        order = [t for t in policy.tier_order if t in policy.tiers] + sorted(tiers - set(policy.tier_order))
        seen = set(hist.usage).union(*hist.usage_before.values())
        burns = [burn_mod.burn(hist, b, burn_mod.applies_to(b, policy, seen)) for b in policy.budgets]
        return cls(hist, policy, ZoneInfo(hist.timezone), order, home,
                   {k: merged(v) for k, v in group["tier"].items()},
                   {k: merged(v) for k, v in group["model"].items()},
                   {k: merged(v) for k, v in group["hour"].items()},
                   merged(hist.cells.values()), prev_tier, prev_model, timeline.counts(hist.events), burns)

    def models_in(self, tier: str) -> list[str]:
        listed = list(self.policy.tiers[tier].candidates) if tier in self.policy.tiers else []
        return listed + sorted(m for m, t in self.home.items() if t == tier and m not in listed)

    def burns_of(self, models: Iterable[str]) -> list[burn_mod.Burn]:
        wanted = set(models)
        return [b for b in self.burns if wanted & set(b.models)]

    def counts(self, scope: str, models: Iterable[str], extra: Iterable[str] = ()) -> Names:
        models = list(models)
        burns = self.burns_of(models)
        ev = self.events
        return {
            "breaker_opens": sum(ev[("CircuitOpened", m)] for m in models),
            "budget_warnings": sum(ev[("BudgetWarning", b.spec.name)] for b in burns),
            "budget_exhaustions": sum(ev[("BudgetExhausted", b.spec.name)] for b in burns),
            "budget_used_max": max((b.peak for b in burns), default=0.0),
            "anomalies": sum(ev[("AnomalyDetected", t)] for t in {*models, *extra}),
            "scope": scope,
        }


def _names(day: Day, cell: Cell, prev: Cell | None) -> Names:
    names = stats.metrics(cell, day.policy.error_classes)
    names["cost_change"] = fmt.ratio(cell.cost, prev.cost if prev else None)
    names["calls_change"] = fmt.ratio(cell.calls, prev.calls if prev else None)
    return names


def model_names(day: Day, model: str) -> Names:
    tier = day.home[model]
    names = _names(day, day.by_model.get(model, Cell()), day.prev_model.get(model))
    names.update(day.counts("model", [model]), model=model, tier=tier)
    spec = day.policy.models.get(model)
    last = [k for _, k, s, _ in day.hist.events if s == model and k.startswith("Circuit")]
    candidates = day.models_in(tier)
    names.update(provider=spec.provider if spec else "", in_flight=0,
                 budget_used=names["budget_used_max"], breaker_open=int(bool(last) and last[-1] == "CircuitOpened"),
                 context_window=spec.context_window if spec else 0,
                 price_in=spec.price.input_per_1m if spec else 0.0, price_out=spec.price.output_per_1m if spec else 0.0,
                 priority=candidates.index(model) if model in candidates else len(candidates))
    return names


def tier_names(day: Day, tier: str) -> Names:
    names = _names(day, day.by_tier.get(tier, Cell()), day.prev_tier.get(tier))
    names.update(day.counts("tier", day.models_in(tier), [tier]), model="", tier=tier)
    return names


def global_names(day: Day) -> Names:
    names = _names(day, day.total, merged(day.prev_tier.values()) if day.prev_tier else None)
    names.update(day.counts("global", day.home, day.tiers), model="", tier="")
    return names


def _change(now: float, before: Cell | None, attr: str) -> str:
    return fmt.change(now, getattr(before, attr) if before is not None else None)


def summary(day: Day, names: Names) -> Summary:
    c, has = day.total, bool(day.total.calls)
    ev = Counter(k for _, k, _, _ in day.hist.events)
    opens, exhausted, anomalies = ev["CircuitOpened"], ev["BudgetExhausted"], ev["AnomalyDetected"]
    prev = merged(day.prev_tier.values()) if day.prev_tier else None
    hourly = [sum(x.calls for (_, h), x in day.by_tier_hour.items() if h == i) for i in range(len(day.hist.hours))]
    top = max(range(len(hourly)), key=lambda i: (hourly[i], -i)) if hourly else 0
    busiest = fmt.DASH
    if hourly and hourly[top]:
        start = day.hist.hours[top]
        busiest = f"{fmt.clock(start, day.tz)}–{fmt.clock(start + 3600, day.tz)} ({fmt.count(hourly[top])} calls)"  # noqa: RUF001
    incidents = opens + exhausted + anomalies
    detail = ", ".join([fmt.plural(opens, "breaker opening"), fmt.plural(exhausted, "budget exhaustion"),
                        fmt.plural(anomalies, "anomaly", "anomalies")])
    avail = fmt.pct(names["availability"], 2) if has else fmt.DASH
    refused = ev["RequestRefused"]
    served = stats.request_availability(c, refused)
    requests = fmt.DASH if served is None else fmt.pct(served, 2)
    if served is not None:
        headline = (f"{fmt.count(c.requests + refused)} requests, {requests} served "
                    f"({fmt.count(c.calls)} attempts, {avail} available), {fmt.usd(c.cost)} spent, "
                    f"{fmt.plural(incidents, 'incident')}.")
    elif has:
        headline = (f"{fmt.count(c.calls)} calls, {avail} available, {fmt.usd(c.cost)} spent, "
                    f"{fmt.plural(incidents, 'incident')}.")
    else:
        headline = "No calls were recorded on this day."
    had = prev is not None and bool(prev.calls)

    def vs(attr: str) -> str:
        return f"{_change(getattr(c, attr), prev, attr)} vs the day before" if had else "no calls the day before"

    return Summary(has, avail, fmt.pct(names["success_rate"], 2) if has else fmt.DASH, fmt.count(c.calls),
                   fmt.count(c.successes), fmt.count(c.errored), fmt.count(c.fallbacks),
                   f"{fmt.pct(names['fallback_rate'])} of calls" if has else "", fmt.usd(c.cost),
                   fmt.tokens(c.tokens_in), fmt.tokens(c.tokens_out), fmt.tokens(c.tokens_in + c.tokens_out),
                   str(incidents), detail, vs("calls"), vs("cost"),
                   busiest, headline, requests, fmt.count(c.requests + refused) if served is not None else fmt.DASH,
                   fmt.count(refused))


def tier_rows(day: Day, names: dict[str, Names]) -> tuple[TierRow, ...]:
    rows = []
    for tier in day.tiers:
        n, has = names[tier], bool(names[tier]["calls"])
        dash = fmt.DASH
        rows.append(TierRow(
            tier, fmt.count(n["calls"]), fmt.pct(n["success_rate"], 2) if has else dash,
            fmt.pct(n["availability"], 2) if has else dash, fmt.ms(n["p95_ms"]) if has else dash,
            fmt.usd(n["cost_per_success"]) if n["successes"] else dash,
            fmt.count(n["tokens_per_success"]) if n["successes"] else dash,
            fmt.pct(n["fallback_rate"]) if has else dash, fmt.usd(n["cost_usd"])))
    return tuple(rows)


def cost_row(name: str, tier: str, cell: Cell, prev: Cell | None, total: float, note: str) -> CostRow:
    toks = cell.tokens_in + cell.tokens_out
    before = None if prev is None else prev.tokens_in + prev.tokens_out
    return CostRow(name, tier, fmt.count(cell.calls), fmt.tokens(cell.tokens_in), fmt.tokens(cell.tokens_out),
                   fmt.usd(cell.cost), fmt.pct(cell.cost / total) if total else fmt.DASH,
                   _change(cell.cost, prev, "cost"), fmt.change(toks, before), note)


def model_note(day: Day, model: str) -> str:
    """Why a model's day looks different: not in the policies, added by a reload, or no calls before."""
    if model not in day.policy.models:
        return "not in the current policies"
    first = day.hist.first_call.get(model)
    added = [at for at, kind, _, d in day.hist.events if kind == "PolicyReloaded" and model in (
        d.get("added_models") or ())]
    if added:
        return f"added at {fmt.clock(added[0], day.tz)}" + (f", first call {fmt.clock(first, day.tz)}" if first else "")
    prev = day.prev_model.get(model)
    if first is not None and (prev is None or not prev.calls) and first - day.hist.start >= 3600:
        return f"first call {fmt.clock(first, day.tz)}, none the day before"
    return ""


def build_report(hist: DayHistory, policy: PolicySet) -> Report:
    """The whole view model of ``hist``'s day under ``policy``."""
    day = Day.of(hist, policy)
    t_names = {t: tier_names(day, t) for t in day.tiers}
    m_names = {m: model_names(day, m) for m in sorted(day.home)}
    g_names = global_names(day)
    notes = {m: model_note(day, m) for m in m_names}
    total = day.total.cost
    by_model = sorted(day.by_model.items(), key=lambda kv: (-kv[1].cost, kv[0]))
    entries, left_out = timeline.timeline(hist.events, day.tz)
    targets = {"model": [(m, n) for m, n in m_names.items()], "tier": list(t_names.items()),
               "global": [("", g_names)]}
    footnotes = [stats.AVAILABILITY_NOTE, TIER_NOTE, burn_mod.BURN_NOTE, f"Times are in {hist.timezone}."]
    if left_out:
        footnotes.append(f"The timeline shows the first {timeline.MAX_ENTRIES} events; {left_out} more are in "
                         "the history's event log.")
    local = datetime.combine(hist.day, datetime.min.time())
    hour_columns, hours = sections.hour_rows(day)
    return Report(
        f"Daily report {hist.day.isoformat()}", hist.day.isoformat(), local.strftime("%A"), hist.timezone,
        f"{hist.day:%y%m%d}-DAILY-REPORT", policy.revision[:12], summary(day, g_names),
        tier_rows(day, t_names), sections.rankings(day, m_names, notes),
        tuple(cost_row(t, t, day.by_tier[t], day.prev_tier.get(t), total, "") for t in day.tiers if t in day.by_tier),
        tuple(cost_row(m, day.home[m], c, day.prev_model.get(m), total, notes[m]) for m, c in by_model),
        sections.budget_rows(day), entries, sections.fallback_rows(hist), rules.recommend(policy.recommendations,
                                                                                          targets),
        sections.charts(day), hour_columns, hours, tuple(footnotes), sections.ttft_rows(day))

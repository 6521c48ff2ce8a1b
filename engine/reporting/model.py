"""The report's view model: plain frozen dataclasses of display-ready text.

Everything a template shows is computed here in Python (numbers formatted,
plurals chosen, rows sorted), so templates only place values; user templates
cannot get numbers wrong. Charts are geometry (coordinates already scaled).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Summary:
    has_calls: bool
    availability: str  # see Report.footnotes
    success_rate: str
    calls: str
    successes: str
    errors: str
    fallbacks: str
    fallback_share: str  # "4.9% of calls", "" without calls
    cost: str
    tokens_in: str
    tokens_out: str
    tokens: str
    incidents: str
    incident_detail: str  # "2 breaker openings, 1 budget exhaustion, 0 anomalies"
    calls_change: str  # "+12.0% vs the day before" or "no calls the day before"
    cost_change: str
    busiest_hour: str
    headline: str  # one sentence for the top of the report
    request_availability: str = "—"  # served requests / requests ("—": the history has no request counts)
    requests: str = "—"
    refused: str = "0"  # requests no model could serve


@dataclass(frozen=True, slots=True)
class TierRow:
    tier: str
    calls: str
    success_rate: str
    availability: str
    p95: str
    cost_per_success: str
    tokens_per_success: str
    fallback_share: str
    cost: str


@dataclass(frozen=True, slots=True)
class RankedModel:
    rank: int
    model: str
    provider: str
    score: str
    calls: str
    success_rate: str
    p95: str
    cost_per_success: str
    why: str
    note: str  # "" or e.g. "new today: first call 13:05"


@dataclass(frozen=True, slots=True)
class TierRanking:
    tier: str
    score_source: str  # the expression the score comes from
    score_origin: str  # "the tier's score" or "the report's default score"
    models: tuple[RankedModel, ...]
    idle: str  # models of the tier without calls, comma-separated ("" if none)
    more: str  # "3 more not shown" when top_models cut the list


@dataclass(frozen=True, slots=True)
class CostRow:
    name: str
    tier: str
    calls: str
    tokens_in: str
    tokens_out: str
    cost: str
    share: str  # of the day's cost
    cost_change: str
    tokens_change: str
    note: str


@dataclass(frozen=True, slots=True)
class BudgetRow:
    budget: str
    applies_to: str
    period: str
    limit: str
    used: str  # at the peak
    peak: str  # fraction of the limit at its highest during the day
    bar: int  # the same as a whole percentage for a bar, 0..100 (capped)
    peak_at: str
    warnings: str
    exhausted: str  # "14:05" or "—"
    status: str  # "ok", "warning", "exhausted"


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    time: str
    kind: str
    subject: str
    detail: str
    severity: str  # "critical", "warning", "info", "ok": a CSS class in HTML


@dataclass(frozen=True, slots=True)
class FallbackRow:
    tier: str
    route: str  # "gpt-4.1-mini → gemini-2.5-flash (L2)"
    reason: str
    count: str


@dataclass(frozen=True, slots=True)
class Recommendation:
    rule: str
    severity: str
    scope: str
    target: str
    message: str
    suggest: str
    evidence: str


@dataclass(frozen=True, slots=True)
class TtftRow:
    """Time to first token of the streamed calls asked of one tier, or of one model in that tier."""

    scope: str  # "tier" (all its models) or "model"
    name: str  # the tier or the model
    tier: str  # the tier asked for
    streamed: str  # streamed calls
    share: str  # of all the tier's or model's calls
    p50: str
    p95: str


@dataclass(frozen=True, slots=True)
class HourRow:
    hour: str  # "14:00"
    cells: tuple[str, ...]  # per tier: "1,234 (5 errors)"
    calls: str
    p95: str


@dataclass(frozen=True, slots=True)
class Tick:
    at: float  # pixel position along the axis
    text: str


@dataclass(frozen=True, slots=True)
class Point:
    x: float
    y: float
    title: str  # a tooltip


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    color: str
    dash: str  # "" or an SVG dash pattern, so series differ without colour too
    segments: tuple[str, ...]  # "x,y x,y ..." for each polyline (a gap in the data splits the line)
    dots: tuple[Point, ...]


@dataclass(frozen=True, slots=True)
class RefLine:
    y: float
    text: str
    kind: str  # "warn" or "limit"


@dataclass(frozen=True, slots=True)
class Chart:
    key: str
    title: str
    unit: str
    width: int
    height: int
    left: int  # plot area
    top: int
    right: int
    bottom: int
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    series: tuple[Series, ...]
    refs: tuple[RefLine, ...]
    empty: str  # "" or the message shown instead of lines


@dataclass(frozen=True, slots=True)
class Report:
    title: str
    day: str  # 2026-01-01
    weekday: str
    timezone: str
    stem: str  # 260101-DAILY-REPORT
    revision: str
    summary: Summary
    tiers: tuple[TierRow, ...]
    rankings: tuple[TierRanking, ...]
    cost_by_tier: tuple[CostRow, ...]
    cost_by_model: tuple[CostRow, ...]
    budgets: tuple[BudgetRow, ...]
    timeline: tuple[TimelineEntry, ...]
    fallbacks: tuple[FallbackRow, ...]
    recommendations: tuple[Recommendation, ...]
    charts: tuple[Chart, ...]
    hour_columns: tuple[str, ...]  # the tiers of HourRow.cells
    hours: tuple[HourRow, ...]
    footnotes: tuple[str, ...]
    #: Streamed calls' time to first token, per tier then per model; empty on a day without streamed calls
    #: (the templates then leave the section out).
    ttft: tuple[TtftRow, ...] = ()

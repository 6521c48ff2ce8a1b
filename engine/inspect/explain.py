"""Explain a tier's decision: the candidate chain, each verdict with its rule, what would change it.

Everything is asked of a throwaway :class:`~engine.core.PolicyEngine` on a
fake clock set to the moment asked about (seeded with saved state when given),
so the verdicts are the engine's own: each candidate is tried alone
(``decide(tier, model=...)``) on a fresh engine, and the answer is one
``decide(tier)``. Nothing is recorded and nothing is written anywhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from engine.core import PolicyEngine
from engine.errors import NoModelAvailable
from engine.policy.model import PolicySet
from engine.testing import FakeClock


@dataclass(frozen=True, slots=True)
class Budget:
    name: str
    used_fraction: float
    exhausted: bool
    tokens_left: int | None  # before exhaust_at, reservations counted
    cost_left: float | None
    resets_at: str | None


@dataclass(frozen=True, slots=True)
class Candidate:
    model: str
    tier: str  # the tier whose candidate list holds it (a degrade_to tier for the later ones)
    position: int
    available: bool
    verdict: str  # "available", or the engine's reason for skipping it
    breaker: str
    reopens_at: str | None
    in_flight: int
    max_in_flight: int | None
    context_window: int
    budgets: tuple[Budget, ...]
    score: float | None = None
    note: str = ""


@dataclass(slots=True)
class Explanation:
    tier: str
    at: str
    timezone: str
    tokens: int | None
    strategy: str
    chain: list[Candidate] = field(default_factory=list)
    chosen: str | None = None
    is_fallback: bool = False
    changes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


_EPOCH = re.compile(r"\bt=([0-9]+(?:\.[0-9]+)?)")
# the engine's reasons give wall-clock times in UTC: shown in the report's time zone here
_UTC = re.compile(r"\b([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?)Z\b")


def _local(text: str, tz: ZoneInfo) -> str:
    """``text`` with each engine time (``t=…``) and UTC time (``…Z``) in local time."""
    text = _EPOCH.sub(lambda m: _clock(float(m.group(1)), tz) or m.group(0), text)
    return _UTC.sub(lambda m: _clock(datetime.fromisoformat(m.group(1) + "+00:00").timestamp(), tz) or m.group(0),
                    text)


def _clock(t: float | None, tz: ZoneInfo) -> str | None:
    if t is None or not math.isfinite(t):
        return None
    return datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d %H:%M:%S")


def _engine(policy: PolicySet, at: float, saved: Mapping[str, Any] | None) -> PolicyEngine:
    eng = PolicyEngine(policy, clock=FakeClock(at), store="memory://")
    if saved:
        eng.restore_state(saved)
    return eng


def _chain(policy: PolicySet, tier: str) -> list[tuple[str, str]]:
    """(tier, model) in the order a decision considers them: the tier's candidates, then its degrade_to
    tiers' (breadth first), no model twice."""
    order: list[tuple[str, str]] = []
    seen_tiers, seen_models = [tier], set()
    queue = [tier]
    while queue:
        t = queue.pop(0)
        for m in policy.tiers[t].candidates:
            if m not in seen_models:
                seen_models.add(m)
                order.append((t, m))
        for nxt in policy.tiers[t].degrade_to:
            if nxt not in seen_tiers:
                seen_tiers.append(nxt)
                queue.append(nxt)
    return order


def _score(policy: PolicySet, tier: str, model: str, metrics: Mapping[str, Any]) -> float | None:
    spec = policy.tiers[tier]
    if spec.strategy != "score" or spec.score is None:
        return None
    names = dict(metrics)
    names["priority"] = spec.candidates.index(model)
    try:
        return float(spec.score(names))
    except (ArithmeticError, TypeError, ValueError):
        return None


def explain(policy: PolicySet, tier: str, *, at: float, tokens: int | None = None,
            saved: Mapping[str, Any] | None = None) -> Explanation:
    """Why ``tier`` would pick what it picks at ``at`` (UNIX seconds); raises KeyError for an unknown tier."""
    if tier not in policy.tiers:
        raise KeyError(tier)
    tz = ZoneInfo(policy.report.timezone)
    out = Explanation(tier, _clock(at, tz) or "", policy.report.timezone, tokens, policy.tiers[tier].strategy)
    eng = _engine(policy, at, saved)
    try:
        d = eng.decide(tier, estimated_tokens=tokens)
        out.chosen, out.is_fallback = d.model, d.is_fallback
    except NoModelAvailable:
        out.chosen = None
    for position, (home, model) in enumerate(_chain(policy, tier)):
        out.chain.append(_candidate(policy, tier, home, model, position, at, tokens, saved, tz))
    if policy.tiers[tier].strategy == "score":
        firsts = [c for c in out.chain if c.tier == tier]
        ranked = sorted(firsts, key=lambda c: (-(c.score if c.score is not None else -math.inf), c.position))
        out.chain = ranked + [c for c in out.chain if c.tier != tier]
    out.changes = _changes(out)
    return out


def _candidate(policy: PolicySet, tier: str, home: str, model: str, position: int, at: float,
               tokens: int | None, saved: Mapping[str, Any] | None, tz: ZoneInfo) -> Candidate:
    eng = _engine(policy, at, saved)
    try:
        eng.decide(tier, model=model, estimated_tokens=tokens)
        verdict, available = "available", True
    except NoModelAvailable as exc:
        verdict, available = "; ".join(r for _, r in exc.candidates) or "unavailable", False
        verdict = _local(verdict, tz)
    state = _engine(policy, at, saved).state(model)
    br = state["breaker"]
    exhaust = {b.name: b.exhaust_at for b in policy.budgets}
    budgets = tuple(_budget(b, tz, exhaust[b["name"]]) for b in state["budgets"])
    spec = policy.models[model]
    note = ""
    if tokens is not None and tokens > spec.context_window:
        note = f"a call of {tokens:,} tokens exceeds its context window of {spec.context_window:,}"
    return Candidate(model, home, position, available, verdict, br["state"],
                     _clock(br["open_until"], tz) if br["state"] in ("open", "half_open") else None,
                     state["in_flight"], state["max_in_flight"], spec.context_window, budgets,
                     _score(policy, home, model, state["metrics"]) if home == tier else None, note)


def _budget(b: Mapping[str, Any], tz: ZoneInfo, spec_exhaust: float) -> Budget:
    tokens_left = cost_left = None
    if b["tokens_limit"]:
        tokens_left = max(0, int(b["tokens_limit"] * spec_exhaust) - b["tokens_used"] - b["tokens_reserved"])
    if b["cost_limit"]:
        cost_left = max(0.0, b["cost_limit"] * spec_exhaust - b["cost_used"] - b["cost_reserved"])
    return Budget(b["name"], b["used_fraction"], bool(b["exhausted"]), tokens_left, cost_left,
                  _clock(b["resets_at"], tz))


def _changes(out: Explanation) -> list[str]:
    """What would change the answer: each better candidate's way back, and what would take the chosen one."""
    lines: list[str] = []
    for c in out.chain:
        if c.model == out.chosen:
            break
        if c.reopens_at and c.breaker == "open":
            lines.append(f"{c.model} would be tried again from {c.reopens_at}, when its breaker half-opens")
        elif c.breaker == "forced_open":
            lines.append(f"{c.model} comes back only when its forced state is released")
        for b in c.budgets:
            if b.exhausted:
                lines.append(f"{c.model} is back when budget {b.name} resets"
                             + (f" at {b.resets_at}" if b.resets_at else " (rolling: as usage ages out)"))
        if c.max_in_flight is not None and c.in_flight >= c.max_in_flight:
            lines.append(f"{c.model} is back when one of its {c.in_flight} calls in flight finishes")
    chosen = next((c for c in out.chain if c.model == out.chosen), None)
    if chosen is not None:
        after = [c for c in out.chain if c.position > chosen.position and c.available]
        nxt = after[0].model if after else None
        then = f"the answer would be {nxt}" if nxt else "no model would be available"
        lefts = [f"{b.tokens_left:,} more tokens on {b.name}" for b in chosen.budgets if b.tokens_left is not None]
        lefts += [f"${b.cost_left:,.2f} more on {b.name}" for b in chosen.budgets if b.cost_left is not None]
        cause = "its breaker opens" + (f" or it spends {' or '.join(lefts)}" if lefts else "")
        lines.append(f"if {chosen.model} became unavailable ({cause}), {then}")
    elif out.chain:
        lines.append("no candidate is available: the tier raises NoModelAvailable until one recovers")
    return lines

"""Recommendation rules and model ranking over a day's names."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from engine.policy import contexts
from engine.policy.expressions import compile_expression
from engine.policy.model import Expression, RecommendationRule
from engine.policy.templating import render
from engine.reporting import fmt
from engine.reporting.model import RankedModel, Recommendation

log = logging.getLogger("engine.report")

#: How the report ranks the models of a tier that has no ``score`` of its own.
DEFAULT_SCORE = "success_rate * 100 - p95_ms / 1000 - error_rate * 50"
SEVERITY = {"critical": 0, "warning": 1, "info": 2}
_RATES = ("_rate", "availability", "budget_used_max", "_change")

Names = Mapping[str, Any]


def default_score(classes: Sequence[str]) -> Expression:
    return compile_expression(DEFAULT_SCORE, contexts.score_context(classes))


def value_text(name: str, value: Any) -> str:
    """A name's value as the evidence line shows it."""
    if isinstance(value, str):
        return repr(value)
    if name.endswith(_RATES):
        return fmt.pct(value, 2)
    if name.endswith("_ms"):
        return fmt.ms(value)
    if name.startswith("cost"):
        return fmt.usd(value)
    return f"{value:,.4g}" if isinstance(value, float) and not value.is_integer() else fmt.count(value)


def evidence(names: Names, used: frozenset[str]) -> str:
    return "; ".join(f"{n} = {value_text(n, names[n])}" for n in sorted(used) if n in names)


def _holds(expr: Expression, names: Names) -> bool:
    try:
        return bool(expr(names))
    except (ArithmeticError, TypeError, ValueError, KeyError) as exc:
        log.debug("rule %r raised %r; taken as false", expr.source, exc)
        return False


def recommend(rules: Sequence[RecommendationRule],
              targets: Mapping[str, Sequence[tuple[str, Names]]]) -> tuple[Recommendation, ...]:
    """Every (rule, target) whose ``when`` holds, most severe first, then in rule order."""
    found = []
    for order, rule in enumerate(rules):
        for target, names in targets.get(rule.scope, ()):
            if not _holds(rule.when, names):
                continue
            try:
                message, suggest = render(rule.message, names), render(rule.suggest, names)
            except KeyError as exc:  # a template name the day does not have
                message, suggest = f"{rule.message} (cannot fill in {exc})", rule.suggest
            found.append((SEVERITY.get(rule.severity, 3), order, target, Recommendation(
                rule.name, rule.severity, rule.scope, target or "all tiers", message, suggest,
                evidence(names, rule.when.names))))
    found.sort(key=lambda r: r[:3])
    return tuple(r[3] for r in found)


def score_of(expr: Expression, names: Names) -> float | None:
    try:
        return float(expr(names))
    except (ArithmeticError, TypeError, ValueError, KeyError):
        return None


def rank(models: Sequence[tuple[str, Names, str]], expr: Expression) -> tuple[RankedModel, ...]:
    """Models (name, day names with ``priority``, note) with calls, best score first, and why."""
    scored = sorted(((score_of(expr, names), names["priority"], name, names, note)
                     for name, names, note in models), key=lambda s: (
        -(s[0] if s[0] is not None else float("-inf")), s[1], s[2]))
    best = _superlatives([names for *_, names, _ in scored])
    out = []
    for i, (score, _, name, names, note) in enumerate(scored, 1):
        facts = [f"{fmt.pct(names['success_rate'])} success over {fmt.count(names['calls'])} calls",
                 f"p95 {fmt.ms(names['p95_ms'])}",
                 f"{fmt.usd(names['cost_per_success'])} per success"]
        facts += [text for key, text in best if key == name]
        if names.get("breaker_opens"):
            facts.append(f"breaker opened {fmt.plural(int(names['breaker_opens']), 'time')}")
        if names.get("budget_exhaustions"):
            facts.append("ran out of budget")
        out.append(RankedModel(i, name, str(names.get("provider", "")),
                               fmt.DASH if score is None else f"{score:,.1f}", fmt.count(names["calls"]),
                               fmt.pct(names["success_rate"], 2), fmt.ms(names["p95_ms"]),
                               fmt.usd(names["cost_per_success"]), "; ".join(facts), note))
    return tuple(out)


def _superlatives(all_names: Sequence[Names]) -> list[tuple[str, str]]:
    """(model, "most reliable in the tier") and the like, when there is more than one to compare."""
    if len(all_names) < 2:
        return []
    picks = (("success_rate", max, "most reliable in the tier"), ("p95_ms", min, "fastest p95 in the tier"),
             ("cost_per_success", min, "cheapest per success in the tier"))
    out = []
    for key, pick, text in picks:
        values = [n[key] for n in all_names if n["successes"]]
        if len(set(values)) < 2:
            continue
        winner = pick(values)
        out += [(str(n["model"]), text) for n in all_names if n["successes"] and n[key] == winner]
    return out

"""Anomaly rules and health grades, evaluated on a schedule, never per call.

:class:`Monitor` holds, for each rule and target (a model or a tier), since
when its condition has held; a condition that holds for the rule's ``for``
duration emits one :class:`AnomalyDetected`, and the first evaluation where it
no longer holds emits :class:`AnomalyResolved`. An expression that raises
(a division by zero, say) counts as not holding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from engine.events import AnomalyDetected, AnomalyResolved, Event
from engine.policy.model import Expression, HealthSpec, MonitoringSpec

log = logging.getLogger("engine.monitor")


def holds(expr: Expression | None, names: Mapping[str, Any]) -> bool:
    if expr is None:
        return False
    try:
        return bool(expr(names))
    except (ArithmeticError, TypeError, ValueError, KeyError) as exc:
        log.debug("expression %r raised %r; taken as false", expr.source, exc)
        return False


def health(spec: HealthSpec, names: Mapping[str, Any]) -> str:
    """``"unhealthy"``, ``"degraded"`` or ``"healthy"`` by the policy's rules."""
    if holds(spec.unhealthy_when, names):
        return "unhealthy"
    if holds(spec.degraded_when, names):
        return "degraded"
    return "healthy"


class Monitor:
    __slots__ = ("spec", "next_at", "since", "active")

    def __init__(self, spec: MonitoringSpec, now: float) -> None:
        self.spec = spec
        self.next_at = now + spec.evaluate_every_s
        self.since: dict[tuple[str, str], float] = {}
        self.active: set[tuple[str, str]] = set()

    def carry_over(self, old: Monitor, now: float, models: set[str], tiers: set[str]) -> list[Event]:
        """Take over ``old``'s pending and active anomalies whose rule and target still exist.

        Returns an :class:`AnomalyResolved` for each active one that cannot go
        on (its rule or its model or tier is gone).
        """
        rules = {r.name: r for r in self.spec.anomalies}
        old_rules = {r.name: r for r in old.spec.anomalies}

        def alive(key: tuple[str, str]) -> bool:
            rule = rules.get(key[0])
            return rule is not None and key[1] in (models if rule.scope == "model" else tiers)

        self.since = {k: v for k, v in old.since.items() if alive(k)}
        self.active = {k for k in old.active if alive(k)}
        events: list[Event] = []
        for name, target in sorted(old.active - self.active):
            rule = old_rules[name]
            events.append(AnomalyResolved(now, name, rule.scope, target, rule.severity, {}))
        return events

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def evaluate(
        self,
        now: float,
        model_names: Callable[[], Mapping[str, Mapping[str, Any]]],
        tier_names: Callable[[], Mapping[str, Mapping[str, Any]]],
    ) -> list[Event]:
        """Run every rule over every target; returns the events it caused."""
        self.next_at = now + self.spec.evaluate_every_s
        events: list[Event] = []
        targets = {"model": model_names() if self.spec.anomalies else {}, "tier": {}}
        if any(r.scope == "tier" for r in self.spec.anomalies):
            targets["tier"] = tier_names()
        for rule in self.spec.anomalies:
            for target, names in targets[rule.scope].items():
                key = (rule.name, target)
                if holds(rule.when, names):
                    start = self.since.setdefault(key, now)
                    if key not in self.active and now - start >= rule.for_s:
                        self.active.add(key)
                        events.append(AnomalyDetected(now, rule.name, rule.scope, target, rule.severity,
                                                      rule.when.source, dict(names)))
                else:
                    self.since.pop(key, None)
                    if key in self.active:
                        self.active.discard(key)
                        events.append(AnomalyResolved(now, rule.name, rule.scope, target, rule.severity,
                                                      dict(names)))
        return events

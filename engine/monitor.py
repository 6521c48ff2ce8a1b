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
from engine.policy import Expression, HealthSpec, MonitoringSpec

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

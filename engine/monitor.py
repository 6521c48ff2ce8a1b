"""Anomaly rules and health grades, evaluated on a schedule, never per call.

:class:`Monitor` holds, for each rule and target (a model or a tier), since
when its condition has held; a condition that holds for the rule's ``for``
duration emits one :class:`AnomalyDetected`, and the first evaluation where it
no longer holds emits :class:`AnomalyResolved`. An expression that raises
(a division by zero, say) counts as not holding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Mapping
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
    __slots__ = ("spec", "next_at", "since", "active", "_seen")

    def __init__(self, spec: MonitoringSpec, now: float) -> None:
        self.spec = spec
        self.next_at = now + spec.evaluate_every_s
        self.since: dict[tuple[str, str], float] = {}
        self.active: set[tuple[str, str]] = set()
        # (scope, target) -> the version and names of its last evaluation
        self._seen: dict[tuple[str, str], tuple[Hashable, Mapping[str, Any]]] = {}

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
        targets: Mapping[str, Iterable[str]],
        version: Callable[[str, str], tuple[Hashable, Any]],
        names: Callable[[str, str, Any], Mapping[str, Any]],
    ) -> list[Event]:
        """Run every rule over every target; returns the events it caused.

        ``targets``: the models (``"model"``) and tiers (``"tier"``);
        ``version(scope, target)``: ``(key, reads)``, where ``key`` is equal
        only while every name this scope's rules use is;
        ``names(scope, target, reads)``: the target's names. A target whose
        key is the one this monitor last saw gives every rule the verdict it
        gave then, so its rules run again only where one is waiting out its
        ``for``: the others held and are active, or did not hold, and cause no
        event now as they caused none then. An event carries the names of now.
        """
        self.next_at = now + self.spec.evaluate_every_s
        events: list[Event] = []
        anomalies = self.spec.anomalies
        seen = self._seen
        scopes: dict[str, dict[str, tuple[Mapping[str, Any], Any, bool]]] = {"model": {}, "tier": {}}
        for scope in ("model", "tier"):
            wanted = anomalies if scope == "model" else any(r.scope == "tier" for r in anomalies)
            if not wanted:
                continue
            out = scopes[scope]
            for target in targets[scope]:
                key, reads = version(scope, target)
                last = seen.get((scope, target))
                if last is not None and last[0] == key:
                    out[target] = (last[1], reads, False)
                else:
                    current = names(scope, target, reads)
                    seen[(scope, target)] = (key, current)
                    out[target] = (current, reads, True)
        since, active = self.since, self.active
        for rule in anomalies:
            scope = rule.scope
            for target, (current, reads, fresh) in scopes[scope].items():
                key = (rule.name, target)
                if not fresh and (key not in since or key in active):
                    continue  # the same verdict as last time, which caused no event
                if holds(rule.when, current):
                    start = since.setdefault(key, now)
                    if key not in active and now - start >= rule.for_s:
                        active.add(key)
                        if not fresh:
                            current = names(scope, target, reads)
                        events.append(AnomalyDetected(now, rule.name, scope, target, rule.severity,
                                                      rule.when.source, dict(current)))
                else:
                    since.pop(key, None)
                    if key in active:
                        active.discard(key)
                        if not fresh:
                            current = names(scope, target, reads)
                        events.append(AnomalyResolved(now, rule.name, scope, target, rule.severity,
                                                      dict(current)))
        return events

"""Events the engine emits to its subscribers.

Every event is a frozen, past-tense dataclass carrying the time it happened
(the engine clock for breaker, fallback, anomaly and reload events; wall-clock
epoch seconds for budget and storage events, whose periods follow the
calendar), the model or tier it concerns, the rule that fired and a snapshot
of the metrics behind it. Listeners receive them in the order they happened,
the same order for every listener, one event at a time (see the README's
"Events"); a listener that raises is logged and never breaks a decision.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Event:
    at: float


@dataclass(frozen=True, slots=True)
class CircuitOpened(Event):
    model: str
    reason: str  # "failure_rate", "slow_call_rate", "half_open_failed", "probe_expired", "forced"
    open_until: float
    failure_rate: float = 0.0
    slow_call_rate: float = 0.0
    metrics: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)


@dataclass(frozen=True, slots=True)
class CircuitHalfOpened(Event):
    model: str
    permits: int


@dataclass(frozen=True, slots=True)
class CircuitClosed(Event):
    model: str
    reason: str  # "probes_succeeded", "released"
    failure_rate: float = 0.0
    slow_call_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class BudgetWarning(Event):
    budget: str
    used_fraction: float
    tokens_used: int
    tokens_limit: int | None
    cost_used: float
    cost_limit: float | None
    period_start: float


@dataclass(frozen=True, slots=True)
class BudgetExhausted(Event):
    budget: str
    used_fraction: float
    tokens_used: int
    tokens_limit: int | None
    cost_used: float
    cost_limit: float | None
    period_start: float
    resets_at: float | None


@dataclass(frozen=True, slots=True)
class BudgetReset(Event):
    budget: str
    period_start: float


@dataclass(frozen=True, slots=True)
class FallbackTriggered(Event):
    tier: str
    from_model: str | None
    to_model: str
    to_tier: str
    reason: str


@dataclass(frozen=True, slots=True)
class AnomalyDetected(Event):
    rule: str
    scope: str
    target: str
    severity: str
    expression: str
    metrics: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)


@dataclass(frozen=True, slots=True)
class AnomalyResolved(Event):
    rule: str
    scope: str
    target: str
    severity: str
    metrics: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, compare=False)


@dataclass(frozen=True, slots=True)
class ModelTakenOut(Event):
    """An error whose class has ``take_out_s`` (a retired model's 404, say) took ``model`` out of
    rotation until ``until`` (engine clock) or the next reload."""

    model: str
    error: str
    until: float


Listener = Callable[[Event], None]


@dataclass(frozen=True, slots=True)
class PolicyReloaded(Event):
    revision: str
    previous: str
    files: tuple[str, ...]
    added_models: tuple[str, ...] = ()
    removed_models: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReloadFailed(Event):
    """An edit did not take effect; ``kept`` is the revision still in force."""

    kept: str
    problems: tuple[Any, ...]  # engine.policy.problems.Problem, each with file:line:col

    def describe(self) -> str:
        return "\n".join(p.format() for p in self.problems)


@dataclass(frozen=True, slots=True)
class StorageDegraded(Event):
    """The shared store became unreachable; decisions go on from local state.

    ``at`` is wall-clock epoch seconds; ``retry_in_s``: when it is tried again.
    """

    store: str
    error: str
    retry_in_s: float


@dataclass(frozen=True, slots=True)
class StorageRecovered(Event):
    """The shared store answers again; what was decided locally has been pushed.

    ``down_s``: how long it was unreachable; ``data_lost``: it came back empty
    (restarted without persistence), so this process re-pushed its usage of
    the current periods; ``replayed``: operations sent to reconcile.
    """

    store: str
    down_s: float
    data_lost: bool
    replayed: int

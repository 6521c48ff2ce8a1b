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


@dataclass(frozen=True, slots=True)
class StorageCorrupt(Event):
    """A value in the shared store did not parse, was out of range or had the wrong type.

    It was reset to a safe state (``action`` says how) by the operation that
    found it; the same is logged as a warning. ``key`` and ``field`` name it
    (``field`` is empty for a key of the wrong type), ``value`` is what was
    stored (at most 48 bytes). ``at`` is wall-clock epoch seconds.
    """

    store: str
    key: str
    field: str
    value: str
    action: str


@dataclass(frozen=True, slots=True)
class StoragePolicyChanged(Event):
    """The shared definitions in force on a shared store's namespace changed.

    A fingerprint covers the budgets' limits and periods and the breakers'
    settings. ``reason``: ``"reload"`` (this process reloaded policies that
    change them), ``"replace"`` (this process started with
    ``on_conflict=replace`` over another set's), ``"other"`` (another process
    put ``fingerprint`` in force; this one still runs ``previous`` until it
    reloads). ``at`` is wall-clock epoch seconds.
    """

    store: str
    previous: str
    fingerprint: str
    reason: str

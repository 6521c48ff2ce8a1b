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

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, ClassVar

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def utc_iso(epoch: float | None) -> str | None:
    """``epoch`` seconds as ISO 8601 UTC with milliseconds (``2026-12-01T15:30:12.345Z``)."""
    if epoch is None or not math.isfinite(epoch):
        return None
    return datetime.fromtimestamp(round(epoch, 3), UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    fmt = getattr(value, "format", None)  # a policy Problem: file:line:col: code: message
    return fmt() if callable(fmt) else str(value)


@dataclass(frozen=True, slots=True)
class Event:
    """``at``: when it happened, in the engine clock (or wall-clock epoch seconds, see ``WALL_CLOCK_AT``).

    ``wall``: wall-clock epoch seconds of ``at``, stamped by the engine that
    delivers the event (NaN on an event built by hand).
    """

    at: float
    wall: float = field(default=math.nan, init=False, compare=False, repr=False)

    #: True when ``at`` is already wall-clock epoch seconds (budget and storage events).
    WALL_CLOCK_AT: ClassVar[bool] = False
    #: Fields holding times in the same clock as ``at``; ``to_dict`` adds ``<name>_time`` in UTC.
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ()

    @property
    def wall_time(self) -> float | None:
        """Wall-clock epoch seconds of ``at``, or None when unknown."""
        if self.WALL_CLOCK_AT:
            return self.at
        return None if math.isnan(self.wall) else self.wall

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: ``event`` (its type), ``time`` (UTC, ISO 8601), ``at`` (engine clock), its fields."""
        wall = self.wall_time
        shift = None if wall is None else wall - self.at
        out: dict[str, Any] = {"event": type(self).__name__, "time": utc_iso(wall), "at": self.at}
        for f in fields(self):
            if f.name in ("at", "wall"):
                continue
            value = getattr(self, f.name)
            out[f.name] = _plain(value)
            if f.name in self.TIME_FIELDS:
                out[f.name + "_time"] = None if shift is None or value is None else utc_iso(value + shift)
        return out

    def to_json(self) -> str:
        """:meth:`to_dict` as one line of JSON."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, slots=True)
class CircuitOpened(Event):
    model: str
    reason: str  # "failure_rate", "slow_call_rate", "half_open_failed", "probe_expired", "forced"
    open_until: float
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("open_until",)
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
    WALL_CLOCK_AT: ClassVar[bool] = True
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("period_start",)
    budget: str
    used_fraction: float
    tokens_used: int
    tokens_limit: int | None
    cost_used: float
    cost_limit: float | None
    period_start: float


@dataclass(frozen=True, slots=True)
class BudgetExhausted(Event):
    WALL_CLOCK_AT: ClassVar[bool] = True
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("period_start", "resets_at")
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
    WALL_CLOCK_AT: ClassVar[bool] = True
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("period_start",)
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
class RequestRefused(Event):
    """A new request found no model to serve it (``decide`` raised NoModelAvailable).

    ``candidates``: each model considered and why it was skipped; ``retry_at``:
    the earliest recovery (engine clock), or None.
    """

    tier: str
    candidates: tuple[tuple[str, str], ...]
    retry_at: float | None = None
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("retry_at",)


@dataclass(frozen=True, slots=True)
class ModelTakenOut(Event):
    """An error whose class has ``take_out_s`` (a retired model's 404, say) took ``model`` out of
    rotation until ``until`` (engine clock) or the next reload."""

    model: str
    error: str
    until: float
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("until",)


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
class ReloadRecovered(Event):
    """A valid policy set is in force again after one or more failed reloads.

    ``revision``: the set now in force (a new one, or the one kept when the bad
    edit was reverted); ``failures``: failed reloads since the last good one;
    ``failing_since``: when the first of them happened (engine clock).
    """

    revision: str
    failures: int
    failing_since: float
    TIME_FIELDS: ClassVar[tuple[str, ...]] = ("failing_since",)


@dataclass(frozen=True, slots=True)
class StorageDegraded(Event):
    """The shared store became unreachable; decisions go on from local state.

    ``at`` is wall-clock epoch seconds; ``retry_in_s``: when it is tried again.
    """

    WALL_CLOCK_AT: ClassVar[bool] = True

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

    WALL_CLOCK_AT: ClassVar[bool] = True

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

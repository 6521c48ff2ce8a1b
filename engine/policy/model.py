"""The compiled policy model: immutable dataclasses built by the loader.

A :class:`PolicySet` is what the engine runs on. It is produced by
:func:`engine.policy.loader.load_policies` from a directory of YAML files after every
schema and semantic check has passed, so code that receives one may rely on
every cross-reference being resolved and every number being in range.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from engine.policy.problems import Problem

WindowKind = Literal["count", "time"]
BreakerVerdict = Literal["failure", "ignore", "success"]
FallbackRule = Literal["any", "larger_context", "none"]
Period = Literal["hourly", "daily", "monthly", "rolling"]
Severity = Literal["info", "warning", "critical"]
Scope = Literal["model", "tier"]

#: Error classes every policy set knows; the ``errors`` policy may add more.
BUILTIN_ERROR_CLASSES: tuple[str, ...] = (
    "timeout",
    "rate_limit",
    "server_error",
    "connection",
    "context_window",
    "content_policy",
    "auth",
    "bad_request",
)


def frozen_map(data: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """A read-only view of a fresh dict copy of ``data``."""
    return MappingProxyType(dict(data or {}))


@dataclass(frozen=True, slots=True)
class Price:
    """List price in US dollars per one million tokens."""

    input_per_1m: float
    output_per_1m: float
    cached_input_per_1m: float | None = None  # input tokens read from the provider's prompt cache

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> float:
        cached_rate = self.input_per_1m if self.cached_input_per_1m is None else self.cached_input_per_1m
        return ((input_tokens - cached_input_tokens) * self.input_per_1m + cached_input_tokens * cached_rate
                + output_tokens * self.output_per_1m) / 1e6


@dataclass(frozen=True, slots=True)
class BreakerSpec:
    """Resolved circuit-breaker settings for one model (defaults, profile, override)."""

    window: WindowKind = "count"
    window_size: int = 20  # calls for a count window
    window_s: float = 60.0  # seconds for a time window
    window_buckets: int = 12  # buckets of a time window
    minimum_calls: int = 10
    failure_rate: float = 50.0  # percent (policies write a fraction; the compiler converts)
    slow_call_rate: float = 100.0  # percent (policies write a fraction; the compiler converts)
    slow_call_ms: float = 60_000.0
    open_for_s: float = 30.0
    backoff: float = 1.0
    max_open_for_s: float = 600.0
    half_open_permits: int = 3
    half_open_max_wait_s: float = 60.0


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    tier: str
    provider: str
    context_window: int
    price: Price
    breaker: BreakerSpec
    breaker_profile: str = "default"
    max_in_flight: int | None = None
    enabled: bool = True
    api_model: str = ""  # the id sent to the provider's API; "" means the same as ``name``
    timeout_s: float | None = None  # one attempt, start to last chunk
    ttft_timeout_s: float | None = None  # start to the first chunk that carries content
    slow_call_on: Literal["total", "ttft"] = "total"  # what the breaker's slow-call rule judges

    @property
    def api_id(self) -> str:
        """The model id to send to the provider (``api_model``, else the policy name)."""
        return self.api_model or self.name


@dataclass(frozen=True, slots=True)
class LeaseSpec:
    """How a budget shared through Redis is leased (see :mod:`engine.store.redis.lease`).

    Each process holds a slice of ``size`` (a fraction of each limit) taken
    from the budget's headroom with one round trip, decides against it
    locally, reports its usage and renews every ``sync_ms`` while it spends,
    and gives back what it did not use on close; a slice not renewed for
    ``ttl_s`` returns to the budget by itself (a process that died).
    """

    size: float = 0.01
    ttl_s: float = 30.0
    sync_ms: float = 100.0


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """A token and/or cost budget over a period.

    ``scope`` is ``"model"``, ``"tier"`` or ``"global"``; ``target`` names the
    model or tier (``None`` for global).
    """

    name: str
    scope: Literal["model", "tier", "global"]
    target: str | None
    period: Period
    tokens: int | None
    cost_usd: float | None
    warn_at: float = 0.9
    exhaust_at: float = 1.0
    rolling_s: float | None = None
    timezone: str = "UTC"
    reservation_ttl_s: float = 300.0
    lease: LeaseSpec | None = None  # shared (Redis) budgets: leased slices instead of a round trip per call


@dataclass(frozen=True, slots=True)
class ErrorClassSpec:
    name: str
    breaker: BreakerVerdict = "failure"
    fallback: FallbackRule = "any"
    retry: bool = False
    take_out_s: float | None = None  # out of rotation this long (or until a reload) after one such error


@dataclass(frozen=True, slots=True)
class ErrorMatch:
    """A declarative rule of ``errors.yaml``: every condition given must hold.

    ``status`` is the HTTP status; ``code`` matches a provider's error code or
    type (``insufficient_quota``, ``not_found_error``); ``message`` is a
    substring of the error message, compared without case.
    """

    error_class: str
    status: tuple[int, ...] = ()
    code: tuple[str, ...] = ()
    message: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """Where a provider's API lives: its SDK kind, base URL and the environment variable of its key."""

    name: str
    sdk: Literal["openai", "anthropic"] = "openai"
    base_url: str | None = None
    api_key_env: str | None = None


@dataclass(frozen=True, slots=True)
class RetrySpec:
    max_attempts: int = 4
    same_model_retries: int = 0
    initial_backoff_s: float = 0.1
    backoff_multiplier: float = 2.0
    max_backoff_s: float = 5.0
    jitter: Literal["none", "full", "equal"] = "full"
    honour_retry_after: bool = True
    max_retry_after_s: float = 30.0
    max_wait_s: float = 0.0


@dataclass(frozen=True, slots=True)
class TimeoutSpec:
    """routing.yaml ``timeouts``: per attempt and to first content (defaults a model may override),
    the deadline of one call across retries and fallbacks, and what a stream does after content
    reached the caller and then failed (``raise`` it, or ``continue`` on the next candidate)."""

    attempt_s: float | None = None
    ttft_s: float | None = None
    deadline_s: float | None = None
    after_content: Literal["raise", "continue"] = "raise"


@dataclass(frozen=True, slots=True)
class Expression:
    """A checked, compiled rule expression.

    ``fn`` takes one mapping of names to values and returns the value of the
    expression; ``source`` is the text as written in the policy.
    """

    source: str
    names: frozenset[str]
    fn: Callable[[Mapping[str, Any]], Any] = field(compare=False, repr=False)

    def __call__(self, names: Mapping[str, Any]) -> Any:
        return self.fn(names)


@dataclass(frozen=True, slots=True)
class TierSpec:
    name: str
    candidates: tuple[str, ...]
    strategy: Literal["priority", "score"] = "priority"
    score: Expression | None = None
    degrade_to: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AnomalyRule:
    name: str
    scope: Scope
    when: Expression
    for_s: float = 0.0
    severity: Severity = "warning"
    description: str = ""


@dataclass(frozen=True, slots=True)
class HealthSpec:
    degraded_when: Expression | None = None
    unhealthy_when: Expression | None = None


@dataclass(frozen=True, slots=True)
class MonitoringSpec:
    evaluate_every_s: float = 10.0
    window_s: float = 300.0
    health: HealthSpec = HealthSpec()
    anomalies: tuple[AnomalyRule, ...] = ()


@dataclass(frozen=True, slots=True)
class RecommendationRule:
    name: str
    scope: Literal["model", "tier", "global"]
    when: Expression
    severity: Severity
    message: str
    suggest: str = ""


@dataclass(frozen=True, slots=True)
class ReportSpec:
    output_dir: str = "memory/reports"
    templates_dir: str | None = None
    formats: tuple[str, ...] = ("markdown", "html")
    timezone: str = "UTC"
    top_models: int = 10


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Every policy file of a directory, compiled, checked and frozen.

    ``revision`` is a SHA-256 over the file names and bytes, so two loads of
    the same content compare equal and any edit changes it.
    """

    revision: str
    source: str
    files: tuple[str, ...]
    models: Mapping[str, ModelSpec]
    tiers: Mapping[str, TierSpec]
    tier_order: tuple[str, ...]
    budgets: tuple[BudgetSpec, ...]
    error_classes: Mapping[str, ErrorClassSpec]
    retry: RetrySpec
    monitoring: MonitoringSpec
    recommendations: tuple[RecommendationRule, ...]
    report: ReportSpec
    storage_uri: str | None = None  # the storage policy's uri, if any
    #: problems of severity ``warning`` found while loading (the set is valid with them)
    warnings: tuple[Problem, ...] = field(default=(), compare=False)
    error_matches: tuple[ErrorMatch, ...] = ()  # errors.yaml ``match``, evaluated in order
    providers: Mapping[str, ProviderSpec] = field(default_factory=frozen_map)
    timeouts: TimeoutSpec = field(default_factory=lambda: TimeoutSpec())

    def budgets_for(self, model: str) -> tuple[BudgetSpec, ...]:
        """Every budget that a call to ``model`` spends from."""
        spec = self.models[model]
        return tuple(
            b
            for b in self.budgets
            if b.scope == "global"
            or (b.scope == "model" and b.target == model)
            or (b.scope == "tier" and b.target == spec.tier)
        )

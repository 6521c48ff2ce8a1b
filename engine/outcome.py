"""What a decision is, and what the executor reports back about the call."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

_INF = math.inf


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one model call, as the executor reports it to ``record``.

    ``error`` is ``None`` for success or an error class of the policy set
    (``timeout``, ``rate_limit``, ``server_error``, ...). ``retry_after_s``
    carries a provider's retry-after hint (a 429's header), if any.
    """

    latency_ms: float
    input_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None
    retry_after_s: float | None = None

    def problem(self, error_classes: Mapping[str, Any]) -> str | None:
        """Why this outcome cannot be recorded, or ``None`` when it is sound."""
        lat, tin, tout = self.latency_ms, self.input_tokens, self.output_tokens
        if (type(lat) is float and 0.0 <= lat < _INF and type(tin) is int and tin >= 0
                and type(tout) is int and tout >= 0 and self.retry_after_s is None
                and (self.error is None or self.error in error_classes)):
            return None  # the common case, checked without a call per field
        lat = self.latency_ms
        if isinstance(lat, bool) or not isinstance(lat, (int, float)) or not math.isfinite(lat) or lat < 0:
            return f"latency_ms must be a finite number >= 0, got {lat!r}"
        for name in ("input_tokens", "output_tokens"):
            n = getattr(self, name)
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                return f"{name} must be an integer >= 0, got {n!r}"
        if self.error is not None and self.error not in error_classes:
            from engine.policy.problems import did_you_mean

            return (f"unknown error class {self.error!r}{did_you_mean(str(self.error), error_classes)}; "
                    f"expected None or one of {', '.join(sorted(error_classes))}")
        ra = self.retry_after_s
        if ra is not None and (isinstance(ra, bool) or not isinstance(ra, (int, float))
                               or not math.isfinite(ra) or ra < 0):
            return f"retry_after_s must be None or a finite number >= 0, got {ra!r}"
        return None


class Decision(NamedTuple):
    """Which model to call now, and why each better candidate was skipped.

    ``reasons`` lists ``(model, reason)`` for every candidate ranked above
    ``model`` that was not chosen. Hand the decision back to ``record``
    exactly once. Immutable (a named tuple: cheap to make on the hot path).
    """

    model: str
    tier: str
    is_fallback: bool
    reasons: tuple[tuple[str, str], ...]
    id: int
    at: float
    revision: str
    requested_tier: str
    estimated_tokens: int | None = None
    owner: Any = None

    def __repr__(self) -> str:
        return (f"Decision(model={self.model!r}, tier={self.tier!r}, is_fallback={self.is_fallback}, "
                f"reasons={self.reasons!r}, id={self.id})")

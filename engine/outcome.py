"""What a decision is, and what the executor reports back about the call."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

_INF = math.inf
#: Token counts (and estimates) must stay below 2**53: exact as floats, so cost arithmetic and the
#: history's 64-bit integers cannot overflow.
MAX_TOKENS = 2**53


def shown(value: Any) -> str:
    """``repr(value)`` for a message, without printing an integer of hundreds of digits."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"an integer of {len(str(abs(value)))} digits"
    return repr(value)


def token_problem(name: str, n: Any) -> str | None:
    """Why ``n`` is not a token count (an int, 0 <= n < 2**53), or ``None``."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < MAX_TOKENS:
        return f"{name} must be an integer >= 0 and < 2**53, got {shown(n)}"
    return None


def _finite(value: Any) -> bool:
    """A real number (not a bool) that is finite as a float; huge integers are not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one model call, as the executor reports it to ``record``.

    ``error`` is ``None`` for success or an error class of the policy set
    (``timeout``, ``rate_limit``, ``server_error``, ...). ``retry_after_s``
    carries a provider's retry-after hint (a 429's header), if any.
    ``latency_ms`` is a finite number >= 0; token counts are integers from 0
    to 2**53 - 1. ``ttft_ms``: time to the first chunk that carried content,
    for a streamed call (kept as its own rolling metric).
    """

    latency_ms: float
    input_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None
    retry_after_s: float | None = None
    ttft_ms: float | None = None
    cached_input_tokens: int = 0  # of input_tokens, read from the prompt cache (priced cached_input_per_1m)

    def problem(self, error_classes: Mapping[str, Any]) -> str | None:
        """Why this outcome cannot be recorded, or ``None`` when it is sound."""
        lat, tin, tout, error = self.latency_ms, self.input_tokens, self.output_tokens, self.error
        if (type(lat) is float and 0.0 <= lat < _INF and type(tin) is int and 0 <= tin < 9007199254740992
                and type(tout) is int and 0 <= tout < 9007199254740992 and self.retry_after_s is None
                and self.ttft_ms is None and self.cached_input_tokens == 0
                and (error is None or (type(error) is str and error in error_classes))):
            return None  # the common case, checked without a call per field (9007199254740992 = 2**53)
        if not _finite(lat) or lat < 0:
            return f"latency_ms must be a finite number >= 0, got {shown(lat)}"
        for name, n in (("input_tokens", tin), ("output_tokens", tout)):
            bad = token_problem(name, n)
            if bad is not None:
                return bad
        if error is not None:
            if not isinstance(error, str):
                return f"error must be None or the name of an error class, got {shown(error)}"
            if error not in error_classes:
                from engine.policy.problems import did_you_mean

                return (f"unknown error class {error!r}{did_you_mean(error, error_classes)}; "
                        f"expected None or one of {', '.join(sorted(error_classes))}")
        ra = self.retry_after_s
        if ra is not None and (not _finite(ra) or ra < 0):
            return f"retry_after_s must be None or a finite number >= 0, got {shown(ra)}"
        cached = self.cached_input_tokens
        bad = token_problem("cached_input_tokens", cached)
        if bad is not None:
            return bad
        if cached > tin:
            return f"cached_input_tokens must be at most input_tokens, got {cached} > {tin}"
        ttft = self.ttft_ms
        if ttft is not None and (not _finite(ttft) or ttft < 0):
            return f"ttft_ms must be None or a finite number >= 0, got {shown(ttft)}"
        return None


class Decision(NamedTuple):
    """Which model to call now, and why each better candidate was skipped.

    ``reasons`` lists ``(model, reason)`` for every candidate ranked above
    ``model`` that was not chosen. Hand the decision back to ``record``
    exactly once. Immutable (a named tuple: cheap to make on the hot path).
    The engine keeps its own copy of every open decision and settles that:
    a decision whose fields were changed (``d._replace(...)``) is refused.
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

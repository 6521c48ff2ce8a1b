"""Exceptions raised by the policy engine.

The tree::

    PolicyEngineError                 root of everything the engine raises
    ├── PolicyError                   a policy set failed to load or validate
    │                                 (.problems: every Problem found, located)
    ├── NoModelAvailable              no candidate could serve a decision
    │                                 (.candidates: each model and its reason,
    │                                  .retry_at: earliest recovery, or None)
    ├── DeadlineExceeded              call/acall ran out of its deadline (also a
    │                                 TimeoutError; __cause__: the last failure)
    └── StorageError                  a storage backend failed

``record`` raises the built-in ``ValueError`` for a bad outcome or a decision
it does not know, leaving all state untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.policy.problems import Problem


class PolicyEngineError(Exception):
    """Root of every exception the engine raises on purpose."""


class PolicyError(PolicyEngineError):
    """A policy set failed to load or validate.

    ``problems`` holds every problem found, not only the first; ``str()``
    shows them one a line as ``file:line:col: code: message``.
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        lines = [p.format() for p in self.problems]
        head = f"{len(lines)} policy problem{'s' if len(lines) != 1 else ''}"
        super().__init__(head + (":\n" + "\n".join(lines) if lines else ""))


class NoModelAvailable(PolicyEngineError):
    """Every candidate of a tier (and the tiers it degrades to) was skipped.

    ``candidates`` lists ``(model, reason)`` pairs in the order they were
    considered; ``retry_at`` is the clock time at which the earliest of them
    may become available again, or ``None`` when none will by itself;
    ``retry_at_wall`` is the same moment in wall-clock epoch seconds (shown in
    the message as UTC), when the engine knows it.
    """

    def __init__(
        self,
        tier: str,
        candidates: Sequence[tuple[str, str]],
        retry_at: float | None = None,
        retry_at_wall: float | None = None,
    ) -> None:
        self.tier = tier
        self.candidates = tuple(candidates)
        self.retry_at = retry_at
        self.retry_at_wall = retry_at_wall
        detail = "; ".join(f"{m}: {r}" for m, r in self.candidates) or "no candidates"
        when = ""
        if retry_at_wall is not None:
            stamp = datetime.fromtimestamp(round(retry_at_wall, 3), UTC).isoformat(timespec="milliseconds")
            when = f" (earliest recovery at {stamp.replace('+00:00', 'Z')})"
        elif retry_at is not None:
            when = f" (earliest recovery at t={retry_at:.3f})"
        super().__init__(f"no model available for tier {tier}: {detail}{when}")


class DeadlineExceeded(PolicyEngineError, TimeoutError):
    """A call's deadline (``timeouts.deadline_s`` or ``deadline_s=``) passed before an answer.

    ``__cause__`` is the last exception an attempt raised, if any.
    """

    def __init__(self, tier: str, deadline_s: float, attempts: int) -> None:
        self.tier, self.deadline_s, self.attempts = tier, deadline_s, attempts
        super().__init__(f"deadline of {deadline_s:g} s for tier {tier} passed after "
                         f"{attempts} attempt{'s' if attempts != 1 else ''}")


class StorageError(PolicyEngineError):
    """A storage backend failed; the original exception is ``__cause__``."""

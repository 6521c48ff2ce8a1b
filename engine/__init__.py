"""llm-policy-engine: declarative reliability policies for LLM calls.

Load a policy set with :func:`load_policies` (or ``validate-policies`` on the
command line); every problem comes back located as ``file:line:col: code``.
"""

from __future__ import annotations

import typing

from engine.errors import DeadlineExceeded, NoModelAvailable, PolicyEngineError, PolicyError, StorageError
from engine.events import (
    AnomalyDetected,
    AnomalyResolved,
    BudgetExhausted,
    BudgetReset,
    BudgetWarning,
    CircuitClosed,
    CircuitHalfOpened,
    CircuitOpened,
    Event,
    FallbackTriggered,
    ModelTakenOut,
    PolicyReloaded,
    ReloadFailed,
    ReloadRecovered,
    RequestRefused,
    StorageCorrupt,
    StorageDegraded,
    StoragePolicyChanged,
    StorageRecovered,
)
from engine.outcome import Decision, Outcome
from engine.policy.loader import check, load_policies
from engine.policy.model import PolicySet
from engine.policy.problems import CODES, Problem

if typing.TYPE_CHECKING:
    from engine.core import PolicyEngine

__version__ = "0.1.0"


def __getattr__(name: str) -> typing.Any:
    # The engine is imported on first use, so validate-policies starts without it.
    if name == "PolicyEngine":
        from engine.core import PolicyEngine

        return PolicyEngine
    if name == "COMPILED":  # True in the optional mypyc build of the leaf modules (README, "Compiled build")
        from engine import breaker

        return not breaker.__file__.endswith(".py")
    raise AttributeError(f"module 'engine' has no attribute {name!r}")

__all__ = [
    "AnomalyDetected",
    "AnomalyResolved",
    "BudgetExhausted",
    "BudgetReset",
    "BudgetWarning",
    "CODES",
    "COMPILED",
    "CircuitClosed",
    "CircuitHalfOpened",
    "CircuitOpened",
    "DeadlineExceeded",
    "Decision",
    "Event",
    "FallbackTriggered",
    "ModelTakenOut",
    "NoModelAvailable",
    "Outcome",
    "PolicyEngine",
    "PolicyEngineError",
    "PolicyError",
    "PolicyReloaded",
    "PolicySet",
    "Problem",
    "ReloadFailed",
    "ReloadRecovered",
    "RequestRefused",
    "StorageCorrupt",
    "StorageDegraded",
    "StorageError",
    "StoragePolicyChanged",
    "StorageRecovered",
    "check",
    "load_policies",
]

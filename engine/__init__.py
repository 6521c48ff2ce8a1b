"""llm-policy-engine: declarative reliability policies for LLM calls.

Load a policy set with :func:`load_policies` (or ``validate-policies`` on the
command line); every problem comes back located as ``file:line:col: code``.
"""

from __future__ import annotations

from engine.core import PolicyEngine
from engine.errors import NoModelAvailable, PolicyEngineError, PolicyError, StorageError
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
    PolicyReloaded,
    ReloadFailed,
)
from engine.loader import check, load_policies
from engine.outcome import Decision, Outcome
from engine.policy import PolicySet
from engine.problems import CODES, Problem

__version__ = "0.1.0"

__all__ = [
    "AnomalyDetected",
    "AnomalyResolved",
    "BudgetExhausted",
    "BudgetReset",
    "BudgetWarning",
    "CODES",
    "CircuitClosed",
    "CircuitHalfOpened",
    "CircuitOpened",
    "Decision",
    "Event",
    "FallbackTriggered",
    "NoModelAvailable",
    "Outcome",
    "PolicyEngine",
    "PolicyEngineError",
    "PolicyError",
    "PolicyReloaded",
    "PolicySet",
    "Problem",
    "ReloadFailed",
    "StorageError",
    "check",
    "load_policies",
]

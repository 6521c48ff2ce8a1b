"""Where engine state and history live, chosen by URI.

``memory://`` (the default) keeps everything in the process: the event log
is a bounded deque, nothing survives a restart. The history store (SQLite)
and shared state (Redis) plug in behind the same interface, as in limits'
storage registry; a backend's own exceptions are wrapped in StorageError.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from engine.breaker import CircuitBreaker
from engine.budget import BudgetLedger
from engine.errors import StorageError
from engine.events import Event
from engine.policy.model import BreakerSpec, BudgetSpec

EVENT_LOG_SIZE = 10_000


def local_breaker(name: str, spec: BreakerSpec, events: list[Event]) -> CircuitBreaker:
    """An in-process breaker appending its events to ``events``."""
    return CircuitBreaker(name, spec, events=events)


def local_ledger(spec: BudgetSpec, events: list[Event], saved: dict[str, Any] | None = None) -> BudgetLedger:
    """An in-process budget ledger, restored from ``saved`` when given."""
    if saved is not None:
        return BudgetLedger.from_dict(spec, saved, events=events)
    return BudgetLedger(spec, events=events)


class Store(Protocol):
    """What the engine needs from a backend.

    ``keeps_history``: when true, the engine calls :meth:`record_call` for
    every recorded outcome (under its lock: it must only buffer, never wait
    on disk or network) and hands the store a ``snapshot`` callable through
    :meth:`attach`, which returns the engine state worth keeping across a
    restart (see ``PolicyEngine.export_state``) for the store to persist on
    its own schedule. :meth:`load_state` returns the last persisted state
    (or ``None``), which a new engine restores.

    ``make_breaker`` and ``make_ledger`` build the per-model breakers and
    per-budget ledgers the engine decides with: local objects for stores that
    keep state in the process, shared ones (with the same methods) for a
    store whose state lives on a server. ``saved`` is a ledger's ``to_dict()``
    to start from (raise ValueError when it does not fit ``spec``).

    Optionally, ``bind_policy(policy)``: the engine calls it with the policy
    set in force once its breakers and ledgers are made, at start and after
    each reload (a shared store checks there that one policy set uses its
    namespace, and may raise StorageError at start).
    """

    uri: str
    keeps_history: bool

    def append_event(self, event: Event) -> None: ...

    def events(self) -> list[Event]: ...

    def record_call(self, at: float, tier: str, model: str, latency_ms: float, error: str | None,
                    failed: bool, slow: bool, tokens_in: int, tokens_out: int, cost: float,
                    fallback: bool, request: bool = False, ttft_ms: float | None = None) -> None: ...

    def attach(self, snapshot: Callable[[], dict[str, Any]]) -> None: ...

    def load_state(self) -> dict[str, Any] | None: ...

    def make_breaker(self, name: str, spec: BreakerSpec, events: list[Event]) -> CircuitBreaker: ...

    def make_ledger(self, spec: BudgetSpec, events: list[Event],
                    saved: dict[str, Any] | None = None) -> BudgetLedger: ...

    def close(self) -> None: ...


class MemoryStore:
    """In-process state: the newest EVENT_LOG_SIZE events, nothing persisted."""

    keeps_history = False

    def __init__(self, uri: str = "memory://") -> None:
        self.uri = uri
        self._events: deque[Event] = deque(maxlen=EVENT_LOG_SIZE)

    def record_call(self, at: float, tier: str, model: str, latency_ms: float, error: str | None,
                    failed: bool, slow: bool, tokens_in: int, tokens_out: int, cost: float,
                    fallback: bool, request: bool = False, ttft_ms: float | None = None) -> None:
        pass

    def attach(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        pass

    def load_state(self) -> dict[str, Any] | None:
        return None

    make_breaker = staticmethod(local_breaker)
    make_ledger = staticmethod(local_ledger)

    def append_event(self, event: Event) -> None:
        self._events.append(event)

    def events(self) -> list[Event]:
        return list(self._events)

    def close(self) -> None:
        pass


#: URI scheme -> "module:Class" of the backend, imported only when used.
BACKENDS: dict[str, str] = {
    "memory": "engine.store.base:MemoryStore",
    "sqlite": "engine.store.sqlite:SQLiteStore",
    "redis": "engine.store.redis.store:RedisStore",
    "redis+cluster": "engine.store.redis.store:RedisStore",
}


def open_store(uri: str) -> Store:
    """The store for ``uri``; raises StorageError for a scheme this build lacks."""
    import importlib

    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    target = BACKENDS.get(scheme)
    if target is None:
        shown = scheme + "://…" if scheme else repr(uri.split("@")[-1])  # never echo credentials
        raise StorageError(f"unsupported store {shown}; expected one of "
                           f"{', '.join(s + '://' for s in sorted(BACKENDS))}")
    module, _, name = target.partition(":")
    cls = getattr(importlib.import_module(module), name)
    store: Store = cls(uri)
    return store

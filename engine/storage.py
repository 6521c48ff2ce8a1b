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

from engine.errors import StorageError
from engine.events import Event

EVENT_LOG_SIZE = 10_000


class Store(Protocol):
    """What the engine needs from a backend.

    ``keeps_history``: when true, the engine calls :meth:`record_call` for
    every recorded outcome (under its lock: it must only buffer, never wait
    on disk or network) and hands the store a ``snapshot`` callable through
    :meth:`attach`, which returns the engine state worth keeping across a
    restart (see ``PolicyEngine.export_state``) for the store to persist on
    its own schedule. :meth:`load_state` returns the last persisted state
    (or ``None``), which a new engine restores.
    """

    uri: str
    keeps_history: bool

    def append_event(self, event: Event) -> None: ...

    def events(self) -> list[Event]: ...

    def record_call(self, at: float, tier: str, model: str, latency_ms: float, error: str | None,
                    failed: bool, slow: bool, tokens_in: int, tokens_out: int, cost: float,
                    fallback: bool) -> None: ...

    def attach(self, snapshot: Callable[[], dict[str, Any]]) -> None: ...

    def load_state(self) -> dict[str, Any] | None: ...

    def close(self) -> None: ...


class MemoryStore:
    """In-process state: the newest EVENT_LOG_SIZE events, nothing persisted."""

    keeps_history = False

    def __init__(self, uri: str = "memory://") -> None:
        self.uri = uri
        self._events: deque[Event] = deque(maxlen=EVENT_LOG_SIZE)

    def record_call(self, at: float, tier: str, model: str, latency_ms: float, error: str | None,
                    failed: bool, slow: bool, tokens_in: int, tokens_out: int, cost: float,
                    fallback: bool) -> None:
        pass

    def attach(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        pass

    def load_state(self) -> dict[str, Any] | None:
        return None

    def append_event(self, event: Event) -> None:
        self._events.append(event)

    def events(self) -> list[Event]:
        return list(self._events)

    def close(self) -> None:
        pass


#: URI scheme -> "module:Class" of the backend, imported only when used.
BACKENDS: dict[str, str] = {"memory": "engine.storage:MemoryStore"}


def open_store(uri: str) -> Store:
    """The store for ``uri``; raises StorageError for a scheme this build lacks."""
    import importlib

    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    target = BACKENDS.get(scheme)
    if target is None:
        raise StorageError(f"unsupported store {uri!r}; expected one of "
                           f"{', '.join(s + '://' for s in sorted(BACKENDS))}")
    module, _, name = target.partition(":")
    cls = getattr(importlib.import_module(module), name)
    store: Store = cls(uri)
    return store

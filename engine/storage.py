"""Where engine state and history live, chosen by URI.

``memory://`` (the default) keeps everything in the process: the event log
is a bounded deque, nothing survives a restart. The history store (SQLite)
and shared state (Redis) plug in behind the same interface, as in limits'
storage registry; a backend's own exceptions are wrapped in StorageError.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from engine.errors import StorageError
from engine.events import Event

EVENT_LOG_SIZE = 10_000


class Store(Protocol):
    uri: str

    def append_event(self, event: Event) -> None: ...

    def events(self) -> list[Event]: ...

    def close(self) -> None: ...


class MemoryStore:
    """In-process state: the newest EVENT_LOG_SIZE events, nothing persisted."""

    def __init__(self, uri: str = "memory://") -> None:
        self.uri = uri
        self._events: deque[Event] = deque(maxlen=EVENT_LOG_SIZE)

    def append_event(self, event: Event) -> None:
        self._events.append(event)

    def events(self) -> list[Event]:
        return list(self._events)

    def close(self) -> None:
        pass


def open_store(uri: str) -> Store:
    """The store for ``uri``; raises StorageError for a scheme this build lacks."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme == "memory":
        return MemoryStore(uri)
    raise StorageError(f"unsupported store {uri!r}; expected memory://")

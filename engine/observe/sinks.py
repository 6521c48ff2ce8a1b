"""Ready event listeners: JSON Lines to a file or stream, and log records with structured extras.

Subscribe one to an engine: ``eng.subscribe(JsonLinesSink("memory/logs/events.jsonl"))``.
Each line is :meth:`engine.events.Event.to_dict` as JSON: ``event`` (the type),
``time`` (UTC, ISO 8601), ``at`` (engine clock) and the event's fields.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import IO, Any

from engine.events import Event

#: LogRecord attributes an extra must not overwrite; event fields of these names get an ``event_`` prefix.
_RESERVED = frozenset(logging.LogRecord("x", 0, "x", 0, "x", None, None).__dict__) | {"message", "asctime"}

#: Log levels by event type; others are INFO.
LEVELS = {"CircuitOpened": logging.WARNING, "BudgetExhausted": logging.WARNING, "BudgetWarning": logging.WARNING,
          "ReloadFailed": logging.ERROR, "StorageDegraded": logging.WARNING, "RequestRefused": logging.WARNING}


class JsonLinesSink:
    """Writes each event as one JSON line to ``target`` (a path, appended to, or an open text stream)."""

    def __init__(self, target: str | os.PathLike[str] | IO[str], *, flush: bool = True) -> None:
        self._own = isinstance(target, (str, os.PathLike))
        if isinstance(target, (str, os.PathLike)):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            self._stream: IO[str] = open(target, "a", encoding="utf-8")  # closed by close()
        else:
            self._stream = target
        self._flush = flush
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        line = event.to_json() + "\n"
        with self._lock:
            self._stream.write(line)
            if self._flush:
                self._stream.flush()

    def close(self) -> None:
        """Close the file this sink opened (a stream handed in is left open)."""
        with self._lock:
            if self._own and not self._stream.closed:
                self._stream.close()


class LoggingSink:
    """Logs each event on ``logger`` with its fields as structured extras (``record.event``, ``record.model``...).

    The message is a one-line summary; handlers that format extras (JSON log
    formatters) get every field. A field whose name LogRecord already uses is
    given as ``event_<name>``.
    """

    def __init__(self, logger: logging.Logger | str = "engine.events") -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger

    def __call__(self, event: Event) -> None:
        data = event.to_dict()
        level = LEVELS.get(data["event"], logging.INFO)
        if not self.logger.isEnabledFor(level):
            return
        extra: dict[str, Any] = {(f"event_{k}" if k in _RESERVED else k): v for k, v in data.items()}
        self.logger.log(level, "%s", summary(data), extra=extra)


def summary(data: dict[str, Any]) -> str:
    """``CircuitOpened model=gpt-4o reason=failure_rate at 2026-12-01T15:30:12.345Z``."""
    keys = ("tier", "model", "from_model", "to_model", "budget", "rule", "target", "reason", "revision", "store")
    parts = [f"{k}={data[k]}" for k in keys if data.get(k) not in (None, "")]
    when = f" at {data['time']}" if data.get("time") else ""
    return f"{data['event']} {' '.join(parts)}{when}".replace("  ", " ")

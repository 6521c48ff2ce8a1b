"""The history store: per-minute aggregates and an event log in SQLite (WAL).

``SQLiteStore("sqlite:///memory/history.db?flush_s=1&instance=default")``
plugs in behind :mod:`engine.store.base` (``sqlite://`` alone means
``memory/history.db``; ``sqlite:////abs/path.db`` is absolute; ``timeout_s``
is how long a commit waits for another process's lock, default 30). Any
other option, a value out of range and ``:memory:`` (which would keep no
history) are a StorageError (:func:`engine.store.historydb.parse_uri`). The decision
path never waits on disk: :meth:`SQLiteStore.record_call` adds the call to
an in-memory cell per (minute, tier, model), so memory is bounded by the
number of cells, not calls; :meth:`SQLiteStore.append_event` appends to a
queue. A background writer swaps the cells out and commits them, with the
queued events and a snapshot of the engine's state, every ``flush_s``
seconds (default 1) and on :meth:`SQLiteStore.close`. A process killed with SIGKILL loses what
was recorded since the last swap: at most one flush interval (plus the time
the commit itself takes).

Several processes may write one file: each commit is one ``BEGIN IMMEDIATE``
transaction that merges its aggregates into the rows already there. Each
process keeps its restart state under its own ``instance`` name (default
``"default"``: last writer wins).

Times: call aggregates use the wall time the engine passes. Budget events
carry wall time; breaker, fallback, anomaly and reload events carry engine-
clock time, converted with the engine's ``wall_offset`` when its snapshot
provides one, else by assuming a time before 2001 (< 1e9) is monotonic.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from engine.errors import StorageError
from engine.events import Event, FallbackTriggered
from engine.store.base import local_breaker, local_ledger
from engine.store.historydb import (
    BUCKETS,
    CALLS,
    COST,
    ERRORS,
    FAILED,
    FALLBACKS,
    HI,
    INSERT_EVENTS,
    INV_LOG_GAMMA,
    KEY_MAX,
    KEY_MIN,
    LO,
    OK,
    REQUESTS,
    SLOW,
    TOKENS_IN,
    TOKENS_OUT,
    TOTAL,
    TTFT_BUCKETS,
    TTFT_HI,
    TTFT_LO,
    TTFT_TOTAL,
    TTFT_ZERO,
    UPSERT_FALLBACKS,
    UPSERT_MINUTES,
    UPSERT_STATE,
    ZERO,
    add_cell,
    batch,
    connect,
    dumps,
    event_row,
    fallback_reason,
    load_state,
    new_cell,
    parse_uri,
    seconds_option,
    to_wall,
)

log = logging.getLogger("engine.history")

__all__ = ["DEFAULT_FLUSH_S", "SQLiteStore"]

DEFAULT_FLUSH_S = 1.0
DEFAULT_TIMEOUT_S = 30.0
#: Events kept in memory for :meth:`SQLiteStore.events` (this process only).
RECENT_EVENTS = 10_000
#: Uncommitted events kept while the disk fails; the oldest are dropped beyond this.
MAX_PENDING_EVENTS = 100_000

Cells = dict[tuple[Any, str, str], list[Any]]


_log, _ceil = math.log, math.ceil



def _hist_add(c: list[Any], ms: float, total: int, lo: int, hi: int, buckets: int, zero: int) -> None:
    """Add ``ms`` to the histogram held in ``c`` at those positions (the layout of the minute rows)."""
    c[total] += ms
    if ms < c[lo]:
        c[lo] = ms
    if ms > c[hi]:
        c[hi] = ms
    if ms > 0.0:
        k = _ceil(_log(ms) * INV_LOG_GAMMA)
        k = KEY_MIN if k < KEY_MIN else KEY_MAX if k > KEY_MAX else k
        counts = c[buckets]
        counts[k] = counts.get(k, 0) + 1
    else:
        c[zero] += 1

class SQLiteStore:
    """Persistent history; see the module docstring."""

    keeps_history = True

    def __init__(self, uri: str = "sqlite://", *, flush_s: float | None = None,
                 instance: str | None = None) -> None:
        self.uri = uri
        path, options = parse_uri(uri)
        self.path = path
        if flush_s is not None:
            options["flush_s"] = str(flush_s)
        self.flush_s = seconds_option(options, "flush_s", DEFAULT_FLUSH_S, low=0.0, high=3600.0, low_open=True)
        timeout_s = seconds_option(options, "timeout_s", DEFAULT_TIMEOUT_S, low=0.0, high=3600.0)
        self.instance = instance or options.get("instance") or "default"
        self._conn = connect(path, create=True, timeout_s=timeout_s)
        self._cells: Cells = {}  # filled by record_call under _cells_lock
        self._cells_lock = threading.Lock()
        self._unwritten: dict[tuple[int, str, str], list[Any]] = {}  # swapped out, not yet committed
        self._queued: deque[tuple[Event, float | None]] = deque()
        self._recent: deque[Event] = deque(maxlen=RECENT_EVENTS)
        self._fallbacks: dict[tuple[int, str, str, str, str, str], int] = {}
        self._events: list[tuple[float, str, str, float, str]] = []
        self._snapshot: Callable[[], dict[str, Any]] | None = None
        self._state: str | None = None  # the newest snapshot not yet committed
        self._offset: float | None = None
        self._io = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self.flushes = 0
        self._writer = threading.Thread(target=self._run, name=f"history-writer:{path.name}", daemon=True)
        self._writer.start()
        ref = weakref.ref(self)

        def close_at_exit() -> None:  # a store never closed still commits its last interval
            store = ref()
            if store is not None:
                store.close()

        self._atexit = close_at_exit
        atexit.register(close_at_exit)

    # -- the decision path: memory only ------------------------------------------
    def record_call(self, at: float, tier: str, model: str, latency_ms: float, error: str | None,
                    failed: bool, slow: bool, tokens_in: int, tokens_out: int, cost: float,
                    fallback: bool, request: bool = False, ttft_ms: float | None = None) -> None:
        """Add one call to its minute's cell: memory only, O(1), a few hundred nanoseconds.

        ``ttft_ms``: a streamed call's time to first token, kept in the cell's own histogram."""
        key = (at // 60.0, tier, model)
        with self._cells_lock:
            c = self._cells.get(key)
            if c is None:
                c = self._cells[key] = new_cell()
            c[CALLS] += 1
            if error is None:
                c[OK] += 1
            else:
                errors = c[ERRORS]
                errors[error] = errors.get(error, 0) + 1
            if failed:
                c[FAILED] += 1
            if slow:
                c[SLOW] += 1
            if fallback:
                c[FALLBACKS] += 1
            if request:
                c[REQUESTS] += 1
            c[TOKENS_IN] += tokens_in
            c[TOKENS_OUT] += tokens_out
            c[COST] += cost
            c[TOTAL] += latency_ms
            if latency_ms < c[LO]:
                c[LO] = latency_ms
            if latency_ms > c[HI]:
                c[HI] = latency_ms
            if latency_ms > 0.0:
                k = _ceil(_log(latency_ms) * INV_LOG_GAMMA)
                k = KEY_MIN if k < KEY_MIN else KEY_MAX if k > KEY_MAX else k
                buckets = c[BUCKETS]
                buckets[k] = buckets.get(k, 0) + 1
            else:
                c[ZERO] += 1
            if ttft_ms is not None:  # streamed calls only: the latency's histogram update, generalised
                _hist_add(c, ttft_ms, TTFT_TOTAL, TTFT_LO, TTFT_HI, TTFT_BUCKETS, TTFT_ZERO)

    def append_event(self, event: Event) -> None:
        # with the wall offset in force now: a clock stepped back later does not move this event
        self._queued.append((event, self._offset))
        self._recent.append(event)

    def clock_stepped(self, skew: float, wall_shift: float) -> None:
        """The engine's clock stepped back: its time now maps to wall time by ``wall_shift``."""
        self._offset = wall_shift

    def events(self) -> list[Event]:
        """The newest events this process emitted (the full log is in the database)."""
        return list(self._recent)

    # -- state across restarts -------------------------------------------------------
    #: Breakers and ledgers live in the process; the store persists their state (see attach).
    make_breaker = staticmethod(local_breaker)
    make_ledger = staticmethod(local_ledger)

    def attach(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        """Persist ``snapshot()`` with every flush (the writer takes it just before draining)."""
        self._snapshot = snapshot
        try:
            offset = snapshot().get("wall_offset")
        except Exception:  # an engine still starting up: fall back to the heuristic
            offset = None
        self._offset = float(offset) if isinstance(offset, (int, float)) else None

    def _take_snapshot(self) -> None:
        if self._snapshot is None:
            return
        try:
            self._state = dumps(self._snapshot())
        except Exception:
            log.exception("history: the engine's state snapshot failed")

    def load_state(self) -> dict[str, Any] | None:
        with self._io:
            return load_state(self._conn, self.instance)

    # -- the writer ---------------------------------------------------------------------
    def _run(self) -> None:
        next_flush = time.monotonic() + self.flush_s
        while not self._stop.wait(max(0.0, next_flush - time.monotonic())):
            next_flush += self.flush_s
            if next_flush < time.monotonic():  # fell behind: do not try to catch up in a burst
                next_flush = time.monotonic() + self.flush_s
            self.flush()

    def _drain(self) -> None:
        """Move the cells and events recorded so far into what the next commit writes (``_io`` held)."""
        with self._cells_lock:
            cells, self._cells = self._cells, {}
        unwritten = self._unwritten
        for (minute, tier, model), cell in cells.items():
            key = (int(minute), tier, model)
            have = unwritten.get(key)
            if have is None:
                unwritten[key] = cell
            else:
                add_cell(have, cell)
        queued = self._queued
        for _ in range(len(queued)):
            self._take_event(*queued.popleft())
        if len(self._events) > MAX_PENDING_EVENTS:
            log.warning("history: dropping %d events the database did not take",
                        len(self._events) - MAX_PENDING_EVENTS)
            del self._events[:-MAX_PENDING_EVENTS]

    def _take_event(self, event: Event, offset: float | None) -> None:
        if type(event) is FallbackTriggered:  # coalesced: a storm of fallbacks is one row per minute
            key = (int(to_wall(event.at, offset) // 60), event.tier, event.from_model or "",
                   event.to_model, event.to_tier, fallback_reason(event.reason))
            self._fallbacks[key] = self._fallbacks.get(key, 0) + 1
            return
        at, kind, subject, clock_at, data = event_row(event, offset)
        self._events.append((at, kind, subject, clock_at, dumps(data)))

    def flush(self) -> None:
        """Commit everything recorded so far (thread-safe; the writer calls it every ``flush_s``)."""
        self._take_snapshot()  # outside _io: it waits for the engine's lock
        with self._io:
            state, self._state = self._state, None
            drained_at = time.time()
            self._drain()
            try:
                self._commit(drained_at, state)
            except StorageError:
                log.warning("history: commit to %s failed; kept in memory for the next flush", self.path,
                            exc_info=True)
                if self._state is None:
                    self._state = state
                return
            self._unwritten.clear()
            self._fallbacks.clear()
            self._events.clear()
            self.flushes += 1

    def _commit(self, drained_at: float, state: str | None) -> None:
        """One transaction of six statements, however much there is to write (see UPSERT_MINUTES)."""
        conn = self._conn
        events = [(*e[:4], self.instance, e[4]) for e in self._events]
        fallbacks = [(*k, n) for k, n in self._fallbacks.items()]
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if self._unwritten:
                    conn.execute(UPSERT_MINUTES, (batch(self._unwritten),))
                if events:
                    conn.execute(INSERT_EVENTS, (json.dumps(events),))
                if fallbacks:
                    conn.execute(UPSERT_FALLBACKS, (json.dumps(fallbacks),))
                conn.execute(UPSERT_STATE, (self.instance, time.time(), drained_at, os.getpid(), state))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StorageError(f"history: cannot write {self.path}: {exc}") from exc

    def close(self) -> None:
        """Stop the writer and commit what is left; idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._atexit)
        self._stop.set()
        if self._writer is not threading.current_thread():
            self._writer.join()
        self.flush()
        with self._io:
            self._conn.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.uri!r}, flush_s={self.flush_s}, instance={self.instance!r})"

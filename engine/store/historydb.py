"""The history database: schema, migrations and row codecs (no threads, no policy).

Schema (``PRAGMA user_version`` holds its version; :data:`MIGRATIONS` step it
forward, each step in one transaction, so two processes opening an old file
at once migrate it once):

* ``minutes`` — one row per (UTC minute, requested tier, model): calls,
  successes, breaker failures, slow calls, fallbacks, tokens in/out, cost,
  ``errors`` (JSON ``{class: count}``) and a
  :class:`~engine.histogram.LatencyHistogram` at 1% accuracy: ``lat_zero``,
  ``lat_total``, ``lat_min``, ``lat_max`` and ``latency`` (JSON
  ``{bucket key: count}``), and the same histogram of the streamed calls'
  time to first token: ``ttft_zero``, ``ttft_total``, ``ttft_min``,
  ``ttft_max`` (NULL while no streamed call) and ``ttft`` (its count is the
  number of streamed calls, schema 3 on);
* ``events`` — the event log: wall time, kind (the event's class name),
  subject (model, budget, rule target or revision), the engine-clock time it
  carried, the writing instance and the event's fields as JSON;
* ``fallbacks`` — FallbackTriggered events coalesced per minute, tier,
  from/to model, to tier and reason, with a count;
* ``state`` — per writer instance: the engine's last exported state (JSON),
  when it was saved and when the writer last drained its queue.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

from engine.errors import StorageError
from engine.events import Event
from engine.histogram import MAX_MS, MIN_MS, LatencyHistogram
from engine.text import redact_uri

SCHEMA_VERSION = 1
DEFAULT_PATH = "memory/history.db"
ACCURACY = 0.01  # of the latency histograms stored; a change needs a migration
WALL_EPOCH_MIN = 1e9  # engine-clock times below this (before 2001) are taken as monotonic

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 0 -> 1
        "CREATE TABLE minutes (minute INTEGER NOT NULL, tier TEXT NOT NULL, model TEXT NOT NULL, "
        "calls INTEGER NOT NULL, successes INTEGER NOT NULL, failures INTEGER NOT NULL, "
        "slow INTEGER NOT NULL, fallbacks INTEGER NOT NULL, tokens_in INTEGER NOT NULL, "
        "tokens_out INTEGER NOT NULL, cost REAL NOT NULL, errors TEXT NOT NULL, lat_zero INTEGER NOT NULL, "
        "lat_total REAL NOT NULL, lat_min REAL NOT NULL, lat_max REAL NOT NULL, latency TEXT NOT NULL, "
        "PRIMARY KEY (minute, tier, model)) WITHOUT ROWID",
        "CREATE TABLE events (id INTEGER PRIMARY KEY, at REAL NOT NULL, kind TEXT NOT NULL, "
        "subject TEXT NOT NULL, clock_at REAL NOT NULL, instance TEXT NOT NULL, data TEXT NOT NULL)",
        "CREATE INDEX events_at ON events (at)",
        "CREATE TABLE fallbacks (minute INTEGER NOT NULL, tier TEXT NOT NULL, from_model TEXT NOT NULL, "
        "to_model TEXT NOT NULL, to_tier TEXT NOT NULL, reason TEXT NOT NULL, count INTEGER NOT NULL, "
        "PRIMARY KEY (minute, tier, from_model, to_model, to_tier, reason)) WITHOUT ROWID",
        "CREATE TABLE state (instance TEXT PRIMARY KEY, saved_at REAL NOT NULL, flushed_at REAL NOT NULL, "
        "pid INTEGER NOT NULL, data TEXT)",
    ),
    (  # 1 -> 2: requests (first attempts) beside attempts; rows written before count none
        "ALTER TABLE minutes ADD COLUMN requests INTEGER NOT NULL DEFAULT 0",
    ),
    (  # 2 -> 3: time to first token of streamed calls; rows written before have none
        "ALTER TABLE minutes ADD COLUMN ttft_zero INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE minutes ADD COLUMN ttft_total REAL NOT NULL DEFAULT 0",
        "ALTER TABLE minutes ADD COLUMN ttft_min REAL",
        "ALTER TABLE minutes ADD COLUMN ttft_max REAL",
        "ALTER TABLE minutes ADD COLUMN ttft TEXT NOT NULL DEFAULT '{}'",
    ),
)

BUDGET_EVENTS = frozenset({"BudgetWarning", "BudgetExhausted", "BudgetReset"})
_SUBJECT = ("model", "budget", "target", "tier", "revision", "kept")


#: The options a ``sqlite://`` URI takes, and what each is.
OPTIONS = {
    "flush_s": "seconds between commits, (0, 3600], default 1",
    "timeout_s": "seconds a commit waits for another process's lock, [0, 3600], default 30",
    "instance": "the name this process keeps its restart state under, default 'default'",
}


def parse_uri(uri: str) -> tuple[Path, dict[str, str]]:
    """``sqlite:///rel/path.db?flush_s=1`` -> (path, options); ``sqlite://`` is :data:`DEFAULT_PATH`.

    Raises StorageError for an option not in :data:`OPTIONS` (or given twice) and for ``:memory:``, an
    SQLite database that would keep no history.
    """
    if not uri.startswith("sqlite://"):
        raise StorageError(f"expected a sqlite:// URI, got {redact_uri(uri)!r}")
    rest, _, query = uri[len("sqlite://"):].partition("?")
    path = rest[1:] if rest.startswith("/") else rest
    if path == ":memory:" or path.startswith("file::memory:"):
        raise StorageError(f"sqlite store {redact_uri(uri)} is an in-memory SQLite database, which keeps no "
                           "history (it is gone with the process and no other process sees it); give the history a "
                           "file, such as sqlite:///memory/history.db, or use memory:// to keep none")
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in OPTIONS:
            from engine.policy.problems import did_you_mean

            raise StorageError(f"sqlite store {redact_uri(uri)}: unknown option {name!r}{did_you_mean(name, OPTIONS)}; "
                               "a sqlite:// URI takes " + "; ".join(f"{k} ({v})" for k, v in OPTIONS.items()))
        if name in options:
            raise StorageError(f"sqlite store {redact_uri(uri)}: option {name} given twice")
        options[name] = value
    return Path(path or DEFAULT_PATH), options


def seconds_option(options: dict[str, str], name: str, default: float, *, low: float, high: float,
                   low_open: bool = False) -> float:
    """Option ``name`` as seconds within [``low``, ``high``] (``(low, high]`` with ``low_open``), else
    StorageError naming the option and the range."""
    text = options.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (low < value if low_open else low <= value) or not value <= high:  # NaN fails both
        shown = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise StorageError(f"sqlite store option {name}: expected seconds in {shown}, got {text!r}")
    return value


def connect(path: Path, *, create: bool, timeout_s: float = 30.0) -> sqlite3.Connection:
    """Open (and migrate) the history at ``path``; without ``create`` a missing file is an error.

    Raises StorageError saying why (a directory or file this process may not write: what to do) and leaves
    no connection open behind a failure.
    """
    if create:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the directory {path.parent} of the history database {path}: "
                               f"{exc.strerror or exc}; create it, or {_ELSEWHERE}") from exc
    elif not path.is_file():
        raise StorageError(f"no history database at {path}")
    conn: sqlite3.Connection | None = None
    try:
        if create:  # absolute: SQLite may take a name like "file:x" or ":memory:" for a URI or a memory database
            conn = sqlite3.connect(path.absolute(), timeout=timeout_s, isolation_level=None, check_same_thread=False)
        else:
            conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=rw", uri=True, timeout=timeout_s,
                                   isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000):d}")
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL: survives a killed process, not a power cut
        migrate(conn)
    except BaseException as exc:
        if conn is not None:
            conn.close()
        if isinstance(exc, sqlite3.Error):
            raise StorageError(_cannot_write(path, exc)) from exc
        raise
    return conn


_ELSEWHERE = "point the store at a path this process may write (store='sqlite:///path/history.db'), or keep no " \
             "history (store='memory://')"


def _cannot_write(path: Path, exc: sqlite3.Error) -> str:
    """Why the history at ``path`` cannot be opened for writing, and what to do."""
    folder = path.parent
    side = ", ".join(f"{path.name}{s}" for s in ("-wal", "-shm"))
    if not os.access(folder, os.W_OK | os.X_OK):
        return (f"cannot open history database {path}: its directory {folder} is not writable by this process "
                f"(permission denied), and SQLite must create {'its' if path.exists() else 'the database and its'} "
                f"write-ahead log files ({side}) there; make the directory writable for this user, or {_ELSEWHERE}")
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if p.exists() and not os.access(p, os.R_OK | os.W_OK):
            return (f"cannot open history database {path}: {p} is not writable by this process (permission "
                    f"denied); make it writable for this user (or run as its owner), or {_ELSEWHERE}")
    if "not a database" in str(exc):
        return f"cannot open history database {path}: the file is not an SQLite database; {_ELSEWHERE}"
    return f"cannot open history database {path}: {exc}"


def _probe(uri: str, timeout_s: float) -> tuple[sqlite3.Connection, int, bool]:
    """A read-only connection to ``uri``, its schema version and whether it has a ``minutes`` table.

    Closes the connection before raising (an sqlite3.Error)."""
    conn = sqlite3.connect(uri, uri=True, timeout=timeout_s, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000):d}")
        found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        has_minutes = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'minutes'").fetchone() is not None
    except BaseException:
        conn.close()
        raise
    return conn, found, has_minutes


def _no_shm(exc: sqlite3.Error) -> bool:
    """The error of a read-only open of a WAL database whose ``-shm`` file cannot be created."""
    name = str(getattr(exc, "sqlite_errorname", ""))
    return name in ("SQLITE_READONLY_DIRECTORY", "SQLITE_READONLY_CANTINIT", "SQLITE_CANTOPEN") or \
        "readonly database" in str(exc) or "unable to open" in str(exc)


def open_readonly(path: Path, *, timeout_s: float = 30.0,
                  migrations: tuple[tuple[str, ...], ...] = MIGRATIONS) -> sqlite3.Connection:
    """Open the history at ``path`` for reading only (``report``, ``status``): the file is never written.

    No journal-mode switch, no migration: a file that is not a history store, or whose schema is older or
    newer than this engine's, raises StorageError saying what to do.

    A WAL database is read through its ``-shm`` file, which SQLite creates next to it. Where it cannot (a
    directory this process may not write) and there is no write-ahead log holding changes, the file is read
    as it is (SQLite's ``immutable``: no locks, which is safe as nobody can write there either); with a
    non-empty ``-wal`` that cannot be read, StorageError says what to do. A failed open leaves no
    connection open.
    """
    if not path.is_file():
        raise StorageError(f"no history database at {path}")
    target = len(migrations)
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    try:
        try:
            conn, found, has_minutes = _probe(uri, timeout_s)
        except sqlite3.OperationalError as exc:
            if not _no_shm(exc) or path.with_name(path.name + "-shm").exists():
                raise
            wal = path.with_name(path.name + "-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise StorageError(
                    f"cannot read history database {path} read-only: its write-ahead log {wal} holds changes "
                    f"that SQLite can only read through {path.name}-shm, which it may not create in {path.parent} "
                    "(not writable by this process); make the directory writable for this user, or let the "
                    "engine that writes it close (which folds the log into the database), then retry") from exc
            conn, found, has_minutes = _probe(uri + "&immutable=1", timeout_s)
    except sqlite3.Error as exc:
        if "not a database" in str(exc):
            raise StorageError(f"{path} is not a history database (not an SQLite file)") from exc
        raise StorageError(f"cannot open history database {path}: {exc}") from exc
    problem = None
    if found == 0 or not has_minutes:
        problem = f"{path} is not a history database (no policy-engine history schema); check --store"
    elif found > target:
        problem = (f"history schema version {found} at {path} is newer than this engine's ({target}); "
                   "upgrade llm-policy-engine")
    elif found < target:
        problem = (f"history schema version {found} at {path} is older than this engine's ({target}); "
                   "open it with the engine once (store='sqlite:///...'), which migrates it, then retry")
    if problem is not None:
        conn.close()
        raise StorageError(problem)
    return conn


def migrate(conn: sqlite3.Connection, migrations: tuple[tuple[str, ...], ...] = MIGRATIONS) -> int:
    """Bring the schema to ``len(migrations)``; returns the version found before."""
    target = len(migrations)
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found > target:
        raise StorageError(f"history schema version {found} is newer than this engine's ({target}); "
                           "upgrade llm-policy-engine")
    if found == target:
        return found
    conn.execute("BEGIN IMMEDIATE")
    try:
        now = int(conn.execute("PRAGMA user_version").fetchone()[0])  # another process may have won
        for step in migrations[now:]:
            for statement in step:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {target:d}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return found


# -- aggregates -----------------------------------------------------------------
# A cell being filled on the decision path is a plain list, updated in place
# (the cheapest mutable record in CPython); these are its fields.
(CALLS, OK, FAILED, SLOW, FALLBACKS, TOKENS_IN, TOKENS_OUT, COST, ERRORS, ZERO, TOTAL, LO, HI, BUCKETS,
 REQUESTS, TTFT_ZERO, TTFT_TOTAL, TTFT_LO, TTFT_HI, TTFT_BUCKETS) = range(20)
_GAMMA = (1.0 + ACCURACY) / (1.0 - ACCURACY)
#: Latency bucket keys exactly as LatencyHistogram(ACCURACY) computes them.
INV_LOG_GAMMA = 1.0 / math.log(_GAMMA)
KEY_MIN = math.ceil(math.log(MIN_MS) * INV_LOG_GAMMA)
KEY_MAX = math.ceil(math.log(MAX_MS) * INV_LOG_GAMMA)


def new_cell() -> list[Any]:
    return [0, 0, 0, 0, 0, 0, 0, 0.0, {}, 0, 0.0, math.inf, -math.inf, {}, 0, 0, 0.0, math.inf, -math.inf, {}]


def add_cell(into: list[Any], other: list[Any]) -> None:
    """Merge cell ``other`` into ``into``."""
    for i in (CALLS, OK, FAILED, SLOW, FALLBACKS, TOKENS_IN, TOKENS_OUT, COST, ZERO, TOTAL, REQUESTS, TTFT_ZERO,
              TTFT_TOTAL):
        into[i] += other[i]
    into[LO], into[HI] = min(into[LO], other[LO]), max(into[HI], other[HI])
    into[TTFT_LO], into[TTFT_HI] = min(into[TTFT_LO], other[TTFT_LO]), max(into[TTFT_HI], other[TTFT_HI])
    for field_ in (ERRORS, BUCKETS, TTFT_BUCKETS):
        target = into[field_]
        for k, n in other[field_].items():
            target[k] = target.get(k, 0) + n


def decode_latency(zero: int, total: float, lo: float | None, hi: float | None, buckets: str) -> LatencyHistogram:
    """The histogram of a ``minutes`` row's ``lat_*`` and ``latency`` columns (or its ``ttft*`` ones)."""
    counts = json.loads(buckets)
    count = zero + sum(counts.values())
    return LatencyHistogram.from_dict({
        "relative_accuracy": ACCURACY, "zero": zero, "total": total, "min": lo if count else None,
        "max": hi if count else None, "buckets": counts, "count": count})


def _merge_json(column: str) -> str:
    """SQL merging the ``{key: count}`` objects of the stored and the incoming row."""
    return (f"{column} = (SELECT json_group_object(key, n) FROM (SELECT key, sum(value) AS n FROM ("  # noqa: S608
            f"SELECT key, value FROM json_each(minutes.{column}) UNION ALL "
            f"SELECT key, value FROM json_each(excluded.{column})) GROUP BY key))")


_COLUMNS = ("minute", "tier", "model", "calls", "successes", "failures", "slow", "fallbacks", "tokens_in",
            "tokens_out", "cost", "errors", "lat_zero", "lat_total", "lat_min", "lat_max", "latency", "requests",
            "ttft_zero", "ttft_total", "ttft_min", "ttft_max", "ttft")
_SUMMED = ("calls", "successes", "failures", "slow", "fallbacks", "tokens_in", "tokens_out", "cost", "lat_zero",
           "lat_total", "requests", "ttft_zero", "ttft_total")
#: One statement for a whole batch: every SQLite call releases the GIL and must win it back, which under a
#: busy engine thread costs milliseconds, so a flush makes a handful of calls however much it writes.
UPSERT_MINUTES = (
    f"INSERT INTO minutes ({', '.join(_COLUMNS)}) SELECT "  # noqa: S608 - built from constants
    + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(_COLUMNS)))
    + " FROM json_each(?) WHERE true ON CONFLICT (minute, tier, model) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in _SUMMED)
    + ", lat_min = min(lat_min, excluded.lat_min), lat_max = max(lat_max, excluded.lat_max), "
    # min/max of SQL NULL are NULL: a side without streamed calls leaves the other's bounds
    + "ttft_min = coalesce(min(ttft_min, excluded.ttft_min), ttft_min, excluded.ttft_min), "
    + "ttft_max = coalesce(max(ttft_max, excluded.ttft_max), ttft_max, excluded.ttft_max), "
    + _merge_json("errors") + ", " + _merge_json("latency") + ", " + _merge_json("ttft"))


def batch(cells: Mapping[tuple[int, str, str], list[Any]]) -> str:
    """``cells`` as the JSON parameter of :data:`UPSERT_MINUTES`."""
    return json.dumps([[*key, *c[:ERRORS], c[ERRORS], c[ZERO], c[TOTAL], c[LO], c[HI],
                        {str(k): n for k, n in c[BUCKETS].items()}, c[REQUESTS], c[TTFT_ZERO], c[TTFT_TOTAL],
                        c[TTFT_LO] if c[TTFT_LO] != math.inf else None,
                        c[TTFT_HI] if c[TTFT_HI] != -math.inf else None,
                        {str(k): n for k, n in c[TTFT_BUCKETS].items()}] for key, c in cells.items()],
                      separators=(",", ":"))


def _from_json(table: str, columns: str, conflict: str = "") -> str:
    names = columns.split(", ")
    values = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(names)))
    return f"INSERT INTO {table} ({columns}) SELECT {values} FROM json_each(?) WHERE true {conflict}"  # noqa: S608 - constants


INSERT_EVENTS = _from_json("events", "at, kind, subject, clock_at, instance, data")
UPSERT_FALLBACKS = _from_json("fallbacks", "minute, tier, from_model, to_model, to_tier, reason, count",
                               "ON CONFLICT (minute, tier, from_model, to_model, to_tier, reason) "
                               "DO UPDATE SET count = count + excluded.count")
UPSERT_STATE = ("INSERT INTO state (instance, saved_at, flushed_at, pid, data) VALUES (?, ?, ?, ?, ?) "
                 "ON CONFLICT (instance) DO UPDATE SET saved_at = excluded.saved_at, flushed_at = "
                 "excluded.flushed_at, pid = excluded.pid, data = coalesce(excluded.data, data)")


# -- events and state -----------------------------------------------------------------
def plain(value: Any) -> Any:
    """``value`` as JSON-able data: mappings, sequences, finite numbers, strings (inf/nan -> None)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    fmt = getattr(value, "format", None)
    return fmt() if callable(fmt) and not isinstance(value, type) else str(value)


def dumps(value: Any) -> str:
    return json.dumps(plain(value), sort_keys=True, separators=(",", ":"))


_UNTIL = re.compile(r"\s+until (t=[-0-9.e+]+|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z)$")


def fallback_reason(reason: str) -> str:
    """A fallback reason without its episode's time ("breaker open until 2026-...Z"), so rows coalesce."""
    return _UNTIL.sub("", reason)


def to_wall(at: float, offset: float | None) -> float:
    if offset is not None:
        return at + offset
    if at < WALL_EPOCH_MIN:  # the engine's default clock is time.monotonic
        import time

        return at + time.time() - time.monotonic()
    return at


def event_row(event: Event, offset: float | None) -> tuple[float, str, str, float, dict[str, Any]]:
    """(wall time, kind, subject, clock time, fields) of ``event``."""
    kind = type(event).__name__
    data: dict[str, Any] = {f.name: plain(getattr(event, f.name)) for f in fields(event)
                              if f.name not in ("at", "wall")}
    if kind in BUDGET_EVENTS or event.WALL_CLOCK_AT:
        wall = event.at
    else:
        stamped = event.wall_time  # the delivering engine's own wall time, when it stamped one
        if stamped is not None and offset is None:
            offset = stamped - event.at
        wall = to_wall(event.at, offset)
        if isinstance(data.get("open_until"), float):
            data["open_until"] = to_wall(data["open_until"], offset)
    subject = next((str(data[k]) for k in _SUBJECT if data.get(k)), "")
    return wall, kind, subject, event.at, data


def load_state(conn: sqlite3.Connection, instance: str) -> dict[str, Any] | None:
    try:
        row = conn.execute("SELECT data FROM state WHERE instance = ?", (instance,)).fetchone()
    except sqlite3.Error as exc:
        raise StorageError(f"cannot read saved state: {exc}") from exc
    if row is None or row[0] is None:
        return None
    data: dict[str, Any] = json.loads(row[0])
    return data

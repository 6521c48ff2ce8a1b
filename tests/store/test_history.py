"""The SQLite history store: aggregates, event log, restart safety, crash safety, two writers."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import engine.store.base
from engine import CircuitOpened, Outcome, PolicyEngine, StorageError
from engine.histogram import LatencyHistogram
from engine.store.historydb import (
    DEFAULT_PATH,
    MIGRATIONS,
    connect,
    decode_latency,
    migrate,
    open_readonly,
    parse_uri,
)
from engine.store.sqlite import SQLiteStore
from engine.testing import FakeClock
from tests.conftest import POLICIES, ROOT

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, FakeClock's default start
LATENCY = "lat_zero, lat_total, lat_min, lat_max, latency"


@pytest.fixture(autouse=True)
def sqlite_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(engine.store.base.BACKENDS, "sqlite", "engine.store.sqlite:SQLiteStore")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "memory" / "history.db"


def uri(path: Path, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


def rows(path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``condition`` until it holds (bounded; no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.01)


@pytest.fixture
def store(db: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(uri(db, flush_s=3600))
    yield s
    s.close()


def test_uri_forms() -> None:
    assert parse_uri("sqlite://") == (Path(DEFAULT_PATH), {})
    assert parse_uri("sqlite:///memory/h.db") == (Path("memory/h.db"), {})
    assert parse_uri("sqlite:////tmp/x/h.db?flush_s=0.5&instance=a") == (
        Path("/tmp/x/h.db"), {"flush_s": "0.5", "instance": "a"})
    with pytest.raises(StorageError, match="expected a sqlite:// URI"):
        parse_uri("redis://localhost")


TAKES = ("a sqlite:// URI takes flush_s (seconds between commits, (0, 3600], default 1); timeout_s (seconds a "
         "commit waits for another process's lock, [0, 3600], default 30); instance (the name this process keeps "
         "its restart state under, default 'default')")


@pytest.mark.parametrize(("query", "message"), [
    ("flush_s=abc", "sqlite store option flush_s: expected seconds in (0, 3600], got 'abc'"),
    ("flush_s=nan", "sqlite store option flush_s: expected seconds in (0, 3600], got 'nan'"),
    ("flush_s=", "sqlite store option flush_s: expected seconds in (0, 3600], got ''"),
    ("timeout_s=nan", "sqlite store option timeout_s: expected seconds in [0, 3600], got 'nan'"),
    ("timeout_s=inf", "sqlite store option timeout_s: expected seconds in [0, 3600], got 'inf'"),
    ("timeout_s=-1", "sqlite store option timeout_s: expected seconds in [0, 3600], got '-1'"),
    ("timeout_s=1e9", "sqlite store option timeout_s: expected seconds in [0, 3600], got '1e9'"),
    ("mode=ro", "unknown option 'mode'; " + TAKES),
    ("flush=2", "unknown option 'flush' (did you mean 'flush_s'?); " + TAKES),
    ("flush_s=1&flush_s=2", "option flush_s given twice"),
])
def test_a_bad_sqlite_option_is_a_storage_error_naming_it(db: Path, query: str, message: str) -> None:
    with pytest.raises(StorageError) as caught:
        engine.store.base.open_store(f"sqlite:///{db}?{query}")
    assert str(caught.value).endswith(message), str(caught.value)
    assert not db.parent.exists()  # refused before anything is created


@pytest.mark.parametrize("uri_text", ["sqlite:///:memory:", "sqlite://:memory:", "sqlite:///:memory:?flush_s=1",
                                      "sqlite:///file::memory:"])
def test_an_in_memory_sqlite_database_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 uri_text: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError) as caught:
        PolicyEngine.from_path(POLICIES, store=uri_text)
    assert str(caught.value) == (
        f"sqlite store {uri_text} is an in-memory SQLite database, which keeps no history (it is gone with the "
        "process and no other process sees it); give the history a file, such as sqlite:///memory/history.db, or "
        "use memory:// to keep none")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["file:x.db", "./:memory:"])
def test_a_relative_name_sqlite_could_take_for_a_uri_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               name: str) -> None:
    monkeypatch.chdir(tmp_path)
    store = SQLiteStore(f"sqlite:///{name}")
    store.record_call(T0, "L1", "m", 100.0, None, False, False, 1, 1, 0.0, False)
    store.close()
    file = tmp_path / Path(name).name
    assert [p.name for p in tmp_path.iterdir()] == [file.name]
    assert rows(file, "SELECT calls FROM minutes") == [(1,)]


def test_report_and_status_refuse_an_unknown_sqlite_option(db: Path) -> None:
    SQLiteStore(uri(db)).close()
    for command in ("report", "status"):
        done = subprocess.run([sys.executable, "-m", "engine", command, "--policies", str(POLICIES), "--store",
                               f"sqlite:///{db}?mode=ro"], capture_output=True, text=True, timeout=120, check=False,
                              cwd=ROOT)
        assert done.returncode == 1, done.stderr
        assert done.stderr == f"policy-engine: sqlite store sqlite:///{db}?mode=ro: unknown option 'mode'; {TAKES}\n"


def test_open_store_makes_a_history_store_with_its_directory(db: Path) -> None:
    s = engine.store.base.open_store(uri(db, flush_s=2, instance="worker-1"))
    try:
        assert isinstance(s, SQLiteStore) and s.keeps_history
        assert (s.flush_s, s.instance) == (2.0, "worker-1")
        assert db.is_file()
        assert rows(db, "PRAGMA journal_mode") == [("wal",)]
        assert rows(db, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    finally:
        s.close()


def test_bad_flush_interval_is_refused(db: Path) -> None:
    with pytest.raises(StorageError, match="flush_s"):
        SQLiteStore(uri(db, flush_s=0))


def test_calls_are_buffered_until_a_flush_then_aggregated_per_minute(store: SQLiteStore, db: Path) -> None:
    store.record_call(T0 + 1, "L2", "m", 100.0, None, False, False, 10, 5, 0.5, False)
    store.record_call(T0 + 59, "L2", "m", 300.0, "timeout", True, True, 10, 0, 0.0, True)
    store.record_call(T0 + 61, "L2", "m", 200.0, "bad_request", False, False, 3, 0, 0.0, False)
    assert rows(db, "SELECT count(*) FROM minutes") == [(0,)]  # memory only until the writer runs
    store.flush()
    got = rows(db, "SELECT minute, tier, model, calls, successes, failures, slow, fallbacks, tokens_in, "
                   "tokens_out, cost, errors FROM minutes ORDER BY minute")
    first = int(T0 // 60)
    assert got == [(first, "L2", "m", 2, 1, 1, 1, 1, 20, 5, 0.5, '{"timeout":1}'),
                   (first + 1, "L2", "m", 1, 0, 0, 0, 0, 3, 0, 0.0, '{"bad_request":1}')]
    hist = decode_latency(*rows(db, f"SELECT {LATENCY} FROM minutes WHERE minute = ?", first)[0])  # noqa: S608
    assert (hist.count, hist.min, hist.max, hist.total) == (2, 100.0, 300.0, 400.0)
    assert hist.quantiles((0.5, 1.0)) == [pytest.approx(100.0, rel=0.01), 300.0]


TTFT = "ttft_zero, ttft_total, ttft_min, ttft_max, ttft"


def test_streamed_calls_time_to_first_token_is_its_own_histogram_per_minute(store: SQLiteStore, db: Path) -> None:
    store.record_call(T0 + 1, "L2", "m", 900.0, None, False, False, 1, 1, 0.0, False, ttft_ms=120.0)
    store.record_call(T0 + 2, "L2", "m", 800.0, None, False, False, 1, 1, 0.0, False, ttft_ms=0.0)
    store.record_call(T0 + 3, "L2", "m", 700.0, None, False, False, 1, 1, 0.0, False)  # not streamed
    store.record_call(T0 + 61, "L2", "m", 100.0, None, False, False, 1, 1, 0.0, False)
    store.flush()
    store.record_call(T0 + 4, "L2", "m", 600.0, None, False, False, 1, 1, 0.0, False, ttft_ms=300.0)
    store.flush()  # merged into the stored row
    store.record_call(T0 + 5, "L2", "m", 600.0, None, False, False, 1, 1, 0.0, False)
    store.flush()  # a row without streamed calls leaves the stored bounds
    first, second = rows(db, f"SELECT {TTFT} FROM minutes ORDER BY minute")  # noqa: S608
    hist = decode_latency(*first)  # type: ignore[arg-type]
    assert (hist.count, hist.min, hist.max, hist.total) == (3, 0.0, 300.0, 420.0)
    assert hist.quantiles((0.5, 1.0)) == [pytest.approx(120.0, rel=0.01), 300.0]
    assert second == (0, 0.0, None, None, "{}")  # no streamed call that minute
    assert decode_latency(*second).count == 0  # type: ignore[arg-type]
    assert rows(db, "SELECT sum(calls) FROM minutes") == [(6,)]


def test_a_version_2_history_migrates_and_keeps_its_rows(db: Path) -> None:
    db.parent.mkdir(parents=True)
    legacy = sqlite3.connect(db, isolation_level=None)  # as schema 2 left it: no ttft columns
    migrate(legacy, MIGRATIONS[:2])
    legacy.execute(f"INSERT INTO minutes (minute, tier, model, calls, successes, failures, slow, fallbacks, "  # noqa: S608
                   f"tokens_in, tokens_out, cost, errors, {LATENCY}, requests) "
                   f"VALUES (?, 'L1', 'm', 1, 1, 0, 0, 0, 1, 1, 0.0, '{{}}', 0, 5.0, 5.0, 5.0, '{{\"162\":1}}', 1)",
                   (int(T0 // 60),))
    legacy.close()
    assert len(MIGRATIONS) == 3
    with pytest.raises(StorageError, match=r"version 2 .* older"):
        open_readonly(db)
    s = SQLiteStore(uri(db, flush_s=3600))
    try:
        assert rows(db, "PRAGMA user_version") == [(3,)]
        assert rows(db, f"SELECT calls, {TTFT} FROM minutes") == [(1, 0, 0.0, None, None, "{}")]  # noqa: S608
        s.record_call(T0, "L1", "m", 5.0, None, False, False, 1, 1, 0.0, False, ttft_ms=2.0)
        s.flush()
        (calls, *ttft), = rows(db, f"SELECT calls, {TTFT} FROM minutes")  # noqa: S608
        assert calls == 2
        assert decode_latency(*ttft).to_dict()["count"] == 1  # type: ignore[arg-type]
        assert ttft[2:4] == [2.0, 2.0]
    finally:
        s.close()


def test_a_streamed_outcome_reaches_the_history_with_its_ttft(db: Path) -> None:
    eng = PolicyEngine.from_path(POLICIES, clock=FakeClock(), store=uri(db, flush_s=3600))
    try:
        d = eng.decide("L2")
        eng.record(d, Outcome(900.0, 10, 5, ttft_ms=250.0))
        eng.record(eng.decide("L2"), Outcome(400.0, 10, 5))
    finally:
        eng.close()
    (calls, *ttft), = rows(db, f"SELECT calls, {TTFT} FROM minutes WHERE model = ?", d.model)  # noqa: S608
    assert calls == 2
    hist = decode_latency(*ttft)  # type: ignore[arg-type]
    assert (hist.count, hist.min, hist.max) == (1, 250.0, 250.0)


def test_later_flushes_merge_into_the_same_minute(store: SQLiteStore, db: Path) -> None:
    for latency in (10.0, 20.0):
        store.record_call(T0, "L1", "m", latency, None, False, False, 1, 1, 0.25, False)
        store.flush()
    (calls, cost, errors, *latency), = rows(db, f"SELECT calls, cost, errors, {LATENCY} FROM minutes")  # noqa: S608
    assert (calls, cost, errors) == (2, 0.5, "{}")
    assert decode_latency(*latency).quantiles((0.0, 1.0)) == [10.0, 20.0]  # type: ignore[arg-type]


def test_stored_latency_matches_the_engine_histogram(store: SQLiteStore, db: Path) -> None:
    values = [0.0, 0.5, 3.0, 812.0, 812.5, 29_999.0, 2e9]
    for v in values:
        store.record_call(T0, "L1", "m", v, None, False, False, 0, 0, 0.0, False)
    store.flush()
    stored = decode_latency(*rows(db, f"SELECT {LATENCY} FROM minutes")[0])  # type: ignore[arg-type]  # noqa: S608
    direct = LatencyHistogram(0.01)
    for v in values:
        direct.add(v)
    assert stored.to_dict() == direct.to_dict()


def test_errors_and_latency_merge_across_flushes(store: SQLiteStore, db: Path) -> None:
    store.record_call(T0, "L1", "m", 10.0, "timeout", True, False, 0, 0, 0.0, False)
    store.flush()
    store.record_call(T0, "L1", "m", 1000.0, "timeout", True, False, 0, 0, 0.0, False)
    store.record_call(T0, "L1", "m", 10.0, "rate_limit", True, False, 0, 0, 0.0, False)
    store.flush()
    (errors, *latency), = rows(db, f"SELECT errors, {LATENCY} FROM minutes")  # noqa: S608
    assert json.loads(str(errors)) == {"rate_limit": 1, "timeout": 2}
    hist = decode_latency(*latency)  # type: ignore[arg-type]
    assert (hist.count, hist.min, hist.max) == (3, 10.0, 1000.0)


def test_recording_never_waits_for_a_locked_database(store: SQLiteStore, db: Path) -> None:
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the file
    try:
        done = threading.Event()

        def record() -> None:
            for i in range(1000):
                store.record_call(T0 + i, "L1", "m", 5.0, None, False, False, 1, 1, 0.0, False)
            store.append_event(CircuitOpened(T0, "m", "failure_rate", T0 + 30))
            done.set()

        worker = threading.Thread(target=record)
        worker.start()
        worker.join(timeout=10)
        assert done.is_set()
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.flush()
    assert rows(db, "SELECT sum(calls) FROM minutes") == [(1000,)]


def test_a_failed_commit_keeps_the_data_for_the_next_flush(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = SQLiteStore(uri(db, flush_s=3600, timeout_s=0.05))
    try:
        s.record_call(T0, "L1", "m", 5.0, None, False, False, 1, 1, 0.0, False)
        s.append_event(CircuitOpened(T0, "m", "failure_rate", T0 + 30))
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        s.flush()
        other.execute("ROLLBACK")
        other.close()
        assert "kept in memory for the next flush" in caplog.text
        assert rows(db, "SELECT count(*) FROM minutes") == [(0,)]
        s.flush()
        assert rows(db, "SELECT sum(calls) FROM minutes") == [(1,)]  # once, not twice
        assert rows(db, "SELECT count(*) FROM events") == [(1,)]
    finally:
        s.close()


def test_the_background_writer_flushes_on_its_interval(db: Path) -> None:
    s = SQLiteStore(uri(db, flush_s=0.05))
    try:
        s.record_call(T0, "L1", "m", 5.0, None, False, False, 1, 1, 0.0, False)
        wait_for(lambda: rows(db, "SELECT count(*) FROM minutes") == [(1,)])
    finally:
        s.close()


def test_close_flushes_and_is_idempotent(db: Path) -> None:
    s = SQLiteStore(uri(db, flush_s=3600))
    s.record_call(T0, "L1", "m", 5.0, None, False, False, 1, 1, 0.0, False)
    s.close()
    s.close()
    assert rows(db, "SELECT sum(calls) FROM minutes") == [(1,)]


def test_engine_events_and_fallbacks_are_logged(db: Path) -> None:
    clock = FakeClock()
    eng = PolicyEngine.from_path(POLICIES, clock=clock, store=uri(db, flush_s=3600))
    for _ in range(10):
        eng.record(eng.decide("L2"), Outcome(10.0, error="timeout"))
    clock.advance(1)
    for _ in range(3):
        eng.record(eng.decide("L2"), Outcome(10.0, 5, 5))
    eng.close()
    events = rows(db, "SELECT at, kind, subject, data FROM events")
    assert [(at, kind, subject) for at, kind, subject, _ in events] == [(T0, "CircuitOpened", "gpt-4.1-mini")]
    data = json.loads(str(events[0][3]))
    assert (data["reason"], data["open_until"], data["failure_rate"]) == ("failure_rate", T0 + 30, 100.0)
    # three fallback decisions, one row: the episode's time is cut from the reason
    assert rows(db, "SELECT minute, tier, from_model, to_model, to_tier, reason, count FROM fallbacks") == [
        (int(T0 // 60), "L2", "gpt-4.1-mini", "gemini-2.5-flash", "L2", "breaker open", 3)]
    assert rows(db, "SELECT model, calls, fallbacks FROM minutes ORDER BY model") == [
        ("gemini-2.5-flash", 3, 3), ("gpt-4.1-mini", 10, 0)]


def test_engine_clock_event_times_become_wall_times(store: SQLiteStore, db: Path) -> None:
    mono = time.monotonic()
    store.append_event(CircuitOpened(mono, "m", "failure_rate", mono + 30))
    store.flush()
    (at, clock_at, data), = rows(db, "SELECT at, clock_at, data FROM events")
    assert clock_at == mono and abs(float(at) - time.time()) < 60  # type: ignore[arg-type]
    assert json.loads(str(data))["open_until"] == pytest.approx(float(at) + 30)  # type: ignore[arg-type]


def test_a_wall_offset_from_the_engine_is_used_when_given(store: SQLiteStore, db: Path) -> None:
    store.attach(lambda: {"wall_offset": 1000.0})
    store.append_event(CircuitOpened(5.0, "m", "failure_rate", 35.0))
    store.flush()
    assert rows(db, "SELECT at, clock_at FROM events") == [(1005.0, 5.0)]


def test_events_lists_this_process_recent_events(store: SQLiteStore) -> None:
    event = CircuitOpened(T0, "m", "failure_rate", T0 + 30)
    store.append_event(event)
    assert store.events() == [event]


def test_restart_restores_budgets_and_breakers(db: Path) -> None:
    clock = FakeClock()  # 01:00 in Berlin, where the budgets' days start
    first = PolicyEngine.from_path(POLICIES, clock=clock, store=uri(db, flush_s=3600))
    for _ in range(10):
        first.record(first.decide("L2", model="gpt-4.1-mini"), Outcome(10.0, error="timeout"))
    first.force("o3", "disabled")
    for _ in range(3):
        first.record(first.decide("L4", model="gpt-5"), Outcome(1000.0, 900, 100))
    first.close()

    clock.advance(5)
    again = PolicyEngine.from_path(POLICIES, clock=clock, store=uri(db, flush_s=3600))
    try:
        breaker = again.state("gpt-4.1-mini")["breaker"]
        assert (breaker["state"], breaker["open_until"]) == ("open", T0 + 30)
        assert again.state("o3")["breaker"]["state"] == "disabled"
        budgets = {b["name"]: b["tokens_used"] for b in again.state("gpt-5")["budgets"]}
        assert budgets == {"gpt-5-daily": 3000, "everything-monthly": 3000}
        assert again.decide("L2").model == "gemini-2.5-flash"  # still skipping the open breaker
        clock.set(T0 + 23 * 3600 + 1)  # past midnight in Berlin: the daily budget starts afresh
        budgets = {b["name"]: b["tokens_used"] for b in again.state("gpt-5")["budgets"]}
        assert budgets == {"gpt-5-daily": 0, "everything-monthly": 3000}
    finally:
        again.close()


def test_each_instance_keeps_its_own_state(db: Path) -> None:
    clock = FakeClock()
    a = PolicyEngine.from_path(POLICIES, clock=clock, store=uri(db, flush_s=3600, instance="a"))
    a.force("o3", "disabled")
    a.close()
    b = PolicyEngine.from_path(POLICIES, clock=clock, store=uri(db, flush_s=3600, instance="b"))
    try:
        assert b.state("o3")["breaker"]["state"] == "closed"
    finally:
        b.close()
    assert sorted(r[0] for r in rows(db, "SELECT instance FROM state")) == ["a", "b"]


def test_schema_migrations_step_forward_once(db: Path) -> None:
    conn = connect(db, create=True)
    try:
        n = len(MIGRATIONS)
        assert rows(db, "PRAGMA user_version") == [(n,)]
        extra = (*MIGRATIONS, ("CREATE TABLE notes (text TEXT)",))
        assert migrate(conn, extra) == n
        assert migrate(conn, extra) == n + 1  # already there: nothing runs twice
        assert rows(db, "PRAGMA user_version") == [(n + 1,)]
        assert rows(db, "SELECT name FROM sqlite_master WHERE name = 'notes'") == [("notes",)]
    finally:
        conn.close()


def test_a_newer_schema_is_refused(db: Path) -> None:
    connect(db, create=True).execute("PRAGMA user_version = 99").connection.close()
    with pytest.raises(StorageError, match="schema version 99 is newer"):
        SQLiteStore(uri(db))


def test_a_file_that_is_not_a_database_is_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match="cannot open history database"):
        SQLiteStore(uri(db))


def test_readers_do_not_create_missing_files(db: Path) -> None:
    with pytest.raises(StorageError, match="no history database"):
        connect(db, create=False)
    assert not db.exists()


# -- read-only opening (report, status) ----------------------------------------------------------------
def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_read_only_open_reads_a_store_and_cannot_write(db: Path) -> None:
    store = SQLiteStore(uri(db))
    store.record_call(T0, "L1", "m", 100.0, None, False, False, 1, 1, 0.0, False)
    store.close()
    before = digest(db)
    conn = open_readonly(db)
    try:
        assert conn.execute("SELECT calls FROM minutes").fetchall() == [(1,)]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM minutes")
    finally:
        conn.close()
    assert digest(db) == before


@pytest.mark.parametrize("setup", [
    "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO customers VALUES (1, 'alice')",
    "CREATE TABLE minutes (x); PRAGMA user_version = 0",  # a `minutes` table, but no history schema
    "CREATE TABLE customers (id); PRAGMA user_version = 1",  # a version, but no `minutes` table
])
def test_a_read_only_open_refuses_a_file_that_is_not_a_history_store(db: Path, setup: str) -> None:
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.executescript(setup)
    conn.close()
    before = digest(db)
    with pytest.raises(StorageError, match="is not a history database"):
        open_readonly(db)
    assert digest(db) == before
    assert rows(db, "PRAGMA journal_mode") == [("delete",)]  # not switched to WAL
    assert sorted(p.name for p in db.parent.iterdir()) == ["history.db"]


def test_a_read_only_open_refuses_a_file_that_is_not_sqlite(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError, match="is not a history database"):
        open_readonly(db)
    assert db.read_bytes() == b"this is not sqlite" * 100


def test_a_read_only_open_does_not_migrate_an_older_schema(db: Path) -> None:
    SQLiteStore(uri(db)).close()
    before = digest(db)
    newer = (*MIGRATIONS, ("CREATE TABLE notes (text TEXT)",))
    n = len(MIGRATIONS)
    with pytest.raises(StorageError, match=rf"version {n} .* is older than this engine's \({n + 1}\); open it with "
                                           r"the engine once"):
        open_readonly(db, migrations=newer)
    assert digest(db) == before
    assert rows(db, "PRAGMA user_version") == [(n,)]


def test_a_read_only_open_refuses_a_newer_schema_unchanged(db: Path) -> None:
    connect(db, create=True).execute("PRAGMA user_version = 99").connection.close()
    before = digest(db)
    with pytest.raises(StorageError, match=r"schema version 99 .* is newer"):
        open_readonly(db)
    assert digest(db) == before


def test_a_read_only_open_does_not_create_a_missing_file(db: Path) -> None:
    with pytest.raises(StorageError, match="no history database"):
        open_readonly(db)
    assert not db.exists()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="no /proc/self/fd to count open files")
def test_a_failed_open_leaves_no_file_open(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not sqlite" * 100)
    newer = db.with_name("newer.db")
    connect(newer, create=True).execute("PRAGMA user_version = 99").connection.close()
    opens: list[Callable[[], object]] = [
        lambda: connect(db, create=True), lambda: connect(db, create=False), lambda: SQLiteStore(uri(db)),
        lambda: open_readonly(db), lambda: connect(newer, create=True), lambda: open_readonly(newer)]
    for open_ in opens:
        before = open_fds()
        with pytest.raises(StorageError) as caught:
            open_()
        del caught  # the exception's traceback must not be what keeps a connection alive
        assert open_fds() == before, open_
    with pytest.raises(StorageError, match=f"cannot open history database {db}: the file is not an SQLite "
                                           "database; point the store at a path"):
        connect(db, create=True)


# -- a directory this process may not write ----------------------------------------------------------
def unprivileged() -> list[str]:
    """A command prefix under which this process obeys a directory's mode 0555: none for an ordinary user;
    for root, ``setpriv`` without the capabilities that override file permissions."""
    if os.geteuid() != 0:
        return []
    import shutil

    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only directory cannot be made for this process")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "ro"
    folder.mkdir()
    yield folder
    folder.chmod(0o755)


def seal(folder: Path) -> None:
    """Make ``folder`` read-only (0555) and check that the unprivileged commands cannot write it."""
    folder.chmod(0o555)
    probe = subprocess.run([*unprivileged(), sys.executable, "-c", "import sys; open(sys.argv[1], 'w')",
                            str(folder / "probe")], capture_output=True, text=True, timeout=60, check=False)
    if probe.returncode == 0:
        (folder / "probe").unlink()
        pytest.skip("cannot make a directory read-only for a process here")
    assert "Permission denied" in probe.stderr


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*unprivileged(), sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, timeout=120, check=False, cwd=ROOT)


def recorded(db: Path) -> None:
    store = SQLiteStore(uri(db))
    store.record_call(T0, "L1", "gpt-4.1-nano", 100.0, None, False, False, 10, 5, 0.001, False)
    store.close()


def test_status_and_report_read_a_history_in_a_read_only_directory(read_only_dir: Path, tmp_path: Path) -> None:
    db = read_only_dir / "history.db"
    recorded(db)
    assert sorted(p.name for p in read_only_dir.iterdir()) == ["history.db"]  # closed: no -wal, no -shm
    before = digest(db)
    seal(read_only_dir)
    status = cli("status", "--policies", str(POLICIES), "--store", uri(db), "--format", "json")
    assert status.returncode == 0, status.stderr
    assert "gpt-4.1-nano" in [m["model"] for m in json.loads(status.stdout)["models"]]
    report = cli("report", "--policies", str(POLICIES), "--store", uri(db), "--date", "2026-01-01", "--out",
                 str(tmp_path / "out"))
    assert report.returncode == 0, report.stderr
    assert "| L1 | 1 |" in (tmp_path / "out" / "260101-DAILY-REPORT.md").read_text(encoding="utf-8")
    assert sorted(p.name for p in read_only_dir.iterdir()) == ["history.db"] and digest(db) == before


def test_a_write_ahead_log_that_cannot_be_read_is_explained(read_only_dir: Path, db: Path) -> None:
    recorded(db)
    writer = sqlite3.connect(db)
    try:  # a commit left in the -wal (as by a killed engine), copied without its -shm
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("UPDATE minutes SET calls = calls + 1")
        writer.commit()
        wal = db.with_name(db.name + "-wal")
        assert wal.stat().st_size > 0
        for p in (db, wal):
            (read_only_dir / p.name).write_bytes(p.read_bytes())
    finally:
        writer.close()
    seal(read_only_dir)
    status = cli("status", "--policies", str(POLICIES), "--store", uri(read_only_dir / "history.db"))
    assert status.returncode == 1
    ro = read_only_dir / "history.db"
    assert status.stderr == (
        f"policy-engine: cannot read history database {ro} read-only: its write-ahead log {ro}-wal holds changes "
        f"that SQLite can only read through history.db-shm, which it may not create in {read_only_dir} (not "
        "writable by this process); make the directory writable for this user, or let the engine that writes it "
        "close (which folds the log into the database), then retry\n")


_OPEN_IN_READ_ONLY_DIR = """
import json, os, sys
from pathlib import Path
from engine import PolicyEngine, StorageError
from engine.store.historydb import open_readonly
fds = lambda: len(os.listdir("/proc/self/fd"))
folder, policies = Path(sys.argv[1]), sys.argv[2]
out = {}
for name in ("new.db", "history.db", "sub/history.db", "wal/history.db"):
    before = fds()
    try:
        PolicyEngine.from_path(policies, store=f"sqlite:///{folder / name}").close()
        out[name] = "opened"
    except StorageError as exc:
        out[name] = str(exc)
    out[name + " fds"] = fds() - before
for name in ("history.db", "wal/history.db"):
    before = fds()
    try:
        open_readonly(folder / name).close()
    except StorageError:
        pass
    out["read " + name + " fds"] = fds() - before
print(json.dumps(out))
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="no /proc/self/fd to count open files")
def test_the_engine_says_why_it_cannot_keep_history_in_a_read_only_directory(read_only_dir: Path,
                                                                              db: Path) -> None:
    recorded(read_only_dir / "history.db")
    (read_only_dir / "wal").mkdir()
    recorded(db)
    writer = sqlite3.connect(db)
    try:
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("UPDATE minutes SET calls = calls + 1")
        writer.commit()
        for p in (db, db.with_name(db.name + "-wal")):
            (read_only_dir / "wal" / p.name).write_bytes(p.read_bytes())
    finally:
        writer.close()
    (read_only_dir / "wal").chmod(0o555)
    seal(read_only_dir)
    done = subprocess.run([*unprivileged(), sys.executable, "-c", _OPEN_IN_READ_ONLY_DIR, str(read_only_dir),
                           str(POLICIES)], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
    (read_only_dir / "wal").chmod(0o755)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    what = ("make the directory writable for this user, or point the store at a path this process may write "
            "(store='sqlite:///path/history.db'), or keep no history (store='memory://')")
    assert got["new.db"] == (
        f"cannot open history database {read_only_dir}/new.db: its directory {read_only_dir} is not writable by "
        "this process (permission denied), and SQLite must create the database and its write-ahead log files "
        f"(new.db-wal, new.db-shm) there; {what}")
    assert got["history.db"] == (
        f"cannot open history database {read_only_dir}/history.db: its directory {read_only_dir} is not writable "
        "by this process (permission denied), and SQLite must create its write-ahead log files (history.db-wal, "
        f"history.db-shm) there; {what}")
    assert got["sub/history.db"] == (
        f"cannot create the directory {read_only_dir}/sub of the history database {read_only_dir}/sub/history.db: "
        "Permission denied; create it, or point the store at a path this process may write "
        "(store='sqlite:///path/history.db'), or keep no history (store='memory://')")
    assert got["wal/history.db"].startswith(f"cannot open history database {read_only_dir}/wal/history.db: ")
    assert {k: v for k, v in got.items() if k.endswith("fds")} == {
        "new.db fds": 0, "history.db fds": 0, "sub/history.db fds": 0, "wal/history.db fds": 0,
        "read history.db fds": 0, "read wal/history.db fds": 0}
    assert sorted(p.name for p in read_only_dir.iterdir()) == ["history.db", "wal"]


# -- processes ---------------------------------------------------------------------------------
FLUSH_S = 0.2
#: What one flush may add on top of its interval: the commit itself and thread scheduling on a busy machine.
COMMIT_SLACK_S = 0.3

_HAMMER = """
import sys, time
from engine import Outcome, PolicyEngine
from engine.store.sqlite import SQLiteStore
path, log, policies, flush_s = sys.argv[1:]
eng = PolicyEngine.from_path(policies, store=SQLiteStore(f"sqlite:///{path}?flush_s={flush_s}"))
ok = Outcome(5.0, 10, 5)
n = 0
with open(log, "a", buffering=1) as fh:
    while True:
        for _ in range(2000):  # a line (a syscall) per 2,000 calls: more often starves the writer thread
            eng.record(eng.decide("L1"), ok)
        n += 2000
        fh.write(f"{n} {time.time()!r}\\n")
"""


def _flushed_at(db: Path) -> float | None:
    try:
        got = rows(db, "SELECT flushed_at FROM state")
    except sqlite3.Error:
        return None
    return float(got[0][0]) if got else None  # type: ignore[arg-type]


@pytest.mark.slow
def test_sigkill_loses_at_most_one_flush_interval(tmp_path: Path) -> None:
    db, log = tmp_path / "h.db", tmp_path / "progress.log"
    proc = subprocess.Popen([sys.executable, "-c", _HAMMER, str(db), str(log), str(POLICIES), str(FLUSH_S)],
                            cwd=ROOT)
    try:
        seen: set[float] = set()

        def flushed_three_times_with_state() -> bool:
            at = _flushed_at(db) if db.exists() else None
            if at is not None:
                seen.add(at)
            return len(seen) >= 3 and rows(db, "SELECT count(*) FROM state WHERE data IS NOT NULL") == [(1,)]

        wait_for(flushed_three_times_with_state, timeout=60)
        killed_at = time.time()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    progress = [(int(n), float(t)) for n, t in (line.split() for line in log.read_text().splitlines())]
    persisted = int(rows(db, "SELECT sum(calls) FROM minutes")[0][0])  # type: ignore[call-overload]
    last_drain = _flushed_at(db)
    assert last_drain is not None
    # the last commit drained the queue within one flush interval (plus its own duration) of the kill...
    assert killed_at - last_drain <= FLUSH_S + COMMIT_SLACK_S
    # ...and holds every call recorded before that drain, and no call that was never made
    assert persisted >= max((n for n, t in progress if t <= last_drain), default=0)
    assert persisted <= progress[-1][0] + 2000
    # a restarted engine takes back the budget usage the killed one saved
    again = PolicyEngine.from_path(POLICIES, store=uri(db, flush_s=3600))
    try:
        used = {b["name"]: b["tokens_used"] for b in again.state("gpt-4.1-nano")["budgets"]}
        assert 0 < used["everything-monthly"] <= persisted * 15
    finally:
        again.close()


_WRITER = """
import sys, time
from pathlib import Path
from engine.store.sqlite import SQLiteStore
path, name, go, calls = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
store = SQLiteStore(f"sqlite:///{path}?flush_s=0.01&instance={name}")
Path(path + "." + name + ".ready").touch()
deadline = time.monotonic() + 60
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.005)
for i in range(calls):
    store.record_call(1767225600.0 + (i % 180), "L1", "m", 1.0 + i % 50, None if i % 10 else "timeout",
                      i % 10 == 0, False, 2, 1, 0.001, False)
    if i % 500 == 0:
        store.flush()
store.close()
"""


@pytest.mark.slow
def test_two_processes_writing_one_file_do_not_corrupt_it(tmp_path: Path) -> None:
    db, go, calls = tmp_path / "h.db", tmp_path / "go", 20_000
    connect(db, create=True).close()  # create the schema once, so both writers race only on data
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(db), name, str(go), str(calls)], cwd=ROOT)
             for name in ("a", "b")]
    try:
        wait_for(lambda: all(Path(f"{db}.{n}.ready").exists() for n in ("a", "b")), timeout=60)
        go.touch()
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
    finally:
        for p in procs:
            p.kill()
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    total = rows(db, "SELECT sum(calls), sum(successes), sum(failures), sum(tokens_in), count(*) FROM minutes")
    assert total == [(2 * calls, 2 * calls * 9 // 10, 2 * calls // 10, 4 * calls, 3)]
    counts = [decode_latency(*r).count for r in rows(db, f"SELECT {LATENCY} FROM minutes")]  # type: ignore[arg-type]  # noqa: S608
    assert sum(counts) == 2 * calls
    assert sorted(r[0] for r in rows(db, "SELECT instance FROM state")) == ["a", "b"]

"""``convert`` and ``replay`` of hostile or odd history databases, and ``sqlite://`` URIs with credentials."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.sim.convert import MAX_ROW_CALLS
from engine.store.historydb import connect
from tests.conftest import POLICIES, ROOT

MINUTE = 29453760  # 2026-01-01 00:00 UTC
HOSTILE_TIER = "L2\x1b]0;owned\x07\x1b[2J"
HOSTILE_MODEL = "m\nfake.csv:1: all good"


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def _no_controls(text: str) -> None:
    assert not any((ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F for c in text), repr(text)


def history_db(path: Path, *rows: dict[str, Any]) -> Path:
    """A history database (the engine's own schema) holding ``rows`` of the ``minutes`` table."""
    conn = connect(path, create=True)
    for extra in rows:
        row: dict[str, Any] = dict(minute=MINUTE, tier="L2", model="gpt-4.1-mini", calls=1, successes=1, failures=0,
                                   slow=0, fallbacks=0, tokens_in=10, tokens_out=5, cost=0.0, errors="{}",
                                   lat_zero=0, lat_total=1.0, lat_min=1.0, lat_max=1.0, latency="")
        row.update(extra)
        conn.execute(f"INSERT INTO minutes ({','.join(row)}) VALUES ({','.join('?' * len(row))})",  # noqa: S608
                     tuple(row.values()))
    conn.commit()
    conn.close()
    return path


# -- names from a history are shown escaped ------------------------------------------------------
def test_replay_and_convert_show_hostile_history_names_escaped(tmp_path: Path) -> None:
    db = history_db(tmp_path / "h.db", {"tier": HOSTILE_TIER, "model": HOSTILE_MODEL, "errors": "[]"})
    shown = "minute 29453760 tier 'L2\\x1b]0;owned\\x07\\x1b[2J' model 'm\\nfake.csv:1: all good'"
    for out in (run("replay", str(db), "--policies", str(POLICIES), "-q"), run("convert", str(db), "-o",
                                                                              str(tmp_path / "out.csv"))):
        assert out.returncode == 1
        _no_controls(out.stderr)
        assert out.stderr.splitlines()[0] == (f"{db}:1: {shown}: errors: expected a JSON object of error class -> "
                                              "count >= 0, got '[]'")


def test_replay_shows_an_unknown_hostile_tier_from_a_history_escaped(tmp_path: Path) -> None:
    db = history_db(tmp_path / "h.db", {"tier": HOSTILE_TIER, "model": HOSTILE_MODEL})
    out = run("replay", str(db), "--policies", str(POLICIES), "-q")
    assert out.returncode == 1
    _no_controls(out.stderr)
    assert out.stderr.splitlines()[0].startswith(f"{db}:1: unknown tier 'L2\\x1b]0;owned\\x07\\x1b[2J'")
    assert len(out.stderr.splitlines()) == 2, out.stderr  # the problem and "no valid line": nothing forged


def test_a_trace_error_naming_a_hostile_file_is_shown_escaped(tmp_path: Path) -> None:
    bad = tmp_path / "t\x1b[2J\nfake.csv"
    bad.write_bytes(b"\xff\xfe not text\n")
    for out in (run("replay", str(bad), "--policies", str(POLICIES), "-q"), run("convert", str(bad))):
        assert out.returncode == 1
        _no_controls(out.stderr)
        assert len(out.stderr.splitlines()) == 1, out.stderr
        assert "t\\x1b[2J\\nfake.csv:1: not UTF-8 text" in out.stderr


# -- aggregate counts are bounded and checked ----------------------------------------------------
@pytest.mark.parametrize(("row", "message"), [
    ({"calls": 10**9, "successes": 10**9},
     f"calls: 1,000,000,000 attempts in one minute, over the {MAX_ROW_CALLS:,} a history row may hold"),
    ({"calls": 3, "successes": 2, "errors": '{"rate_limit": 2}'}, "2 successes and 2 errors, more than its 3 calls"),
    ({"calls": -1}, "calls: expected an integer >= 0, got -1"),
    ({"successes": "x"}, "successes: expected an integer >= 0, got 'x'"),
    ({"calls": 2, "errors": '{"rate_limit": -1}'}, "errors: expected a JSON object of error class -> count >= 0"),
    ({"errors": "[1]"}, "errors: expected a JSON object"),
    ({"fallbacks": 5}, "5 fallbacks, more than its 1 calls"),
    ({"minute": -5}, "minute: expected an integer >= 0 (minutes since 1970), got -5"),
])
def test_a_history_row_with_impossible_counts_is_a_malformed_line(tmp_path: Path, row: dict[str, Any],
                                                                  message: str) -> None:
    db = history_db(tmp_path / "h.db", row, {"minute": MINUTE + 1, "calls": 2, "successes": 2})
    out = run("convert", str(db), "-o", str(tmp_path / "out.csv"))
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    first = out.stderr.splitlines()[0]
    assert first.startswith(f"{db}:1: minute "), first
    assert message in first, first
    assert out.stderr.splitlines()[-1] == f"{db}: history, 2 lines written, 1 malformed lines skipped"
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 3  # the header and the good row's 2 calls


def test_a_history_of_more_attempts_than_a_conversion_holds_is_refused(tmp_path: Path) -> None:
    rows = [{"minute": MINUTE + i, "calls": MAX_ROW_CALLS, "successes": MAX_ROW_CALLS} for i in range(101)]
    db = history_db(tmp_path / "h.db", *rows)
    out = run("convert", str(db), "-o", str(tmp_path / "out.csv"))
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"policy-engine convert: {db}: the history holds more than 10,000,000 attempts (by row 101), more than a "
        "conversion holds in memory; convert a copy with fewer minutes"]


# -- file names are not read as URI syntax --------------------------------------------------------
def test_a_history_whose_name_holds_a_question_mark_is_read_as_that_file(tmp_path: Path) -> None:
    db = history_db(tmp_path / "day?1.db", {"calls": 3, "successes": 3})
    out = run("convert", "day?1.db", "-o", "out.csv", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == ["day?1.db: history, 3 lines written"]
    out = run("replay", "day?1.db", "--policies", str(POLICIES), "-q", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "day").exists()  # not read as the file "day" with a query (and without mode=ro)
    assert {p.name for p in tmp_path.iterdir()} <= {db.name, f"{db.name}-wal", f"{db.name}-shm", "out.csv"}


# -- sqlite:// URIs with credentials ---------------------------------------------------------------
SECRET = "hunter2"  # noqa: S105 - the password that must never be shown


@pytest.mark.parametrize(("query", "shown"), [
    ("?timeout=5", "unknown option 'timeout'"),
    ("?flush_s=1&flush_s=2", "option flush_s given twice"),
])
def test_a_sqlite_uri_error_does_not_echo_the_password(tmp_path: Path, query: str, shown: str) -> None:
    for command in ("report", "status"):
        out = run(command, "--policies", str(POLICIES), "--store", f"sqlite://admin:{SECRET}@/h.db{query}",
                  cwd=tmp_path)
        assert out.returncode != 0
        assert SECRET not in out.stdout + out.stderr
        assert f"sqlite store sqlite://***@/h.db{query}: {shown}" in out.stderr

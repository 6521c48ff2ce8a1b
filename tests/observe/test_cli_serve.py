"""``policy-engine serve`` as a real subprocess over a real SQLite history."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from engine import Outcome, PolicyEngine
from engine.testing import FakeClock
from tests.conftest import POLICIES

ROOT = Path(__file__).resolve().parents[2]


def _history(path: Path) -> None:
    clock = FakeClock()
    eng = PolicyEngine.from_path(POLICIES, clock=clock, store=f"sqlite:///{path}")
    for _ in range(10):
        eng.record(eng.decide("L2", model="gpt-4.1-mini"), Outcome(100.0, error="server_error"))
        clock.advance(0.1)
    eng.record(eng.decide("L2"), Outcome(300.0, 100, 20))
    eng.close()


def _serve(*args: str, cwd: Path = ROOT) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "engine", "serve", "--port", "0", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_serve_shows_a_sqlite_history_on_loopback(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    _history(db)
    proc = _serve("--store", f"sqlite:///{db}", "--policies", str(POLICIES))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving sqlite history history.db at http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split(" at ", 1)[1].split()[0]
        with urllib.request.urlopen(url + "status", timeout=10) as r:  # noqa: S310 - loopback
            status = json.loads(r.read())
        models = {m["model"]: m for m in status["models"]}
        assert models["gpt-4.1-mini"]["breaker"] == "open" and models["gpt-4.1-mini"]["calls"] == 10
        assert [e["event"] for e in status["events"]] == ["CircuitOpened"]  # fallbacks are kept as counts
        assert status["events"][0]["time"] == "2026-01-01T00:00:00.900Z"
        assert status["events"][0]["model"] == "gpt-4.1-mini"
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310
            assert b"llm-policy-engine" in r.read()
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


def test_serve_without_a_store_says_which_path_to_pass(tmp_path: Path) -> None:
    proc = _serve("--policies", str(POLICIES), cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and out == ""
    assert "no history database under ./memory" in err and "--store sqlite:///" in err


def test_serve_refuses_an_unknown_store_scheme_without_echoing_a_password() -> None:
    proc = _serve("--store", "postgres://u:s3cret@h/db")
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "s3cret" not in err
    assert "expected a sqlite://, redis:// or redis+cluster:// URI" in err

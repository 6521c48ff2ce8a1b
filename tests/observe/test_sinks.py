"""JSON Lines and logging event sinks."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from engine import Outcome, PolicyEngine
from engine.observe.sinks import JsonLinesSink, LoggingSink
from engine.testing import FakeClock
from tests.conftest import POLICIES


def _outage(eng: PolicyEngine, clock: FakeClock) -> None:
    for _ in range(10):
        eng.record(eng.decide("L2", model="gpt-4.1-mini"), Outcome(100.0, error="server_error"))
        clock.advance(0.1)
    eng.record(eng.decide("L2"), Outcome(50.0))


def test_json_lines_sink_appends_one_event_a_line_to_a_file(tmp_path: Path) -> None:
    clock = FakeClock()
    eng = PolicyEngine.from_path(POLICIES, clock=clock)
    path = tmp_path / "logs" / "events.jsonl"
    sink = JsonLinesSink(path)
    eng.subscribe(sink)
    _outage(eng, clock)
    sink.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["event"] for r in rows] == ["CircuitOpened", "FallbackTriggered"]
    assert rows[0]["time"] == "2026-01-01T00:00:00.900Z" and rows[0]["model"] == "gpt-4.1-mini"


def test_json_lines_sink_writes_to_a_stream_and_leaves_it_open() -> None:
    clock = FakeClock()
    eng = PolicyEngine.from_path(POLICIES, clock=clock)
    out = io.StringIO()
    sink = JsonLinesSink(out)
    eng.subscribe(sink)
    _outage(eng, clock)
    sink.close()
    assert not out.closed and len(out.getvalue().splitlines()) == 2


def test_logging_sink_puts_the_event_fields_on_the_record(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    eng = PolicyEngine.from_path(POLICIES, clock=clock)
    eng.subscribe(LoggingSink("engine.events"))
    with caplog.at_level(logging.INFO, logger="engine.events"):
        _outage(eng, clock)
    opened, fell = caplog.records
    assert opened.levelno == logging.WARNING and opened.event == "CircuitOpened"  # type: ignore[attr-defined]
    assert opened.model == "gpt-4.1-mini" and opened.reason == "failure_rate"  # type: ignore[attr-defined]
    assert opened.time == "2026-01-01T00:00:00.900Z"  # type: ignore[attr-defined]
    assert fell.to_model == "gemini-2.5-flash" and "FallbackTriggered" in fell.getMessage()  # type: ignore[attr-defined]

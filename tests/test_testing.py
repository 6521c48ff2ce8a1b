from __future__ import annotations

import math
import threading
from datetime import UTC, datetime

import pytest

from engine import testing
from engine.testing import FakeClock


def test_exports() -> None:
    assert testing.__all__ == ["FakeClock", "FakeProvider"]


def test_default_start_is_2026_01_01_utc() -> None:
    clock = FakeClock()
    assert datetime.fromtimestamp(clock(), UTC) == datetime(2026, 1, 1, tzinfo=UTC)


def test_call_returns_current_time_and_advance_moves_it() -> None:
    clock = FakeClock(100.0)
    assert clock() == 100.0
    assert clock.advance(2.5) == 102.5
    assert clock() == 102.5
    assert clock.now == 102.5
    clock.advance(0)
    assert clock() == 102.5


@pytest.mark.parametrize("bad", [-0.001, math.nan, math.inf])
def test_advance_refuses_negative_and_non_finite(bad: float) -> None:
    clock = FakeClock(100.0)
    with pytest.raises(ValueError):
        clock.advance(bad)
    assert clock() == 100.0


def test_set_moves_forward_and_refuses_going_backwards() -> None:
    clock = FakeClock(100.0)
    clock.set(100.0)
    clock.set(150.0)
    assert clock() == 150.0
    with pytest.raises(ValueError, match="150"):
        clock.set(149.999)
    assert clock() == 150.0


def test_step_back_moves_time_backwards_on_purpose_only() -> None:
    clock = FakeClock(100.0)
    assert clock.step_back(3600.0) == -3500.0
    assert clock() == -3500.0
    clock.step_back(0)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            clock.step_back(bad)
    assert clock() == -3500.0


def test_start_must_be_finite() -> None:
    with pytest.raises(ValueError):
        FakeClock(math.nan)


def test_concurrent_advances_are_not_lost() -> None:
    clock = FakeClock(0.0)

    def work() -> None:
        for _ in range(2_000):
            clock.advance(1.0)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock() == 8_000.0

"""Per-attempt and time-to-first-token timeouts and a deadline per call (routing.yaml ``timeouts``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engine import DeadlineExceeded, PolicyEngine
from engine.calling import Attempt, AttemptTimedOut
from engine.testing import FakeClock

MINI, FLASH, HAIKU = "gpt-4.1-mini", "gemini-2.5-flash", "claude-haiku-4-5"


class HTTP503(Exception):
    status_code = 503


def with_timeouts(policy_dir: Path, **values: float) -> Path:
    routing = policy_dir / "routing.yaml"
    routing.write_text(routing.read_text() + "timeouts:\n" + "".join(f"  {k}: {v}\n" for k, v in values.items()))
    return policy_dir


def test_call_passes_the_attempt_its_timeout_capped_by_the_deadline(policy_dir: Path) -> None:
    clock = FakeClock()
    models = policy_dir / "models.yaml"
    models.write_text(models.read_text().replace("    max_in_flight: 128\n  gemini-2.5-flash:",
                                                 "    max_in_flight: 128\n    timeout_s: 4\n  gemini-2.5-flash:", 1))
    eng = PolicyEngine.from_path(with_timeouts(policy_dir, attempt_s=10, ttft_s=2, deadline_s=6.5), clock=clock)
    seen: list[Attempt] = []

    def fn(model: str, attempt: Attempt) -> str:
        seen.append(attempt)
        clock.advance(3)
        if model == MINI:
            raise HTTP503()
        return "ok"

    assert eng.call("L2", fn, sleep=clock.advance, rng=type("R", (), {"random": lambda self: 0.0})()) == "ok"
    # MINI: its own 4 s; its retry at t=3: the 3.5 s left; FLASH at t=6: the tier's 10 s capped to 0.5 s
    assert [(a.model, a.timeout_s, a.ttft_timeout_s) for a in seen] == [
        (MINI, 4, 2), (MINI, 3.5, 2), (FLASH, 0.5, 0.5)]
    assert seen[0].api_model == MINI
    assert eng.state(FLASH)["metrics"]["errors_timeout"] == 1  # it answered, but 3 s is past its 0.5 s


def test_a_sync_attempt_past_its_timeout_is_recorded_as_timeout_and_kept(policy_dir: Path) -> None:
    clock = FakeClock()
    eng = PolicyEngine.from_path(with_timeouts(policy_dir, attempt_s=1), clock=clock)
    assert eng.call("L2", lambda m: clock.advance(1.5) and "late answer") == "late answer"
    m = eng.state(MINI)["metrics"]
    assert (m["successes"], m["errors_timeout"], m["failures"]) == (0, 1, 1)


def test_the_deadline_stops_a_sync_call_and_names_the_last_failure(policy_dir: Path) -> None:
    clock = FakeClock()
    eng = PolicyEngine.from_path(with_timeouts(policy_dir, deadline_s=5), clock=clock)
    called: list[str] = []

    def fn(model: str) -> str:
        called.append(model)
        clock.advance(2)
        raise HTTP503()

    with pytest.raises(DeadlineExceeded) as info:
        eng.call("L2", fn, sleep=clock.advance)
    assert isinstance(info.value.__cause__, HTTP503) and isinstance(info.value, TimeoutError)
    assert len(called) == 3 and info.value.attempts == 3
    assert "deadline of 5 s for tier L2 passed after 3 attempts" in str(info.value)


def test_a_retry_after_beyond_the_deadline_falls_back_instead_of_waiting(policy_dir: Path) -> None:
    clock = FakeClock()
    eng = PolicyEngine.from_path(policy_dir, clock=clock)

    class Limited(Exception):
        status_code = 429
        retry_after = 20.0

    called: list[str] = []

    def fn(model: str) -> str:
        called.append(model)
        if model == MINI:
            raise Limited()
        return "ok"

    start = clock.now
    assert eng.call("L2", fn, sleep=clock.advance, deadline_s=10) == "ok"
    assert called == [MINI, FLASH] and clock.now == start
    with pytest.raises(ValueError, match="deadline_s must be a finite number of seconds > 0, got -1"):
        eng.call("L2", fn, deadline_s=-1)


def test_acall_cancels_a_hung_attempt_at_its_timeout_and_falls_back(policy_dir: Path) -> None:
    eng = PolicyEngine.from_path(with_timeouts(policy_dir, attempt_s=0.05))

    async def fn(model: str) -> str:
        if model == MINI:
            await asyncio.sleep(30)
        return f"answer from {model}"

    t0 = time.monotonic()
    assert asyncio.run(eng.acall("L2", fn, sleep=lambda s: asyncio.sleep(0))) == f"answer from {FLASH}"
    elapsed = time.monotonic() - t0
    assert elapsed < 0.5  # two 0.05 s attempts (one same-model retry), not 30 s
    m = eng.state(MINI)["metrics"]
    assert (m["errors_timeout"], m["failures"]) == (2, 2) and eng.state(MINI)["in_flight"] == 0


def test_acall_never_runs_past_its_deadline(policy_dir: Path) -> None:
    eng = PolicyEngine.from_path(with_timeouts(policy_dir, attempt_s=0.15, deadline_s=0.2))

    async def hang(model: str) -> str:
        await asyncio.sleep(30)
        return "never"

    took: list[float] = []

    async def main() -> None:
        t0 = time.monotonic()
        try:
            await eng.acall("L2", hang)
        finally:
            took.append(time.monotonic() - t0)

    with pytest.raises(DeadlineExceeded) as info:
        asyncio.run(main())
    assert 0.2 <= took[0] < 0.25  # the deadline, plus at most a scheduling tick (a loaded machine's, here)
    assert isinstance(info.value.__cause__, AttemptTimedOut)
    for m in (MINI, FLASH):
        assert eng.state(m)["in_flight"] == 0


def test_acall_ttft_timeout_on_a_stream_falls_back_before_any_content(policy_dir: Path) -> None:
    eng = PolicyEngine.from_path(with_timeouts(policy_dir, ttft_s=0.05))

    async def chunks(delay: float) -> AsyncIterator[Any]:
        yield {"choices": [{"delta": {"role": "assistant", "content": ""}}]}
        await asyncio.sleep(delay)
        yield {"choices": [{"delta": {"content": "hi"}}]}

    async def fn(model: str) -> AsyncIterator[Any]:
        return chunks(10 if model == MINI else 0.0)

    async def main() -> list[Any]:
        return [c async for c in await eng.acall("L2", fn, sleep=lambda s: asyncio.sleep(0))]

    t0 = time.monotonic()
    got = asyncio.run(main())
    assert time.monotonic() - t0 < 0.5
    assert [c["choices"][0]["delta"].get("content") for c in got] == ["", "hi"]
    assert eng.state(MINI)["metrics"]["errors_timeout"] == 2 and eng.state(MINI)["in_flight"] == 0


def test_callable_objects_get_the_attempt_only_when_their_call_takes_it(policy_dir: Path) -> None:
    eng = PolicyEngine.from_path(policy_dir, clock=FakeClock())

    class ModelOnly:
        def __call__(self, model: str) -> str:
            return f"one:{model}"

    class WithAttempt:
        def __call__(self, model: str, attempt: Attempt) -> str:
            return f"two:{model}:{attempt.model}"

    class OptionalAttempt:
        def __call__(self, model: str, attempt: Attempt | None = None) -> str:
            return f"opt:{attempt is None}"

    class Inherited(WithAttempt):
        pass

    for _ in range(2):  # the second time from what was learnt of the class
        assert eng.call("L2", ModelOnly()) == f"one:{MINI}"
        assert eng.call("L2", WithAttempt()) == f"two:{MINI}:{MINI}"
        assert eng.call("L2", OptionalAttempt()) == "opt:True"
        assert eng.call("L2", Inherited()) == f"two:{MINI}:{MINI}"

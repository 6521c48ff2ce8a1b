from __future__ import annotations

import asyncio
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import NoModelAvailable, Outcome, PolicyEngine
from engine.calling import acall, backoff_delay, call, usage_tokens
from engine.events import Event, FallbackTriggered
from engine.policy.model import RetrySpec
from engine.testing import FakeClock

L2 = ["gpt-4.1-mini", "gemini-2.5-flash", "claude-haiku-4-5", "mistral-small-latest"]
L3 = ["claude-sonnet-4-5", "gpt-4.1", "gemini-2.5-pro"]
MINI, FLASH = L2[0], L2[1]
HALF = SimpleNamespace(random=lambda: 0.5)  # jitter source: full jitter halves the delay
FIRST_BACKOFF = 0.1  # the default policy's 0.2 s, halved by full jitter


# -- helpers -----------------------------------------------------------------------
class HTTPError(Exception):
    def __init__(self, status: int, retry_after: float | None = None, message: str = "") -> None:
        super().__init__(message or f"HTTP {status}")
        self.status_code = status
        if retry_after is not None:
            self.retry_after = retry_after


class Script:
    """A model client: records each model it is called with and plays ``steps`` in order."""

    def __init__(self, clock: FakeClock, *steps: Any, latency_s: float = 0.0) -> None:
        self.clock, self.steps, self.latency_s = clock, list(steps), latency_s
        self.called: list[str] = []

    def _step(self, model: str) -> Any:
        self.called.append(model)
        self.clock.advance(self.latency_s)
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    def __call__(self, model: str) -> Any:
        return self._step(model)

    async def run(self, model: str) -> Any:
        await asyncio.sleep(0)
        return self._step(model)


class Sleeper:
    """A sleep that advances the fake clock instead of waiting; keeps what was asked for."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.asked: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        self.clock.advance(seconds)

    async def run(self, seconds: float) -> None:
        self(seconds)
        await asyncio.sleep(0)


def spy(engine: PolicyEngine) -> list[tuple[str, Outcome]]:
    """Every ``record(decision, outcome)`` the call makes, as ``(model, outcome)``."""
    seen: list[tuple[str, Outcome]] = []
    real = engine.record

    def record(decision: Any, outcome: Outcome) -> None:
        seen.append((decision.model, outcome))
        real(decision, outcome)

    engine.record = record  # type: ignore[method-assign]
    return seen


def errors(seen: Iterable[tuple[str, Outcome]]) -> list[tuple[str, str | None]]:
    return [(model, o.error) for model, o in seen]


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def trip(engine: PolicyEngine, model: str) -> None:
    """Open ``model``'s breaker with ten timeouts now (the default breakers judge 10 calls)."""
    for _ in range(10):
        engine.record(engine.decide("L2", model=model), Outcome(1.0, error="timeout"))
    assert engine.state(model)["breaker"]["state"] == "open"


def in_flight(engine: PolicyEngine) -> dict[str, int]:
    return {m: engine.state(m)["in_flight"] for m in engine.policy.models if engine.state(m)["in_flight"]}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleeper(clock: FakeClock) -> Sleeper:
    return Sleeper(clock)


@pytest.fixture
def engine(clock: FakeClock) -> PolicyEngine:
    return PolicyEngine.from_path("policies", clock=clock)


@pytest.fixture
def make_engine(policy_dir: Path, clock: FakeClock) -> Callable[..., PolicyEngine]:
    """An engine on a copy of the default policies with ``retry`` settings and error classes edited."""

    def make(*, extra_classes: str = "", drop_overloaded: bool = False, drop_cancelled: bool = False,
             **retry: Any) -> PolicyEngine:
        routing = policy_dir / "routing.yaml"
        text = routing.read_text()
        for key, value in retry.items():
            text, n = re.subn(rf"^(  {key}:\s*)[^\s#]+", rf"\g<1>{json.dumps(value)}", text, flags=re.M)
            assert n == 1, key
        routing.write_text(text)
        errors_yaml = policy_dir / "errors.yaml"
        text = errors_yaml.read_text()
        if drop_cancelled:
            text = re.sub(r"^  cancelled:.*\n", "", text, flags=re.M)
        if drop_overloaded:
            text = text[: text.index("  overloaded:")]
        errors_yaml.write_text(text + extra_classes)
        return PolicyEngine.from_path(policy_dir, clock=clock)

    return make


# -- backoff_delay -----------------------------------------------------------------
SPEC = RetrySpec(initial_backoff_s=0.2, backoff_multiplier=2.0, max_backoff_s=5.0, jitter="none")


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    assert [backoff_delay(SPEC, n) for n in range(7)] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])


def test_backoff_cap_holds_for_huge_retry_numbers_and_zero_initial_stays_zero() -> None:
    assert backoff_delay(SPEC, 100_000) == 5.0
    zero = RetrySpec(initial_backoff_s=0.0, backoff_multiplier=10.0, max_backoff_s=5.0, jitter="none")
    assert backoff_delay(zero, 100_000) == 0.0


@pytest.mark.parametrize(("jitter", "r", "expected"), [
    ("full", 0.0, 0.0), ("full", 0.5, 0.4), ("full", 0.75, 0.6),
    ("equal", 0.0, 0.4), ("equal", 0.5, 0.6), ("equal", 0.75, 0.7),
])
def test_backoff_jitter_bounds(jitter: str, r: float, expected: float) -> None:
    spec = RetrySpec(initial_backoff_s=0.2, backoff_multiplier=2.0, max_backoff_s=5.0, jitter=jitter)  # type: ignore[arg-type]
    assert backoff_delay(spec, 2, SimpleNamespace(random=lambda: r)) == pytest.approx(expected)  # 0.8 s


def test_backoff_rejects_a_negative_retry_number() -> None:
    with pytest.raises(ValueError, match="retry_number >= 0"):
        backoff_delay(SPEC, -1)


@given(
    initial=st.floats(0.0, 60.0), multiplier=st.floats(1.0, 10.0), cap=st.floats(0.0, 300.0),
    n=st.integers(0, 60), seed=st.integers(0, 2**32),
)
def test_jittered_backoff_stays_within_its_band(initial: float, multiplier: float, cap: float, n: int,
                                                seed: int) -> None:
    d = min(initial * multiplier**n, cap)
    spec = RetrySpec(initial_backoff_s=initial, backoff_multiplier=multiplier, max_backoff_s=cap)
    full, equal = replace(spec, jitter="full"), replace(spec, jitter="equal")
    assert 0.0 <= backoff_delay(full, n, random.Random(seed)) <= d <= cap  # noqa: S311
    assert d / 2 <= backoff_delay(equal, n, random.Random(seed)) <= d  # noqa: S311


# -- usage_tokens ------------------------------------------------------------------
@pytest.mark.parametrize(("result", "expected"), [
    (SimpleNamespace(usage=SimpleNamespace(prompt_tokens=120, completion_tokens=31, total_tokens=151)),
     (120, 31)),
    (SimpleNamespace(usage=SimpleNamespace(input_tokens=7, output_tokens=3)), (7, 3)),
    ({"usage": {"prompt_tokens": 5, "completion_tokens": 2}}, (5, 2)),
    ({"usage": {"input_tokens": 9, "output_tokens": 4}}, (9, 4)),
    (SimpleNamespace(usage=SimpleNamespace(prompt_tokens=11, completion_tokens=None)), (11, 0)),
    (SimpleNamespace(usage=None), (0, 0)),
    (SimpleNamespace(usage=SimpleNamespace(prompt_tokens=-1, completion_tokens="2")), (0, 0)),
    ({"usage": {"input_tokens": 10**400, "output_tokens": 4}}, (0, 4)),  # no count the engine refuses
    ({"usage": {"input_tokens": 2**53, "output_tokens": 1e300}}, (0, 0)),
    ("plain text", (0, 0)),
    (None, (0, 0)),
])
def test_usage_tokens(result: Any, expected: tuple[int, int]) -> None:
    assert usage_tokens(result) == expected


# -- call: success -----------------------------------------------------------------
def test_success_on_first_try_records_latency_and_tokens(engine: PolicyEngine, clock: FakeClock,
                                                         sleeper: Sleeper) -> None:
    seen = spy(engine)
    reply = SimpleNamespace(usage=SimpleNamespace(prompt_tokens=1200, completion_tokens=310))
    fn = Script(clock, reply, latency_s=0.25)
    assert call(engine, "L2", fn, sleep=sleeper) is reply
    assert fn.called == [MINI]
    assert seen == [(MINI, Outcome(250.0, 1200, 310))]
    assert sleeper.asked == []
    metrics = engine.state(MINI)["metrics"]
    assert (metrics["calls"], metrics["tokens_in"], metrics["tokens_out"]) == (1, 1200, 310)
    assert in_flight(engine) == {}


def test_tokens_callback_replaces_usage_reading(engine: PolicyEngine, clock: FakeClock) -> None:
    seen = spy(engine)
    reply = SimpleNamespace(usage=SimpleNamespace(prompt_tokens=1, completion_tokens=1))
    assert call(engine, "L2", Script(clock, reply), tokens=lambda r: (40, 2)) is reply
    assert seen == [(MINI, Outcome(0.0, 40, 2))]


class Unreadable:
    @property
    def usage(self) -> Any:
        raise RuntimeError("lazy field failed")


def broken(result: Any) -> tuple[int, int]:
    raise KeyError("usage")


@pytest.mark.parametrize(("reply", "tokens"), [("ok", broken), (Unreadable(), None)])
def test_failing_token_reading_records_zero_and_keeps_the_result(engine: PolicyEngine, clock: FakeClock,
                                                                 reply: Any, tokens: Any) -> None:
    seen = spy(engine)
    assert call(engine, "L2", Script(clock, reply), tokens=tokens) is reply
    assert seen == [(MINI, Outcome(0.0, 0, 0))]
    assert in_flight(engine) == {}


def test_token_counts_the_engine_refuses_are_recorded_as_zero(engine: PolicyEngine, clock: FakeClock) -> None:
    seen = spy(engine)
    assert call(engine, "L2", Script(clock, "ok"), tokens=lambda r: (10**400, 2**53)) == "ok"
    assert seen == [(MINI, Outcome(0.0, 0, 0))]
    assert in_flight(engine) == {}


def test_a_retry_after_hint_too_large_for_a_float_is_no_hint(engine: PolicyEngine, clock: FakeClock,
                                                             sleeper: Sleeper) -> None:
    seen = spy(engine)
    fn = Script(clock, HTTPError(429, retry_after=10**400), "ok")  # type: ignore[arg-type]
    assert call(engine, "L2", fn, sleep=sleeper, rng=HALF) == "ok"
    huge = Script(clock, HTTPError(500), "ok")
    assert call(engine, "L2", huge, sleep=sleeper, rng=HALF, classifier=lambda exc: ("rate_limit", 10**400)) == "ok"
    assert errors(seen) == [(MINI, "rate_limit"), (MINI, None)] * 2
    assert [o.retry_after_s for _, o in seen] == [None] * 4
    assert in_flight(engine) == {}


def test_estimated_tokens_reach_every_decision(engine: PolicyEngine, clock: FakeClock,
                                               sleeper: Sleeper) -> None:
    estimates: list[int | None] = []
    real = engine.record
    engine.record = lambda d, o: (estimates.append(d.estimated_tokens), real(d, o))[1]  # type: ignore[method-assign]
    call(engine, "L2", Script(clock, TimeoutError(), "ok"), estimated_tokens=1800, sleep=sleeper, rng=HALF)
    assert estimates == [1800, 1800]


# -- call: retries and fallbacks ---------------------------------------------------
def test_rate_limit_waits_its_retry_after_then_succeeds_on_the_same_model(
        engine: PolicyEngine, clock: FakeClock, sleeper: Sleeper) -> None:
    seen = spy(engine)
    fn = Script(clock, HTTPError(429, retry_after=3), "ok")
    assert call(engine, "L2", fn, sleep=sleeper, rng=HALF) == "ok"
    assert fn.called == [MINI, MINI]
    assert sleeper.asked == [3.0]
    assert seen == [(MINI, Outcome(0.0, error="rate_limit", retry_after_s=3.0)), (MINI, Outcome(0.0))]


def test_retry_after_is_capped_at_max_retry_after_s(engine: PolicyEngine, clock: FakeClock,
                                                    sleeper: Sleeper) -> None:
    call(engine, "L2", Script(clock, HTTPError(429, retry_after=3600), "ok"), sleep=sleeper, rng=HALF)
    assert sleeper.asked == [30.0]


def test_a_short_retry_after_never_shortens_the_backoff(engine: PolicyEngine, clock: FakeClock,
                                                        sleeper: Sleeper) -> None:
    call(engine, "L2", Script(clock, HTTPError(429, retry_after=0.01), "ok"), sleep=sleeper, rng=HALF)
    assert sleeper.asked == [FIRST_BACKOFF]


def test_retry_after_ignored_when_the_policy_says_so(make_engine: Callable[..., PolicyEngine],
                                                     clock: FakeClock, sleeper: Sleeper) -> None:
    engine = make_engine(honour_retry_after=False)
    call(engine, "L2", Script(clock, HTTPError(429, retry_after=3), "ok"), sleep=sleeper, rng=HALF)
    assert sleeper.asked == [FIRST_BACKOFF]


def test_timeout_retried_on_the_same_model_then_falls_back(engine: PolicyEngine, clock: FakeClock,
                                                           sleeper: Sleeper) -> None:
    seen = spy(engine)
    events: list[Event] = []
    engine.subscribe(events.append)
    fn = Script(clock, TimeoutError(), TimeoutError(), "ok")
    assert call(engine, "L2", fn, sleep=sleeper, rng=HALF) == "ok"
    assert fn.called == [MINI, MINI, FLASH]
    assert sleeper.asked == [FIRST_BACKOFF]
    assert errors(seen) == [(MINI, "timeout"), (MINI, "timeout"), (FLASH, None)]
    fallbacks = [e for e in events if isinstance(e, FallbackTriggered)]
    assert fallbacks == [FallbackTriggered(clock(), "L2", MINI, FLASH, "L2", "timeout")]


def test_backoff_grows_per_retry_of_one_model(make_engine: Callable[..., PolicyEngine], clock: FakeClock,
                                              sleeper: Sleeper) -> None:
    engine = make_engine(same_model_retries=3, max_attempts=10, jitter="none")
    fn = Script(clock, TimeoutError(), TimeoutError(), TimeoutError(), TimeoutError(), "ok")
    assert call(engine, "L2", fn, sleep=sleeper) == "ok"
    assert fn.called == [MINI, MINI, MINI, MINI, FLASH]
    assert sleeper.asked == pytest.approx([0.2, 0.4, 0.8])


def test_auth_error_is_not_retried_but_falls_back(engine: PolicyEngine, clock: FakeClock,
                                                  sleeper: Sleeper) -> None:
    seen = spy(engine)
    fn = Script(clock, HTTPError(401), "ok")
    assert call(engine, "L2", fn, sleep=sleeper, rng=HALF) == "ok"
    assert fn.called == [MINI, FLASH]
    assert sleeper.asked == []
    assert errors(seen) == [(MINI, "auth"), (FLASH, None)]


@pytest.mark.parametrize(("exc", "cls"), [
    (HTTPError(400, message="request flagged by content_policy"), "bad_request"),
    (ValueError("blocked by the content filter"), "content_policy"),
])
def test_content_policy_and_bad_request_raise_at_once_without_fallback(
        engine: PolicyEngine, clock: FakeClock, sleeper: Sleeper, exc: Exception, cls: str) -> None:
    seen = spy(engine)
    fn = Script(clock, exc, "never")
    with pytest.raises(type(exc)) as info:
        call(engine, "L2", fn, sleep=sleeper, rng=HALF)
    assert info.value is exc
    assert fn.called == [MINI]
    assert sleeper.asked == []
    assert errors(seen) == [(MINI, cls)]


def test_context_window_moves_only_to_a_larger_context_model(engine: PolicyEngine, clock: FakeClock,
                                                             sleeper: Sleeper) -> None:
    # L4: gpt-5 (400k), claude-opus-4-1 (200k), o3 (200k), then L3: claude-sonnet-4-5 (200k), gpt-4.1 (1M)
    seen = spy(engine)
    fn = Script(clock, ValueError("This model's maximum context length is 400000 tokens"), "ok")
    assert call(engine, "L4", fn, sleep=sleeper, rng=HALF) == "ok"
    assert fn.called == ["gpt-5", "gpt-4.1"]
    assert errors(seen) == [("gpt-5", "context_window"), ("gpt-4.1", None)]
    assert sleeper.asked == []


def test_context_window_with_no_larger_model_raises_no_model_available(engine: PolicyEngine,
                                                                       clock: FakeClock) -> None:
    # gpt-4.1-mini (1047576) → gemini-2.5-flash (1048576) → nothing larger anywhere in L2/L3
    second = ValueError("context_length_exceeded")
    fn = Script(clock, ValueError("context_length_exceeded"), second)
    with pytest.raises(NoModelAvailable) as info:
        call(engine, "L2", fn, sleep=Sleeper(clock))
    assert fn.called == [MINI, FLASH]
    assert info.value.__cause__ is second
    reasons = dict(info.value.candidates)
    assert reasons["gemini-2.5-pro"] == "context window 1048576 is not larger than 1048576"


def test_max_attempts_reached_reraises_the_last_exception(engine: PolicyEngine, clock: FakeClock,
                                                          sleeper: Sleeper) -> None:
    seen = spy(engine)
    failures = [TimeoutError(f"attempt {i}") for i in range(6)]
    fn = Script(clock, *failures)
    with pytest.raises(TimeoutError) as info:
        call(engine, "L2", fn, sleep=sleeper, rng=HALF)
    assert info.value is failures[3]
    assert fn.called == [MINI, MINI, FLASH, FLASH]
    assert sleeper.asked == [FIRST_BACKOFF, FIRST_BACKOFF]
    assert errors(seen) == [(MINI, "timeout")] * 2 + [(FLASH, "timeout")] * 2


def test_one_attempt_means_no_retry_and_no_fallback(make_engine: Callable[..., PolicyEngine],
                                                    clock: FakeClock, sleeper: Sleeper) -> None:
    engine = make_engine(max_attempts=1)
    boom = TimeoutError()
    fn = Script(clock, boom, "never")
    with pytest.raises(TimeoutError) as info:
        call(engine, "L2", fn, sleep=sleeper)
    assert info.value is boom and fn.called == [MINI] and sleeper.asked == []


def test_a_retry_the_breaker_refuses_moves_on_to_the_next_candidate(engine: PolicyEngine, clock: FakeClock,
                                                                    sleeper: Sleeper) -> None:
    for _ in range(9):  # one more failure opens gpt-4.1-mini
        engine.record(engine.decide("L2"), Outcome(1.0, error="timeout"))
    seen = spy(engine)
    fn = Script(clock, TimeoutError(), "ok")
    assert call(engine, "L2", fn, sleep=sleeper, rng=HALF) == "ok"
    assert fn.called == [MINI, FLASH]
    assert sleeper.asked == [FIRST_BACKOFF]
    assert errors(seen) == [(MINI, "timeout"), (FLASH, None)]
    assert engine.state(MINI)["breaker"]["state"] == "open"


def test_unknown_tier_raises_before_calling(engine: PolicyEngine, clock: FakeClock) -> None:
    fn = Script(clock, "never")
    with pytest.raises(KeyError, match="unknown tier"):
        call(engine, "L9", fn)
    assert fn.called == []


# -- call: nothing available ---------------------------------------------------------
def test_no_model_available_waits_for_the_earliest_recovery(engine: PolicyEngine, clock: FakeClock,
                                                            sleeper: Sleeper) -> None:
    for m in L2 + L3:
        trip(engine, m)  # all open until t0 + 30
    clock.advance(28.5)
    fn = Script(clock, "ok")
    assert call(engine, "L2", fn, sleep=sleeper) == "ok"
    assert sleeper.asked == [1.5]
    assert fn.called == [MINI]  # the first half-open probe


def test_no_model_available_fails_fast_beyond_max_wait(engine: PolicyEngine, clock: FakeClock,
                                                       sleeper: Sleeper) -> None:
    t0 = clock()
    for m in L2 + L3:
        trip(engine, m)
    clock.advance(27.0)  # recovery 3 s away, max_wait_s is 2
    fn = Script(clock, "never")
    with pytest.raises(NoModelAvailable) as info:
        call(engine, "L2", fn, sleep=sleeper)
    assert info.value.retry_at == t0 + 30
    assert info.value.__cause__ is None
    assert sleeper.asked == [] and fn.called == []


def test_no_wait_when_max_wait_is_zero(make_engine: Callable[..., PolicyEngine], clock: FakeClock,
                                       sleeper: Sleeper) -> None:
    engine = make_engine(max_wait_s=0)
    for m in L2 + L3:
        trip(engine, m)
    clock.advance(29.5)
    with pytest.raises(NoModelAvailable):
        call(engine, "L2", Script(clock, "never"), sleep=sleeper)
    assert sleeper.asked == []


def test_forced_open_models_never_recover_by_themselves(engine: PolicyEngine, clock: FakeClock,
                                                        sleeper: Sleeper) -> None:
    for m in L2 + L3:
        engine.force(m, "open")
    with pytest.raises(NoModelAvailable) as info:
        call(engine, "L2", Script(clock, "never"), sleep=sleeper)
    assert info.value.retry_at is None and sleeper.asked == []


@pytest.mark.parametrize(("max_wait_s", "waits", "called"), [
    (2.0, [1.5], [MINI]),  # the second wait (1 s) is more than the 0.5 s left
    (3.0, [1.5, 1.0], [MINI, FLASH]),
])
def test_the_wait_budget_is_a_total_per_call(make_engine: Callable[..., PolicyEngine], clock: FakeClock,
                                             sleeper: Sleeper, max_wait_s: float, waits: list[float],
                                             called: list[str]) -> None:
    engine = make_engine(max_wait_s=max_wait_s)
    trip(engine, MINI)  # open until t0 + 30
    clock.advance(1.0)
    for m in L2[1:] + L3:
        trip(engine, m)  # open until t0 + 31
    clock.advance(27.5)
    denied = HTTPError(401)
    fn = Script(clock, denied, "ok")
    if called == [MINI]:
        with pytest.raises(NoModelAvailable) as info:
            call(engine, "L2", fn, sleep=sleeper)
        assert info.value.__cause__ is denied
    else:
        assert call(engine, "L2", fn, sleep=sleeper) == "ok"
    assert sleeper.asked == pytest.approx(waits)
    assert fn.called == called


# -- call: abandoned calls and classifiers ---------------------------------------------
def test_keyboard_interrupt_still_records_the_decision(engine: PolicyEngine, clock: FakeClock) -> None:
    seen = spy(engine)
    fn = Script(clock, KeyboardInterrupt(), "never", latency_s=0.5)
    with pytest.raises(KeyboardInterrupt):
        call(engine, "L2", fn)
    assert fn.called == [MINI]
    assert seen == [(MINI, Outcome(500.0, error="cancelled"))]  # the default policies define it
    assert in_flight(engine) == {}
    assert engine.state(MINI)["breaker"]["failures"] == 0


def test_an_abandoned_call_is_bad_request_when_the_policy_has_no_cancelled_class(
        make_engine: Callable[..., PolicyEngine], clock: FakeClock) -> None:
    engine = make_engine(drop_cancelled=True)
    seen = spy(engine)
    with pytest.raises(SystemExit):
        call(engine, "L2", Script(clock, SystemExit(3)))
    assert errors(seen) == [(MINI, "bad_request")]


def test_an_interrupted_half_open_probe_gives_its_permit_back(engine: PolicyEngine, clock: FakeClock) -> None:
    trip(engine, MINI)
    clock.advance(30.0)
    with pytest.raises(KeyboardInterrupt):
        call(engine, "L2", Script(clock, KeyboardInterrupt()))
    breaker = engine.state(MINI)["breaker"]
    assert (breaker["state"], breaker["probes_in_flight"]) == ("half_open", 0)
    probes = [engine.decide("L2", model=MINI) for _ in range(3)]  # all three permits are free again
    assert [d.model for d in probes] == [MINI] * 3
    with pytest.raises(NoModelAvailable):
        engine.decide("L2", model=MINI)


def test_sync_call_refuses_a_coroutine_function(engine: PolicyEngine) -> None:
    seen = spy(engine)

    async def client(model: str) -> str:
        return model

    with pytest.raises(TypeError, match="use acall"):
        call(engine, "L2", client)
    assert errors(seen) == [(MINI, "cancelled")]  # recorded as an abandoned call
    assert in_flight(engine) == {}


def test_classifier_is_replaceable(engine: PolicyEngine, clock: FakeClock, sleeper: Sleeper) -> None:
    seen = spy(engine)
    asked: list[BaseException] = []
    boom = ValueError("provider said no")

    def classifier(exc: BaseException) -> tuple[str, float | None]:
        asked.append(exc)
        return "auth", None

    fn = Script(clock, boom, "ok")
    assert call(engine, "L2", fn, classifier=classifier, sleep=sleeper) == "ok"
    assert asked == [boom]
    assert fn.called == [MINI, FLASH] and sleeper.asked == []
    assert errors(seen) == [(MINI, "auth"), (FLASH, None)]


@pytest.mark.parametrize("classifier", [
    lambda exc: ("no_such_class", None),
    lambda exc: (42, None),
    lambda exc: 1 / 0,
    lambda exc: ("timeout", -3.0),  # a nonsense hint is dropped, the class kept
])
def test_a_broken_classifier_never_loses_the_record(engine: PolicyEngine, clock: FakeClock,
                                                    sleeper: Sleeper, classifier: Any) -> None:
    seen = spy(engine)
    assert call(engine, "L2", Script(clock, ValueError("x"), "ok"), classifier=classifier, sleep=sleeper,
                rng=HALF) == "ok"
    assert seen[0][1].error in ("server_error", "timeout")
    assert seen[0][1].retry_after_s is None
    assert in_flight(engine) == {}


def test_overloaded_is_recorded_as_server_error_when_the_policy_lacks_it(
        make_engine: Callable[..., PolicyEngine], clock: FakeClock, sleeper: Sleeper) -> None:
    without = make_engine(drop_overloaded=True)
    assert "overloaded" not in without.policy.error_classes
    seen = spy(without)
    call(without, "L2", Script(clock, HTTPError(529), "ok"), sleep=sleeper, rng=HALF)
    assert errors(seen) == [(MINI, "server_error"), (MINI, None)]


def test_overloaded_is_recorded_as_such_by_the_default_policy(engine: PolicyEngine, clock: FakeClock,
                                                              sleeper: Sleeper) -> None:
    seen = spy(engine)
    call(engine, "L2", Script(clock, HTTPError(529), "ok"), sleep=sleeper, rng=HALF)
    assert errors(seen) == [(MINI, "overloaded"), (MINI, None)]


# -- acall -----------------------------------------------------------------------------
def test_acall_retries_and_falls_back_like_call(engine: PolicyEngine, clock: FakeClock,
                                                sleeper: Sleeper) -> None:
    seen = spy(engine)
    reply = {"usage": {"input_tokens": 8, "output_tokens": 2}}
    fn = Script(clock, HTTPError(429, retry_after=1.5), TimeoutError(), reply, latency_s=0.125)
    assert asyncio.run(acall(engine, "L2", fn.run, sleep=sleeper.run, rng=HALF)) is reply
    assert fn.called == [MINI, MINI, FLASH]
    assert sleeper.asked == [1.5]
    assert seen == [(MINI, Outcome(125.0, error="rate_limit", retry_after_s=1.5)),
                    (MINI, Outcome(125.0, error="timeout")), (FLASH, Outcome(125.0, 8, 2))]


def test_acall_waits_for_recovery_with_the_async_sleep(engine: PolicyEngine, clock: FakeClock,
                                                       sleeper: Sleeper) -> None:
    for m in L2 + L3:
        trip(engine, m)
    clock.advance(29.0)
    fn = Script(clock, "ok")
    assert asyncio.run(acall(engine, "L2", fn.run, sleep=sleeper.run)) == "ok"
    assert sleeper.asked == [1.0] and fn.called == [MINI]


def test_acall_records_a_cancelled_task(engine: PolicyEngine) -> None:
    seen = spy(engine)
    started = asyncio.Event()

    async def hang(model: str) -> str:
        started.set()
        await asyncio.Event().wait()
        return model

    async def main() -> None:
        task = asyncio.ensure_future(acall(engine, "L2", hang))
        await started.wait()
        assert in_flight(engine) == {MINI: 1}
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert errors(seen) == [(MINI, "cancelled")]
    assert in_flight(engine) == {}


def test_acall_refuses_a_function_that_returns_no_awaitable(engine: PolicyEngine) -> None:
    seen = spy(engine)
    with pytest.raises(TypeError, match="not an awaitable"):
        asyncio.run(acall(engine, "L2", lambda model: "sync result"))
    assert errors(seen) == [(MINI, "cancelled")]  # recorded as an abandoned call
    assert in_flight(engine) == {}


def test_fifty_concurrent_acalls_settle_every_decision(engine: PolicyEngine, clock: FakeClock,
                                                       sleeper: Sleeper) -> None:
    called: list[str] = []
    peak = 0

    async def client(i: int, model: str) -> Any:
        nonlocal peak
        called.append(model)
        peak = max(peak, engine.state(model)["in_flight"])
        await asyncio.sleep(0)
        if i % 2 == 0:
            raise HTTPError(400)  # half the calls fail for good: bad_request does not fall back
        if i % 10 == 1 and i not in timed_out:
            timed_out.add(i)
            raise TimeoutError()  # five calls time out once, then succeed on the retry
        return SimpleNamespace(usage=SimpleNamespace(prompt_tokens=10, completion_tokens=2))

    timed_out: set[int] = set()

    async def main() -> list[Any]:
        calls = [acall(engine, "L2", lambda m, i=i: client(i, m), sleep=sleeper.run, rng=HALF)
                 for i in range(50)]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 25 and all(isinstance(r, HTTPError) for r in failed)
    assert sum(1 for r in results if isinstance(r, SimpleNamespace)) == 25
    assert peak > 1  # the calls really overlapped
    assert in_flight(engine) == {}
    per_model = Counter(called)
    assert per_model == Counter({MINI: 55})  # 50 first attempts + 5 same-model retries
    for m in engine.policy.models:
        metrics = engine.state(m)["metrics"]
        assert metrics["calls"] == per_model[m], m
    metrics = engine.state(MINI)["metrics"]
    assert (metrics["successes"], metrics["errors_bad_request"], metrics["errors_timeout"]) == (25, 25, 5)
    assert (metrics["tokens_in"], metrics["tokens_out"]) == (250, 50)
    assert sleeper.asked == [FIRST_BACKOFF] * 5

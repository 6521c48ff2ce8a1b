"""Deployments (a policy name distinct from the API model id) and errors.yaml ``match`` rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine import ModelTakenOut, Outcome, PolicyEngine, PolicyError
from engine.classify import error_fields, match_error
from engine.events import Event
from engine.testing import FakeClock

MINI, FLASH = "gpt-4.1-mini", "gemini-2.5-flash"


class APIError(Exception):
    """Shaped like the SDKs' APIStatusError: status_code, code/type and a JSON body."""

    def __init__(self, status: int, message: str, *, code: str | None = None, type: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status_code = status
        self.code, self.type = code, type
        self.body: dict[str, Any] = {"error": {"message": message, "code": code, "type": type}}
        if retry_after is not None:
            self.retry_after = retry_after


def engine_for(path: Path, clock: FakeClock) -> tuple[PolicyEngine, list[Event]]:
    eng = PolicyEngine.from_path(path, clock=clock)
    events: list[Event] = []
    eng.subscribe(events.append)
    return eng, events


def deployments(policy_dir: Path) -> Path:
    (policy_dir / "deployments.yaml").write_text(
        "kind: models\nversion: 1\nmodels:\n"
        "  mini-eu:\n    api_model: gpt-4.1-mini\n    tier: L2\n    provider: azure-eu\n"
        "    context_window: 1047576\n    price: {input_per_1m: 0.40, output_per_1m: 1.60}\n")
    routing = policy_dir / "routing.yaml"
    routing.write_text(routing.read_text().replace("candidates: [gpt-4.1-mini,", "candidates: [gpt-4.1-mini, mini-eu,"))
    return policy_dir


def test_two_deployments_of_one_api_model_are_two_candidates_with_their_own_breakers(policy_dir: Path) -> None:
    clock = FakeClock()
    eng, _ = engine_for(deployments(policy_dir), clock)
    assert eng.policy.models["mini-eu"].api_id == "gpt-4.1-mini"
    assert eng.policy.models[MINI].api_id == MINI  # no api_model: the name is the id
    eng.force(MINI, "open")
    seen: list[str] = []
    result = eng.call("L2", lambda m: seen.append(m) or {"usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    assert seen == ["mini-eu"] and result["usage"]["prompt_tokens"] == 3
    assert eng.state("mini-eu")["breaker"]["state"] == "closed"
    assert eng.state(MINI)["breaker"]["state"] == "forced_open"


def test_error_fields_read_openai_and_anthropic_shapes() -> None:
    openai_like = APIError(429, "You exceeded your current quota", code="insufficient_quota", type="insufficient_quota")
    assert error_fields(openai_like) == (429, frozenset({"insufficient_quota"}), "you exceeded your current quota "
                                         "you exceeded your current quota")
    anthropic = Exception("Error code: 400")
    anthropic.status_code = 400  # type: ignore[attr-defined]
    anthropic.body = {"type": "error", "error": {"type": "invalid_request_error",  # type: ignore[attr-defined]
                                                 "message": "Your credit balance is too low"}}
    status, codes, text = error_fields(anthropic)
    assert (status, codes) == (400, frozenset({"error", "invalid_request_error"}))
    assert "credit balance is too low" in text


@pytest.mark.parametrize(("exc", "expected"), [
    (APIError(404, "The model `gpt-9` does not exist", code="model_not_found"), "model_not_found"),
    (APIError(404, "model: claude-2", type="not_found_error"), "model_not_found"),
    (APIError(429, "quota", code="insufficient_quota"), "quota_exhausted"),
    (APIError(400, "Your credit balance is too low to access the Anthropic API.", type="invalid_request_error"),
     "quota_exhausted"),
    (APIError(400, "too long", code="context_length_exceeded"), "context_window"),
    (APIError(429, "Rate limit reached", code="rate_limit_exceeded"), None),  # left to the classifier
    (APIError(500, "boom"), None),
])
def test_shipped_rules_name_the_class(policy_dir: Path, exc: Exception, expected: str | None) -> None:
    eng = PolicyEngine.from_path(policy_dir, clock=FakeClock())
    assert match_error(eng.policy.error_matches, exc) == expected


def test_a_retired_model_falls_back_and_is_taken_out_until_a_cool_down(policy_dir: Path) -> None:
    clock = FakeClock()
    eng, events = engine_for(policy_dir, clock)
    seen: list[str] = []

    def fn(model: str) -> str:
        seen.append(model)
        if model == MINI:
            raise APIError(404, "The model `gpt-4.1-mini` does not exist", code="model_not_found")
        return "ok"

    assert eng.call("L2", fn, sleep=clock.advance) == "ok"
    assert seen == [MINI, FLASH]  # not retried, fallen back
    taken = [e for e in events if isinstance(e, ModelTakenOut)]
    assert taken == [ModelTakenOut(clock.now, MINI, "model_not_found", clock.now + 600)]
    d = eng.decide("L2")
    assert d.model == FLASH and d.reasons == ((MINI, f"taken out of rotation until t={clock.now + 600:.3f}"),)
    assert eng.state(MINI)["taken_out_until"] == clock.now + 600
    eng.record(d, Outcome(1.0))
    assert eng.state(MINI)["breaker"]["state"] == "closed"  # ignored by the breaker: it is not sick
    clock.advance(600)
    assert eng.state(MINI)["taken_out_until"] is None
    d = eng.decide("L2")
    assert d.model == MINI
    eng.record(d, Outcome(1.0))


def test_a_reload_puts_a_taken_out_model_back(policy_dir: Path) -> None:
    clock = FakeClock()
    eng, _ = engine_for(policy_dir, clock)
    d = eng.decide("L2")
    eng.record(d, Outcome(5.0, error="model_not_found"))
    assert eng.decide("L2", estimated_tokens=None).model == FLASH
    (policy_dir / "models.yaml").write_text((policy_dir / "models.yaml").read_text() + "\n")
    eng.reload()
    assert eng.decide("L2").model == MINI


@pytest.mark.parametrize("exc", [
    APIError(429, "You exceeded your current quota", code="insufficient_quota", retry_after=1),
    APIError(400, "Your credit balance is too low to access the Anthropic API.", type="invalid_request_error"),
])
def test_exhausted_credit_is_not_retried_and_falls_back(policy_dir: Path, exc: Exception) -> None:
    clock = FakeClock()
    eng, _ = engine_for(policy_dir, clock)
    seen: list[str] = []

    def fn(model: str) -> str:
        seen.append(model)
        if model == MINI:
            raise exc
        return "ok"

    start = clock.now
    assert eng.call("L2", fn, sleep=clock.advance) == "ok"
    assert seen == [MINI, FLASH] and clock.now == start  # no wait, no second try of the same model
    assert eng.state(MINI)["metrics"]["errors_quota_exhausted"] == 1


def test_a_plain_rate_limit_is_still_retried_after_its_retry_after(policy_dir: Path) -> None:
    clock = FakeClock()
    eng, _ = engine_for(policy_dir, clock)
    steps: list[Any] = [APIError(429, "Rate limit reached", code="rate_limit_exceeded", retry_after=1.5), "ok"]
    seen: list[str] = []

    def fn(model: str) -> Any:
        seen.append(model)
        step = steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    start = clock.now
    assert eng.call("L2", fn, sleep=clock.advance) == "ok"
    assert seen == [MINI, MINI] and clock.now - start == pytest.approx(1.5)


def test_a_rule_naming_an_unknown_class_is_a_located_problem(policy_dir: Path) -> None:
    errors = policy_dir / "errors.yaml"
    text = errors.read_text().replace("{status: 404, class: model_not_found,", "{status: 404, class: model_not_fund,")
    errors.write_text(text)
    line = text.splitlines().index(next(x for x in text.splitlines() if "model_not_fund" in x)) + 1
    with pytest.raises(PolicyError) as info:
        PolicyEngine.from_path(policy_dir)
    [problem] = info.value.problems
    assert (Path(problem.file).name, problem.line, problem.code) == ("errors.yaml", line, "unknown-error-class")
    assert problem.message == "unknown error-class 'model_not_fund' (did you mean 'model_not_found'?)"


def test_a_rule_without_a_condition_is_a_schema_problem(policy_dir: Path) -> None:
    errors = policy_dir / "errors.yaml"
    errors.write_text(errors.read_text() + "  - {class: server_error}\n")
    line = len(errors.read_text().splitlines())
    with pytest.raises(PolicyError) as info:
        PolicyEngine.from_path(policy_dir)
    assert [(Path(p.file).name, p.line, p.code) for p in info.value.problems] == [
        ("errors.yaml", line, "schema-violation")]


def test_ttft_is_its_own_metric_and_the_slow_rule_may_judge_it(policy_dir: Path) -> None:
    models = policy_dir / "models.yaml"
    models.write_text(models.read_text().replace(
        "    max_in_flight: 128\n  gemini-2.5-flash:", "    max_in_flight: 128\n    slow_call_on: ttft\n"
        "  gemini-2.5-flash:", 1))
    clock = FakeClock()
    eng, _ = engine_for(policy_dir, clock)
    for ttft in (100.0, 200.0, 300.0):
        d = eng.decide("L2")
        eng.record(d, Outcome(90_000.0, 5, 50, ttft_ms=ttft))  # 90 s in all, but the first token came fast
    state = eng.state(MINI)
    assert state["ttft"]["calls"] == 3 and 180 <= state["ttft"]["p50_ms"] <= 220
    assert state["ttft"]["by_tier"]["L2"]["calls"] == 3
    assert state["metrics"]["slow_calls"] == 0  # judged on time to first token
    assert eng.state(FLASH)["ttft"]["calls"] == 0


def test_an_outcome_with_more_cached_than_input_tokens_is_refused(policy_dir: Path) -> None:
    eng = PolicyEngine.from_path(policy_dir, clock=FakeClock())
    d = eng.decide("L2")
    with pytest.raises(ValueError, match="cached_input_tokens must be at most input_tokens, got 5 > 4"):
        eng.record(d, Outcome(1.0, 4, 1, cached_input_tokens=5))
    eng.record(d, Outcome(1.0, 4, 1, cached_input_tokens=4))


def test_call_never_tries_an_excluded_model(policy_dir: Path) -> None:
    eng = PolicyEngine.from_path(policy_dir, clock=FakeClock())
    seen: list[str] = []
    assert eng.call("L2", lambda m: seen.append(m) or "ok", exclude={MINI}) == "ok"
    assert seen == [FLASH]

"""OpenTelemetry spans of eng.call / eng.acall, checked with the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from engine import NoModelAvailable, PolicyEngine
from engine.observe.otel import Instrumentation, instrument
from engine.testing import FakeClock
from tests.conftest import POLICIES


class Unavailable(Exception):
    status_code = 503


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def eng() -> PolicyEngine:
    return PolicyEngine.from_path(POLICIES, clock=FakeClock())


@pytest.fixture
def traced(eng: PolicyEngine, exporter: InMemorySpanExporter) -> Iterator[Instrumentation]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    handle = instrument(eng, tracer_provider=provider)
    yield handle
    handle.uninstrument()


def _usage(model: str) -> dict[str, Any]:
    return {"model": model, "usage": {"prompt_tokens": 120, "completion_tokens": 30}}


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


def test_a_call_is_a_span_with_one_child_per_attempt(eng: PolicyEngine, traced: Instrumentation,
                                                     exporter: InMemorySpanExporter) -> None:
    result = eng.call("L2", _usage)
    assert result["model"] == "gpt-4.1-mini"
    spans = _by_name(exporter.get_finished_spans())
    call, attempt = spans["llm_policy.call L2"], spans["chat gpt-4.1-mini"]
    assert attempt.parent is not None and attempt.parent.span_id == call.context.span_id
    assert attempt.kind == SpanKind.CLIENT and call.kind == SpanKind.INTERNAL
    assert dict(attempt.attributes or {}) == {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4.1-mini", "gen_ai.provider.name": "openai",
        "gen_ai.usage.input_tokens": 120, "gen_ai.usage.output_tokens": 30, "llm_policy.tier": "L2",
        "llm_policy.model_tier": "L2", "llm_policy.attempt": 1, "llm_policy.fallback": False}
    assert (call.attributes or {})["llm_policy.model"] == "gpt-4.1-mini"
    assert (call.attributes or {})["llm_policy.attempts"] == 1


def test_a_failed_attempt_and_its_fallback(eng: PolicyEngine, traced: Instrumentation,
                                           exporter: InMemorySpanExporter) -> None:
    eng.force("gpt-4.1-mini", "open")

    def fn(model: str) -> dict[str, Any]:
        if model == "gemini-2.5-flash":
            raise Unavailable("overloaded")
        return _usage(model)

    eng.call("L2", fn, sleep=lambda s: None)
    spans = exporter.get_finished_spans()
    attempts = [s for s in spans if s.name.startswith("chat ")]
    assert [s.name for s in attempts][-1] == "chat claude-haiku-4-5"
    first = attempts[0]
    assert first.name == "chat gemini-2.5-flash" and first.status.status_code == StatusCode.ERROR
    assert (first.attributes or {})["error.type"] == "server_error"
    assert (first.attributes or {})["llm_policy.fallback"] is True
    assert tuple((first.attributes or {})["llm_policy.reasons"]) == ("gpt-4.1-mini: breaker forced_open",)
    assert "exception" in [e.name for e in first.events]
    call = _by_name(spans)["llm_policy.call L2"]
    fell = [e for e in call.events if e.name == "FallbackTriggered"]
    assert fell and (fell[0].attributes or {})["llm_policy.from_model"] == "gpt-4.1-mini"
    assert (call.attributes or {})["llm_policy.model"] == "claude-haiku-4-5"


def test_breaker_transitions_become_span_events(eng: PolicyEngine, traced: Instrumentation,
                                                exporter: InMemorySpanExporter) -> None:
    def fn(model: str) -> dict[str, Any]:
        raise Unavailable("down")

    for _ in range(6):
        with pytest.raises((Unavailable, NoModelAvailable)):
            eng.call("L1", fn, sleep=lambda s: None)
    names = [e.name for s in exporter.get_finished_spans() for e in s.events]
    assert "CircuitOpened" in names
    opened = next(e for s in exporter.get_finished_spans() for e in s.events if e.name == "CircuitOpened")
    assert (opened.attributes or {})["llm_policy.time"].startswith("2026-01-01T")


def test_a_refused_call_is_an_error_span(eng: PolicyEngine, traced: Instrumentation,
                                         exporter: InMemorySpanExporter) -> None:
    for m in eng.policy.models:
        eng.force(m, "open")
    with pytest.raises(NoModelAvailable):
        eng.call("L1", _usage)
    (call,) = exporter.get_finished_spans()
    assert call.status.status_code == StatusCode.ERROR
    assert (call.attributes or {})["error.type"] == "NoModelAvailable"
    assert call.events[0].name == "RequestRefused"


def test_acall_is_traced_the_same_way(eng: PolicyEngine, traced: Instrumentation,
                                      exporter: InMemorySpanExporter) -> None:
    async def fn(model: str) -> dict[str, Any]:
        return _usage(model)

    asyncio.run(eng.acall("L3", fn))
    names = [s.name for s in exporter.get_finished_spans()]
    assert names[-1] == "llm_policy.call L3" and names[0].startswith("chat ")


def test_uninstrument_puts_the_engine_back(eng: PolicyEngine, exporter: InMemorySpanExporter) -> None:
    handle = instrument(eng, tracer_provider=TracerProvider())
    assert "call" in eng.__dict__
    handle.uninstrument()
    assert "call" not in eng.__dict__ and "acall" not in eng.__dict__
    assert eng.call("L1", _usage)["model"] == "gpt-4.1-nano"

"""OpenTelemetry tracing of ``eng.call`` / ``eng.acall``: a span per call, a child span per attempt.

Needs ``opentelemetry-api`` (extra ``[otel]``); bring your own SDK and
exporter. ``instrument(eng)`` wraps the engine's ``call`` and ``acall`` (the
decide/record hot path is not touched) and returns a handle whose
``uninstrument()`` puts them back.

Spans follow the OpenTelemetry GenAI semantic conventions:

- the call: ``llm_policy.call {tier}`` (INTERNAL) with ``llm_policy.tier``,
  ``llm_policy.attempts``, ``llm_policy.model`` (the model that answered),
  ``llm_policy.fallback`` and ``error.type`` when it failed;
- each attempt: ``{operation} {model}`` (CLIENT) with ``gen_ai.operation.name``,
  ``gen_ai.request.model``, ``gen_ai.provider.name``,
  ``gen_ai.usage.input_tokens`` / ``gen_ai.usage.output_tokens`` (read like
  ``call`` reads them), ``error.type`` (the engine's error class) on failure,
  and the engine's own ``llm_policy.tier``, ``llm_policy.model_tier``,
  ``llm_policy.attempt``, ``llm_policy.fallback`` and ``llm_policy.reasons``
  (why each better candidate was skipped);
- breaker transitions, fallbacks, budget events and refused requests become
  span events on the span current when the engine emits them.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.events import Event, FallbackTriggered

if TYPE_CHECKING:
    from engine.core import PolicyEngine

SCOPE = "llm_policy.engine"


@dataclass
class _CallState:
    tier: str
    attempts: int = 0
    fallback_to: dict[str, FallbackTriggered] = field(default_factory=dict)
    model: str | None = None


_current: contextvars.ContextVar[_CallState | None] = contextvars.ContextVar("llm_policy_call", default=None)


def _trace() -> Any:
    try:
        from opentelemetry import trace
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("tracing needs opentelemetry-api: pip install 'llm-policy-engine[otel]'") from exc
    return trace


class Instrumentation:
    """The handle :func:`instrument` returns."""

    def __init__(self, engine: PolicyEngine, tracer: Any, operation: str) -> None:
        self.engine = engine
        self.tracer = tracer
        self.operation = operation
        self._trace = _trace()
        self._unsubscribe = engine.subscribe(self._on_event)
        self._original = (engine.__dict__.get("call"), engine.__dict__.get("acall"))
        engine.call = functools.partial(self._call, type(engine).call.__get__(engine))  # type: ignore[method-assign]
        engine.acall = functools.partial(self._acall, type(engine).acall.__get__(engine))  # type: ignore[method-assign]

    def uninstrument(self) -> None:
        """Put the engine's own ``call`` and ``acall`` back and stop adding span events."""
        self._unsubscribe()
        for name, original in zip(("call", "acall"), self._original, strict=True):
            if original is None:
                self.engine.__dict__.pop(name, None)
            else:
                setattr(self.engine, name, original)

    # -- events -----------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        state = _current.get()
        if state is not None and isinstance(event, FallbackTriggered):
            state.fallback_to[event.to_model] = event
        span = self._trace.get_current_span()
        if not span.is_recording():
            return
        attrs = {f"llm_policy.{k}": v for k, v in event.to_dict().items()
                 if k not in ("event", "metrics", "problems") and isinstance(v, (str, bool, int, float))}
        span.add_event(type(event).__name__, attrs)

    # -- spans ------------------------------------------------------------------
    def _call_span(self, tier: str) -> Any:
        return self.tracer.start_as_current_span(
            f"llm_policy.call {tier}", kind=self._trace.SpanKind.INTERNAL, attributes={"llm_policy.tier": tier},
            record_exception=True, set_status_on_exception=True)

    def _attempt_span(self, state: _CallState, model: str) -> Any:
        state.attempts += 1
        spec = self.engine.policy.models.get(model)
        fell = state.fallback_to.get(model)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": self.operation, "gen_ai.request.model": model,
            "llm_policy.tier": state.tier, "llm_policy.attempt": state.attempts,
            "llm_policy.fallback": fell is not None or (state.model is not None and state.model != model)}
        if spec is not None:
            attrs["gen_ai.provider.name"] = spec.provider
            attrs["llm_policy.model_tier"] = spec.tier
        if fell is not None:
            attrs["llm_policy.reasons"] = [f"{fell.from_model}: {fell.reason}"] if fell.from_model else [fell.reason]
        state.model = model
        return self.tracer.start_as_current_span(f"{self.operation} {model}", kind=self._trace.SpanKind.CLIENT,
                                                 attributes=attrs, record_exception=True,
                                                 set_status_on_exception=True)

    def _succeeded(self, span: Any, result: Any, tokens: Any) -> None:
        from engine.calling import usage_tokens

        try:
            tin, tout = (tokens or usage_tokens)(result)
        except Exception:  # the engine logs this itself when it records
            return
        span.set_attribute("gen_ai.usage.input_tokens", int(tin or 0))
        span.set_attribute("gen_ai.usage.output_tokens", int(tout or 0))

    def _failed(self, span: Any, exc: BaseException, classifier: Any) -> None:
        from engine.classify import classify

        try:
            name = (classifier or classify)(exc)[0]
        except Exception:
            name = "server_error"
        span.set_attribute("error.type", name if name in self.engine.policy.error_classes else "server_error")

    def _finish(self, span: Any, state: _CallState, exc: BaseException | None) -> None:
        span.set_attribute("llm_policy.attempts", state.attempts)
        if state.model is not None:
            span.set_attribute("llm_policy.model", state.model)
            span.set_attribute("llm_policy.fallback", state.model in state.fallback_to)
        if exc is not None:
            span.set_attribute("error.type", type(exc).__name__)

    def _call(self, original: Callable[..., Any], tier: str, fn: Callable[[str], Any], **kw: Any) -> Any:
        state = _CallState(tier)

        def attempt(model: str) -> Any:
            with self._attempt_span(state, model) as span:
                try:
                    result = fn(model)
                except Exception as exc:
                    self._failed(span, exc, kw.get("classifier"))
                    raise
                self._succeeded(span, result, kw.get("tokens"))
                return result

        with self._call_span(tier) as span:
            token = _current.set(state)
            try:
                result = original(tier, attempt, **kw)
            except BaseException as exc:
                self._finish(span, state, exc)
                raise
            finally:
                _current.reset(token)
            self._finish(span, state, None)
            return result

    async def _acall(self, original: Callable[..., Awaitable[Any]], tier: str,
                     fn: Callable[[str], Awaitable[Any]], **kw: Any) -> Any:
        state = _CallState(tier)

        async def attempt(model: str) -> Any:
            with self._attempt_span(state, model) as span:
                try:
                    result = await fn(model)
                except Exception as exc:
                    self._failed(span, exc, kw.get("classifier"))
                    raise
                self._succeeded(span, result, kw.get("tokens"))
                return result

        with self._call_span(tier) as span:
            token = _current.set(state)
            try:
                result = await original(tier, attempt, **kw)
            except BaseException as exc:
                self._finish(span, state, exc)
                raise
            finally:
                _current.reset(token)
            self._finish(span, state, None)
            return result


def instrument(engine: PolicyEngine, *, tracer_provider: Any = None, operation: str = "chat") -> Instrumentation:
    """Trace ``engine.call`` / ``engine.acall``; ``operation`` names the GenAI operation (e.g. ``chat``)."""
    trace = _trace()
    tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
    return Instrumentation(engine, tracer, operation)

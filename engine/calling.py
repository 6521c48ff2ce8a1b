"""The decide / call / record loop behind ``PolicyEngine.call`` and ``acall``.

One :func:`call` (or :func:`acall`) asks the engine for a model, calls
``fn(model)``, records how it went and, when ``fn`` raises, does what the
exception's error class says in ``errors.yaml``, within the ``retry`` block of
``routing.yaml``:

* ``retry: true`` and the model has same-model retries left
  (``same_model_retries`` per model and call): wait :func:`backoff_delay` —
  or the retry-after hint if longer, when ``honour_retry_after``, capped at
  ``max_retry_after_s`` — and call the same model again;
* else by ``fallback``: ``none`` re-raises the exception; ``any`` asks for the
  best candidate not yet tried in this call; ``larger_context`` for one whose
  context window is larger than the failed model's (a floor kept for the rest
  of the call);
* ``fn`` runs at most ``max_attempts`` times per call; then the last exception
  is re-raised.

Nothing available: if the earliest recovery (``NoModelAvailable.retry_at``)
is within what is left of ``max_wait_s`` (a total per call), sleep until then
and ask again; else raise ``NoModelAvailable``, chained (``__cause__``) to the
last exception ``fn`` raised, if any. A same-model retry the engine refuses
(the failure opened the breaker, say) moves on as if no retries were left.

Every decision is recorded exactly once. Success records latency and token
usage (``tokens(result)``, else :func:`usage_tokens`). An exception that is
not an ``Exception`` (``KeyboardInterrupt``, ``asyncio.CancelledError``) is
recorded as the class ``cancelled`` if the policy defines one, else as
``bad_request`` (ignored by the default breakers, so it neither counts against
the model nor uses up a half-open probe), then re-raised. A classifier that
raises or returns a class the policy does not know is recorded as
``server_error``.

``fn`` may take a second argument, the :class:`Attempt` (its timeouts,
capped by the call's deadline, the API model id, the partial output of a
stream to carry on from). ``acall`` enforces the timeouts (``routing.yaml``
``timeouts``); ``call`` records an attempt that returned late as ``timeout``.
A returned iterator is a stream: see :mod:`engine.streaming`.

Time is the engine's clock; every wait goes through ``sleep`` (``time.sleep``,
``asyncio.sleep`` for :func:`acall`), so tests pass one that advances a
``FakeClock``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from engine.classify import Classifier, classify, match_error, retry_after
from engine.errors import DeadlineExceeded, NoModelAvailable
from engine.outcome import MAX_TOKENS, Decision, Outcome
from engine.policy.model import ErrorClassSpec, RetrySpec
from engine.streaming import (
    AsyncStream,
    AttemptTimedOut,
    Stream,
    Usage,
    _Leg,
    is_async_stream,
    is_stream,
    read_field,
    until,
)

if TYPE_CHECKING:
    from engine.core import PolicyEngine

__all__ = ["CANCELLED", "MIN_WAIT_S", "Attempt", "AttemptTimedOut", "acall", "backoff_delay", "call",
           "usage_tokens"]

log = logging.getLogger(__name__)

#: The error class an abandoned call (KeyboardInterrupt, CancelledError) is recorded as, if defined.
CANCELLED = "cancelled"
#: Shortest wait for a recovery, so a ``retry_at`` that is already due cannot spin.
MIN_WAIT_S = 0.01

Tokens = Callable[[Any], tuple[int, int]]


class Attempt(NamedTuple):
    """What ``fn(model, attempt)`` is told about one attempt (a second parameter is optional).

    ``timeout_s``: seconds this attempt may take (the attempt timeout, capped
    by what is left of the call's deadline), ``None`` for no limit: pass it to
    the SDK. ``ttft_timeout_s``: likewise, to the first content. ``api_model``:
    the id to send to the provider. ``partial``: text already delivered to the
    caller by a stream that failed: carry on from it (an assistant prefill).
    """

    model: str
    api_model: str
    timeout_s: float | None
    ttft_timeout_s: float | None
    partial: str = ""
    number: int = 1


def _wants_attempt(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes a second positional argument (the :class:`Attempt`) with no default."""
    code = getattr(fn, "__code__", None)
    if code is not None and not hasattr(fn, "__wrapped__"):  # a plain function or method: cheap
        if code.co_flags & inspect.CO_VARARGS:
            return True
        required = code.co_argcount - len(getattr(fn, "__defaults__", None) or ())
        return bool(required - (1 if inspect.ismethod(fn) else 0) >= 2)
    if code is None and not hasattr(fn, "__wrapped__") and not isinstance(fn, type):
        # an instance of a class with a Python ``__call__``: judged once per class, not once per call
        call = type(fn).__dict__.get("__call__") or next(
            (k.__dict__["__call__"] for k in type(fn).__mro__ if "__call__" in k.__dict__), None)
        if getattr(call, "__code__", None) is not None:
            return _instance_wants_attempt(type(fn))  # type: ignore[arg-type]
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    required = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return len(required) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


@functools.lru_cache(maxsize=256)
def _instance_wants_attempt(cls: type) -> bool:
    """:func:`_wants_attempt` of instances of ``cls`` (its ``__call__`` less ``self``)."""
    call = next(k.__dict__["__call__"] for k in cls.__mro__ if "__call__" in k.__dict__)
    code = call.__code__
    if code.co_flags & inspect.CO_VARARGS:
        return True
    return bool(code.co_argcount - len(call.__defaults__ or ()) - 1 >= 2)


class RandomSource(Protocol):
    def random(self) -> float: ...


_RNG = random.Random()  # noqa: S311 - jitter, not cryptography


def backoff_delay(spec: RetrySpec, retry_number: int, rng: RandomSource | None = None) -> float:
    """Seconds to wait before retry ``retry_number`` (0 for the first) of one model.

    ``initial_backoff_s * backoff_multiplier ** retry_number`` capped at
    ``max_backoff_s``, then jittered: ``none`` keeps it, ``full`` draws from
    [0, delay), ``equal`` from [delay/2, delay).
    """
    if retry_number < 0:
        raise ValueError(f"expected retry_number >= 0, got {retry_number}")
    delay = 0.0
    if spec.initial_backoff_s > 0:
        try:
            delay = spec.initial_backoff_s * spec.backoff_multiplier**retry_number
        except OverflowError:
            delay = math.inf
    delay = min(delay, spec.max_backoff_s)
    if spec.jitter == "none":
        return delay
    r = (rng or _RNG).random()
    return delay * r if spec.jitter == "full" else delay / 2 + delay / 2 * r


def _count(value: Any) -> int | None:
    """A token count the engine takes (an integer from 0 to 2**53 - 1), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < MAX_TOKENS else None
    if isinstance(value, float) and value.is_integer() and 0 <= value < MAX_TOKENS:
        return int(value)
    return None


def usage_tokens(result: Any) -> tuple[int, int]:
    """``(input, output)`` tokens of an OpenAI- or Anthropic-shaped response, else ``(0, 0)``.

    Reads ``result.usage`` (or ``result["usage"]``) for ``prompt_tokens`` /
    ``completion_tokens`` (OpenAI chat) or ``input_tokens`` / ``output_tokens``
    (Anthropic, OpenAI responses). A raw response (``with_raw_response``:
    an object with ``http_response`` and ``parse()``) is parsed for it.
    """
    usage = result.get("usage") if isinstance(result, Mapping) else getattr(result, "usage", None)
    if usage is None and callable(getattr(result, "parse", None)) and hasattr(result, "http_response"):
        usage = getattr(result.parse(), "usage", None)  # an SDK's with_raw_response (parse() is cached)
    if usage is None:
        return 0, 0
    for pair in (("prompt_tokens", "completion_tokens"), ("input_tokens", "output_tokens")):
        if isinstance(usage, Mapping):
            tin, tout = (_count(usage.get(k)) for k in pair)
        else:
            tin, tout = (_count(getattr(usage, k, None)) for k in pair)
        if tin is not None or tout is not None:
            return tin or 0, tout or 0
    return 0, 0


def cached_tokens(result: Any) -> int:
    """Input tokens served from the prompt cache: OpenAI's ``usage.prompt_tokens_details.cached_tokens``,
    Anthropic's ``usage.cache_read_input_tokens``; 0 when absent."""
    try:
        usage = result.get("usage") if isinstance(result, Mapping) else getattr(result, "usage", None)
        if usage is None and callable(getattr(result, "parse", None)) and hasattr(result, "http_response"):
            usage = getattr(result.parse(), "usage", None)
        if usage is None:
            return 0
        fields = usage if isinstance(usage, Mapping) else getattr(usage, "__dict__", None)
        if fields is not None and "prompt_tokens" in fields:  # OpenAI: only its own fields are read
            n = read_field(fields.get("prompt_tokens_details"), "cached_tokens")
        else:
            n = read_field(usage, "cache_read_input_tokens")
        return _count(n) or 0
    except Exception:  # an odd usage object: no cached tokens rather than a lost result
        return 0


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class _NotAwaitable(TypeError):
    pass


class _Call:
    """The decide / record / retry state of one call; the drivers do the calling and sleeping."""

    def __init__(self, engine: PolicyEngine, tier: str, estimated_tokens: int | None,
                 classifier: Classifier | None, tokens: Tokens | None, rng: RandomSource | None,
                 deadline_s: float | None = None, exclude: Collection[str] = ()) -> None:
        self.engine = engine
        self.clock = engine._time  # engine time: never runs backwards across a clock step
        self.timeouts = engine.policy.timeouts
        if deadline_s is not None and not (isinstance(deadline_s, (int, float)) and 0 < deadline_s < math.inf):
            raise ValueError(f"deadline_s must be a finite number of seconds > 0, got {deadline_s!r}")
        limit = deadline_s if deadline_s is not None else self.timeouts.deadline_s
        self.deadline_s = limit
        self.deadline = None if limit is None else self.clock() + limit
        self.pause: Callable[[float], object] = time.sleep
        self.apause: Callable[[float], Awaitable[object]] = asyncio.sleep
        self.tier = tier
        self.estimated = estimated_tokens
        self.classifier = classifier or classify
        self.tokens = tokens
        self.rng = rng
        self.spec = engine.policy.retry
        self.tried: list[str] = list(exclude)  # never tried in this call: tried, or excluded by the caller
        self.retries: dict[str, int] = {}  # same-model retries used, per model
        self.attempts = 0
        self.waited = 0.0
        self.pin: Decision | None = None  # the decision a same-model retry repeats
        self.pin_class: ErrorClassSpec | None = None
        self.min_context: int | None = None
        self.reason: str | None = None
        self.last_exc: BaseException | None = None

    # -- deciding ------------------------------------------------------------
    def next(self) -> Decision | float:
        """The next decision, or seconds to sleep before asking again; raises when it is over."""
        if self.deadline is not None and self.clock() >= self.deadline:
            raise DeadlineExceeded(self.tier, self.deadline_s or 0.0, self.attempts) from self.last_exc
        while True:
            got = self._decide()
            if isinstance(got, Decision):
                if got.model not in self.tried:
                    self.tried.append(got.model)
                self.attempts += 1
                return got
            if self.pin is not None and self.pin_class is not None:  # the same model is refused now
                if self._move_on(self.pin.model, self.pin_class):
                    continue
                raise self.last_exc or got
            wait = self._wait_for(got)
            if wait is None:
                if self.last_exc is not None:
                    raise got from self.last_exc
                raise got
            self.waited += wait
            return wait

    def _decide(self) -> Decision | NoModelAvailable:
        try:
            if self.pin is not None:
                if self.pin.model not in self.engine.policy.models:  # a reload removed it meanwhile
                    return NoModelAvailable(self.tier, [(self.pin.model, "removed from the policy set")])
                return self.engine.decide(self.tier, retry_of=self.pin, estimated_tokens=self.estimated,
                                          min_context=self.min_context)
            return self.engine.decide(self.tier, estimated_tokens=self.estimated, exclude=self.tried,
                                      min_context=self.min_context, reason=self.reason,
                                      new_request=not self.attempts and not self.waited)
        except NoModelAvailable as exc:
            return exc

    def _wait_for(self, exc: NoModelAvailable) -> float | None:
        if exc.retry_at is None or self.spec.max_wait_s <= 0:
            return None
        wait = max(exc.retry_at - self.clock(), MIN_WAIT_S)
        left = self.remaining()
        if left is not None and wait >= left:
            return None
        return wait if wait <= self.spec.max_wait_s - self.waited else None

    def remaining(self) -> float | None:
        """Seconds left before the call's deadline, or None without one."""
        return None if self.deadline is None else self.deadline - self.clock()

    def attempt(self, d: Decision, partial: str = "") -> Attempt:
        """The :class:`Attempt` for decision ``d``: its timeouts capped by the deadline."""
        spec = self.engine.policy.models.get(d.model)
        t = self.timeouts
        timeout = spec.timeout_s if spec is not None and spec.timeout_s is not None else t.attempt_s
        ttft = spec.ttft_timeout_s if spec is not None and spec.ttft_timeout_s is not None else t.ttft_s
        left = self.remaining()
        if left is not None:
            left = max(left, 0.0)
            timeout = left if timeout is None else min(timeout, left)
            ttft = None if ttft is None else min(ttft, left)
        if ttft is not None and timeout is not None:
            ttft = min(ttft, timeout)
        return Attempt(d.model, spec.api_id if spec is not None else d.model, timeout, ttft, partial,
                       self.attempts)

    def _move_on(self, model: str, cls: ErrorClassSpec) -> bool:
        """Set up the fallback ``cls`` asks for after ``model`` failed; False when it asks for none."""
        self.pin = self.pin_class = None
        if cls.fallback == "none":
            return False
        if cls.fallback == "larger_context":
            spec = self.engine.policy.models.get(model)
            if spec is None:  # gone in a reload: its context window is unknown
                return False
            self.min_context = max(self.min_context or 0, spec.context_window)
        self.reason = cls.name
        return True

    # -- recording -----------------------------------------------------------
    def succeeded(self, d: Decision, result: Any, started: float, limit: float | None = None) -> None:
        latency = self._latency(started)
        tin, tout = self._tokens(result)
        late = limit is not None and latency > limit * 1000.0  # ran past its timeout: the result is kept
        cached = min(cached_tokens(result), tin) if self.tokens is None else 0
        self._record(d, Outcome(latency, tin, tout, error="timeout" if late else None, cached_input_tokens=cached))

    def stream_ended(self, d: Decision, started: float, first_at: float | None, usage: Usage) -> None:
        """Record a stream that ran to its end: total latency, time to first content, its usage."""
        latency = self._latency(started)
        ttft = None if first_at is None else max(0.0, (first_at - started) * 1000.0)
        limit = self.timeouts.attempt_s
        spec = self.engine.policy.models.get(d.model)
        if spec is not None and spec.timeout_s is not None:
            limit = spec.timeout_s
        late = limit is not None and latency > limit * 1000.0
        self._record(d, Outcome(latency, usage.input_tokens, usage.output_tokens,
                                error="timeout" if late else None, ttft_ms=ttft,
                                cached_input_tokens=min(usage.cached_input_tokens, usage.input_tokens)))

    def failed(self, d: Decision, exc: Exception, started: float, *, stream_content: bool = False) -> float | None:
        """Record the failure; seconds to sleep before the next attempt, or None to re-raise.

        ``stream_content``: a stream failed after content reached the caller;
        it may only continue on another model (never the same one again).
        """
        latency = self._latency(started)
        cls, hint = self._classify(exc)
        self._record(d, Outcome(latency, error=cls.name, retry_after_s=hint))
        self.last_exc = exc
        if self.attempts >= self.spec.max_attempts:
            return None
        used = self.retries.get(d.model, 0)
        if cls.retry and used < self.spec.same_model_retries and not stream_content:
            delay = backoff_delay(self.spec, used, self.rng)
            if hint is not None and self.spec.honour_retry_after:
                delay = max(delay, min(hint, self.spec.max_retry_after_s))
            left = self.remaining()
            if left is None or delay < left:  # a wait past the deadline: fall back instead
                self.retries[d.model] = used + 1
                self.pin, self.pin_class = d, cls
                return delay
        return 0.0 if self._move_on(d.model, cls) else None

    def abandoned(self, d: Decision, started: float) -> None:
        """Record a call that ended without a result of its own (cancelled, interrupted, misused)."""
        classes = self.engine.policy.error_classes
        self._record(d, Outcome(self._latency(started), error=CANCELLED if CANCELLED in classes
                                else "bad_request"))

    def _latency(self, started: float) -> float:
        return max(0.0, (self.clock() - started) * 1000.0)

    def _classify(self, exc: Exception) -> tuple[ErrorClassSpec, float | None]:
        policy = self.engine.policy
        classes = policy.error_classes
        try:
            matched = match_error(policy.error_matches, exc) if policy.error_matches else None
            name, hint = (matched, retry_after(exc)) if matched is not None else self.classifier(exc)
        except Exception:
            log.exception("classifier %r failed on %r; recording server_error", self.classifier, exc)
            name, hint = "server_error", None
        if not isinstance(name, str) or name not in classes:
            name = "server_error"
        spec: ErrorClassSpec = classes[name]
        return spec, _seconds(hint)

    def _tokens(self, result: Any) -> tuple[int, int]:
        read = self.tokens or usage_tokens
        try:
            tin, tout = read(result)
        except Exception:  # the call succeeded: keep its result, record no tokens
            log.exception("reading token usage with %r failed; recording 0 tokens", read)
            return 0, 0
        return _count(tin) or 0, _count(tout) or 0

    def _record(self, d: Decision, outcome: Outcome) -> None:
        try:
            self.engine.record(d, outcome)
        except ValueError as exc:  # expired after DECISION_TTL_S: never lose the call's own result
            log.warning("could not record %s for %s: %s", outcome, d.model, exc)


class _Misuse(TypeError):
    pass


def _misused(plan: _Call, step: Decision, started: float, result: Any, what: str) -> _Misuse:
    plan.abandoned(step, started)
    close = getattr(result, "close", None)
    if inspect.isawaitable(result) and callable(close):
        close()  # no "never awaited" warning
    return _Misuse(f"fn returned {type(result).__name__}, {what}: use acall")


def _open(plan: _Call, fn: Callable[..., Any], partial: str = "") -> Any:
    """The decide / call / record loop of :func:`call`; a stream is returned primed (content arrived)."""
    with_attempt = _wants_attempt(fn)
    while True:
        step = plan.next()
        if not isinstance(step, Decision):
            plan.pause(step)
            continue
        attempt = plan.attempt(step, partial)
        started = plan.clock()
        stream: Stream | None = None
        try:
            result = fn(step.model, attempt) if with_attempt else fn(step.model)
            if inspect.isawaitable(result):
                raise _misused(plan, step, started, result, "an awaitable")
            if is_async_stream(result):
                raise _misused(plan, step, started, result, "an async iterator")
            if is_stream(result):
                stream = Stream(plan, _Leg(step, result, started),
                                lambda text: _open(plan, fn, text))
                stream._prime()
        except _Misuse:
            raise
        except Exception as exc:
            delay = _failed_open(plan, step, exc, started, stream)
            if delay is None:
                raise
        except BaseException:
            if stream is not None:
                stream.close()
            else:
                plan.abandoned(step, started)
            raise
        else:
            if stream is not None:
                return stream
            plan.succeeded(step, result, started, attempt.timeout_s)
            return result
        if delay > 0:
            plan.pause(delay)


def _failed_open(plan: _Call, step: Decision, exc: Exception, started: float, stream: Any) -> float | None:
    """An attempt failed before content reached the caller: close its stream, record, decide what next."""
    if stream is not None:
        inner = stream._leg.inner if stream._leg is not None else None
        stream._leg = None  # recorded here as the failure, not as cancelled
        close = getattr(inner, "close", None)
        if callable(close):
            try:
                close()
            except Exception:
                log.debug("closing a failed stream raised", exc_info=True)
    return plan.failed(step, exc, started)


def call(engine: PolicyEngine, tier: str, fn: Callable[..., Any], *, estimated_tokens: int | None = None,
         classifier: Classifier | None = None, tokens: Tokens | None = None,
         sleep: Callable[[float], object] | None = None, rng: RandomSource | None = None,
         deadline_s: float | None = None, exclude: Collection[str] = ()) -> Any:
    """Return ``fn(model)`` (or ``fn(model, attempt)``) for a model of ``tier``, retrying and falling back.

    Raises the last exception of ``fn`` when the policy gives up,
    ``NoModelAvailable`` when no model can be tried, ``DeadlineExceeded`` when
    the call's deadline passed. A stream comes back as a :class:`Stream`.
    ``exclude`` names models never to try in this call.
    """
    plan = _Call(engine, tier, estimated_tokens, classifier, tokens, rng, deadline_s, exclude)
    if sleep is not None:
        plan.pause = sleep
    return _open(plan, fn)


async def _aopen(plan: _Call, async_fn: Callable[..., Any], partial: str = "") -> Any:
    """The loop of :func:`acall`: every attempt is bounded by its timeout and the deadline (loop time)."""
    with_attempt = _wants_attempt(async_fn)
    while True:
        step = plan.next()
        if not isinstance(step, Decision):
            await plan.apause(step)
            continue
        attempt = plan.attempt(step, partial)
        started = plan.clock()
        ends = first = None
        if attempt.timeout_s is not None or attempt.ttft_timeout_s is not None:  # loop time; no loop needed without
            begun = asyncio.get_running_loop().time()
            ends = None if attempt.timeout_s is None else begun + attempt.timeout_s
            first = None if attempt.ttft_timeout_s is None else begun + attempt.ttft_timeout_s
        stream: AsyncStream | None = None
        try:
            async with until(ends):
                pending = async_fn(step.model, attempt) if with_attempt else async_fn(step.model)
                if not inspect.isawaitable(pending):
                    raise _NotAwaitable(f"async_fn returned {type(pending).__name__}, not an awaitable: use call")
                async with until(first):
                    result = await pending
                if is_async_stream(result):
                    stream = AsyncStream(plan, _Leg(step, result, started),
                                         lambda text: _aopen(plan, async_fn, text), ends)
            if stream is not None:
                await stream._prime(first)
        except _NotAwaitable:
            plan.abandoned(step, started)
            raise
        except Exception as exc:
            if stream is not None:
                inner = stream._leg.inner if stream._leg is not None else None
                stream._leg = None
                await AsyncStream._close_inner(inner)
            delay = plan.failed(step, exc, started)
            if delay is None:
                raise
        except BaseException:
            if stream is not None:
                await stream.aclose()
            else:
                plan.abandoned(step, started)
            raise
        else:
            if stream is not None:
                return stream
            plan.succeeded(step, result, started, attempt.timeout_s)
            return result
        if delay > 0:
            left = plan.remaining()
            await plan.apause(delay if left is None else min(delay, max(left, 0.0)))


async def acall(engine: PolicyEngine, tier: str, async_fn: Callable[..., Awaitable[Any]], *,
                estimated_tokens: int | None = None, classifier: Classifier | None = None,
                tokens: Tokens | None = None, sleep: Callable[[float], Awaitable[object]] | None = None,
                rng: RandomSource | None = None, deadline_s: float | None = None,
                exclude: Collection[str] = ()) -> Any:
    """:func:`call` for coroutine functions: ``await async_fn(model)`` and ``await sleep(s)``.

    Attempt, time-to-first-token and deadline limits are enforced: an attempt
    running past one is cancelled and recorded as ``timeout``
    (:class:`AttemptTimedOut`). An async stream comes back as an :class:`AsyncStream`.
    """
    plan = _Call(engine, tier, estimated_tokens, classifier, tokens, rng, deadline_s, exclude)
    if sleep is not None:
        plan.apause = sleep
    return await _aopen(plan, async_fn)

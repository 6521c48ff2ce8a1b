"""Streams through ``call`` and ``acall``: what a chunk carries, and the stream handed to the caller.

When ``fn`` returns an iterator (``__next__``: a generator, OpenAI's and
Anthropic's ``Stream``) or ``async_fn`` an async iterator (``__anext__``), the
call loop first pulls chunks until one carries content (:func:`has_content`),
holding back role-only deltas and lifecycle frames; a failure until then is
an ordinary failed attempt (retry or fall back, the caller sees nothing). It
then returns a :class:`Stream` (or :class:`AsyncStream`) that yields the held
chunks and the rest, reads the usage (:class:`Usage`) and records the attempt
when the stream ends: total latency, time to first content, tokens. A
failure after content was delivered is recorded as a failure and either
raised (``timeouts.after_content: raise``) or continued on the next candidate,
asked (``Attempt.partial``) to carry on from the text delivered so far; its
chunks follow seamlessly. Closing the stream early, or dropping it, records
``cancelled``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from engine.outcome import MAX_TOKENS, Decision

if TYPE_CHECKING:
    from engine.calling import _Call

__all__ = ["AsyncStream", "Stream", "StreamErrorFrame", "Usage", "chunk_text", "has_content", "is_async_stream",
           "is_stream", "read_field"]

log = logging.getLogger(__name__)

#: Anthropic stream events that carry no content of the answer.
_LIFECYCLE = frozenset({"message_start", "content_block_start", "content_block_stop", "message_delta",
                        "message_stop", "ping"})
_DELTA_CONTENT = ("content", "tool_calls", "refusal", "function_call", "reasoning_content", "audio")


class StreamErrorFrame(Exception):
    """A plain (dict) stream reported an error inside a 200 response: ``{"error": {...}}`` as vLLM sends."""

    def __init__(self, body: Any) -> None:
        error = body.get("error") if isinstance(body, Mapping) else None
        message = error.get("message") if isinstance(error, Mapping) else error
        super().__init__(f"error inside the stream: {message}")
        self.body = error if isinstance(error, Mapping) else body


def read_field(obj: Any, name: str) -> Any:
    """``obj[name]`` of a mapping, else the attribute, else ``None`` — without the cost of a pydantic
    model's ``__getattr__`` raising for a field it does not have (SDK responses and chunks)."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    fields = getattr(obj, "__dict__", None)
    if fields is not None and name in fields:
        return fields[name]
    if hasattr(type(obj), "model_fields"):  # pydantic: fields are in __dict__, extras in __pydantic_extra__
        extra = getattr(obj, "__pydantic_extra__", None)
        return extra.get(name) if extra else None
    return getattr(obj, name, None)


_get = read_field


def is_stream(value: Any) -> bool:
    """An iterator a call returns chunk by chunk (not a string, list, dict or pydantic model)."""
    return isinstance(value, Iterator) and not isinstance(value, (str, bytes))  # ABC check: cached per type


def is_async_stream(value: Any) -> bool:
    return isinstance(value, AsyncIterator)


def has_content(chunk: Any) -> bool:
    """True when ``chunk`` carries part of the answer; raises StreamErrorFrame for a dict error frame."""
    if isinstance(chunk, (str, bytes)):
        return bool(chunk)
    kind = _get(chunk, "type")
    if isinstance(kind, str):
        if kind in _LIFECYCLE:
            return False
        if kind == "error" and isinstance(chunk, Mapping):
            raise StreamErrorFrame(chunk)
        if kind == "content_block_delta":
            return True
    choices = _get(chunk, "choices")
    if isinstance(choices, (list, tuple)):
        for choice in choices:
            delta = _get(choice, "delta")
            if delta is not None and any(_get(delta, k) for k in _DELTA_CONTENT):
                return True
        return False
    if isinstance(chunk, Mapping) and "error" in chunk:
        raise StreamErrorFrame(chunk)
    return True  # a chunk of a shape not known here: take it as content


def chunk_text(chunk: Any) -> str:
    """The answer text a chunk carries (OpenAI ``delta.content``, Anthropic ``text_delta``, a str), else ``""``."""
    if isinstance(chunk, str):
        return chunk
    if _get(chunk, "type") == "content_block_delta":
        text = _get(_get(chunk, "delta"), "text")
        return text if isinstance(text, str) else ""
    choices = _get(chunk, "choices")
    if isinstance(choices, (list, tuple)) and choices:
        text = _get(_get(choices[0], "delta"), "content")
        return text if isinstance(text, str) else ""
    return ""


def _n(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_TOKENS else None


class Usage:
    """Token usage read from a stream's chunks: OpenAI's final usage chunk, Anthropic's
    ``message_start`` (input) and ``message_delta`` (output, cumulative)."""

    __slots__ = ("input_tokens", "output_tokens", "cached_input_tokens")

    def __init__(self) -> None:
        self.input_tokens = self.output_tokens = self.cached_input_tokens = 0

    def observe(self, chunk: Any) -> None:
        if isinstance(chunk, (str, bytes)):
            return
        kind = _get(chunk, "type")
        usage = _get(_get(chunk, "message"), "usage") if kind == "message_start" else _get(chunk, "usage")
        if usage is None:
            return
        tin = _n(_get(usage, "prompt_tokens"))
        if tin is None:
            tin = _n(_get(usage, "input_tokens"))
        tout = _n(_get(usage, "completion_tokens"))
        if tout is None:
            tout = _n(_get(usage, "output_tokens"))
        cached = _n(_get(_get(usage, "prompt_tokens_details"), "cached_tokens"))
        if cached is None:
            cached = _n(_get(usage, "cache_read_input_tokens"))
        if tin is not None:
            self.input_tokens = tin
        if tout is not None:
            self.output_tokens = tout
        if cached is not None:
            self.cached_input_tokens = cached


class _Leg:
    """One attempt's stream: its decision, when it started, when content came, what it used."""

    __slots__ = ("decision", "inner", "started", "first_at", "usage", "held")

    def __init__(self, decision: Decision, inner: Any, started: float) -> None:
        self.decision, self.inner, self.started = decision, inner, started
        self.first_at: float | None = None
        self.usage = Usage()
        self.held: deque[Any] = deque()


class _Base:
    """What the sync and async streams share: the bookkeeping of legs and recording."""

    def __init__(self, plan: _Call, leg: _Leg, restart: Any) -> None:
        self._plan = plan
        self._leg: _Leg | None = leg
        self._last = leg.inner  # the SDK stream whose attributes (response, ...) this one shows
        self._restart = restart  # opens the next candidate's stream, carrying on from the partial text
        self._text: list[str] = []
        self._exhausted = False  # the current leg ended while priming (no content at all)

    @property
    def model(self) -> str | None:
        """The model now streaming (changes when a failure continues on the next candidate)."""
        return self._leg.decision.model if self._leg is not None else None

    @property
    def partial(self) -> str:
        """The text delivered to the caller so far."""
        return "".join(self._text)

    def _seen(self, leg: _Leg, chunk: Any) -> bool:
        """Account for one chunk; True when it carries content."""
        leg.usage.observe(chunk)
        content = has_content(chunk)
        if content and leg.first_at is None:
            leg.first_at = self._plan.clock()
        return content

    def _finish(self) -> None:
        leg, self._leg = self._leg, None
        if leg is not None:
            self._plan.stream_ended(leg.decision, leg.started, leg.first_at, leg.usage)

    def _abandon(self) -> Any:
        """Record the current leg as cancelled; return its inner stream (to close)."""
        leg, self._leg = self._leg, None
        if leg is None:
            return None
        self._plan.abandoned(leg.decision, leg.started)
        return leg.inner

    def _failed(self, exc: Exception) -> float | None:
        """Record the current leg's failure; the delay before continuing, or None to raise."""
        leg, self._leg = self._leg, None
        assert leg is not None
        delay = self._plan.failed(leg.decision, exc, leg.started, stream_content=True)
        if self._plan.timeouts.after_content != "continue" or self._restart is None:
            return None
        return delay

    def _adopt(self, new: _Base) -> None:
        """Carry on with ``new``'s leg: only its content reaches the caller (no second start frames)."""
        leg = new._leg
        new._leg = None  # the new stream object is dropped; its leg is ours now
        assert leg is not None
        leg.held = deque(c for c in leg.held if has_content(c))
        self._leg = leg
        self._last = leg.inner
        self._exhausted = new._exhausted

    def __del__(self) -> None:
        try:
            if getattr(self, "_leg", None) is not None:
                self._abandon()  # dropped before its end: cancelled, so no in-flight slot leaks
        except Exception:  # never raise from a finalizer
            log.debug("recording a dropped stream failed", exc_info=True)

    def __getattr__(self, name: str) -> Any:  # the SDK stream's own attributes (response, ...)
        if "_last" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["_last"], name)


class Stream(_Base, Iterator[Any]):
    """The stream ``call`` returns: the same chunks, recorded when it ends, fails or is closed."""

    def _prime(self) -> None:
        """Pull until content arrives (held back meanwhile); raises what the stream raises."""
        leg = self._leg
        assert leg is not None
        for chunk in leg.inner:
            leg.held.append(chunk)
            if self._seen(leg, chunk):
                return
        self._exhausted = True

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        while True:
            leg = self._leg
            if leg is None:
                raise StopIteration
            if leg.held:
                chunk = leg.held.popleft()
                self._text.append(chunk_text(chunk))
                return chunk
            if self._exhausted:
                self._finish()
                raise StopIteration
            try:
                chunk = next(leg.inner)
                content = self._seen(leg, chunk)
            except StopIteration:
                self._finish()
                raise
            except Exception as exc:
                delay = self._failed(exc)
                if delay is None:
                    raise
                self._continue(exc, delay)
                continue
            except BaseException:
                self._abandon()
                raise
            if content:
                self._text.append(chunk_text(chunk))
            return chunk

    def _continue(self, exc: Exception, delay: float) -> None:
        if delay > 0:
            self._plan.pause(delay)
        try:
            new = self._restart(self.partial)
        except Exception as later:
            raise later from exc
        if not isinstance(new, Stream):
            raise exc  # the next candidate answered in one piece: it cannot be spliced in
        self._adopt(new)

    def close(self) -> None:
        """Stop early: the attempt is recorded as ``cancelled`` and the underlying stream closed."""
        inner = self._abandon()
        close = getattr(inner, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStream(_Base, AsyncIterator[Any]):
    """The stream ``acall`` returns; attempt and time-to-first-token timeouts are enforced."""

    def __init__(self, plan: _Call, leg: _Leg, restart: Any, timeout_at: float | None) -> None:
        super().__init__(plan, leg, restart)
        self._timeout_at = timeout_at  # loop time the current leg must end by

    async def _prime(self, ttft_at: float | None) -> None:
        leg = self._leg
        assert leg is not None
        while True:
            try:
                async with _Until(ttft_at if ttft_at is not None else self._timeout_at):
                    chunk = await leg.inner.__anext__()
            except StopAsyncIteration:
                self._exhausted = True
                return
            leg.held.append(chunk)
            if self._seen(leg, chunk):
                return

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            leg = self._leg
            if leg is None:
                raise StopAsyncIteration
            if leg.held:
                chunk = leg.held.popleft()
                self._text.append(chunk_text(chunk))
                return chunk
            if self._exhausted:
                self._finish()
                raise StopAsyncIteration
            try:
                async with _Until(self._timeout_at):
                    chunk = await leg.inner.__anext__()
                content = self._seen(leg, chunk)
            except StopAsyncIteration:
                self._finish()
                raise
            except Exception as exc:
                delay = self._failed(exc)
                if delay is None:
                    raise
                await self._continue(exc, delay)
                continue
            except BaseException:
                await self._close_inner(self._abandon())
                raise
            if content:
                self._text.append(chunk_text(chunk))
            return chunk

    async def _continue(self, exc: Exception, delay: float) -> None:
        if delay > 0:
            await self._plan.apause(delay)
        try:
            new = await self._restart(self.partial)
        except Exception as later:
            raise later from exc
        if not isinstance(new, AsyncStream):
            raise exc
        self._timeout_at = new._timeout_at
        self._adopt(new)

    @staticmethod
    async def _close_inner(inner: Any) -> None:
        close = getattr(inner, "close", None) or getattr(inner, "aclose", None)
        if callable(close):
            done = close()
            if isinstance(done, Awaitable):
                await done

    async def aclose(self) -> None:
        """Stop early: recorded as ``cancelled``, the underlying stream closed."""
        await self._close_inner(self._abandon())

    close = aclose

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AttemptTimedOut(TimeoutError):
    """An attempt of ``acall`` ran past its timeout (``timeouts.attempt_s``, ``ttft_s`` or the deadline)."""


class _Until:
    """``asyncio.timeout_at`` that raises :class:`AttemptTimedOut`, and costs nothing without a limit."""

    __slots__ = ("_at", "_cm")

    def __init__(self, at: float | None) -> None:
        self._at = at
        self._cm: Any = None

    async def __aenter__(self) -> None:
        if self._at is not None:
            self._cm = asyncio.timeout_at(self._at)
            await self._cm.__aenter__()

    async def __aexit__(self, typ: Any, exc: Any, tb: Any) -> bool:
        if self._cm is None:
            return False
        try:
            await self._cm.__aexit__(typ, exc, tb)
        except TimeoutError as timed_out:
            raise AttemptTimedOut("attempt timed out") from timed_out
        return False


def until(at: float | None) -> _Until:
    """A context that times out at loop time ``at`` (None: never) with :class:`AttemptTimedOut`."""
    return _Until(at)


Restart = Callable[[str], Any]

"""Streams through call/acall: held-back start frames, recording at the end, failures, continuation, cancel."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import PolicyEngine
from engine.calling import Attempt
from engine.streaming import AsyncStream, Stream, StreamErrorFrame, Usage, chunk_text, has_content
from engine.testing import FakeClock

MINI, FLASH, HAIKU = "gpt-4.1-mini", "gemini-2.5-flash", "claude-haiku-4-5"


class Dropped(ConnectionError):
    pass


def role() -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}


def text(t: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": t}}]}


def usage(tin: int, tout: int) -> dict[str, Any]:
    return {"choices": [], "usage": {"prompt_tokens": tin, "completion_tokens": tout}}


def sse(clock: FakeClock, words: list[str], *, ttft: float = 0.0, gap: float = 0.0, fail_after: int | None = None,
        tokens: tuple[int, int] | None = None, exc: Exception | None = None) -> Iterator[dict[str, Any]]:
    """An OpenAI-shaped chunk stream on a fake clock: role first, words, then a usage chunk."""
    yield role()
    for i, w in enumerate(words):
        if fail_after is not None and i == fail_after:
            raise exc or Dropped("peer closed connection")
        clock.advance(ttft if i == 0 else gap)
        yield text(w)
    yield usage(*(tokens or (7, len(words))))


def engine(policy_dir: Path, clock: FakeClock, after_content: str | None = None) -> PolicyEngine:
    if after_content:
        routing = policy_dir / "routing.yaml"
        routing.write_text(routing.read_text() + f"timeouts:\n  after_content: {after_content}\n")
    return PolicyEngine.from_path(policy_dir, clock=clock)


def contents(chunks: list[Any]) -> str:
    return "".join(chunk_text(c) for c in chunks)


def test_a_stream_is_recorded_when_it_ends_with_ttft_total_latency_and_usage(policy_dir: Path) -> None:
    clock = FakeClock()
    eng = engine(policy_dir, clock)
    out = eng.call("L2", lambda m: sse(clock, ["Hel", "lo", "!"], ttft=0.25, gap=0.1, tokens=(12, 3)))
    assert isinstance(out, Stream) and out.model == MINI
    first = next(out)  # the held-back role frame, then content
    assert first == role()
    assert eng.state(MINI)["in_flight"] == 1 and eng.state(MINI)["metrics"]["calls"] == 0
    rest = list(out)
    assert contents(rest) == "Hello!" and rest[-1] == usage(12, 3)
    state = eng.state(MINI)
    assert state["in_flight"] == 0
    m = state["metrics"]
    assert (m["calls"], m["successes"], m["tokens_in"], m["tokens_out"]) == (1, 1, 12, 3)
    assert m["p50_ms"] == pytest.approx(450, rel=0.02)  # 0.25 s to first token + 2 x 0.1 s
    assert state["ttft"]["calls"] == 1 and state["ttft"]["p50_ms"] == pytest.approx(250, rel=0.02)


def test_a_streamed_call_s_ttft_reaches_the_history_and_the_snapshot(policy_dir: Path,
                                                                    tmp_path: Path) -> None:
    import sqlite3

    from engine.store.historydb import decode_latency
    from engine.store.sqlite import SQLiteStore

    clock = FakeClock()
    db = tmp_path / "history.db"
    eng = PolicyEngine.from_path(policy_dir, clock=clock, store=SQLiteStore(f"sqlite:///{db}?flush_s=3600"))
    list(eng.call("L2", lambda m: sse(clock, ["Hel", "lo"], ttft=0.25, gap=0.1)))
    assert eng.snapshot()["ttft"][("L2", MINI)].count == 1
    eng.close()
    conn = sqlite3.connect(db)
    try:
        (calls, *ttft), = conn.execute(
            "SELECT calls, ttft_zero, ttft_total, ttft_min, ttft_max, ttft FROM minutes WHERE model = ?", (MINI,))
    finally:
        conn.close()
    hist = decode_latency(*ttft)
    assert (calls, hist.count) == (1, 1)
    assert hist.min == pytest.approx(250.0)


def test_a_failure_before_content_falls_back_and_the_caller_sees_only_the_answer(policy_dir: Path) -> None:
    clock = FakeClock()
    eng = engine(policy_dir, clock)
    called: list[str] = []

    def fn(model: str) -> Iterator[Any]:
        called.append(model)
        return sse(clock, ["a", "b"], fail_after=0 if model == MINI else None)

    chunks = list(eng.call("L2", fn, sleep=clock.advance))
    assert called == [MINI, MINI, FLASH]  # connection: one same-model retry, then the fallback
    assert chunks == [role(), text("a"), text("b"), usage(7, 2)]  # one role frame: the failed ones were held back
    assert eng.state(MINI)["metrics"]["errors_connection"] == 2


def test_an_error_frame_inside_a_200_stream_is_a_failure(policy_dir: Path) -> None:
    clock = FakeClock()
    eng = engine(policy_dir, clock)

    def fn(model: str) -> Iterator[Any]:
        if model == MINI:
            return iter([role(), {"error": {"message": "out of memory", "code": 500}}])
        return sse(clock, ["ok"])

    assert contents(list(eng.call("L2", fn, sleep=clock.advance))) == "ok"
    assert eng.state(MINI)["metrics"]["errors_server_error"] == 2  # retried once, then fallen back


def test_a_failure_after_content_reaches_the_caller_by_default(policy_dir: Path) -> None:
    clock = FakeClock()
    eng = engine(policy_dir, clock)
    out = eng.call("L2", lambda m: sse(clock, ["one", " two", " three", " four"], fail_after=3))
    got: list[Any] = []
    with pytest.raises(Dropped):
        for chunk in out:
            got.append(chunk)
    assert contents(got) == "one two three"
    m = eng.state(MINI)["metrics"]
    assert (m["successes"], m["failures"], m["errors_connection"]) == (0, 1, 1)
    assert eng.state(MINI)["in_flight"] == 0


def test_after_content_continue_carries_on_seamlessly_on_the_next_candidate(policy_dir: Path) -> None:
    clock = FakeClock()
    eng = engine(policy_dir, clock, after_content="continue")
    answer = ["one", " two", " three", " four", " five"]
    asked: list[Attempt] = []

    def fn(model: str, attempt: Attempt) -> Iterator[Any]:
        asked.append(attempt)
        if model == MINI:
            return sse(clock, answer, fail_after=3)
        done = attempt.partial
        return sse(clock, [w for w in answer if w not in done.split(" ") and w.strip() not in done.split()])

    chunks = list(eng.call("L2", fn, sleep=clock.advance))
    assert contents(chunks) == "one two three four five"  # one answer, no token twice
    assert [c for c in chunks if c == role()] == [role()]  # the second stream's start frame is not repeated
    assert [(a.model, a.partial) for a in asked] == [(MINI, ""), (FLASH, "one two three")]
    assert eng.state(MINI)["metrics"]["failures"] == 1 and eng.state(FLASH)["metrics"]["successes"] == 1


def test_closing_early_is_cancelled_and_frees_the_slot(policy_dir: Path) -> None:
    clock = FakeClock()
    eng = engine(policy_dir, clock)
    closed: list[bool] = []

    def gen() -> Iterator[Any]:
        try:
            yield from sse(clock, ["a", "b", "c"])
        finally:
            closed.append(True)

    with eng.call("L2", lambda m: gen()) as out:
        next(out)
        next(out)
    m = eng.state(MINI)["metrics"]
    assert (m["calls"], m["errors_cancelled"], m["failures"]) == (1, 1, 0) and closed == [True]
    assert eng.state(MINI)["in_flight"] == 0 and eng.state(MINI)["breaker"]["state"] == "closed"


def test_a_dropped_stream_is_recorded_as_cancelled(policy_dir: Path) -> None:
    clock = FakeClock()
    eng = engine(policy_dir, clock)
    out = eng.call("L2", lambda m: sse(clock, ["a", "b"]))
    next(out)
    del out
    gc.collect()
    assert eng.state(MINI)["in_flight"] == 0 and eng.state(MINI)["metrics"]["errors_cancelled"] == 1


def test_a_stream_without_content_is_an_empty_success(policy_dir: Path) -> None:
    clock = FakeClock()
    eng = engine(policy_dir, clock)
    assert list(eng.call("L2", lambda m: iter([role(), usage(3, 0)]))) == [role(), usage(3, 0)]
    m = eng.state(MINI)["metrics"]
    assert (m["successes"], m["tokens_in"]) == (1, 3) and eng.state(MINI)["ttft"]["calls"] == 0


def test_an_async_iterator_from_call_is_refused(policy_dir: Path) -> None:
    eng = engine(policy_dir, FakeClock())

    async def agen() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(TypeError, match="an async iterator: use acall"):
        eng.call("L2", lambda m: agen())
    assert eng.state(MINI)["in_flight"] == 0


def test_anthropic_events_give_usage_and_content() -> None:
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 21, "output_tokens": 1,
                                                            "cache_read_input_tokens": 5}}}
    block = {"type": "content_block_start", "index": 0}
    delta = {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}}
    end = {"type": "message_delta", "usage": {"output_tokens": 9}}
    u = Usage()
    for e in (start, block, delta, end, {"type": "message_stop"}):
        u.observe(e)
    assert (u.input_tokens, u.output_tokens, u.cached_input_tokens) == (21, 9, 5)
    assert [has_content(e) for e in (start, block, delta, end)] == [False, False, True, False]
    assert chunk_text(delta) == "Hi"
    with pytest.raises(StreamErrorFrame, match="overloaded"):
        has_content({"type": "error", "error": {"type": "overloaded_error", "message": "overloaded"}})


async def achunks(words: list[str], *, ttft: float = 0.0, fail_after: int | None = None) -> AsyncIterator[Any]:
    yield role()
    for i, w in enumerate(words):
        if fail_after is not None and i == fail_after:
            raise Dropped("gone")
        await asyncio.sleep(ttft if i == 0 else 0)
        yield text(w)
    yield usage(4, len(words))


def test_acall_streams_and_records(policy_dir: Path) -> None:
    eng = PolicyEngine.from_path(policy_dir)

    async def main() -> list[Any]:
        async def fn(model: str) -> AsyncIterator[Any]:
            return achunks(["x", "y"], fail_after=0 if model == MINI else None)
        out = await eng.acall("L2", fn)
        assert isinstance(out, AsyncStream)
        return [c async for c in out]

    chunks = asyncio.run(main())
    assert contents(chunks) == "xy" and chunks[-1] == usage(4, 2)
    assert eng.state(MINI)["metrics"]["errors_connection"] == 2
    assert eng.state(FLASH)["metrics"]["tokens_in"] == 4 and eng.state(FLASH)["in_flight"] == 0


def test_acall_stream_closed_early_is_cancelled(policy_dir: Path) -> None:
    eng = PolicyEngine.from_path(policy_dir)

    async def main() -> None:
        async def fn(model: str) -> AsyncIterator[Any]:
            return achunks(["x", "y", "z"])
        async with await eng.acall("L2", fn) as out:
            await out.__anext__()

    asyncio.run(main())
    m = eng.state(MINI)["metrics"]
    assert m["errors_cancelled"] == 1 and eng.state(MINI)["in_flight"] == 0

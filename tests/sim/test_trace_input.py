"""The trace reader and the replay's line checks on large or odd input: bounded memory and time."""

from __future__ import annotations

import io
import time
import tracemalloc
from pathlib import Path

from engine.policy.loader import load_policies
from engine.sim.replay import prepare
from engine.sim.trace import _CHUNK, MAX_LINE_BYTES, TraceLines, read_trace
from tests.conftest import POLICIES

T0 = 1767225600  # 2026-01-01 00:00 UTC


def test_a_long_line_ending_in_cr_at_a_chunk_end_does_not_swallow_the_next_line() -> None:
    long_line = b"head\r" + b"x" * (2 * _CHUNK - 6) + b"\r"  # its \r is the last byte of the second chunk read
    assert len(long_line) == 2 * _CHUNK and 2 * _CHUNK - 5 > MAX_LINE_BYTES
    for end in ("\r", "\r\n"):
        data = long_line + (b"\n" if end == "\r\n" else b"") + f"next{end}last{end}".encode()
        lines = TraceLines(io.BytesIO(data), "t.csv")
        assert list(lines) == ["head\r", "\n", f"next{end}", f"last{end}"]
        assert [p.line for p in lines.problems] == [2]


def test_a_cr_only_trace_keeps_the_line_after_an_overlong_one(tmp_path: Path) -> None:
    header = b"timestamp,tier,input_tokens,output_tokens\r"
    first = f"{T0},L2,1,1\r".encode()
    # the reader takes 16 bytes (the SQLite magic) and then chunks: end the long line on a chunk's last byte
    pad = 16 + 2 * _CHUNK - len(header) - len(first) - 1
    path = tmp_path / "t.csv"
    path.write_bytes(header + first + b"y" * pad + b"\r" + f"{T0 + 1},L2,2,2\r{T0 + 2},L2,3,3\r".encode())
    trace = read_trace(path)
    assert [ln.input_tokens for ln in trace.lines] == [1, 2, 3]
    assert [(p.line, p.message.split(":")[0]) for p in trace.problems] == [(3, "line too long")]


def test_leading_blank_lines_are_counted_not_kept(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    blank = 300_000
    path.write_bytes(b" \n" * blank + f"timestamp,tier,input_tokens,output_tokens\n{T0},L2,1,1\n{T0},L2,x,1\n".encode())
    tracemalloc.start()
    try:
        trace = read_trace(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [ln.line for ln in trace.lines] == [blank + 2]
    assert [p.line for p in trace.problems] == [blank + 3]  # line numbers still count the blank lines
    assert peak < 8_000_000, f"{peak:,} bytes at the peak for {blank:,} blank lines"


def test_did_you_mean_for_many_misspelt_lines_is_not_recomputed_per_line(tmp_path: Path) -> None:
    policies = load_policies([POLICIES])
    path = tmp_path / "t.csv"
    n = 20_000
    path.write_text("timestamp,tier,model,input_tokens,output_tokens\n"
                    + "".join(f"{T0 + i},L2,gpt-4.1-mni{i % 50},10,5\n" for i in range(n)))
    trace = read_trace(path)
    start = time.perf_counter()
    prepared = prepare(trace, [policies], seed=1)
    took = time.perf_counter() - start
    assert len(prepared.problems) == n
    assert prepared.problems[0].message == ("unknown model 'gpt-4.1-mni0' (did you mean 'gpt-4.1-mini'?): its "
                                            "recorded outcomes would never apply")
    assert took < 1.5, f"{took:.2f} s to check {n:,} lines"  # 3 s and more when each line built its suggester

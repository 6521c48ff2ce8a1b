from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.histogram import MAX_MS, MIN_MS, LatencyHistogram, nearest_rank

TRACE = Path("/work/shared/traces/llmperf-2023/llmperf_requests.csv")

latencies = st.floats(min_value=MIN_MS, max_value=MAX_MS, allow_nan=False)
with_zeros = st.one_of(st.just(0.0), latencies)


def exact(values: list[float], q: float) -> float:
    """Nearest-rank quantile on the sorted data, written independently of the histogram."""
    ordered = sorted(values)
    return ordered[nearest_rank(q, len(ordered)) - 1]


def rel_err(estimate: float | None, truth: float) -> float:
    assert estimate is not None
    return abs(estimate - truth) / truth if truth else abs(estimate)


def filled(values: list[float]) -> LatencyHistogram:
    h = LatencyHistogram()
    for v in values:
        h.add(v)
    return h


@pytest.mark.parametrize(
    ("q", "n", "rank"),
    [(0.0, 10, 1), (0.5, 4, 2), (0.5, 5, 3), (0.95, 100, 95), (0.07, 100, 7), (1.0, 7, 7), (0.99, 1, 1)],
)
def test_nearest_rank(q: float, n: int, rank: int) -> None:
    assert nearest_rank(q, n) == rank


@pytest.mark.parametrize("q", [-0.01, 1.01, math.nan])
def test_quantile_outside_0_1_is_refused(q: float) -> None:
    with pytest.raises(ValueError):
        filled([1.0]).quantile(q)


def test_llmperf_trace_p50_p95_p99_within_2_percent() -> None:
    if not TRACE.exists():
        pytest.skip(f"{TRACE} is absent")
    values: list[float] = []
    with TRACE.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("error_code"):
                continue
            try:
                seconds = float(row["end_to_end_latency_s"])
            except (TypeError, ValueError):
                continue
            if math.isfinite(seconds) and seconds >= 0:
                values.append(seconds * 1000.0)
    assert len(values) > 2000  # the trace has 2,306 successful requests
    h = filled(values)
    assert h.count == len(values)
    for q in (0.5, 0.95, 0.99):
        err = rel_err(h.quantile(q), exact(values, q))
        assert err <= 0.02
        assert err <= h.relative_accuracy * (1 + 1e-9)


@settings(max_examples=200, deadline=None)
@given(st.lists(with_zeros, min_size=1, max_size=300), st.floats(min_value=0.0, max_value=1.0))
def test_quantile_within_2_percent_of_exact_nearest_rank(values: list[float], q: float) -> None:
    assert rel_err(filled(values).quantile(q), exact(values, q)) <= 0.02


@settings(max_examples=200, deadline=None)
@given(st.lists(with_zeros, max_size=100), st.lists(with_zeros, max_size=100))
def test_merge_equals_adding_everything_to_one(a: list[float], b: list[float]) -> None:
    merged = filled(a)
    merged.merge(filled(b))
    single = filled(a + b)
    got, want = merged.to_dict(), single.to_dict()
    assert got.pop("total") == pytest.approx(want.pop("total"))
    assert got == want
    assert merged.quantiles([0.5, 0.99]) == single.quantiles([0.5, 0.99])


def test_zero_and_sub_millisecond_values() -> None:
    h = filled([0.0, 0.0, 0.0, 0.004, 0.05, 0.3])
    assert h.quantile(0.5) == 0.0
    assert h.min == 0.0
    assert rel_err(h.quantile(0.6), 0.004) <= 0.01  # rank ceil(3.6) = 4
    assert rel_err(h.quantile(0.8), 0.05) <= 0.01  # rank ceil(4.8) = 5
    assert h.quantile(1.0) == 0.3  # clamped to the exact max


def test_values_outside_the_tracked_range_keep_exact_min_and_max() -> None:
    h = filled([1e-9, 5e12])
    assert (h.min, h.max) == (1e-9, 5e12)
    assert h.quantile(0.0) == 1e-9
    assert h.quantile(1.0) == 5e12


def test_memory_is_bounded_by_the_bucket_range() -> None:
    h = LatencyHistogram()
    for i in range(20_000):
        h.add(10 ** (-12 + i * 27 / 20_000))  # 1e-12 .. 1e15 ms, ever-new values
    assert h.count == 20_000
    assert len(h.to_dict()["buckets"]) <= 1 + math.ceil(math.log(MAX_MS / MIN_MS) / math.log(1.01 / 0.99)) + 1


def test_count_total_min_max_mean() -> None:
    h = filled([3.0, 1.0, 2.0])
    assert (h.count, h.total, h.min, h.max, h.mean) == (3, 6.0, 1.0, 3.0, 2.0)


def test_empty_histogram_reports_none() -> None:
    h = LatencyHistogram()
    assert (h.count, h.total, h.min, h.max, h.mean) == (0, 0.0, None, None, None)
    assert h.quantile(0.5) is None
    assert h.quantiles([0.5, 0.9]) == [None, None]


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_add_refuses_bad_values_and_leaves_state_untouched(bad: float) -> None:
    h = filled([5.0])
    with pytest.raises(ValueError):
        h.add(bad)
    assert (h.count, h.total, h.min, h.max) == (1, 5.0, 5.0, 5.0)


def test_quantiles_match_single_quantile_calls() -> None:
    h = filled([float(i) for i in range(1, 1001)])
    qs = [0.99, 0.5, 0.0, 0.95, 1.0]
    assert h.quantiles(qs) == [h.quantile(q) for q in qs]
    assert rel_err(h.quantile(0.95), 950.0) <= 0.01


def test_to_dict_is_json_and_round_trips() -> None:
    h = filled([0.0, 0.2, 12.5, 12.6, 900.0])
    data = json.loads(json.dumps(h.to_dict()))
    back = LatencyHistogram.from_dict(data)
    assert back.to_dict() == h.to_dict()
    assert back.quantiles([0.0, 0.5, 1.0]) == h.quantiles([0.0, 0.5, 1.0])
    assert data["zero"] == 1 and sum(data["buckets"].values()) == 4


def test_from_dict_rejects_inconsistent_data() -> None:
    data = filled([1.0, 2.0]).to_dict()
    data["count"] = 3
    with pytest.raises(ValueError, match="count"):
        LatencyHistogram.from_dict(data)
    with pytest.raises(ValueError):
        LatencyHistogram.from_dict({"buckets": {}})


def test_reset_forgets_everything() -> None:
    h = filled([1.0, 0.0])
    h.reset()
    assert h.to_dict() == LatencyHistogram().to_dict()


def test_merge_requires_the_same_accuracy() -> None:
    with pytest.raises(ValueError, match="relative accuracy"):
        LatencyHistogram(0.01).merge(LatencyHistogram(0.02))


def test_merge_with_itself_doubles_counts() -> None:
    h = filled([1.0, 2.0])
    h.merge(h)
    assert (h.count, h.total) == (4, 6.0)
    assert sum(h.to_dict()["buckets"].values()) == 4

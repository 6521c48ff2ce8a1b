"""The shipped workload: a realistic day of LLM traffic, derived from real traces.

``engine/data/workload.json`` (written by ``scripts/derive_workload.py``;
sources and licences in ``engine/data/NOTICE.md``) holds aggregates of the
Azure LLM inference trace 2023 (arrivals per minute, token counts) and the
LLMPerf leaderboard 2023 (latencies, failure sequences). :func:`load_workload`
reads it; :func:`arrivals` turns it into the requests of a simulated day:

* the per-minute rate of each trace (``code``, ``conv``) is its per-minute
  request count in the Azure trace, cycled through the day, times the
  diurnal profile (linear between hour midpoints), scaled so the day holds
  ``calls_per_day`` requests (times ``scale``); arrivals within a minute are
  a Poisson process;
* each request draws its context and generated tokens, independently, from
  its trace's empirical distribution (the two are nearly uncorrelated in the
  traces: Spearman 0.07 conv, -0.02 code), and its tier from the trace's
  ``tier_mix``;
* each request carries one uniform draw ``u``: a model's latency for it is
  the ``u``-quantile of the time to first token plus the ``u``-quantile of the
  decode time per token times its output tokens, from the LLMPerf run mapped
  to the model (``latency.model_runs``, else ``latency.tier_runs`` by home tier).

Everything is drawn from ``random.Random(seed)``: a seed gives the same day.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_WORKLOAD", "Load", "Request", "Workload", "WorkloadError", "arrivals", "interpolate",
           "load_workload", "local_epoch"]

DEFAULT_WORKLOAD = Path(__file__).resolve().parent.parent / "data" / "workload.json"
FORMAT = "llm-policy-engine workload"
MINUTES_PER_DAY = 1440


class WorkloadError(ValueError):
    """The workload file is missing, unreadable or not in the expected shape."""


class Request:
    """One request of the simulated day (or of a replayed trace)."""

    __slots__ = ("arrival", "tier", "tokens_in", "tokens_out", "u", "source", "index")

    def __init__(self, arrival: float, tier: str, tokens_in: int, tokens_out: int, u: float,
                 source: str = "", index: int = 0) -> None:
        self.arrival = arrival
        self.tier = tier
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out
        self.u = u
        self.source = source
        self.index = index

    def __repr__(self) -> str:
        return (f"Request(arrival={self.arrival:.3f}, tier={self.tier!r}, tokens_in={self.tokens_in}, "
                f"tokens_out={self.tokens_out}, source={self.source!r})")


@dataclass(frozen=True)
class LatencyRun:
    """Quantiles (evenly spaced, min to max) of one LLMPerf run's successful requests."""

    name: str
    ttft_s: tuple[float, ...]
    decode_s_per_token: tuple[float, ...]
    pattern: str
    e2e_p50_s: float


@dataclass(frozen=True)
class TraceShape:
    per_minute: tuple[int, ...]
    context_tokens: tuple[float, ...]
    generated_tokens: tuple[float, ...]


@dataclass(frozen=True)
class FailureShape:
    """A success/error sequence in request order: '.' ok, 'r' HTTP 429, 'x' truncated, 'e' other."""

    name: str
    runs: tuple[str, ...]
    pattern: str
    truncated_output_fraction: tuple[float, ...] = ()


@dataclass(frozen=True)
class Load:
    """Extra arrivals on top of the day (a scripted batch job): ``rate_per_min`` to ``tier``
    between local hours ``start_h`` and ``end_h``, tokens drawn from trace ``source``."""

    tier: str
    start_h: float
    end_h: float
    rate_per_min: float
    source: str = "conv"


@dataclass(frozen=True)
class Workload:
    path: str
    calls_per_day: int
    diurnal: tuple[float, ...]
    traces: Mapping[str, TraceShape]
    tier_mix: Mapping[str, tuple[tuple[str, float], ...]]
    runs: Mapping[str, LatencyRun]
    model_runs: Mapping[str, str]
    tier_runs: Mapping[str, str]
    failure_shapes: Mapping[str, FailureShape]
    sources: tuple[Mapping[str, Any], ...]

    def run_for(self, model: str, home_tier: str) -> LatencyRun:
        """The LLMPerf run whose latencies stand in for ``model``."""
        name = self.model_runs.get(model) or self.tier_runs.get(home_tier) or next(iter(self.tier_runs.values()))
        return self.runs[name]

    def minute_rates(self, scale: float = 1.0) -> dict[str, list[float]]:
        """Expected arrivals in each minute of the day, per trace (local minute 0 = midnight)."""
        shape = [_diurnal(self.diurnal, m) for m in range(MINUTES_PER_DAY)]
        raw: dict[str, list[float]] = {}
        for name, trace in self.traces.items():
            counts = trace.per_minute
            raw[name] = [counts[m % len(counts)] * shape[m] for m in range(MINUTES_PER_DAY)]
        total = sum(sum(v) for v in raw.values())
        k = self.calls_per_day * scale / total
        return {name: [x * k for x in v] for name, v in raw.items()}

    def describe(self) -> str:
        names = ", ".join(f"{s.get('name')} ({s.get('license')})" for s in self.sources)
        return f"{self.path}: {names}"


def _diurnal(hours: Sequence[float], minute: int) -> float:
    """The diurnal weight at ``minute`` of the day, linear between hour midpoints (cyclic)."""
    h = (minute + 0.5) / 60.0 - 0.5
    lo = math.floor(h)
    f = h - lo
    return hours[lo % 24] * (1 - f) + hours[(lo + 1) % 24] * f


def interpolate(points: Sequence[float], u: float) -> float:
    """The ``u``-quantile (0 <= u <= 1) of evenly spaced quantile ``points``, linear between them."""
    x = u * (len(points) - 1)
    i = int(x)
    if i >= len(points) - 1:
        return points[-1]
    lo = points[i]
    return lo + (points[i + 1] - lo) * (x - i)


# -- loading ---------------------------------------------------------------------------
def load_workload(path: str | Path | None = None) -> Workload:
    """Read and check a workload file (default: the shipped ``engine/data/workload.json``)."""
    p = Path(path) if path is not None else DEFAULT_WORKLOAD
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WorkloadError(f"{p}: cannot read the workload file: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WorkloadError(f"{p}: not a JSON workload file: {exc}") from exc
    try:
        return _parse(str(p), data)
    except WorkloadError as exc:
        raise WorkloadError(f"{p}: {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise WorkloadError(f"{p}: not in the expected shape: {type(exc).__name__}: {exc}") from exc


def _floats(values: Iterable[Any], what: str, minimum: int = 2, sorted_: bool = True) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if len(out) < minimum or any(not math.isfinite(v) or v < 0 for v in out):
        raise WorkloadError(f"{what}: expected at least {minimum} finite numbers >= 0")
    if sorted_ and any(b < a for a, b in itertools.pairwise(out)):
        raise WorkloadError(f"{what}: quantiles must not decrease")
    return out


def _parse(path: str, data: Any) -> Workload:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise WorkloadError(f"expected a JSON object with format {FORMAT!r}")
    if data.get("version") != 1:
        raise WorkloadError(f"unsupported workload version {data.get('version')!r}; expected 1")
    day = data["day"]
    diurnal = _floats(day["diurnal"], "day.diurnal", 24, sorted_=False)
    if len(diurnal) != 24 or not any(diurnal):
        raise WorkloadError("day.diurnal: expected 24 hourly weights, not all zero")
    traces = {}
    for name, t in data["traces"].items():
        per_minute = tuple(int(v) for v in t["per_minute"])
        if not per_minute or min(per_minute) < 0 or not sum(per_minute):
            raise WorkloadError(f"traces.{name}.per_minute: expected counts >= 0, not all zero")
        traces[name] = TraceShape(per_minute, _floats(t["context_tokens"], f"traces.{name}.context_tokens"),
                                  _floats(t["generated_tokens"], f"traces.{name}.generated_tokens"))
    mix = {}
    for name, shares in data["tier_mix"].items():
        if name not in traces:
            raise WorkloadError(f"tier_mix names trace {name!r}, which is not in traces")
        pairs = tuple((str(tier), float(w)) for tier, w in shares.items())
        if not pairs or any(w < 0 for _, w in pairs) or not sum(w for _, w in pairs):
            raise WorkloadError(f"tier_mix.{name}: expected tier shares >= 0, not all zero")
        mix[name] = pairs
    if set(mix) != set(traces):
        raise WorkloadError(f"tier_mix must give shares for every trace: {', '.join(sorted(traces))}")
    lat = data["latency"]
    runs = {name: LatencyRun(name, _floats(r["ttft_s"], f"latency.runs.{name}.ttft_s"),
                             _floats(r["decode_s_per_token"], f"latency.runs.{name}.decode_s_per_token"),
                             str(r["pattern"]), float(r["e2e_p50_s"]))
            for name, r in lat["runs"].items()}
    model_runs = {str(m): str(r) for m, r in lat["model_runs"].items()}
    tier_runs = {str(t): str(r) for t, r in lat["tier_runs"].items()}
    unknown = sorted({*model_runs.values(), *tier_runs.values()} - set(runs))
    if unknown or not tier_runs:
        raise WorkloadError(f"latency: model_runs/tier_runs name unknown runs: {', '.join(unknown)}")
    shapes = {}
    for name, s in data["failure_shapes"].items():
        pattern = str(s["pattern"])
        if not pattern or set(pattern) - set(".rxe"):
            raise WorkloadError(f"failure_shapes.{name}.pattern: expected characters of '.rxe'")
        frac = s.get("truncated_output_fraction", ())
        shapes[name] = FailureShape(name, tuple(s.get("runs", ())), pattern,
                                    _floats(frac, f"failure_shapes.{name}.truncated_output_fraction") if frac
                                    else ())
    return Workload(path, int(day["calls_per_day"]), diurnal, traces, mix, runs, model_runs, tier_runs, shapes,
                    tuple(data.get("sources", ())))


# -- the day's requests ------------------------------------------------------------------
def local_epoch(day_start: float, hour: float, tz: tzinfo | None = None) -> float:
    """Epoch seconds of local wall-clock ``hour`` (0-24) of the day starting at ``day_start``.

    With ``tz`` the hour is read on the wall clock of that zone, so on a
    daylight-saving day 03:00 is not 3 h after midnight and hour 24 is the
    real next local midnight (an hour the clocks skip maps past the gap).
    Without, every day is 24 h long (``day_start + hour * 3600``).
    """
    if tz is None:
        return day_start + hour * 3600.0
    midnight = datetime.fromtimestamp(day_start, tz).replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    return (midnight + timedelta(hours=hour)).replace(tzinfo=tz).timestamp()


def _local_minutes(day_start: float, tz: tzinfo | None) -> list[int]:
    """The local wall-clock minute of the day (0-1439) of each real minute from local midnight to the next."""
    if tz is None:
        return list(range(MINUTES_PER_DAY))
    n = round((local_epoch(day_start, 24.0, tz) - day_start) / 60)
    out = []
    for m in range(n):
        wall = datetime.fromtimestamp(day_start + m * 60.0, tz)
        out.append(min(MINUTES_PER_DAY - 1, wall.hour * 60 + wall.minute))
    return out


def arrivals(workload: Workload, *, seed: int, day_start: float, start_h: float = 0.0, hours: float = 24.0,
             scale: float = 1.0, loads: Sequence[Load] = (), tz: tzinfo | None = None) -> list[Request]:
    """The requests arriving between local hours ``start_h`` and ``start_h + hours`` of the day
    that starts at ``day_start`` (epoch seconds of local midnight), sorted by arrival.

    With ``tz`` (the report's time zone) the hours are wall-clock hours of
    that zone and a daylight-saving day has 23 or 25 hours of traffic: each
    real minute takes the rate of its local minute (a repeated hour has the
    traffic of that hour twice) and the window ends at the real next local
    midnight at the latest. Without, every day has 24 hours.

    Each minute of each trace draws from its own ``random.Random`` seeded
    with ``seed``, the trace and the minute, so a window holds exactly the
    requests the whole day has in it. ``loads`` add scripted extra arrivals.
    """
    day_rates = workload.minute_rates(scale)
    local = _local_minutes(day_start, tz)
    day_end = local_epoch(day_start, 24.0, tz) - day_start
    rates = {name: [v[m] for m in local] for name, v in day_rates.items()}
    first = local_epoch(day_start, start_h, tz) - day_start
    last = min(day_end, local_epoch(day_start, start_h + hours, tz) - day_start)
    first_minute, last_minute = int(first // 60), min(len(local), math.ceil(last / 60))
    out: list[Request] = []
    for name in sorted(rates):
        out.extend(_minutes(f"{seed}:{name}", workload, name, rates[name], first_minute, last_minute))
    for i, load in enumerate(loads):
        per_minute = [load.rate_per_min * scale if load.start_h * 60 <= local[m] < load.end_h * 60 else 0.0
                      for m in range(len(local))]
        out.extend(_minutes(f"{seed}:load{i}:{load.source}", workload, load.source, per_minute, first_minute,
                            last_minute, tier=load.tier))
    kept = [r for r in out if first <= r.arrival < last]
    kept.sort(key=lambda r: r.arrival)
    for i, r in enumerate(kept):
        r.arrival += day_start
        r.index = i
    return kept


def _minutes(stream: str, workload: Workload, name: str, rates: Sequence[float], first: int, last: int,
             tier: str | None = None) -> list[Request]:
    """Poisson arrivals of trace ``name`` in real minutes [first, last) (seconds since local midnight)."""
    trace = workload.traces[name]
    ctx, gen = trace.context_tokens, trace.generated_tokens
    tiers = [t for t, _ in workload.tier_mix[name]]
    cum, acc = [], 0.0
    for _, w in workload.tier_mix[name]:
        acc += w
        cum.append(acc)
    out = []
    for m in range(first, last):
        rate = rates[m]
        if rate <= 0:
            continue
        rng = random.Random(f"{stream}:{m}")  # noqa: S311 - a reproducible day, not cryptography
        rand, expo = rng.random, rng.expovariate
        t = m * 60.0 + expo(rate / 60.0)
        end = (m + 1) * 60.0
        while t < end:
            tin = max(1, round(interpolate(ctx, rand())))
            tout = max(1, round(interpolate(gen, rand())))
            if tier is None:
                x = rand() * acc
                k = 0
                while k < len(cum) - 1 and x >= cum[k]:
                    k += 1
                chosen = tiers[k]
            else:
                chosen = tier
            out.append(Request(t, chosen, tin, tout, rand(), name))
            t += expo(rate / 60.0)
    return out

"""``policy-engine replay``: a recorded trace through one or two policy sets, side by side.

The trace (:mod:`engine.sim.trace`; the shared traces and the engine's history
convert on the fly, :mod:`engine.sim.convert`) becomes calls, grouped by
``request_id`` (a line without one is a call of its own), each arriving at
its first line's time for its tier (or its model's home tier). Each policy set
gets a fresh in-memory engine on a ``FakeClock`` and the same calls, run
concurrently through ``acall`` (:mod:`engine.sim.driver`).

What a model answers when the engine tries it for a call — the trace is
taken as evidence of each model's health over time:

1. the call's own recorded attempt on that model, if any (its outcome and
   latency; a second try of the model takes the next recorded attempt on it,
   or the last again);
2. for a call whose lines name no model, its recorded outcomes apply to its
   first attempts, in order;
3. otherwise the nearest recorded attempt on that model (any call) within
   ``horizon_s`` seconds decides success or failure (its error class); none
   that close: success;
4. a success without a recorded latency takes the call's own recorded
   latency if it has one, else the workload's LLMPerf latency of the model
   (:mod:`engine.sim.workload`); a failure without one, 50-150 ms.

A line naming a model that none of the policy sets knows is a malformed line
(with a "did you mean"), tier or not: skipped, or fatal with ``--strict``.

Tokens: a call's prompt is its largest recorded ``input_tokens``; its output
is the ``output_tokens`` of its successful line, else the largest recorded
(if that is 0: the median output of the trace's successful lines of its tier).
What counts as spent is the same as in ``simulate`` (:mod:`engine.sim.tally`).
"""

from __future__ import annotations

import random
import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.core import PolicyEngine
from engine.policy.loader import load_policies
from engine.policy.model import PolicySet
from engine.policy.problems import Suggester
from engine.sim.driver import run_engine
from engine.sim.tally import Tally, prices
from engine.sim.trace import LineProblem, Trace, TraceLine
from engine.sim.workload import Request, Workload, load_workload
from engine.sim.world import GOLDEN, World
from engine.testing import FakeClock

__all__ = ["DEFAULT_HORIZON_S", "ReplayError", "ReplayResult", "prepare", "replay"]

DEFAULT_HORIZON_S = 60.0
Outcome = tuple["str | None", "float | None"]  # (error class or None, latency s or None)


class ReplayError(Exception):
    """A replayed failure of error class ``error_class``."""

    def __init__(self, error_class: str) -> None:
        super().__init__(f"recorded {error_class}")
        self.error_class = error_class


def classify_replayed(exc: BaseException) -> tuple[str, float | None]:
    return (exc.error_class, None) if isinstance(exc, ReplayError) else ("server_error", None)


@dataclass
class _Recorded:
    models: dict[str, list[Outcome]] = field(default_factory=dict)
    anonymous: list[Outcome] = field(default_factory=list)
    ok_latency: float | None = None


@dataclass
class Prepared:
    requests: list[Request]
    recorded: dict[int, _Recorded]
    timelines: dict[str, tuple[list[float], list[Outcome]]]
    problems: list[LineProblem]
    lines_used: int


class _Checker:
    """Checks trace lines against the policy sets; its "did you mean" suggesters are built once, not per line."""

    def __init__(self, policies: Sequence[PolicySet]) -> None:
        self.policies = policies
        self.classes = set().union(*(p.error_classes for p in policies))
        self.known = set().union(*(p.models for p in policies))
        self._tiers = [Suggester(p.tiers) for p in policies]
        self._models = [Suggester(p.models) for p in policies]
        self._known = Suggester(self.known)
        self._classes = Suggester(self.classes)
        self._expected = [", ".join(p.tiers) for p in policies]
        self._outcomes = ", ".join(sorted(self.classes))

    def problem(self, ln: TraceLine) -> str | None:
        """What is wrong with ``ln``, or None."""
        for i, p in enumerate(self.policies):
            if ln.tier is not None and ln.tier not in p.tiers:
                return f"unknown tier {ln.tier!r}{self._tiers[i].hint(ln.tier)}; expected one of {self._expected[i]}"
            if ln.tier is None and ln.model not in p.models:
                return (f"unknown model {ln.model!r}{self._models[i].hint(str(ln.model))} and no tier: "
                        "cannot tell which tier to call")
        # with a tier, a model only needs to be known to one of the sets (--compare may drop a model);
        # one that none knows is a typo whose recorded outcomes would otherwise never be used
        if ln.model is not None and ln.model not in self.known:
            return f"unknown model {ln.model!r}{self._known.hint(ln.model)}: its recorded outcomes would never apply"
        if ln.outcome is not None and ln.outcome not in self.classes:
            return (f"unknown outcome {ln.outcome!r}{self._classes.hint(ln.outcome)}; expected ok or one of "
                    f"{self._outcomes}")
        return None


def prepare(trace: Trace, policies: Sequence[PolicySet], *, seed: int) -> Prepared:
    """Check the trace's lines against the policy sets and group them into calls."""
    checker = _Checker(policies)
    problems = list(trace.problems)
    good: list[TraceLine] = []
    for ln in trace.lines:
        why = checker.problem(ln)
        if why is None:
            good.append(ln)
        else:
            problems.append(LineProblem(ln.line, why))
    problems.sort(key=lambda p: p.line)
    groups: dict[str, list[TraceLine]] = {}
    singles: list[list[TraceLine]] = []
    for ln in good:
        if ln.request_id is None:
            singles.append([ln])
        else:
            groups.setdefault(ln.request_id, []).append(ln)
    calls = singles + list(groups.values())
    for c in calls:
        c.sort(key=lambda ln: ln.timestamp)
    calls.sort(key=lambda c: (c[0].timestamp, c[0].line))
    home = policies[0].models
    medians = _median_outputs(good, home)
    rng = random.Random(seed)  # noqa: S311 - latency draws, reproducible
    requests, recorded = [], {}
    for i, c in enumerate(calls):
        tier = c[0].tier or home[c[0].model or ""].tier
        ok = [ln for ln in c if ln.outcome is None]
        tout = ok[0].output_tokens if ok else max(ln.output_tokens for ln in c)
        req = Request(c[0].timestamp, tier, max(ln.input_tokens for ln in c), tout or medians.get(tier, 1),
                      rng.random(), "trace", i)
        requests.append(req)
        rec = _Recorded(ok_latency=next((ln.latency_ms / 1000 for ln in ok if ln.latency_ms is not None), None))
        for ln in c:
            got = (ln.outcome, None if ln.latency_ms is None else ln.latency_ms / 1000)
            if ln.model is None:
                rec.anonymous.append(got)
            else:
                rec.models.setdefault(ln.model, []).append(got)
        if rec.models or rec.anonymous or rec.ok_latency is not None:
            recorded[i] = rec
    timelines: dict[str, tuple[list[float], list[Outcome]]] = {}
    for ln in sorted((ln for ln in good if ln.model is not None), key=lambda ln: ln.timestamp):
        times, outs = timelines.setdefault(ln.model or "", ([], []))
        times.append(ln.timestamp)
        outs.append((ln.outcome, None if ln.latency_ms is None else ln.latency_ms / 1000))
    return Prepared(requests, recorded, timelines, problems, len(good))


def _median_outputs(lines: Sequence[TraceLine], home: Any) -> dict[str, int]:
    by: dict[str, list[int]] = {}
    for ln in lines:
        if ln.outcome is None and ln.output_tokens:
            by.setdefault(ln.tier or home[ln.model].tier, []).append(ln.output_tokens)
    return {t: sorted(v)[len(v) // 2] for t, v in by.items()}


class ReplayWorld:
    """How each model answers, from the trace (see the module docstring)."""

    def __init__(self, prepared: Prepared, latency: World, horizon_s: float) -> None:
        self.p = prepared
        self.latency = latency
        self.horizon = horizon_s
        self.tries: dict[tuple[int, str], int] = {}
        self.quota_refusals = 0

    def attempt(self, model: str, now: float, req: Request, k: int) -> tuple[str | None, float, int, int]:
        u = (req.u + k * GOLDEN) % 1.0
        rec = self.p.recorded.get(req.index)
        got: Outcome | None = None
        if rec is not None:
            mine = rec.models.get(model)
            if mine:
                key = (req.index, model)
                j = self.tries.get(key, 0)
                self.tries[key] = j + 1
                got = mine[min(j, len(mine) - 1)]
            elif not rec.models and k < len(rec.anonymous):
                got = rec.anonymous[k]
        if got is None:
            got = self._nearest(model, now)
        error, latency = got
        if error is None:
            if latency is None:
                latency = rec.ok_latency if rec is not None and rec.ok_latency is not None else \
                    self.latency.latency(model, u, req.tokens_out)
            return None, latency, req.tokens_in, req.tokens_out
        return error, latency if latency is not None else 0.05 + 0.1 * u, req.tokens_in, 0

    def _nearest(self, model: str, now: float) -> Outcome:
        line = self.p.timelines.get(model)
        if line is None:
            return None, None
        times, outs = line
        i = bisect_left(times, now)
        best, gap = None, self.horizon
        for j in (i - 1, i):
            if 0 <= j < len(times) and abs(times[j] - now) <= gap:
                best, gap = j, abs(times[j] - now)
        if best is None or outs[best][0] is None:
            return None, None
        return outs[best][0], outs[best][1]


@dataclass
class ReplayResult:
    trace: Trace
    prepared: Prepared
    labels: list[str]
    paths: list[str]
    summaries: list[dict[str, Any]]
    timezone: str
    timings: dict[str, float]


def labels_for(paths: Sequence[Path]) -> list[str]:
    names = [p.name or str(p) for p in paths]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in paths] if len({str(p) for p in paths}) == len(paths) else \
        [f"{n} ({'AB'[i]})" for i, n in enumerate(names)]


def replay(trace: Trace, policy_dirs: Sequence[Path], *, seed: int = 1, horizon_s: float = DEFAULT_HORIZON_S,
           workload: Workload | None = None, policies: Sequence[PolicySet] | None = None,
           prepared: Prepared | None = None, progress: Any = None) -> ReplayResult:
    """Replay ``trace`` through each policy set (``policy_dirs``: one or two)."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    sets = list(policies) if policies is not None else [load_policies([d]) for d in policy_dirs]
    wl = workload or load_workload()
    if prepared is None:
        prepared = prepare(trace, sets, seed=seed)
    timings["prepare_s"] = time.perf_counter() - t
    summaries = []
    labels = labels_for(policy_dirs)
    for d, policy, label in zip(policy_dirs, sets, labels, strict=True):
        t = time.perf_counter()
        start = prepared.requests[0].arrival if prepared.requests else 0.0
        clock = FakeClock(start)
        engine = PolicyEngine(policy, clock=clock, store="memory://", paths=[d])
        world = ReplayWorld(prepared, World(wl, policy, [], start), horizon_s)
        tally = Tally(label, label, prices(policy))
        try:
            run_engine(engine, clock, world, prepared.requests, tally, seed=seed,
                       make_exc=lambda kind, _out: ReplayError(kind), classifier=classify_replayed,
                       progress=progress(label, len(prepared.requests)) if progress else None)
        finally:
            engine.close()
        summaries.append(tally.summary())
        timings[f"run_{len(summaries)}_s"] = time.perf_counter() - t
    return ReplayResult(trace, prepared, labels, [str(d) for d in policy_dirs], summaries,
                        sets[0].report.timezone, timings)

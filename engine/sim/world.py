"""The simulated providers: how long each model takes and when it fails.

One :class:`World` per strategy run (engine, baselines): it holds the state
of the scripted faults (the position in a storm sequence, a quota's usage),
so every strategy meets the same providers from the same starting point.
:meth:`World.attempt` answers one call attempt:

* healthy: latency = the run's ``u``-quantile time to first token plus its
  ``u``-quantile decode time per token times the request's output tokens
  (``u`` is the request's draw, moved on by the golden ratio for each further
  attempt of the same request, so retries do not repeat the same latency);
* under a fault: see :mod:`engine.sim.scenarios`.

The answer is ``(kind, latency_s, tokens_in, tokens_out)``: ``kind`` is
``None`` for a success, else one of :data:`KINDS`; the token counts are what
the attempt *spent*: the prompt of every attempt, the output of a success
and the partial output of a truncated answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import tzinfo
from types import SimpleNamespace
from typing import Any

from engine.budget import period_bounds
from engine.policy.model import PolicySet
from engine.sim.scenarios import ResolvedFault
from engine.sim.workload import Request, Workload, interpolate, local_epoch

__all__ = ["GOLDEN", "KINDS", "ProviderError", "TruncatedResponse", "World", "exception_for"]

GOLDEN = 0.6180339887498949
#: Error kinds a simulated provider answers with.
KINDS = ("http_503", "http_429", "quota", "truncated")
Answer = tuple[str | None, float, int, int]


class ProviderError(Exception):
    """What an SDK raises for an HTTP error: ``status_code`` and ``response.headers``."""

    def __init__(self, status_code: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.response = SimpleNamespace(status_code=status_code, headers=dict(headers or {}))


class TruncatedResponse(Exception):
    """The answer stopped early (LLMPerf's "too few output tokens"); the caller cannot use it."""


def exception_for(kind: str, delivered: int = 0) -> Exception:
    if kind == "http_503":
        return ProviderError(503, "service unavailable")
    if kind == "http_429":
        return ProviderError(429, "rate limit exceeded", {"retry-after": "1"})
    if kind == "quota":
        return ProviderError(429, "insufficient_quota: the account's token quota is used up")
    if kind == "truncated":
        return TruncatedResponse(f"the answer stopped after {delivered} output tokens")
    raise ValueError(f"unknown error kind {kind!r}")


class _Fault:
    __slots__ = ("kind", "start", "end", "pattern", "pos", "fractions", "run", "budget", "used", "period_end")

    def __init__(self, kind: str, start: float, end: float) -> None:
        self.kind = kind
        self.start = start
        self.end = end
        self.pattern = ""
        self.pos = 0
        self.fractions: Sequence[float] = ()
        self.run: tuple[Sequence[float], Sequence[float]] | None = None
        self.budget: Any = None
        self.used = 0
        self.period_end = float("-inf")


class World:
    def __init__(self, workload: Workload, policy: PolicySet, faults: Sequence[ResolvedFault],
                 day_start: float, tz: tzinfo | None = None) -> None:
        """``tz``: the zone whose wall-clock hours the faults' hours are (None: 24 h days from ``day_start``)."""
        self._latency: dict[str, tuple[Sequence[float], Sequence[float]]] = {}
        for name, spec in policy.models.items():
            run = workload.run_for(name, spec.tier)
            self._latency[name] = (run.ttft_s, run.decode_s_per_token)
        self._faults: dict[str, list[_Fault]] = {}
        for f in faults:
            shared = self._make(workload, f, day_start, tz)  # a storm's sequence is the provider's, shared
            for model in f.models:
                self._faults.setdefault(model, []).append(shared if f.kind != "quota"
                                                          else self._make(workload, f, day_start, tz))
        self.quota_refusals = 0

    @staticmethod
    def _make(workload: Workload, f: ResolvedFault, day_start: float, tz: tzinfo | None) -> _Fault:
        fault = _Fault(f.kind, local_epoch(day_start, f.start_h, tz), local_epoch(day_start, f.end_h, tz))
        if f.kind in ("storm", "truncating"):
            shape = workload.failure_shapes[f.shape or ""]
            fault.pattern, fault.fractions = shape.pattern, shape.truncated_output_fraction or (0.3,)
        elif f.kind == "slow":
            run = workload.runs[f.shape or ""]
            fault.run = (run.ttft_s, run.decode_s_per_token)
        elif f.kind == "quota":
            fault.budget = f.budget
        return fault

    def latency(self, model: str, u: float, tokens_out: int) -> float:
        ttft, decode = self._latency[model]
        return interpolate(ttft, u) + interpolate(decode, u) * tokens_out

    def attempt(self, model: str, now: float, req: Request, k: int) -> Answer:
        """How ``model`` answers attempt ``k`` (0 for the first) of ``req`` started at ``now``."""
        u = (req.u + k * GOLDEN) % 1.0
        faults = self._faults.get(model)
        if faults:
            for f in faults:
                if f.start <= now < f.end:
                    got = self._faulty(f, model, now, req, u)
                    if got is not None:
                        return got
        return None, self.latency(model, u, req.tokens_out), req.tokens_in, req.tokens_out

    def _faulty(self, f: _Fault, model: str, now: float, req: Request, u: float) -> Answer | None:
        kind = f.kind
        if kind == "outage":
            return "http_503", 0.05 + 0.25 * u, req.tokens_in, 0
        if kind == "quota":
            if now >= f.period_end:
                f.used = 0
                f.period_end = period_bounds(f.budget, now)[1] or float("inf")
            if f.used >= f.budget.tokens:
                self.quota_refusals += 1
                return "quota", 0.02 + 0.08 * u, req.tokens_in, 0
            f.used += req.tokens_in + req.tokens_out
            return None
        if kind == "slow":
            assert f.run is not None
            ttft, decode = f.run
            return None, interpolate(ttft, u) + interpolate(decode, u) * req.tokens_out, req.tokens_in, \
                req.tokens_out
        step = f.pattern[f.pos % len(f.pattern)]
        f.pos += 1
        if step == ".":
            return None
        if kind == "storm" or step in "re":
            return "http_429", 0.02 + 0.08 * u, req.tokens_in, 0
        delivered = max(1, round(interpolate(f.fractions, u) * req.tokens_out))
        return "truncated", self.latency(model, u, delivered), req.tokens_in, delivered

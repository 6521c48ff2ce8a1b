"""The two baselines the engine is measured against, on the same requests and the same providers.

Both run without an engine (no breaker, no budget, no fallback); each gets
its own :class:`~engine.sim.world.World`, so it meets the same scripted
faults from the same starting point. Requests are taken in arrival order;
a call's attempts follow one another in simulated time.

* **no-fallback** — each call goes once to its tier's primary (the first
  enabled candidate in ``routing.yaml``); a failure is a failed call.
* **naive retry** — the same primary, retried up to ``retries`` times on any
  failure, waiting the policy's own backoff (``routing.yaml`` ``retry``:
  exponential with jitter) or the 429's ``retry-after`` if longer. Every
  attempt spends its prompt tokens (see :mod:`engine.sim.tally`), which is
  why hammering a failing model costs tokens.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from engine.calling import backoff_delay
from engine.classify import classify
from engine.policy.model import PolicySet
from engine.sim.tally import Tally
from engine.sim.workload import Request
from engine.sim.world import World, exception_for

__all__ = ["primaries", "run_baselines"]

Progress = Callable[[float, int], None]


def primaries(policy: PolicySet) -> dict[str, str]:
    """Each tier's first enabled candidate."""
    return {t: next(m for m in spec.candidates if policy.models[m].enabled) for t, spec in policy.tiers.items()}


def run_baselines(policy: PolicySet, requests: Sequence[Request], worlds: tuple[World, World],
                  tallies: tuple[Tally, Tally], *, retries: int, seed: int,
                  progress: Progress | None = None, progress_every: int | None = None) -> None:
    """Fill ``tallies`` (no-fallback, naive retry) from ``requests``."""
    first = primaries(policy)
    spec = policy.retry
    jitter = random.Random(seed)  # noqa: S311 - backoff jitter, reproducible
    reasons: dict[str, str] = {}

    def reason(kind: str) -> str:
        if kind not in reasons:
            reasons[kind] = classify(exception_for(kind))[0]
        return reasons[kind]

    (w_none, w_naive), (t_none, t_naive) = worlds, tallies
    every = progress_every or max(1024, len(requests) // 100)
    for n, req in enumerate(requests, 1):
        model = first[req.tier]
        t0 = req.arrival
        kind, latency, tin, tout = w_none.attempt(model, t0, req, 0)
        t_none.spend(model, tin, tout)
        t_none.call(req.tier, kind is None, model, latency, None if kind is None else reason(kind))
        t = t0
        for k in range(retries + 1):
            kind, latency, tin, tout = w_naive.attempt(model, t, req, k)
            t_naive.spend(model, tin, tout)
            t += latency
            if kind is None:
                t_naive.call(req.tier, True, model, t - t0)
                if k:
                    t_naive.retried_same_model += 1
                break
            if k == retries:
                t_naive.call(req.tier, False, None, t - t0, reason(kind))
                break
            delay = backoff_delay(spec, k, jitter)
            if kind == "http_429" and spec.honour_retry_after:
                delay = max(delay, min(1.0, spec.max_retry_after_s))
            t += delay
        if progress is not None and n % every == 0:
            progress(t0, n)
    t_none.quota_refusals = w_none.quota_refusals
    t_naive.quota_refusals = w_naive.quota_refusals

"""Scripted incidents for ``policy-engine simulate``: what goes wrong, when, to whom.

A :class:`Scenario` is a list of :class:`Fault` s (a model misbehaves for a
while) and :class:`~engine.sim.workload.Load` s (extra traffic). Faults name
their victims by role — ``primary:L2`` is tier L2's first candidate,
``provider-of:L2`` every model of that model's provider — so a scenario runs
on any policy set; :func:`resolve` turns roles into model names for one
policy set (a role the set cannot fill is skipped, with a note).

Fault kinds (times are local hours of the simulated day):

* ``outage`` — every call answers HTTP 503 after 50-300 ms;
* ``storm`` — calls follow a recorded success/429 sequence (``shape``, the
  Lepton runs of LLMPerf: ~10 successes, then mostly HTTP 429 with
  ``retry-after: 1``), one step per call, cyclically;
* ``truncating`` — calls follow a Bedrock sequence of LLMPerf: an ``x``
  answers with too few output tokens after generating them (an error for
  the caller; its prompt and partial output are spent);
* ``quota`` — the provider enforces the target's own token budget of the
  policy set as an account quota: once the tokens of its successful calls
  reach the budget's limit in the budget's period, it answers HTTP 429
  ``insufficient_quota`` (no retry-after) until the period resets;
* ``slow`` — latencies come from another LLMPerf run (``shape``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.policy.model import BudgetSpec, PolicySet
from engine.sim.workload import Load

__all__ = ["SCENARIOS", "Fault", "ResolvedFault", "Scenario", "resolve"]


@dataclass(frozen=True)
class Fault:
    kind: str  # outage, storm, truncating, quota, slow
    target: str  # primary:TIER, provider-of:TIER, first:TIER (same as primary), model:NAME
    start_h: float
    end_h: float
    shape: str | None = None  # failure shape (storm, truncating) or LLMPerf run (slow)


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    faults: tuple[Fault, ...] = ()
    loads: tuple[Load, ...] = ()


@dataclass(frozen=True)
class ResolvedFault:
    kind: str
    models: tuple[str, ...]
    start_h: float
    end_h: float
    shape: str | None
    describe: str
    budget: BudgetSpec | None = field(default=None, compare=False)


_OUTAGE = Fault("outage", "primary:L2", 10.0, 11.0)
_STORM = Fault("storm", "primary:L1", 16.0, 16.75, "rate_limit_storm")
_QUOTA = Fault("quota", "primary:L4", 0.0, 24.0)
_BATCH = Load("L4", 12.0, 14.0, 40.0)

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("default", "L2 primary outage 10:00-11:00; L4 batch job 12:00-14:00 spends the L4 primary's "
             "daily budget (its provider quota); L1 primary 429 storm (LLMPerf Lepton) 16:00-16:45",
             (_OUTAGE, _QUOTA, _STORM), (_BATCH,)),
    Scenario("calm", "no incidents: the day's traffic on healthy models"),
    Scenario("l2-outage", "L2 primary answers HTTP 503 10:00-11:00", (_OUTAGE,)),
    Scenario("rate-limit-storm", "L1 primary answers in the LLMPerf Lepton 429 shape 16:00-16:45", (_STORM,)),
    Scenario("l4-budget", "L4 batch job 12:00-14:00 spends the L4 primary's daily budget (its provider quota)",
             (_QUOTA,), (_BATCH,)),
    Scenario("truncating", "L2 primary truncates like LLMPerf Bedrock 70B (33%) 09:00-12:00; L3's first "
             "candidate like Bedrock 13B (65%) 13:00-17:00",
             (Fault("truncating", "primary:L2", 9.0, 12.0, "truncating_33"),
              Fault("truncating", "primary:L3", 13.0, 17.0, "truncating_65"))),
    Scenario("provider-outage", "every model of the L2 primary's provider answers HTTP 503 14:00-14:30",
             (Fault("outage", "provider-of:L2", 14.0, 14.5),)),
    Scenario("slow-primary", "L2 primary answers with LLMPerf Replicate 70B latencies (p50 12 s, p99 75 s) "
             "09:00-12:00", (Fault("slow", "primary:L2", 9.0, 12.0, "replicate_70b"),)),
)}


def _hhmm(h: float) -> str:
    minutes = round(h * 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _targets(policy: PolicySet, target: str) -> tuple[tuple[str, ...], str] | str:
    """The models a role names, with a label; or why the role cannot be filled."""
    kind, _, arg = target.partition(":")
    if kind == "model":
        return ((arg,), arg) if arg in policy.models else f"no model {arg!r}"
    tier = policy.tiers.get(arg)
    if tier is None:
        return f"no tier {arg!r}"
    enabled = [m for m in tier.candidates if policy.models[m].enabled]
    if not enabled:
        return f"tier {arg} has no enabled candidate"
    first = enabled[0]
    if kind in ("primary", "first"):
        return (first,), f"{first} ({arg} primary)"
    if kind == "provider-of":
        provider = policy.models[first].provider
        models = tuple(m for m, spec in policy.models.items() if spec.provider == provider and spec.enabled)
        return models, f"every {provider} model ({', '.join(models)})"
    raise ValueError(f"unknown fault target {target!r}")


def _quota_budget(policy: PolicySet, model: str) -> BudgetSpec | None:
    for b in policy.budgets:
        if b.scope == "model" and b.target == model and b.tokens and b.period != "rolling":
            return b
    return None


def resolve(scenario: Scenario, policy: PolicySet) -> tuple[list[ResolvedFault], list[str]]:
    """The scenario's faults for ``policy``, and one note per fault that cannot apply."""
    faults: list[ResolvedFault] = []
    notes: list[str] = []
    for f in scenario.faults:
        got = _targets(policy, f.target)
        window = f"{_hhmm(f.start_h)}-{_hhmm(f.end_h)}"
        if isinstance(got, str):
            notes.append(f"{window} {f.kind} on {f.target} skipped: {got}")
            continue
        models, label = got
        if f.kind == "quota":
            budget = _quota_budget(policy, models[0])
            if budget is None:
                notes.append(f"quota on {label} skipped: it has no fixed-period token budget")
                continue
            faults.append(ResolvedFault("quota", models, f.start_h, f.end_h, None,
                                        f"quota    {label}: provider quota = budget {budget.name} "
                                        f"({budget.tokens:,} tokens {budget.period}); then HTTP 429", budget))
            continue
        what = {"outage": "answers HTTP 503",
                "storm": f"answers in the {f.shape} shape (HTTP 429, retry-after 1)",
                "truncating": f"truncates answers in the {f.shape} shape",
                "slow": f"answers with {f.shape} latencies"}[f.kind]
        faults.append(ResolvedFault(f.kind, models, f.start_h, f.end_h, f.shape,
                                    f"{f.kind:<8} {window} {label} {what}"))
    return faults, notes


def describe_loads(scenario: Scenario) -> list[str]:
    return [f"load     {_hhmm(ld.start_h)}-{_hhmm(ld.end_h)} +{ld.rate_per_min:g} {ld.tier} requests/min "
            f"({ld.source} tokens)" for ld in scenario.loads]

"""Find, load and run policy test files; measure what they cover of the policy sets they test."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from engine.policy.loader import check
from engine.policy.model import PolicySet
from engine.policy.problems import Problem
from engine.policytest.run import Exercised, Result, run_case
from engine.policytest.spec import TestFile, load, test_files

CATEGORIES = ("breakers", "budgets", "candidates", "anomaly rules", "recommendation rules")


@dataclass(slots=True)
class Coverage:
    """Per category: the items a policy set has and those the tests exercised."""

    total: dict[str, set[str]] = field(default_factory=lambda: {c: set() for c in CATEGORIES})
    hit: dict[str, set[str]] = field(default_factory=lambda: {c: set() for c in CATEGORIES})

    def add(self, where: str, policy: PolicySet, ex: Exercised) -> None:
        prefix = f"{where}:" if where else ""
        items = {
            "breakers": (set(policy.models), ex.breakers),
            "budgets": ({b.name for b in policy.budgets}, ex.budgets),
            "candidates": ({f"{t}/{m}" for t, s in policy.tiers.items() for m in s.candidates},
                           {f"{t}/{m}" for t, m in ex.candidates}),
            "anomaly rules": ({r.name for r in policy.monitoring.anomalies}, ex.anomalies),
            "recommendation rules": ({r.name for r in policy.recommendations}, ex.recommendations),
        }
        for cat, (have, done) in items.items():
            self.total[cat] |= {prefix + x for x in have}
            self.hit[cat] |= {prefix + x for x in done & have}

    def percent(self, cat: str | None = None) -> float:
        cats = [cat] if cat else list(CATEGORIES)
        total = sum(len(self.total[c]) for c in cats)
        return 100.0 if total == 0 else 100.0 * sum(len(self.hit[c]) for c in cats) / total

    def missed(self, cat: str) -> list[str]:
        return sorted(self.total[cat] - self.hit[cat])


@dataclass(slots=True)
class Outcome:
    results: list[Result] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # test files or policy sets that are invalid
    coverage: Coverage = field(default_factory=Coverage)
    selected: int = 0


def run(paths: list[str], pattern: str | None = None) -> Outcome:
    """Run every test in ``paths`` (whose ``file::name`` matches ``pattern``, a regular expression)."""
    out = Outcome()
    files, out.problems = test_files(paths)
    loaded: list[TestFile] = []
    for path in files:
        tf, problems = load(path)
        out.problems.extend(problems)
        if tf is not None:
            loaded.append(tf)
    sets: dict[Path, PolicySet | None] = {}
    for tf in loaded:
        if tf.policies not in sets:
            policy, problems = check([tf.policies])
            sets[tf.policies] = policy
            out.problems.extend(p for p in problems if p.is_error)
    if out.problems:
        return out
    wanted = re.compile(pattern) if pattern else None
    exercised: dict[Path, Exercised] = {d: Exercised() for d in sets}
    for tf in loaded:
        policy = sets[tf.policies]
        assert policy is not None
        for case in tf.cases:
            if wanted is not None and not wanted.search(case.id):
                continue
            out.selected += 1
            result = run_case(case, policy, tf.policies)
            out.results.append(result)
            exercised[tf.policies].update(result.exercised)
    several = len(sets) > 1
    for where, policy in sets.items():
        assert policy is not None
        out.coverage.add(str(where) if several else "", policy, exercised[where])
    return out

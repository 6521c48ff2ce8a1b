"""Run one policy test case: script what happens on a fake clock, then check what the engine did.

The scripted steps and the expectations are merged in time order (at the same
time, steps first, then expectations, each in file order). Anomaly rules are
evaluated on the policy's schedule as time passes. What each case exercised
(breakers opened, budgets warned or exhausted, candidates chosen, anomaly and
recommendation rules fired) is collected for the coverage summary.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from engine.core import PolicyEngine
from engine.errors import NoModelAvailable
from engine.events import (
    AnomalyDetected,
    AnomalyResolved,
    BudgetExhausted,
    BudgetWarning,
    CircuitOpened,
    Event,
)
from engine.outcome import Decision, Outcome
from engine.policy.model import PolicySet
from engine.policytest.spec import Step, TestCase, duration
from engine.testing import FakeClock

#: Events shown before a failed expectation.
CONTEXT_EVENTS = 8
#: At most this many anomaly evaluations are made in one quiet stretch between steps.
MAX_TICKS_PER_GAP = 5000
DEFAULT_LATENCY_MS = 500.0


@dataclass(slots=True)
class Exercised:
    """What tests exercised, by name; the coverage summary compares it with the policy set."""

    breakers: set[str] = field(default_factory=set)
    budgets: set[str] = field(default_factory=set)
    candidates: set[tuple[str, str]] = field(default_factory=set)
    anomalies: set[str] = field(default_factory=set)
    recommendations: set[str] = field(default_factory=set)

    def update(self, other: Exercised) -> None:
        self.breakers |= other.breakers
        self.budgets |= other.budgets
        self.candidates |= other.candidates
        self.anomalies |= other.anomalies
        self.recommendations |= other.recommendations


@dataclass(frozen=True, slots=True)
class Failure:
    line: int
    what: str
    expected: str
    actual: str
    events: tuple[str, ...] = ()


@dataclass(slots=True)
class Result:
    case: TestCase
    failures: list[Failure] = field(default_factory=list)
    error: str | None = None  # the case could not run (an unknown model, a bad reload...)
    calls: int = 0
    seconds: float = 0.0
    exercised: Exercised = field(default_factory=Exercised)

    @property
    def passed(self) -> bool:
        return not self.failures and self.error is None


class _Setup(Exception):
    """A step the policy set cannot run (an unknown model or tier, a reload that failed)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


def _tokens(value: Any) -> tuple[int, int]:
    if value is None:
        return 0, 0
    if isinstance(value, int):
        return value - value // 5, value // 5
    return int(value["input"]), int(value["output"])


class _Run:
    def __init__(self, case: TestCase, policy: PolicySet, policy_dir: Path, work: Path) -> None:
        self.case, self.result = case, Result(case)
        self.tz = ZoneInfo(case.timezone)
        self.clock = FakeClock(case.start)
        self.history = work / "history.db" if any(s.kind.endswith("recommended") for s in case.expect) else None
        self.policy_dir = policy_dir
        if any(s.kind == "reload" for s in case.given):
            self.policy_dir = work / "policies"
            shutil.copytree(policy_dir, self.policy_dir, ignore=shutil.ignore_patterns("tests"))
        store = f"sqlite:///{self.history}?flush_s=3600" if self.history else "memory://"
        self.eng = PolicyEngine(policy, clock=self.clock, store=store, paths=[self.policy_dir])
        self.events: list[Event] = []
        self.eng.subscribe(self.events.append)
        self.active: dict[str, set[str]] = {}
        self.seen = 0
        self.last_call = case.start

    # -- time ------------------------------------------------------------------
    def advance(self, at: float) -> None:
        """Move the clock to ``at``, evaluating anomaly rules on the policy's schedule on the way.

        After the last call, rules are evaluated until the monitoring window and the longest ``for``
        have passed; from then on the window is empty and nothing changes, so time jumps.
        """
        target = self.case.start + at
        monitoring = self.eng.policy.monitoring
        every = monitoring.evaluate_every_s
        horizon = self.last_call + monitoring.window_s + max((r.for_s for r in monitoring.anomalies), default=0.0) \
            + 2 * every
        now = self.clock.now
        if target <= now:
            return
        steps = int((min(target, horizon) - now) // every) if horizon > now else 0
        for i in range(1, min(steps, MAX_TICKS_PER_GAP) + 1):
            self.clock.set(now + i * every)
            self.eng.tick()
        self.clock.set(target)
        self.eng.tick()

    # -- calls -----------------------------------------------------------------
    def call(self, line: int, tier: str, pinned: str | None, outcome_of: Callable[[str], str],
             latency_of: Callable[[str], float], tokens: tuple[int, int], estimated: int | None) -> None:
        try:
            d = self.eng.decide(tier, model=pinned, estimated_tokens=estimated)
        except NoModelAvailable:
            return
        except KeyError as exc:
            raise _Setup(line, str(exc.args[0])) from None
        self.note(d)
        outcome = outcome_of(d.model)
        try:
            self.eng.record(d, Outcome(latency_of(d.model), *tokens, error=None if outcome == "ok" else outcome))
        except ValueError as exc:
            raise _Setup(line, str(exc)) from None
        self.result.calls += 1
        self.last_call = self.clock.now

    def note(self, d: Decision) -> None:
        self.result.exercised.candidates.add((d.tier, d.model))

    def given(self, step: Step, k: int) -> None:
        data = step.data
        tokens = _tokens(data.get("tokens"))
        latency = float(data.get("latency_ms", DEFAULT_LATENCY_MS))
        estimated = data.get("estimated_tokens")
        if step.kind == "model":
            model = data["model"]
            spec = self.eng.policy.models.get(model)
            if spec is None:
                raise _Setup(step.line, f"unknown model {model!r}")
            outcome = data.get("outcome", "ok")
            self.call(step.line, spec.tier, model, lambda m: outcome, lambda m: latency, tokens, estimated)
        elif step.kind == "tier":
            outcomes: dict[str, str] = data.get("outcomes", {})
            latencies: dict[str, float] = data.get("latency", {})
            self.call(step.line, data["tier"], None, lambda m: outcomes.get(m, "ok"),
                      lambda m: float(latencies.get(m, latency)), tokens, estimated)
        elif step.kind == "trace":
            parts = data["trace"][k].split()
            tier = parts[1]
            outcome = parts[2] if len(parts) > 2 else "ok"
            lat = float(parts[3]) if len(parts) > 3 else DEFAULT_LATENCY_MS
            self.call(step.line, tier, None, lambda m: outcome, lambda m: lat,
                      _tokens(int(parts[4]) if len(parts) > 4 else None), None)
        elif step.kind == "force":
            try:
                self.eng.force(data["force"], data.get("state"))
            except KeyError as exc:
                raise _Setup(step.line, str(exc.args[0])) from None
        elif step.kind == "reload":
            source = (self.case.base / data["reload"]).resolve()
            if not source.is_dir():
                raise _Setup(step.line, f"reload: no directory {source}")
            for old in self.policy_dir.glob("*.y*ml"):
                old.unlink()
            for new in source.glob("*.y*ml"):
                shutil.copy(new, self.policy_dir / new.name)
            if not self.eng.reload() and self.eng.reload_status()["last_error"]:
                raise _Setup(step.line, "reload failed: " + "; ".join(self.eng.reload_status()["last_error"]))

    # -- expectations ----------------------------------------------------------
    def fail(self, step: Step, what: str, expected: str, actual: str) -> None:
        before = [e for e in self.events if e.at <= self.clock.now][-CONTEXT_EVENTS:]
        self.result.failures.append(Failure(step.line, what, expected, actual,
                                            tuple(self.describe(e) for e in before)))

    def describe(self, e: Event) -> str:
        when = datetime.fromtimestamp(e.at, self.tz).strftime("%H:%M:%S")
        fields = {f.name: getattr(e, f.name) for f in dataclasses.fields(e)
                  if f.name not in ("at", "wall", "metrics")}
        shown = ", ".join(f"{k}={_short(v, self.tz, k)}" for k, v in fields.items())
        return f"{when} {type(e).__name__}({shown})"

    def clock_text(self) -> str:
        return datetime.fromtimestamp(self.clock.now, self.tz).strftime("%Y-%m-%d %H:%M:%S")

    def expect(self, step: Step) -> None:
        data = step.data
        getattr(self, "_" + step.kind.removeprefix("not_"))(step, data)

    def _decide(self, step: Step, data: dict[str, Any]) -> None:
        tier = data["decide"]
        what = f"decide {tier} at {self.clock_text()}"
        try:
            d = self.eng.decide(tier, estimated_tokens=data.get("estimated_tokens"))
        except NoModelAvailable as exc:
            if "model" in data and data["model"] is not None:
                self.fail(step, what, f"model {data['model']}",
                          "no model available: " + "; ".join(f"{m}: {r}" for m, r in exc.candidates))
            return
        except KeyError as exc:
            raise _Setup(step.line, str(exc.args[0])) from None
        self.note(d)
        reasons = "; ".join(f"{m}: {r}" for m, r in d.reasons) or "none"
        if "model" in data and data["model"] != d.model:
            expected = "no model available" if data["model"] is None else f"model {data['model']}"
            self.fail(step, what, expected, f"model {d.model} (skipped: {reasons})")
        if "is_fallback" in data and data["is_fallback"] != d.is_fallback:
            self.fail(step, what, f"is_fallback {data['is_fallback']}", f"is_fallback {d.is_fallback} ({d.model})")
        if "reason" in data and not any(data["reason"] in f"{m}: {r}" for m, r in d.reasons):
            self.fail(step, what, f"a skip reason containing {data['reason']!r}", f"reasons: {reasons}")
        then = data.get("then", "ok")
        self.eng.record(d, Outcome(0.0, error=None if then == "ok" else then))

    def _breaker(self, step: Step, data: dict[str, Any]) -> None:
        model = data["breaker"]
        try:
            state = self.eng.state(model)["breaker"]["state"]
        except KeyError as exc:
            raise _Setup(step.line, str(exc.args[0])) from None
        if state != data["state"]:
            self.fail(step, f"breaker {model} at {self.clock_text()}", data["state"], state)

    def _budget(self, step: Step, data: dict[str, Any]) -> None:
        name = data["budget"]
        snap = self.budget(name)
        if snap is None:
            raise _Setup(step.line, f"unknown budget {name!r} (or no model spends from it)")
        what = f"budget {name} at {self.clock_text()}"
        used = snap["used_fraction"]
        if "used_at_least" in data and not used >= data["used_at_least"]:
            self.fail(step, what, f"used >= {data['used_at_least']:g}", f"used {used:.4g}")
        if "used_below" in data and not used < data["used_below"]:
            self.fail(step, what, f"used < {data['used_below']:g}", f"used {used:.4g}")
        for key in ("warned", "exhausted"):
            if key in data and bool(snap[key]) != data[key]:
                self.fail(step, what, f"{key} {data[key]}", f"{key} {bool(snap[key])} (used {used:.4g})")
        if snap["warned"] or snap["exhausted"]:
            self.result.exercised.budgets.add(name)

    def budget(self, name: str) -> dict[str, Any] | None:
        for model in self.eng.policy.models:
            for snap in self.eng.state(model)["budgets"]:
                if snap["name"] == name:
                    return dict(snap)
        return None

    def _emitted(self, step: Step, data: dict[str, Any]) -> None:
        since = self.case.start + data.get("since", 0.0)
        seen = [e for e in self.events if since <= e.at <= self.clock.now]
        what = f"events {self.describe_span(since)}"
        for match in data.get("emitted", ()):
            if not any(_matches(e, match) for e in seen):
                self.fail(step, what, f"{_show(match)} emitted", "not emitted")
        for match in data.get("not_emitted", ()):
            hits = [e for e in seen if _matches(e, match)]
            if hits:
                self.fail(step, what, f"no {_show(match)}", "emitted: " + self.describe(hits[0]))

    def describe_span(self, since: float) -> str:
        start = datetime.fromtimestamp(since, self.tz).strftime("%H:%M:%S")
        return f"from {start} to {self.clock_text()}"

    def _anomaly(self, step: Step, data: dict[str, Any]) -> None:
        rule = data["anomaly"]
        if rule not in {r.name for r in self.eng.policy.monitoring.anomalies}:
            raise _Setup(step.line, f"unknown anomaly rule {rule!r}")
        targets = self.active.get(rule, set())
        active = data["target"] in targets if "target" in data else bool(targets)
        if active != data["active"]:
            on = f" on {data['target']}" if "target" in data else ""
            self.fail(step, f"anomaly {rule}{on} at {self.clock_text()}", "active" if data["active"] else
                      "not active", ("active on " + ", ".join(sorted(targets))) if targets else "not active")

    def _recommended(self, step: Step, data: dict[str, Any]) -> None:
        from engine.reporting.build import build_report
        from engine.reporting.data import read_day

        assert self.history is not None
        store: Any = self.eng.store
        store.flush()
        policy = self.eng.policy
        rtz = ZoneInfo(policy.report.timezone)
        day = datetime.fromtimestamp(self.clock.now, rtz).date()
        conn = sqlite3.connect(self.history)
        try:
            report = build_report(read_day(conn, day, policy.report.timezone, policy.budgets), policy)
        finally:
            conn.close()
        target = data.get("target")
        fired = {r.rule for r in report.recommendations if target is None or r.target == target}
        self.result.exercised.recommendations |= {r.rule for r in report.recommendations}
        known = {r.name for r in policy.recommendations}
        what = f"recommendations of {day.isoformat()}" + (f" for {target}" if target else "")
        shown = ", ".join(sorted(fired)) or "none"
        for rule in data.get("recommended", ()):
            if rule not in known:
                raise _Setup(step.line, f"unknown recommendation rule {rule!r}")
            if rule not in fired:
                self.fail(step, what, f"{rule} recommended", f"recommended: {shown}")
        for rule in data.get("not_recommended", ()):
            if rule not in known:
                raise _Setup(step.line, f"unknown recommendation rule {rule!r}")
            if rule in fired:
                self.fail(step, what, f"{rule} not recommended", f"recommended: {shown}")

    # -- bookkeeping -------------------------------------------------------------
    def absorb(self) -> None:
        ex = self.result.exercised
        for e in self.events[self.seen:]:
            if isinstance(e, CircuitOpened):
                ex.breakers.add(e.model)
            elif isinstance(e, (BudgetWarning, BudgetExhausted)):
                ex.budgets.add(e.budget)
            elif isinstance(e, AnomalyDetected):
                ex.anomalies.add(e.rule)
                self.active.setdefault(e.rule, set()).add(e.target)
            elif isinstance(e, AnomalyResolved):
                self.active.get(e.rule, set()).discard(e.target)
        self.seen = len(self.events)


def _short(value: Any, tz: ZoneInfo, key: str = "") -> str:
    if isinstance(value, float) and key.endswith(("_until", "_at", "_start")):
        if not math.isfinite(value):
            return "never"
        return datetime.fromtimestamp(value, tz).strftime("%H:%M:%S")
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple) and len(value) > 3:
        return f"({len(value)} items)"
    return str(value)


def _show(match: dict[str, Any]) -> str:
    rest = ", ".join(f"{k}={v}" for k, v in match.items() if k != "event")
    return f"{match['event']}({rest})"


def _matches(e: Event, match: dict[str, Any]) -> bool:
    if type(e).__name__ != match["event"]:
        return False
    for key, want in match.items():
        if key == "event":
            continue
        got = getattr(e, key, None)
        if isinstance(want, (int, float)) and not isinstance(want, bool) and isinstance(got, (int, float)):
            if abs(float(got) - float(want)) > 1e-9 * max(1.0, abs(float(want))):
                return False
        elif str(got) != str(want) and got != want:
            return False
    return True


def timeline(case: TestCase) -> list[tuple[float, int, int, Step, int]]:
    """Every scripted call and expectation as ``(at, order, seq, step, k)`` in the order they run."""
    items: list[tuple[float, int, int, Step, int]] = []
    seq = 0
    for step in case.given:
        if step.kind == "trace":
            for k, text in enumerate(step.data["trace"]):
                items.append((step.at + duration(_offset(text.split()[0])), 0, seq, step, k))
                seq += 1
            continue
        repeat = int(step.data.get("repeat", 1)) if step.kind in ("model", "tier") else 1
        every = duration(step.data.get("every", 1.0))
        for k in range(repeat):
            items.append((step.at + k * every, 0, seq, step, k))
            seq += 1
    for step in case.expect:
        items.append((step.at, 1, seq, step, 0))
        seq += 1
    items.sort(key=lambda x: (x[0], x[1], x[2]))
    return items


def _offset(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def run_case(case: TestCase, policy: PolicySet, policy_dir: Path) -> Result:
    """Run ``case`` against ``policy`` (loaded from ``policy_dir``); never raises for a failing test."""
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="policy-test-") as work:
        run = _Run(case, policy, policy_dir, Path(work))
        try:
            for at, order, _, step, k in timeline(case):
                run.advance(at)
                run.absorb()
                if order == 0:
                    run.given(step, k)
                else:
                    run.expect(step)
                run.absorb()
        except _Setup as exc:
            run.result.error = str(exc)
            run.result.failures.append(Failure(exc.line, "setup", "a step the policy set can run", str(exc)))
        except Exception as exc:  # an error of the engine itself: reported on the case, never a crash
            run.result.error = f"{type(exc).__name__}: {exc}"
            run.result.failures.append(Failure(case.line, "error", "the case to run to its end",
                                               f"{type(exc).__name__}: {exc}"))
        finally:
            run.eng.close()
    run.result.seconds = time.perf_counter() - began
    return run.result

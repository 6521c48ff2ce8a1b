"""``policy-engine simulate``: the default policies through a realistic day, in seconds.

One run:

1. loads the policy set (default: the shipped ``policies/``) and the shipped
   workload (:mod:`engine.sim.workload`), picks a scenario
   (:mod:`engine.sim.scenarios`) and draws the day's requests from the seed;
2. runs every request through an in-memory :class:`~engine.core.PolicyEngine`
   on a ``FakeClock`` (concurrent ``acall`` s, :mod:`engine.sim.driver`), with
   a SQLite history under ``memory/simulate/`` when :mod:`engine.store.sqlite`
   is available;
3. runs the same requests through the two baselines
   (:mod:`engine.sim.baselines`), each against its own copy of the providers;
4. writes the daily report from the history (when the report writer is
   available) and returns a :class:`SimResult` for :mod:`engine.sim.summary`
   to print.
"""

from __future__ import annotations

import importlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from engine.core import PolicyEngine
from engine.errors import PolicyEngineError, PolicyError
from engine.policy.loader import load_policies
from engine.policy.model import PolicySet
from engine.policy.resources import resource_dir
from engine.sim.baselines import primaries, run_baselines
from engine.sim.driver import run_engine
from engine.sim.scenarios import SCENARIOS, ResolvedFault, Scenario, describe_loads, resolve
from engine.sim.tally import Tally, prices
from engine.sim.workload import Request, Workload, arrivals, load_workload, local_epoch
from engine.sim.world import World, exception_for
from engine.testing import FakeClock

__all__ = ["DEFAULT_DATE", "FIRST_DATE", "LAST_DATE", "REPORT_WRITERS", "SimOptions", "SimResult", "map_tiers",
           "simulate"]

DEFAULT_DATE = date(2026, 1, 1)
#: The days ``--date`` accepts: the local day (in any time zone) lies within the years 1970-9999.
# the report, replay and budgets stop at 9998 (a monthly period needs the next month)
FIRST_DATE, LAST_DATE = date(1970, 1, 2), date(9998, 12, 30)
HISTORY_DIR = Path("memory") / "simulate"
#: Where the daily report writer is looked up, in order: (module, function).
REPORT_WRITERS = (("engine.reporting.render", "write_daily_report"),
                  ("engine.reporting", "write_daily_report"),
                  ("engine.report", "write_daily_report"))
#: Targets of issue 6, reported (never enforced) in the summary.
TARGET_AVAILABILITY = 0.999
TARGET_TOKEN_SAVING = 0.10

Phase = Callable[[str, int, str], Callable[[float, int], None] | None]


@dataclass
class SimOptions:
    policies: Path | None = None  # None: the shipped default set
    scenario: str = "default"
    seed: int = 1
    day: date = DEFAULT_DATE
    start_h: float = 0.0
    hours: float = 24.0
    scale: float = 1.0
    retries: int = 3
    history: str = "auto"  # "auto", "none" or a store URI
    report: bool = True
    report_dir: str | None = None  # None: the report policy's output_dir (memory/reports)
    workload: Path | None = None
    record_trace: Path | None = None
    baselines: bool = True  # also run the no-fallback and naive-retry baselines (diff --replay needs neither)


@dataclass
class SimResult:
    options: SimOptions
    policy: PolicySet
    policy_path: str
    workload: Workload
    scenario: Scenario
    incidents: list[str]
    notes: list[str]
    timezone: str
    day_start: float
    requests: int
    primaries: dict[str, str]
    engine: dict[str, Any]
    no_fallback: dict[str, Any]
    naive: dict[str, Any]
    history: str
    report: list[str] = field(default_factory=list)
    report_note: str = ""
    report_error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


class _Recorder:
    """A world that also writes every attempt as a trace line (``--record-trace``)."""

    def __init__(self, world: World, out: Any, classes: dict[str, str]) -> None:
        self.world, self.out, self.classes = world, out, classes

    def attempt(self, model: str, now: float, req: Request, k: int) -> tuple[str | None, float, int, int]:
        kind, latency, tin, tout = self.world.attempt(model, now, req, k)
        self.out.write(json.dumps({
            "timestamp": round(now, 6), "request_id": req.index, "tier": req.tier, "model": model,
            "input_tokens": req.tokens_in, "output_tokens": req.tokens_out if kind is None else tout,
            "outcome": "ok" if kind is None else self.classes[kind], "latency_ms": round(latency * 1000, 3)}) + "\n")
        return kind, latency, tin, tout


def _history(options: SimOptions, notes: list[str]) -> tuple[Any, str, Path | None]:
    """The engine's store, how to name it, and the SQLite file the report reads (None: no history)."""
    if options.history == "none":
        return "memory://", "off (--history none)", None
    if options.history != "auto":
        path = None
        if options.history.startswith("sqlite://"):
            try:
                path = importlib.import_module("engine.store.historydb").parse_uri(options.history)[0]
            except (ImportError, AttributeError):
                path = None
        return options.history, options.history, path
    try:
        store_cls = importlib.import_module("engine.store.sqlite").SQLiteStore
    except (ImportError, AttributeError) as exc:
        notes.append(f"history: in memory only (engine.store.sqlite is not available: {exc})")
        return "memory://", "in memory (engine.store.sqlite not available)", None
    name = f"{options.scenario}-seed{options.seed}-{options.day:%y%m%d}.db"
    path = HISTORY_DIR / name
    for stale in (path, path.with_name(name + "-wal"), path.with_name(name + "-shm")):
        stale.unlink(missing_ok=True)  # a per-run history: a previous run's budgets must not carry over
    uri = f"sqlite:///{path.as_posix()}?flush_s=3600"
    return store_cls(uri), str(path), path


def _engine(policy_dir: Path, clock: FakeClock, store: Any, notes: list[str]) -> tuple[PolicyEngine, bool]:
    """The engine on ``store``, or (with a note, and False) on the in-memory store if that store fails."""
    try:
        return PolicyEngine.from_path(policy_dir, clock=clock, store=store), True
    except PolicyError:
        raise
    except Exception as exc:
        if isinstance(store, str) and not store.startswith("sqlite"):
            raise
        close = getattr(store, "close", None)
        if callable(close):
            close()
        notes.append(f"history: in memory only (the history store failed: {type(exc).__name__}: {exc})")
        return PolicyEngine.from_path(policy_dir, clock=clock, store="memory://"), False


def _report_writer() -> Callable[[PolicySet, Path, date, str | None], list[Any]] | str:
    """The daily report writer of the reporting package, or why there is none."""
    for module, name in REPORT_WRITERS:
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        return lambda policy, path, day, out: list(fn(policy, path, day, out))
    try:  # the pieces ``policy-engine report`` uses: read a day, build the view model, render
        connect = importlib.import_module("engine.store.historydb").connect
        read_day = importlib.import_module("engine.reporting.data").read_day
        build_report = importlib.import_module("engine.reporting.build").build_report
        write = importlib.import_module("engine.reporting.render").write
    except (ImportError, AttributeError) as exc:
        return f"no daily report writer available ({exc})"

    def compose(policy: PolicySet, path: Path, day: date, out: str | None) -> list[Any]:
        conn = connect(path, create=False)
        try:
            hist = read_day(conn, day, policy.report.timezone, policy.budgets)
        finally:
            conn.close()
        spec = policy.report
        return list(write(build_report(hist, policy), out or spec.output_dir, spec.formats, spec.templates_dir))

    return compose


def _write_report(policy: PolicySet, history: Path, day: date, out: str | None, result: SimResult) -> None:
    writer = _report_writer()
    if isinstance(writer, str):
        result.report_note = f"skipped: {writer}"
        return
    try:
        result.report = [str(p) for p in writer(policy, history, day, out)]
    except (PolicyEngineError, OSError, ValueError) as exc:  # the run is complete; its report is not
        result.report_error = f"{type(exc).__name__}: {exc}"
        result.report_note = f"FAILED: {result.report_error}"


def simulate(options: SimOptions, phase: Phase | None = None) -> SimResult:
    """Run one simulated window; ``phase(label, total, timezone)`` may return a progress callback."""
    started = time.perf_counter()
    scenario = SCENARIOS[options.scenario]
    policy_dir = options.policies or resource_dir("policies")
    policy = load_policies([policy_dir])
    workload = load_workload(options.workload)
    tzname = policy.report.timezone
    tz = ZoneInfo(tzname)
    day_start = datetime(options.day.year, options.day.month, options.day.day, tzinfo=tz).timestamp()
    faults, notes = resolve(scenario, policy)
    loads = [ld for ld in scenario.loads if ld.tier in policy.tiers]
    requests = arrivals(workload, seed=options.seed, day_start=day_start, start_h=options.start_h,
                        hours=options.hours, scale=options.scale, loads=loads, tz=tz)
    requests = map_tiers(requests, policy, notes)
    timings = {"arrivals_s": time.perf_counter() - started}
    price = prices(policy)
    tallies = {name: Tally(name, label, price) for name, label in (
        ("engine", "engine"), ("no_fallback", "no-fallback"), ("naive", f"naive retry x{options.retries}"))}
    world = World(workload, policy, faults, day_start, tz)
    progress = phase("engine", len(requests), tzname) if phase else None
    start = local_epoch(day_start, options.start_h, tz)
    history_name, history_path = _engine_run(options, policy_dir, start, world, requests, tallies["engine"],
                                             notes, progress, timings)
    t = time.perf_counter()
    if options.baselines:
        worlds = (World(workload, policy, faults, day_start, tz), World(workload, policy, faults, day_start, tz))
        run_baselines(policy, requests, worlds, (tallies["no_fallback"], tallies["naive"]),
                      retries=options.retries, seed=options.seed,
                      progress=phase("baselines", len(requests), tzname) if phase else None)
    timings["baselines_s"] = time.perf_counter() - t
    result = SimResult(options, policy, str(policy_dir), workload, scenario, _incidents(faults, scenario, options),
                       notes, tzname, day_start, len(requests), primaries(policy), tallies["engine"].summary(),
                       tallies["no_fallback"].summary(), tallies["naive"].summary(), history_name)
    t = time.perf_counter()
    if not options.report:
        result.report_note = "skipped (--no-report)"
    elif history_path is None:
        result.report_note = "skipped: the daily report is built from the SQLite history, and there is none"
    else:
        _write_report(policy, history_path, options.day, options.report_dir, result)
    timings["report_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    result.timings = timings
    return result


def _engine_run(options: SimOptions, policy_dir: Path, start: float, world: World, requests: list[Request],
                tally: Tally, notes: list[str], progress: Callable[[float, int], None] | None,
                timings: dict[str, float]) -> tuple[str, Path | None]:
    """Run the requests through the engine on its history store; the history's name and file.

    The trace file (``--record-trace``) is opened first: if it cannot be, nothing has been created
    or deleted yet (no store, no engine, the previous history untouched)."""
    attempts: Any = world
    trace_file = None
    if options.record_trace is not None:
        classes = {k: _class_of(k) for k in ("http_503", "http_429", "quota", "truncated")}
        trace_file = options.record_trace.open("w", encoding="utf-8")
        attempts = _Recorder(world, trace_file, classes)
    store: Any = None
    engine: PolicyEngine | None = None
    try:
        store, history_name, history_path = _history(options, notes)
        clock = FakeClock(start)
        engine, stored = _engine(policy_dir, clock, store, notes)
        store = None  # the engine owns it now (or _engine closed it)
        if not stored:
            history_name, history_path = "in memory (the history store failed: see note)", None
        t = time.perf_counter()
        run_engine(engine, clock, attempts, requests, tally, seed=options.seed, make_exc=exception_for,
                   progress=progress)
    finally:
        if engine is not None:
            engine.close()  # flushes the history
        elif store is not None and callable(getattr(store, "close", None)):
            store.close()  # the engine was never built on it
        if trace_file is not None:
            trace_file.close()
    tally.quota_refusals = world.quota_refusals
    timings["engine_s"] = time.perf_counter() - t
    return history_name, history_path


def map_tiers(requests: list[Request], policy: PolicySet, notes: list[str]) -> list[Request]:
    """Requests of tiers the policy set lacks go to its nearest tier by number (``L3`` to ``L2`` when
    there are ``L1`` and ``L2``; a tie to the higher tier); with no numbered tier to match, they are
    dropped. Either way with one note line; the requests are numbered afresh."""
    missing: dict[str, int] = {}
    for r in requests:
        if r.tier not in policy.tiers:
            missing[r.tier] = missing.get(r.tier, 0) + 1
    if not missing:
        return requests
    numbered = {t: int(m.group(1)) for t in policy.tiers if (m := re.search(r"(\d+)$", t))}
    target: dict[str, str | None] = {}
    for tier in missing:
        m = re.search(r"(\d+)$", tier)
        if m is None or not numbered:
            target[tier] = None
            continue
        n = int(m.group(1))
        target[tier] = min(numbered, key=lambda t: (abs(numbered[t] - n), -numbered[t]))
    moved = [f"{t} -> {target[t]} ({missing[t]:,})" for t in sorted(missing) if target[t] is not None]
    dropped = [f"{t} ({missing[t]:,})" for t in sorted(missing) if target[t] is None]
    if moved:
        notes.append("tiers: requests of workload tiers the policy set lacks go to its nearest tier: "
                     + ", ".join(moved))
    if dropped:
        notes.append(f"tiers: requests of workload tiers the policy set lacks, with no numbered tier to match, "
                     f"dropped: {', '.join(dropped)}")
    kept: list[Request] = []
    for r in requests:
        if r.tier in target:
            to = target[r.tier]
            if to is None:
                continue
            r.tier = to
        r.index = len(kept)
        kept.append(r)
    return kept


def _incidents(faults: list[ResolvedFault], scenario: Scenario, options: SimOptions) -> list[str]:
    """One line per fault and load, marked when it falls outside the simulated window."""
    lo, hi = options.start_h, options.start_h + options.hours
    spans = [(f.start_h, f.end_h, f.describe) for f in faults]
    spans += [(ld.start_h, ld.end_h, text) for ld, text in zip(scenario.loads, describe_loads(scenario), strict=True)]
    return [text + ("" if start < hi and end > lo else " (outside the simulated window)")
            for start, end, text in spans]


def _class_of(kind: str) -> str:
    from engine.classify import classify

    return classify(exception_for(kind))[0]

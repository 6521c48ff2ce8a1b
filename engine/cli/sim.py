"""``policy-engine simulate`` and ``policy-engine replay``.

Exit codes (stable):

====  ===================================================================
0     done: the summary was printed (targets are reported, not enforced)
1     the run failed: invalid policies, unreadable workload or trace, a
      malformed trace line with ``--strict``, no valid trace line, a
      history or report error
2     usage error: unknown option or scenario, bad value
130   interrupted (Ctrl-C): nothing partial is printed as a summary
====  ===================================================================
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from engine.errors import PolicyEngineError, PolicyError
from engine.policy.problems import did_you_mean
from engine.text import printable

__all__ = ["main_replay", "main_simulate"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MAX_REPORTED_PROBLEMS = 20


def _err(prog: str, message: str) -> None:
    """``prog: message`` on stderr, control characters (from file names, traces, histories) shown escaped."""
    print(f"{prog}: {printable(message)}", file=sys.stderr)


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE


def _usage(parser: argparse.ArgumentParser, message: str) -> int:
    parser.print_usage(sys.stderr)
    _err(parser.prog, f"error: {message}")
    return EXIT_USAGE


def _policy_problems(prog: str, exc: PolicyError) -> int:
    for problem in exc.problems:
        print(problem.format(), file=sys.stderr)
    _err(prog, f"the policy set is invalid ({len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''})")
    return EXIT_FAILED


# -- simulate --------------------------------------------------------------------------
def _simulate_parser() -> argparse.ArgumentParser:
    from engine.sim.simulate import DEFAULT_DATE, FIRST_DATE, LAST_DATE

    p = argparse.ArgumentParser(
        prog="policy-engine simulate",
        description="Drive the policies through a realistic simulated day (fake clock, in-memory engine, "
        "SQLite history under memory/simulate/), compare with a no-fallback and a naive-retry baseline "
        "on the same requests, print a summary and write the daily report. Hours are wall-clock hours in the "
        "report's time zone: a daylight-saving day has 23 or 25 hours of traffic, and the window ends at the "
        "real next local midnight at the latest. Requests of workload tiers (L1-L4) that the policy set lacks "
        "go to its nearest tier by number (a tie: the higher), or are dropped when it has no numbered tier; "
        "the summary says which in a note.",
        epilog="exit status: 0 done, 1 run failed, 2 usage error, 130 interrupted")
    p.add_argument("--policies", type=Path, metavar="DIR", help="policy set (default: the shipped policies/)")
    p.add_argument("--scenario", default="default", metavar="NAME",
                   help="scripted incidents (default: default); see --list-scenarios")
    p.add_argument("--list-scenarios", action="store_true", help="list the scenarios and exit")
    p.add_argument("--seed", type=int, default=1, help="random seed: the same seed gives the same day (default 1)")
    p.add_argument("--date", default=DEFAULT_DATE.isoformat(), metavar="YYYY-MM-DD",
                   help=f"the simulated day, in the report's time zone, {FIRST_DATE} to {LAST_DATE} "
                   f"(default {DEFAULT_DATE.isoformat()})")
    p.add_argument("--start-hour", type=float, default=0.0, metavar="H",
                   help="start of the window, local wall-clock hour (default 0)")
    p.add_argument("--hours", type=float, default=24.0, metavar="H", help="length of the window (default 24)")
    p.add_argument("--scale", type=float, default=1.0, metavar="F",
                   help="traffic scale: 1.0 is 432,000 calls a day (default 1.0)")
    p.add_argument("--retries", type=int, default=3, metavar="N",
                   help="retries of the naive-retry baseline (default 3: 4 attempts, like max_attempts)")
    p.add_argument("--history", default="auto", metavar="URI",
                   help="auto (a fresh SQLite file under memory/simulate/ when available), none, or a store URI")
    p.add_argument("--no-report", action="store_true", help="do not write the daily report")
    p.add_argument("--report-dir", metavar="DIR",
                   help="where the daily report goes (default: the report policy's output_dir, memory/reports)")
    p.add_argument("--workload", type=Path, metavar="FILE", help="workload file (default: the shipped one)")
    p.add_argument("--record-trace", type=Path, metavar="FILE",
                   help="also write every attempt of the engine's run as a replayable JSONL trace")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    return p


def _check_simulate(p: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    from engine.sim.scenarios import SCENARIOS
    from engine.sim.simulate import FIRST_DATE, LAST_DATE

    if args.scenario not in SCENARIOS:
        return (f"unknown scenario {args.scenario!r}{did_you_mean(args.scenario, SCENARIOS)}; "
                f"expected one of {', '.join(SCENARIOS)}")
    try:
        args.day = date.fromisoformat(args.date)
    except ValueError:
        return f"--date: expected YYYY-MM-DD, got {args.date!r}"
    if not FIRST_DATE <= args.day <= LAST_DATE:
        return f"--date: expected a day from {FIRST_DATE} to {LAST_DATE}, got {args.date}"
    if not 0 <= args.start_hour < 24:
        return f"--start-hour: expected 0 <= H < 24, got {args.start_hour:g}"
    if not 0 < args.hours <= 24 - args.start_hour:
        return (f"--hours: expected 0 < H <= {24 - args.start_hour:g} (the window ends by midnight), "
                f"got {args.hours:g}")
    if not 0 < args.scale <= 100:
        return f"--scale: expected 0 < F <= 100, got {args.scale:g}"
    if not 0 <= args.retries <= 20:
        return f"--retries: expected 0 <= N <= 20, got {args.retries}"
    if args.policies is not None and not args.policies.is_dir():
        return f"--policies: {args.policies} is not a directory"
    return None


def main_simulate(argv: Sequence[str] | None = None) -> int:
    from engine.sim.scenarios import SCENARIOS

    parser = _simulate_parser()
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args
    if args.list_scenarios:
        width = max(map(len, SCENARIOS))
        for s in SCENARIOS.values():
            print(f"{s.name:<{width}}  {s.summary}")
        return EXIT_OK
    problem = _check_simulate(parser, args)
    if problem:
        return _usage(parser, problem)
    return _run_simulate(args)


def _run_simulate(args: argparse.Namespace) -> int:
    from engine.sim.progress import Progress
    from engine.sim.simulate import SimOptions, simulate
    from engine.sim.summary import format_simulation, simulation_dict
    from engine.sim.workload import WorkloadError

    prog = "policy-engine simulate"
    options = SimOptions(policies=args.policies, scenario=args.scenario, seed=args.seed, day=args.day,
                         start_h=args.start_hour, hours=args.hours, scale=args.scale, retries=args.retries,
                         history=args.history, report=not args.no_report, report_dir=args.report_dir,
                         workload=args.workload,
                         record_trace=args.record_trace)
    bars: list[Progress] = []

    def phase(label: str, total: int, tz: str) -> Any:
        if args.quiet:
            return None
        for bar in bars:
            bar.close()
        bars.append(Progress(sys.stderr, f"simulate {label}", total, ZoneInfo(tz)))
        return bars[-1]

    try:
        result = simulate(options, phase)
    except KeyboardInterrupt:
        for bar in bars:
            bar.close()
        _err(prog, "interrupted: no summary (the run did not finish)")
        return EXIT_INTERRUPTED
    except PolicyError as exc:
        return _policy_problems(prog, exc)
    except (WorkloadError, PolicyEngineError, OSError) as exc:
        for bar in bars:
            bar.close()
        _err(prog, f"failed: {exc}")
        return EXIT_FAILED
    for bar in bars:
        bar.close()
    if args.json:
        print(json.dumps(simulation_dict(result), indent=2, sort_keys=True))
    else:
        print(format_simulation(result))
    t = result.timings
    if result.report_error is not None:
        _err(prog, f"the daily report failed: {result.report_error}")
        return EXIT_FAILED
    if not args.quiet:
        _err(prog, f"{result.requests:,} calls in {t['total_s']:.1f} s wall (engine {t['engine_s']:.1f} s, "
                   f"baselines {t['baselines_s']:.1f} s, report {t['report_s']:.1f} s)")
    return EXIT_OK


# -- replay ----------------------------------------------------------------------------
def _replay_parser() -> argparse.ArgumentParser:
    from engine.sim.replay import DEFAULT_HORIZON_S
    from engine.sim.trace import FORMATS

    p = argparse.ArgumentParser(
        prog="policy-engine replay",
        description="Replay a recorded trace (CSV or JSONL: timestamp, tier or model, input_tokens, "
        "output_tokens, outcome, latency_ms, request_id) through one policy set, or two side by side. "
        "The shared Azure LLM and LLMPerf traces and an engine history database are read directly.",
        epilog="exit status: 0 done, 1 unreadable trace / malformed line with --strict / invalid policies, "
        "2 usage error, 130 interrupted")
    p.add_argument("trace", type=Path, metavar="TRACE", help="the trace file")
    p.add_argument("--policies", type=Path, required=True, metavar="DIR", help="the policy set to replay through")
    p.add_argument("--compare", type=Path, metavar="DIR2", help="a second policy set, shown beside the first")
    p.add_argument("--format", default="auto", choices=FORMATS, help="trace format (default: auto-detect)")
    p.add_argument("--strict", action="store_true", help="a malformed line is fatal (exit 1) instead of skipped")
    p.add_argument("--seed", type=int, default=1,
                   help="seed of latency draws and of the Azure tier assignment (default 1)")
    p.add_argument("--horizon", type=float, default=DEFAULT_HORIZON_S, metavar="S",
                   help=f"how far a model's recorded outcome speaks for its health (default {DEFAULT_HORIZON_S:g} s)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    return p


def _report_problems(path: str, problems: Sequence[Any], limit: int) -> None:
    for problem in problems[:limit]:
        print(problem.format(path), file=sys.stderr)
    if len(problems) > limit:
        print(f"{printable(path)}: ... and {len(problems) - limit:,} more malformed lines", file=sys.stderr)


def main_replay(argv: Sequence[str] | None = None) -> int:
    parser = _replay_parser()
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args
    dirs = [args.policies] + ([args.compare] if args.compare is not None else [])
    for d in dirs:
        if not d.is_dir():
            return _usage(parser, f"{d} is not a policy directory")
    if not args.horizon >= 0:
        return _usage(parser, f"--horizon: expected seconds >= 0, got {args.horizon:g}")
    try:
        return _run_replay(args, dirs)
    except KeyboardInterrupt:
        _err("policy-engine replay", "interrupted: no table (the replay did not finish)")
        return EXIT_INTERRUPTED


def _run_replay(args: argparse.Namespace, dirs: list[Path]) -> int:
    from engine.policy.loader import load_policies
    from engine.sim.progress import Progress
    from engine.sim.replay import prepare, replay
    from engine.sim.summary import format_replay
    from engine.sim.trace import TraceError, read_trace

    prog = "policy-engine replay"
    try:
        policies = [load_policies([d]) for d in dirs]
    except PolicyError as exc:
        return _policy_problems(prog, exc)
    try:
        trace = read_trace(args.trace, args.format, seed=args.seed)
    except TraceError as exc:
        _err(prog, str(exc))
        return EXIT_FAILED
    prepared = prepare(trace, policies, seed=args.seed)  # checks every line before any run
    problems = prepared.problems
    if problems and args.strict:
        _report_problems(trace.path, problems, 1)
        _err(prog, f"{len(problems):,} malformed line{'s' if len(problems) != 1 else ''} (--strict): nothing replayed")
        return EXIT_FAILED
    _report_problems(trace.path, problems, MAX_REPORTED_PROBLEMS)
    if len(problems) >= trace.read:
        _err(prog, f"{trace.path}: no valid line to replay")
        return EXIT_FAILED
    tz = ZoneInfo(policies[0].report.timezone)
    bars: list[Progress] = []

    def progress(label: str, total: int) -> Any:
        if args.quiet:
            return None
        for bar in bars:
            bar.close()
        bars.append(Progress(sys.stderr, f"replay {label}", total, tz))
        return bars[-1]

    try:
        result = replay(trace, dirs, seed=args.seed, horizon_s=args.horizon, policies=policies,
                        prepared=prepared, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    if args.json:
        out = {"trace": trace.path, "format": trace.format, "lines": trace.read,
               "malformed": [{"line": p.line, "message": p.message} for p in result.prepared.problems],
               "calls": len(result.prepared.requests),
               "runs": [{"label": lab, "policies": path, **s}
                        for lab, path, s in zip(result.labels, result.paths, result.summaries, strict=True)]}
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(format_replay(result))
    return EXIT_OK
